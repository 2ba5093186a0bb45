"""make_bus and consumer names."""

from __future__ import annotations

import re

import pytest

from esper.oona import InProcessBus, RedisStreamsBus, default_consumer_name, make_bus
from esper.oona.bus import check_name


def test_memory_urls_give_a_new_in_process_bus() -> None:
    first = make_bus("memory://")
    second = make_bus("memory://", maxlen=5, claim_idle_ms=10, block_ms=20, max_deliveries=2)
    assert isinstance(first, InProcessBus)
    assert isinstance(second, InProcessBus)
    assert first is not second
    assert (second.maxlen, second.claim_idle_ms, second.block_ms, second.max_deliveries) == (
        5,
        10,
        20,
        2,
    )


@pytest.mark.parametrize("url", ["redis://localhost:6379/0", "rediss://u:p@example:6380/2"])
def test_redis_urls_give_a_redis_bus(url: str) -> None:
    bus = make_bus(url, prefix="x:", maxlen=7)
    assert isinstance(bus, RedisStreamsBus)
    assert (bus.prefix, bus.maxlen) == ("x:", 7)
    plain = make_bus(url)
    assert isinstance(plain, RedisStreamsBus)
    assert plain.prefix == "esper:events:"


@pytest.mark.parametrize(("url", "scheme"), [("kafka://broker", "kafka"), ("localhost", "")])
def test_other_schemes_are_refused(url: str, scheme: str) -> None:
    with pytest.raises(ValueError, match=f"unsupported bus URL scheme '{scheme}'"):
        make_bus(url)


def test_consumer_names_are_unique_and_valid() -> None:
    names = {default_consumer_name("forge") for _ in range(20)}
    assert len(names) == 20
    for name in names:
        assert name.startswith("forge-")
        assert check_name(name, "consumer") == name
        assert re.search(r"-\d+-[0-9a-f]{6}$", name)
    assert len(default_consumer_name("x" * 300)) <= 128
