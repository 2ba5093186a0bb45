"""Urza's migrations and engine setup, on SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Engine, inspect, text

from esper.urza.database import (
    SchemaNotCurrentError,
    _alembic_config,
    current_revision,
    head_revision,
    make_engine,
    migrate,
    require_current_schema,
)
from esper.urza.models import Base

from .helpers import BACKENDS

pytestmark = [BACKENDS, pytest.mark.timeout(120)]

URZA_TABLES = {
    "blueprints",
    "blueprint_tags",
    "kernels",
    "kernel_tags",
    "benchmark_reports",
    "compile_records",
}


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    engine = make_engine(database_url)
    yield engine
    engine.dispose()


def _tables(engine: Engine) -> set[str]:
    return set(inspect(engine).get_table_names()) - {"alembic_version"}


def _schema_diff(engine: Engine) -> list[object]:
    with engine.connect() as connection:
        return list(compare_metadata(MigrationContext.configure(connection), Base.metadata))


def test_migrate_on_an_empty_database_reaches_head(engine: Engine) -> None:
    assert current_revision(engine) is None
    assert _tables(engine) == set()

    revision = migrate(engine)

    assert revision == head_revision(engine)
    assert current_revision(engine) == revision
    assert _tables(engine) == URZA_TABLES
    # Migrating again is a no-op.
    assert migrate(engine) == revision
    assert current_revision(engine) == revision


def test_require_current_schema_refuses_a_database_not_at_head(engine: Engine) -> None:
    with pytest.raises(SchemaNotCurrentError, match="run 'esper urza migrate'") as caught:
        require_current_schema(engine)
    assert "none (empty)" in str(caught.value)
    assert head_revision(engine) in str(caught.value)

    migrate(engine)
    require_current_schema(engine)

    with engine.begin() as connection:
        connection.execute(text("UPDATE alembic_version SET version_num = 'older'"))
    with pytest.raises(SchemaNotCurrentError, match=r"at revision older.*esper urza migrate"):
        require_current_schema(engine)


def test_migrated_schema_matches_the_models(engine: Engine) -> None:
    # The comparison is not vacuous: before migrating, every table is reported missing.
    assert len(_schema_diff(engine)) >= len(URZA_TABLES)

    migrate(engine)

    assert _schema_diff(engine) == []


def test_downgrade_to_base_and_upgrade_again(engine: Engine) -> None:
    migrate(engine)
    config = _alembic_config(engine)
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.downgrade(config, "base")
    assert _tables(engine) == set()
    assert current_revision(engine) is None

    migrate(engine)

    assert _tables(engine) == URZA_TABLES
    assert _schema_diff(engine) == []


def test_alembic_command_line_path_migrates_by_url(engine: Engine) -> None:
    # `alembic upgrade head` with only sqlalchemy.url set (no connection handed over) is the
    # other branch of the migrations' env.py.
    config = _alembic_config(engine)

    command.upgrade(config, "head")

    assert current_revision(engine) == head_revision(engine)
    assert _tables(engine) == URZA_TABLES
