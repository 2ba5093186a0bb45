"""The payoff protocol's runner, end to end at its smoke size (CI's check of the runner).

``python benchmarks/payoff.py --tier smoke`` runs every arm for one seed on the embedded stack
(real kernels compiled by the local forge, real training, FLOPs counted by the meter) and
records the result. This test checks that the runner did what the protocol says — every arm
ran, the baselines are built as described, the accounting adds up — not that growth paid off:
at this size it is not meant to (docs/results.md gives the real tiers' numbers).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(1200)

REPO = Path(__file__).resolve().parents[2]
ARMS = {
    "static-small",
    "static-large",
    "static-final",
    "static-flop-matched",
    "esper-heuristic",
    "esper-random",
    "esper-gnn",
}


@pytest.fixture(scope="module")
def result(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    root = tmp_path_factory.mktemp("payoff")
    out = root / "payoff_smoke.json"
    environment = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(root),
        "LANG": "C.UTF-8",
        "ESPER_HOME": str(root / "esper-home"),
        "MPLBACKEND": "Agg",
    }
    environment.update({k: v for k, v in os.environ.items() if k.startswith("COVERAGE_")})
    completed = subprocess.run(
        [
            sys.executable,
            str(REPO / "benchmarks" / "payoff.py"),
            "--tier",
            "smoke",
            "--work-dir",
            str(root / "work"),
            "--out",
            str(out),
        ],
        env=environment,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=1100,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr[-4000:]
    assert out.with_suffix(".png").stat().st_size > 0
    return json.loads(out.read_text(encoding="utf-8"))


def _runs(result: dict[str, object]) -> dict[str, dict[str, object]]:
    runs = result["results"]["runs"]
    assert isinstance(runs, list)
    return {str(run["arm"]): run for run in runs}


def test_every_arm_ran_once_with_its_compute_counted(result: dict[str, object]) -> None:
    runs = _runs(result)
    assert set(runs) == ARMS
    assert len(result["results"]["runs"]) == len(ARMS)
    for arm, run in runs.items():
        assert 0.0 <= run["test_accuracy"] <= 1.0, arm
        assert run["train_flops"] > 0, arm
        assert run["inference_flops"] > 0, arm
        assert run["curve"], arm
        flops = [point[1] for point in run["curve"]]
        assert flops == sorted(flops), arm
        assert flops[-1] <= run["train_flops"], arm


def test_the_static_arms_are_built_as_the_protocol_says(result: dict[str, object]) -> None:
    runs = _runs(result)
    small, large = runs["static-small"], runs["static-large"]
    heuristic = runs["esper-heuristic"]
    assert large["params"] > small["params"]
    assert large["train_flops"] > small["train_flops"]
    # static-final is the heuristic's final architecture: the host plus every seed kept.
    assert runs["static-final"]["params"] == small["params"] + heuristic["seed_params_kept"]
    assert runs["static-final"]["seeds_built_in"] == heuristic["seeds_kept"]
    # The FLOP-matched host is of the host's family and costs about what Esper's run did.
    matched = runs["static-flop-matched"]
    assert matched["width"] >= 1
    assert 0.5 < matched["train_flops"] / heuristic["train_flops"] < 2.0


def test_random_grafting_draws_the_heuristics_count(result: dict[str, object]) -> None:
    runs = _runs(result)
    heuristic, random = runs["esper-heuristic"], runs["esper-random"]
    assert len(random["scheduled_steps"]) == heuristic["germinations"]
    assert random["germinations"] <= heuristic["germinations"]


def test_the_summary_judges_the_target_with_its_gaps(result: dict[str, object]) -> None:
    summary = result["results"]
    assert set(summary["arms"]) == ARMS
    target = summary["target"]
    for arm in ("esper-heuristic", "esper-gnn"):
        verdict = target[arm]
        assert isinstance(verdict["met"], bool)
        assert verdict["params_share_of_large"] > 0
        assert verdict["train_flops_share_of_large"] > 0
    assert 0 < summary["val_threshold"] < 1
    assert summary["table"]
