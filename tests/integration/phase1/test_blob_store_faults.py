"""The S3 server down while a real compile worker uploads its bundle (reliability row s3-down).

Urza runs on PostgreSQL and MinIO; a real forge :class:`UnitRunner` starts real Tezzeret worker
subprocesses that compile with torch. The S3 server is stopped once the kernel is Compiling, so
the worker's upload meets a dead artifact store (the worker is frozen with SIGSTOP while the
server stops, so the stop always comes before the upload):

- an outage that lasts: every attempt fails, the kernel ends Failed naming the artifact store,
  with no artifact reference and no object in the bucket, and a later run with S3 back compiles
  it (the state left behind is retryable);
- an outage that ends before the next attempt: the retry compiles and publishes the kernel.

The API-level view (503 on upload and download, /readyz) is in
tests/integration/urza_api/test_faults.py.
"""

from __future__ import annotations

import hashlib
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from esper.contracts.kernel import KernelPhase
from esper.forge.runner import RunnerOptions, UnitKind, UnitRunner, WorkUnit
from esper.urza.blobs.base import blob_key
from esper.urza.client import UrzaClient
from tests.integration.phase1.support import (
    RunningUrza,
    assert_no_marked_processes,
    cluster_settings,
    marked_processes,
    serving,
)
from tests.servers.s3 import S3Location, S3Server
from tests.support.reliability import note_faults, note_lost
from tests.unit.tezzeret import bundles

pytestmark = [
    pytest.mark.timeout(600),
    pytest.mark.postgres,
    pytest.mark.s3,
    pytest.mark.reliability("s3-down"),
]

STORE_DOWN = "Urza's artifact store is unavailable"
"""What Urza answers (503) while its S3 server is down; the worker's recorded error carries it."""

COMPILED_PHASES = [KernelPhase.PENDING, KernelPhase.COMPILING, KernelPhase.COMPILED]


@pytest.fixture
def urza(postgres_sqlalchemy_url: str, s3_bucket: S3Location) -> Iterator[RunningUrza]:
    """Urza on PostgreSQL + MinIO with a bearer token."""
    with serving(cluster_settings(postgres_sqlalchemy_url, s3_bucket)) as running:
        yield running


@pytest.fixture
def s3_up(s3_server: S3Server) -> Iterator[S3Server]:
    """The session's S3 server, running again after the test whatever happened."""
    yield s3_server
    s3_server.ensure_running()


def _runner(
    client: UrzaClient,
    urza: RunningUrza,
    marker: str,
    home: Path,
    *,
    max_attempts: int,
    sleep: Callable[[float], None],
) -> UnitRunner:
    # The workers sign with the local key under their own ESPER_HOME (created on first use).
    environment = {**urza.worker_env(marker), "ESPER_HOME": str(home)}
    return UnitRunner(
        client,
        RunnerOptions(
            timeout_seconds=300,
            max_attempts=max_attempts,
            backoff_seconds=1.0,
            extra_env=environment,
            compile_cache=False,
        ),
        sleep=sleep,
    )


def _unit(client: UrzaClient) -> WorkUnit:
    record = client.submit_blueprint(bundles.ir())
    kernel = client.create_kernel(record.hash, bundles.target())
    return WorkUnit(UnitKind.COMPILE, kernel.id, kernel.blueprint_hash, kernel.target)


def _objects(s3_bucket: S3Location) -> list[str]:
    """Keys of every object in the test's bucket (S3 must be up)."""
    s3 = s3_bucket.client()
    try:
        listing = s3.list_objects_v2(Bucket=s3_bucket.bucket)
    finally:
        s3.close()
    return sorted(item["Key"] for item in listing.get("Contents", []))


class _StopWhileCompiling:
    """Stops the S3 server each time a new attempt's kernel is Compiling (up to ``stops``).

    The worker found is frozen (SIGSTOP to its process group) while the server stops, then
    thawed: its upload can only start once the S3 server is gone. With ``restart_on_failed``,
    :meth:`sleep` (the runner's wait between attempts, after the failed attempt's worker has
    exited) starts the server again first. It does so on the test's thread: the server dies with
    the thread that started it (its parent-death signal), so a watcher thread must not start it.
    """

    def __init__(
        self,
        urza: RunningUrza,
        s3: S3Server,
        kernel_id: str,
        marker: str,
        *,
        stops: int,
        restart_on_failed: bool,
    ) -> None:
        self._urza = urza
        self._s3 = s3
        self._kernel_id = kernel_id
        self._marker = marker
        self._stops = stops
        self._restart_on_failed = restart_on_failed
        self._done = threading.Event()
        self.restarted = threading.Event()
        self.stopped = 0
        self.waits: list[float] = []
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def __enter__(self) -> _StopWhileCompiling:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._done.set()
        self._thread.join(60)
        assert not self._thread.is_alive(), "the S3 stopper did not finish"

    def sleep(self, seconds: float) -> None:
        """The runner's wait between attempts: after the restart (when asked), then ``seconds``."""
        self.waits.append(seconds)
        if self._restart_on_failed and not self.restarted.is_set():
            # The attempt that met the outage has ended, Failed: the outage ends now.
            assert self._urza.events.phases(self._kernel_id)[-1] is KernelPhase.FAILED
            self._s3.start()
            self.restarted.set()
        time.sleep(seconds)

    def _watch(self) -> None:
        while not self._done.is_set():
            phases = self._urza.events.phases(self._kernel_id)
            workers = marked_processes(self._marker)
            if (
                self.stopped < self._stops
                and phases.count(KernelPhase.COMPILING) > self.stopped
                and workers
            ):
                group = os.getpgid(workers[0].pid)
                os.killpg(group, signal.SIGSTOP)
                try:
                    self._s3.stop()
                finally:
                    os.killpg(group, signal.SIGCONT)
                self.stopped += 1
                note_faults()
            self._done.wait(0.05)


def test_s3_down_for_every_attempt_leaves_the_kernel_failed_with_nothing_dangling(
    urza: RunningUrza, s3_up: S3Server, s3_bucket: S3Location, marker: str, tmp_path: Path
) -> None:
    client = urza.client()
    unit = _unit(client)
    stopper = _StopWhileCompiling(
        urza, s3_up, unit.kernel_id, marker, stops=2, restart_on_failed=False
    )
    runner = _runner(client, urza, marker, tmp_path / "home", max_attempts=2, sleep=stopper.sleep)

    try:
        with stopper:
            outcome = runner.run(unit)
        assert stopper.stopped == 2
        assert not outcome.succeeded
        assert outcome.attempts == 2
        assert outcome.error is not None
        assert outcome.error.startswith("worker exited with status"), outcome.error
        assert stopper.waits == [1.0]
        assert urza.events.phases(unit.kernel_id) == [
            KernelPhase.PENDING,
            KernelPhase.COMPILING,
            KernelPhase.FAILED,
            KernelPhase.PENDING,
            KernelPhase.COMPILING,
            KernelPhase.FAILED,
        ]
        kernel = client.get_kernel(unit.kernel_id)
        assert kernel.phase is KernelPhase.FAILED
        # The worker recorded why: its upload kept meeting the dead store.
        assert kernel.error is not None
        assert kernel.error.startswith("UrzaUnavailableError: PUT "), kernel.error
        assert STORE_DOWN in kernel.error, kernel.error
        assert kernel.sha256 is None
        assert kernel.artifact_uri is None
        attempts = client.compile_records(unit.kernel_id)
        assert [record.succeeded for record in attempts] == [False, False]
        assert all(STORE_DOWN in (record.error or "") for record in attempts), attempts
        assert_no_marked_processes(marker)
    finally:
        s3_up.ensure_running()

    # Nothing half-written: no object in the bucket, no reference to one.
    dangling = len(_objects(s3_bucket)) + (1 if kernel.sha256 else 0)
    note_lost(dangling)
    assert dangling == 0

    # The state left behind is retryable: with S3 back the same unit compiles and publishes.
    retry = _runner(client, urza, marker, tmp_path / "home", max_attempts=1, sleep=time.sleep)
    assert retry.run(unit).succeeded
    kernel = client.get_kernel(unit.kernel_id)
    assert kernel.phase is KernelPhase.COMPILED
    assert kernel.error is None
    assert kernel.sha256 is not None
    assert _objects(s3_bucket) == [blob_key(kernel.sha256)]
    assert hashlib.sha256(client.download_artifact(unit.kernel_id)).hexdigest() == kernel.sha256
    assert [record.succeeded for record in client.compile_records(unit.kernel_id)] == [
        False,
        False,
        True,
    ]
    assert_no_marked_processes(marker)


def test_s3_back_before_the_retry_lets_the_unit_succeed(
    urza: RunningUrza, s3_up: S3Server, s3_bucket: S3Location, marker: str, tmp_path: Path
) -> None:
    client = urza.client()
    unit = _unit(client)
    stopper = _StopWhileCompiling(
        urza, s3_up, unit.kernel_id, marker, stops=1, restart_on_failed=True
    )
    runner = _runner(client, urza, marker, tmp_path / "home", max_attempts=2, sleep=stopper.sleep)

    try:
        with stopper:
            outcome = runner.run(unit)
    finally:
        s3_up.ensure_running()

    assert stopper.stopped == 1
    assert stopper.restarted.is_set()
    assert outcome.succeeded, outcome.error
    assert outcome.attempts == 2
    assert stopper.waits == [1.0]
    assert urza.events.phases(unit.kernel_id) == [
        KernelPhase.PENDING,
        KernelPhase.COMPILING,
        KernelPhase.FAILED,
        *COMPILED_PHASES,
    ]
    kernel = client.get_kernel(unit.kernel_id)
    assert kernel.phase is KernelPhase.COMPILED
    assert kernel.sha256 is not None
    assert _objects(s3_bucket) == [blob_key(kernel.sha256)]
    assert hashlib.sha256(client.download_artifact(unit.kernel_id)).hexdigest() == kernel.sha256
    attempts = client.compile_records(unit.kernel_id)
    assert [record.succeeded for record in attempts] == [False, True]
    assert STORE_DOWN in (attempts[0].error or ""), attempts
    assert_no_marked_processes(marker)
