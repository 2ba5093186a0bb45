"""Request limits of Urza's API: the size of JSON bodies and the rate of requests per client.

Both are pure ASGI middlewares, so a refused request never reaches routing, parsing or the
database. The rate limiter is in-process: with several replicas, each limits on its own.
"""

import math
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from starlette.routing import compile_path
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from esper.contracts.urza_api import ErrorBody

UNLIMITED_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})
"""Paths the rate limiter never counts: probes and scrapes must answer under any load."""

WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
"""Methods that count as writes."""

MAX_TRACKED_CLIENTS = 10_000
"""Most buckets kept at once; the least recently seen go first (a full bucket loses nothing)."""

RETRY_AFTER_DOC: dict[str, object] = {
    "description": "Whole seconds to wait before the next request is accepted.",
    "schema": {"type": "integer", "minimum": 1},
}

LIMIT_RESPONSES: dict[int | str, dict[str, object]] = {
    413: {
        "model": ErrorBody,
        "description": "Request body over its limit (JSON bodies: max_json_bytes; artifact "
        "bundles: max_upload_bytes); nothing was read further or stored.",
    },
    429: {
        "model": ErrorBody,
        "description": "Too many requests from this client; retry after Retry-After seconds.",
        "headers": {"Retry-After": RETRY_AFTER_DOC},
    },
}
"""OpenAPI responses every ``/v1`` operation may answer because of these limits."""


@dataclass(frozen=True)
class RateLimit:
    """A token bucket's shape.

    Attributes:
        per_second: Tokens added per second (sustained requests per second); > 0.
        burst: Bucket size (requests accepted at once after a quiet spell); >= 1.
        reads: Count reads too, not only writes.
    """

    per_second: float
    burst: int
    reads: bool = False

    def __post_init__(self) -> None:
        """Refuse a bucket that could never accept a request."""
        if not self.per_second > 0 or self.burst < 1:
            raise ValueError(
                f"a rate limit needs per_second > 0 and burst >= 1, got {self.per_second} and "
                f"{self.burst} (configure no limit to turn it off)"
            )

    def describe(self) -> str:
        """Name the limit in words, for error bodies.

        Returns:
            For example ``"20 writes/s (burst 100) per client"``.
        """
        kind = "requests" if self.reads else "writes"
        return f"{self.per_second:g} {kind}/s (burst {self.burst}) per client"


class TokenBuckets:
    """One token bucket per key, refilled continuously at ``limit.per_second``.

    Used from the event loop only (the middleware), so it holds no lock.

    Args:
        limit: The buckets' shape.
        clock: Monotonic seconds.
        max_keys: Most buckets kept; the least recently used is dropped beyond it.
    """

    def __init__(
        self,
        limit: RateLimit,
        clock: Callable[[], float] = time.monotonic,
        max_keys: int = MAX_TRACKED_CLIENTS,
    ) -> None:
        """Create empty bookkeeping (every key starts with a full bucket)."""
        if max_keys < 1:
            raise ValueError(f"max_keys must be >= 1, got {max_keys}")
        self.limit = limit
        self._clock = clock
        self._max_keys = max_keys
        # key -> (tokens, when they were counted)
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def take(self, key: str) -> float:
        """Take one token from ``key``'s bucket.

        Args:
            key: The client.

        Returns:
            0.0 when the request is accepted; otherwise the seconds until a token is there
            (nothing is taken then).
        """
        now = self._clock()
        tokens, counted = self._buckets.pop(key, (float(self.limit.burst), now))
        tokens = min(float(self.limit.burst), tokens + (now - counted) * self.limit.per_second)
        wait = 0.0
        if tokens >= 1.0:
            tokens -= 1.0
        else:
            wait = (1.0 - tokens) / self.limit.per_second
        self._buckets[key] = (tokens, now)
        while len(self._buckets) > self._max_keys:
            self._buckets.popitem(last=False)
        return wait

    def __len__(self) -> int:
        """Number of buckets kept."""
        return len(self._buckets)


def client_key(scope: Scope) -> str:
    """Key a request by its client address.

    Urza has one bearer token, shared by every worker, so keying by token would make the whole
    fleet one client; the address keeps pods apart. Behind a proxy it is the proxy's address
    unless uvicorn trusts the proxy's ``X-Forwarded-For`` (``FORWARDED_ALLOW_IPS``).

    Args:
        scope: The ASGI scope.

    Returns:
        The client's host, or ``"unknown"`` when the server does not know it (a Unix socket).
    """
    client = scope.get("client")
    return str(client[0]) if client else "unknown"


async def _send_error(send: Send, status: int, detail: str, headers: dict[str, str]) -> None:
    body = ErrorBody(detail=detail).model_dump_json().encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    raw += [(name.lower().encode(), value.encode()) for name, value in headers.items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


class RateLimitMiddleware:
    """Answers 429 with ``Retry-After`` once a client's bucket is empty.

    Args:
        app: The wrapped application.
        buckets: The buckets (their limit decides whether reads count).
    """

    def __init__(self, app: ASGIApp, buckets: TokenBuckets) -> None:
        """Wrap ``app``."""
        self._app = app
        self._buckets = buckets

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Count the request against its client's bucket, or refuse it."""
        if not self._counts(scope):
            await self._app(scope, receive, send)
            return
        wait = self._buckets.take(client_key(scope))
        if wait == 0.0:
            await self._app(scope, receive, send)
            return
        # Retry-After takes whole seconds; rounding up never invites an early retry.
        retry_after = max(1, math.ceil(wait))
        await _send_error(
            send,
            429,
            f"rate limit of {self._buckets.limit.describe()} exceeded; retry after "
            f"{retry_after} s",
            {"Retry-After": str(retry_after)},
        )

    def _counts(self, scope: Scope) -> bool:
        if scope["type"] != "http" or scope["path"] in UNLIMITED_PATHS:
            return False
        return self._buckets.limit.reads or scope["method"] in WRITE_METHODS


class JsonBodyLimitMiddleware:
    """Answers 413 to a request body over ``limit`` bytes before anything parses it.

    The body is read here (up to the limit) and replayed to the app, so the check holds for
    declared and chunked bodies alike. Routes that stream raw uploads under a limit of their
    own (the artifact bundle) are passed through untouched.

    Args:
        app: The wrapped application.
        limit: Largest body accepted, in bytes.
        exempt: (method, route template) of raw uploads, e.g.
            ``("PUT", "/v1/kernels/{kernel_id}/artifact")``.
    """

    def __init__(self, app: ASGIApp, limit: int, exempt: frozenset[tuple[str, str]]) -> None:
        """Wrap ``app``."""
        if limit < 1:
            raise ValueError(f"the JSON body limit must be >= 1 byte, got {limit}")
        self._app = app
        self._limit = limit
        # Matched with the router's own path compiler, so a template means what it means there.
        self._exempt_routes = [(method, compile_path(path)[0]) for method, path in sorted(exempt)]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Refuse an oversized body or hand the buffered one on."""
        if scope["type"] != "http" or self._exempt(scope):
            await self._app(scope, receive, send)
            return
        declared = _declared_length(scope)
        if declared is not None and declared > self._limit:
            await self._refuse(send)
            return
        chunks: list[bytes] = []
        received = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                # The client went away mid-body: nothing to answer, nothing to run.
                return
            chunk = message.get("body", b"")
            received += len(chunk)
            if received > self._limit:
                await self._refuse(send)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        await self._app(scope, _replay(b"".join(chunks), receive), send)

    def _exempt(self, scope: Scope) -> bool:
        return any(
            scope["method"] == method and pattern.fullmatch(scope["path"])
            for method, pattern in self._exempt_routes
        )

    async def _refuse(self, send: Send) -> None:
        await _send_error(
            send,
            413,
            f"request body exceeds the {self._limit}-byte limit of JSON bodies (max_json_bytes)",
            {"Connection": "close"},
        )


def _declared_length(scope: Scope) -> int | None:
    for name, value in scope["headers"]:
        if name == b"content-length":
            text = value.decode("latin-1").strip()
            return int(text) if text.isdigit() else None
    return None


def _replay(body: bytes, receive: Receive) -> Receive:
    delivered = False

    async def replayed() -> Message:
        nonlocal delivered
        if delivered:
            # After the body, the app only listens for the disconnect.
            return await receive()
        delivered = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replayed
