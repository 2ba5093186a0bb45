"""Choosing a bus by URL, and naming consumers."""

import os
import re
import secrets
import socket
import urllib.parse

from esper.oona.bus import Bus
from esper.oona.memory import InProcessBus
from esper.oona.redis_streams import RedisStreamsBus

MEMORY_URL = "memory://"
"""The URL of the in-process bus (the embedded default)."""


def make_bus(
    url: str,
    *,
    prefix: str | None = None,
    maxlen: int | None = None,
    claim_idle_ms: int | None = None,
    block_ms: int | None = None,
    max_deliveries: int | None = None,
) -> Bus:
    """Create the bus a URL names.

    ``redis://`` and ``rediss://`` URLs give a :class:`~esper.oona.RedisStreamsBus`;
    ``memory://`` gives a new, private :class:`~esper.oona.InProcessBus` (components of one
    process share it by being handed the same object, not by calling this twice).
    Options left as None keep the implementation's defaults.

    Args:
        url: The bus URL.
        prefix: Key prefix of the streams (Redis only; ignored in memory).
        maxlen: Entries each topic's stream keeps.
        claim_idle_ms: Idle time after which a pending delivery is reclaimed.
        block_ms: Default and longest wait of a receive.
        max_deliveries: Deliveries after which an unacknowledged entry is dead-lettered.

    Returns:
        The bus.

    Raises:
        ValueError: The scheme is not ``redis``, ``rediss`` or ``memory``, or an option is
            out of range.
    """
    scheme = urllib.parse.urlsplit(url).scheme.lower()
    options: dict[str, int] = {}
    if maxlen is not None:
        options["maxlen"] = maxlen
    if claim_idle_ms is not None:
        options["claim_idle_ms"] = claim_idle_ms
    if block_ms is not None:
        options["block_ms"] = block_ms
    if max_deliveries is not None:
        options["max_deliveries"] = max_deliveries
    if scheme in ("redis", "rediss"):
        if prefix is not None:
            return RedisStreamsBus(url, prefix=prefix, **options)
        return RedisStreamsBus(url, **options)
    if scheme == "memory":
        return InProcessBus(**options)
    raise ValueError(
        f"unsupported bus URL scheme {scheme!r} in {url!r}: use redis://, rediss:// or memory://"
    )


def default_consumer_name(role: str = "consumer") -> str:
    """Return a consumer name unique to this process: ``<role>-<host>-<pid>-<random>``.

    Args:
        role: What the consumer is (``forge``, ``urza``, ...).

    Returns:
        A name in the bus's alphabet (``[A-Za-z0-9._:-]``, at most 128 characters).
    """
    host = re.sub(r"[^A-Za-z0-9._-]+", "-", socket.gethostname()).strip("-.") or "host"
    suffix = f"-{os.getpid()}-{secrets.token_hex(3)}"
    return f"{role}-{host}"[: 128 - len(suffix)] + suffix
