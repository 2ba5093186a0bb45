"""Oona, Esper's message bus: typed events on topics, consumer groups, at-least-once delivery.

One interface (:class:`Bus`, :class:`Subscription`), two implementations with the same
semantics: :class:`RedisStreamsBus` in a cluster and :class:`InProcessBus` embedded. Pick one
with :func:`make_bus` (``redis://...`` or ``memory://``). Consumers process each event once
with :class:`IdempotentConsumer`; a training loop publishes without waiting through
:class:`BackgroundPublisher`. See docs/oona.md.
"""

from esper.oona.bus import (
    DEAD_LETTER_NAME,
    DEFAULT_PREFIX,
    Bus,
    BusClosedError,
    BusUnavailableError,
    DeadLetter,
    DeadLetterReason,
    Delivery,
    OonaError,
    StartPosition,
    Subscription,
)
from esper.oona.factory import MEMORY_URL, default_consumer_name, make_bus
from esper.oona.idempotency import IdempotentConsumer, Outcome
from esper.oona.memory import InProcessBus
from esper.oona.publisher import BackgroundPublisher
from esper.oona.redis_streams import RedisProcessedStore, RedisStreamsBus
from esper.oona.store import ClaimState, MemoryProcessedStore, ProcessedStore

__all__ = [
    "DEAD_LETTER_NAME",
    "DEFAULT_PREFIX",
    "MEMORY_URL",
    "BackgroundPublisher",
    "Bus",
    "BusClosedError",
    "BusUnavailableError",
    "ClaimState",
    "DeadLetter",
    "DeadLetterReason",
    "Delivery",
    "IdempotentConsumer",
    "InProcessBus",
    "MemoryProcessedStore",
    "OonaError",
    "Outcome",
    "ProcessedStore",
    "RedisProcessedStore",
    "RedisStreamsBus",
    "StartPosition",
    "Subscription",
    "default_consumer_name",
    "make_bus",
]
