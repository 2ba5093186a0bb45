"""Kernels through the client, over real HTTP, on both storage backends."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import httpx
import pytest
from sqlalchemy import text

from esper.contracts.kernel import KernelArtifact, KernelPhase, kernel_id
from esper.contracts.urza_api import BlueprintRecord, CompileRecord, PhaseChange
from esper.urza.client import (
    UrzaClient,
    UrzaConflictError,
    UrzaNotFoundError,
    UrzaRequestError,
)

from .conftest import MAX_UPLOAD_BYTES
from .support import (
    RunningUrza,
    blueprint,
    bundle,
    cpu_target,
    cuda_target,
    report,
    sha256,
)

pytestmark = pytest.mark.timeout(120)


def _register(client: UrzaClient, hidden: int = 64) -> BlueprintRecord:
    return client.submit_blueprint(blueprint(hidden=hidden))


def _compiled(client: UrzaClient, identifier: str, data: bytes) -> KernelArtifact:
    client.change_phase(identifier, PhaseChange(phase=KernelPhase.COMPILING))
    client.upload_artifact(identifier, data)
    return client.change_phase(
        identifier,
        PhaseChange(phase=KernelPhase.COMPILED, compile_seconds=3.5, torch_version="2.11.0"),
    )


def _validated(client: UrzaClient, identifier: str, data: bytes, p50_ms: float) -> KernelArtifact:
    _compiled(client, identifier, data)
    client.change_phase(identifier, PhaseChange(phase=KernelPhase.VALIDATING))
    return client.attach_report(identifier, report(identifier, p50_ms=p50_ms))


def _stored_files(root: Path) -> list[Path]:
    return sorted(path for path in root.rglob("*") if path.is_file())


def test_kernel_lifecycle_end_to_end(urza: RunningUrza) -> None:
    client, transport = urza.recording_client()
    record = _register(client)
    target = cpu_target(64)

    kernel = client.create_kernel(record.hash, target, tags=["exp-1"])
    assert transport.last_status() == 201
    assert kernel.id == kernel_id(record.hash, target)
    assert kernel.phase is KernelPhase.PENDING
    assert kernel.tags == ["exp-1"]
    assert client.create_kernel(record.hash, target, tags=["ignored"]) == kernel
    assert transport.last_status() == 200

    compiling = client.change_phase(kernel.id, PhaseChange(phase=KernelPhase.COMPILING))
    assert compiling.phase is KernelPhase.COMPILING
    data = bundle("lifecycle", 10_000)
    uploaded = client.upload_artifact(kernel.id, data)
    assert uploaded.phase is KernelPhase.COMPILING
    assert uploaded.sha256 == sha256(data)
    assert uploaded.size_bytes == len(data)
    scheme = "s3://" if urza.backend == "postgres-s3" else "file://"
    assert uploaded.artifact_uri is not None
    assert uploaded.artifact_uri.startswith(scheme)
    assert urza.service.repository.blobs.exists(sha256(data))
    # Uploading the same bundle again is harmless.
    assert client.upload_artifact(kernel.id, data) == uploaded

    compiled = client.change_phase(
        kernel.id,
        PhaseChange(phase=KernelPhase.COMPILED, compile_seconds=3.5, torch_version="2.11.0"),
    )
    assert (compiled.phase, compiled.compile_seconds, compiled.torch_version) == (
        KernelPhase.COMPILED,
        3.5,
        "2.11.0",
    )
    assert client.download_artifact(kernel.id) == data

    client.change_phase(kernel.id, PhaseChange(phase=KernelPhase.VALIDATING))
    benchmark = report(kernel.id, p50_ms=0.8)
    validated = client.attach_report(kernel.id, benchmark)
    assert validated.phase is KernelPhase.VALIDATED
    assert validated.benchmark == benchmark
    assert client.get_kernel(kernel.id) == validated

    superseded = client.change_phase(kernel.id, PhaseChange(phase=KernelPhase.SUPERSEDED))
    assert superseded.phase is KernelPhase.SUPERSEDED
    assert superseded.sha256 == sha256(data)
    assert client.download_artifact(kernel.id) == data


def test_rejected_report_moves_the_kernel_to_rejected(local_urza: RunningUrza) -> None:
    client = local_urza.client()
    kernel = client.create_kernel(_register(client).hash, cpu_target())
    _compiled(client, kernel.id, bundle("rejected"))
    client.change_phase(kernel.id, PhaseChange(phase=KernelPhase.VALIDATING))
    rejected = client.attach_report(kernel.id, report(kernel.id, verdict="Rejected"))
    assert rejected.phase is KernelPhase.REJECTED
    assert rejected.benchmark is not None
    assert rejected.benchmark.reasons == ["slower than eager"]
    with pytest.raises(UrzaConflictError, match="Rejected -> Superseded"):
        client.change_phase(kernel.id, PhaseChange(phase=KernelPhase.SUPERSEDED))


def test_illegal_moves_answer_409_and_change_nothing(urza: RunningUrza) -> None:
    client = urza.client()
    kernel = client.create_kernel(_register(client).hash, cpu_target())

    def refused(change: PhaseChange, error: type[Exception], message: str) -> None:
        before = client.get_kernel(kernel.id)
        with pytest.raises(error, match=message) as caught:
            client.change_phase(kernel.id, change)
        assert client.get_kernel(kernel.id) == before
        assert caught.value.status in (409, 422)  # type: ignore[attr-defined]

    refused(PhaseChange(phase=KernelPhase.COMPILED), UrzaConflictError, "Compiled")
    refused(
        PhaseChange(phase=KernelPhase.PENDING),
        UrzaConflictError,
        "illegal transition Pending -> Pending; allowed from Pending: Compiling, Failed",
    )
    refused(
        PhaseChange(phase=KernelPhase.VALIDATED),
        UrzaConflictError,
        "by attaching its benchmark report",
    )
    with pytest.raises(UrzaConflictError, match="Pending; artifacts are uploaded while Compiling"):
        client.upload_artifact(kernel.id, bundle("too-early"))
    assert client.get_kernel(kernel.id).sha256 is None
    refused(PhaseChange(phase=KernelPhase.FAILED), UrzaRequestError, "must record its error")

    client.change_phase(kernel.id, PhaseChange(phase=KernelPhase.COMPILING))
    refused(PhaseChange(phase=KernelPhase.COMPILED), UrzaConflictError, "has no artifact")
    refused(
        PhaseChange(phase=KernelPhase.PENDING),
        UrzaConflictError,
        "illegal transition Compiling -> Pending",
    )
    with pytest.raises(UrzaConflictError, match="illegal transition Compiling -> Validated"):
        client.attach_report(kernel.id, report(kernel.id))
    assert client.get_kernel(kernel.id).phase is KernelPhase.COMPILING

    # A failure may be retried from the start; the retry starts clean.
    client.upload_artifact(kernel.id, bundle("half-done"))
    failed = client.change_phase(
        kernel.id, PhaseChange(phase=KernelPhase.FAILED, error="worker OOM-killed")
    )
    assert (failed.phase, failed.error) == (KernelPhase.FAILED, "worker OOM-killed")
    retried = client.change_phase(kernel.id, PhaseChange(phase=KernelPhase.PENDING))
    assert retried.phase is KernelPhase.PENDING
    assert (retried.error, retried.sha256, retried.artifact_uri, retried.size_bytes) == (
        None,
        None,
        None,
        None,
    )


def test_kernel_registration_errors(local_urza: RunningUrza) -> None:
    client = local_urza.client()
    with pytest.raises(UrzaRequestError, match=f"blueprint {'a' * 64} is not registered"):
        client.create_kernel("a" * 64, cpu_target())
    record = _register(client)
    with pytest.raises(UrzaRequestError, match=r"does not bind symbol\(s\) C"):
        client.create_kernel(record.hash, cpu_target().model_copy(update={"bindings": {}}))
    response = local_urza.http().post(
        "/v1/kernels", json={"blueprintHash": record.hash, "target": {"device": "cuda"}}
    )
    assert response.status_code == 422
    assert "computeCapability" in response.json()["detail"]
    assert client.list_kernels().items == []
    with pytest.raises(UrzaNotFoundError, match="kernel k-000000000000000000000000 does not"):
        client.get_kernel("k-000000000000000000000000")


def test_upload_with_a_wrong_digest_is_refused_and_nothing_is_stored(urza: RunningUrza) -> None:
    client = urza.client()
    kernel = client.create_kernel(_register(client).hash, cpu_target())
    client.change_phase(kernel.id, PhaseChange(phase=KernelPhase.COMPILING))
    data = bundle("payload")
    declared = sha256(b"something else")

    response = urza.http().put(
        f"/v1/kernels/{kernel.id}/artifact",
        content=data,
        headers={"X-Artifact-Sha256": declared, "Content-Type": "application/octet-stream"},
    )

    assert response.status_code == 422, response.text
    detail = response.json()["detail"]
    assert "sha256 mismatch" in detail
    assert declared in detail
    assert sha256(data) in detail
    assert "nothing was stored" in detail
    after = client.get_kernel(kernel.id)
    assert (after.sha256, after.artifact_uri, after.size_bytes) == (None, None, None)
    blobs = urza.service.repository.blobs
    assert not blobs.exists(sha256(data))
    assert not blobs.exists(declared)
    if urza.backend == "sqlite-local":
        assert _stored_files(urza.settings.artifact_dir) == []


def test_upload_header_and_body_problems(local_urza: RunningUrza) -> None:
    client = local_urza.client()
    http = local_urza.http()
    kernel = client.create_kernel(_register(client).hash, cpu_target())
    client.change_phase(kernel.id, PhaseChange(phase=KernelPhase.COMPILING))
    path = f"/v1/kernels/{kernel.id}/artifact"

    missing = http.put(path, content=b"bytes")
    assert missing.status_code == 422
    assert "X-Artifact-Sha256" in missing.json()["detail"]
    malformed = http.put(path, content=b"bytes", headers={"X-Artifact-Sha256": "ABC"})
    assert malformed.status_code == 422
    empty = http.put(path, content=b"", headers={"X-Artifact-Sha256": sha256(b"")})
    assert empty.status_code == 422
    assert "empty" in empty.json()["detail"]
    with pytest.raises(UrzaNotFoundError):
        client.upload_artifact("k-" + "f" * 24, b"bytes")
    assert client.get_kernel(kernel.id).sha256 is None
    assert _stored_files(local_urza.settings.artifact_dir) == []


def _chunks(total: int, size: int = 8192) -> Iterator[bytes]:
    sent = 0
    while sent < total:
        piece = min(size, total - sent)
        yield b"x" * piece
        sent += piece


def test_upload_over_the_size_limit_answers_413_and_stores_nothing(urza: RunningUrza) -> None:
    client = urza.client()
    kernel = client.create_kernel(_register(client).hash, cpu_target())
    client.change_phase(kernel.id, PhaseChange(phase=KernelPhase.COMPILING))
    too_big = bundle("too-big", MAX_UPLOAD_BYTES + 1)

    with pytest.raises(UrzaRequestError, match=f"exceeds the {MAX_UPLOAD_BYTES}-byte limit") as err:
        client.upload_artifact(kernel.id, too_big)
    assert err.value.status == 413

    # Without a Content-Length (chunked), the limit is enforced while the body streams in.
    streamed = urza.http().put(
        f"/v1/kernels/{kernel.id}/artifact",
        content=_chunks(MAX_UPLOAD_BYTES * 2),
        headers={"X-Artifact-Sha256": sha256(b"x" * MAX_UPLOAD_BYTES * 2)},
    )
    assert streamed.status_code == 413
    assert "exceeds the" in streamed.json()["detail"]

    assert client.get_kernel(kernel.id).sha256 is None
    blobs = urza.service.repository.blobs
    assert not blobs.exists(sha256(too_big))
    if urza.backend == "sqlite-local":
        assert _stored_files(urza.settings.artifact_dir) == []

    at_limit = bundle("at-limit", MAX_UPLOAD_BYTES)
    assert client.upload_artifact(kernel.id, at_limit).size_bytes == MAX_UPLOAD_BYTES


def test_a_much_larger_upload_is_refused_as_too_large_not_as_unreachable(
    local_urza: RunningUrza,
) -> None:
    # The server answers 413 before reading the body; a client still sending megabytes must
    # see that answer (a refusal), not a broken connection it would retry as an outage.
    client = local_urza.client()
    kernel = client.create_kernel(_register(client).hash, cpu_target())
    client.change_phase(kernel.id, PhaseChange(phase=KernelPhase.COMPILING))
    with pytest.raises(UrzaRequestError) as caught:
        client.upload_artifact(kernel.id, bundle("huge", 16 * 1024 * 1024))
    assert caught.value.status == 413
    assert client.get_kernel(kernel.id).sha256 is None


def test_kernel_list_filters_and_pagination(urza: RunningUrza) -> None:
    client = urza.client()
    first = _register(client, hidden=64)
    second = _register(client, hidden=96)
    fast = client.create_kernel(first.hash, cpu_target(64), tags=["exp-1", "fast"])
    slow = client.create_kernel(first.hash, cpu_target(128), tags=["exp-1"])
    gpu = client.create_kernel(first.hash, cuda_target(64))
    other = client.create_kernel(second.hash, cpu_target(64), tags=["exp-2"])
    _validated(client, fast.id, bundle("fast"), p50_ms=0.5)
    _validated(client, slow.id, bundle("slow"), p50_ms=2.0)
    client.change_phase(other.id, PhaseChange(phase=KernelPhase.COMPILING))

    def ids(**filters: object) -> list[str]:
        return [kernel.id for kernel in client.list_kernels(**filters).items]  # type: ignore[arg-type]

    everything = sorted([fast.id, slow.id, gpu.id, other.id])
    assert ids() == everything
    assert ids(blueprint_hash=first.hash) == sorted([fast.id, slow.id, gpu.id])
    assert ids(blueprint_hash=second.hash) == [other.id]
    assert ids(target=cpu_target(64)) == sorted([fast.id, other.id])
    assert ids(phase=KernelPhase.VALIDATED) == sorted([fast.id, slow.id])
    assert ids(phase=KernelPhase.COMPILING) == [other.id]
    assert ids(phase=KernelPhase.PENDING) == [gpu.id]
    assert ids(tag="exp-1") == sorted([fast.id, slow.id])
    assert ids(tag="fast") == [fast.id]
    assert ids(max_latency_ms=1.0) == [fast.id]
    assert ids(max_latency_ms=2.0) == sorted([fast.id, slow.id])
    assert ids(max_latency_ms=0.1) == []
    assert ids(device="cuda") == [gpu.id]
    assert ids(blueprint_hash=first.hash, tag="exp-1", max_latency_ms=10.0) == sorted(
        [fast.id, slow.id]
    )

    seen: list[str] = []
    cursor = None
    while True:
        page = client.list_kernels(limit=3, cursor=cursor)
        seen.extend(kernel.id for kernel in page.items)
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    assert seen == everything

    http = urza.http()
    for query in ({"maxLatencyMs": -1}, {"limit": 0}, {"cursor": "nope"}, {"phase": "Done"}):
        response = http.get("/v1/kernels", params=query)
        assert response.status_code == 422, query
        assert response.json()["detail"]


def test_download_is_verified_and_artifact_links_work_on_s3(urza: RunningUrza) -> None:
    client = urza.client()
    kernel = client.create_kernel(_register(client).hash, cpu_target())
    with pytest.raises(UrzaNotFoundError, match="has no artifact yet"):
        client.download_artifact(kernel.id)
    http = urza.http()
    assert http.get(f"/v1/kernels/{kernel.id}/artifact").status_code == 404
    with pytest.raises(UrzaNotFoundError, match="has no artifact yet"):
        client.artifact_link(kernel.id)

    data = bundle("download", 20_000)
    _compiled(client, kernel.id, data)
    assert client.download_artifact(kernel.id) == data
    raw = http.get(f"/v1/kernels/{kernel.id}/artifact")
    assert raw.status_code == 200
    assert raw.headers["X-Artifact-Sha256"] == sha256(data)
    assert raw.headers["ETag"] == f'"{sha256(data)}"'
    assert raw.headers["Content-Type"] == "application/octet-stream"

    if urza.backend == "postgres-s3":
        link = client.artifact_link(kernel.id)
        assert (link.sha256, link.size_bytes) == (sha256(data), len(data))
        assert link.expires_in_seconds == urza.settings.presign_seconds
        fetched = httpx.get(link.url, timeout=10.0)
        assert fetched.status_code == 200
        assert fetched.content == data
        assert sha256(fetched.content) == link.sha256
    else:
        with pytest.raises(UrzaConflictError, match="has no direct URLs") as caught:
            client.artifact_link(kernel.id)
        assert caught.value.status == 409


def test_compile_records(urza: RunningUrza) -> None:
    client = urza.client()
    kernel = client.create_kernel(_register(client).hash, cpu_target())
    started = datetime(2025, 3, 1, 10, 0, 0, tzinfo=UTC)
    records = [
        CompileRecord(
            kernel_id=kernel.id,
            worker=f"worker-{attempt}",
            started_at=started + timedelta(minutes=attempt),
            finished_at=started + timedelta(minutes=attempt, seconds=42),
            succeeded=attempt == 1,
            error=None if attempt == 1 else "nvcc crashed",
            torch_version="2.11.0",
        )
        for attempt in (0, 1)
    ]
    for record in records:
        client.add_compile_record(record)
    assert client.compile_records(kernel.id) == records

    http = urza.http()
    other = "k-" + "0" * 24
    mismatched = http.post(
        f"/v1/kernels/{other}/compile-records",
        json=records[0].model_dump(mode="json", by_alias=True),
    )
    assert mismatched.status_code == 422
    assert f"record is for kernel {kernel.id}, not {other}" in mismatched.json()["detail"]
    with pytest.raises(UrzaNotFoundError):
        client.compile_records(other)
    with pytest.raises(UrzaNotFoundError):
        client.add_compile_record(records[0].model_copy(update={"kernel_id": other}))


def test_compile_record_times_keep_their_instant(urza: RunningUrza) -> None:
    # A worker may report local times with an offset; the instant must survive storage.
    client = urza.client()
    kernel = client.create_kernel(_register(client).hash, cpu_target())
    plus_five = timezone(timedelta(hours=5))
    record = CompileRecord(
        kernel_id=kernel.id,
        worker="worker-tz",
        started_at=datetime(2025, 3, 1, 15, 0, 0, tzinfo=plus_five),
        finished_at=datetime(2025, 3, 1, 15, 0, 30, tzinfo=plus_five),
        succeeded=True,
        torch_version="2.11.0",
    )
    client.add_compile_record(record)
    [stored] = client.compile_records(kernel.id)
    assert stored.started_at == datetime(2025, 3, 1, 10, 0, 0, tzinfo=UTC)
    assert stored.finished_at == datetime(2025, 3, 1, 10, 0, 30, tzinfo=UTC)


def _count(urza: RunningUrza, table: str) -> int:
    with urza.service.engine.connect() as connection:
        return int(connection.execute(text(f"SELECT count(*) FROM {table}")).scalar_one())


def test_delete_kernel_and_blueprint_cascade(urza: RunningUrza) -> None:
    client, transport = urza.recording_client()
    record = _register(client)
    shared = bundle("shared")
    own = bundle("own")
    first = client.create_kernel(record.hash, cpu_target(64), tags=["a"])
    second = client.create_kernel(record.hash, cpu_target(128), tags=["b"])
    third = client.create_kernel(record.hash, cpu_target(256))
    _validated(client, first.id, shared, p50_ms=1.0)
    _compiled(client, second.id, shared)
    _compiled(client, third.id, own)
    for kernel in (first, second, third):
        client.add_compile_record(
            CompileRecord(
                kernel_id=kernel.id,
                worker="w",
                started_at=datetime(2025, 1, 1, tzinfo=UTC),
                finished_at=datetime(2025, 1, 1, 0, 1, tzinfo=UTC),
                succeeded=True,
                torch_version="2.11.0",
            )
        )
    blobs = urza.service.repository.blobs

    client.delete_kernel(first.id)
    assert transport.last_status() == 204
    with pytest.raises(UrzaNotFoundError):
        client.get_kernel(first.id)
    with pytest.raises(UrzaNotFoundError):
        client.delete_kernel(first.id)
    assert blobs.exists(sha256(shared)), "still used by the second kernel"
    assert _count(urza, "benchmark_reports") == 0

    with pytest.raises(UrzaConflictError, match="has 2 kernel") as caught:
        client.delete_blueprint(record.hash)
    assert caught.value.status == 409
    assert client.get_blueprint(record.hash) == record
    assert sorted(k.id for k in client.list_kernels().items) == sorted([second.id, third.id])

    client.delete_blueprint(record.hash, cascade=True)
    assert transport.last_status() == 204
    with pytest.raises(UrzaNotFoundError):
        client.get_blueprint(record.hash)
    for kernel in (second, third):
        with pytest.raises(UrzaNotFoundError):
            client.get_kernel(kernel.id)
    assert client.list_kernels().items == []
    assert not blobs.exists(sha256(shared))
    assert not blobs.exists(sha256(own))
    for table in (
        "blueprints",
        "blueprint_tags",
        "kernels",
        "kernel_tags",
        "compile_records",
        "benchmark_reports",
    ):
        assert _count(urza, table) == 0, table


def test_a_nul_character_is_refused_or_stored_never_a_server_error(urza: RunningUrza) -> None:
    # PostgreSQL cannot store NUL in text columns; that is the request's fault (422), not an
    # outage (503, which clients retry).
    client = urza.client()
    kernel = client.create_kernel(_register(client).hash, cpu_target())
    http = urza.http()
    failed = http.post(
        f"/v1/kernels/{kernel.id}/phase", json={"phase": "Failed", "error": "nvcc\x00crashed"}
    )
    assert failed.status_code in (200, 422), failed.text
    if failed.status_code == 422:
        assert failed.json()["detail"]
        assert client.get_kernel(kernel.id).phase is KernelPhase.PENDING
    record = {
        "kernelId": kernel.id,
        "worker": "worker\x00one",
        "startedAt": "2025-01-01T00:00:00Z",
        "finishedAt": "2025-01-01T00:00:01Z",
        "succeeded": True,
        "torchVersion": "2.11.0",
    }
    posted = http.post(f"/v1/kernels/{kernel.id}/compile-records", json=record)
    assert posted.status_code in (201, 422), posted.text
    assert http.get(f"/v1/kernels/{kernel.id}/compile-records").status_code == 200


EXTREME_TIMES = [
    ("0001-01-01T00:00:00+05:00", "0001-01-01T06:00:00+05:00"),  # before year 1 in UTC
    ("9999-12-31T20:00:00-05:00", "9999-12-31T23:59:59-05:00"),  # after year 9999 in UTC
]


def test_extreme_compile_record_times_never_poison_reads(urza: RunningUrza) -> None:
    # A time whose UTC instant falls outside years 1-9999 must be refused at the door (422);
    # stored, it makes every later read of the kernel's records fail.
    client = urza.client()
    kernel = client.create_kernel(_register(client).hash, cpu_target())
    http = urza.http()
    accepted: list[tuple[datetime, datetime]] = []
    for started, finished in EXTREME_TIMES:
        record = {
            "kernelId": kernel.id,
            "worker": "worker-edge",
            "startedAt": started,
            "finishedAt": finished,
            "succeeded": True,
            "torchVersion": "2.11.0",
        }
        posted = http.post(f"/v1/kernels/{kernel.id}/compile-records", json=record)
        assert posted.status_code in (201, 422), posted.text
        if posted.status_code == 201:
            accepted.append((datetime.fromisoformat(started), datetime.fromisoformat(finished)))
    listed = http.get(f"/v1/kernels/{kernel.id}/compile-records")
    assert listed.status_code == 200, listed.text
    stored = [CompileRecord.model_validate(item) for item in listed.json()]
    assert [(item.started_at, item.finished_at) for item in stored] == accepted
