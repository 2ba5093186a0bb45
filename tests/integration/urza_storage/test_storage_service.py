"""Urza assembled from its settings: embedded (SQLite + directory) and cluster (PostgreSQL +
S3) storage."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from esper.config import UrzaSettings
from esper.contracts.kernel import KernelPhase
from esper.contracts.urza_api import PhaseChange
from esper.urza.blobs import LocalBlobStore, S3BlobStore
from esper.urza.database import (
    DatabaseNotReadyError,
    SchemaNotCurrentError,
    current_revision,
    head_revision,
    make_engine,
    migrate,
)
from esper.urza.service import build_service
from tests.servers import S3Location

from .helpers import bundle, register

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in list(os.environ):
        if name.startswith("ESPER_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("ESPER_HOME", str(tmp_path / "home"))


def test_embedded_defaults_migrate_and_store(tmp_path: Path) -> None:
    service = build_service(UrzaSettings())
    try:
        assert (tmp_path / "home" / "urza.sqlite").is_file()
        assert current_revision(service.engine) == head_revision(service.engine)
        assert isinstance(service.repository.blobs, LocalBlobStore)
        assert service.repository.blobs.root == (tmp_path / "home" / "artifacts").resolve()
        service.repository.ping()
        service.repository.blobs.check()
        kernel = register(service.repository)
        assert service.repository.get_kernel(kernel.id) == kernel
    finally:
        service.engine.dispose()


def test_without_auto_migrate_an_empty_database_is_refused(tmp_path: Path) -> None:
    settings = UrzaSettings(
        database_url=f"sqlite:///{tmp_path / 'empty.sqlite'}",
        artifact_dir=tmp_path / "blobs",
        auto_migrate=False,
    )
    with pytest.raises(SchemaNotCurrentError, match="esper urza migrate"):
        build_service(settings)


def test_without_auto_migrate_the_server_waits_for_the_migration(tmp_path: Path) -> None:
    # As in a cluster: Urza starts while its migration Job is still running.
    database_url = f"sqlite:///{tmp_path / 'late.sqlite'}"
    settings = UrzaSettings(
        database_url=database_url,
        artifact_dir=tmp_path / "blobs",
        auto_migrate=False,
        schema_wait_seconds=60,
    )
    migrator = make_engine(database_url)
    late_migration = threading.Timer(1.0, migrate, args=(migrator,))
    late_migration.start()
    try:
        service = build_service(settings)
    finally:
        late_migration.join()
        migrator.dispose()
    try:
        assert current_revision(service.engine) == head_revision(service.engine)
    finally:
        service.engine.dispose()


@pytest.mark.parametrize("wait", [0, 3])
def test_an_unreachable_database_is_refused_after_the_wait(tmp_path: Path, wait: int) -> None:
    settings = UrzaSettings(
        database_url="postgresql+psycopg://urza:hunter2@127.0.0.1:1/urza",
        artifact_dir=tmp_path / "blobs",
        auto_migrate=False,
        schema_wait_seconds=wait,
    )
    with pytest.raises(
        DatabaseNotReadyError, match=r"127\.0\.0\.1:1/urza cannot be reached"
    ) as caught:
        build_service(settings)
    assert not isinstance(caught.value, SchemaNotCurrentError)
    assert "hunter2" not in str(caught.value)
    assert str(caught.value).endswith(f"(waited {wait} s)") is (wait > 0)


def test_tokenless_server_on_a_public_address_is_refused(tmp_path: Path) -> None:
    settings = UrzaSettings(
        database_url=f"sqlite:///{tmp_path / 'urza.sqlite'}",
        artifact_dir=tmp_path / "blobs",
        host="0.0.0.0",
    )
    with pytest.raises(ValueError, match="ESPER_URZA_AUTH_TOKEN"):
        build_service(settings)


@pytest.mark.postgres
@pytest.mark.s3
def test_cluster_settings_use_postgres_and_s3(
    postgres_sqlalchemy_url: str, shared_s3_bucket: S3Location
) -> None:
    location = shared_s3_bucket
    settings = UrzaSettings(
        database_url=postgres_sqlalchemy_url,
        blob_store="s3",
        s3_bucket=location.bucket,
        s3_endpoint_url=location.endpoint_url,
        s3_access_key_id=location.access_key,
        s3_secret_access_key=location.secret_key,
        s3_region=location.region,
        auth_token="cluster-token",
        host="0.0.0.0",
    )
    service = build_service(settings)
    try:
        repo = service.repository
        assert service.engine.dialect.name == "postgresql"
        assert isinstance(repo.blobs, S3BlobStore)
        repo.blobs.check()
        kernel = register(repo)
        repo.change_phase(kernel.id, PhaseChange(phase=KernelPhase.COMPILING))
        data, digest = bundle("cluster")
        uploaded = repo.upload_artifact(kernel.id, data, digest)
        assert uploaded.artifact_uri == f"s3://{location.bucket}/sha256/{digest[:2]}/{digest}"
        assert repo.read_artifact(kernel.id)[1] == data
        repo.delete_kernel(kernel.id)
        assert not repo.blobs.exists(digest)
    finally:
        service.engine.dispose()
