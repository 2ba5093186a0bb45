"""Engine creation and migrations of Urza's database (PostgreSQL or SQLite)."""

import time
from collections.abc import Callable
from importlib import resources
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, create_engine, event, make_url
from sqlalchemy.engine.interfaces import DBAPIConnection
from sqlalchemy.exc import ArgumentError, OperationalError
from sqlalchemy.orm import sessionmaker
from sqlalchemy.pool import ConnectionPoolEntry


class DatabaseNotReadyError(RuntimeError):
    """Raised when Urza's database cannot be used yet: unreachable, or its schema is behind."""


class SchemaNotCurrentError(DatabaseNotReadyError):
    """Raised when the database schema is not at the migrations' head revision."""


def make_engine(database_url: str) -> Engine:
    """Create an engine for Urza's database.

    SQLite gets foreign keys switched on (it ignores them by default) and its directory created;
    every engine pings connections before use, so a database that went away and came back is
    reconnected to without a restart.

    Args:
        database_url: A SQLAlchemy URL.

    Returns:
        The engine.

    Raises:
        ValueError: When the URL names a backend Urza does not support.
    """
    try:
        url = make_url(database_url)
    except ArgumentError as error:
        raise ValueError(f"invalid database URL: {error}") from None
    backend = url.get_backend_name()
    if backend == "sqlite":
        if url.database and url.database != ":memory:":
            Path(url.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, pool_pre_ping=True)
        event.listen(engine, "connect", _enable_sqlite_foreign_keys)
        return engine
    if backend == "postgresql":
        if url.get_driver_name() != "psycopg":
            raise ValueError(
                f"database URL driver '{url.get_driver_name()}' is not supported; use "
                "postgresql+psycopg://"
            )
        # A bounded connect timeout makes an unreachable database fail a request (503) in
        # seconds instead of hanging it.
        return create_engine(
            url,
            pool_pre_ping=True,
            # FastAPI runs sync routes on a 40-thread pool; a pool as large keeps connections
            # open under load instead of churning overflow ones.
            pool_size=20,
            max_overflow=20,
            connect_args={"connect_timeout": 5},
        )
    raise ValueError(
        f"database backend '{backend}' is not supported; use sqlite:/// or postgresql+psycopg://"
    )


def _enable_sqlite_foreign_keys(connection: DBAPIConnection, _record: ConnectionPoolEntry) -> None:
    cursor = connection.cursor()
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def session_factory(engine: Engine) -> sessionmaker:
    """Return a session factory whose objects stay readable after commit.

    Args:
        engine: The engine.

    Returns:
        The factory.
    """
    return sessionmaker(engine, expire_on_commit=False)


def _alembic_config(engine: Engine) -> Config:
    config = Config()
    script_location = resources.files("esper.urza") / "migrations"
    config.set_main_option("script_location", str(script_location))
    config.set_main_option("sqlalchemy.url", engine.url.render_as_string(hide_password=False))
    return config


def migrate(engine: Engine) -> str:
    """Apply every pending migration.

    Args:
        engine: The database to migrate.

    Returns:
        The head revision the database is now at.
    """
    config = _alembic_config(engine)
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "head")
    return head_revision(engine)


def head_revision(engine: Engine) -> str:
    """Return the newest revision the migrations define.

    Args:
        engine: Any engine (used only to build the configuration).

    Returns:
        The revision id.
    """
    head = ScriptDirectory.from_config(_alembic_config(engine)).get_current_head()
    if head is None:
        raise RuntimeError("Urza's migrations define no revision")
    return head


def current_revision(engine: Engine) -> str | None:
    """Return the revision the database is at (None for an empty database).

    Args:
        engine: The database.

    Returns:
        The revision id or None.
    """
    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def wait_for_current_schema(engine: Engine, *, timeout: float, interval: float = 2.0) -> None:
    """Wait until the database is reachable and at the head revision.

    A cluster starts Urza and its migration Job together (and, with the chart's own PostgreSQL,
    the database too), so at first the database may refuse connections or be behind.

    Args:
        engine: The database.
        timeout: Seconds to wait at most; 0 checks once.
        interval: Seconds between two checks.

    Raises:
        SchemaNotCurrentError: When the time is up and the schema is still behind.
        DatabaseNotReadyError: When the time is up and the database still cannot be reached
            (the message names its address and the cause).
    """
    _wait(engine, lambda: require_current_schema(engine), timeout=timeout, interval=interval)


def wait_until_reachable(engine: Engine, *, timeout: float, interval: float = 2.0) -> None:
    """Wait until the database accepts connections (the migration Job starts with it).

    Args:
        engine: The database.
        timeout: Seconds to wait at most; 0 checks once.
        interval: Seconds between two checks.

    Raises:
        DatabaseNotReadyError: When the time is up and the database still cannot be reached.
    """

    def connect() -> None:
        with engine.connect():
            pass

    _wait(engine, connect, timeout=timeout, interval=interval)


def _wait(engine: Engine, check: Callable[[], None], *, timeout: float, interval: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            check()
            return
        except SchemaNotCurrentError as error:
            kind: type[DatabaseNotReadyError] = SchemaNotCurrentError
            problem = str(error)
        except OperationalError as error:
            kind = DatabaseNotReadyError
            cause = str(error.orig or error).strip().splitlines()[0]
            address = engine.url.render_as_string(hide_password=True)
            problem = f"Urza's database {address} cannot be reached: {cause}"
        if time.monotonic() + interval > deadline:
            raise kind(problem + (f" (waited {timeout:.0f} s)" if timeout > 0 else ""))
        time.sleep(interval)


def require_current_schema(engine: Engine) -> None:
    """Fail unless the database is at the head revision.

    Args:
        engine: The database.

    Raises:
        SchemaNotCurrentError: With the revisions found and expected and the command to run.
    """
    current = current_revision(engine)
    head = head_revision(engine)
    if current != head:
        raise SchemaNotCurrentError(
            f"Urza's database is at revision {current or 'none (empty)'}, the code needs {head}; "
            "run 'esper urza migrate'"
        )
