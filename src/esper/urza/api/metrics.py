"""Prometheus metrics of Urza's API: request counts and latencies by route."""

import time

from fastapi import FastAPI
from fastapi.responses import Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    Info,
    generate_latest,
)
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from esper import __version__


class UrzaMetrics:
    """The metrics of one Urza app, in a registry of its own (several apps may share a process).

    Attributes:
        registry: The Prometheus registry.
    """

    def __init__(self) -> None:
        """Create the registry and the metrics."""
        self.registry = CollectorRegistry()
        self._requests = Counter(
            "urza_http_requests_total",
            "HTTP requests by method, route template and status code.",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self._latency = Histogram(
            "urza_http_request_duration_seconds",
            "HTTP request latency by method and route template.",
            ["method", "route"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0),
            registry=self.registry,
        )
        Info("urza_build", "Urza's version.", registry=self.registry).info({"version": __version__})

    def install(self, app: FastAPI) -> None:
        """Record every request the app serves.

        Args:
            app: The application.
        """
        app.add_middleware(_MetricsMiddleware, metrics=self)

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        """Record one finished request.

        Args:
            method: HTTP method.
            route: Route template.
            status: Response status code.
            seconds: Time to respond.
        """
        self._requests.labels(method, route, str(status)).inc()
        self._latency.labels(method, route).observe(seconds)

    def response(self) -> Response:
        """Render the metrics in Prometheus' text format.

        Returns:
            The HTTP response.
        """
        return Response(generate_latest(self.registry), media_type=CONTENT_TYPE_LATEST)


class _MetricsMiddleware:
    """Counts and times requests as a pure ASGI middleware.

    Unlike an ``@app.middleware`` function it does not wrap every chunk of a request body, so
    large uploads pay nothing for being counted.
    """

    def __init__(self, app: ASGIApp, metrics: UrzaMetrics) -> None:
        self._app = app
        self._metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_and_watch(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self._app(scope, receive, send_and_watch)
        finally:
            # Label by template (/v1/kernels/{kernel_id}), never by raw path, to bound
            # cardinality; the router leaves the matched route in the scope.
            route = str(getattr(scope.get("route"), "path", "unmatched"))
            self._metrics.observe(scope["method"], route, status, time.perf_counter() - started)
