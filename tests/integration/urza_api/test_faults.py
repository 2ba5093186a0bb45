"""Faults of real parts under a running Urza: the database goes away, stored blobs go bad."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import text

from esper.contracts.kernel import KernelPhase
from esper.contracts.urza_api import PhaseChange
from esper.urza.blobs import blob_key
from esper.urza.client import UrzaClient, UrzaError, UrzaUnavailableError
from tests.servers import PostgresServer, S3Location, S3Server
from tests.support.reliability import note_faults, note_lost

from .conftest import postgres_s3_settings, serving, sqlite_local_settings
from .support import (
    RunningUrza,
    blueprint,
    blueprint_document,
    bundle,
    cpu_target,
    sha256,
    wait_for,
)

pytestmark = pytest.mark.timeout(180)

RECOVERY_TIMEOUT = 60.0


@pytest.fixture
def postgres_urza(
    postgres_server: PostgresServer, postgres_sqlalchemy_url: str, s3_bucket: S3Location
) -> Iterator[RunningUrza]:
    """Urza on PostgreSQL + S3; PostgreSQL runs again after the test, whatever it did."""
    with serving(
        postgres_s3_settings(postgres_sqlalchemy_url, s3_bucket), "postgres-s3", s3=s3_bucket
    ) as running:
        try:
            yield running
        finally:
            postgres_server.ensure_running()


def _row_counts(urza: RunningUrza) -> dict[str, int]:
    tables = ("blueprints", "blueprint_tags", "kernels", "kernel_tags", "compile_records")
    with urza.service.engine.connect() as connection:
        return {
            table: int(connection.execute(text(f"SELECT count(*) FROM {table}")).scalar_one())
            for table in tables
        }


@pytest.mark.postgres
@pytest.mark.s3
@pytest.mark.reliability("postgres-killed")
def test_database_outage_answers_503_and_heals_without_a_restart(
    postgres_urza: RunningUrza, postgres_server: PostgresServer
) -> None:
    urza = postgres_urza
    client = urza.client()
    record = client.submit_blueprint(blueprint())
    kernel = client.create_kernel(record.hash, cpu_target())
    before = _row_counts(urza)

    postgres_server.stop()
    note_faults()
    http = urza.http()

    ready = http.get("/readyz")
    assert ready.status_code == 503
    assert "database" in ready.json()["detail"]
    assert ready.json()["detail"].startswith("not ready")

    write = http.post("/v1/blueprints", json=blueprint_document(tags=["during-outage"]))
    assert write.status_code == 503
    assert write.json()["detail"] == "Urza's database is unavailable; retry later"
    for method, path in (
        ("GET", "/v1/blueprints"),
        ("GET", f"/v1/blueprints/{record.hash}"),
        ("GET", f"/v1/kernels/{kernel.id}"),
        ("POST", f"/v1/kernels/{kernel.id}/phase"),
    ):
        response = http.request(method, path, json={"phase": "Compiling"})
        assert response.status_code == 503, (method, path)
        assert "database is unavailable" in response.json()["detail"]

    delays: list[float] = []
    patient = urza.client(retries=2, backoff=0.5, sleep=delays.append)
    with pytest.raises(UrzaUnavailableError, match="database is unavailable") as caught:
        patient.submit_blueprint(blueprint(hidden=17))
    assert caught.value.status == 503
    assert delays == [0.5, 1.0]
    assert patient.ready() is False
    # Liveness does not depend on the database: the kubelet must not restart Urza for this.
    assert http.get("/healthz").status_code == 200

    postgres_server.start()
    wait_for(client.ready, timeout=RECOVERY_TIMEOUT, what="Urza to become ready again")

    # Nothing of the refused writes was stored, and everything before the outage is intact.
    after = _row_counts(urza)
    note_lost(sum(abs(after[table] - count) for table, count in before.items()))
    assert after == before
    assert [r.hash for r in client.list_blueprints().items] == [record.hash]
    assert client.get_kernel(kernel.id).phase is KernelPhase.PENDING
    # The same Urza serves writes again.
    recovered = client.submit_blueprint(blueprint(hidden=17))
    assert recovered.hash != record.hash
    moved = client.change_phase(kernel.id, PhaseChange(phase=KernelPhase.COMPILING))
    assert moved.phase is KernelPhase.COMPILING


def _corrupt(urza: RunningUrza, digest: str, replacement: bytes) -> None:
    if urza.backend == "postgres-s3":
        s3: S3Location = urza.extras["s3"]
        s3_client = s3.client()
        try:
            s3_client.put_object(Bucket=s3.bucket, Key=blob_key(digest), Body=replacement)
        finally:
            s3_client.close()
    else:
        path = urza.settings.artifact_dir / blob_key(digest)
        assert path.is_file()
        path.write_bytes(replacement)


def _compiled_kernel(client: UrzaClient, data: bytes) -> str:
    record = client.submit_blueprint(blueprint())
    kernel = client.create_kernel(record.hash, cpu_target())
    client.change_phase(kernel.id, PhaseChange(phase=KernelPhase.COMPILING))
    client.upload_artifact(kernel.id, data)
    client.change_phase(kernel.id, PhaseChange(phase=KernelPhase.COMPILED))
    return kernel.id


def test_corrupt_blob_is_refused_never_served(urza: RunningUrza) -> None:
    client = urza.client(retries=1)
    data = bundle("precious", 8192)
    identifier = _compiled_kernel(client, data)
    assert client.download_artifact(identifier) == data
    http = urza.http()

    for replacement in (b"evil bytes", b"", data[:-1]):
        _corrupt(urza, sha256(data), replacement)

        response = http.get(f"/v1/kernels/{identifier}/artifact")
        assert 500 <= response.status_code < 600
        assert response.headers["content-type"] == "application/json"
        detail = response.json()["detail"]
        assert "sha256 mismatch" in detail
        assert sha256(data) in detail
        with pytest.raises(UrzaUnavailableError, match="sha256 mismatch") as caught:
            client.download_artifact(identifier)
        assert caught.value.status == response.status_code


def test_missing_blob_is_an_error_with_a_detail(local_urza: RunningUrza) -> None:
    client = local_urza.client()
    data = bundle("lost", 2048)
    identifier = _compiled_kernel(client, data)
    (local_urza.settings.artifact_dir / blob_key(sha256(data))).unlink()

    response = local_urza.http().get(f"/v1/kernels/{identifier}/artifact")
    assert response.status_code >= 400
    assert response.headers["content-type"] == "application/json"
    assert sha256(data) in response.json()["detail"]
    with pytest.raises(UrzaError, match=sha256(data)):
        client.download_artifact(identifier)


def test_readiness_fails_when_the_artifact_directory_goes_away(local_urza: RunningUrza) -> None:
    http = local_urza.http()
    assert http.get("/readyz").status_code == 200
    root: Path = local_urza.service.repository.blobs.root  # type: ignore[attr-defined]
    shutil.rmtree(root)
    response = http.get("/readyz")
    assert response.status_code == 503
    assert "blob store" in response.json()["detail"]
    assert str(root) in response.json()["detail"]
    root.mkdir()
    assert http.get("/readyz").status_code == 200


@pytest.mark.s3
def test_readiness_fails_when_the_bucket_goes_away(
    start_urza: Callable[..., RunningUrza],
    tmp_path: Path,
    s3_server: S3Server,
    s3_bucket: S3Location,
) -> None:
    settings = sqlite_local_settings(
        tmp_path,
        blob_store="s3",
        s3_endpoint_url=s3_bucket.endpoint_url,
        s3_bucket=s3_bucket.bucket,
        s3_access_key_id=s3_bucket.access_key,
        s3_secret_access_key=s3_bucket.secret_key,
    )
    urza = start_urza(settings, "sqlite-s3")
    http = urza.http()
    assert http.get("/readyz").status_code == 200
    s3_server.delete_bucket(s3_bucket.bucket)
    response = http.get("/readyz")
    assert response.status_code == 503
    assert "blob store" in response.json()["detail"]
    s3_server.create_bucket(s3_bucket.bucket)
    assert http.get("/readyz").status_code == 200


@pytest.mark.s3
@pytest.mark.reliability("s3-down")
def test_blob_store_outage_answers_503_and_heals(
    start_urza: Callable[..., RunningUrza],
    tmp_path: Path,
    s3_server: S3Server,
    s3_bucket: S3Location,
) -> None:
    urza = start_urza(
        sqlite_local_settings(
            tmp_path,
            blob_store="s3",
            s3_endpoint_url=s3_bucket.endpoint_url,
            s3_bucket=s3_bucket.bucket,
            s3_access_key_id=s3_bucket.access_key,
            s3_secret_access_key=s3_bucket.secret_key,
        ),
        "sqlite-s3",
        s3=s3_bucket,
    )
    client = urza.client()
    data = bundle("outage", 4096)
    identifier = _compiled_kernel(client, data)
    other = client.create_kernel(client.list_blueprints().items[0].hash, cpu_target(128))
    client.change_phase(other.id, PhaseChange(phase=KernelPhase.COMPILING))
    http = urza.http()

    s3_server.stop()
    note_faults()
    try:
        ready = http.get("/readyz")
        assert ready.status_code == 503
        assert "blob store" in ready.json()["detail"]
        download = http.get(f"/v1/kernels/{identifier}/artifact")
        assert download.status_code == 503
        assert download.json()["detail"] == "Urza's artifact store is unavailable; retry later"
        upload = http.put(
            f"/v1/kernels/{other.id}/artifact",
            content=bundle("during"),
            headers={"X-Artifact-Sha256": sha256(bundle("during"))},
        )
        assert upload.status_code == 503
        # Metadata does not depend on the blob store.
        assert client.get_kernel(identifier).sha256 == sha256(data)
    finally:
        s3_server.start()

    wait_for(client.ready, timeout=RECOVERY_TIMEOUT, what="Urza to see the blob store again")
    # Lost: the stored bundle no longer served whole, or a reference left by the refused upload.
    note_lost(
        int(client.download_artifact(identifier) != data)
        + int(client.get_kernel(other.id).sha256 is not None)
    )
    assert client.get_kernel(other.id).sha256 is None, "the refused upload left no reference"
    assert client.download_artifact(identifier) == data
    assert client.upload_artifact(other.id, bundle("during")).sha256 == sha256(bundle("during"))
