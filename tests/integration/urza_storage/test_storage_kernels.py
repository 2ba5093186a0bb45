"""Kernels in Urza's repository: registration, the phase machine, uploads and reports, on
SQLite and PostgreSQL."""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from pydantic import ValidationError
from sqlalchemy import select

from esper.contracts.blueprint import BlueprintIR
from esper.contracts.kernel import (
    KERNEL_PHASES,
    PHASES_WITH_ARTIFACT,
    KernelArtifact,
    KernelPhase,
)
from esper.contracts.lifecycle import IllegalTransitionError
from esper.contracts.urza_api import KernelCreate, PhaseChange
from esper.urza.blobs import BlobStore
from esper.urza.models import BenchmarkReportRow, KernelRow, KernelTagRow
from esper.urza.repository import (
    ConflictError,
    InvalidRequestError,
    NotFoundError,
    UrzaRepository,
)

from .conftest import Storage
from .helpers import (
    BACKENDS,
    blueprint,
    bundle,
    compiled,
    cpu_target,
    expected_kernel_id,
    register,
    report,
)

pytestmark = [BACKENDS, pytest.mark.timeout(120)]


def _row_snapshot(storage: Storage, identifier: str) -> dict[str, Any]:
    """Every column of a kernel's row, to prove a refused operation changed nothing."""
    with storage.engine.connect() as connection:
        row = connection.execute(select(KernelRow).where(KernelRow.id == identifier)).one()
    return dict(row._mapping)


def _to(phase: KernelPhase, **fields: Any) -> PhaseChange:
    return PhaseChange(phase=phase, **fields)


# Registration ------------------------------------------------------------------------------


def test_create_kernel_is_idempotent_by_blueprint_and_target(storage: Storage) -> None:
    repo = storage.repository
    record, _ = repo.put_blueprint(blueprint())
    request = KernelCreate(blueprint_hash=record.hash, target=cpu_target(), tags=["b", "a", "b"])

    first, created = repo.create_kernel(request)
    second, created_again = repo.create_kernel(request.model_copy(update={"tags": ["different"]}))

    assert created is True
    assert created_again is False
    assert first.id == expected_kernel_id(record.ir, cpu_target())
    assert first.phase is KernelPhase.PENDING
    assert first.tags == ["a", "b"]
    assert second == first
    assert repo.get_kernel(first.id) == first
    assert storage.count(KernelRow) == 1
    assert storage.count(KernelTagRow, kernel_id=first.id) == 2


def test_create_kernel_that_loses_the_insert_race_returns_the_winner(
    storage: Storage, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo = storage.repository
    winner = register(repo, tags=("first",))
    real_find = repo._find_kernel
    calls = iter([None])

    def find_after_the_race(identifier: str) -> KernelArtifact | None:
        return next(calls, None) or real_find(identifier)

    monkeypatch.setattr(repo, "_find_kernel", find_after_the_race)

    artifact, created = repo.create_kernel(
        KernelCreate(blueprint_hash=winner.blueprint_hash, target=cpu_target(), tags=["late"])
    )

    assert created is False
    assert artifact == winner
    assert storage.count(KernelRow) == 1
    assert storage.count(KernelTagRow) == 1


def test_concurrent_creates_of_one_kernel_store_one_row(storage: Storage) -> None:
    repo = storage.repository
    record, _ = repo.put_blueprint(blueprint())
    request = KernelCreate(blueprint_hash=record.hash, target=cpu_target(), tags=["x"])
    workers = 8
    barrier = threading.Barrier(workers)

    def submit() -> tuple[KernelArtifact, bool]:
        barrier.wait(timeout=30)
        return repo.create_kernel(request)

    with ThreadPoolExecutor(max_workers=workers) as pool:
        futures = [pool.submit(submit) for _ in range(workers)]
        results = [future.result(timeout=60) for future in futures]

    assert sum(created for _, created in results) == 1
    assert len({artifact.id for artifact, _ in results}) == 1
    assert storage.count(KernelRow) == 1
    assert storage.count(KernelTagRow) == 1


def test_create_kernel_with_unbound_symbol_names_it(storage: Storage) -> None:
    repo = storage.repository
    record, _ = repo.put_blueprint(blueprint())
    unbound = cpu_target().model_copy(update={"bindings": {"D": 3}})

    with pytest.raises(InvalidRequestError, match=r"symbol\(s\) C\b") as caught:
        repo.create_kernel(KernelCreate(blueprint_hash=record.hash, target=unbound))

    assert "cpu:fp32:D=3" in str(caught.value)
    assert "residual-mlp" in str(caught.value)
    assert storage.count(KernelRow) == 0


def test_create_kernel_whose_output_would_not_fit_the_slot_is_invalid(storage: Storage) -> None:
    # The output has 32 features whatever C is: only a slot with C=32 can take it.
    repo = storage.repository
    projector = BlueprintIR.model_validate(
        {
            "name": "projector",
            "input": {"layout": "features", "shape": ["C"]},
            "nodes": [
                {"id": "proj", "op": "linear", "inputs": ["input"], "params": {"outFeatures": 32}}
            ],
            "output": "proj",
        }
    )
    record, _ = repo.put_blueprint(projector)

    with pytest.raises(InvalidRequestError, match=r"'cpu:fp32:C=64'.*differs from input"):
        repo.create_kernel(KernelCreate(blueprint_hash=record.hash, target=cpu_target(64)))
    assert storage.count(KernelRow) == 0

    fitting, created = repo.create_kernel(
        KernelCreate(blueprint_hash=record.hash, target=cpu_target(32))
    )
    assert created is True
    assert storage.count(KernelRow) == 1
    assert fitting.target.bindings == {"C": 32}


def test_create_kernel_for_unknown_blueprint_is_invalid(storage: Storage) -> None:
    missing = blueprint(width=5).canonical_hash()
    with pytest.raises(InvalidRequestError, match=f"blueprint {missing} is not registered"):
        storage.repository.create_kernel(KernelCreate(blueprint_hash=missing, target=cpu_target()))
    assert storage.count(KernelRow) == 0


def test_unknown_kernel_is_not_found_everywhere(repository: UrzaRepository) -> None:
    missing = expected_kernel_id(blueprint(), cpu_target(3))
    data, digest = bundle("x")
    calls = [
        lambda: repository.get_kernel(missing),
        lambda: repository.change_phase(missing, _to(KernelPhase.COMPILING)),
        lambda: repository.upload_artifact(missing, data, digest),
        lambda: repository.attach_report(missing, report(missing)),
        lambda: repository.compile_records(missing),
        lambda: repository.read_artifact(missing),
        lambda: repository.artifact_link(missing, 60),
        lambda: repository.delete_kernel(missing),
    ]
    for call in calls:
        with pytest.raises(NotFoundError, match=missing):
            call()


# The phase machine -------------------------------------------------------------------------


def test_happy_path_from_pending_to_validated(storage: Storage) -> None:
    repo = storage.repository
    kernel = register(repo, tags=("fast",))
    data, digest = bundle("happy", size=10_000)

    compiling = repo.change_phase(kernel.id, _to(KernelPhase.COMPILING))
    uploaded = repo.upload_artifact(kernel.id, data, digest)
    compiled_kernel = repo.change_phase(
        kernel.id, _to(KernelPhase.COMPILED, compile_seconds=12.5, torch_version="2.11.0")
    )
    validating = repo.change_phase(kernel.id, _to(KernelPhase.VALIDATING))
    validated = repo.attach_report(kernel.id, report(kernel.id, p50_at_largest=1.25))

    assert compiling.phase is KernelPhase.COMPILING
    assert uploaded.phase is KernelPhase.COMPILING
    assert uploaded.sha256 == digest
    assert uploaded.size_bytes == len(data)
    assert uploaded.artifact_uri == storage.blobs.uri(digest)
    assert compiled_kernel.phase is KernelPhase.COMPILED
    assert compiled_kernel.compile_seconds == 12.5
    assert compiled_kernel.torch_version == "2.11.0"
    assert validating.phase is KernelPhase.VALIDATING
    assert validated.phase is KernelPhase.VALIDATED
    assert validated.benchmark == report(kernel.id, p50_at_largest=1.25)
    stored = repo.get_kernel(kernel.id)
    assert stored == validated
    assert stored.tags == ["fast"]
    assert repo.read_artifact(kernel.id) == (stored, data)
    assert storage.count(BenchmarkReportRow, kernel_id=kernel.id, verdict="Validated") == 1
    assert _row_snapshot(storage, kernel.id)["latency_p50_ms"] == 1.25


def test_rejected_path_records_the_report(storage: Storage) -> None:
    repo = storage.repository
    kernel = compiled(repo)
    repo.change_phase(kernel.id, _to(KernelPhase.VALIDATING))

    rejected = repo.attach_report(kernel.id, report(kernel.id, verdict="Rejected"))

    assert rejected.phase is KernelPhase.REJECTED
    assert rejected.benchmark is not None
    assert rejected.benchmark.reasons == ["slower than eager"]
    assert repo.get_kernel(kernel.id) == rejected
    assert storage.count(BenchmarkReportRow, kernel_id=kernel.id, verdict="Rejected") == 1
    assert [k.id for k in repo.list_kernels(phase=KernelPhase.REJECTED).items] == [kernel.id]
    assert [k.id for k in repo.list_kernels(max_latency_ms=2.0).items] == [kernel.id]


STAGES = [
    "pending",
    "compiling",
    "compiling_uploaded",
    "compiled",
    "validating",
    "validated",
    "rejected",
    "failed",
    "superseded",
]


def _advance(repo: UrzaRepository, stage: str) -> KernelArtifact:
    """A kernel taken along the legal path to ``stage``."""
    kernel = register(repo)
    data, digest = bundle("moves")
    identifier = kernel.id
    path: list[tuple[str, Callable[[], object]]] = [
        ("compiling", lambda: repo.change_phase(identifier, _to(KernelPhase.COMPILING))),
        ("compiling_uploaded", lambda: repo.upload_artifact(identifier, data, digest)),
        ("compiled", lambda: repo.change_phase(identifier, _to(KernelPhase.COMPILED))),
        ("validating", lambda: repo.change_phase(identifier, _to(KernelPhase.VALIDATING))),
        ("validated", lambda: repo.attach_report(identifier, report(identifier))),
        ("superseded", lambda: repo.change_phase(identifier, _to(KernelPhase.SUPERSEDED))),
    ]
    detours: dict[str, tuple[str, Callable[[], object]]] = {
        "failed": (
            "compiling",
            lambda: repo.change_phase(identifier, _to(KernelPhase.FAILED, error="worker died")),
        ),
        "rejected": (
            "validating",
            lambda: repo.attach_report(identifier, report(identifier, verdict="Rejected")),
        ),
    }
    goal, detour = detours.get(stage, (stage, None))
    if goal != "pending":
        for name, step in path:
            step()
            if name == goal:
                break
        else:
            raise AssertionError(f"unknown stage {stage}")
    if detour is not None:
        detour()
    return repo.get_kernel(identifier)


def _illegal_targets(kernel: KernelArtifact) -> list[KernelPhase]:
    """Phases the table forbids from the kernel's phase (verdicts come from reports only)."""
    return [
        phase
        for phase in KernelPhase
        if not KERNEL_PHASES.is_legal(kernel.phase, phase)
        and phase not in (KernelPhase.VALIDATED, KernelPhase.REJECTED)
    ]


@pytest.mark.parametrize("stage", STAGES)
def test_illegal_moves_raise_and_change_nothing(storage: Storage, stage: str) -> None:
    repo = storage.repository
    kernel = _advance(repo, stage)
    before = _row_snapshot(storage, kernel.id)
    targets = [
        phase
        for phase in _illegal_targets(kernel)
        # Moves into an artifact phase without an artifact: see the next test.
        if kernel.sha256 is not None or phase not in PHASES_WITH_ARTIFACT
    ]
    assert targets

    for target in targets:
        with pytest.raises(IllegalTransitionError, match=f"-> {target.value};"):
            repo.change_phase(kernel.id, _to(target, error="should not stick"))

    assert _row_snapshot(storage, kernel.id) == before
    assert repo.get_kernel(kernel.id) == kernel


@pytest.mark.parametrize("stage", ["pending", "compiling", "failed"])
def test_illegal_moves_without_an_artifact_are_illegal_transitions(
    storage: Storage, stage: str
) -> None:
    # Pending -> Compiled (say) is forbidden by the phase table; change_phase documents
    # IllegalTransitionError for that and ConflictError only for a *legal* move the kernel is
    # not ready for. The missing artifact must not mask the illegal move.
    repo = storage.repository
    kernel = _advance(repo, stage)
    before = _row_snapshot(storage, kernel.id)
    targets = [phase for phase in _illegal_targets(kernel) if phase in PHASES_WITH_ARTIFACT]
    assert targets

    for target in targets:
        with pytest.raises(IllegalTransitionError, match=f"-> {target.value};"):
            repo.change_phase(kernel.id, _to(target))

    assert _row_snapshot(storage, kernel.id) == before


def test_compiled_needs_an_uploaded_artifact(storage: Storage) -> None:
    repo = storage.repository
    kernel = register(repo)
    repo.change_phase(kernel.id, _to(KernelPhase.COMPILING))
    before = _row_snapshot(storage, kernel.id)

    with pytest.raises(ConflictError, match="has no artifact; upload it"):
        repo.change_phase(kernel.id, _to(KernelPhase.COMPILED))

    assert _row_snapshot(storage, kernel.id) == before


@pytest.mark.parametrize("verdict_phase", [KernelPhase.VALIDATED, KernelPhase.REJECTED])
def test_verdict_phases_come_only_from_a_report(
    storage: Storage, verdict_phase: KernelPhase
) -> None:
    repo = storage.repository
    kernel = compiled(repo)
    repo.change_phase(kernel.id, _to(KernelPhase.VALIDATING))
    before = _row_snapshot(storage, kernel.id)

    with pytest.raises(ConflictError, match="by attaching its benchmark report"):
        repo.change_phase(kernel.id, _to(verdict_phase))

    assert _row_snapshot(storage, kernel.id) == before


def test_attach_report_outside_validating_is_illegal(storage: Storage) -> None:
    repo = storage.repository
    kernel = compiled(repo)
    before = _row_snapshot(storage, kernel.id)

    with pytest.raises(IllegalTransitionError):
        repo.attach_report(kernel.id, report(kernel.id))

    assert _row_snapshot(storage, kernel.id) == before
    assert storage.count(BenchmarkReportRow) == 0


def test_attach_report_for_another_kernel_is_invalid(storage: Storage) -> None:
    repo = storage.repository
    kernel = compiled(repo)
    repo.change_phase(kernel.id, _to(KernelPhase.VALIDATING))
    other = expected_kernel_id(blueprint(), cpu_target(999))

    with pytest.raises(InvalidRequestError, match=f"report is for kernel {other}"):
        repo.attach_report(kernel.id, report(other))

    assert repo.get_kernel(kernel.id).phase is KernelPhase.VALIDATING
    assert storage.count(BenchmarkReportRow) == 0


def test_failed_needs_an_error_and_retry_starts_clean(storage: Storage) -> None:
    repo = storage.repository
    kernel = register(repo)
    repo.change_phase(kernel.id, _to(KernelPhase.COMPILING))
    data, digest = bundle("half-done")
    repo.upload_artifact(kernel.id, data, digest)
    before = _row_snapshot(storage, kernel.id)

    with pytest.raises(ValidationError, match="a Failed kernel must record its error"):
        repo.change_phase(kernel.id, _to(KernelPhase.FAILED))
    assert _row_snapshot(storage, kernel.id) == before

    failed = repo.change_phase(
        kernel.id, _to(KernelPhase.FAILED, error="worker OOM", torch_version="2.11.0")
    )
    assert failed.phase is KernelPhase.FAILED
    assert failed.error == "worker OOM"
    assert repo.get_kernel(kernel.id) == failed

    retried = repo.change_phase(kernel.id, _to(KernelPhase.PENDING))

    assert retried.phase is KernelPhase.PENDING
    assert retried.error is None
    assert retried.artifact_uri is None
    assert retried.sha256 is None
    assert retried.size_bytes is None
    assert repo.get_kernel(kernel.id) == retried
    row = _row_snapshot(storage, kernel.id)
    assert (row["artifact_uri"], row["sha256"], row["size_bytes"], row["error"]) == (None,) * 4
    with pytest.raises(NotFoundError, match="has no artifact yet"):
        repo.read_artifact(kernel.id)
    # The retried kernel goes through the machine again.
    repo.change_phase(kernel.id, _to(KernelPhase.COMPILING))
    assert repo.upload_artifact(kernel.id, data, digest).sha256 == digest


# Uploads -----------------------------------------------------------------------------------


@pytest.mark.parametrize("stage", ["pending", "compiled", "validated"])
def test_upload_outside_compiling_is_a_conflict(storage: Storage, stage: str) -> None:
    repo = storage.repository
    kernel = _advance(repo, stage)
    before = _row_snapshot(storage, kernel.id)
    data, digest = bundle("late upload")

    with pytest.raises(ConflictError, match="artifacts are uploaded while Compiling"):
        repo.upload_artifact(kernel.id, data, digest)

    assert _row_snapshot(storage, kernel.id) == before
    assert not storage.blobs.exists(digest)


def test_upload_with_wrong_sha256_stores_nothing(storage: Storage) -> None:
    repo = storage.repository
    kernel = register(repo)
    repo.change_phase(kernel.id, _to(KernelPhase.COMPILING))
    before = _row_snapshot(storage, kernel.id)
    data, digest = bundle("payload")
    _, declared = bundle("something else")

    with pytest.raises(InvalidRequestError, match="sha256 mismatch") as caught:
        repo.upload_artifact(kernel.id, data, declared)

    assert digest in str(caught.value)
    assert declared in str(caught.value)
    assert _row_snapshot(storage, kernel.id) == before
    assert not storage.blobs.exists(digest)
    assert not storage.blobs.exists(declared)
    assert [p for p in storage.blobs.root.rglob("*") if p.is_file()] == []


def test_upload_again_replaces_the_bundle_while_compiling(storage: Storage) -> None:
    repo = storage.repository
    kernel = register(repo)
    repo.change_phase(kernel.id, _to(KernelPhase.COMPILING))
    first, first_digest = bundle("first")
    second, second_digest = bundle("second", size=3000)

    assert repo.upload_artifact(kernel.id, first, first_digest).sha256 == first_digest
    assert repo.upload_artifact(kernel.id, first, first_digest).sha256 == first_digest
    replaced = repo.upload_artifact(kernel.id, second, second_digest)

    assert replaced.sha256 == second_digest
    assert replaced.size_bytes == 3000
    assert repo.read_artifact(kernel.id)[1] == second


class _PhaseMovingBlobStore(BlobStore):
    """Delegates to a store, but moves the kernel out of Compiling while the bytes upload."""

    scheme = "file"

    def __init__(self, inner: BlobStore, repo: UrzaRepository, identifier: str) -> None:
        self.inner = inner
        self.repo = repo
        self.identifier = identifier

    def put(self, data: bytes, sha256: str) -> str:
        self.repo.change_phase(self.identifier, _to(KernelPhase.FAILED, error="worker lost"))
        return self.inner.put(data, sha256)

    def get(self, sha256: str) -> bytes:
        return self.inner.get(sha256)

    def exists(self, sha256: str) -> bool:
        return self.inner.exists(sha256)

    def delete(self, sha256: str) -> None:
        self.inner.delete(sha256)

    def uri(self, sha256: str) -> str:
        return self.inner.uri(sha256)

    def presigned_url(self, sha256: str, expires_in_seconds: int) -> str | None:
        return self.inner.presigned_url(sha256, expires_in_seconds)

    def check(self) -> None:
        self.inner.check()


def test_upload_refuses_a_kernel_that_left_compiling_meanwhile(storage: Storage) -> None:
    repo = storage.repository
    kernel = register(repo)
    repo.change_phase(kernel.id, _to(KernelPhase.COMPILING))
    repo.blobs = _PhaseMovingBlobStore(storage.blobs, repo, kernel.id)
    data, digest = bundle("raced")

    with pytest.raises(ConflictError, match="left Compiling during the upload"):
        repo.upload_artifact(kernel.id, data, digest)

    stored = repo.get_kernel(kernel.id)
    assert stored.phase is KernelPhase.FAILED
    assert stored.sha256 is None
    assert stored.artifact_uri is None
