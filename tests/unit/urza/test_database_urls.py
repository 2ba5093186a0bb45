"""Engine creation for Urza's database: supported URLs, SQLite specifics."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import text

from esper.urza.database import make_engine, session_factory


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("mysql+pymysql://u:p@localhost/urza", "database backend 'mysql' is not supported"),
        ("oracle://u:p@localhost/urza", "database backend 'oracle' is not supported"),
        ("postgresql+psycopg2://u:p@localhost/urza", "driver 'psycopg2' is not supported"),
        ("postgresql+asyncpg://u:p@localhost/urza", "driver 'asyncpg' is not supported"),
    ],
)
def test_unsupported_urls_are_refused_with_the_supported_forms(url: str, message: str) -> None:
    with pytest.raises(ValueError, match=message) as caught:
        make_engine(url)
    assert "postgresql+psycopg://" in str(caught.value)


def test_malformed_url_is_refused() -> None:
    with pytest.raises(Exception, match="Could not parse"):
        make_engine("not a url")


@pytest.mark.parametrize(
    "url", ["postgresql+psycopg://u:p@127.0.0.1:1/urza", "postgresql://u:p@127.0.0.1:1/urza"]
)
def test_postgres_urls_use_psycopg_and_connect_lazily(url: str) -> None:
    # SQLAlchemy 2.1 maps a bare postgresql:// to psycopg 3, so both spellings are accepted;
    # nothing connects at creation (port 1 has no server).
    engine = make_engine(url)
    try:
        assert engine.dialect.driver == "psycopg"
        assert engine.pool._pre_ping is True
    finally:
        engine.dispose()


def test_sqlite_engine_creates_the_directory_and_enforces_foreign_keys(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "er" / "urza.sqlite"
    engine = make_engine(f"sqlite:///{path}")
    try:
        assert path.parent.is_dir()
        with engine.connect() as connection:
            assert connection.execute(text("PRAGMA foreign_keys")).scalar() == 1
        assert path.is_file()
        assert engine.pool._pre_ping is True
    finally:
        engine.dispose()


def test_sqlite_in_memory_needs_no_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    engine = make_engine("sqlite:///:memory:")
    try:
        with engine.connect() as connection:
            assert connection.execute(text("PRAGMA foreign_keys")).scalar() == 1
        assert list(tmp_path.iterdir()) == []
    finally:
        engine.dispose()


def test_session_factory_keeps_objects_readable_after_commit(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'x.sqlite'}")
    try:
        factory = session_factory(engine)
        assert factory.kw["expire_on_commit"] is False
    finally:
        engine.dispose()
