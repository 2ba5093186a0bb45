"""Helpers shared by Oona's unit and integration tests: events and bounded polls."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime

from esper.contracts import Event, Topic
from esper.oona import Delivery, IdempotentConsumer, Outcome, Subscription

from ..contracts.samples import payload_for

POLL_TIMEOUT_S = 30.0
"""Upper bound of every bounded poll: generous, a passing test returns long before it."""


def make_event(
    n: int = 0, topic: Topic = Topic.RUN_PROGRESS, *, event_id: str | None = None
) -> Event:
    """A valid event of a topic, with id ``evt-<n>`` unless given."""
    return Event(
        id=event_id or f"evt-{n}",
        topic=topic,
        trace_id=f"trace-{n}",
        source="test",
        payload=payload_for(topic),
    )


def invalid_event(n: int = 0) -> Event:
    """An event that bypassed validation: topic telemetry.snapshot with a RunProgress payload.

    It serialises fine but does not parse back, as a producer on a skewed contract would send.
    """
    return Event.model_construct(
        id=f"bad-{n}",
        topic=Topic.TELEMETRY,
        trace_id="trace-bad",
        source="test",
        created_at=datetime.now(UTC),
        payload=payload_for(Topic.RUN_PROGRESS),
    )


def wait_until(
    condition: Callable[[], bool], *, timeout_s: float = POLL_TIMEOUT_S, what: str = "condition"
) -> None:
    """Poll ``condition`` every 10 ms until it holds; fail after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        time.sleep(0.01)


def receive_until(
    subscription: Subscription,
    count: int,
    *,
    max_count: int = 100,
    timeout_s: float = POLL_TIMEOUT_S,
    ack: bool = True,
) -> list[Delivery]:
    """Receive (and by default acknowledge) until ``count`` deliveries arrived; bounded."""
    got: list[Delivery] = []
    deadline = time.monotonic() + timeout_s
    while len(got) < count:
        if time.monotonic() > deadline:
            raise AssertionError(f"received {len(got)} of {count} deliveries in {timeout_s}s")
        batch = subscription.receive(max_count=max_count, block_ms=50)
        if ack and batch:
            subscription.ack(*batch)
        got.extend(batch)
    return got


def poll_until(
    consumer: IdempotentConsumer, count: int, *, timeout_s: float = POLL_TIMEOUT_S
) -> list[Outcome]:
    """Poll an idempotent consumer until ``count`` outcomes arrived; bounded."""
    outcomes: list[Outcome] = []
    deadline = time.monotonic() + timeout_s
    while len(outcomes) < count:
        if time.monotonic() > deadline:
            raise AssertionError(f"got {len(outcomes)} of {count} outcomes in {timeout_s}s")
        outcomes.extend(consumer.poll(block_ms=50))
    return outcomes
