"""In-process bus details beyond the shared behavioural suite (tests/integration/oona)."""

from __future__ import annotations

import threading

import pytest

from esper.contracts import Topic
from esper.oona import (
    BusClosedError,
    DeadLetterReason,
    Delivery,
    InProcessBus,
    MemoryProcessedStore,
    Subscription,
)
from esper.oona._core import MalformedEntryError, decode_event, parse_id

from .factories import invalid_event, make_event, receive_until


def test_entry_ids_are_unique_within_one_millisecond() -> None:
    bus = InProcessBus()
    ids = [bus.publish(make_event(n)) for n in range(500)]
    assert len(set(ids)) == 500
    assert [parse_id(entry_id) for entry_id in ids] == sorted(parse_id(i) for i in ids)


def test_long_streams_are_trimmed_and_compacted() -> None:
    bus = InProcessBus(maxlen=10)
    early = bus.subscribe(Topic.RUN_PROGRESS, "early", "c")
    for n in range(3000):
        bus.publish(make_event(n))

    assert bus.stream_length(Topic.RUN_PROGRESS) == 10
    late = bus.subscribe(Topic.RUN_PROGRESS, "late", "c")
    assert [d.event.id for d in receive_until(late, 10)] == [f"evt-{n}" for n in range(2990, 3000)]
    # The group that existed all along lost everything but the last ten.
    assert [d.event.id for d in receive_until(early, 10)] == [f"evt-{n}" for n in range(2990, 3000)]


def test_reclaiming_scans_the_pending_list_in_steps() -> None:
    bus = InProcessBus(claim_idle_ms=20)
    dead = bus.subscribe(Topic.RUN_PROGRESS, "g", "dead")
    for n in range(60):
        bus.publish(make_event(n))
    receive_until(dead, 60, ack=False)
    alive = bus.subscribe(Topic.RUN_PROGRESS, "g", "alive")

    # max_count=2 scans at most 20 pending entries per receive, like XAUTOCLAIM's COUNT.
    taken = receive_until(alive, 60, max_count=2)

    assert sorted(d.event.id for d in taken) == sorted(f"evt-{n}" for n in range(60))
    assert all(d.delivery_count == 2 for d in taken)
    assert bus.pending_count(Topic.RUN_PROGRESS, "g") == 0


def test_the_dead_letter_stream_is_bounded() -> None:
    bus = InProcessBus(dead_letter_maxlen=3)
    subscription = bus.subscribe(Topic.TELEMETRY, "g", "c")
    for n in range(5):
        bus.publish(invalid_event(n))
    assert subscription.receive(block_ms=0) == []

    letters = bus.dead_letters()
    assert len(letters) == 3
    assert [letter.reason for letter in letters] == [DeadLetterReason.MALFORMED] * 3
    assert bus.dead_letters(count=1) == letters[:1]
    assert bus.pending_count(Topic.TELEMETRY, "g") == 0


def _receive_in_thread(subscription: Subscription) -> tuple[threading.Thread, list[Exception]]:
    """Start a thread blocked in receive(); it records the BusClosedError that ends it."""
    errors: list[Exception] = []
    waiting = threading.Event()

    def consume() -> None:
        waiting.set()
        try:
            subscription.receive()
        except BusClosedError as error:
            errors.append(error)

    thread = threading.Thread(target=consume)
    thread.start()
    waiting.wait()
    return thread, errors


def test_closing_the_bus_wakes_a_blocked_receive() -> None:
    bus = InProcessBus(block_ms=60_000)
    subscription = bus.subscribe(Topic.RUN_PROGRESS, "g", "c")
    subscription.receive(block_ms=0)
    thread, errors = _receive_in_thread(subscription)

    bus.close()
    thread.join(timeout=10)

    assert not thread.is_alive()
    assert [type(error) for error in errors] == [BusClosedError]
    assert bus.closed


def test_closing_a_subscription_wakes_its_blocked_receive() -> None:
    bus = InProcessBus(block_ms=60_000)
    subscription = bus.subscribe(Topic.RUN_PROGRESS, "g", "c")
    subscription.receive(block_ms=0)
    thread, errors = _receive_in_thread(subscription)

    subscription.close()
    thread.join(timeout=10)

    assert not thread.is_alive()
    assert [type(error) for error in errors] == [BusClosedError]


def test_processed_stores_are_shared_per_namespace() -> None:
    bus = InProcessBus()
    store = bus.processed_store("urza")
    assert isinstance(store, MemoryProcessedStore)
    assert bus.processed_store("urza") is store
    assert bus.processed_store("operator") is not store
    with pytest.raises(ValueError, match="namespace"):
        bus.processed_store("not valid")


def test_constructor_arguments_are_validated() -> None:
    with pytest.raises(ValueError, match="maxlen must be positive"):
        InProcessBus(maxlen=0)
    with pytest.raises(ValueError, match="claim_idle_ms"):
        InProcessBus(claim_idle_ms=-1)
    with pytest.raises(ValueError, match="max_deliveries"):
        InProcessBus(max_deliveries=0)
    assert InProcessBus(max_deliveries=None).max_deliveries is None
    assert repr(InProcessBus(maxlen=5)) == "InProcessBus(maxlen=5, claim_idle_ms=30000)"


def test_a_subscription_describes_itself() -> None:
    bus = InProcessBus()
    subscription = bus.subscribe([Topic.RUN_PROGRESS, Topic.TELEMETRY], "g", "c")
    assert repr(subscription) == "<InProcessSubscription g/c on run.progress,telemetry.snapshot>"
    assert subscription.bus is bus


def test_delivery_reports_redelivery() -> None:
    event = make_event(1)
    first = Delivery(event, Topic.RUN_PROGRESS, "1-0", "g", "c", 1)
    again = Delivery(event, Topic.RUN_PROGRESS, "1-0", "g", "c", 3)
    assert not first.redelivered
    assert again.redelivered


@pytest.mark.parametrize(
    ("data", "reason", "message"),
    [
        (None, DeadLetterReason.MALFORMED, "no 'event' field"),
        (b"\xff", DeadLetterReason.MALFORMED, "not UTF-8"),
        ("[]", DeadLetterReason.MALFORMED, "not a valid Event"),
        (
            make_event(1, Topic.TELEMETRY).to_json(),
            DeadLetterReason.TOPIC_MISMATCH,
            "of topic 'telemetry.snapshot' in the stream of topic 'run.progress'",
        ),
    ],
)
def test_decoding_rejects_what_is_not_an_event_of_the_topic(
    data: bytes | str | None, reason: DeadLetterReason, message: str
) -> None:
    with pytest.raises(MalformedEntryError, match=message) as raised:
        decode_event(Topic.RUN_PROGRESS, data)
    assert raised.value.reason is reason


def test_decoding_accepts_bytes_and_text() -> None:
    event = make_event(1)
    assert decode_event(Topic.RUN_PROGRESS, event.to_json()) == event
    assert decode_event(Topic.RUN_PROGRESS, event.to_json().encode()) == event
    assert parse_id("5") == (5, 0)
