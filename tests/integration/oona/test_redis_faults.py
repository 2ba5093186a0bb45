"""Faults: Redis restarts or crashes while events are in flight; nothing is lost or repeated."""

from __future__ import annotations

import logging
import threading
from collections import Counter
from collections.abc import Callable, Iterator

import pytest

from esper.contracts import Event, Topic
from esper.oona import (
    BackgroundPublisher,
    BusUnavailableError,
    IdempotentConsumer,
    RedisStreamsBus,
)
from tests.servers import RedisServer
from tests.support.reliability import note_faults, note_lost, note_served
from tests.unit.oona.factories import POLL_TIMEOUT_S, make_event, receive_until, wait_until

pytestmark = [
    pytest.mark.redis,
    pytest.mark.timeout(180),
    pytest.mark.reliability("redis-restarted"),
]

TOTAL = 300
HELD_EVENT = "evt-60"
CONSUMERS = 2


@pytest.fixture(scope="module")
def durable_redis() -> Iterator[RedisServer]:
    """A Redis that fsyncs every write, so a crash (SIGKILL) loses nothing acknowledged."""
    with RedisServer(appendfsync="always") as server:
        yield server


def _bus(url: str) -> RedisStreamsBus:
    # Small timeouts so the outage is noticed quickly; a generous max_deliveries because the
    # held delivery is reclaimed (and counted) several times while its handler waits.
    return RedisStreamsBus(
        url, claim_idle_ms=300, block_ms=200, socket_timeout_ms=500, retries=1, max_deliveries=1000
    )


def _run_through_outage(
    url: str, take_down: Callable[[], None], bring_back: Callable[[], None]
) -> None:
    """Publish TOTAL events, take Redis down with events in flight, check exactly-once.

    In flight during the outage: events queued in the publisher, events in the streams,
    deliveries received but not acknowledged, and one delivery whose handler finishes while
    Redis is down (so its done mark cannot be written then).
    """
    processed: Counter[str] = Counter()
    lock = threading.Lock()
    stop = threading.Event()
    holding = threading.Event()
    released = threading.Event()
    unavailable: Counter[str] = Counter()
    holder: list[str] = []

    def handler(event: Event) -> None:
        if event.id == HELD_EVENT and not released.is_set():
            holder.append(threading.current_thread().name)
            holding.set()  # this delivery is mid-handler (leased, unacked) when Redis goes
            released.wait(timeout=POLL_TIMEOUT_S)
        with lock:
            processed[event.id] += 1

    def consume(name: str) -> None:
        with _bus(url) as bus:
            subscription = bus.subscribe(Topic.RUN_PROGRESS, "fault", name)
            consumer = IdempotentConsumer(subscription, handler, lease_ms=30_000)
            while not stop.is_set():
                try:
                    consumer.poll(max_count=10, block_ms=100)
                except BusUnavailableError:
                    unavailable[name] += 1
                    stop.wait(0.05)

    with _bus(url) as publisher_bus:
        publisher_bus.subscribe(Topic.RUN_PROGRESS, "fault", "setup").close()
        publisher = BackgroundPublisher(publisher_bus, retry_ms=50)
        threads = [
            threading.Thread(target=consume, args=(f"c{i}",), name=f"c{i}", daemon=True)
            for i in range(CONSUMERS)
        ]
        for thread in threads:
            thread.start()
        try:
            for n in range(TOTAL // 2):
                assert publisher.publish(make_event(n))
            assert holding.wait(POLL_TIMEOUT_S), "the held event never reached a handler"
            for n in range(TOTAL // 2, TOTAL):
                assert publisher.publish(make_event(n))  # queued while Redis goes away
            take_down()
            note_faults()
            wait_until(lambda: sum(unavailable.values()) > 0, what="a consumer to see the outage")
            released.set()  # the held handler finishes while Redis is down
            wait_until(lambda: unavailable[holder[0]] > 0, what="the held event's mark to fail")
            bring_back()
            assert publisher.flush(int(POLL_TIMEOUT_S * 1000)), "publisher did not catch up"
            wait_until(lambda: len(processed) == TOTAL, what="every event processed")
            wait_until(
                lambda: publisher_bus.pending_count(Topic.RUN_PROGRESS, "fault") == 0,
                what="every delivery acknowledged",
            )
        finally:
            released.set()
            stop.set()
            for thread in threads:
                thread.join(timeout=30)
            assert publisher.close(1000) == 0
        assert publisher_bus.dead_letters() == []

    note_served(sum(processed.values()))
    note_lost(len({f"evt-{n}" for n in range(TOTAL)} - set(processed)))
    assert set(processed) == {f"evt-{n}" for n in range(TOTAL)}
    duplicates = {event_id: count for event_id, count in processed.items() if count != 1}
    assert duplicates == {}
    assert sum(unavailable.values()) > 0, "the consumers never noticed the outage"


def test_restart_while_events_are_in_flight(
    redis_server: RedisServer, redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="esper.oona"):
        _run_through_outage(redis_url, redis_server.stop, redis_server.start)


def test_crash_while_events_are_in_flight(durable_redis: RedisServer) -> None:
    durable_redis.ensure_running()
    durable_redis.flush_all()

    _run_through_outage(durable_redis.url(), durable_redis.kill, durable_redis.start)


def test_a_subscription_carries_on_after_redis_returns(
    redis_server: RedisServer, redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    with _bus(redis_url) as bus:
        subscription = bus.subscribe(Topic.RUN_PROGRESS, "g", "c")
        leaving = bus.subscribe(Topic.RUN_PROGRESS, "g", "leaving")
        bus.publish(make_event(1))
        [held] = receive_until(subscription, 1, ack=False)
        redis_server.stop()
        note_faults()

        with caplog.at_level(logging.WARNING, logger="esper.oona"):
            leaving.close()  # best effort while Redis is down: a warning, no error
        assert any("could not remove consumer leaving" in r.getMessage() for r in caplog.records)

        with pytest.raises(BusUnavailableError):
            subscription.receive()
        with pytest.raises(BusUnavailableError):
            subscription.ack(held)
        with pytest.raises(BusUnavailableError):
            bus.publish(make_event(2))

        redis_server.start()
        bus.publish(make_event(2))
        deliveries = receive_until(subscription, 2)

    # The unacknowledged evt-1 survived the restart and came back (reclaimed) with evt-2.
    note_served(len(deliveries))
    note_lost(len({"evt-1", "evt-2"} - {d.event.id for d in deliveries}))
    assert sorted(d.event.id for d in deliveries) == ["evt-1", "evt-2"]
