"""User story: ``esper up``, POST a built-in blueprint, and a Validated kernel appears by itself.

The real ``esper`` console script runs as a subprocess on the embedded default (SQLite and a
local directory under ``ESPER_HOME``, the in-process bus) with a short forge sweep and a tiny
target. The test only talks to it with Urza's client, stops it with a signal, and checks that
it exits and leaves no worker process behind (every process it starts inherits a marker
variable, so leftovers are found wherever they were reparented).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

from esper.blueprints.bundle import read_bundle
from esper.blueprints.library import builtin
from esper.contracts.kernel import KernelArtifact, KernelPhase, KernelTarget, Verdict, kernel_id
from esper.urza.client import UrzaClient, UrzaUnavailableError
from tests.integration.phase1.support import (
    MARKER_VARIABLE,
    kill_marked,
    marked_processes,
    wait_for,
)
from tests.servers import free_port

pytestmark = pytest.mark.timeout(900)

ESPER = Path(sys.executable).parent / "esper"
TARGET = "cpu:fp32:C=16:b=1,4"
READY_TIMEOUT = 120.0
PIPELINE_TIMEOUT = 600.0
EXIT_TIMEOUT = 60.0
TERMINAL = frozenset({KernelPhase.VALIDATED, KernelPhase.REJECTED, KernelPhase.FAILED})


@dataclass
class Up:
    """A running ``esper up``."""

    process: subprocess.Popen[bytes]
    url: str
    marker: str
    log: Path

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def workers(self) -> list[psutil.Process]:
        """Processes it started (they carry its marker), not itself."""
        return [item for item in marked_processes(self.marker) if item.pid != self.process.pid]

    def stop(self, sig: signal.Signals) -> int:
        """Send ``sig`` and wait (bounded) for the process to exit; return its status."""
        self.process.send_signal(sig)
        try:
            return self.process.wait(EXIT_TIMEOUT)
        except subprocess.TimeoutExpired:
            pytest.fail(f"esper up did not exit within {EXIT_TIMEOUT:.0f}s of {sig.name}")


@pytest.fixture
def up(tmp_path: Path) -> Iterator[Up]:
    assert ESPER.is_file(), f"the esper console script is missing at {ESPER}"
    port = free_port()
    marker = uuid.uuid4().hex
    environment = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(tmp_path),
        "LANG": "C.UTF-8",
        "ESPER_HOME": str(tmp_path / ".esper"),
        "ESPER_URZA_PORT": str(port),
        "ESPER_FORGE_SWEEP_SECONDS": "2",
        "ESPER_FORGE_TARGETS": TARGET,
        "ESPER_FORGE_COMPILE_CACHE": "false",
        "ESPER_FORGE_BACKOFF_SECONDS": "1",
        MARKER_VARIABLE: marker,
    }
    if "PYTHONPATH" in os.environ:  # run the esper the test session runs
        environment["PYTHONPATH"] = os.environ["PYTHONPATH"]
    log = tmp_path / "up.log"
    with log.open("wb") as sink:
        process = subprocess.Popen(
            [str(ESPER), "up"],
            env=environment,
            cwd=tmp_path,
            stdin=subprocess.DEVNULL,
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    running = Up(process, f"http://127.0.0.1:{port}", marker, log)
    try:
        with UrzaClient(running.url, retries=0, timeout=5.0) as probe:

            def ready(_: None) -> bool:
                if process.poll() is not None:
                    pytest.fail(f"esper up exited ({process.returncode}):\n{running.log_text()}")
                return probe.ready()

            wait_for(lambda: None, ready, timeout=READY_TIMEOUT, what="esper up to answer")
        yield running
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(EXIT_TIMEOUT)
        kill_marked(marker)


def _kernel(client: UrzaClient, blueprint_hash: str) -> KernelArtifact | None:
    items = client.list_kernels(blueprint_hash=blueprint_hash).items
    return items[0] if items else None


def test_up_turns_a_posted_blueprint_into_a_validated_kernel(up: Up) -> None:
    with UrzaClient(up.url, retries=2) as client:
        record = client.submit_blueprint(builtin("low-rank-adapter"))
        try:
            kernel = wait_for(
                lambda: _kernel(client, record.hash),
                lambda item: item is not None and item.phase in TERMINAL,
                timeout=PIPELINE_TIMEOUT,
                what="a kernel with a verdict",
                interval=1.0,
            )
        except TimeoutError as error:
            pytest.fail(f"{error}\n{up.log_text()}")
        assert kernel is not None
        assert kernel.id == kernel_id(record.hash, KernelTarget.parse(TARGET))
        assert kernel.phase is KernelPhase.VALIDATED, (kernel.error, up.log_text())
        assert kernel.benchmark is not None
        assert kernel.benchmark.verdict is Verdict.VALIDATED
        assert kernel.benchmark.function_preserving
        assert [item.batch_size for item in kernel.benchmark.latency] == [1, 4]
        bundle = read_bundle(client.download_artifact(kernel.id), kernel.sha256)
        assert bundle.manifest.kernel_id == kernel.id
        assert bundle.ir() == builtin("low-rank-adapter")

    # The validate worker exits once it has reported; then nothing but esper up is left.
    wait_for(up.workers, lambda workers: not workers, timeout=60, what="the workers to exit")

    status = up.stop(signal.SIGINT)

    assert status == 0, f"exit status {status}:\n{up.log_text()}"
    assert marked_processes(up.marker) == []
    assert (up.log.parent / ".esper" / "urza.sqlite").is_file()


def test_up_stopped_mid_compile_leaves_no_worker_behind(up: Up) -> None:
    with UrzaClient(up.url, retries=2) as client:
        record = client.submit_blueprint(builtin("bottleneck-mlp"))
        wait_for(
            lambda: (_kernel(client, record.hash), up.workers()),
            lambda state: state[0] is not None
            and state[0].phase is KernelPhase.COMPILING
            and bool(state[1]),
            timeout=READY_TIMEOUT,
            what="a worker compiling the kernel",
            interval=0.5,
        )

    status = up.stop(signal.SIGTERM)

    assert status is not None
    try:
        wait_for(up.workers, lambda workers: not workers, timeout=10, what="no worker left")
    except TimeoutError as error:
        pytest.fail(f"esper up exited ({status}) but left its compile worker running: {error}")
    with pytest.raises(UrzaUnavailableError), UrzaClient(up.url, retries=0) as client:
        client.get_blueprint(record.hash)
