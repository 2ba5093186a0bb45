"""The operator's Prometheus metrics: reconciles, their durations, errors, run events."""

import time
from collections.abc import Iterator
from contextlib import contextmanager

from prometheus_client import Counter, Histogram, start_http_server

RECONCILES = Counter(
    "esper_operator_reconciles_total",
    "Reconcile passes, by resource kind and result.",
    ["kind", "result"],
)
RECONCILE_SECONDS = Histogram(
    "esper_operator_reconcile_seconds",
    "Duration of reconcile passes, by resource kind.",
    ["kind"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
)
ERRORS = Counter(
    "esper_operator_errors_total",
    "Reconcile passes that raised, by resource kind and error type.",
    ["kind", "error"],
)
RUN_EVENTS = Counter(
    "esper_operator_run_events_total",
    "Run events read from Oona, by topic.",
    ["topic"],
)


class Outcome:
    """The result label of one reconcile pass (set by the caller before the block ends).

    Attributes:
        result: ``ok`` unless the caller says otherwise.
    """

    def __init__(self) -> None:
        """Start as ``ok``."""
        self.result = "ok"


@contextmanager
def measured(kind: str) -> Iterator[Outcome]:
    """Count and time one reconcile pass; an exception counts as an error and propagates.

    Args:
        kind: The resource kind.

    Yields:
        The outcome, whose ``result`` the caller may change (``requeue``, ``invalid``...).
    """
    outcome = Outcome()
    started = time.perf_counter()
    try:
        yield outcome
    except Exception as error:
        ERRORS.labels(kind=kind, error=type(error).__name__).inc()
        outcome.result = "error"
        raise
    finally:
        RECONCILE_SECONDS.labels(kind=kind).observe(time.perf_counter() - started)
        RECONCILES.labels(kind=kind, result=outcome.result).inc()


def serve(port: int) -> None:
    """Serve ``/metrics`` on all addresses in a background thread.

    Args:
        port: The port.
    """
    start_http_server(port)
