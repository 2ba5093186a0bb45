"""Redis-specific behaviour of RedisStreamsBus: keys, wire format, raw entries, recovery."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator

import pytest
import redis

from esper.contracts import Topic
from esper.oona import (
    BusClosedError,
    BusUnavailableError,
    DeadLetterReason,
    IdempotentConsumer,
    RedisStreamsBus,
    StartPosition,
)
from tests.servers import free_port
from tests.unit.oona.factories import make_event, poll_until, receive_until

pytestmark = [pytest.mark.redis, pytest.mark.timeout(120)]


@pytest.fixture
def raw(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


@pytest.fixture
def bus(redis_url: str) -> Iterator[RedisStreamsBus]:
    with RedisStreamsBus(redis_url, claim_idle_ms=100) as created:
        yield created


def test_each_topic_is_a_stream_of_event_json(bus: RedisStreamsBus, raw: redis.Redis) -> None:
    event = make_event(1, Topic.KERNEL_PHASE_CHANGED)
    entry_id = bus.publish(event)

    entries = raw.xrange("esper:events:kernel.phase_changed")

    assert entries == [(entry_id.encode(), {b"event": event.to_json().encode()})]
    assert bus.key(Topic.KERNEL_PHASE_CHANGED) == "esper:events:kernel.phase_changed"
    assert bus.dead_letter_key == "esper:events:dead-letter"


def test_the_prefix_is_configurable(redis_url: str, raw: redis.Redis) -> None:
    with RedisStreamsBus(redis_url, prefix="lab:bus:") as custom:
        subscription = custom.subscribe(Topic.RUN_PROGRESS, "g", "c")
        custom.publish(make_event(1))
        assert raw.xlen("lab:bus:run.progress") == 1
        assert raw.exists("esper:events:run.progress") == 0
        assert [d.event.id for d in receive_until(subscription, 1)] == ["evt-1"]


def test_subscribing_creates_the_group_idempotently(bus: RedisStreamsBus, raw: redis.Redis) -> None:
    assert bus.create_groups([Topic.SEED_LIFECYCLE], "g", StartPosition.EARLIEST) == [
        Topic.SEED_LIFECYCLE
    ]
    assert bus.create_groups([Topic.SEED_LIFECYCLE], "g", StartPosition.EARLIEST) == []
    subscription = bus.subscribe(Topic.SEED_LIFECYCLE, "g", "c")
    assert repr(subscription) == "<RedisSubscription g/c on seed.lifecycle>"
    assert subscription.bus is bus

    groups = raw.xinfo_groups("esper:events:seed.lifecycle")
    assert [group["name"] for group in groups] == [b"g"]


def test_raw_malformed_entries_are_dead_lettered(
    bus: RedisStreamsBus, raw: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    key = bus.key(Topic.TELEMETRY)
    subscription = bus.subscribe(Topic.TELEMETRY, "tamiyo", "t1")
    raw.xadd(key, {"event": "{not json"})
    raw.xadd(key, {"something": "else"})
    raw.xadd(key, {"event": b"\xff\xfe"})
    raw.xadd(key, {"event": make_event(9, Topic.RUN_PROGRESS).to_json()})
    good = make_event(1, Topic.TELEMETRY)
    bus.publish(good)

    with caplog.at_level(logging.ERROR, logger="esper.oona"):
        deliveries = receive_until(subscription, 1)

    assert [d.event for d in deliveries] == [good]
    letters = bus.dead_letters()
    assert [letter.reason for letter in letters] == [
        DeadLetterReason.MALFORMED,
        DeadLetterReason.MALFORMED,
        DeadLetterReason.MALFORMED,
        DeadLetterReason.TOPIC_MISMATCH,
    ]
    assert "json" in letters[0].error.lower()
    assert letters[0].payload == b"{not json"
    assert "no 'event' field" in letters[1].error
    assert letters[1].payload is None
    assert "not UTF-8" in letters[2].error
    assert letters[2].payload == b"\xff\xfe"
    assert "of topic 'run.progress' in the stream of topic 'telemetry.snapshot'" in letters[3].error
    assert raw.xlen("esper:events:dead-letter") == 4
    assert bus.pending_count(Topic.TELEMETRY, "tamiyo") == 0
    assert len([r for r in caplog.records if "dead-lettered" in r.getMessage()]) == 4


def test_approximate_trimming_keeps_at_least_maxlen(redis_url: str) -> None:
    with RedisStreamsBus(redis_url, maxlen=100) as approximate:
        for n in range(1000):
            approximate.publish(make_event(n))
        length = approximate.stream_length(Topic.RUN_PROGRESS)
    # MAXLEN ~ removes whole macro nodes (100 entries by default), never below maxlen.
    assert 100 <= length < 200


def test_a_lost_group_is_recreated(
    bus: RedisStreamsBus, raw: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    subscription = bus.subscribe(Topic.RUN_PROGRESS, "g", "c")
    bus.publish(make_event(1))
    receive_until(subscription, 1)
    raw.xgroup_destroy(bus.key(Topic.RUN_PROGRESS), "g")
    bus.publish(make_event(2))

    with caplog.at_level(logging.WARNING, logger="esper.oona"):
        deliveries = receive_until(subscription, 2)

    # Recreated at the start of the stream: evt-1 comes again (consumers are idempotent).
    assert [d.event.id for d in deliveries] == ["evt-1", "evt-2"]
    assert any("missing in redis" in r.getMessage() for r in caplog.records)
    assert bus.pending_count(Topic.RUN_PROGRESS, "g") == 0


def test_acknowledging_after_the_group_vanished_acknowledges_nothing(
    bus: RedisStreamsBus, raw: redis.Redis
) -> None:
    subscription = bus.subscribe(Topic.RUN_PROGRESS, "g", "c")
    bus.publish(make_event(1))
    [delivery] = receive_until(subscription, 1, ack=False)
    raw.delete(bus.key(Topic.RUN_PROGRESS))

    assert subscription.ack(delivery) == 0
    assert bus.pending_count(Topic.RUN_PROGRESS, "g") == 0


def test_two_bus_objects_share_one_group(redis_url: str) -> None:
    with (
        RedisStreamsBus(redis_url, claim_idle_ms=100) as process_a,
        RedisStreamsBus(redis_url, claim_idle_ms=100) as process_b,
    ):
        a = process_a.subscribe(Topic.RUN_PROGRESS, "forge", "a")
        b = process_b.subscribe(Topic.RUN_PROGRESS, "forge", "b")
        process_a.publish(make_event(1))
        [held] = receive_until(a, 1, ack=False)
        process_a.close()  # process A dies holding the delivery

        [taken_over] = receive_until(b, 1)

        assert taken_over.event == held.event
        assert taken_over.delivery_count == 2
        assert process_b.pending_count(Topic.RUN_PROGRESS, "forge") == 0


def test_idempotency_marks_live_in_redis_with_a_ttl(bus: RedisStreamsBus, raw: redis.Redis) -> None:
    subscription = bus.subscribe(Topic.RUN_PROGRESS, "urza", "u1")
    store = bus.processed_store("urza", ttl_ms=60_000)
    consumer = IdempotentConsumer(subscription, lambda event: None, store=store)
    bus.publish(make_event(1))

    poll_until(consumer, 1)

    assert raw.get("esper:processed:urza:evt-1") == b"done"
    assert 0 < raw.pttl("esper:processed:urza:evt-1") <= 60_000
    assert bus.processed_store("urza").is_done("evt-1")  # shared by every consumer of the group


def test_closing_removes_a_consumer_without_pending_entries(
    bus: RedisStreamsBus, raw: redis.Redis
) -> None:
    key = bus.key(Topic.RUN_PROGRESS)
    idle = bus.subscribe(Topic.RUN_PROGRESS, "g", "idle")
    holding = bus.subscribe(Topic.RUN_PROGRESS, "g", "holding")
    idle.receive(block_ms=0)
    bus.publish(make_event(1))
    receive_until(holding, 1, ack=False)

    idle.close()
    holding.close()

    assert [c["name"] for c in raw.xinfo_consumers(key, "g")] == [b"holding"]


def test_an_unreachable_redis_fails_fast_and_hides_the_password() -> None:
    url = f"redis://user:secret@127.0.0.1:{free_port()}/0"
    bus = RedisStreamsBus(url, socket_timeout_ms=200, retries=1)
    assert "secret" not in repr(bus)

    started = time.monotonic()
    with pytest.raises(BusUnavailableError) as raised:
        bus.publish(make_event(1))
    assert time.monotonic() - started < 5
    assert "secret" not in str(raised.value)
    assert "***" in str(raised.value)
    with pytest.raises(BusUnavailableError):
        bus.subscribe(Topic.RUN_PROGRESS, "g", "c")
    with pytest.raises(BusUnavailableError):
        bus.processed_store("g").claim("e", "t", 1000)
    bus.close()
    with pytest.raises(BusClosedError):
        bus.processed_store("g").complete("e")


def test_constructor_arguments_are_validated() -> None:
    with pytest.raises(ValueError, match="scheme 'http'"):
        RedisStreamsBus("http://localhost")
    with pytest.raises(ValueError, match="maxlen"):
        RedisStreamsBus("redis://localhost", maxlen=0)
    with pytest.raises(ValueError, match="retries"):
        RedisStreamsBus("redis://localhost", retries=-1)
    with pytest.raises(ValueError, match="max_deliveries"):
        RedisStreamsBus("redis://localhost", max_deliveries=0)
    assert RedisStreamsBus("redis://localhost", max_deliveries=None).max_deliveries is None
    assert repr(RedisStreamsBus("rediss://:pw@localhost:6380/1")) == (
        "RedisStreamsBus('rediss://:***@localhost:6380/1', prefix='esper:events:')"
    )
