"""The reliability ledger: what the hardening suites tried, injected, served and lost.

Every hardening test carries ``@pytest.mark.reliability("<row>")``, naming a row of
:data:`ROWS`. While it runs, the test (and the servers it drives) add to its row:

- :func:`note_inputs` for each input tried (a Hypothesis example, a malformed resource);
- :func:`note_faults` for each fault injected (a server killed, a process SIGKILLed);
- :func:`note_served` for each request the system under test answered; Urza served in-process
  counts its HTTP responses itself through :class:`CountResponses`;
- :func:`note_lost` with the data found lost after the fault, as measured by the test (which
  then asserts it is zero).

With ``--reliability-ledger PATH`` the session writes the tallies and each row's test outcomes
as JSON; ``scripts/reliability_report.py`` renders that file as docs/reliability.md and fails when
a row has no passing test, a failing one, or lost data. See docs/reliability.md.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Awaitable, Callable, Generator, MutableMapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pytest


@dataclass(frozen=True)
class Row:
    """One line of the reliability table.

    Attributes:
        area: ``input``, ``fault`` or ``security``.
        title: What is exercised, as the table says it.
        served_unit: What a served request is for this row (``None``: calls in-process only).
    """

    area: str
    title: str
    served_unit: str | None


ROWS: dict[str, Row] = {
    "ir-fuzz": Row(
        "input",
        "BlueprintIR, valid and mutated, through the contract, builder, Urza's API and Tezzeret",
        "HTTP responses",
    ),
    "urza-openapi-fuzz": Row(
        "input", "Urza's whole OpenAPI surface, property-based, with auth", "HTTP responses"
    ),
    "malformed-resources": Row(
        "input",
        "Malformed custom resources against the operator on the real API server",
        "HTTP responses (API server, Urza)",
    ),
    "bundle-fuzz": Row(
        "input", "Truncated, corrupted and oversized artifact bundles through the loader", None
    ),
    "postgres-killed": Row("fault", "PostgreSQL stopped or killed during writes", "HTTP responses"),
    "s3-down": Row("fault", "The S3 server down during an upload or a download", "HTTP responses"),
    "redis-restarted": Row(
        "fault", "Redis restarted or crashed with events in flight", "events delivered"
    ),
    "worker-killed": Row(
        "fault", "A compile worker killed or timed out mid-compile", "HTTP responses"
    ),
    "operator-killed": Row(
        "fault", "The operator killed mid-reconcile, or its leader lost", "HTTP responses"
    ),
    "training-killed": Row(
        "fault", "A training process SIGKILLed after growing, then resumed", "epochs resumed"
    ),
    "urza-auth": Row(
        "security", "Urza authentication and read/write authorization", "HTTP responses"
    ),
    "urza-limits": Row("security", "Urza's body-size and per-client rate limits", "HTTP responses"),
    "no-unpickling": Row("security", "No code path unpickles (AST scan of src/)", None),
    "signed-artifacts": Row(
        "security", "Artifacts signed by Tezzeret, verified before loading", "HTTP responses"
    ),
    "rbac": Row(
        "security",
        "Operator and worker RBAC via `kubectl auth can-i --as` on the real API server",
        "access reviews",
    ),
    "non-root": Row("security", "Every container runs as non-root, hardened", None),
}
"""The table's rows, in its order."""


@dataclass
class Tally:
    """What one row's tests did, summed over them."""

    inputs: int = 0
    faults: int = 0
    served: int = 0
    lost: int = 0
    lost_checks: int = 0
    passed: int = 0
    failed: int = 0
    skipped: int = 0
    tests: list[str] = field(default_factory=list)


_lock = threading.Lock()
_tallies: dict[str, Tally] = {}
_current: list[str] = []


def _tally(row: str) -> Tally:
    if row not in ROWS:
        raise KeyError(f"unknown reliability row {row!r}; add it to tests/support/reliability.ROWS")
    return _tallies.setdefault(row, Tally())


def _add(name: str, count: int, *, required: bool) -> None:
    if count < 0:
        raise ValueError(f"{name} count must be >= 0, got {count}")
    with _lock:
        if not _current:
            if required:
                raise RuntimeError(
                    f"note_{name}() outside a test marked @pytest.mark.reliability(row)"
                )
            return
        tally = _tally(_current[-1])
        setattr(tally, name, getattr(tally, name) + count)


def note_inputs(count: int = 1) -> None:
    """Count inputs the running test tried."""
    _add("inputs", count, required=True)


def note_faults(count: int = 1) -> None:
    """Count faults the running test injected."""
    _add("faults", count, required=True)


def note_served(count: int = 1) -> None:
    """Count requests the system under test answered (ignored outside a ledger row)."""
    _add("served", count, required=False)


def note_lost(count: int) -> None:
    """Record data the running test found lost (it asserts zero afterwards)."""
    _add("lost", count, required=True)
    _add("lost_checks", 1, required=True)


Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


class CountResponses:
    """ASGI middleware: each HTTP response started counts as one served request."""

    def __init__(self, app: Callable[[Scope, Receive, Send], Awaitable[None]]) -> None:
        """Wrap ``app``."""
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve through the wrapped app, counting the responses it starts."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def counting_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                note_served()
            await send(message)

        await self.app(scope, receive, counting_send)


def pytest_addoption(parser: pytest.Parser) -> None:
    """Add ``--reliability-ledger``."""
    parser.addoption(
        "--reliability-ledger",
        metavar="PATH",
        default=None,
        help="write the reliability ledger (JSON) of the marked hardening tests to PATH",
    )


def pytest_configure(config: pytest.Config) -> None:
    """Register the marker."""
    config.addinivalue_line(
        "markers", "reliability(row): a hardening test counted in docs/reliability.md's row"
    )


def _row_of(item: pytest.Item) -> str | None:
    marker = item.get_closest_marker("reliability")
    if marker is None:
        return None
    (row,) = marker.args
    _tally(row)
    return str(row)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item) -> Generator[None, object, object]:
    """Attribute what the test notes (setup and teardown included) to its row."""
    row = _row_of(item)
    if row is None:
        return (yield)
    with _lock:
        _tallies[row].tests.append(item.nodeid)
        _current.append(row)
    try:
        return (yield)
    finally:
        with _lock:
            _current.pop()


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    """Count each marked test once: failed if any phase failed, else passed or skipped."""
    with _lock:
        if not _current:
            return
        tally = _tallies[_current[-1]]
        if report.failed:
            tally.failed += 1
        elif report.when == "call" and report.passed:
            tally.passed += 1
        elif report.skipped:
            tally.skipped += 1


def pytest_sessionfinish(session: pytest.Session) -> None:
    """Write the ledger when asked to."""
    path = session.config.getoption("--reliability-ledger")
    if path is None:
        return
    ledger = {
        "rows": {row: {**asdict(ROWS[row]), **asdict(_tallies.get(row, Tally()))} for row in ROWS}
    }
    Path(path).write_text(json.dumps(ledger, indent=2) + "\n", encoding="utf-8")
