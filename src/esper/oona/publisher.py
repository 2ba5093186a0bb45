"""Publishing without ever waiting on the bus, for the training loop.

:class:`BackgroundPublisher` puts events in a bounded queue and returns at once; a daemon thread
publishes them in order and retries while the bus is unavailable. When the queue is full (the
bus has been down for a long time) an event is refused, counted and logged at ERROR level: the
training loop never blocks, and no event is dropped silently.
"""

import threading
import time
from collections import deque

from esper.contracts import Event
from esper.oona._core import LOG, check_positive
from esper.oona.bus import Bus, BusClosedError, BusUnavailableError

DEFAULT_CAPACITY = 10_000
"""Default number of events the queue holds."""

DEFAULT_RETRY_MS = 500
"""Default pause before publishing again after the bus was unavailable."""

_LOG_EVERY_DROPS = 1000


class BackgroundPublisher:
    """Publishes events on a background thread from a bounded queue; thread-safe."""

    def __init__(
        self,
        bus: Bus,
        *,
        capacity: int = DEFAULT_CAPACITY,
        retry_ms: int = DEFAULT_RETRY_MS,
        name: str = "oona-publisher",
    ) -> None:
        """Start the publishing thread.

        Args:
            bus: The bus to publish on; the publisher does not close it.
            capacity: Most events waiting to be published.
            retry_ms: Pause before retrying an event after the bus was unavailable.
            name: The thread's name.

        Raises:
            ValueError: ``capacity`` or ``retry_ms`` is not positive.
        """
        self._bus = bus
        self._capacity = check_positive("capacity", capacity)
        self._retry_s = check_positive("retry_ms", retry_ms) / 1000
        self._queue: deque[Event] = deque()
        self._changed = threading.Condition()
        self._closing = False
        self._stopped = False
        self._dropped = 0
        self._published = 0
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    @property
    def backlog(self) -> int:
        """Events waiting to be published (including one being published)."""
        with self._changed:
            return len(self._queue)

    @property
    def dropped(self) -> int:
        """Events refused because the queue was full."""
        with self._changed:
            return self._dropped

    @property
    def published(self) -> int:
        """Events published so far."""
        with self._changed:
            return self._published

    def publish(self, event: Event) -> bool:
        """Queue an event for publishing; never waits.

        Args:
            event: The event.

        Returns:
            True when queued; False when the queue was full and the event was refused (counted
            in :attr:`dropped` and logged).

        Raises:
            BusClosedError: The publisher is closed.
        """
        with self._changed:
            if self._closing:
                raise BusClosedError("the background publisher is closed")
            if len(self._queue) >= self._capacity:
                self._dropped += 1
                if self._dropped % _LOG_EVERY_DROPS == 1:
                    LOG.error(
                        "oona: publisher queue full (%d events); refused event %s of topic %s "
                        "(%d refused so far)",
                        self._capacity,
                        event.id,
                        event.topic.value,
                        self._dropped,
                    )
                return False
            self._queue.append(event)
            self._changed.notify_all()
            return True

    def flush(self, timeout_ms: int) -> bool:
        """Wait until every queued event is published, at most ``timeout_ms``.

        Returns:
            Whether the queue is empty.
        """
        deadline = time.monotonic() + timeout_ms / 1000
        with self._changed:
            while self._queue and not self._stopped:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._changed.wait(remaining)
            return not self._queue

    def close(self, timeout_ms: int = 5_000) -> int:
        """Refuse new events, publish the queued ones for at most ``timeout_ms``, then stop.

        Returns:
            How many events were left unpublished (also logged at ERROR level).
        """
        with self._changed:
            self._closing = True
        self.flush(timeout_ms)
        with self._changed:
            self._stopped = True
            left = len(self._queue)
            self._changed.notify_all()
        self._thread.join(timeout=self._retry_s + 1)
        if left:
            LOG.error("oona: publisher closed with %d events unpublished", left)
        return left

    def _run(self) -> None:
        failing = False
        while True:
            with self._changed:
                while not self._queue and not self._stopped:
                    self._changed.wait()
                if self._stopped:
                    return
                event = self._queue[0]
            try:
                self._bus.publish(event)
            except BusUnavailableError as error:
                if not failing:
                    LOG.warning("oona: bus unavailable, publisher retrying: %s", error)
                    failing = True
                with self._changed:
                    if not self._stopped:
                        self._changed.wait(self._retry_s)
                continue
            except BusClosedError:
                LOG.error(
                    "oona: bus closed under the publisher; %d events unpublished", self.backlog
                )
                with self._changed:
                    self._stopped = True
                    self._changed.notify_all()
                return
            if failing:
                LOG.info("oona: bus available again, publisher resumed")
                failing = False
            with self._changed:
                self._queue.popleft()
                self._published += 1
                self._changed.notify_all()
