"""Shared pieces of the benchmarks: the result writer, percentiles, tables and a real Urza.

Every benchmark records its numbers with :func:`write_result`, which adds what is needed to
judge and reproduce them: the machine, the OS, the Python, package and server versions, the git
revision, the UTC time and the exact command line. :class:`UrzaServer` runs ``esper urza serve``
in a separate process, so the load generator never shares a GIL with the server it measures.

The scripts run as ``python benchmarks/<name>.py``; this module puts the repository root on
``sys.path`` so they can use the throwaway servers of ``tests/servers``.
"""

from __future__ import annotations

import contextlib
import ctypes
import datetime as dt
import importlib.metadata
import json
import math
import os
import platform
import secrets
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import httpx
from scipy import stats

REPO_ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIR = REPO_ROOT / "benchmarks" / "results"

if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from tests.servers import (  # noqa: E402 - needs the repository root on sys.path first
    BinaryNotFoundError,
    PostgresServer,
    S3Server,
    ServerError,
)
from tests.servers.postgres import find_pg_bin_dir  # noqa: E402
from tests.servers.s3 import find_minio  # noqa: E402

__all__ = [
    "REPO_ROOT",
    "RESULTS_DIR",
    "BinaryNotFoundError",
    "PostgresServer",
    "S3Server",
    "ServerError",
    "UrzaServer",
    "environment",
    "filesystem_of",
    "format_table",
    "git_revision",
    "interval",
    "log",
    "machine",
    "package_versions",
    "percentile",
    "process_cpu_seconds",
    "process_tree_cpu_seconds",
    "server_versions",
    "summarize",
    "temporary_directory",
    "write_result",
]

PACKAGES = (
    "esper",
    "sqlalchemy",
    "psycopg",
    "fastapi",
    "starlette",
    "uvicorn",
    "pydantic",
    "httpx",
    "boto3",
    "botocore",
    "alembic",
)
"""Packages whose versions every result records."""

_PR_SET_PDEATHSIG = 1
_STARTED = time.perf_counter()


# -- statistics --------------------------------------------------------------------------------


def interval(values: Sequence[float]) -> dict[str, float]:
    """Return the mean and its 95% Student-t confidence interval.

    Args:
        values: The samples (one per seed, or per run).

    Returns:
        ``mean``, ``low``, ``high`` and ``n``.
    """
    mean = statistics.fmean(values)
    if len(values) < 2:
        return {"mean": mean, "low": mean, "high": mean, "n": len(values)}
    half = float(stats.t.ppf(0.975, len(values) - 1)) * statistics.stdev(values)
    half /= math.sqrt(len(values))
    return {"mean": mean, "low": mean - half, "high": mean + half, "n": len(values)}


def percentile(values: Sequence[float], q: float) -> float:
    """Return the q-th percentile with linear interpolation (numpy's default method).

    Args:
        values: The samples (any order, at least one).
        q: The percentile, 0 to 100.

    Returns:
        The interpolated value.

    Raises:
        ValueError: When ``values`` is empty or ``q`` is outside 0..100.
    """
    if not values:
        raise ValueError("percentile of no values")
    if not 0.0 <= q <= 100.0:
        raise ValueError(f"percentile must be within 0..100, got {q}")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100.0
    low = math.floor(rank)
    high = math.ceil(rank)
    if low == high:
        return ordered[low]
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def summarize(values: Sequence[float], digits: int = 3) -> dict[str, float | int]:
    """Summarize samples: count, mean, min, p50, p90, p99 and max.

    Args:
        values: The samples (at least one).
        digits: Decimal places kept in the summary.

    Returns:
        The summary.
    """
    return {
        "count": len(values),
        "mean": round(sum(values) / len(values), digits),
        "min": round(min(values), digits),
        "p50": round(percentile(values, 50), digits),
        "p90": round(percentile(values, 90), digits),
        "p99": round(percentile(values, 99), digits),
        "max": round(max(values), digits),
    }


def format_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """Render rows as a plain-text table with right-aligned columns.

    Args:
        headers: Column titles.
        rows: One sequence of cells per row (rendered with ``str``).

    Returns:
        The table, one line per row, under a header and a rule.
    """
    cells = [[str(cell) for cell in row] for row in rows]
    widths = [len(title) for title in headers]
    for row in cells:
        for index, cell in enumerate(row):
            widths[index] = max(widths[index], len(cell))
    lines = ["  ".join(title.rjust(width) for title, width in zip(headers, widths, strict=True))]
    lines.append("  ".join("-" * width for width in widths))
    lines.extend(
        "  ".join(cell.rjust(width) for cell, width in zip(row, widths, strict=True))
        for row in cells
    )
    return "\n".join(lines)


# -- the environment of a result ---------------------------------------------------------------


def _cpu_model() -> str | None:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or None


def _memory_bytes() -> int | None:
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    return None


def _os_release() -> str | None:
    with contextlib.suppress(OSError):
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                return line.split("=", 1)[1].strip().strip('"')
    return None


def filesystem_of(path: Path) -> str | None:
    """Return the filesystem type holding ``path`` (from ``/proc/mounts``), e.g. ``ext4``.

    Args:
        path: Any existing path.

    Returns:
        The type of the longest mount point containing the path, or None when unknown.
    """
    resolved = path.resolve()
    best: tuple[int, str] | None = None
    with contextlib.suppress(OSError):
        for line in Path("/proc/mounts").read_text().splitlines():
            parts = line.split()
            if len(parts) < 3:
                continue
            mount = Path(parts[1].replace("\\040", " "))
            if (resolved == mount or mount in resolved.parents) and (
                best is None or len(str(mount)) > best[0]
            ):
                best = (len(str(mount)), parts[2])
    return best[1] if best is not None else None


def machine() -> dict[str, Any]:
    """Describe the machine: CPU model, cores, memory and load.

    Returns:
        A JSON-ready mapping.
    """
    return {
        "cpu_model": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)),
        "memory_bytes": _memory_bytes(),
        "load_average_1_5_15": [round(value, 2) for value in os.getloadavg()],
        "hostname": socket.gethostname(),
        "temp_dir": tempfile.gettempdir(),
        "temp_dir_filesystem": filesystem_of(Path(tempfile.gettempdir())),
    }


def package_versions(extra: Sequence[str] = ()) -> dict[str, str | None]:
    """Return installed versions of the recorded packages (None for a missing one).

    Args:
        extra: Further distributions to include.

    Returns:
        Distribution name to version.
    """
    versions: dict[str, str | None] = {}
    for name in (*PACKAGES, *extra):
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def _first_line_of(command: Sequence[str]) -> str:
    try:
        result = subprocess.run(
            list(command), capture_output=True, text=True, check=False, timeout=30
        )
    except (OSError, subprocess.TimeoutExpired) as error:
        return f"unavailable: {error}"
    lines = (result.stdout or result.stderr).strip().splitlines()
    return lines[0] if lines else f"unavailable: exit status {result.returncode}"


def server_versions() -> dict[str, str]:
    """Return ``postgres --version`` and ``minio --version`` of the binaries the servers use.

    Returns:
        Server name to its version line (``unavailable: ...`` when the binary is missing).
    """
    versions: dict[str, str] = {}
    try:
        versions["postgres"] = _first_line_of([str(find_pg_bin_dir() / "postgres"), "--version"])
    except BinaryNotFoundError as error:
        versions["postgres"] = f"unavailable: {error}"
    try:
        minio = find_minio()
        # A MinIO built from its Go module says DEVELOPMENT; its path names the module version.
        versions["minio"] = f"{_first_line_of([str(minio), '--version'])} ({minio})"
    except BinaryNotFoundError as error:
        versions["minio"] = f"unavailable: {error}"
    return versions


def _git(*args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, check=True, timeout=30
    ).stdout


def git_revision() -> dict[str, Any]:
    """Return the checkout's revision and whether the code differs from it.

    Returns:
        ``commit`` (``git rev-parse HEAD``), ``dirty`` (tracked files modified, or untracked
        Python files under ``src``, ``benchmarks`` or ``tests``) and the first such paths.
    """
    try:
        commit = _git("rev-parse", "HEAD").strip()
        changed = _git("status", "--porcelain", "--untracked-files=all").splitlines()
    except (OSError, subprocess.CalledProcessError, subprocess.TimeoutExpired):
        return {"commit": None, "dirty": None, "dirty_paths": []}
    paths = [
        line[3:]
        for line in changed
        if not line.startswith("??")
        or (line[3:].endswith(".py") and line[3:].startswith(("src/", "benchmarks/", "tests/")))
    ]
    return {"commit": commit, "dirty": bool(paths), "dirty_paths": paths[:20]}


def environment() -> dict[str, Any]:
    """Describe everything a result depends on besides the code's own numbers.

    Returns:
        Machine, OS, Python, packages, servers, git revision, UTC time and the command line.
    """
    return {
        "timestamp_utc": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "command": shlex.join(sys.argv),
        "python_executable": sys.executable,
        "cwd": os.getcwd(),
        "git": git_revision(),
        "machine": machine(),
        "os": {
            "platform": platform.platform(),
            "release": _os_release(),
            "kernel": platform.release(),
        },
        "python": platform.python_version(),
        "packages": package_versions(),
        "servers": server_versions(),
    }


def write_result(
    name: str,
    parameters: Mapping[str, Any],
    results: Any,
    *,
    out: Path | None = None,
    env: Mapping[str, Any] | None = None,
) -> Path:
    """Write a benchmark's result as JSON (``benchmarks/results/<name>.json`` by default).

    Args:
        name: The benchmark's name.
        parameters: The settings it ran with.
        results: Its measurements (JSON-ready).
        out: Where to write instead of the default path.
        env: The environment, when captured earlier (e.g. before the run, for the load
            average); captured now when None.

    Returns:
        The path written.
    """
    path = out if out is not None else RESULTS_DIR / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    document = {
        "benchmark": name,
        "environment": dict(env) if env is not None else environment(),
        "load_average_after_1_5_15": [round(value, 2) for value in os.getloadavg()],
        "parameters": dict(parameters),
        "results": results,
    }
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(json.dumps(document, indent=2, sort_keys=False) + "\n")
    temporary.replace(path)
    return path


# -- a real Urza in its own process -----------------------------------------------------------


def process_cpu_seconds(pid: int) -> float:
    """Return the user + system CPU seconds a process has used so far.

    Args:
        pid: The process id.

    Returns:
        Seconds of CPU time (from ``/proc/<pid>/stat``).
    """
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    # After the command name: state is field 3, utime field 14, stime field 15 (1-based).
    ticks = int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


def process_tree_cpu_seconds(root: int) -> float:
    """Return the CPU seconds used so far by a process and all its descendants.

    For PostgreSQL: the postmaster and its backends (which run in sessions of their own, so a
    process group would miss them). Each live process contributes its own CPU time plus that of
    its children that exited and were reaped (``cutime``/``cstime``), so backends that come and
    go (a connection pool closing overflow connections) are still counted.

    Args:
        root: The top process's id.

    Returns:
        Seconds of CPU time.
    """
    parents: dict[int, int] = {}
    ticks: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        # After the command name: ppid is field 4, utime/stime/cutime/cstime 14-17 (1-based).
        parents[int(entry.name)] = int(fields[1])
        ticks[int(entry.name)] = sum(int(value) for value in fields[11:15])
    total = 0
    for pid, tick in ticks.items():
        ancestor = pid
        while ancestor not in (root, 0, 1) and ancestor in parents:
            ancestor = parents[ancestor]
        if ancestor == root:
            total += tick
    return total / os.sysconf("SC_CLK_TCK")


def _esper_command() -> list[str]:
    script = Path(sys.executable).parent / "esper"
    if script.is_file() and os.access(script, os.X_OK):
        return [str(script)]
    found = shutil.which("esper")
    if found is not None:
        return [found]
    return [sys.executable, "-c", "from esper.cli import main; main()"]


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _parent_death_signal() -> Any:
    if not sys.platform.startswith("linux"):
        return None
    libc = ctypes.CDLL(None, use_errno=True)

    def preexec() -> None:
        libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)

    return preexec


@dataclass
class UrzaServer:
    """``esper urza serve`` in its own process on a free loopback port.

    Configured only through ``ESPER_URZA_*`` variables (inherited ones are dropped), with a
    random write token, ``ESPER_HOME`` in a private directory and the server's output in
    ``urza.log`` there. Use it as a context manager: entering starts it and waits for
    ``/readyz``; leaving stops it (SIGTERM, then SIGKILL) and removes the directory.

    Attributes:
        settings: Extra ``ESPER_URZA_*`` variables (database URL, blob store, ...).
        startup_timeout: Seconds to wait for ``/readyz``.
        token: The bearer token writes need.
        home: The private directory (``ESPER_HOME``).
        port: The port, once started.
    """

    settings: Mapping[str, str]
    startup_timeout: float = 60.0
    token: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    home: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="esper-bench-urza-")))
    port: int | None = None
    _process: subprocess.Popen[bytes] | None = field(default=None, init=False, repr=False)

    @property
    def url(self) -> str:
        """The server's base URL."""
        if self.port is None:
            raise ServerError("urza: no port before start()")
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        """The server's process id."""
        if self._process is None:
            raise ServerError("urza: not running")
        return self._process.pid

    @property
    def log_path(self) -> Path:
        """The server's combined stdout/stderr (uvicorn's access log included)."""
        return self.home / "urza.log"

    def cpu_seconds(self) -> float:
        """Return the CPU seconds the server process has used so far."""
        return process_cpu_seconds(self.pid)

    def _environment(self, port: int) -> dict[str, str]:
        inherited = {
            key: value for key, value in os.environ.items() if not key.startswith("ESPER_")
        }
        return {
            **inherited,
            "ESPER_HOME": str(self.home),
            "ESPER_URZA_HOST": "127.0.0.1",
            "ESPER_URZA_PORT": str(port),
            "ESPER_URZA_AUTH_TOKEN": self.token,
            **self.settings,
        }

    def start(self) -> None:
        """Start the server and wait until ``/readyz`` answers 200.

        Raises:
            ServerError: When it exits during startup (three ports are tried) or is not ready
                within ``startup_timeout``; the message carries the log's tail.
        """
        for _ in range(3):
            port = _free_port()
            with self.log_path.open("ab") as output:
                output.write(f"=== start on port {port}\n".encode())
                output.flush()
                self._process = subprocess.Popen(
                    [*_esper_command(), "urza", "serve"],
                    stdin=subprocess.DEVNULL,
                    stdout=output,
                    stderr=subprocess.STDOUT,
                    env=self._environment(port),
                    cwd=self.home,
                    start_new_session=True,
                    preexec_fn=_parent_death_signal(),  # noqa: PLW1509 - only sets a signal
                )
            self.port = port
            if self._wait_ready():
                return
        raise ServerError(f"urza exited during startup; log {self.log_path}:\n{self._log_tail()}")

    def _wait_ready(self) -> bool:
        assert self._process is not None
        deadline = time.monotonic() + self.startup_timeout
        with httpx.Client(timeout=2.0) as client:
            while True:
                if self._process.poll() is not None:
                    self._process = None
                    return False
                with contextlib.suppress(httpx.HTTPError):
                    if client.get(f"{self.url}/readyz").status_code == 200:
                        return True
                if time.monotonic() >= deadline:
                    self.stop()
                    raise ServerError(
                        f"urza was not ready within {self.startup_timeout:.0f}s; log "
                        f"{self.log_path}:\n{self._log_tail()}"
                    )
                time.sleep(0.1)

    def _log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return ""

    def stop(self) -> None:
        """Stop the server: SIGTERM (uvicorn's graceful shutdown), SIGKILL after 15 s."""
        process, self._process = self._process, None
        if process is None:
            return
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=15)

    def close(self) -> None:
        """Stop the server and delete its directory (kept when ``ESPER_KEEP_SERVER_DIRS=1``)."""
        try:
            self.stop()
        finally:
            if os.environ.get("ESPER_KEEP_SERVER_DIRS") != "1":
                shutil.rmtree(self.home, ignore_errors=True)

    def __enter__(self) -> Self:
        """Start the server; clean up if the start fails."""
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
        traceback: TracebackType | None,
    ) -> None:
        """Stop the server and delete its directory."""
        self.close()


def log(message: str) -> None:
    """Print a progress line to stderr with the elapsed time since the script started.

    Args:
        message: The line.
    """
    print(f"[{time.perf_counter() - _STARTED:7.1f}s] {message}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def temporary_directory(prefix: str) -> Iterator[Path]:
    """Yield a private temporary directory, removed afterwards (kept with ESPER_KEEP_SERVER_DIRS=1).

    Args:
        prefix: Prefix of the directory's name.

    Yields:
        The directory.
    """
    path = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield path
    finally:
        if os.environ.get("ESPER_KEEP_SERVER_DIRS") != "1":
            shutil.rmtree(path, ignore_errors=True)
