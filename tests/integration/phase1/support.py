"""Real parts for the Phase 1 tests: Urza served over HTTP in a thread, event logs, processes.

Import this module as ``tests.integration.phase1.support`` everywhere (also from the unit tests
of Tezzeret, Urabrask and the forge), so there is one copy of it per test session.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import psutil

from esper.config import UrzaSettings
from esper.contracts.events import Event, KernelPhaseChanged
from esper.contracts.kernel import KernelPhase
from esper.urza.client import UrzaClient
from esper.urza.service import UrzaService, build_service
from esper.urza.threaded import ThreadedServer
from tests.support.reliability import CountResponses

TOKEN = "phase1-test-token-0123456789abcdef"
"""Bearer token of the cluster flavour."""

MARKER_VARIABLE = "PHASE1_TEST_MARKER"
"""Environment variable that tags every worker process a test starts (to find leftovers)."""

T = TypeVar("T")


def wait_for(
    fetch: Callable[[], T],
    until: Callable[[T], bool],
    *,
    timeout: float,
    what: str,
    interval: float = 0.2,
) -> T:
    """Poll ``fetch`` (bounded) until ``until`` holds for its value; return that value.

    Raises:
        TimeoutError: With ``what`` and the last value seen, when the time is up.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = fetch()
        if until(value):
            return value
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}; last: {value}")
        time.sleep(interval)


# Urza -------------------------------------------------------------------------------------------


ThreadedUvicorn = ThreadedServer
"""Urza served by uvicorn on 127.0.0.1 in a background thread (the server ``esper run`` embeds)."""


class EventLog:
    """Records the events Urza publishes (and forwards them, e.g. to a bus)."""

    def __init__(self, forward: Callable[[Event], object] | None = None) -> None:
        self._forward = forward
        self._lock = threading.Lock()
        self.events: list[Event] = []

    def __call__(self, event: Event) -> None:
        with self._lock:
            self.events.append(event)
        if self._forward is not None:
            self._forward(event)

    def phases(self, kernel_id: str) -> list[KernelPhase]:
        """The phases a kernel was announced in, in order."""
        with self._lock:
            return [
                event.payload.phase
                for event in self.events
                if isinstance(event.payload, KernelPhaseChanged)
                and event.payload.kernel_id == kernel_id
            ]


@dataclass
class RunningUrza:
    """A live Urza over real HTTP."""

    settings: UrzaSettings
    service: UrzaService
    server: ThreadedUvicorn
    events: EventLog
    _clients: list[UrzaClient] = field(default_factory=list)

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def token(self) -> str | None:
        return self.settings.token()

    def client(self, **options: Any) -> UrzaClient:
        """A client with the token; no waits between its retries unless asked."""
        options.setdefault("token", self.token)
        options.setdefault("timeout", 30.0)
        options.setdefault("sleep", lambda _seconds: None)
        client = UrzaClient(self.url, **options)
        self._clients.append(client)
        return client

    def worker_env(self, marker: str) -> dict[str, str]:
        """What a worker needs to reach this Urza, plus the test's process marker."""
        environment = {"ESPER_URZA_URL": self.url, MARKER_VARIABLE: marker}
        if self.token is not None:
            environment["ESPER_URZA_TOKEN"] = self.token
        return environment


def embedded_settings(root: Path) -> UrzaSettings:
    """The embedded default under ``root``: SQLite file, local artifact directory, no token."""
    return UrzaSettings(
        database_url=f"sqlite:///{root / 'urza.sqlite'}",
        blob_store="local",
        artifact_dir=root / "artifacts",
        host="127.0.0.1",
    )


def cluster_settings(database_url: str, s3: Any) -> UrzaSettings:
    """The cluster configuration: PostgreSQL, an S3 bucket (MinIO) and a bearer token."""
    return UrzaSettings(
        database_url=database_url,
        blob_store="s3",
        s3_endpoint_url=s3.endpoint_url,
        s3_bucket=s3.bucket,
        s3_region=s3.region,
        s3_access_key_id=s3.access_key,
        s3_secret_access_key=s3.secret_key,
        auth_token=TOKEN,
        host="127.0.0.1",
    )


@contextlib.contextmanager
def serving(
    settings: UrzaSettings, forward: Callable[[Event], object] | None = None
) -> Iterator[RunningUrza]:
    """Build Urza from ``settings`` (events recorded, then forwarded) and serve it."""
    events = EventLog(forward)
    service = build_service(settings, publish=events)
    # Count its responses for the reliability ledger (tests/support/reliability.py).
    service.app.add_middleware(CountResponses)
    server = ThreadedUvicorn(service.app)
    running = RunningUrza(settings=settings, service=service, server=server, events=events)
    try:
        server.start()
        yield running
    finally:
        for client in running._clients:
            client.close()
        server.stop()
        service.engine.dispose()


def local_blob_path(artifact_uri: str) -> Path:
    """The file behind a ``file://`` artifact URI."""
    parsed = urllib.parse.urlsplit(artifact_uri)
    assert parsed.scheme == "file", artifact_uri
    return Path(urllib.parse.unquote(parsed.path))


# Processes --------------------------------------------------------------------------------------


def marked_processes(marker: str) -> list[psutil.Process]:
    """Live (non-zombie) processes whose environment carries ``PHASE1_TEST_MARKER=marker``."""
    found = []
    for process in psutil.process_iter(["pid"]):
        try:
            if process.status() == psutil.STATUS_ZOMBIE:
                continue
            if process.environ().get(MARKER_VARIABLE) == marker:
                found.append(process)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


def kill_marked(marker: str) -> None:
    """SIGKILL every live process carrying the marker (teardown after a failed test)."""
    for process in marked_processes(marker):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(process.pid, signal.SIGKILL)


def assert_no_marked_processes(marker: str, timeout: float = 20.0) -> None:
    """Assert that no process carrying the marker is left (allowing a bounded exit)."""
    left = wait_for(
        lambda: marked_processes(marker),
        lambda processes: not processes,
        timeout=timeout,
        what="worker processes to be gone",
    )
    assert left == []


def describe(processes: list[psutil.Process]) -> list[str]:
    """Command lines of processes, for failure messages."""
    lines = []
    for process in processes:
        with contextlib.suppress(psutil.Error):
            lines.append(f"{process.pid}: {' '.join(process.cmdline())}")
    return lines
