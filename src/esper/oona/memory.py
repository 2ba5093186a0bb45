"""The in-process bus: Oona's embedded default, with the Redis Streams semantics in memory.

Streams, consumer groups, pending entries, acknowledgements, reclaiming of idle deliveries,
trimming and the dead-letter stream behave as in :class:`esper.oona.RedisStreamsBus`, so code
written against one runs on the other. Events cross the bus as their JSON, exactly as on Redis:
a consumer gets its own parsed copy and an invalid event is dead-lettered, not delivered.

The bus lives in one process: threads share it, worker processes do not (the embedded forge
consumes in its parent process and hands work units to its workers). Nothing survives the
process.
"""

import threading
import time
from bisect import bisect_right
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field

from esper.contracts import Event, Topic
from esper.oona._core import (
    RawEntry,
    StreamSubscription,
    check_positive,
    encode_event,
    parse_id,
)
from esper.oona.bus import (
    DEFAULT_BLOCK_MS,
    DEFAULT_CLAIM_IDLE_MS,
    DEFAULT_DEAD_LETTER_MAXLEN,
    DEFAULT_MAX_DELIVERIES,
    DEFAULT_MAXLEN,
    DEFAULT_PROCESSED_TTL_MS,
    Bus,
    BusClosedError,
    DeadLetter,
    DeadLetterReason,
    Delivery,
    StartPosition,
    check_name,
    normalise_topics,
)
from esper.oona.store import MemoryProcessedStore, ProcessedStore

_EntryId = tuple[int, int]
_ZERO: _EntryId = (0, 0)
_COMPACT_AT = 1024
_RECLAIM_SCAN_FACTOR = 10  # like XAUTOCLAIM: scan up to ten times COUNT pending entries


def _format(entry_id: _EntryId) -> str:
    return f"{entry_id[0]}-{entry_id[1]}"


def _next_id(last: _EntryId) -> _EntryId:
    now_ms = time.time_ns() // 1_000_000
    return (now_ms, 0) if now_ms > last[0] else (last[0], last[1] + 1)


@dataclass(slots=True)
class _Pending:
    consumer: str
    delivery_count: int
    delivered_at: float


@dataclass(slots=True)
class _Group:
    last_delivered: _EntryId
    pending: dict[_EntryId, _Pending] = field(default_factory=dict)
    """Pending entries in id order (entries are delivered to a group in id order)."""
    lost: int = 0
    """Entries trimmed before the group read them."""


class _Stream:
    """One topic's entries (a sorted id list with a moving head) and its consumer groups."""

    def __init__(self) -> None:
        self._ids: list[_EntryId] = []
        self._head = 0
        self.data: dict[_EntryId, str] = {}
        self.last_id: _EntryId = _ZERO
        self.groups: dict[str, _Group] = {}

    def __len__(self) -> int:
        return len(self._ids) - self._head

    def append(self, data: str) -> _EntryId:
        entry_id = _next_id(self.last_id)
        self._ids.append(entry_id)
        self.data[entry_id] = data
        self.last_id = entry_id
        return entry_id

    def trim(self, maxlen: int) -> None:
        while len(self) > maxlen:
            entry_id = self._ids[self._head]
            del self.data[entry_id]
            self._head += 1
            for group in self.groups.values():
                if entry_id > group.last_delivered:
                    group.lost += 1
        if self._head >= _COMPACT_AT and self._head * 2 >= len(self._ids):
            del self._ids[: self._head]
            self._head = 0

    def after(self, entry_id: _EntryId, count: int) -> list[_EntryId]:
        start = bisect_right(self._ids, entry_id, lo=self._head)
        return self._ids[start : start + count]


class InProcessBus(Bus):
    """A thread-safe bus in memory with the semantics of :class:`esper.oona.RedisStreamsBus`."""

    def __init__(
        self,
        *,
        maxlen: int = DEFAULT_MAXLEN,
        claim_idle_ms: int = DEFAULT_CLAIM_IDLE_MS,
        block_ms: int = DEFAULT_BLOCK_MS,
        max_deliveries: int | None = DEFAULT_MAX_DELIVERIES,
        dead_letter_maxlen: int = DEFAULT_DEAD_LETTER_MAXLEN,
    ) -> None:
        """Create an empty bus.

        Args:
            maxlen: Entries each topic's stream keeps; publishing beyond it trims the oldest
                (exactly; Redis trims approximately).
            claim_idle_ms: A pending delivery idle for this long is reclaimed by another
                consumer of its group (at-least-once delivery).
            block_ms: The default and longest wait of a receive for new events.
            max_deliveries: Deliveries after which an unacknowledged entry is dead-lettered;
                None for no limit.
            dead_letter_maxlen: Entries the dead-letter stream keeps.

        Raises:
            ValueError: A size or duration is not positive.
        """
        self.maxlen = check_positive("maxlen", maxlen)
        self.claim_idle_ms = check_positive("claim_idle_ms", claim_idle_ms)
        self.block_ms = check_positive("block_ms", block_ms)
        self.max_deliveries = (
            None if max_deliveries is None else check_positive("max_deliveries", max_deliveries)
        )
        self._streams: dict[Topic, _Stream] = {}
        self._dead_letters: deque[DeadLetter] = deque(
            maxlen=check_positive("dead_letter_maxlen", dead_letter_maxlen)
        )
        self._last_dead_letter_id: _EntryId = _ZERO
        self._stores: dict[str, MemoryProcessedStore] = {}
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._closed = False

    def __repr__(self) -> str:
        """Describe the bus."""
        return f"InProcessBus(maxlen={self.maxlen}, claim_idle_ms={self.claim_idle_ms})"

    @property
    def closed(self) -> bool:
        """Whether the bus is closed."""
        return self._closed

    def _stream(self, topic: Topic) -> _Stream:
        stream = self._streams.get(topic)
        if stream is None:
            stream = self._streams[topic] = _Stream()
        return stream

    def _check_open(self) -> None:
        if self._closed:
            raise BusClosedError("the in-process bus is closed")

    def publish(self, event: Event) -> str:
        """Append an event to its topic's stream (see :meth:`Bus.publish`)."""
        data = encode_event(event)
        with self._changed:
            self._check_open()
            stream = self._stream(event.topic)
            entry_id = stream.append(data)
            stream.trim(self.maxlen)
            self._changed.notify_all()
        return _format(entry_id)

    def subscribe(
        self,
        topics: Topic | Iterable[Topic],
        group: str,
        consumer: str,
        *,
        start: StartPosition = StartPosition.EARLIEST,
    ) -> "InProcessSubscription":
        """Join a consumer group (see :meth:`Bus.subscribe`)."""
        chosen = normalise_topics(topics)
        check_name(group, "group")
        check_name(consumer, "consumer")
        with self._lock:
            self._check_open()
            for topic in chosen:
                stream = self._stream(topic)
                if group not in stream.groups:
                    first = _ZERO if start is StartPosition.EARLIEST else stream.last_id
                    stream.groups[group] = _Group(last_delivered=first)
        return InProcessSubscription(self, chosen, group, consumer)

    def dead_letters(self, count: int = 100) -> list[DeadLetter]:
        """Return the oldest dead letters (see :meth:`Bus.dead_letters`)."""
        with self._lock:
            self._check_open()
            return list(self._dead_letters)[:count]

    def stream_length(self, topic: Topic) -> int:
        """Return the number of entries a topic's stream retains (see :meth:`Bus.stream_length`)."""
        with self._lock:
            self._check_open()
            stream = self._streams.get(topic)
            return 0 if stream is None else len(stream)

    def pending_count(self, topic: Topic, group: str) -> int:
        """Return a group's unacknowledged deliveries (see :meth:`Bus.pending_count`)."""
        with self._lock:
            self._check_open()
            stream = self._streams.get(topic)
            found = None if stream is None else stream.groups.get(group)
            return 0 if found is None else len(found.pending)

    def processed_store(
        self, namespace: str, ttl_ms: int = DEFAULT_PROCESSED_TTL_MS
    ) -> ProcessedStore:
        """Return the in-memory store of a namespace, shared by every caller of this bus.

        The first call for a namespace fixes its ``ttl_ms``.
        """
        check_name(namespace, "namespace")
        with self._lock:
            store = self._stores.get(namespace)
            if store is None:
                store = self._stores[namespace] = MemoryProcessedStore(ttl_ms)
            return store

    def close(self) -> None:
        """Close the bus and wake every blocked receive (see :meth:`Bus.close`)."""
        with self._changed:
            self._closed = True
            self._changed.notify_all()

    # -- used by subscriptions, with the lock held -----------------------------------------

    def _raw_entry(
        self, topic: Topic, stream: _Stream, entry_id: _EntryId, pending: _Pending
    ) -> RawEntry:
        data = stream.data.get(entry_id)
        return RawEntry(
            topic=topic,
            entry_id=_format(entry_id),
            data=data,
            delivery_count=pending.delivery_count,
            trimmed=data is None,
        )

    def _add_dead_letter(
        self, entry: RawEntry, group: str, consumer: str, reason: DeadLetterReason, error: str
    ) -> None:
        self._last_dead_letter_id = _next_id(self._last_dead_letter_id)
        payload = entry.data.encode() if isinstance(entry.data, str) else entry.data
        self._dead_letters.append(
            DeadLetter(
                entry_id=_format(self._last_dead_letter_id),
                topic=entry.topic.value,
                source_entry_id=entry.entry_id,
                group=group,
                consumer=consumer,
                reason=reason.value,
                error=error,
                delivery_count=entry.delivery_count,
                payload=payload,
            )
        )


class InProcessSubscription(StreamSubscription):
    """A consumer's membership in a group of an :class:`InProcessBus`."""

    def __init__(
        self, bus: InProcessBus, topics: tuple[Topic, ...], group: str, consumer: str
    ) -> None:
        """Create the subscription; use :meth:`InProcessBus.subscribe` instead.

        Args:
            bus: The bus.
            topics: The topics; the group exists on each.
            group: The consumer group.
            consumer: This consumer's name.
        """
        super().__init__(
            topics=topics,
            group=group,
            consumer=consumer,
            claim_idle_ms=bus.claim_idle_ms,
            block_ms=bus.block_ms,
            max_deliveries=bus.max_deliveries,
        )
        self._bus = bus

    def __repr__(self) -> str:
        """Describe the subscription."""
        topics = ",".join(topic.value for topic in self.topics)
        return f"<InProcessSubscription {self.group}/{self.consumer} on {topics}>"

    @property
    def bus(self) -> InProcessBus:
        """The bus."""
        return self._bus

    def _group_of(self, topic: Topic) -> tuple[_Stream, _Group]:
        stream = self._bus._stream(topic)  # subscribe() created the group on every topic
        return stream, stream.groups[self.group]

    def ack(self, *deliveries: Delivery) -> int:
        """Acknowledge deliveries (see :meth:`Subscription.ack`)."""
        self._check_group(deliveries)
        acknowledged = 0
        with self._bus._lock:
            self._bus._check_open()
            for delivery in deliveries:
                stream = self._bus._streams.get(delivery.topic)
                group = None if stream is None else stream.groups.get(self.group)
                if group is not None and group.pending.pop(parse_id(delivery.entry_id), None):
                    acknowledged += 1
        return acknowledged

    def _read_history(self, topic: Topic, after: str, count: int) -> list[RawEntry]:
        floor = parse_id(after)
        entries: list[RawEntry] = []
        with self._bus._lock:
            stream, group = self._group_of(topic)
            now = time.monotonic()
            for entry_id, pending in group.pending.items():
                if len(entries) == count:
                    break
                if entry_id > floor and pending.consumer == self.consumer:
                    pending.delivery_count += 1
                    pending.delivered_at = now
                    entries.append(self._bus._raw_entry(topic, stream, entry_id, pending))
        return entries

    def _reclaim(self, topic: Topic, cursor: str, count: int) -> tuple[str, list[RawEntry]]:
        floor = parse_id(cursor)
        entries: list[RawEntry] = []
        next_cursor = _ZERO
        with self._bus._lock:
            stream, group = self._group_of(topic)
            now = time.monotonic()
            idle_s = self.bus.claim_idle_ms / 1000
            candidates = [entry_id for entry_id in group.pending if entry_id >= floor]
            scan = candidates[: count * _RECLAIM_SCAN_FACTOR]
            if len(candidates) > len(scan):
                next_cursor = candidates[len(scan)]
            for entry_id in scan:
                pending = group.pending[entry_id]
                if now - pending.delivered_at < idle_s:
                    continue
                if len(entries) == count:
                    next_cursor = entry_id
                    break
                pending.consumer = self.consumer
                pending.delivery_count += 1
                pending.delivered_at = now
                entry = self._bus._raw_entry(topic, stream, entry_id, pending)
                if entry.trimmed:  # as XAUTOCLAIM does, drop deleted entries from the list
                    del group.pending[entry_id]
                entries.append(entry)
        return _format(next_cursor), entries

    def _read_new(self, count: int, block_ms: int) -> list[RawEntry]:
        deadline = time.monotonic() + block_ms / 1000
        with self._bus._changed:
            while True:
                self._check_open()
                entries = self._deliver_new(count)
                remaining = deadline - time.monotonic()
                if entries or remaining <= 0:
                    return entries
                self._bus._changed.wait(remaining)

    def _deliver_new(self, count: int) -> list[RawEntry]:
        entries: list[RawEntry] = []
        now = time.monotonic()
        for topic in self.topics:
            stream, group = self._group_of(topic)
            for entry_id in stream.after(group.last_delivered, count):
                pending = _Pending(consumer=self.consumer, delivery_count=1, delivered_at=now)
                group.pending[entry_id] = pending
                group.last_delivered = entry_id
                entries.append(self._bus._raw_entry(topic, stream, entry_id, pending))
        return entries

    def _write_dead_letter(self, entry: RawEntry, reason: DeadLetterReason, error: str) -> None:
        with self._bus._lock:
            self._bus._check_open()
            self._bus._add_dead_letter(entry, self.group, self.consumer, reason, error)
            _, group = self._group_of(entry.topic)
            group.pending.pop(parse_id(entry.entry_id), None)

    def _lost_entries(self, topic: Topic) -> int | None:
        with self._bus._lock:
            return self._group_of(topic)[1].lost

    def _bus_closed(self) -> bool:
        return self._bus.closed

    def _leave(self) -> None:
        with self._bus._changed:
            self._bus._changed.notify_all()
