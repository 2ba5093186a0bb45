"""Timestamps from a PostgreSQL server whose time zone is not UTC.

PostgreSQL hands ``timestamptz`` values back in the session's time zone, which comes from the
server's configuration (Debian's initdb writes the host's zone into postgresql.conf). Urza
promises UTC whatever the server's zone.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine, make_url, text

from esper.contracts.urza_api import CompileRecord
from esper.urza.blobs import LocalBlobStore
from esper.urza.database import make_engine, migrate, session_factory
from esper.urza.repository import UrzaRepository

from .helpers import blueprint, register

pytestmark = [pytest.mark.postgres, pytest.mark.timeout(120)]


@pytest.fixture
def kolkata_engine(postgres_sqlalchemy_url: str) -> Iterator[Engine]:
    """A migrated database whose sessions default to Asia/Kolkata (UTC+05:30)."""
    database = make_url(postgres_sqlalchemy_url).database
    admin = make_engine(postgres_sqlalchemy_url)
    with admin.begin() as connection:
        connection.execute(text(f"ALTER DATABASE \"{database}\" SET timezone = 'Asia/Kolkata'"))
    admin.dispose()
    engine = make_engine(postgres_sqlalchemy_url)
    with engine.connect() as connection:
        assert connection.execute(text("SHOW timezone")).scalar() == "Asia/Kolkata"
    migrate(engine)
    yield engine
    engine.dispose()


def test_timestamps_come_back_in_utc_from_a_non_utc_server(
    kolkata_engine: Engine, tmp_path: Path
) -> None:
    repo = UrzaRepository(session_factory(kolkata_engine), LocalBlobStore(tmp_path / "blobs"))
    before = datetime.now(UTC)
    record, _ = repo.put_blueprint(blueprint())
    kernel = register(repo)
    started = datetime(2025, 3, 4, 5, 6, 7, tzinfo=UTC)
    repo.add_compile_record(
        CompileRecord(
            kernel_id=kernel.id,
            worker="forge-0",
            started_at=started,
            finished_at=started + timedelta(seconds=5),
            succeeded=True,
            torch_version="2.11.0",
        )
    )

    created = repo.get_blueprint(record.hash).created_at
    (compile_record,) = repo.compile_records(kernel.id)

    # The instants are right either way ...
    assert created >= before - timedelta(seconds=1)
    assert compile_record.started_at == started
    # ... but Urza's contract is UTC: the offset must be zero, not +05:30.
    assert created.utcoffset() == timedelta(0)
    assert compile_record.started_at.utcoffset() == timedelta(0)
    assert compile_record.finished_at.utcoffset() == timedelta(0)
    assert record.created_at.utcoffset() == timedelta(0)
