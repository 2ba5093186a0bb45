"""Idempotency stores: where consumers remember which event ids they have processed.

A mark goes through two states. :meth:`ProcessedStore.claim` takes a *lease* on an event id
before its handler runs (so two consumers handed the same event at once do not both process
it, and a consumer that dies mid-handler loses the lease when it expires);
:meth:`ProcessedStore.complete` turns the lease into a *done* mark that lives ``ttl_ms``;
:meth:`ProcessedStore.release` drops the lease when the handler failed, so a redelivery
processes the event again.
"""

import abc
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from enum import StrEnum

DEFAULT_MEMORY_CAPACITY = 100_000
"""Default number of marks a :class:`MemoryProcessedStore` keeps."""


class ClaimState(StrEnum):
    """The answer to a claim on an event id."""

    CLAIMED = "claimed"
    """The caller holds the lease and must process the event, then complete or release."""
    DONE = "done"
    """The event was processed before; skip it and acknowledge the delivery."""
    BUSY = "busy"
    """Another holder's lease is live: the event is being processed elsewhere right now."""


class ProcessedStore(abc.ABC):
    """Remembers processed event ids for one consumer group (namespace)."""

    @abc.abstractmethod
    def claim(self, event_id: str, token: str, lease_ms: int) -> ClaimState:
        """Take the lease on an event id unless it is done or leased by someone else.

        Claiming again with the same token while the lease is live answers CLAIMED, so a
        retried claim is safe.

        Args:
            event_id: The event id.
            token: A value unique to this attempt.
            lease_ms: How long the lease lasts; longer than the handler may run.

        Returns:
            The state of the mark.

        Raises:
            BusUnavailableError: The store's backend did not answer.
        """

    @abc.abstractmethod
    def complete(self, event_id: str) -> None:
        """Mark an event id as processed, for the store's ``ttl_ms``.

        Raises:
            BusUnavailableError: The store's backend did not answer.
        """

    @abc.abstractmethod
    def release(self, event_id: str, token: str) -> None:
        """Drop the lease taken with ``token``; a lease now held by another token stays.

        Raises:
            BusUnavailableError: The store's backend did not answer.
        """

    @abc.abstractmethod
    def is_done(self, event_id: str) -> bool:
        """Whether an event id is marked as processed.

        Raises:
            BusUnavailableError: The store's backend did not answer.
        """


@dataclass(slots=True)
class _Mark:
    done: bool
    token: str
    expires_at: float


class MemoryProcessedStore(ProcessedStore):
    """A thread-safe in-memory store with expiry and a bounded size.

    When full, the oldest marks are forgotten first: an event redelivered after more than
    ``capacity`` newer events were marked would be processed again, so keep ``capacity`` above
    the number of events a stream retains (its ``maxlen``).
    """

    def __init__(self, ttl_ms: int, capacity: int = DEFAULT_MEMORY_CAPACITY) -> None:
        """Create an empty store.

        Args:
            ttl_ms: How long a done mark lives, in milliseconds.
            capacity: Most marks kept.

        Raises:
            ValueError: ``ttl_ms`` or ``capacity`` is not positive.
        """
        if ttl_ms <= 0 or capacity <= 0:
            raise ValueError("ttl_ms and capacity must be positive")
        self._ttl_s = ttl_ms / 1000
        self._capacity = capacity
        self._marks: OrderedDict[str, _Mark] = OrderedDict()
        self._lock = threading.Lock()

    def _live(self, event_id: str, now: float) -> _Mark | None:
        mark = self._marks.get(event_id)
        if mark is not None and mark.expires_at <= now:
            del self._marks[event_id]
            return None
        return mark

    def _put(self, event_id: str, mark: _Mark) -> None:
        self._marks[event_id] = mark
        self._marks.move_to_end(event_id)
        while len(self._marks) > self._capacity:
            self._marks.popitem(last=False)

    def claim(self, event_id: str, token: str, lease_ms: int) -> ClaimState:
        """Take the lease on an event id (see :meth:`ProcessedStore.claim`)."""
        now = time.monotonic()
        with self._lock:
            mark = self._live(event_id, now)
            if mark is None or (not mark.done and mark.token == token):
                self._put(event_id, _Mark(False, token, now + lease_ms / 1000))
                return ClaimState.CLAIMED
            return ClaimState.DONE if mark.done else ClaimState.BUSY

    def complete(self, event_id: str) -> None:
        """Mark an event id as processed (see :meth:`ProcessedStore.complete`)."""
        with self._lock:
            self._put(event_id, _Mark(True, "", time.monotonic() + self._ttl_s))

    def release(self, event_id: str, token: str) -> None:
        """Drop the lease taken with ``token`` (see :meth:`ProcessedStore.release`)."""
        with self._lock:
            mark = self._marks.get(event_id)
            if mark is not None and not mark.done and mark.token == token:
                del self._marks[event_id]

    def is_done(self, event_id: str) -> bool:
        """Whether an event id is marked as processed."""
        with self._lock:
            mark = self._live(event_id, time.monotonic())
            return mark is not None and mark.done
