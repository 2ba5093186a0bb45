"""IdempotentConsumer's paths around store failures, with a store that fails on demand."""

from __future__ import annotations

import logging

import pytest

from esper.contracts import Event, Topic
from esper.oona import (
    BusUnavailableError,
    ClaimState,
    IdempotentConsumer,
    InProcessBus,
    MemoryProcessedStore,
    Outcome,
)

from .factories import make_event, receive_until


class FlakyStore(MemoryProcessedStore):
    """A memory store whose operations fail while their switch is on."""

    def __init__(self) -> None:
        super().__init__(ttl_ms=60_000)
        self.fail_complete = False
        self.fail_release = False

    def complete(self, event_id: str) -> None:
        if self.fail_complete:
            raise BusUnavailableError("store down")
        super().complete(event_id)

    def release(self, event_id: str, token: str) -> None:
        if self.fail_release:
            raise BusUnavailableError("store down")
        super().release(event_id, token)


def test_a_mark_that_could_not_be_written_prevents_a_second_processing() -> None:
    bus = InProcessBus(claim_idle_ms=10)
    subscription = bus.subscribe(Topic.RUN_PROGRESS, "g", "c")
    store = FlakyStore()
    seen: list[str] = []
    consumer = IdempotentConsumer(subscription, lambda e: seen.append(e.id), store=store)
    bus.publish(make_event(1))
    [delivery] = receive_until(subscription, 1, ack=False)

    store.fail_complete = True
    with pytest.raises(BusUnavailableError):
        consumer.handle(delivery)
    assert consumer.unrecorded == frozenset({"evt-1"})
    with pytest.raises(BusUnavailableError):
        consumer.poll(block_ms=0)  # still down: the mark is written before anything else
    store.fail_complete = False

    assert consumer.handle(delivery) is Outcome.DUPLICATE
    assert consumer.unrecorded == frozenset()
    assert store.is_done("evt-1")
    assert seen == ["evt-1"]
    assert bus.pending_count(Topic.RUN_PROGRESS, "g") == 0


def test_poll_writes_outstanding_marks_first() -> None:
    bus = InProcessBus()
    subscription = bus.subscribe(Topic.RUN_PROGRESS, "g", "c")
    store = FlakyStore()
    consumer = IdempotentConsumer(subscription, lambda e: None, store=store)
    bus.publish(make_event(1))
    store.fail_complete = True
    with pytest.raises(BusUnavailableError):
        consumer.poll(block_ms=0)
    store.fail_complete = False

    assert consumer.poll(block_ms=0) == []
    assert store.is_done("evt-1")
    assert consumer.unrecorded == frozenset()


def test_a_failed_release_is_logged_and_the_handler_error_wins(
    caplog: pytest.LogCaptureFixture,
) -> None:
    bus = InProcessBus()
    subscription = bus.subscribe(Topic.RUN_PROGRESS, "g", "c")
    store = FlakyStore()
    store.fail_release = True

    def broken(event: Event) -> None:
        raise KeyError(event.id)

    consumer = IdempotentConsumer(subscription, broken, store=store)
    bus.publish(make_event(1))
    with caplog.at_level(logging.WARNING, logger="esper.oona"), pytest.raises(KeyError):
        consumer.poll(block_ms=0)

    assert any("could not release" in r.getMessage() for r in caplog.records)
    assert store.claim("evt-1", "other", 1000) is ClaimState.BUSY  # the lease runs out later
    assert bus.pending_count(Topic.RUN_PROGRESS, "g") == 1


def test_the_default_store_is_the_bus_store_of_the_group() -> None:
    bus = InProcessBus()
    consumer = IdempotentConsumer(bus.subscribe(Topic.RUN_PROGRESS, "g", "c"), print)
    assert consumer.store is bus.processed_store("g")
    with pytest.raises(ValueError, match="lease_ms"):
        IdempotentConsumer(consumer.subscription, print, lease_ms=0)
