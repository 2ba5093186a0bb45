"""Oona's bus interface: publish typed events, consume them in consumer groups, acknowledge.

One interface, two implementations with the same semantics: :class:`esper.oona.RedisStreamsBus`
(cluster) and :class:`esper.oona.InProcessBus` (the embedded default). The API is synchronous
with bounded waits: :meth:`Subscription.receive` blocks at most ``block_ms`` and every Redis
command has a socket timeout, so no call waits on the bus for long. asyncio callers (Urza's
FastAPI app, the kopf operator) run the calls in a thread (``asyncio.to_thread``); a training
loop that must never wait at all publishes through :class:`esper.oona.BackgroundPublisher`.

Delivery is at-least-once. Each topic is a stream; a consumer group sees every event of the
stream once, shared among its consumers. A delivery stays *pending* until it is acknowledged;
a pending delivery idle for longer than ``claim_idle_ms`` (its consumer died or hangs) is
reclaimed by another consumer of the group and delivered again, with a higher
``delivery_count``. Consumers are therefore idempotent by event id
(:class:`esper.oona.IdempotentConsumer`).

An entry that cannot be delivered -- it is not a valid :class:`~esper.contracts.Event` of its
topic, it was trimmed away before it was acknowledged, or it was delivered more than
``max_deliveries`` times without an acknowledgement -- is copied to the dead-letter stream with
the reason, logged at ERROR level and acknowledged, so it never blocks the stream and is never
dropped silently.
"""

import abc
import re
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum
from types import TracebackType
from typing import TypeVar

from esper.contracts import Event, Topic
from esper.oona.store import ProcessedStore

DEFAULT_PREFIX = "esper:events:"
"""Default key prefix: topic ``t`` lives in the stream ``esper:events:t``."""

DEAD_LETTER_NAME = "dead-letter"
"""Name of the dead-letter stream under the prefix (``esper:events:dead-letter``)."""

DEFAULT_MAXLEN = 10_000
"""Default number of entries a topic's stream keeps (older ones are trimmed)."""

DEFAULT_DEAD_LETTER_MAXLEN = 10_000
"""Default number of entries the dead-letter stream keeps."""

DEFAULT_CLAIM_IDLE_MS = 30_000
"""Default idle time after which another consumer reclaims a pending delivery."""

DEFAULT_BLOCK_MS = 1_000
"""Default (and longest) time a receive waits for new events."""

DEFAULT_MAX_DELIVERIES = 10
"""Default number of deliveries after which an unacknowledged event is dead-lettered."""

DEFAULT_PROCESSED_TTL_MS = 7 * 24 * 3600 * 1000
"""Default lifetime of an idempotency mark (a processed event id): seven days."""

MAX_RECEIVE_COUNT = 10_000
"""Largest batch a single receive may ask for, per topic."""

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")

_SubscriptionT = TypeVar("_SubscriptionT", bound="Subscription")
_BusT = TypeVar("_BusT", bound="Bus")


class OonaError(RuntimeError):
    """Base class of the bus's errors."""


class BusUnavailableError(OonaError):
    """The bus backend (Redis) did not answer in time; the call may be retried later."""


class BusClosedError(OonaError):
    """The bus or subscription was closed."""


class StartPosition(StrEnum):
    """Where a consumer group starts reading when it is created.

    An existing group keeps its position; this only matters for the first subscriber.
    """

    EARLIEST = "earliest"
    """Every event still retained in the stream (the default: nothing published before the
    first consumer started is missed)."""
    LATEST = "latest"
    """Only events published after the group is created."""


class DeadLetterReason(StrEnum):
    """Why an entry went to the dead-letter stream."""

    MALFORMED = "malformed"
    """The entry is not a valid Event (missing field, not UTF-8, not JSON, fails the contract)."""
    TOPIC_MISMATCH = "topic-mismatch"
    """The entry is a valid Event of another topic than the stream it was found in."""
    TRIMMED = "trimmed"
    """The entry was trimmed from its stream (``maxlen``) while it was pending."""
    TOO_MANY_DELIVERIES = "too-many-deliveries"
    """The entry was delivered more than ``max_deliveries`` times without an acknowledgement."""


@dataclass(frozen=True, slots=True)
class Delivery:
    """One delivery of an event to one consumer of a group.

    Attributes:
        event: The event.
        topic: The topic (stream) it was read from.
        entry_id: The stream entry id (``<milliseconds>-<sequence>``); acknowledgements use it.
        group: The consumer group.
        consumer: The consumer that holds the delivery.
        delivery_count: How often the entry has been delivered to the group, this time included
            (1 for a first delivery).
    """

    event: Event
    topic: Topic
    entry_id: str
    group: str
    consumer: str
    delivery_count: int

    @property
    def redelivered(self) -> bool:
        """Whether the entry was delivered before (to this or another consumer)."""
        return self.delivery_count > 1


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """An entry of the dead-letter stream.

    Attributes:
        entry_id: Id of the dead-letter entry itself.
        topic: Topic (stream) of the original entry.
        source_entry_id: Id of the original entry in its stream.
        group: The consumer group that gave up on it.
        consumer: The consumer that gave up on it.
        reason: A :class:`DeadLetterReason` value.
        error: What was wrong, in words.
        delivery_count: Deliveries of the original entry to the group.
        payload: The original entry's raw payload, or None when there was none (trimmed or
            missing).
    """

    entry_id: str
    topic: str
    source_entry_id: str
    group: str
    consumer: str
    reason: str
    error: str
    delivery_count: int
    payload: bytes | None


def check_name(value: str, what: str) -> str:
    """Validate a group or consumer name (the contract's identifier alphabet).

    Args:
        value: The name.
        what: ``"group"`` or ``"consumer"``, for the error message.

    Returns:
        The name.

    Raises:
        ValueError: The name is empty, too long or has characters outside ``[A-Za-z0-9._:-]``.
    """
    if not _NAME.match(value):
        raise ValueError(
            f"{what} name {value!r} must match {_NAME.pattern} "
            "(letters, digits, '.', '_', ':', '-')"
        )
    return value


def normalise_topics(topics: Topic | Iterable[Topic]) -> tuple[Topic, ...]:
    """Turn one topic or several into a tuple of distinct topics, in the given order.

    Args:
        topics: A topic or an iterable of topics.

    Returns:
        The topics, without duplicates.

    Raises:
        ValueError: No topic was given.
        TypeError: An item is not a :class:`~esper.contracts.Topic`.
    """
    items = [topics] if isinstance(topics, Topic) else list(topics)
    result: list[Topic] = []
    for item in items:
        if not isinstance(item, Topic):
            raise TypeError(f"expected a Topic, got {item!r}")
        if item not in result:
            result.append(item)
    if not result:
        raise ValueError("subscribe to at least one topic")
    return tuple(result)


class Subscription(abc.ABC):
    """A consumer's membership in a consumer group on one or more topics.

    Create one with :meth:`Bus.subscribe`. A subscription is meant to be used by one thread at
    a time for :meth:`receive`; :meth:`ack` may be called from any thread.
    """

    @property
    @abc.abstractmethod
    def bus(self) -> "Bus":
        """The bus this subscription belongs to."""

    @property
    @abc.abstractmethod
    def topics(self) -> tuple[Topic, ...]:
        """The subscribed topics."""

    @property
    @abc.abstractmethod
    def group(self) -> str:
        """The consumer group."""

    @property
    @abc.abstractmethod
    def consumer(self) -> str:
        """This consumer's name within the group."""

    @abc.abstractmethod
    def receive(self, max_count: int = 100, block_ms: int | None = None) -> list[Delivery]:
        """Return the next deliveries, waiting at most ``block_ms`` when there are none.

        In order of preference a receive returns: this consumer's own pending deliveries left
        from an earlier life (once, after subscribing); pending deliveries of the group idle for
        longer than ``claim_idle_ms`` (reclaimed from dead consumers; checked at most every
        ``claim_idle_ms / 2``); new events. Entries that cannot be delivered go to the dead-letter
        stream instead (see the module docstring), so a receive may return fewer deliveries than
        it read, or none without waiting.

        Args:
            max_count: Most deliveries to return per topic (1 to 10,000).
            block_ms: Longest wait for new events in milliseconds; 0 does not wait; None uses
                the bus's ``block_ms``, which is also the upper bound (longer waits are
                shortened to it).

        Returns:
            The deliveries, possibly empty. Each must be acknowledged with :meth:`ack` once it
            is processed, or it is delivered again after ``claim_idle_ms``.

        Raises:
            ValueError: ``max_count`` is out of range or ``block_ms`` is negative.
            BusUnavailableError: The backend did not answer.
            BusClosedError: The subscription or its bus is closed.
        """

    @abc.abstractmethod
    def ack(self, *deliveries: Delivery) -> int:
        """Acknowledge processed deliveries, so they are never delivered to the group again.

        Acknowledging a delivery twice, or one that another consumer already acknowledged, is
        harmless.

        Args:
            *deliveries: Deliveries received by a subscription of this group.

        Returns:
            How many of them were pending and are acknowledged now.

        Raises:
            ValueError: A delivery belongs to another group.
            BusUnavailableError: The backend did not answer; the deliveries stay pending.
            BusClosedError: The bus is closed.
        """

    @abc.abstractmethod
    def close(self) -> None:
        """Leave the group. Pending deliveries stay pending and are reclaimed by others.

        Closing twice is harmless.
        """

    def __enter__(self: _SubscriptionT) -> _SubscriptionT:
        """Return the subscription itself."""
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Close the subscription."""
        self.close()


class Bus(abc.ABC):
    """Oona's message bus: typed events on topics, consumer groups, at-least-once delivery."""

    @abc.abstractmethod
    def publish(self, event: Event) -> str:
        """Append an event to its topic's stream.

        Args:
            event: The event; its topic picks the stream.

        Returns:
            The stream entry id (``<milliseconds>-<sequence>``).

        Raises:
            BusUnavailableError: The backend did not answer. The event may or may not have
                been stored; publishing it again is safe because consumers deduplicate by
                event id.
            BusClosedError: The bus is closed.
        """

    @abc.abstractmethod
    def subscribe(
        self,
        topics: Topic | Iterable[Topic],
        group: str,
        consumer: str,
        *,
        start: StartPosition = StartPosition.EARLIEST,
    ) -> Subscription:
        """Join a consumer group on one or more topics, creating the group where it is missing.

        Every group receives every event; the consumers of one group share them. Give each
        live consumer its own name (e.g. :func:`esper.oona.default_consumer_name`); a consumer
        that restarts under the same name first gets back its own unacknowledged deliveries.

        Args:
            topics: The topic or topics.
            group: The consumer group's name (``[A-Za-z0-9][A-Za-z0-9._:-]{0,127}``).
            consumer: This consumer's name within the group (same alphabet).
            start: Where a group created by this call starts reading.

        Returns:
            The subscription.

        Raises:
            ValueError: A name is invalid or no topic was given.
            BusUnavailableError: The backend did not answer.
            BusClosedError: The bus is closed.
        """

    @abc.abstractmethod
    def dead_letters(self, count: int = 100) -> list[DeadLetter]:
        """Return the oldest entries of the dead-letter stream.

        Args:
            count: Most entries to return.

        Returns:
            The dead letters, oldest first.

        Raises:
            BusUnavailableError: The backend did not answer.
            BusClosedError: The bus is closed.
        """

    @abc.abstractmethod
    def stream_length(self, topic: Topic) -> int:
        """Return the number of entries a topic's stream retains now.

        Raises:
            BusUnavailableError: The backend did not answer.
            BusClosedError: The bus is closed.
        """

    @abc.abstractmethod
    def pending_count(self, topic: Topic, group: str) -> int:
        """Return how many deliveries of a group on a topic await acknowledgement.

        Returns:
            The count; 0 when the stream or the group does not exist.

        Raises:
            BusUnavailableError: The backend did not answer.
            BusClosedError: The bus is closed.
        """

    @abc.abstractmethod
    def processed_store(
        self, namespace: str, ttl_ms: int = DEFAULT_PROCESSED_TTL_MS
    ) -> ProcessedStore:
        """Return the idempotency store that suits this bus, for one namespace.

        Redis buses keep the marks in Redis (so they survive restarts and are shared by all
        consumers of a group); in-process buses keep them in memory, one store per namespace.

        Args:
            namespace: Separates the marks of independent consumers; use the consumer group.
            ttl_ms: How long a processed event id is remembered.

        Returns:
            The store.
        """

    @abc.abstractmethod
    def close(self) -> None:
        """Close the bus and every subscription; calls made afterwards raise BusClosedError.

        A receive blocked in another thread returns within ``block_ms`` with BusClosedError.
        Closing twice is harmless.
        """

    def __enter__(self: _BusT) -> _BusT:
        """Return the bus itself."""
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Close the bus."""
        self.close()
