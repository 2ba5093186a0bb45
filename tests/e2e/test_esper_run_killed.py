"""Fault: the training process is killed (SIGKILL) after it has grown a seed; ``--resume`` recovers.

Three real ``esper run`` processes of ``configs/run-kill.yaml`` share one ``ESPER_HOME`` (so the
kernel is compiled once): an uninterrupted run; a run killed with SIGKILL as soon as an epoch
checkpoint holds a grown seed and its optimizer group, long before the run would end; and
``esper run --resume`` of the killed run's directory. The resumed run must report exactly what
the uninterrupted one did — the grown model's curve (accuracy and FLOPs at every boundary), its
lifecycle, seeds, final accuracy and parameters, and the baseline — which holds only if the
checkpoint restored the grown morphology, its weights and the optimizer's state of host and seed
(a fresh optimizer or a missing seed would change every later step).
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from esper.contracts.report import RunReport
from esper.contracts.seed import SeedStage
from esper.tolaria.job import CHECKPOINT_FILE
from esper.tolaria.trainer import TrainerCheckpoint, load_checkpoint
from tests.support.cli_environment import cli_environment
from tests.support.reliability import note_faults, note_lost, note_served

pytestmark = [pytest.mark.timeout(1800), pytest.mark.reliability("training-killed")]

CONFIG = Path(__file__).parent / "configs" / "run-kill.yaml"
RUN_TIMEOUT = 900.0
KILL_AFTER_EPOCHS = 3
"""Epochs the killed run's checkpoint must hold (the seed germinates at step 40, in epoch 1)."""


def _command(*arguments: str) -> list[str]:
    return [sys.executable, "-m", "esper", "run", str(CONFIG), *arguments]


def _run(root: Path, *arguments: str) -> None:
    result = subprocess.run(
        _command(*arguments),
        env=cli_environment(root),
        cwd=root,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
        check=False,
    )
    assert result.returncode == 0, f"esper run failed:\n{result.stdout}\n{result.stderr}"


def _grown_checkpoint(path: Path) -> TrainerCheckpoint | None:
    """The checkpoint if it holds enough epochs and a grown seed with its optimizer group."""
    if not path.is_file():
        return None
    checkpoint = load_checkpoint(path)
    controller = checkpoint["controller"]
    grown = bool(controller["seed_groups"])
    if checkpoint["epochs_done"] >= KILL_AFTER_EPOCHS and grown:
        return checkpoint
    return None


def _kill_once_grown(root: Path, run_dir: Path) -> TrainerCheckpoint:
    process = subprocess.Popen(
        _command("--out", str(run_dir)),
        env=cli_environment(root),
        cwd=root,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + RUN_TIMEOUT
    checkpoint = None
    while checkpoint is None:
        assert process.poll() is None, "the run ended before it could be killed"
        assert time.monotonic() < deadline, "no grown checkpoint within the time limit"
        checkpoint = _grown_checkpoint(run_dir / CHECKPOINT_FILE)
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    note_faults()
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == -signal.SIGKILL, stderr
    return checkpoint


def _report(run_dir: Path) -> RunReport:
    return RunReport.model_validate_json((run_dir / "report.json").read_text(encoding="utf-8"))


def test_a_killed_run_resumes_to_exactly_the_uninterrupted_result(tmp_path: Path) -> None:
    whole_dir = tmp_path / "whole"
    _run(tmp_path, "--out", str(whole_dir))
    whole = _report(whole_dir)

    killed_dir = tmp_path / "killed"
    at_kill = _kill_once_grown(tmp_path, killed_dir)
    # Killed mid-run: no report, and the checkpoint is from well before the end.
    assert not (killed_dir / "report.json").exists()
    assert at_kill["epochs_done"] < whole.spec.schedule.epochs
    assert at_kill["train_flops"] > 0

    _run(tmp_path, "--resume", str(killed_dir))
    resumed = _report(killed_dir)
    note_served(whole.spec.schedule.epochs - at_kill["epochs_done"])
    # Lost: curve points (the grown model's epochs) that differ from the uninterrupted run's.
    note_lost(
        sum(a != b for a, b in zip(resumed.grown.curve, whole.grown.curve, strict=False))
        + abs(len(resumed.grown.curve) - len(whole.grown.curve))
    )

    stages = {mark.target for mark in whole.lifecycle}
    assert SeedStage.GERMINATED in stages
    assert resumed.grown.curve == whole.grown.curve
    assert resumed.grown.test_accuracy == whole.grown.test_accuracy
    assert resumed.grown.test_loss == whole.grown.test_loss
    assert resumed.grown.params == whole.grown.params
    assert resumed.grown.train_flops == whole.grown.train_flops
    # Marks and decisions name the decision (and so the run) in their reasons and ids, which
    # differ between the two runs; what happened, where and when must not.
    assert [(m.step, m.slot_id, m.source, m.target, m.kernel_id) for m in resumed.lifecycle] == [
        (m.step, m.slot_id, m.source, m.target, m.kernel_id) for m in whole.lifecycle
    ]
    assert [(d.step, d.action, d.slot_id, d.kernel_id) for d in resumed.decisions] == [
        (d.step, d.action, d.slot_id, d.kernel_id) for d in whole.decisions
    ]
    assert resumed.seeds == whole.seeds
    assert resumed.baseline is not None
    assert whole.baseline is not None
    assert resumed.baseline.test_accuracy == whole.baseline.test_accuracy
    assert resumed.baseline.curve == whole.baseline.curve
