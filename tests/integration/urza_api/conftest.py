"""Fixtures: a real Urza (uvicorn in a thread) on PostgreSQL + S3 or on SQLite + a local dir."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from esper.config import UrzaSettings
from esper.contracts.events import Event
from esper.urza.service import build_service
from tests.servers import S3Location
from tests.support.reliability import CountResponses

from .support import RunningUrza, ThreadedUvicorn

TOKEN = "urza-test-token-0123456789"
MAX_UPLOAD_BYTES = 64 * 1024

BACKENDS = [
    pytest.param("postgres-s3", marks=[pytest.mark.postgres, pytest.mark.s3], id="postgres-s3"),
    pytest.param("sqlite-local", id="sqlite-local"),
]


@pytest.fixture(autouse=True)
def _no_esper_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Settings come from the test alone, never from ESPER_* variables of the environment."""
    for name in list(os.environ):
        if name.startswith("ESPER_"):
            monkeypatch.delenv(name)


def sqlite_local_settings(root: Path, **overrides: Any) -> UrzaSettings:
    """The embedded default, under ``root``: SQLite file and a local artifact directory."""
    values: dict[str, Any] = {
        "database_url": f"sqlite:///{root / 'urza.sqlite'}",
        "blob_store": "local",
        "artifact_dir": root / "artifacts",
        "max_upload_bytes": MAX_UPLOAD_BYTES,
        "host": "127.0.0.1",
    }
    values.update(overrides)
    return UrzaSettings(**values)


def postgres_s3_settings(database_url: str, s3: S3Location, **overrides: Any) -> UrzaSettings:
    """The cluster configuration: PostgreSQL, an S3 bucket and a bearer token."""
    values: dict[str, Any] = {
        "database_url": database_url,
        "blob_store": "s3",
        "s3_endpoint_url": s3.endpoint_url,
        "s3_bucket": s3.bucket,
        "s3_region": s3.region,
        "s3_access_key_id": s3.access_key,
        "s3_secret_access_key": s3.secret_key,
        "auth_token": TOKEN,
        "max_upload_bytes": MAX_UPLOAD_BYTES,
        "host": "0.0.0.0",
    }
    values.update(overrides)
    return UrzaSettings(**values)


@contextlib.contextmanager
def serving(
    settings: UrzaSettings,
    backend: str,
    publish: Callable[[Event], None] | None = None,
    **extras: Any,
) -> Iterator[RunningUrza]:
    """Build Urza from ``settings`` and serve it over real HTTP until the block ends."""
    service = build_service(settings, publish=publish)
    # Count its responses for the reliability ledger (tests/support/reliability.py).
    service.app.add_middleware(CountResponses)
    server = ThreadedUvicorn(service.app)
    running = RunningUrza(
        backend=backend,
        settings=settings,
        service=service,
        server=server,
        token=settings.token(),
        extras=extras,
    )
    try:
        server.start()
        yield running
    finally:
        running.close()
        server.stop()
        service.engine.dispose()


@pytest.fixture(params=BACKENDS)
def urza(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[RunningUrza]:
    """A running Urza: (PostgreSQL + MinIO, token auth) or (SQLite + local dir, open writes)."""
    if request.param == "postgres-s3":
        database_url = request.getfixturevalue("postgres_sqlalchemy_url")
        s3: S3Location = request.getfixturevalue("s3_bucket")
        settings = postgres_s3_settings(database_url, s3)
        with serving(settings, "postgres-s3", s3=s3) as running:
            yield running
    else:
        with serving(sqlite_local_settings(tmp_path), "sqlite-local") as running:
            yield running


@pytest.fixture
def local_urza(tmp_path: Path) -> Iterator[RunningUrza]:
    """A running Urza on the embedded default (SQLite + local dir, open writes on loopback)."""
    with serving(sqlite_local_settings(tmp_path), "sqlite-local") as running:
        yield running


@pytest.fixture
def start_urza() -> Iterator[Callable[..., RunningUrza]]:
    """Start extra Urzas with settings of the test's choice; all stop at teardown."""
    with contextlib.ExitStack() as stack:

        def start(
            settings: UrzaSettings,
            backend: str = "custom",
            publish: Callable[[Event], None] | None = None,
            **extras: Any,
        ) -> RunningUrza:
            return stack.enter_context(serving(settings, backend, publish, **extras))

        yield start
