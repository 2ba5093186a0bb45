"""A throwaway Redis server for tests.

The server persists with the append-only file (``appendonly yes``) and no RDB snapshots, so a
graceful stop and start keeps all data. With the default ``appendfsync everysec`` a crash
(:meth:`RedisServer.kill`) may lose the last second of writes; pass ``appendfsync="always"`` for
crash tests that must not lose anything.
"""

from __future__ import annotations

import os
import shutil
import socket
from pathlib import Path
from typing import ClassVar, Literal

from tests.servers._process import BinaryNotFoundError, ServerError, ServerProcess

REDIS_SERVER_ENV = "ESPER_REDIS_SERVER"
_DEBIAN_HINT = (
    "install the Debian package 'redis-server' (apt-get install redis-server) or set "
    f"{REDIS_SERVER_ENV} to the redis-server binary"
)


def find_redis_server() -> Path:
    """Locate the ``redis-server`` binary (``$ESPER_REDIS_SERVER``, then ``PATH``).

    Returns:
        The binary's path.

    Raises:
        BinaryNotFoundError: redis-server is not installed.
    """
    override = os.environ.get(REDIS_SERVER_ENV)
    if override:
        if not os.access(override, os.X_OK):
            raise BinaryNotFoundError(
                f"{REDIS_SERVER_ENV}={override} is not an executable file; {_DEBIAN_HINT}"
            )
        return Path(override)
    for candidate in (shutil.which("redis-server"), "/usr/bin/redis-server"):
        if candidate is not None and os.access(candidate, os.X_OK):
            return Path(candidate)
    raise BinaryNotFoundError(f"redis-server not found: {_DEBIAN_HINT}")


def _encode_command(*args: str) -> bytes:
    parts = [f"*{len(args)}\r\n".encode()]
    for arg in args:
        data = arg.encode()
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(parts)


class RedisServer(ServerProcess):
    """A throwaway Redis server on 127.0.0.1 with append-only persistence.

    Attributes:
        appendfsync: The ``appendfsync`` policy (``everysec`` or ``always``).
    """

    name: ClassVar[str] = "redis"

    def __init__(
        self,
        *,
        binary: Path | None = None,
        appendfsync: Literal["everysec", "always"] = "everysec",
        startup_timeout: float = 30.0,
        shutdown_timeout: float = 30.0,
    ) -> None:
        """Find the binary; nothing is started yet.

        Args:
            binary: The ``redis-server`` binary; found by :func:`find_redis_server` when None.
            appendfsync: ``everysec`` (fast) or ``always`` (no loss on :meth:`kill`).
            startup_timeout: Seconds a start may take.
            shutdown_timeout: Seconds a graceful stop may take.

        Raises:
            BinaryNotFoundError: redis-server is not installed.
        """
        super().__init__(startup_timeout=startup_timeout, shutdown_timeout=shutdown_timeout)
        self.binary = binary if binary is not None else find_redis_server()
        self.appendfsync = appendfsync

    @property
    def data_dir(self) -> Path:
        """The directory holding the append-only files."""
        return self.base_dir / "data"

    @property
    def host(self) -> str:
        """The address the server listens on."""
        return "127.0.0.1"

    def url(self, db: int = 0) -> str:
        """Return the ``redis://`` URL of logical database ``db``."""
        if self.port is None:
            raise ServerError("redis: no port before the first start()")
        return f"redis://{self.host}:{self.port}/{db}"

    def command(self, *args: str, timeout: float = 5.0) -> bytes:
        """Send one command and return its reply line (status, error or integer replies only).

        A minimal client for fixture housekeeping (``PING``, ``FLUSHALL``); tests use redis-py.

        Args:
            *args: The command and its arguments.
            timeout: Socket timeout in seconds.

        Returns:
            The first reply line without CRLF, e.g. ``b"+PONG"``.

        Raises:
            OSError: The server is unreachable or closed the connection.
        """
        if self.port is None:
            raise ServerError("redis: no port before the first start()")
        with socket.create_connection((self.host, self.port), timeout=timeout) as sock:
            sock.sendall(_encode_command(*args))
            reply = b""
            while not reply.endswith(b"\r\n"):
                chunk = sock.recv(4096)
                if not chunk:
                    raise ConnectionError("redis closed the connection without a reply")
                reply += chunk
        return reply.split(b"\r\n", 1)[0]

    def flush_all(self) -> None:
        """Delete every key in every logical database.

        Raises:
            ServerError: Redis answered with an error.
        """
        reply = self.command("FLUSHALL", "SYNC")
        if reply != b"+OK":
            raise ServerError(f"redis FLUSHALL failed: {reply!r}")

    # -- ServerProcess hooks -------------------------------------------------------------------

    def _prepare(self) -> None:
        self.data_dir.mkdir()
        (self.base_dir / "redis.conf").write_text(
            "\n".join(
                [
                    "bind 127.0.0.1",
                    "protected-mode yes",
                    "daemonize no",
                    'logfile ""',
                    f'dir "{self.data_dir}"',
                    "databases 16",
                    'save ""',
                    "appendonly yes",
                    f"appendfsync {self.appendfsync}",
                ]
            )
            + "\n"
        )

    def _command(self) -> list[str]:
        return [str(self.binary), str(self.base_dir / "redis.conf"), "--port", str(self.port)]

    def _probe(self) -> bool:
        try:
            # "-LOADING ..." while the append-only file is replayed after a restart.
            return self.command("PING", timeout=1.0) == b"+PONG"
        except OSError:
            return False
