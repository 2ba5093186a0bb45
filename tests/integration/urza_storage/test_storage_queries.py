"""Kernel queries, kernel deletion and compile records in Urza's repository, on SQLite and
PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from esper.contracts.kernel import KernelPhase
from esper.contracts.urza_api import CompileRecord, PhaseChange
from esper.urza.models import BenchmarkReportRow, CompileRecordRow, KernelRow, KernelTagRow
from esper.urza.repository import InvalidRequestError, NotFoundError

from .conftest import Storage
from .helpers import (
    BACKENDS,
    blueprint,
    compiled,
    cpu_target,
    cuda_target,
    expected_kernel_id,
    judged,
    register,
)

pytestmark = [BACKENDS, pytest.mark.timeout(120)]


def test_list_kernels_filters(storage: Storage) -> None:
    repo = storage.repository
    other_ir = blueprint(width=77)
    fast = judged(repo, cpu_target(8), p50_at_largest=1.0, tags=("cpu", "fast"), label="f")
    slow = judged(repo, cpu_target(16), p50_at_largest=9.0, tags=("cpu",), label="s")
    boundary = judged(repo, cpu_target(24), p50_at_largest=4.0, label="b")
    gpu = compiled(repo, cuda_target(8), tags=("gpu", "fast"), label="g")
    pending_other = register(repo, cpu_target(8), ir=other_ir, tags=("cpu",))
    rejected = judged(repo, cpu_target(32), verdict="Rejected", p50_at_largest=0.5, label="r")

    def ids(**filters: Any) -> set[str]:
        page = repo.list_kernels(**filters)
        assert page.next_cursor is None
        return {kernel.id for kernel in page.items}

    everything = {fast.id, slow.id, boundary.id, gpu.id, pending_other.id, rejected.id}
    assert ids() == everything
    assert ids(blueprint_hash=fast.blueprint_hash) == everything - {pending_other.id}
    assert ids(blueprint_hash=other_ir.canonical_hash()) == {pending_other.id}
    assert ids(target="cpu:fp32:C=8") == {fast.id, pending_other.id}
    assert ids(target=cuda_target(8).short()) == {gpu.id}
    assert cuda_target(8).short() == "cuda@9.0:bf16:C=8:b=1,32"
    assert ids(target="cpu:fp32:C=8:b=1,32") == set()
    assert ids(phase=KernelPhase.VALIDATED) == {fast.id, slow.id, boundary.id}
    assert ids(phase=KernelPhase.COMPILED) == {gpu.id}
    assert ids(phase=KernelPhase.PENDING) == {pending_other.id}
    assert ids(phase=KernelPhase.FAILED) == set()
    assert ids(device="cuda") == {gpu.id}
    assert ids(device="cpu") == everything - {gpu.id}
    assert ids(tag="fast") == {fast.id, gpu.id}
    assert ids(tag="cpu") == {fast.id, slow.id, pending_other.id}
    assert ids(tag="none") == set()
    # Latency is the p50 at the largest batch; unbenchmarked kernels never match.
    assert ids(max_latency_ms=4.0) == {fast.id, boundary.id, rejected.id}
    assert ids(max_latency_ms=0.1) == set()
    assert ids(max_latency_ms=100.0) == {fast.id, slow.id, boundary.id, rejected.id}
    # Filters combine.
    assert ids(phase=KernelPhase.VALIDATED, max_latency_ms=4.0, tag="fast") == {fast.id}
    assert ids(device="cpu", tag="cpu", blueprint_hash=fast.blueprint_hash) == {fast.id, slow.id}


@pytest.mark.parametrize("limit", [1, 4, 9, 10])
def test_list_kernels_pages_cover_everything_once_in_order(storage: Storage, limit: int) -> None:
    repo = storage.repository
    stored = sorted(register(repo, cpu_target(channels)).id for channels in range(1, 10))

    seen: list[str] = []
    cursor: str | None = None
    for _ in range(10):
        page = repo.list_kernels(limit=limit, cursor=cursor)
        assert len(page.items) <= limit
        seen.extend(kernel.id for kernel in page.items)
        if page.next_cursor is None:
            break
        assert page.next_cursor == page.items[-1].id
        cursor = page.next_cursor
    else:
        pytest.fail("pagination does not terminate")

    assert seen == stored


def test_list_kernels_pagination_with_a_filter(storage: Storage) -> None:
    repo = storage.repository
    wanted = sorted(register(repo, cpu_target(c), tags=("wanted",)).id for c in range(1, 6))
    for channels in range(6, 10):
        register(repo, cpu_target(channels))

    seen: list[str] = []
    cursor: str | None = None
    while True:
        page = repo.list_kernels(tag="wanted", device="cpu", limit=2, cursor=cursor)
        seen.extend(kernel.id for kernel in page.items)
        cursor = page.next_cursor
        if cursor is None:
            break
        assert len(seen) < 10

    assert seen == wanted


def test_list_kernels_rejects_out_of_range_limits(storage: Storage) -> None:
    for limit in (0, 501):
        with pytest.raises(InvalidRequestError, match="limit must be between 1 and 500"):
            storage.repository.list_kernels(limit=limit)


def test_delete_kernel_removes_rows_and_its_blob(storage: Storage) -> None:
    repo = storage.repository
    kernel = judged(repo, tags=("gone",))
    repo.add_compile_record(_record(kernel.id))
    assert kernel.sha256 is not None

    repo.delete_kernel(kernel.id)

    with pytest.raises(NotFoundError):
        repo.get_kernel(kernel.id)
    for model in (KernelRow, KernelTagRow, BenchmarkReportRow, CompileRecordRow):
        assert storage.count(model) == 0
    assert not storage.blobs.exists(kernel.sha256)
    # The blueprint stays.
    assert repo.get_blueprint(kernel.blueprint_hash).hash == kernel.blueprint_hash


def test_delete_kernel_keeps_a_blob_another_kernel_still_uses(storage: Storage) -> None:
    repo = storage.repository
    first = compiled(repo, cpu_target(8), label="shared")
    second = compiled(repo, cpu_target(16), label="shared")
    assert first.sha256 == second.sha256
    assert first.sha256 is not None

    repo.delete_kernel(first.id)

    assert storage.blobs.exists(first.sha256)
    assert repo.read_artifact(second.id)[1] == storage.blobs.get(first.sha256)

    repo.delete_kernel(second.id)

    assert not storage.blobs.exists(first.sha256)
    assert storage.count(KernelRow) == 0


def test_delete_pending_kernel_without_blob(storage: Storage) -> None:
    repo = storage.repository
    kernel = register(repo, tags=("t",))

    repo.delete_kernel(kernel.id)

    assert storage.count(KernelRow) == 0
    assert storage.count(KernelTagRow) == 0


START = datetime(2025, 3, 4, 5, 6, 7, 123456, tzinfo=UTC)


def _record(identifier: str, **changes: object) -> CompileRecord:
    data: dict[str, object] = {
        "kernel_id": identifier,
        "worker": "forge-0",
        "started_at": START,
        "finished_at": START + timedelta(seconds=12, microseconds=5),
        "succeeded": True,
        "torch_version": "2.11.0",
    }
    data.update(changes)
    return CompileRecord.model_validate(data)


def test_compile_records_round_trip_oldest_first(storage: Storage) -> None:
    repo = storage.repository
    kernel = register(repo)
    failed = _record(
        kernel.id,
        worker="forge-1",
        succeeded=False,
        error="OOM while compiling",
        finished_at=START + timedelta(seconds=2),
    )
    succeeded = _record(
        kernel.id, started_at=START + timedelta(minutes=1), finished_at=START + timedelta(minutes=2)
    )
    other = register(repo, cpu_target(5))

    repo.add_compile_record(failed)
    repo.add_compile_record(_record(other.id))
    repo.add_compile_record(succeeded)

    records = repo.compile_records(kernel.id)
    assert records == [failed, succeeded]
    for record in records:
        for moment in (record.started_at, record.finished_at):
            assert moment.tzinfo is not None
            assert moment.utcoffset() == timedelta(0)
    assert repo.compile_records(other.id) == [_record(other.id)]
    assert repo.compile_records(register(repo, cpu_target(6)).id) == []


def test_compile_record_for_unknown_kernel_is_not_found(storage: Storage) -> None:
    missing = expected_kernel_id(blueprint(), cpu_target(12345))
    with pytest.raises(NotFoundError, match="does not exist"):
        storage.repository.add_compile_record(_record(missing))
    assert storage.count(CompileRecordRow) == 0


def test_compile_record_times_in_another_zone_keep_their_instant(storage: Storage) -> None:
    # CompileRecord accepts any aware datetime; a worker in UTC+2 reports local times. The
    # stored record must denote the same instants (and come back in UTC).
    repo = storage.repository
    kernel = register(repo)
    plus_two = timezone(timedelta(hours=2))
    started = datetime(2025, 3, 4, 7, 6, 7, tzinfo=plus_two)
    record = _record(kernel.id, started_at=started, finished_at=started + timedelta(seconds=30))

    repo.add_compile_record(record)
    (stored,) = repo.compile_records(kernel.id)

    assert stored.started_at == started
    assert stored.finished_at == started + timedelta(seconds=30)
    assert stored.started_at.utcoffset() == timedelta(0)


def test_phase_change_fields_are_stored(storage: Storage) -> None:
    repo = storage.repository
    kernel = compiled(repo)
    stored = repo.get_kernel(kernel.id)
    assert stored.compile_seconds == 3.5
    assert stored.torch_version == "2.11.0"
    moved = repo.change_phase(kernel.id, PhaseChange(phase=KernelPhase.SUPERSEDED))
    assert moved.phase is KernelPhase.SUPERSEDED
    assert repo.list_kernels(phase=KernelPhase.SUPERSEDED).items == [moved]
