"""BackgroundPublisher: never waits, retries while the bus is down, refuses loudly when full."""

from __future__ import annotations

import logging
import threading

import pytest

from esper.contracts import Event, Topic
from esper.oona import BackgroundPublisher, BusClosedError, BusUnavailableError, InProcessBus

from .factories import make_event, receive_until


class GatedBus(InProcessBus):
    """An in-process bus that is unavailable until opened, or closed under the publisher."""

    def __init__(self) -> None:
        super().__init__()
        self.available = threading.Event()
        self.attempts = 0

    def publish(self, event: Event) -> str:
        self.attempts += 1
        if not self.available.is_set():
            raise BusUnavailableError("down")
        return super().publish(event)


def test_events_are_published_in_order() -> None:
    bus = InProcessBus()
    subscription = bus.subscribe(Topic.RUN_PROGRESS, "g", "c")
    publisher = BackgroundPublisher(bus)
    for n in range(100):
        assert publisher.publish(make_event(n))

    assert publisher.flush(10_000)
    assert publisher.backlog == 0
    assert publisher.published == 100
    assert [d.event.id for d in receive_until(subscription, 100)] == [
        f"evt-{n}" for n in range(100)
    ]
    assert publisher.close() == 0
    with pytest.raises(BusClosedError):
        publisher.publish(make_event(100))


def test_publishing_retries_until_the_bus_is_back(caplog: pytest.LogCaptureFixture) -> None:
    bus = GatedBus()
    subscription = bus.subscribe(Topic.RUN_PROGRESS, "g", "c")
    with caplog.at_level(logging.INFO, logger="esper.oona"):
        publisher = BackgroundPublisher(bus, retry_ms=5)
        publisher.publish(make_event(1))
        assert not publisher.flush(50)
        assert bus.attempts >= 1
        bus.available.set()
        assert publisher.flush(10_000)
        publisher.close()

    assert [d.event.id for d in receive_until(subscription, 1)] == ["evt-1"]
    messages = [r.getMessage() for r in caplog.records]
    assert any("publisher retrying" in m for m in messages)
    assert any("publisher resumed" in m for m in messages)


def test_a_full_queue_refuses_events_loudly(caplog: pytest.LogCaptureFixture) -> None:
    bus = GatedBus()  # down: nothing leaves the queue
    publisher = BackgroundPublisher(bus, capacity=3, retry_ms=5)
    with caplog.at_level(logging.ERROR, logger="esper.oona"):
        accepted = [publisher.publish(make_event(n)) for n in range(5)]
        left = publisher.close(timeout_ms=20)

    assert accepted == [True, True, True, False, False]
    assert publisher.dropped == 2
    assert left == 3
    messages = [r.getMessage() for r in caplog.records]
    assert sum("queue full" in m for m in messages) == 1  # rate-limited
    assert any("3 events unpublished" in m for m in messages)


def test_a_bus_closed_under_the_publisher_stops_it(caplog: pytest.LogCaptureFixture) -> None:
    bus = InProcessBus()
    bus.close()
    with caplog.at_level(logging.ERROR, logger="esper.oona"):
        publisher = BackgroundPublisher(bus)
        publisher.publish(make_event(1))
        assert not publisher.flush(10_000)
        assert publisher.close() == 1
    assert any("bus closed under the publisher" in r.getMessage() for r in caplog.records)


def test_arguments_are_validated() -> None:
    with pytest.raises(ValueError, match="capacity"):
        BackgroundPublisher(InProcessBus(), capacity=0)
