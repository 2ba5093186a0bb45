"""Fixtures of Urza's storage tests: a migrated database on SQLite or PostgreSQL, a repository
over it, and a blob store in a local directory or on the S3 server.

The backend matrices are applied with ``pytest.mark.parametrize(..., indirect=True)`` (see
``helpers.BACKENDS`` and ``helpers.BLOB_STORES``), so each module states which matrix it runs.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, func, select, text
from sqlalchemy.orm import DeclarativeBase

from esper.urza.blobs import BlobStore, LocalBlobStore, S3BlobStore, blob_key
from esper.urza.database import make_engine, migrate, session_factory
from esper.urza.models import Base
from esper.urza.repository import UrzaRepository
from tests.servers import PostgresServer, S3Location, S3Server

_TMPFS = Path("/dev/shm")


def _scratch_parent() -> Path | None:
    """A RAM-backed directory when the machine has one (SQLite fsyncs every commit)."""
    return _TMPFS if _TMPFS.is_dir() and os.access(_TMPFS, os.W_OK) else None


@pytest.fixture
def scratch(tmp_path: Path) -> Iterator[Path]:
    """A private empty directory for database files and blobs, removed after the test.

    On tmpfs when available: SQLite and the local blob store fsync their writes, which costs
    seconds per test on a busy disk and tests nothing here. Falls back to ``tmp_path``.
    """
    parent = _scratch_parent()
    if parent is None:
        yield tmp_path
        return
    directory = Path(tempfile.mkdtemp(prefix="esper-urza-storage-", dir=parent))
    try:
        yield directory
    finally:
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def backend(request: pytest.FixtureRequest) -> str:
    """``sqlite`` or ``postgres``; parametrized by ``helpers.BACKENDS``."""
    if not hasattr(request, "param"):
        raise RuntimeError("the backend fixture is parametrized with helpers.BACKENDS")
    return str(request.param)


@pytest.fixture
def database_url(backend: str, request: pytest.FixtureRequest, scratch: Path) -> str:
    """A URL of a fresh, empty database on the chosen backend (for migration tests)."""
    if backend == "sqlite":
        return f"sqlite:///{scratch / 'db' / 'urza.sqlite'}"
    return str(request.getfixturevalue("postgres_sqlalchemy_url"))


@dataclass
class Storage:
    """A migrated database, a local blob store and the repository over both."""

    backend: str
    url: str
    engine: Engine
    blobs: LocalBlobStore
    repository: UrzaRepository

    def count(self, model: type[DeclarativeBase], **where: Any) -> int:
        """Count the rows of ``model`` whose columns equal ``where``."""
        query = select(func.count()).select_from(model)
        for column, value in where.items():
            query = query.where(getattr(model, column) == value)
        with self.engine.connect() as connection:
            return int(connection.scalar(query) or 0)


@pytest.fixture(scope="session")
def migrated_postgres(postgres_server: PostgresServer) -> Iterator[Engine]:
    """One PostgreSQL database migrated with ``migrate`` and shared by the repository tests.

    Creating and migrating a database per test costs 0.5 to 2 s on a busy CI machine; the
    repository tests instead start from emptied tables (see ``storage``). Tests that need an
    empty or private database (migrations, faults) use ``postgres_sqlalchemy_url``.
    """
    postgres_server.ensure_running()
    name = f"urza_storage_shared_{os.getpid()}"
    postgres_server.drop_database(name)
    engine = make_engine(postgres_server.sqlalchemy_url(name))
    postgres_server.create_database(name)
    migrate(engine)
    yield engine
    engine.dispose()
    postgres_server.ensure_running()
    postgres_server.drop_database(name)


@pytest.fixture(scope="session")
def migrated_sqlite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A SQLite file migrated with ``migrate`` once; each test works on its own copy."""
    parent = _scratch_parent()
    directory = (
        Path(tempfile.mkdtemp(prefix="esper-urza-template-", dir=parent))
        if parent is not None
        else tmp_path_factory.mktemp("urza-sqlite-template")
    )
    path = directory / "urza.sqlite"
    engine = make_engine(f"sqlite:///{path}")
    migrate(engine)
    engine.dispose()
    yield path
    if parent is not None:
        shutil.rmtree(directory, ignore_errors=True)


_TABLES = ", ".join(table.name for table in Base.metadata.sorted_tables)


@pytest.fixture
def storage(backend: str, request: pytest.FixtureRequest, scratch: Path) -> Iterator[Storage]:
    """A migrated, empty database on ``backend`` with a repository over it.

    SQLite: a private copy of a freshly migrated file. PostgreSQL: the shared migrated database with
    every table emptied before the test starts, so no test sees another's rows.
    """
    owned = backend == "sqlite"
    if owned:
        path = scratch / "db" / "urza.sqlite"
        path.parent.mkdir()
        shutil.copyfile(request.getfixturevalue("migrated_sqlite"), path)
        engine = make_engine(f"sqlite:///{path}")
    else:
        request.getfixturevalue("postgres_server").ensure_running()
        engine = request.getfixturevalue("migrated_postgres")
        with engine.begin() as connection:
            connection.execute(text(f"TRUNCATE {_TABLES} RESTART IDENTITY CASCADE"))
    blobs = LocalBlobStore(scratch / "blobs")
    yield Storage(
        backend=backend,
        url=engine.url.render_as_string(hide_password=False),
        engine=engine,
        blobs=blobs,
        repository=UrzaRepository(session_factory(engine), blobs),
    )
    if owned:
        engine.dispose()


@pytest.fixture
def repository(storage: Storage) -> UrzaRepository:
    """The repository of ``storage``."""
    return storage.repository


# Blob stores -------------------------------------------------------------------------------


@dataclass
class BlobBackend:
    """A blob store plus raw access to what it stored, for fault injection."""

    kind: str
    store: BlobStore
    root: Path | None = None
    location: S3Location | None = None
    client: Any = None

    def overwrite(self, sha256: str, data: bytes) -> None:
        """Replace the stored bytes of a blob behind the store's back."""
        if self.root is not None:
            (self.root / blob_key(sha256)).write_bytes(data)
        else:
            assert self.location is not None
            self.client.put_object(Bucket=self.location.bucket, Key=blob_key(sha256), Body=data)

    def raw_read(self, sha256: str) -> bytes:
        """Read the stored bytes without verification."""
        if self.root is not None:
            return (self.root / blob_key(sha256)).read_bytes()
        assert self.location is not None
        response = self.client.get_object(Bucket=self.location.bucket, Key=blob_key(sha256))
        return bytes(response["Body"].read())

    def raw_version(self, sha256: str) -> tuple[object, ...]:
        """Something that changes whenever the stored object is rewritten."""
        if self.root is not None:
            info = os.stat(self.root / blob_key(sha256))
            return (info.st_ino, info.st_mtime_ns)
        assert self.location is not None
        head = self.client.head_object(Bucket=self.location.bucket, Key=blob_key(sha256))
        return (head["ETag"], head["LastModified"], head.get("VersionId"))

    def raw_names(self) -> list[str]:
        """Every file or object the store holds (temporary files included)."""
        if self.root is not None:
            return sorted(
                str(path.relative_to(self.root)) for path in self.root.rglob("*") if path.is_file()
            )
        assert self.location is not None
        listing = self.client.list_objects_v2(Bucket=self.location.bucket)
        return sorted(item["Key"] for item in listing.get("Contents", []))


@pytest.fixture
def blob_kind(request: pytest.FixtureRequest) -> str:
    """``local`` or ``s3``; parametrized by ``helpers.BLOB_STORES``."""
    if not hasattr(request, "param"):
        raise RuntimeError("the blob_kind fixture is parametrized with helpers.BLOB_STORES")
    return str(request.param)


@pytest.fixture(scope="session")
def shared_s3_bucket(s3_server: S3Server) -> Iterator[S3Location]:
    """One bucket on the S3 server for the blob tests, emptied before each test.

    Creating a bucket costs MinIO 1.5 to 4 s on a busy CI machine (it syncs its metadata);
    emptying one is cheap.
    """
    s3_server.ensure_running()
    location = s3_server.create_bucket(f"urza-storage-{os.getpid()}")
    yield location
    s3_server.ensure_running()
    s3_server.delete_bucket(location.bucket)


@pytest.fixture(scope="session")
def _s3_clients(shared_s3_bucket: S3Location) -> Iterator[tuple[Any, S3BlobStore]]:
    """A raw boto3 client and an S3BlobStore on the shared bucket (building them is slow)."""
    location = shared_s3_bucket
    client = location.client()
    store = S3BlobStore(
        location.bucket,
        endpoint_url=location.endpoint_url,
        access_key_id=location.access_key,
        secret_access_key=location.secret_key,
        region=location.region,
    )
    yield client, store
    client.close()


@pytest.fixture
def blob_backend(blob_kind: str, request: pytest.FixtureRequest, scratch: Path) -> BlobBackend:
    """An empty blob store on the chosen backend (a fresh directory or an emptied bucket)."""
    if blob_kind == "local":
        store = LocalBlobStore(scratch / "artifacts")
        return BlobBackend(kind="local", store=store, root=store.root)
    request.getfixturevalue("s3_server").ensure_running()
    location: S3Location = request.getfixturevalue("shared_s3_bucket")
    client, store = request.getfixturevalue("_s3_clients")
    backend = BlobBackend(kind="s3", store=store, location=location, client=client)
    names = backend.raw_names()
    if names:
        client.delete_objects(
            Bucket=location.bucket, Delete={"Objects": [{"Key": name} for name in names]}
        )
    assert backend.raw_names() == []
    return backend
