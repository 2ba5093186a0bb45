"""The bus's behaviour, run on both implementations (in-process and Redis Streams).

Every test takes the ``make_bus`` factory, parametrized over the two backends, so a passing
suite shows the semantics match.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter

import pytest

from esper.contracts import Event, Topic
from esper.oona import (
    BusClosedError,
    ClaimState,
    DeadLetterReason,
    Delivery,
    IdempotentConsumer,
    Outcome,
    StartPosition,
)
from tests.unit.oona.factories import (
    invalid_event,
    make_event,
    poll_until,
    receive_until,
    wait_until,
)

from .conftest import BusFactory

pytestmark = pytest.mark.timeout(120)


# -- publish, receive, ack ------------------------------------------------------------------


@pytest.mark.parametrize("topic", list(Topic), ids=[topic.value for topic in Topic])
def test_round_trip_on_every_topic(make_bus: BusFactory, topic: Topic) -> None:
    bus = make_bus()
    with bus.subscribe(topic, "workers", "w1") as subscription:
        event = make_event(1, topic)
        entry_id = bus.publish(event)

        [delivery] = receive_until(subscription, 1, ack=False)

        assert delivery.event == event
        assert delivery.topic is topic
        assert delivery.entry_id == entry_id
        assert (delivery.group, delivery.consumer) == ("workers", "w1")
        assert delivery.delivery_count == 1
        assert not delivery.redelivered
        assert bus.pending_count(topic, "workers") == 1
        assert subscription.ack(delivery) == 1
        assert bus.pending_count(topic, "workers") == 0
        assert subscription.receive(block_ms=0) == []


def test_entry_ids_increase_and_order_is_kept(make_bus: BusFactory) -> None:
    bus = make_bus()
    subscription = bus.subscribe(Topic.RUN_PROGRESS, "g", "c")
    ids = [bus.publish(make_event(n)) for n in range(50)]
    parsed = [tuple(int(part) for part in entry_id.split("-")) for entry_id in ids]
    assert parsed == sorted(parsed)
    assert len(set(ids)) == 50

    deliveries = receive_until(subscription, 50, max_count=7)

    assert [delivery.event.id for delivery in deliveries] == [f"evt-{n}" for n in range(50)]
    assert [delivery.entry_id for delivery in deliveries] == ids


def test_ack_counts_only_pending_deliveries(make_bus: BusFactory) -> None:
    bus = make_bus()
    subscription = bus.subscribe(Topic.RUN_PROGRESS, "g", "c")
    bus.publish(make_event(1))
    bus.publish(make_event(2))
    deliveries = receive_until(subscription, 2, ack=False)

    assert subscription.ack() == 0
    assert subscription.ack(*deliveries) == 2
    assert subscription.ack(*deliveries) == 0  # twice is harmless


def test_acking_an_unknown_delivery_acknowledges_nothing(make_bus: BusFactory) -> None:
    bus = make_bus()
    subscription = bus.subscribe(Topic.RUN_PROGRESS, "g", "c")
    unknown_topic = Delivery(make_event(1), Topic.SEED_LIFECYCLE, "1-0", "g", "c", 1)
    unknown_entry = Delivery(make_event(1), Topic.RUN_PROGRESS, "1-0", "g", "c", 1)
    assert subscription.ack(unknown_topic, unknown_entry) == 0


def test_ack_refuses_a_delivery_of_another_group(make_bus: BusFactory) -> None:
    bus = make_bus()
    first = bus.subscribe(Topic.RUN_PROGRESS, "first", "c")
    second = bus.subscribe(Topic.RUN_PROGRESS, "second", "c")
    bus.publish(make_event(1))
    [delivery] = receive_until(first, 1, ack=False)

    with pytest.raises(ValueError, match="belongs to group first"):
        second.ack(delivery)


def test_one_subscription_reads_several_topics(make_bus: BusFactory) -> None:
    bus = make_bus()
    topics = [Topic.KERNEL_PHASE_CHANGED, Topic.BLUEPRINT_SUBMITTED, Topic.KERNEL_PHASE_CHANGED]
    subscription = bus.subscribe(topics, "forge", "w1")
    assert subscription.topics == (Topic.KERNEL_PHASE_CHANGED, Topic.BLUEPRINT_SUBMITTED)
    bus.publish(make_event(1, Topic.BLUEPRINT_SUBMITTED))
    bus.publish(make_event(2, Topic.KERNEL_PHASE_CHANGED))
    bus.publish(make_event(3, Topic.RUN_PROGRESS))  # not subscribed

    deliveries = receive_until(subscription, 2)

    assert sorted(d.event.id for d in deliveries) == ["evt-1", "evt-2"]
    assert {d.topic for d in deliveries} == {Topic.BLUEPRINT_SUBMITTED, Topic.KERNEL_PHASE_CHANGED}
    assert subscription.receive(block_ms=0) == []


# -- consumer groups ------------------------------------------------------------------------


def test_consumers_of_one_group_share_the_events(make_bus: BusFactory) -> None:
    bus = make_bus()
    first = bus.subscribe(Topic.RUN_PROGRESS, "workers", "w1")
    second = bus.subscribe(Topic.RUN_PROGRESS, "workers", "w2")
    for n in range(20):
        bus.publish(make_event(n))

    got_first = first.receive(max_count=8, block_ms=0)
    first.ack(*got_first)
    got_second = receive_until(second, 12)

    assert len(got_first) == 8
    assert {d.consumer for d in got_second} == {"w2"}
    ids_first = {d.event.id for d in got_first}
    ids_second = {d.event.id for d in got_second}
    assert ids_first.isdisjoint(ids_second)
    assert ids_first | ids_second == {f"evt-{n}" for n in range(20)}
    assert first.receive(block_ms=0) == []
    assert second.receive(block_ms=0) == []


def test_every_group_gets_every_event(make_bus: BusFactory) -> None:
    bus = make_bus()
    urza = bus.subscribe(Topic.KERNEL_PHASE_CHANGED, "urza", "u1")
    operator = bus.subscribe(Topic.KERNEL_PHASE_CHANGED, "operator", "o1")
    events = [make_event(n, Topic.KERNEL_PHASE_CHANGED) for n in range(10)]
    for event in events:
        bus.publish(event)

    assert [d.event for d in receive_until(urza, 10)] == events
    assert [d.event for d in receive_until(operator, 10)] == events


def test_start_position_applies_to_new_groups_only(make_bus: BusFactory) -> None:
    bus = make_bus()
    bus.subscribe(Topic.RUN_PROGRESS, "existing", "c").close()
    bus.publish(make_event(1))

    latest = bus.subscribe(Topic.RUN_PROGRESS, "latest", "c", start=StartPosition.LATEST)
    earliest = bus.subscribe(Topic.RUN_PROGRESS, "earliest", "c")
    existing = bus.subscribe(Topic.RUN_PROGRESS, "existing", "c", start=StartPosition.LATEST)
    bus.publish(make_event(2))

    assert [d.event.id for d in receive_until(latest, 1)] == ["evt-2"]
    assert [d.event.id for d in receive_until(earliest, 2)] == ["evt-1", "evt-2"]
    assert [d.event.id for d in receive_until(existing, 2)] == ["evt-1", "evt-2"]


# -- blocking -------------------------------------------------------------------------------


@pytest.mark.parametrize("block_ms", [None, 60_000], ids=["default", "longer-than-the-bus"])
def test_receive_waits_at_most_the_bus_block_ms(make_bus: BusFactory, block_ms: int | None) -> None:
    bus = make_bus(block_ms=200)
    subscription = bus.subscribe(Topic.RUN_PROGRESS, "g", "c")
    subscription.receive(block_ms=0)  # the first receive's housekeeping is done

    started = time.monotonic()
    assert subscription.receive(block_ms=block_ms) == []
    waited = time.monotonic() - started

    assert 0.15 <= waited < 5.0


def test_a_blocked_receive_returns_when_an_event_arrives(make_bus: BusFactory) -> None:
    bus = make_bus(block_ms=30_000)
    subscription = bus.subscribe(Topic.RUN_PROGRESS, "g", "c")
    subscription.receive(block_ms=0)
    result: list[Delivery] = []
    started = threading.Event()

    def consume() -> None:
        started.set()
        result.extend(subscription.receive())

    thread = threading.Thread(target=consume)
    thread.start()
    started.wait()
    bus.publish(make_event(7))
    thread.join(timeout=20)

    assert not thread.is_alive(), "the receive kept blocking after an event arrived"
    assert [d.event.id for d in result] == ["evt-7"]


# -- at-least-once: reclaiming ---------------------------------------------------------------


def test_unacked_deliveries_are_reclaimed_after_the_idle_threshold(make_bus: BusFactory) -> None:
    idle_ms = 300
    bus = make_bus(claim_idle_ms=idle_ms)
    dead = bus.subscribe(Topic.SEED_LIFECYCLE, "workers", "dead")
    alive = bus.subscribe(Topic.SEED_LIFECYCLE, "workers", "alive")
    bus.publish(make_event(1, Topic.SEED_LIFECYCLE))
    before_delivery = time.monotonic()  # the delivery (and its idle clock) starts after this
    [first] = receive_until(dead, 1, ack=False)  # received, never acknowledged

    early = alive.receive(block_ms=0)
    if time.monotonic() - before_delivery < idle_ms / 1000:
        assert early == []  # certainly not idle long enough yet: not reclaimed

    [again] = early or receive_until(alive, 1, ack=False)

    assert time.monotonic() - before_delivery >= idle_ms / 1000
    assert again.event == first.event
    assert again.entry_id == first.entry_id
    assert again.consumer == "alive"
    assert again.delivery_count == 2
    assert again.redelivered
    assert alive.ack(again) == 1
    assert bus.pending_count(Topic.SEED_LIFECYCLE, "workers") == 0


def test_a_restarted_consumer_first_gets_its_own_pending_deliveries(make_bus: BusFactory) -> None:
    bus = make_bus()  # the default idle threshold (30 s) is never reached in this test
    before = bus.subscribe(Topic.RUN_PROGRESS, "g", "worker-1")
    bus.publish(make_event(1))
    bus.publish(make_event(2))
    receive_until(before, 2, ack=False)
    before.close()  # "crashed" with two deliveries in hand
    bus.publish(make_event(3))

    after = bus.subscribe(Topic.RUN_PROGRESS, "g", "worker-1")
    history = after.receive(block_ms=0)
    new = receive_until(after, 1)

    assert [(d.event.id, d.delivery_count) for d in history] == [("evt-1", 2), ("evt-2", 2)]
    assert [d.event.id for d in new] == ["evt-3"]
    after.ack(*history)
    assert bus.pending_count(Topic.RUN_PROGRESS, "g") == 0


def test_deliveries_beyond_max_deliveries_are_dead_lettered(make_bus: BusFactory) -> None:
    bus = make_bus(claim_idle_ms=50, max_deliveries=2)
    subscription = bus.subscribe(Topic.RUN_PROGRESS, "g", "c")
    bus.publish(make_event(1))
    counts: list[int] = []

    def dead_lettered() -> bool:
        counts.extend(d.delivery_count for d in subscription.receive(block_ms=50))
        return bool(bus.dead_letters())

    wait_until(dead_lettered, what="the dead letter")

    assert counts == [1, 2]
    [letter] = bus.dead_letters()
    assert letter.reason == DeadLetterReason.TOO_MANY_DELIVERIES
    assert letter.delivery_count == 3
    assert letter.payload is not None
    assert Event.model_validate_json(letter.payload).id == "evt-1"
    assert bus.pending_count(Topic.RUN_PROGRESS, "g") == 0


# -- dead letters and trimming ----------------------------------------------------------------


def test_an_invalid_event_is_dead_lettered_and_does_not_block_the_stream(
    make_bus: BusFactory, caplog: pytest.LogCaptureFixture
) -> None:
    bus = make_bus()
    subscription = bus.subscribe(Topic.TELEMETRY, "tamiyo", "t1")
    bad = invalid_event(1)
    bad_id = bus.publish(bad)
    good = make_event(2, Topic.TELEMETRY)
    bus.publish(good)

    with caplog.at_level(logging.ERROR, logger="esper.oona"):
        deliveries = receive_until(subscription, 1)

    assert [d.event for d in deliveries] == [good]
    [letter] = bus.dead_letters()
    assert letter.reason == DeadLetterReason.MALFORMED
    assert "not a valid Event" in letter.error
    assert "TelemetrySnapshot" in letter.error
    assert (letter.topic, letter.source_entry_id) == (Topic.TELEMETRY.value, bad_id)
    assert (letter.group, letter.consumer, letter.delivery_count) == ("tamiyo", "t1", 1)
    assert letter.payload == bad.to_json().encode()
    assert bus.pending_count(Topic.TELEMETRY, "tamiyo") == 0
    assert any(bad_id in record.getMessage() for record in caplog.records)


def test_trimming_keeps_the_newest_maxlen_entries(make_bus: BusFactory) -> None:
    bus = make_bus(maxlen=10, approximate_trim=False)
    for n in range(35):
        bus.publish(make_event(n))

    assert bus.stream_length(Topic.RUN_PROGRESS) == 10
    late = bus.subscribe(Topic.RUN_PROGRESS, "late", "c")
    deliveries = receive_until(late, 10)
    assert [d.event.id for d in deliveries] == [f"evt-{n}" for n in range(25, 35)]


def test_entries_trimmed_while_pending_are_dead_lettered(make_bus: BusFactory) -> None:
    bus = make_bus(maxlen=3, approximate_trim=False, claim_idle_ms=50)
    subscription = bus.subscribe(Topic.RUN_PROGRESS, "g", "c")
    for n in range(3):
        bus.publish(make_event(n))
    held = receive_until(subscription, 3, ack=False)
    for n in range(3, 6):
        bus.publish(make_event(n))  # trims the three pending entries

    rest = receive_until(subscription, 3)

    def all_dead_lettered() -> bool:
        assert subscription.receive(block_ms=50) == []
        return len(bus.dead_letters()) == 3

    wait_until(all_dead_lettered, what="three dead letters")

    letters = bus.dead_letters()
    assert [d.event.id for d in rest] == ["evt-3", "evt-4", "evt-5"]
    assert {letter.source_entry_id for letter in letters} == {d.entry_id for d in held}
    assert {letter.reason for letter in letters} == {DeadLetterReason.TRIMMED}
    assert all(letter.payload is None for letter in letters)
    assert bus.pending_count(Topic.RUN_PROGRESS, "g") == 0


def test_a_group_that_lost_entries_to_trimming_is_reported(
    make_bus: BusFactory, caplog: pytest.LogCaptureFixture
) -> None:
    bus = make_bus(maxlen=5, approximate_trim=False)
    slow = bus.subscribe(Topic.RUN_PROGRESS, "slow", "c")
    bus.publish(make_event(0))
    receive_until(slow, 1)
    for n in range(1, 20):
        bus.publish(make_event(n))  # evt-1 .. evt-14 are trimmed before "slow" reads them
    slow.close()

    with caplog.at_level(logging.ERROR, logger="esper.oona"):
        again = bus.subscribe(Topic.RUN_PROGRESS, "slow", "c")
        deliveries = receive_until(again, 5)

    assert [d.event.id for d in deliveries] == [f"evt-{n}" for n in range(15, 20)]
    lost = [r for r in caplog.records if "events of topic" in r.getMessage()]
    assert len(lost) == 1
    assert "group slow lost 14 events of topic run.progress" in lost[0].getMessage()


# -- validation and closing ------------------------------------------------------------------


def test_arguments_are_validated(make_bus: BusFactory) -> None:
    bus = make_bus(block_ms=100)
    subscription = bus.subscribe(Topic.RUN_PROGRESS, "g", "c")
    with pytest.raises(ValueError, match="max_count"):
        subscription.receive(max_count=0)
    with pytest.raises(ValueError, match="block_ms"):
        subscription.receive(block_ms=-1)
    with pytest.raises(ValueError, match="group name"):
        bus.subscribe(Topic.RUN_PROGRESS, "has space", "c")
    with pytest.raises(ValueError, match="consumer name"):
        bus.subscribe(Topic.RUN_PROGRESS, "g", "")
    with pytest.raises(ValueError, match="at least one topic"):
        bus.subscribe([], "g", "c")
    with pytest.raises(TypeError, match="expected a Topic"):
        bus.subscribe(["run.progress"], "g", "c")  # type: ignore[list-item]


def test_a_closed_bus_refuses_every_call(make_bus: BusFactory) -> None:
    bus = make_bus()
    subscription = bus.subscribe(Topic.RUN_PROGRESS, "g", "c")
    bus.publish(make_event(1))
    [delivery] = receive_until(subscription, 1, ack=False)
    bus.close()
    bus.close()

    with pytest.raises(BusClosedError):
        bus.publish(make_event(2))
    with pytest.raises(BusClosedError):
        subscription.receive()
    with pytest.raises(BusClosedError):
        subscription.ack(delivery)
    with pytest.raises(BusClosedError):
        bus.subscribe(Topic.RUN_PROGRESS, "g", "c2")
    with pytest.raises(BusClosedError):
        bus.dead_letters()
    with pytest.raises(BusClosedError):
        bus.stream_length(Topic.RUN_PROGRESS)
    with pytest.raises(BusClosedError):
        bus.pending_count(Topic.RUN_PROGRESS, "g")
    subscription.close()


def test_a_closed_subscription_refuses_to_receive(make_bus: BusFactory) -> None:
    bus = make_bus()
    with bus.subscribe(Topic.RUN_PROGRESS, "g", "c") as subscription:
        pass
    subscription.close()
    with pytest.raises(BusClosedError, match="closed"):
        subscription.receive()
    assert bus.pending_count(Topic.RUN_PROGRESS, "nobody") == 0
    assert bus.stream_length(Topic.ADAPTATION_DECIDED) == 0


# -- idempotent consumption -------------------------------------------------------------------


def test_a_duplicate_event_is_processed_once(make_bus: BusFactory) -> None:
    bus = make_bus()
    subscription = bus.subscribe(Topic.KERNEL_PHASE_CHANGED, "urza", "u1")
    seen: list[str] = []
    consumer = IdempotentConsumer(subscription, lambda event: seen.append(event.id))
    event = make_event(1, Topic.KERNEL_PHASE_CHANGED)
    bus.publish(event)
    bus.publish(event)  # e.g. a publisher retried after a lost reply

    outcomes = poll_until(consumer, 2)

    assert outcomes == [Outcome.PROCESSED, Outcome.DUPLICATE]
    assert seen == ["evt-1"]
    assert bus.pending_count(Topic.KERNEL_PHASE_CHANGED, "urza") == 0


def test_a_failed_handler_is_retried_after_the_idle_threshold(make_bus: BusFactory) -> None:
    bus = make_bus(claim_idle_ms=100)
    subscription = bus.subscribe(Topic.RUN_PROGRESS, "g", "c")
    attempts: list[int] = []

    def flaky(event: Event) -> None:
        attempts.append(len(attempts))
        if len(attempts) == 1:
            raise RuntimeError("transient failure")

    consumer = IdempotentConsumer(subscription, flaky)
    bus.publish(make_event(1))
    with pytest.raises(RuntimeError, match="transient"):
        consumer.poll(block_ms=500)
    assert not consumer.store.is_done("evt-1")

    outcomes = poll_until(consumer, 1)

    assert outcomes == [Outcome.PROCESSED]
    assert attempts == [0, 1]
    assert consumer.store.is_done("evt-1")
    assert bus.pending_count(Topic.RUN_PROGRESS, "g") == 0


def test_an_event_leased_elsewhere_stays_pending(make_bus: BusFactory) -> None:
    bus = make_bus(claim_idle_ms=100)
    subscription = bus.subscribe(Topic.RUN_PROGRESS, "g", "c")
    seen: list[str] = []
    consumer = IdempotentConsumer(subscription, lambda event: seen.append(event.id))
    assert consumer.store.claim("evt-1", "someone-else", 60_000) is ClaimState.CLAIMED
    bus.publish(make_event(1))

    [delivery] = receive_until(subscription, 1, ack=False)
    assert consumer.handle(delivery) is Outcome.IN_PROGRESS
    assert bus.pending_count(Topic.RUN_PROGRESS, "g") == 1
    assert seen == []

    consumer.store.complete("evt-1")  # the other consumer finished
    outcomes = poll_until(consumer, 1)

    assert outcomes == [Outcome.DUPLICATE]
    assert seen == []
    assert bus.pending_count(Topic.RUN_PROGRESS, "g") == 0


def test_processed_store_leases_and_marks(make_bus: BusFactory) -> None:
    bus = make_bus()
    store = bus.processed_store("group-a", ttl_ms=60_000)
    other = bus.processed_store("group-b")

    assert store.claim("e1", "t1", 60_000) is ClaimState.CLAIMED
    assert store.claim("e1", "t1", 60_000) is ClaimState.CLAIMED  # a retried claim
    assert store.claim("e1", "t2", 60_000) is ClaimState.BUSY
    assert other.claim("e1", "t2", 60_000) is ClaimState.CLAIMED  # namespaces are separate
    store.release("e1", "t2")  # not the holder: no effect
    assert store.claim("e1", "t2", 60_000) is ClaimState.BUSY
    store.release("e1", "t1")
    assert store.claim("e1", "t2", 60_000) is ClaimState.CLAIMED
    assert not store.is_done("e1")
    store.complete("e1")
    assert store.is_done("e1")
    assert store.claim("e1", "t3", 60_000) is ClaimState.DONE

    assert store.claim("e2", "t1", 1) is ClaimState.CLAIMED
    wait_until(lambda: store.claim("e2", "t2", 60_000) is ClaimState.CLAIMED, what="lease expiry")


def test_many_publishers_and_consumers_process_every_event_once(make_bus: BusFactory) -> None:
    bus = make_bus(claim_idle_ms=200)
    total, publishers = 400, 4
    processed: Counter[str] = Counter()
    lock = threading.Lock()
    stop = threading.Event()

    def handler(event: Event) -> None:
        with lock:
            processed[event.id] += 1

    def publish(first: int) -> None:
        for n in range(first, total, publishers):
            bus.publish(make_event(n))
            if n % 50 == 0:
                bus.publish(make_event(n))  # duplicates, as after a retried XADD

    def consume(name: str) -> None:
        consumer = IdempotentConsumer(bus.subscribe(Topic.RUN_PROGRESS, "g", name), handler)
        while not stop.is_set():
            consumer.poll(max_count=16, block_ms=50)

    threads = [threading.Thread(target=consume, args=(f"c{i}",)) for i in range(3)]
    threads += [threading.Thread(target=publish, args=(i,)) for i in range(publishers)]
    for thread in threads:
        thread.start()
    try:
        wait_until(lambda: len(processed) == total, what="every event processed")
        wait_until(lambda: bus.pending_count(Topic.RUN_PROGRESS, "g") == 0, what="all acked")
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=20)

    assert set(processed) == {f"evt-{n}" for n in range(total)}
    assert set(processed.values()) == {1}
