"""Process management shared by the throwaway test servers.

A :class:`ServerProcess` owns one server process, a private temporary directory (data, logs) and a
loopback TCP port. The first :meth:`ServerProcess.start` picks a free port; later starts reuse the
port and the data directory, so tests can stop and restart a server to simulate outages.

Every server runs in its own session (process group). Stopping sends the server's graceful
shutdown signal to the leader, escalates to ``SIGKILL`` on the whole group after a bounded wait and
always sweeps the group before reaping the leader, so no helper process (Redis AOF rewrites,
PostgreSQL backends) outlives a stop. On Linux the server also gets a parent-death signal, so it
dies with the test process even when pytest itself is killed; an ``atexit`` hook closes servers
that a crashed session never finalized.
"""

from __future__ import annotations

import abc
import atexit
import contextlib
import ctypes
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import weakref
from collections.abc import Callable, Mapping
from pathlib import Path
from types import TracebackType
from typing import ClassVar, Self

#: Seconds between two readiness probes or two checks for a process exit.
POLL_INTERVAL = 0.05
#: How many first-start attempts are made, each on a new free port (another process may grab a
#: port between the moment we find it free and the moment the server binds it).
PORT_ATTEMPTS = 3
#: Keep temporary directories (data and logs) after close when this variable is "1".
KEEP_DIRS_ENV = "ESPER_KEEP_SERVER_DIRS"

_PR_SET_PDEATHSIG = 1
_LOG_TAIL_LINES = 40

_live_servers: weakref.WeakSet[ServerProcess] = weakref.WeakSet()


class ServerError(RuntimeError):
    """A throwaway server failed to start, to become ready or to stop."""


class BinaryNotFoundError(ServerError):
    """A server binary is not installed where the fixtures look for it."""


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that is free right now.

    Returns:
        The port number. Another process may take it before the caller binds it; the servers
        retry their first start on a new port when that happens.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_until(
    condition: Callable[[], bool], *, timeout: float, description: str, interval: float = 0.05
) -> None:
    """Poll ``condition`` until it returns True.

    Args:
        condition: A cheap check; exceptions it raises propagate.
        timeout: Seconds before giving up.
        description: What is awaited, for the error message.
        interval: Seconds between two checks.

    Raises:
        TimeoutError: The condition was still false after ``timeout`` seconds.
    """
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {description}")
        time.sleep(interval)


def _set_parent_death_signal(sig: signal.Signals) -> Callable[[], None] | None:
    """Build a ``preexec_fn`` that makes the child receive ``sig`` when its parent dies (Linux)."""
    if not sys.platform.startswith("linux"):
        return None
    libc = ctypes.CDLL(None, use_errno=True)

    def preexec() -> None:
        libc.prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0)

    return preexec


def _close_live_servers() -> None:
    for server in list(_live_servers):
        with contextlib.suppress(ServerError, OSError):
            server.close()


atexit.register(_close_live_servers)


class ServerProcess(abc.ABC):
    """A server process on a loopback port with a private temporary directory.

    Subclasses describe the server (command line, environment, one-time preparation, readiness
    probe); this class starts, probes, stops and cleans up. Instances are context managers:
    entering starts the server, leaving closes it.

    Attributes:
        base_dir: Private temporary directory holding the data directory and ``server.log``.
        port: The TCP port on 127.0.0.1; None until the first start.
        startup_timeout: Seconds a start may take before it fails.
        shutdown_timeout: Seconds a graceful stop may take before the group is killed.
    """

    #: Short name used in directory names and messages.
    name: ClassVar[str] = "server"
    #: Signal that asks the server for a graceful shutdown.
    stop_signal: ClassVar[signal.Signals] = signal.SIGTERM
    #: Signal the server receives when the test process dies.
    death_signal: ClassVar[signal.Signals] = signal.SIGTERM

    def __init__(self, *, startup_timeout: float = 60.0, shutdown_timeout: float = 30.0) -> None:
        """Create the server object; nothing is started or created on disk yet.

        Args:
            startup_timeout: Seconds a start may take before it fails.
            shutdown_timeout: Seconds a graceful stop may take before the group is killed.
        """
        self.startup_timeout = startup_timeout
        self.shutdown_timeout = shutdown_timeout
        self.port: int | None = None
        self._base_dir: Path | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._prepared = False
        self._closed = False
        self._starts = 0

    # -- hooks for subclasses ------------------------------------------------------------------

    @abc.abstractmethod
    def _command(self) -> list[str]:
        """Return the server's command line for the current port and directories."""

    @abc.abstractmethod
    def _probe(self) -> bool:
        """Try once to talk to the server; return True when it serves requests."""

    def _prepare(self) -> None:  # noqa: B027 - optional hook, empty by default
        """Create the data directory and anything else needed once, before the first start."""

    def _after_ready(self) -> None:  # noqa: B027 - optional hook, empty by default
        """Run after every successful start (e.g. create a default bucket)."""

    def _env(self) -> Mapping[str, str]:
        """Return the environment of the server process."""
        return {
            "PATH": os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin"),
            "LANG": "C",
            "LC_ALL": "C",
            "TZ": "UTC",
            "HOME": str(self.base_dir),
        }

    def _run_as(self) -> tuple[int, int] | None:
        """Return the (uid, gid) to run the server as, or None for the current user."""
        return None

    def _make_base_dir(self) -> Path:
        """Create the private temporary directory."""
        return Path(tempfile.mkdtemp(prefix=f"esper-{self.name}-"))

    # -- public API ----------------------------------------------------------------------------

    @property
    def base_dir(self) -> Path:
        """The private temporary directory, created on first use."""
        if self._base_dir is None:
            self._base_dir = self._make_base_dir()
        return self._base_dir

    @property
    def log_path(self) -> Path:
        """The server's combined stdout/stderr log (appended to across restarts)."""
        return self.base_dir / "server.log"

    @property
    def is_running(self) -> bool:
        """Whether the server process is alive (it may still be starting up)."""
        return self._proc is not None and not self._has_exited()

    @property
    def pid(self) -> int | None:
        """The server process id, or None when stopped."""
        return self._proc.pid if self._proc is not None else None

    def start(self) -> None:
        """Start the server and wait until it serves requests.

        The first start initializes the data directory and picks a free port; later starts
        (after :meth:`stop` or :meth:`kill`) reuse both.

        Raises:
            ServerError: The server is closed or already running, exited during startup or did
                not become ready within ``startup_timeout``; the message carries the log tail.
        """
        if self._closed:
            raise ServerError(f"{self.name}: start() after close()")
        if self._proc is not None:
            if self.is_running:
                raise ServerError(f"{self.name}: start() while already running (pid {self.pid})")
            self._reap()
        _live_servers.add(self)
        if not self._prepared:
            self._prepare()
            self._prepared = True
        first_start = self.port is None
        attempts = PORT_ATTEMPTS if first_start else 1
        for attempt in range(1, attempts + 1):
            if first_start:
                self.port = free_port()
            self._spawn()
            try:
                self._wait_ready()
            except _ExitedDuringStartupError as exc:
                self._reap()
                if attempt == attempts:
                    raise ServerError(str(exc)) from None
                continue
            except BaseException:
                self._terminate()
                raise
            break
        self._after_ready()

    def ensure_running(self) -> None:
        """Start the server unless it is running (e.g. after a test stopped it)."""
        if not self.is_running:
            self.start()

    def stop(self) -> None:
        """Stop the server gracefully, keeping its port and data for a later :meth:`start`.

        Sends :attr:`stop_signal` and waits up to ``shutdown_timeout`` seconds; then kills the
        whole process group. Does nothing when the server is not running.
        """
        self._terminate()

    def kill(self) -> None:
        """Kill the server's process group with SIGKILL (a crash), keeping port and data."""
        if self._proc is None:
            return
        self._signal_group(signal.SIGKILL)
        self._reap()

    def restart(self) -> None:
        """Stop the server and start it again on the same port with the same data."""
        self.stop()
        self.start()

    def close(self) -> None:
        """Stop the server and delete its temporary directory (unless kept, see below).

        Set ``ESPER_KEEP_SERVER_DIRS=1`` to keep the directory (data and ``server.log``) for
        debugging. Calling close twice is harmless.
        """
        if self._closed:
            return
        self._closed = True
        try:
            self._terminate()
        finally:
            _live_servers.discard(self)
            if self._base_dir is not None and os.environ.get(KEEP_DIRS_ENV) != "1":
                shutil.rmtree(self._base_dir, ignore_errors=True)

    def log_tail(self, lines: int = _LOG_TAIL_LINES) -> str:
        """Return the last lines of the server log (empty when there is none)."""
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def __enter__(self) -> Self:
        """Start the server; close it again if the start fails."""
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Close the server."""
        self.close()

    def __repr__(self) -> str:
        """Describe the server for test output."""
        state = "running" if self.is_running else "stopped"
        return f"<{type(self).__name__} {state} port={self.port} dir={self._base_dir}>"

    # -- internals -----------------------------------------------------------------------------

    def _spawn(self) -> None:
        self._starts += 1
        run_as = self._run_as()
        command = self._command()
        with self.log_path.open("ab") as log:
            log.write(f"\n=== start #{self._starts} on port {self.port}: {command}\n".encode())
            log.flush()
            self._proc = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.base_dir,
                env=dict(self._env()),
                start_new_session=True,
                preexec_fn=_set_parent_death_signal(self.death_signal),  # noqa: PLW1509
                # Dropping privileges (root only): no supplementary groups are kept.
                user=run_as[0] if run_as is not None else None,
                group=run_as[1] if run_as is not None else None,
                extra_groups=[] if run_as is not None else None,
            )

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.startup_timeout
        while True:
            if self._has_exited():
                raise _ExitedDuringStartupError(
                    f"{self.name} exited during startup on port {self.port} "
                    f"(exit status {self._exit_status()}); log {self.log_path}:\n"
                    f"{self.log_tail()}"
                )
            if self._probe():
                return
            if time.monotonic() >= deadline:
                raise ServerError(
                    f"{self.name} did not become ready on port {self.port} within "
                    f"{self.startup_timeout:.0f}s; log {self.log_path}:\n{self.log_tail()}"
                )
            time.sleep(POLL_INTERVAL)

    def _has_exited(self) -> bool:
        """Whether the leader exited; it stays a zombie (not reaped) so its pgid stays reserved."""
        assert self._proc is not None
        if self._proc.returncode is not None:
            return True
        try:
            info = os.waitid(os.P_PID, self._proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            return True
        return info is not None

    def _exit_status(self) -> int | None:
        assert self._proc is not None
        if self._proc.returncode is not None:
            return self._proc.returncode
        info = os.waitid(os.P_PID, self._proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        return info.si_status if info is not None else None

    def _signal_group(self, sig: signal.Signals) -> None:
        assert self._proc is not None
        if self._proc.returncode is not None:
            return  # reaped: the pgid may belong to someone else now
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self._proc.pid, sig)

    def _terminate(self) -> None:
        if self._proc is None:
            return
        if not self._has_exited():
            with contextlib.suppress(ProcessLookupError):
                self._proc.send_signal(self.stop_signal)
            try:
                wait_until(
                    self._has_exited,
                    timeout=self.shutdown_timeout,
                    description=f"{self.name} to shut down",
                    interval=POLL_INTERVAL,
                )
            except TimeoutError:
                self._signal_group(signal.SIGKILL)
        self._reap()

    def _reap(self) -> None:
        """Kill stragglers in the process group, then reap the leader."""
        if self._proc is None:
            return
        self._signal_group(signal.SIGKILL)
        try:
            self._proc.wait(timeout=self.shutdown_timeout)
        except subprocess.TimeoutExpired as exc:
            raise ServerError(
                f"{self.name} (pid {self._proc.pid}) survived SIGKILL for "
                f"{self.shutdown_timeout:.0f}s"
            ) from exc
        self._proc = None


class _ExitedDuringStartupError(ServerError):
    """The server process exited before it became ready (e.g. its port was taken)."""
