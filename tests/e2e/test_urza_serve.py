"""User story: ``esper urza serve`` starts on the embedded default with no configuration.

The real ``esper`` console script of the environment runs as a subprocess whose environment
names only ``ESPER_HOME`` (and a free ``ESPER_URZA_PORT``); the test talks to it over HTTP with
Urza's client, stops it with a signal and looks at what it left under ``ESPER_HOME``.
"""

from __future__ import annotations

import hashlib
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import yaml
from typer.testing import CliRunner

from esper import cli
from esper.contracts.blueprint import BlueprintIR
from esper.contracts.kernel import KernelPhase, KernelTarget
from esper.contracts.urza_api import PhaseChange
from esper.urza.client import UrzaClient
from esper.urza.database import head_revision, make_engine
from tests.servers import free_port

pytestmark = pytest.mark.timeout(180)

REPO = Path(__file__).resolve().parents[2]
MANIFEST = REPO / "examples" / "manifests" / "blueprint-residual-mlp.yaml"
ESPER = Path(sys.executable).parent / "esper"
READY_TIMEOUT = 90.0
EXIT_TIMEOUT = 30.0


def _environment(home: Path, **variables: str) -> dict[str, str]:
    """A bare environment: no ESPER_* besides the ones given, HOME inside the test."""
    environment = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(home),
        "LANG": "C.UTF-8",
        "ESPER_HOME": str(home / "esper"),
        **variables,
    }
    if "PYTHONPATH" in os.environ:  # the subprocess runs the same code as the tests
        environment["PYTHONPATH"] = os.environ["PYTHONPATH"]
    return environment


@dataclass
class Served:
    process: subprocess.Popen[bytes]
    url: str
    home: Path
    log: Path

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    assert ESPER.is_file(), f"the esper console script is missing at {ESPER}"
    port = free_port()
    log = tmp_path / "serve.log"
    env = _environment(tmp_path, ESPER_URZA_PORT=str(port))
    with log.open("wb") as sink:
        process = subprocess.Popen(
            [str(ESPER), "urza", "serve"],
            env=env,
            cwd=tmp_path,
            stdin=subprocess.DEVNULL,
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    running = Served(process, f"http://127.0.0.1:{port}", tmp_path / "esper", log)
    try:
        _wait_ready(running)
        yield running
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(EXIT_TIMEOUT)


def _wait_ready(served: Served) -> None:
    deadline = time.monotonic() + READY_TIMEOUT
    while True:
        if served.process.poll() is not None:
            pytest.fail(
                f"esper urza serve exited with {served.process.returncode}:\n{served.log_text()}"
            )
        try:
            if httpx.get(f"{served.url}/readyz", timeout=2.0).status_code == 200:
                return
        except httpx.TransportError:
            pass
        if time.monotonic() >= deadline:
            pytest.fail(f"Urza was not ready within {READY_TIMEOUT:.0f}s:\n{served.log_text()}")
        time.sleep(0.1)


@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_serve_starts_on_the_embedded_default_with_no_configuration(
    served: Served, stop_signal: signal.Signals
) -> None:
    manifest = yaml.safe_load(MANIFEST.read_text(encoding="utf-8"))
    ir = BlueprintIR.model_validate(manifest["spec"]["ir"])
    target = KernelTarget.model_validate(manifest["spec"]["targets"][0])

    with UrzaClient(served.url, retries=0) as client:
        assert client.ready()
        record = client.submit_blueprint(ir)
        assert record.hash == ir.canonical_hash()
        assert client.get_blueprint(record.hash).ir == ir
        assert [item.hash for item in client.list_blueprints().items] == [record.hash]

        kernel = client.create_kernel(record.hash, target)
        client.change_phase(kernel.id, PhaseChange(phase=KernelPhase.COMPILING))
        bundle = b"an embedded kernel bundle"
        stored = client.upload_artifact(kernel.id, bundle)
        assert client.download_artifact(kernel.id) == bundle

    served.process.send_signal(stop_signal)
    returncode = served.process.wait(EXIT_TIMEOUT)
    log = served.log_text()
    # uvicorn shuts down gracefully, then re-raises the signal so the exit status tells why.
    assert returncode in (0, -stop_signal), log
    assert "Urza on http://127.0.0.1:" in log
    assert "Finished server process" in log
    assert "Traceback" not in log

    database = served.home / "urza.sqlite"
    assert database.is_file()
    with sqlite3.connect(database) as connection:
        hashes = [row[0] for row in connection.execute("SELECT hash FROM blueprints")]
        phases = [row[0] for row in connection.execute("SELECT phase FROM kernels")]
    assert hashes == [record.hash]
    assert phases == ["Compiling"]
    digest = hashlib.sha256(bundle).hexdigest()
    blob = served.home / "artifacts" / "sha256" / digest[:2] / digest
    assert blob.read_bytes() == bundle
    assert stored.artifact_uri == blob.resolve().as_uri()


def test_serve_refuses_a_non_loopback_address_without_a_token(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # In-process (no server starts, so a subprocess would only add its start-up time).
    _bare_environment(monkeypatch, ESPER_HOME=str(tmp_path / "esper"))
    result = CliRunner().invoke(
        cli.app, ["urza", "serve", "--host", "0.0.0.0", "--port", str(free_port())]
    )
    _assert_one_line_failure(
        result.exit_code, result.stdout, result.stderr, "ESPER_URZA_AUTH_TOKEN"
    )
    assert "loopback" in result.stderr
    assert not (tmp_path / "esper" / "urza.sqlite").exists()


def _bare_environment(monkeypatch: pytest.MonkeyPatch, **variables: str) -> None:
    for name in list(os.environ):
        if name.startswith("ESPER_"):
            monkeypatch.delenv(name)
    for name, value in variables.items():
        monkeypatch.setenv(name, value)


def _migrate(tmp_path: Path, database_url: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(ESPER), "urza", "migrate"],
        env=_environment(tmp_path, ESPER_URZA_DATABASE_URL=database_url),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_migrate_brings_a_fresh_sqlite_file_to_the_head_revision(tmp_path: Path) -> None:
    database = tmp_path / "fresh" / "urza.sqlite"
    url = f"sqlite:///{database}"
    head = head_revision(make_engine("sqlite://"))

    first = _migrate(tmp_path, url)
    assert first.returncode == 0, first.stderr
    assert first.stdout.strip() == f"Urza's database is at revision {head}."
    with sqlite3.connect(database) as connection:
        assert connection.execute("SELECT version_num FROM alembic_version").fetchall() == [(head,)]
        tables = {row[0] for row in connection.execute("SELECT name FROM sqlite_master")}
    assert {"blueprints", "kernels", "kernel_tags", "compile_records"} <= tables

    again = _migrate(tmp_path, url)
    assert again.returncode == 0, again.stderr
    assert again.stdout.strip() == first.stdout.strip()


BAD_DATABASE_URLS = [
    pytest.param("mysql://urza:secret@127.0.0.1/urza", "'mysql' is not supported", id="backend"),
    pytest.param("not a database url", "database URL", id="unparsable"),
]


@pytest.mark.parametrize(("database_url", "fragment"), BAD_DATABASE_URLS)
def test_migrate_with_a_bad_database_url_fails_with_one_line(
    tmp_path: Path, database_url: str, fragment: str
) -> None:
    result = _migrate(tmp_path, database_url)
    _assert_one_line_failure(result.returncode, result.stdout, result.stderr, fragment)


@pytest.mark.parametrize(
    ("database_url", "fragment"),
    [
        pytest.param("postgresql+psycopg2://urza:secret@127.0.0.1/urza", "psycopg2", id="driver"),
        pytest.param(
            "postgresql+psycopg://urza:secret@127.0.0.1:1/urza", "127.0.0.1", id="unreachable"
        ),
        pytest.param("sqlite:////proc/no-such-dir/urza.sqlite", "/proc/no-such-dir", id="no-dir"),
    ],
)
def test_migrate_refuses_more_bad_databases_with_one_line(
    monkeypatch: pytest.MonkeyPatch, database_url: str, fragment: str
) -> None:
    # The same command in-process (cheaper than a subprocess per case).
    _bare_environment(monkeypatch, ESPER_URZA_DATABASE_URL=database_url)
    result = CliRunner().invoke(cli.app, ["urza", "migrate"])
    escaped = result.exception
    assert escaped is None or isinstance(escaped, SystemExit), f"uncaught {escaped!r}"
    _assert_one_line_failure(result.exit_code, result.stdout, result.stderr, fragment)


def test_migrate_waits_for_an_unreachable_database_then_fails_with_one_line(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    url = "postgresql+psycopg://urza:secret@127.0.0.1:1/urza"
    _bare_environment(monkeypatch, ESPER_URZA_DATABASE_URL=url)
    result = CliRunner().invoke(cli.app, ["urza", "migrate", "--wait", "3"])
    _assert_one_line_failure(result.exit_code, result.stdout, result.stderr, "cannot be reached")
    assert result.stderr.strip().endswith("(waited 3 s)")


def _assert_one_line_failure(returncode: int, stdout: str, stderr: str, fragment: str) -> None:
    assert returncode == 1, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("esper: error: ")
    assert fragment in lines[0]
    assert "secret" not in stderr
    assert stdout == ""
