"""Idempotent consumption: process each event once even though the bus delivers at least once.

:class:`IdempotentConsumer` wraps a subscription and a handler. For each delivery it claims the
event id in a :class:`~esper.oona.ProcessedStore` (a lease), runs the handler, marks the id done
and acknowledges the delivery, in that order:

- a redelivery of a done event is acknowledged without running the handler;
- a delivery whose event is leased by another live consumer (the same event published twice
  and delivered to two consumers at once) is left pending and comes back after
  ``claim_idle_ms``, by when the other consumer has finished;
- a handler that raises releases the lease and leaves the delivery pending, so the event is
  retried (and dead-lettered after ``max_deliveries``);
- a consumer that dies mid-handler leaves a lease that expires after ``lease_ms``; the
  delivery is reclaimed by another consumer, which then processes the event;
- when the done mark cannot be written (Redis is down) the consumer remembers the id and
  writes the mark before it handles anything else, so a Redis outage does not cause a second
  processing either.

The one remaining window is a consumer process dying after its handler finished but before
the done mark was written: the event is then processed again. Handlers whose effects must
never repeat make them idempotent themselves (for example an upsert keyed by the event id).
"""

import secrets
from collections.abc import Callable
from enum import StrEnum

from esper.contracts import Event
from esper.oona._core import LOG, check_positive
from esper.oona.bus import BusUnavailableError, Delivery, Subscription
from esper.oona.store import ClaimState, ProcessedStore

DEFAULT_LEASE_MS = 60_000
"""Default lease on an event id while its handler runs."""


class Outcome(StrEnum):
    """What :meth:`IdempotentConsumer.handle` did with a delivery."""

    PROCESSED = "processed"
    """The handler ran; the delivery is acknowledged."""
    DUPLICATE = "duplicate"
    """The event was processed before; the delivery is acknowledged, the handler did not run."""
    IN_PROGRESS = "in-progress"
    """Another consumer holds the event's lease; the delivery stays pending for a retry."""


class IdempotentConsumer:
    """Runs a handler once per event id over an at-least-once subscription.

    Attributes:
        subscription: The subscription deliveries come from and are acknowledged on.
        store: Where processed event ids are remembered.
    """

    def __init__(
        self,
        subscription: Subscription,
        handler: Callable[[Event], object],
        *,
        store: ProcessedStore | None = None,
        lease_ms: int = DEFAULT_LEASE_MS,
    ) -> None:
        """Wrap a subscription and a handler.

        Args:
            subscription: The subscription.
            handler: Called with each event once; its return value is ignored; an exception
                propagates and the event is retried later.
            store: The idempotency store; by default the bus's store for the subscription's
                group (in Redis for a Redis bus, in memory for an in-process bus).
            lease_ms: How long an event id stays leased while the handler runs; longer than
                the handler may take.

        Raises:
            ValueError: ``lease_ms`` is not positive.
        """
        self.subscription = subscription
        self.store = (
            store if store is not None else subscription.bus.processed_store(subscription.group)
        )
        self._handler = handler
        self._lease_ms = check_positive("lease_ms", lease_ms)
        self._unrecorded: set[str] = set()

    @property
    def unrecorded(self) -> frozenset[str]:
        """Event ids processed whose done mark could not be written yet."""
        return frozenset(self._unrecorded)

    def record_pending_marks(self) -> None:
        """Write the done marks that an earlier outage prevented.

        Raises:
            BusUnavailableError: The store still does not answer.
        """
        for event_id in sorted(self._unrecorded):
            self.store.complete(event_id)
            self._unrecorded.discard(event_id)

    def handle(self, delivery: Delivery) -> Outcome:
        """Process one delivery at most once per event id, then acknowledge it.

        Args:
            delivery: A delivery of :attr:`subscription`.

        Returns:
            What happened.

        Raises:
            BusUnavailableError: The bus or store did not answer; the delivery stays pending
                and comes back later.
            Exception: Whatever the handler raised; the delivery stays pending.
        """
        event_id = delivery.event.id
        if event_id in self._unrecorded:
            self.record_pending_marks()
            self.subscription.ack(delivery)
            return Outcome.DUPLICATE
        token = secrets.token_hex(8)
        state = self.store.claim(event_id, token, self._lease_ms)
        if state is ClaimState.DONE:
            self.subscription.ack(delivery)
            return Outcome.DUPLICATE
        if state is ClaimState.BUSY:
            return Outcome.IN_PROGRESS
        finished = False
        try:
            self._handler(delivery.event)
            finished = True
        finally:
            if not finished:
                self._release(event_id, token)
        try:
            self.store.complete(event_id)
        except BusUnavailableError:
            self._unrecorded.add(event_id)
            raise
        self.subscription.ack(delivery)
        return Outcome.PROCESSED

    def poll(self, max_count: int = 100, block_ms: int | None = None) -> list[Outcome]:
        """Receive one batch and handle each delivery in order.

        Marks left from an outage are written first. When a handler raises, the rest of the
        batch stays pending and is redelivered after ``claim_idle_ms``.

        Args:
            max_count: Most deliveries per topic.
            block_ms: Longest wait for new events (the bus's ``block_ms`` by default).

        Returns:
            The outcome of each delivery.

        Raises:
            BusUnavailableError: The bus or store did not answer.
            BusClosedError: The subscription or bus is closed.
        """
        if self._unrecorded:
            self.record_pending_marks()
        deliveries = self.subscription.receive(max_count, block_ms)
        return [self.handle(delivery) for delivery in deliveries]

    def _release(self, event_id: str, token: str) -> None:
        try:
            self.store.release(event_id, token)
        except BusUnavailableError as error:
            # The lease expires by itself after lease_ms; the handler's error matters more.
            LOG.warning("oona: could not release the lease on event %s: %s", event_id, error)
