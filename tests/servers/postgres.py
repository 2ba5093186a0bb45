"""A throwaway PostgreSQL server for tests.

PostgreSQL refuses to run as root. When the tests run as root (CI containers), ``initdb`` and
``postgres`` run as an unprivileged account instead: ``$ESPER_PG_USER`` when set, else the
``postgres`` account that the Debian package creates, else ``nobody``. The server's temporary
directory is then owned by that account, and it must live below directories the account can
traverse (``/tmp`` normally; see :func:`_traversable_tmp`). As a normal user, everything runs as
that user.

The server listens on 127.0.0.1 only (no Unix socket), uses password authentication (SCRAM) for the
``esper`` superuser and is tuned for throwaway data (``fsync=off``): a clean stop (fast shutdown)
or a SIGKILL of the server (:meth:`PostgresServer.kill`) keeps committed data as long as the
machine itself does not crash.
"""

from __future__ import annotations

import glob
import os
import pwd
import re
import shutil
import signal
import stat
import subprocess
import tempfile
from pathlib import Path
from typing import ClassVar

import psycopg
from psycopg import sql

from tests.servers._process import BinaryNotFoundError, ServerError, ServerProcess

PG_BIN_ENV = "ESPER_PG_BIN"
PG_USER_ENV = "ESPER_PG_USER"
_DEBIAN_HINT = (
    "install the Debian package 'postgresql' (apt-get install postgresql) or set "
    f"{PG_BIN_ENV} to the directory that holds initdb and postgres"
)


def find_pg_bin_dir() -> Path:
    """Locate the directory holding ``initdb`` and ``postgres``.

    Looks at ``$ESPER_PG_BIN``, then ``pg_config --bindir``, then ``/usr/lib/postgresql/*/bin``
    (newest major version first), then ``initdb`` on ``PATH``.

    Returns:
        The binary directory.

    Raises:
        BinaryNotFoundError: No PostgreSQL server binaries were found.
    """
    override = os.environ.get(PG_BIN_ENV)
    if override:
        path = Path(override)
        if not _has_server_binaries(path):
            raise BinaryNotFoundError(
                f"{PG_BIN_ENV}={override} does not contain executable initdb and postgres"
            )
        return path
    candidates: list[Path] = []
    pg_config = shutil.which("pg_config")
    if pg_config is not None:
        result = subprocess.run(
            [pg_config, "--bindir"], capture_output=True, text=True, check=False, timeout=30
        )
        if result.returncode == 0:
            candidates.append(Path(result.stdout.strip()))
    candidates.extend(
        Path(p)
        for p in sorted(
            glob.glob("/usr/lib/postgresql/*/bin"), key=_major_version_key, reverse=True
        )
    )
    initdb = shutil.which("initdb")
    if initdb is not None:
        candidates.append(Path(initdb).parent)
    for candidate in candidates:
        if _has_server_binaries(candidate):
            return candidate
    raise BinaryNotFoundError(f"PostgreSQL server binaries not found: {_DEBIAN_HINT}")


def _has_server_binaries(path: Path) -> bool:
    return all(os.access(path / name, os.X_OK) for name in ("initdb", "postgres"))


def _major_version_key(path: str) -> tuple[int, str]:
    match = re.search(r"/postgresql/(\d+)/", path)
    return (int(match.group(1)) if match else -1, path)


def unprivileged_account() -> pwd.struct_passwd:
    """Return the account that runs PostgreSQL when the tests run as root.

    Returns:
        ``$ESPER_PG_USER`` when set, else ``postgres``, else ``nobody``.

    Raises:
        ServerError: None of these accounts exists, or the chosen one is root.
    """
    override = os.environ.get(PG_USER_ENV)
    names = [override] if override else ["postgres", "nobody"]
    for name in names:
        try:
            account = pwd.getpwnam(name)
        except KeyError:
            continue
        if account.pw_uid == 0:
            raise ServerError(f"{PG_USER_ENV}={name} is root; PostgreSQL refuses to run as root")
        return account
    raise ServerError(
        f"running as root, but none of the accounts {names} exists to run PostgreSQL as "
        f"(PostgreSQL refuses to run as root): create one (e.g. 'useradd --system postgres', "
        f"which the Debian package 'postgresql' does) or set {PG_USER_ENV}"
    )


def _traversable_tmp() -> Path:
    """Return a temporary directory root that other accounts can traverse.

    ``tempfile.gettempdir()`` when every directory on its path is world-searchable (o+x), else
    ``/tmp``.

    Raises:
        ServerError: Neither qualifies.
    """
    for candidate in (Path(tempfile.gettempdir()).resolve(), Path("/tmp")):
        if all(path.stat().st_mode & stat.S_IXOTH for path in (candidate, *candidate.parents)):
            return candidate
    raise ServerError(
        "running as root: no temporary directory that the PostgreSQL account can reach "
        "(every parent must be world-searchable); set TMPDIR to such a directory"
    )


def to_sqlalchemy_url(dsn: str) -> str:
    """Turn a ``postgresql://`` DSN into a SQLAlchemy URL for the psycopg 3 driver.

    Args:
        dsn: A DSN returned by :meth:`PostgresServer.dsn`.

    Returns:
        The same URL with the ``postgresql+psycopg://`` scheme.
    """
    scheme, sep, rest = dsn.partition("://")
    if scheme != "postgresql" or not sep:
        raise ValueError(f"not a postgresql:// DSN: {dsn!r}")
    return f"postgresql+psycopg://{rest}"


class PostgresServer(ServerProcess):
    """A throwaway PostgreSQL server on 127.0.0.1.

    Attributes:
        user: Superuser name.
        password: Superuser password.
        admin_db: The maintenance database (always exists).
    """

    name: ClassVar[str] = "postgres"
    # SIGINT is PostgreSQL's "fast shutdown": roll back sessions, checkpoint, exit.
    stop_signal: ClassVar[signal.Signals] = signal.SIGINT
    # SIGQUIT is "immediate shutdown": the postmaster also kills its backends.
    death_signal: ClassVar[signal.Signals] = signal.SIGQUIT

    user = "esper"
    password = "esper"
    admin_db = "postgres"

    def __init__(
        self,
        *,
        bin_dir: Path | None = None,
        startup_timeout: float = 60.0,
        shutdown_timeout: float = 30.0,
    ) -> None:
        """Find the binaries; nothing is started yet.

        Args:
            bin_dir: Directory with ``initdb`` and ``postgres``; found by
                :func:`find_pg_bin_dir` when None.
            startup_timeout: Seconds a start may take.
            shutdown_timeout: Seconds a graceful stop may take.

        Raises:
            BinaryNotFoundError: The PostgreSQL binaries are not installed.
        """
        super().__init__(startup_timeout=startup_timeout, shutdown_timeout=shutdown_timeout)
        self.bin_dir = bin_dir if bin_dir is not None else find_pg_bin_dir()
        self._account = unprivileged_account() if os.geteuid() == 0 else None

    @property
    def data_dir(self) -> Path:
        """The cluster's data directory."""
        return self.base_dir / "data"

    @property
    def host(self) -> str:
        """The address the server listens on."""
        return "127.0.0.1"

    def dsn(self, dbname: str | None = None) -> str:
        """Return a libpq/psycopg 3 connection URL.

        Args:
            dbname: Database name; the maintenance database when None.

        Returns:
            ``postgresql://esper:esper@127.0.0.1:<port>/<dbname>``.
        """
        if self.port is None:
            raise ServerError("postgres: no port before the first start()")
        return (
            f"postgresql://{self.user}:{self.password}@{self.host}:{self.port}/"
            f"{dbname or self.admin_db}"
        )

    def sqlalchemy_url(self, dbname: str | None = None) -> str:
        """Return a SQLAlchemy URL (``postgresql+psycopg://...``) for ``dbname``."""
        return to_sqlalchemy_url(self.dsn(dbname))

    def create_database(self, dbname: str) -> str:
        """Create an empty database and return its DSN.

        Args:
            dbname: Name of the new database.

        Returns:
            The database's DSN.
        """
        with psycopg.connect(self.dsn(), autocommit=True, connect_timeout=10) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(dbname)))
        return self.dsn(dbname)

    def drop_database(self, dbname: str) -> None:
        """Drop a database, disconnecting its remaining sessions first.

        Args:
            dbname: Name of the database; missing databases are ignored.
        """
        with psycopg.connect(self.dsn(), autocommit=True, connect_timeout=10) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(dbname))
            )

    # -- ServerProcess hooks -------------------------------------------------------------------

    def _make_base_dir(self) -> Path:
        if self._account is None:
            return super()._make_base_dir()
        base = Path(tempfile.mkdtemp(prefix=f"esper-{self.name}-", dir=_traversable_tmp()))
        os.chown(base, self._account.pw_uid, self._account.pw_gid)
        return base

    def _run_as(self) -> tuple[int, int] | None:
        if self._account is None:
            return None
        return self._account.pw_uid, self._account.pw_gid

    def _prepare(self) -> None:
        pwfile = self.base_dir / "pwfile"
        pwfile.write_text(self.password + "\n")
        run_as = self._run_as()
        if run_as is not None:
            os.chown(pwfile, *run_as)
        command = [
            str(self.bin_dir / "initdb"),
            "--pgdata",
            str(self.data_dir),
            "--username",
            self.user,
            "--pwfile",
            str(pwfile),
            "--auth",
            "scram-sha-256",
            "--encoding",
            "UTF8",
            "--locale",
            "C",
            "--no-sync",
        ]
        with self.log_path.open("ab") as log:
            log.write(f"=== initdb: {command}\n".encode())
            log.flush()
            result = subprocess.run(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.base_dir,
                env=dict(self._env()),
                user=run_as[0] if run_as is not None else None,
                group=run_as[1] if run_as is not None else None,
                extra_groups=[] if run_as is not None else None,
                timeout=self.startup_timeout,
                check=False,
            )
        pwfile.unlink()
        if result.returncode != 0:
            raise ServerError(
                f"initdb failed with exit status {result.returncode}; log {self.log_path}:\n"
                f"{self.log_tail()}"
            )

    def _command(self) -> list[str]:
        settings = {
            "listen_addresses": self.host,
            "port": str(self.port),
            "unix_socket_directories": "",
            "max_connections": "200",
            # Throwaway data: no durability against machine crashes, much faster tests. Commits
            # still write their WAL to the kernel (synchronous_commit stays on), so committed
            # data survives a server crash (kill()), which fault tests rely on.
            "fsync": "off",
            "full_page_writes": "off",
            "log_min_messages": "warning",
        }
        command = [str(self.bin_dir / "postgres"), "-D", str(self.data_dir)]
        for key, value in settings.items():
            command += ["-c", f"{key}={value}"]
        return command

    def _probe(self) -> bool:
        try:
            with psycopg.connect(self.dsn(), connect_timeout=2) as conn:
                conn.execute("SELECT 1")
        except psycopg.OperationalError:
            return False
        return True
