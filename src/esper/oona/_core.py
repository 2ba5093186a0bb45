"""Machinery shared by both bus implementations: the wire codec and the receive algorithm.

Both implementations model Redis Streams: a stream per topic, entry ids ``<ms>-<seq>``,
consumer groups with a last-delivered id and a pending-entries list. They differ only in the
primitives (read own history, reclaim idle entries, read new entries, write a dead letter);
:class:`StreamSubscription` composes those primitives identically for both, so the semantics
match by construction.
"""

import abc
import logging
import time
from dataclasses import dataclass

from pydantic import ValidationError

from esper.contracts import Event, Topic, describe_validation_error
from esper.oona.bus import (
    MAX_RECEIVE_COUNT,
    BusClosedError,
    DeadLetterReason,
    Delivery,
    Subscription,
)

EVENT_FIELD = "event"
"""The one field of a stream entry: the event's JSON (``Event.to_json()``)."""

ZERO_ID = "0-0"
"""The smallest stream entry id."""

LOG = logging.getLogger("esper.oona")


@dataclass(frozen=True, slots=True)
class RawEntry:
    """A stream entry as read, before it is decoded.

    Attributes:
        topic: The stream's topic.
        entry_id: The entry id.
        data: The ``event`` field's value; None when the field is missing or the entry is gone.
        delivery_count: Deliveries to the group, this one included.
        trimmed: The entry was trimmed away while it was pending (its data is lost).
    """

    topic: Topic
    entry_id: str
    data: bytes | str | None
    delivery_count: int
    trimmed: bool = False


class MalformedEntryError(ValueError):
    """A stream entry is not a valid event of its stream's topic.

    Attributes:
        reason: The dead-letter reason.
    """

    def __init__(self, reason: DeadLetterReason, message: str) -> None:
        """Create the error.

        Args:
            reason: The dead-letter reason.
            message: What is wrong.
        """
        super().__init__(message)
        self.reason = reason


def parse_id(entry_id: str) -> tuple[int, int]:
    """Split a stream entry id into its (milliseconds, sequence) parts, for comparisons.

    Args:
        entry_id: An id such as ``1700000000000-3``.

    Returns:
        The two integers.
    """
    milliseconds, _, sequence = entry_id.partition("-")
    return int(milliseconds), int(sequence or 0)


def encode_event(event: Event) -> str:
    """Return the wire form of an event: its camelCase JSON."""
    return event.to_json()


def decode_event(topic: Topic, data: bytes | str | None) -> Event:
    """Parse an entry's ``event`` field back into an event of the stream's topic.

    Args:
        topic: The stream's topic.
        data: The field's value, or None when it is missing.

    Returns:
        The event.

    Raises:
        MalformedEntryError: The field is missing, not UTF-8, not a valid Event, or an event
            of another topic.
    """
    if data is None:
        raise MalformedEntryError(
            DeadLetterReason.MALFORMED, f"the entry has no '{EVENT_FIELD}' field"
        )
    if isinstance(data, bytes):
        try:
            data = data.decode("utf-8")
        except UnicodeDecodeError as error:
            raise MalformedEntryError(
                DeadLetterReason.MALFORMED, f"the event is not UTF-8: {error}"
            ) from None
    try:
        event = Event.model_validate_json(data)
    except ValidationError as error:
        raise MalformedEntryError(
            DeadLetterReason.MALFORMED,
            f"not a valid Event: {describe_validation_error(error)}",
        ) from None
    if event.topic is not topic:
        raise MalformedEntryError(
            DeadLetterReason.TOPIC_MISMATCH,
            f"an event of topic '{event.topic.value}' in the stream of topic '{topic.value}'",
        )
    return event


def check_positive(name: str, value: int) -> int:
    """Return ``value`` when it is a positive integer.

    Raises:
        ValueError: It is not.
    """
    if value <= 0:
        raise ValueError(f"{name} must be positive, got {value}")
    return value


class StreamSubscription(Subscription):
    """The receive algorithm over a backend's stream primitives (see the module docstring)."""

    def __init__(
        self,
        *,
        topics: tuple[Topic, ...],
        group: str,
        consumer: str,
        claim_idle_ms: int,
        block_ms: int,
        max_deliveries: int | None,
    ) -> None:
        """Set up the subscription's state; the group must already exist on every topic.

        Args:
            topics: The topics.
            group: The consumer group.
            consumer: This consumer's name.
            claim_idle_ms: Idle time after which pending entries are reclaimed.
            block_ms: The longest (and default) blocking wait of a receive.
            max_deliveries: Deliveries after which an entry is dead-lettered; None for no limit.
        """
        self._topics = topics
        self._group = group
        self._consumer = consumer
        self._claim_idle_ms = claim_idle_ms
        self._block_ms = block_ms
        self._max_deliveries = max_deliveries
        self._closed = False
        self._history_left = True
        self._history_after = dict.fromkeys(topics, ZERO_ID)
        self._reclaim_cursor = dict.fromkeys(topics, ZERO_ID)
        self._reclaim_due_at = 0.0
        self._reported_lost: dict[Topic, int] = {}

    # -- primitives of a backend -------------------------------------------------------------

    @abc.abstractmethod
    def _read_history(self, topic: Topic, after: str, count: int) -> list[RawEntry]:
        """Return this consumer's pending entries with ids above ``after`` (counted again)."""

    @abc.abstractmethod
    def _reclaim(self, topic: Topic, cursor: str, count: int) -> tuple[str, list[RawEntry]]:
        """Claim the group's entries idle for ``claim_idle_ms``; return the next scan cursor.

        Entries trimmed while pending are returned with ``trimmed=True`` and are no longer
        pending. A cursor of ``0-0`` means the scan went through the whole pending list.
        """

    @abc.abstractmethod
    def _read_new(self, count: int, block_ms: int) -> list[RawEntry]:
        """Deliver entries never delivered to the group, waiting up to ``block_ms``."""

    @abc.abstractmethod
    def _write_dead_letter(self, entry: RawEntry, reason: DeadLetterReason, error: str) -> None:
        """Copy an entry to the dead-letter stream and acknowledge it, atomically."""

    @abc.abstractmethod
    def _lost_entries(self, topic: Topic) -> int | None:
        """Return how many entries were trimmed before the group read them, if measurable."""

    @abc.abstractmethod
    def _bus_closed(self) -> bool:
        """Whether the bus is closed."""

    @abc.abstractmethod
    def _leave(self) -> None:
        """Backend clean-up when the subscription closes."""

    # -- the public interface ----------------------------------------------------------------

    @property
    def topics(self) -> tuple[Topic, ...]:
        """The subscribed topics."""
        return self._topics

    @property
    def group(self) -> str:
        """The consumer group."""
        return self._group

    @property
    def consumer(self) -> str:
        """This consumer's name within the group."""
        return self._consumer

    def receive(self, max_count: int = 100, block_ms: int | None = None) -> list[Delivery]:
        """Return the next deliveries (see :meth:`Subscription.receive`)."""
        if not 1 <= max_count <= MAX_RECEIVE_COUNT:
            raise ValueError(f"max_count must be within 1..{MAX_RECEIVE_COUNT}, got {max_count}")
        if block_ms is not None and block_ms < 0:
            raise ValueError(f"block_ms must be >= 0, got {block_ms}")
        wait_ms = self._block_ms if block_ms is None else min(block_ms, self._block_ms)
        self._check_open()
        entries = self._next_history(max_count)
        if not entries and time.monotonic() >= self._reclaim_due_at:
            entries = self._reclaim_stale(max_count)
        if not entries:
            entries = self._read_new(max_count, wait_ms)
        return self._accept(entries)

    def close(self) -> None:
        """Leave the group (see :meth:`Subscription.close`)."""
        if self._closed:
            return
        self._closed = True
        self._leave()

    # -- the algorithm -----------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed or self._bus_closed():
            raise BusClosedError(
                f"subscription of {self._consumer} in group {self._group} is closed"
            )

    def _next_history(self, count: int) -> list[RawEntry]:
        if not self._history_left:
            return []
        entries: list[RawEntry] = []
        for topic in self._topics:
            found = self._read_history(topic, self._history_after[topic], count)
            if found:
                self._history_after[topic] = found[-1].entry_id
                entries.extend(found)
        self._history_left = bool(entries)
        return entries

    def _reclaim_stale(self, count: int) -> list[RawEntry]:
        entries: list[RawEntry] = []
        finished = True
        for topic in self._topics:
            cursor, found = self._reclaim(topic, self._reclaim_cursor[topic], count)
            self._reclaim_cursor[topic] = cursor
            finished = finished and cursor == ZERO_ID
            entries.extend(found)
            self._report_trim_loss(topic)
        if finished:
            self._reclaim_due_at = time.monotonic() + self._claim_idle_ms / 2000
        return entries

    def _report_trim_loss(self, topic: Topic) -> None:
        lost = self._lost_entries(topic)
        reported = self._reported_lost.get(topic, 0)
        if lost is None or lost <= reported:
            return
        self._reported_lost[topic] = lost
        LOG.error(
            "oona: group %s lost %d events of topic %s (%d since last reported): they were "
            "trimmed from the stream before the group read them; raise maxlen or add consumers",
            self._group,
            lost,
            topic.value,
            lost - reported,
        )

    def _accept(self, entries: list[RawEntry]) -> list[Delivery]:
        deliveries: list[Delivery] = []
        for entry in entries:
            if entry.trimmed:
                self._give_up(
                    entry,
                    DeadLetterReason.TRIMMED,
                    "the entry was trimmed from its stream (maxlen) before it was acknowledged",
                )
                continue
            if self._max_deliveries is not None and entry.delivery_count > self._max_deliveries:
                self._give_up(
                    entry,
                    DeadLetterReason.TOO_MANY_DELIVERIES,
                    f"delivered {entry.delivery_count} times (max_deliveries is "
                    f"{self._max_deliveries}) without an acknowledgement",
                )
                continue
            try:
                event = decode_event(entry.topic, entry.data)
            except MalformedEntryError as error:
                self._give_up(entry, error.reason, str(error))
                continue
            deliveries.append(
                Delivery(
                    event=event,
                    topic=entry.topic,
                    entry_id=entry.entry_id,
                    group=self._group,
                    consumer=self._consumer,
                    delivery_count=entry.delivery_count,
                )
            )
        return deliveries

    def _give_up(self, entry: RawEntry, reason: DeadLetterReason, error: str) -> None:
        self._write_dead_letter(entry, reason, error)
        LOG.error(
            "oona: dead-lettered entry %s of topic %s for group %s (consumer %s, %d deliveries): "
            "%s: %s",
            entry.entry_id,
            entry.topic.value,
            self._group,
            self._consumer,
            entry.delivery_count,
            reason.value,
            error,
        )

    def _check_group(self, deliveries: tuple[Delivery, ...]) -> None:
        for delivery in deliveries:
            if delivery.group != self._group:
                raise ValueError(
                    f"delivery {delivery.entry_id} belongs to group {delivery.group}, "
                    f"not {self._group}"
                )
