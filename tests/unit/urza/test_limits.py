"""Urza's token buckets on an injected clock, and the rate limit's settings."""

from __future__ import annotations

import pytest

from esper.urza.api.limits import RateLimit, TokenBuckets, client_key


class Clock:
    """A clock that moves only when told."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def buckets(
    per_second: float = 2.0, burst: int = 3, max_keys: int = 100
) -> tuple[TokenBuckets, Clock]:
    clock = Clock()
    return TokenBuckets(RateLimit(per_second=per_second, burst=burst), clock, max_keys), clock


def test_a_burst_is_accepted_then_the_next_request_waits_for_one_token() -> None:
    limiter, _ = buckets(per_second=2.0, burst=3)
    assert [limiter.take("a") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert limiter.take("a") == pytest.approx(0.5)
    # A refused request takes nothing: the wait does not grow with every refusal.
    assert limiter.take("a") == pytest.approx(0.5)


def test_tokens_refill_at_the_rate_and_never_beyond_the_burst() -> None:
    limiter, clock = buckets(per_second=2.0, burst=3)
    for _ in range(3):
        limiter.take("a")
    clock.now += 0.25
    assert limiter.take("a") == pytest.approx(0.25)
    clock.now += 0.25
    assert limiter.take("a") == 0.0
    clock.now += 3600.0
    assert [limiter.take("a") for _ in range(4)][:3] == [0.0, 0.0, 0.0]
    assert limiter.take("a") > 0.0


def test_each_key_has_its_own_bucket() -> None:
    limiter, _ = buckets(per_second=1.0, burst=1)
    assert limiter.take("10.0.0.1") == 0.0
    assert limiter.take("10.0.0.1") == pytest.approx(1.0)
    assert limiter.take("10.0.0.2") == 0.0


def test_the_least_recently_seen_bucket_is_dropped_beyond_max_keys() -> None:
    limiter, _ = buckets(per_second=1.0, burst=1, max_keys=2)
    limiter.take("a")
    limiter.take("b")
    limiter.take("a")  # "a" is now the most recently seen
    limiter.take("c")
    assert len(limiter) == 2
    # "b" was dropped, so it starts again with a full bucket; "a" is still empty.
    assert limiter.take("b") == 0.0
    assert limiter.take("c") > 0.0


def test_a_slow_rate_waits_longer() -> None:
    limiter, _ = buckets(per_second=0.1, burst=1)
    limiter.take("a")
    assert limiter.take("a") == pytest.approx(10.0)


@pytest.mark.parametrize(("per_second", "burst"), [(0.0, 1), (-1.0, 1), (1.0, 0)])
def test_a_limit_that_accepts_nothing_is_refused(per_second: float, burst: int) -> None:
    with pytest.raises(ValueError, match="configure no limit to turn it off"):
        RateLimit(per_second=per_second, burst=burst)


def test_max_keys_must_be_positive() -> None:
    with pytest.raises(ValueError, match="max_keys must be >= 1"):
        TokenBuckets(RateLimit(per_second=1.0, burst=1), max_keys=0)


def test_the_limit_names_itself() -> None:
    assert RateLimit(per_second=20.0, burst=100).describe() == "20 writes/s (burst 100) per client"
    assert (
        RateLimit(per_second=0.5, burst=2, reads=True).describe()
        == "0.5 requests/s (burst 2) per client"
    )


def test_clients_are_keyed_by_address() -> None:
    assert client_key({"type": "http", "client": ("10.1.2.3", 51000)}) == "10.1.2.3"
    assert client_key({"type": "http", "client": ("10.1.2.3", 51001)}) == "10.1.2.3"
    assert client_key({"type": "http", "client": None}) == "unknown"
