"""User story: ``esper simic train`` trains Tamiyo's network, and ``esper run`` can use it.

One short real training run (``python -m esper simic train`` as a subprocess, on the embedded
stack in a temporary work directory): one imitation task run by the heuristic, one PPO round of
one task run by the network, each a real Esper run with kernels compiled by the local forge.
The test reads what it left: the checkpoint (loaded weights-only; trained, so it differs from
the initial network), the JSON-lines log (both phases, rewards, the entropy of every head), and
the config it used. Bad options are refused before anything starts.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from esper.simic.ppo import HEADS
from esper.simic.train import LOG_FILE, SimicConfig
from esper.tamiyo import gnn
from tests.support.cli_environment import cli_environment

pytestmark = pytest.mark.timeout(1200)


def _simic(root: Path, *arguments: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "esper", "simic", "train", *arguments],
        env=cli_environment(root),
        cwd=root,
        capture_output=True,
        text=True,
        timeout=1100,
        check=False,
    )


def test_a_short_training_run_writes_a_trained_checkpoint_and_its_log(tmp_path: Path) -> None:
    out = tmp_path / "tamiyo.pt"
    work = tmp_path / "work"
    result = _simic(
        tmp_path,
        "--out",
        str(out),
        "--work-dir",
        str(work),
        "--imitation-tasks",
        "1",
        "--iterations",
        "1",
        "--episodes-per-iteration",
        "1",
        "--seed",
        "7",
    )
    assert result.returncode == 0, result.stderr[-4000:]
    assert f"checkpoint: {out}" in result.stdout

    trained = gnn.load(out)
    torch.manual_seed(7)
    initial = gnn.TamiyoNet(trained.config)
    changed = [
        name
        for name, tensor in trained.state_dict().items()
        if not torch.equal(tensor, initial.state_dict()[name])
    ]
    assert changed, "training left every weight at its initial value"

    records = [json.loads(line) for line in (work / LOG_FILE).read_text().splitlines()]
    assert [record["phase"] for record in records] == ["imitation", "ppo"]
    for record in records:
        assert record["episodes"] == 1
        assert record["transitions"] > 0
        assert set(record["entropy"]) == set(HEADS)
        assert all(value >= 0.0 for value in record["entropy"].values())
        assert record["entropy"]["kind"] > 0.0  # wait and germinate were both legal somewhere
    assert records[1]["passes"] >= 1
    config = json.loads((work / "simic-config.json").read_text())
    assert config["seed"] == 7
    assert config["iterations"] == 1
    assert config["ppo"] == json.loads(json.dumps(SimicConfig().ppo.__dict__))


def test_nothing_to_train_is_refused(tmp_path: Path) -> None:
    result = _simic(
        tmp_path,
        "--out",
        str(tmp_path / "net.pt"),
        "--work-dir",
        str(tmp_path / "work"),
        "--imitation-tasks",
        "0",
        "--iterations",
        "0",
    )
    assert result.returncode == 1
    assert "nothing to train: imitation_tasks and iterations are both 0" in result.stderr
    assert not (tmp_path / "work").exists()
    assert not (tmp_path / "net.pt").exists()
