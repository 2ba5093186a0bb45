"""Stand-ins for the forge's unit tests: a fake worker program, a fake Urza, gated runners."""

from __future__ import annotations

import stat
import threading
from dataclasses import dataclass, field
from pathlib import Path

from esper.contracts.kernel import KernelArtifact, KernelPhase, KernelTarget, kernel_id
from esper.contracts.urza_api import PhaseChange
from esper.forge.runner import UnitKind, UnitOutcome, WorkUnit
from esper.urza.client import UrzaConflictError

BLUEPRINT_HASH = "ab" * 32
TARGET = KernelTarget.parse("cpu:fp32:C=16:b=1,4")
KERNEL_ID = kernel_id(BLUEPRINT_HASH, TARGET)
SHA = "cd" * 32

FAKE_WORKER = """#!/bin/sh
# A stand-in for `python -m esper ...`: behaves as FAKE_WORKER_MODE says and keeps notes
# (its arguments, its environment, its attempt number) in FAKE_WORKER_STATE.
state="$FAKE_WORKER_STATE"
printf '%s\\n' "$*" >> "$state/argv"
printf '%s\\n' "$ESPER_URZA_URL" >> "$state/url"
attempt=$(( $(cat "$state/count" 2>/dev/null || echo 0) + 1 ))
echo "$attempt" > "$state/count"
case "$FAKE_WORKER_MODE" in
  ok) echo "$KERNEL Compiled"; exit 0 ;;
  fail) echo "compiling..."; echo "esper: error: boom on attempt $attempt"; exit 3 ;;
  flaky) if [ "$attempt" -lt 2 ]; then echo "esper: error: flaky"; exit 1; fi; exit 0 ;;
  silent) exit 2 ;;
  signal) kill -9 $$ ;;
  hang)
    sleep 300 &
    echo $! > "$state/child"
    echo $$ > "$state/leader"
    wait ;;
esac
exit 99
"""


def install_fake_worker(directory: Path) -> Path:
    """Write the fake worker program (it stands in for the Python interpreter)."""
    path = directory / "fake-python"
    path.write_text(FAKE_WORKER)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    (directory / "state").mkdir()
    return path


def artifact(phase: KernelPhase, error: str | None = None) -> KernelArtifact:
    """The fake kernel in a phase (with artifact fields where the phase needs them)."""
    stored = phase in (KernelPhase.COMPILED, KernelPhase.VALIDATING)
    return KernelArtifact(
        id=KERNEL_ID,
        blueprint_hash=BLUEPRINT_HASH,
        target=TARGET,
        phase=phase,
        artifact_uri="file:///artifacts/x" if stored else None,
        sha256=SHA if stored else None,
        size_bytes=10 if stored else None,
        error=error,
    )


def unit(kind: UnitKind = UnitKind.COMPILE, kernel: str = KERNEL_ID) -> WorkUnit:
    return WorkUnit(kind, kernel, BLUEPRINT_HASH, TARGET)


@dataclass
class FakeUrza:
    """Just what the runner asks of Urza, with the phase table enforced.

    With ``worker_state`` set it also plays the part of a real compile worker: each attempt
    the fake worker program made moves the kernel from Failed back to Pending and on to
    Compiling, as ``compile_and_publish`` does when it starts.
    """

    kernel: KernelArtifact
    worker_state: Path | None = None
    conflict: bool = False
    changes: list[PhaseChange] = field(default_factory=list)
    history: list[KernelPhase] = field(default_factory=list)
    _attempts_seen: int = 0

    def get_kernel(self, identifier: str) -> KernelArtifact:
        assert identifier == self.kernel.id
        if self.worker_state is not None:
            counter = self.worker_state / "count"
            attempts = int(counter.read_text()) if counter.exists() else 0
            while self._attempts_seen < attempts:
                self._attempts_seen += 1
                if self.kernel.phase is KernelPhase.FAILED:
                    self._move(KernelPhase.PENDING)
                if self.kernel.phase is KernelPhase.PENDING:
                    self._move(KernelPhase.COMPILING)
        return self.kernel

    def change_phase(self, identifier: str, change: PhaseChange) -> KernelArtifact:
        assert identifier == self.kernel.id
        if self.conflict:
            raise UrzaConflictError("kernel moved on", 409)
        self.changes.append(change)
        self._move(change.phase, change.error)
        return self.kernel

    def _move(self, phase: KernelPhase, error: str | None = None) -> None:
        self.kernel = self.kernel.moved_to(phase, error=error)
        self.history.append(phase)


class GatedRunner:
    """Records units; each waits for the gate (bounded), then ends as told."""

    def __init__(self, *, succeed: bool = False, gated: bool = True) -> None:
        self.succeed = succeed
        self.gate = threading.Event()
        if not gated:
            self.gate.set()
        self.started: list[WorkUnit] = []
        self._lock = threading.Lock()

    def run(self, work: WorkUnit) -> UnitOutcome:
        with self._lock:
            self.started.append(work)
        assert self.gate.wait(30), "the test never opened the gate"
        if self.succeed:
            return UnitOutcome(work, succeeded=True, attempts=1, error=None)
        return UnitOutcome(work, succeeded=False, attempts=1, error="stub")

    def units(self) -> list[tuple[UnitKind, str]]:
        with self._lock:
            return [(item.kind, item.kernel_id) for item in self.started]


class CrashingRunner:
    """A runner whose run raises (a bug in the runner must not wedge the forge)."""

    def run(self, work: WorkUnit) -> UnitOutcome:
        raise RuntimeError(f"runner bug on {work.kernel_id}")
