"""The Redis Streams bus: Oona in a cluster (needs Redis 7.0 or later).

Each topic is a stream ``<prefix><topic>`` (``esper:events:kernel.phase_changed``) whose
entries have one field, ``event``, holding the event's JSON. Publishing is ``XADD`` with
``MAXLEN ~ maxlen`` trimming; subscribing creates the consumer group with
``XGROUP CREATE ... MKSTREAM`` (an existing group is kept); receiving is ``XREADGROUP``, with
``XAUTOCLAIM`` reclaiming deliveries idle for ``claim_idle_ms``; acknowledging is ``XACK``.
Dead letters go to ``<prefix>dead-letter`` in the same ``MULTI`` as the ``XACK`` of the entry.

Every command has a socket timeout and a couple of quick retries on connection errors, after
which the call raises :class:`~esper.oona.BusUnavailableError`: no call waits on Redis for long,
and the client reconnects by itself when Redis returns. A retried ``XADD`` may store an event
twice; consumers deduplicate by event id. A consumer group that disappeared (Redis lost its
data) is recreated on the next receive, reading from the start of the stream.
"""

import contextlib
import urllib.parse
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from esper.contracts import Event, Topic
from esper.oona._core import (
    EVENT_FIELD,
    LOG,
    ZERO_ID,
    RawEntry,
    StreamSubscription,
    check_positive,
    encode_event,
    parse_id,
)
from esper.oona.bus import (
    DEAD_LETTER_NAME,
    DEFAULT_BLOCK_MS,
    DEFAULT_CLAIM_IDLE_MS,
    DEFAULT_DEAD_LETTER_MAXLEN,
    DEFAULT_MAX_DELIVERIES,
    DEFAULT_MAXLEN,
    DEFAULT_PREFIX,
    DEFAULT_PROCESSED_TTL_MS,
    Bus,
    BusClosedError,
    BusUnavailableError,
    DeadLetter,
    DeadLetterReason,
    Delivery,
    StartPosition,
    check_name,
    normalise_topics,
)
from esper.oona.store import ClaimState, ProcessedStore

DEFAULT_PROCESSED_PREFIX = "esper:processed:"
"""Default key prefix of idempotency marks: ``esper:processed:<namespace>:<event id>``."""

DEFAULT_SOCKET_TIMEOUT_MS = 2_000
"""Default socket timeout of a Redis command (a blocking read waits ``block_ms`` longer)."""

DEFAULT_RETRIES = 2
"""Default number of quick retries of a command after a connection error."""

_EVENT_KEY = EVENT_FIELD.encode()
_T = TypeVar("_T")

_CLAIM_SCRIPT = """
local value = redis.call('GET', KEYS[1])
if not value then
  redis.call('SET', KEYS[1], 'lease:' .. ARGV[1], 'PX', ARGV[2])
  return 'claimed'
end
if value == 'done' then return 'done' end
if value == 'lease:' .. ARGV[1] then return 'claimed' end
return 'busy'
"""

_RELEASE_SCRIPT = """
if redis.call('GET', KEYS[1]) == 'lease:' .. ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""

_Fields = dict[bytes, bytes]


def _text(value: object) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return str(value)


def _stream_entries(value: object) -> list[tuple[str, _Fields]]:
    """Coerce redis-py's parsed stream entries (``[(id, {field: value})]``)."""
    entries: list[tuple[str, _Fields]] = []
    if not isinstance(value, list):
        return entries
    for item in value:
        if isinstance(item, tuple | list) and len(item) == 2:
            fields = item[1] if isinstance(item[1], dict) else {}
            entries.append((_text(item[0]), fields))
    return entries


def _redact(url: str) -> str:
    """Return the URL without its password, for messages."""
    parts = urllib.parse.urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = f"{parts.username}:***@" if parts.username else ":***@"
    return urllib.parse.urlunsplit(parts._replace(netloc=user + netloc))


def _is_missing_group(error: redis.exceptions.ResponseError) -> bool:
    return str(error).startswith("NOGROUP")


class RedisStreamsBus(Bus):
    """Oona on Redis Streams; thread-safe (redis-py's connection pools are)."""

    def __init__(
        self,
        url: str,
        *,
        prefix: str = DEFAULT_PREFIX,
        maxlen: int = DEFAULT_MAXLEN,
        approximate_trim: bool = True,
        claim_idle_ms: int = DEFAULT_CLAIM_IDLE_MS,
        block_ms: int = DEFAULT_BLOCK_MS,
        max_deliveries: int | None = DEFAULT_MAX_DELIVERIES,
        dead_letter_maxlen: int = DEFAULT_DEAD_LETTER_MAXLEN,
        processed_prefix: str = DEFAULT_PROCESSED_PREFIX,
        socket_timeout_ms: int = DEFAULT_SOCKET_TIMEOUT_MS,
        retries: int = DEFAULT_RETRIES,
    ) -> None:
        """Configure the bus; connections are opened on first use.

        Args:
            url: ``redis://[user:password@]host:port/db`` or ``rediss://...`` (TLS).
            prefix: Key prefix of the topic streams and of the dead-letter stream.
            maxlen: Entries each topic's stream keeps; ``XADD`` trims older ones.
            approximate_trim: Trim with ``MAXLEN ~`` (cheap; Redis keeps at least ``maxlen``
                and up to one macro node more, ~100 entries) rather than exactly.
            claim_idle_ms: A pending delivery idle for this long is reclaimed (``XAUTOCLAIM``)
                by another consumer of its group; longer than any handler runs.
            block_ms: The default and longest wait of a receive for new events.
            max_deliveries: Deliveries after which an unacknowledged entry is dead-lettered;
                None for no limit.
            dead_letter_maxlen: Entries the dead-letter stream keeps (trimmed approximately).
            processed_prefix: Key prefix of the idempotency marks of :meth:`processed_store`.
            socket_timeout_ms: Timeout of one command (connect, write and read).
            retries: Quick retries of a command after a connection error or timeout, with
                exponential backoff from 50 ms up to 500 ms.

        Raises:
            ValueError: A size or duration is not positive, or the URL is not a Redis URL.
        """
        scheme = urllib.parse.urlsplit(url).scheme
        if scheme not in ("redis", "rediss"):
            raise ValueError(f"not a redis:// or rediss:// URL: scheme {scheme!r}")
        self.url = _redact(url)
        self.prefix = prefix
        self.maxlen = check_positive("maxlen", maxlen)
        self.approximate_trim = approximate_trim
        self.claim_idle_ms = check_positive("claim_idle_ms", claim_idle_ms)
        self.block_ms = check_positive("block_ms", block_ms)
        self.max_deliveries = (
            None if max_deliveries is None else check_positive("max_deliveries", max_deliveries)
        )
        self.dead_letter_maxlen = check_positive("dead_letter_maxlen", dead_letter_maxlen)
        self.processed_prefix = processed_prefix
        timeout_s = check_positive("socket_timeout_ms", socket_timeout_ms) / 1000
        if retries < 0:
            raise ValueError(f"retries must be >= 0, got {retries}")
        options = {
            "socket_connect_timeout": timeout_s,
            "retry": Retry(ExponentialBackoff(cap=0.5, base=0.05), retries),
            "health_check_interval": 30,
            "decode_responses": False,
            "protocol": 2,
        }
        # pytype's bundled redis stubs predate the `protocol` argument: hence the disables.
        self._client = redis.Redis.from_url(  # pytype: disable=wrong-keyword-args
            url, socket_timeout=timeout_s, **options
        )
        # Blocking reads get their own pool, whose read timeout outlasts the longest block.
        self._reader = redis.Redis.from_url(  # pytype: disable=wrong-keyword-args
            url, socket_timeout=timeout_s + self.block_ms / 1000, **options
        )
        self._closed = False

    def __repr__(self) -> str:
        """Describe the bus (without the password)."""
        return f"RedisStreamsBus({self.url!r}, prefix={self.prefix!r})"

    @property
    def closed(self) -> bool:
        """Whether the bus is closed."""
        return self._closed

    @property
    def client(self) -> redis.Redis:
        """The redis-py client of non-blocking commands (for health checks and tooling)."""
        return self._client

    def key(self, topic: Topic) -> str:
        """Return the stream key of a topic."""
        return f"{self.prefix}{topic.value}"

    @property
    def dead_letter_key(self) -> str:
        """The key of the dead-letter stream."""
        return f"{self.prefix}{DEAD_LETTER_NAME}"

    @contextlib.contextmanager
    def translate_errors(self, doing: str) -> Iterator[None]:
        """Turn Redis connection errors and timeouts into :class:`BusUnavailableError`.

        Args:
            doing: What was being done, for the message.

        Yields:
            Nothing.

        Raises:
            BusClosedError: The bus is closed.
            BusUnavailableError: Redis did not answer (after the client's retries).
        """
        if self._closed:
            raise BusClosedError(f"the bus on {self.url} is closed")
        try:
            yield
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as error:
            raise BusUnavailableError(f"redis at {self.url} failed {doing}: {error}") from error

    def publish(self, event: Event) -> str:
        """Append an event to its topic's stream (see :meth:`Bus.publish`)."""
        data = encode_event(event)
        with self.translate_errors("XADD"):
            entry_id = self._client.xadd(
                self.key(event.topic),
                {EVENT_FIELD: data},
                maxlen=self.maxlen,
                approximate=self.approximate_trim,
            )
        return _text(entry_id)

    def create_groups(
        self, topics: Iterable[Topic], group: str, start: StartPosition
    ) -> list[Topic]:
        """Create a consumer group on each topic's stream where it does not exist yet.

        Args:
            topics: The topics.
            group: The group.
            start: Where a new group starts reading.

        Returns:
            The topics on which the group was created now.

        Raises:
            BusUnavailableError: Redis did not answer.
        """
        created: list[Topic] = []
        first = "0" if start is StartPosition.EARLIEST else "$"
        with self.translate_errors("XGROUP CREATE"):
            for topic in topics:
                try:
                    self._client.xgroup_create(self.key(topic), group, id=first, mkstream=True)
                except redis.exceptions.ResponseError as error:
                    if not str(error).startswith("BUSYGROUP"):
                        raise
                else:
                    created.append(topic)
        return created

    def subscribe(
        self,
        topics: Topic | Iterable[Topic],
        group: str,
        consumer: str,
        *,
        start: StartPosition = StartPosition.EARLIEST,
    ) -> "RedisSubscription":
        """Join a consumer group (see :meth:`Bus.subscribe`)."""
        chosen = normalise_topics(topics)
        check_name(group, "group")
        check_name(consumer, "consumer")
        self.create_groups(chosen, group, start)
        return RedisSubscription(self, chosen, group, consumer)

    def dead_letters(self, count: int = 100) -> list[DeadLetter]:
        """Return the oldest dead letters (see :meth:`Bus.dead_letters`)."""
        with self.translate_errors("XRANGE"):
            reply = self._client.xrange(self.dead_letter_key, count=count)
        letters: list[DeadLetter] = []
        for entry_id, fields in _stream_entries(reply):
            deliveries = _text(fields.get(b"deliveries", b"0"))
            letters.append(
                DeadLetter(
                    entry_id=entry_id,
                    topic=_text(fields.get(b"topic", b"")),
                    source_entry_id=_text(fields.get(b"entry", b"")),
                    group=_text(fields.get(b"group", b"")),
                    consumer=_text(fields.get(b"consumer", b"")),
                    reason=_text(fields.get(b"reason", b"")),
                    error=_text(fields.get(b"error", b"")),
                    delivery_count=int(deliveries) if deliveries.isdigit() else 0,
                    payload=fields.get(b"payload"),
                )
            )
        return letters

    def stream_length(self, topic: Topic) -> int:
        """Return the number of entries a topic's stream retains (see :meth:`Bus.stream_length`)."""
        with self.translate_errors("XLEN"):
            return int(self._client.xlen(self.key(topic)))

    def pending_count(self, topic: Topic, group: str) -> int:
        """Return a group's unacknowledged deliveries (see :meth:`Bus.pending_count`)."""
        with self.translate_errors("XPENDING"):
            try:
                summary = self._client.xpending(self.key(topic), group)
            except redis.exceptions.ResponseError as error:
                if _is_missing_group(error):
                    return 0
                raise
        return int(summary["pending"]) if isinstance(summary, dict) else 0

    def processed_store(
        self, namespace: str, ttl_ms: int = DEFAULT_PROCESSED_TTL_MS
    ) -> ProcessedStore:
        """Return a store of idempotency marks in Redis (see :meth:`Bus.processed_store`)."""
        return RedisProcessedStore(self, check_name(namespace, "namespace"), ttl_ms)

    def close(self) -> None:
        """Close the bus and its connection pools (see :meth:`Bus.close`)."""
        if self._closed:
            return
        self._closed = True
        self._client.close()
        self._reader.close()

    # -- used by subscriptions and stores ------------------------------------------------------

    @property
    def reader(self) -> redis.Redis:
        """The client of blocking reads."""
        return self._reader


class RedisSubscription(StreamSubscription):
    """A consumer's membership in a group of a :class:`RedisStreamsBus`."""

    def __init__(
        self, bus: RedisStreamsBus, topics: tuple[Topic, ...], group: str, consumer: str
    ) -> None:
        """Create the subscription; use :meth:`RedisStreamsBus.subscribe` instead.

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
        self._keys = {topic: bus.key(topic) for topic in topics}
        self._topic_of_key = {bus.key(topic).encode(): topic for topic in topics}

    def __repr__(self) -> str:
        """Describe the subscription."""
        topics = ",".join(topic.value for topic in self.topics)
        return f"<RedisSubscription {self.group}/{self.consumer} on {topics}>"

    @property
    def bus(self) -> RedisStreamsBus:
        """The bus."""
        return self._bus

    def _call(self, doing: str, command: Callable[[], _T]) -> _T:
        """Run a command; recreate the group once if Redis lost it (``NOGROUP``)."""
        with self._bus.translate_errors(doing):
            try:
                return command()
            except redis.exceptions.ResponseError as error:
                if not _is_missing_group(error):
                    raise
                LOG.warning(
                    "oona: consumer group %s is missing in redis (data lost?); recreating it",
                    self.group,
                )
                self._bus.create_groups(self.topics, self.group, StartPosition.EARLIEST)
                return command()

    def _delivery_counts(self, topic: Topic, entry_ids: list[str]) -> dict[str, int]:
        if not entry_ids:
            return {}
        key = self._keys.get(topic) or self._bus.key(topic)
        pipe = self._bus.client.pipeline(transaction=False)
        for entry_id in entry_ids:
            pipe.xpending_range(key, self.group, min=entry_id, max=entry_id, count=1)
        with self._bus.translate_errors("XPENDING"):
            replies = pipe.execute()
        counts: dict[str, int] = {}
        for reply in replies:
            for item in reply if isinstance(reply, list) else []:
                counts[_text(item["message_id"])] = int(item["times_delivered"])
        return counts

    def _raw_entries(
        self, topic: Topic, entries: list[tuple[str, _Fields]], counts: dict[str, int] | None
    ) -> list[RawEntry]:
        return [
            RawEntry(
                topic=topic,
                entry_id=entry_id,
                data=fields.get(_EVENT_KEY),
                delivery_count=1 if counts is None else counts.get(entry_id, 1),
                # Only pending entries (history, reclaim) can have lost their fields.
                trimmed=counts is not None and not fields,
            )
            for entry_id, fields in entries
        ]

    def ack(self, *deliveries: Delivery) -> int:
        """Acknowledge deliveries with ``XACK`` (see :meth:`Subscription.ack`)."""
        self._check_group(deliveries)
        by_topic: dict[Topic, list[str]] = {}
        for delivery in deliveries:
            by_topic.setdefault(delivery.topic, []).append(delivery.entry_id)
        if not by_topic:
            return 0
        pipe = self._bus.client.pipeline(transaction=False)
        for topic, entry_ids in by_topic.items():
            pipe.xack(self._bus.key(topic), self.group, *entry_ids)
        with self._bus.translate_errors("XACK"):
            replies = pipe.execute(raise_on_error=False)
        acknowledged = 0
        for reply in replies:
            if isinstance(reply, redis.exceptions.ResponseError) and _is_missing_group(reply):
                continue  # the group, and so its pending entries, are gone
            if isinstance(reply, Exception):
                raise reply
            acknowledged += int(reply)
        return acknowledged

    def _read_history(self, topic: Topic, after: str, count: int) -> list[RawEntry]:
        key = self._keys[topic]
        reply = self._call(
            "XREADGROUP",
            lambda: self._bus.client.xreadgroup(
                self.group, self.consumer, {key: after}, count=count
            ),
        )
        entries: list[tuple[str, _Fields]] = []
        for item in reply if isinstance(reply, list) else []:
            entries.extend(_stream_entries(item[1]))
        counts = self._delivery_counts(topic, [entry_id for entry_id, _ in entries])
        return self._raw_entries(topic, entries, counts)

    def _reclaim(self, topic: Topic, cursor: str, count: int) -> tuple[str, list[RawEntry]]:
        key = self._keys[topic]
        reply = self._call(
            "XAUTOCLAIM",
            lambda: self._bus.client.xautoclaim(
                key,
                self.group,
                self.consumer,
                min_idle_time=self._bus.claim_idle_ms,
                start_id=cursor,
                count=count,
            ),
        )
        if not isinstance(reply, list) or len(reply) < 2:
            return ZERO_ID, []
        claimed = _stream_entries(reply[1])
        counts = self._delivery_counts(topic, [entry_id for entry_id, _ in claimed])
        entries = self._raw_entries(topic, claimed, counts)
        deleted = reply[2] if len(reply) > 2 and isinstance(reply[2], list) else []
        entries.extend(
            RawEntry(
                topic=topic, entry_id=_text(entry_id), data=None, delivery_count=0, trimmed=True
            )
            for entry_id in deleted
        )
        return _text(reply[0]), entries

    def _read_new(self, count: int, block_ms: int) -> list[RawEntry]:
        streams = dict.fromkeys(self._keys.values(), ">")
        reply = self._call(
            "XREADGROUP",
            lambda: self._bus.reader.xreadgroup(
                self.group, self.consumer, streams, count=count, block=block_ms or None
            ),
        )
        entries: list[RawEntry] = []
        for item in reply if isinstance(reply, list) else []:
            topic = self._topic_of_key[bytes(item[0])]
            entries.extend(self._raw_entries(topic, _stream_entries(item[1]), None))
        return entries

    def _write_dead_letter(self, entry: RawEntry, reason: DeadLetterReason, error: str) -> None:
        fields: dict[str, str | bytes] = {
            "topic": entry.topic.value,
            "entry": entry.entry_id,
            "group": self.group,
            "consumer": self.consumer,
            "reason": reason.value,
            "error": error,
            "deliveries": str(entry.delivery_count),
        }
        if entry.data is not None:
            fields["payload"] = entry.data
        pipe = self._bus.client.pipeline(transaction=True)
        pipe.xadd(
            self._bus.dead_letter_key,
            fields,
            maxlen=self._bus.dead_letter_maxlen,
            approximate=True,
        )
        pipe.xack(self._bus.key(entry.topic), self.group, entry.entry_id)
        with self._bus.translate_errors("XADD to the dead-letter stream"):
            pipe.execute()

    def _lost_entries(self, topic: Topic) -> int | None:
        """Count entries trimmed before the group read them, from ``XINFO``.

        Redis keeps a group's ``lag`` (entries added minus entries read) through trimming; when
        the group's last-delivered id is older than the stream's first entry, every retained
        entry is unread and ``lag - length`` entries were lost. Otherwise (or when Redis cannot
        tell the lag) nothing is measured now.
        """
        key = self._keys[topic]
        pipe = self._bus.client.pipeline(transaction=True)  # one consistent snapshot
        pipe.xinfo_stream(key)
        pipe.xinfo_groups(key)
        with self._bus.translate_errors("XINFO"):
            try:
                stream, groups = pipe.execute()
            except redis.exceptions.ResponseError:
                return None  # the stream was deleted
        if not isinstance(stream, dict) or not isinstance(groups, list):
            return None
        mine = [group for group in groups if _text(group.get("name")) == self.group]
        if not mine or mine[0].get("lag") is None:
            return None
        first = stream.get("first-entry")
        if isinstance(first, tuple) and first[0] is not None:
            last_delivered = parse_id(_text(mine[0]["last-delivered-id"]))
            if last_delivered >= parse_id(_text(first[0])):
                return None
        return max(0, int(mine[0]["lag"]) - int(stream["length"]))

    def _bus_closed(self) -> bool:
        return self._bus.closed

    def _leave(self) -> None:
        """Remove this consumer from the group when it holds no pending entries."""
        if self._bus.closed:
            return
        try:
            with self._bus.translate_errors("XGROUP DELCONSUMER"):
                for key in self._keys.values():
                    mine = self._bus.client.xpending_range(
                        key, self.group, min="-", max="+", count=1, consumername=self.consumer
                    )
                    if not mine:
                        self._bus.client.xgroup_delconsumer(key, self.group, self.consumer)
        except BusUnavailableError as error:
            LOG.warning("oona: could not remove consumer %s on close: %s", self.consumer, error)
        except redis.exceptions.ResponseError as error:
            if not _is_missing_group(error):
                raise


class RedisProcessedStore(ProcessedStore):
    """Idempotency marks in Redis: ``<processed_prefix><namespace>:<event id>`` with a TTL.

    A lease is ``lease:<token>`` set with ``NX`` semantics (a Lua script) and expires after
    ``lease_ms``; a done mark is ``done`` and expires after ``ttl_ms``. Marks survive Redis
    restarts with the append-only file, and all consumers of a group share them.
    """

    def __init__(self, bus: RedisStreamsBus, namespace: str, ttl_ms: int) -> None:
        """Create the store; use :meth:`RedisStreamsBus.processed_store` instead.

        Args:
            bus: The bus whose Redis holds the marks.
            namespace: Separates independent consumers (use the consumer group).
            ttl_ms: How long a done mark lives.

        Raises:
            ValueError: ``ttl_ms`` is not positive.
        """
        self._bus = bus
        self._prefix = f"{bus.processed_prefix}{namespace}:"
        self._ttl_ms = check_positive("ttl_ms", ttl_ms)
        self._claim = bus.client.register_script(_CLAIM_SCRIPT)
        self._release = bus.client.register_script(_RELEASE_SCRIPT)

    def key(self, event_id: str) -> str:
        """Return the key of an event id's mark."""
        return self._prefix + event_id

    def claim(self, event_id: str, token: str, lease_ms: int) -> ClaimState:
        """Take the lease on an event id (see :meth:`ProcessedStore.claim`)."""
        with self._bus.translate_errors("claiming an event id"):
            state = self._claim(keys=[self.key(event_id)], args=[token, lease_ms])
        return ClaimState(_text(state))

    def complete(self, event_id: str) -> None:
        """Mark an event id as processed (see :meth:`ProcessedStore.complete`)."""
        with self._bus.translate_errors("marking an event id"):
            self._bus.client.set(self.key(event_id), "done", px=self._ttl_ms)

    def release(self, event_id: str, token: str) -> None:
        """Drop the lease taken with ``token`` (see :meth:`ProcessedStore.release`)."""
        with self._bus.translate_errors("releasing an event id"):
            self._release(keys=[self.key(event_id)], args=[token])

    def is_done(self, event_id: str) -> bool:
        """Whether an event id is marked as processed."""
        with self._bus.translate_errors("reading an event id's mark"):
            return self._bus.client.get(self.key(event_id)) == b"done"
