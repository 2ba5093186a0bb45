"""Database faults under Urza's repository: PostgreSQL stops, crashes and never answers.

Every test restarts the server in ``finally`` (the shared fixtures also ``ensure_running``),
so later tests find it running.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, event
from sqlalchemy.exc import OperationalError

from esper.contracts.kernel import KernelPhase
from esper.contracts.urza_api import KernelCreate, PhaseChange
from esper.urza.blobs import LocalBlobStore
from esper.urza.database import make_engine, migrate, session_factory
from esper.urza.models import (
    BenchmarkReportRow,
    BlueprintRow,
    BlueprintTagRow,
    KernelRow,
    KernelTagRow,
)
from esper.urza.repository import NotFoundError, UrzaRepository
from tests.servers import PostgresServer
from tests.support.reliability import note_faults, note_lost

from .conftest import Storage
from .helpers import blueprint, compiled, cpu_target, report, run_bounded

pytestmark = [
    pytest.mark.postgres,
    pytest.mark.timeout(180),
    pytest.mark.reliability("postgres-killed"),
]

FAIL_WITHIN_SECONDS = 15.0
"""How long a call against an unreachable database may take before it counts as a hang."""


@pytest.fixture
def outage_storage(
    postgres_server: PostgresServer, postgres_sqlalchemy_url: str, tmp_path: Path
) -> Iterator[Storage]:
    """A private, migrated PostgreSQL database; the server is running again afterwards."""
    engine = make_engine(postgres_sqlalchemy_url)
    migrate(engine)
    blobs = LocalBlobStore(tmp_path / "blobs")
    try:
        yield Storage(
            backend="postgres",
            url=postgres_sqlalchemy_url,
            engine=engine,
            blobs=blobs,
            repository=UrzaRepository(session_factory(engine), blobs),
        )
    finally:
        postgres_server.ensure_running()
        engine.dispose()


def _fails_fast(call: Callable[[], object]) -> OperationalError:
    started = time.monotonic()
    with pytest.raises(OperationalError) as caught:
        run_bounded(call, FAIL_WITHIN_SECONDS)
    assert time.monotonic() - started < FAIL_WITHIN_SECONDS
    return caught.value


def test_stopped_database_fails_fast_and_the_same_repository_recovers(
    postgres_server: PostgresServer, outage_storage: Storage
) -> None:
    repo = outage_storage.repository
    kernel = compiled(repo, tags=("before",))
    record = repo.get_blueprint(kernel.blueprint_hash)
    repo.ping()  # the pool now holds live connections, which the stop will kill

    try:
        postgres_server.stop()
        note_faults()
        _fails_fast(repo.ping)
        _fails_fast(lambda: repo.get_blueprint(record.hash))
        _fails_fast(lambda: repo.get_kernel(kernel.id))
        _fails_fast(lambda: repo.list_kernels(tag="before"))
        _fails_fast(lambda: repo.put_blueprint(blueprint(width=555)))
        _fails_fast(repo.ping)  # still down: no cached success, no hang on retry
    finally:
        postgres_server.start()

    # The same repository (same engine and pool) works again: no rebuild, no retry loop.
    repo.ping()
    note_lost(
        int(repo.get_blueprint(record.hash) != record) + int(repo.get_kernel(kernel.id) != kernel)
    )
    assert repo.get_blueprint(record.hash) == record
    assert repo.get_kernel(kernel.id) == kernel
    assert [k.id for k in repo.list_kernels(tag="before").items] == [kernel.id]
    assert repo.read_artifact(kernel.id)[1] == outage_storage.blobs.get(kernel.sha256 or "")
    created, was_new = repo.put_blueprint(blueprint(width=555))
    assert was_new is True
    assert repo.get_blueprint(created.hash) == created
    # Nothing from the failed write during the outage reached the database.
    assert outage_storage.count(BlueprintRow) == 2


@dataclass(frozen=True)
class InterruptedWrite:
    """A repository write, the statement during which the server goes away, and checks."""

    statement: str
    fault: str


WRITES = {
    "blueprint-with-tags": InterruptedWrite("INSERT INTO blueprint_tags", "stop"),
    "kernel-with-tags": InterruptedWrite("INSERT INTO kernel_tags", "stop"),
    "kernel-with-tags-crash": InterruptedWrite("INSERT INTO kernel_tags", "kill"),
    "report-after-verdict": InterruptedWrite("INSERT INTO benchmark_reports", "stop"),
}


@contextmanager
def _server_goes_away_at(
    engine: Engine, statement: str, server: PostgresServer, fault: str
) -> Iterator[dict[str, int]]:
    """Stop (or crash) the server just before ``statement`` first runs; restart it after."""
    fired = {"count": 0}

    def before_cursor_execute(*args: Any) -> None:
        if fired["count"] == 0 and args[2].startswith(statement):
            fired["count"] += 1
            note_faults()
            # The transaction has already written its earlier rows when the server goes.
            if fault == "kill":
                server.kill()
            else:
                server.stop()

    event.listen(engine, "before_cursor_execute", before_cursor_execute)
    try:
        yield fired
    finally:
        event.remove(engine, "before_cursor_execute", before_cursor_execute)
        server.ensure_running()


@pytest.mark.parametrize("write", list(WRITES))
def test_write_interrupted_by_the_database_going_away_leaves_no_partial_rows(
    postgres_server: PostgresServer, outage_storage: Storage, write: str
) -> None:
    repo = outage_storage.repository
    plan = WRITES[write]
    ir = blueprint(width=808, tags=("one", "two"))
    target = cpu_target(12)
    validating = None
    if write.startswith("kernel"):
        repo.put_blueprint(ir)
    elif write.startswith("report"):
        validating = compiled(repo, target, ir=ir)
        repo.change_phase(validating.id, PhaseChange(phase=KernelPhase.VALIDATING))
        validating = repo.get_kernel(validating.id)

    def attempt() -> object:
        if write.startswith("blueprint"):
            return repo.put_blueprint(ir)
        if write.startswith("kernel"):
            request = KernelCreate(
                blueprint_hash=ir.canonical_hash(), target=target, tags=["x", "y"]
            )
            return repo.create_kernel(request)
        assert validating is not None
        return repo.attach_report(validating.id, report(validating.id))

    with _server_goes_away_at(
        outage_storage.engine, plan.statement, postgres_server, plan.fault
    ) as fired:
        _fails_fast(attempt)
        assert fired["count"] == 1
        assert not postgres_server.is_running

    # Data lost: rows the interrupted transaction left behind, plus committed rows now missing.
    if write.startswith("blueprint"):
        lost = outage_storage.count(BlueprintRow) + outage_storage.count(BlueprintTagRow)
    elif write.startswith("kernel"):
        lost = outage_storage.count(KernelRow) + outage_storage.count(KernelTagRow)
        lost += 2 - outage_storage.count(BlueprintTagRow)
    else:
        assert validating is not None
        lost = outage_storage.count(BenchmarkReportRow)
        lost += int(repo.get_kernel(validating.id) != validating)
    note_lost(lost)

    # Nothing of the interrupted transaction survived.
    if write.startswith("blueprint"):
        assert outage_storage.count(BlueprintRow) == 0
        assert outage_storage.count(BlueprintTagRow) == 0
        with pytest.raises(NotFoundError):
            repo.get_blueprint(ir.canonical_hash())
    elif write.startswith("kernel"):
        assert outage_storage.count(KernelRow) == 0
        assert outage_storage.count(KernelTagRow) == 0
        assert outage_storage.count(BlueprintTagRow) == 2  # the earlier, committed write
    else:
        assert validating is not None
        assert repo.get_kernel(validating.id) == validating
        assert outage_storage.count(BenchmarkReportRow) == 0

    # The same write succeeds once the database is back, and only once.
    result = attempt()
    if write.startswith("report"):
        assert repo.get_kernel(validating.id).phase is KernelPhase.VALIDATED
        assert outage_storage.count(BenchmarkReportRow) == 1
    else:
        assert isinstance(result, tuple)
        assert result[1] is True
    assert outage_storage.count(BlueprintTagRow) == 2
    if write.startswith("kernel"):
        assert outage_storage.count(KernelTagRow) == 2


def test_connecting_to_a_server_that_never_answers_times_out(tmp_path: Path) -> None:
    # A TCP listener that completes the handshake but never speaks: what a hung server, a
    # half-open network path or a full accept queue looks like to libpq. Without a connect
    # timeout psycopg waits 130 s by default, and every request of Urza hangs that long.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        port = silent.getsockname()[1]
        engine = make_engine(f"postgresql+psycopg://esper:esper@127.0.0.1:{port}/urza")
        repo = UrzaRepository(session_factory(engine), LocalBlobStore(tmp_path / "blobs"))
        try:
            _fails_fast(repo.ping)
        finally:
            # Closing the listener resets the pending connection, releasing a hung attempt.
            silent.close()
            engine.dispose()
