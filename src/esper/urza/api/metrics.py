"""Prometheus metrics of Urza's API: request counts and latencies by route."""

import time
from collections.abc import Awaitable, Callable

from fastapi import FastAPI, Request
from fastapi.responses import Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    Info,
    generate_latest,
)

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

        @app.middleware("http")
        async def record(
            request: Request, call_next: Callable[[Request], Awaitable[Response]]
        ) -> Response:
            started = time.perf_counter()
            response = await call_next(request)
            route = _route_template(request)
            self._requests.labels(request.method, route, str(response.status_code)).inc()
            self._latency.labels(request.method, route).observe(time.perf_counter() - started)
            return response

    def response(self) -> Response:
        """Render the metrics in Prometheus' text format.

        Returns:
            The HTTP response.
        """
        return Response(generate_latest(self.registry), media_type=CONTENT_TYPE_LATEST)


def _route_template(request: Request) -> str:
    # Label by template (/v1/kernels/{kernel_id}), never by raw path, to bound cardinality;
    # the router leaves the matched route in the scope.
    route = request.scope.get("route")
    return str(getattr(route, "path", "unmatched"))
