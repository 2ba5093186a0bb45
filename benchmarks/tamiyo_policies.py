"""Tamiyo's policies on held-out tasks: the GNN against the heuristic, random grafting and none.

Every arm runs the same tasks (:data:`esper.simic.tasks.HELD_OUT_TASKS`, never drawn by Simic's
training) with the same seeds, host initialisation, data order, budget, lifecycle timing,
blueprints and kernels; only the policy differs. ``none`` never grows, ``random`` grafts at the
heuristic's plateaus with uniform legal choices, ``gnn`` is the packaged network (or
``--checkpoint``) acting greedily. Per task and arm: mean and 95% confidence interval (Student's
t over the seeds) of the final test accuracy and of the parameter count, and of accuracy per
1,000 parameters; the same over all tasks; and, paired by task and seed, each arm's test
accuracy minus that of no growth and of the heuristic (points, 95% CI). Nothing is tuned on
the test split: the policies see only validation accuracy, and this script changes no setting
after seeing its results.

The decision rule (docs/simic.md): the GNN becomes the default policy only if its accuracy per
parameter beats the heuristic's over all held-out runs *and* its mean accuracy is within
0.5 points of the heuristic's or above — without the second part, never growing would win.

Rerun: ``python benchmarks/tamiyo_policies.py --seeds 5 --out
benchmarks/results/tamiyo_policies_cpu.json`` (CPU; about 10 minutes on 2 cores).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from _common import RESULTS_DIR, format_table, interval, log, write_result

from esper.contracts.run import PolicyKind
from esper.simic.rewards import RewardWeights
from esper.simic.tasks import HELD_OUT_TASKS, Task
from esper.simic.train import local_runner

ARMS = (PolicyKind.NONE, PolicyKind.HEURISTIC, PolicyKind.RANDOM, PolicyKind.GNN)
ACCURACY_TOLERANCE_POINTS = 0.5


def _summary(runs: list[dict[str, float]]) -> dict[str, dict[str, float]]:
    return {
        "test_accuracy": interval([run["test_accuracy"] for run in runs]),
        "params": interval([run["params"] for run in runs]),
        "accuracy_per_kparam": interval([run["accuracy_per_kparam"] for run in runs]),
        "germinations": interval([run["germinations"] for run in runs]),
    }


def _paired(runs: list[dict[str, object]], reference: PolicyKind) -> dict[str, object]:
    """Per arm, the test-accuracy difference to ``reference`` on the same task and seed."""
    by_key = {(r["task"], r["seed"], r["arm"]): float(r["test_accuracy"]) for r in runs}
    paired: dict[str, object] = {}
    for arm in ARMS:
        if arm is reference:
            continue
        gaps = [
            100 * (value - by_key[(task, seed, reference.value)])
            for (task, seed, name), value in by_key.items()
            if name == arm.value
        ]
        paired[arm.value] = interval(gaps)
    return paired


def _cell(summary: dict[str, float], *, scale: float, digits: int) -> str:
    mean, low, high = (scale * summary[key] for key in ("mean", "low", "high"))
    return f"{mean:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"


def _verdict(overall: dict[str, dict[str, dict[str, float]]]) -> dict[str, object]:
    gnn, heuristic = overall[PolicyKind.GNN.value], overall[PolicyKind.HEURISTIC.value]
    per_param = gnn["accuracy_per_kparam"]["mean"] > heuristic["accuracy_per_kparam"]["mean"]
    gap_points = 100 * (gnn["test_accuracy"]["mean"] - heuristic["test_accuracy"]["mean"])
    return {
        "gnn_beats_heuristic_on_accuracy_per_parameter": per_param,
        "gnn_minus_heuristic_accuracy_points": gap_points,
        "gnn_becomes_default": per_param and gap_points >= -ACCURACY_TOLERANCE_POINTS,
    }


def _plot(summary: dict[str, dict[str, dict[str, dict[str, float]]]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = list(summary)
    figure, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    width = 0.8 / len(ARMS)
    for column, metric, label in (
        (0, "test_accuracy", "test accuracy"),
        (1, "params", "parameters"),
    ):
        axis = axes[column]
        for index, arm in enumerate(ARMS):
            means = [summary[t][arm.value][metric]["mean"] for t in tasks]
            errors = [
                summary[t][arm.value][metric]["mean"] - summary[t][arm.value][metric]["low"]
                for t in tasks
            ]
            positions = [i + (index - (len(ARMS) - 1) / 2) * width for i in range(len(tasks))]
            axis.bar(positions, means, width, yerr=errors, capsize=3, label=arm.value)
        axis.set_xticks(range(len(tasks)), tasks, rotation=12, fontsize=7)
        axis.set_ylabel(f"{label} (mean, 95% CI)")
    axes[0].legend(fontsize=8)
    figure.suptitle("Tamiyo's policies on held-out tasks")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the evaluation and record it.

    Args:
        argv: Command-line arguments.

    Returns:
        The exit status.
    """
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--checkpoint", type=Path, default=None, help="default: the packaged one")
    parser.add_argument("--work-dir", type=Path, default=None, help="default: a temporary one")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "tamiyo_policies_cpu.json")
    args = parser.parse_args(argv)
    checkpoint = None if args.checkpoint is None else str(args.checkpoint.resolve())
    runs: list[dict[str, object]] = []
    with tempfile.TemporaryDirectory(prefix="tamiyo-eval-") as temporary:
        work_dir = args.work_dir or Path(temporary)
        with local_runner(work_dir, RewardWeights()) as runner:
            for base in HELD_OUT_TASKS:
                for seed in range(args.seeds):
                    task: Task = dataclasses.replace(base, seed=seed)
                    for arm in ARMS:
                        started = time.perf_counter()
                        report = runner.run_report(
                            task,
                            arm,
                            None,
                            checkpoint=checkpoint if arm is PolicyKind.GNN else None,
                        )
                        grown = report.grown
                        runs.append(
                            {
                                "task": dataclasses.replace(base, seed=0).name,
                                "seed": seed,
                                "arm": arm.value,
                                "test_accuracy": grown.test_accuracy,
                                "params": grown.params,
                                "accuracy_per_kparam": 1000 * grown.test_accuracy / grown.params,
                                "germinations": sum(
                                    1 for d in report.decisions if d.action.value == "germinate"
                                ),
                                "seeds_kept": [
                                    s.blueprint_name
                                    for s in report.seeds
                                    if s.final_stage.value == "FOSSILIZED"
                                ],
                                "seconds": time.perf_counter() - started,
                            }
                        )
                        log(
                            f"{task.name} {arm.value}: test accuracy {grown.test_accuracy:.4f}, "
                            f"{grown.params} parameters"
                        )
    tasks = sorted({str(run["task"]) for run in runs}, key=[t.name for t in HELD_OUT_TASKS].index)
    summary = {
        task: {
            arm.value: _summary([r for r in runs if r["task"] == task and r["arm"] == arm.value])
            for arm in ARMS
        }
        for task in tasks
    }
    overall = {arm.value: _summary([r for r in runs if r["arm"] == arm.value]) for arm in ARMS}
    verdict = _verdict(overall)
    paired = {
        f"points_vs_{reference.value}": _paired(runs, reference)
        for reference in (PolicyKind.NONE, PolicyKind.HEURISTIC)
    }
    rows = [
        [
            task,
            arm,
            _cell(cell["test_accuracy"], scale=100, digits=2),
            _cell(cell["params"], scale=1, digits=0),
            f"{cell['accuracy_per_kparam']['mean']:.4f}",
            f"{cell['germinations']['mean']:.1f}",
        ]
        for task, arms in [*summary.items(), ("all", overall)]
        for arm, cell in arms.items()
    ]
    table = format_table(
        ["task", "arm", "test acc % [95% CI]", "params [95% CI]", "acc/kparam", "grafts"], rows
    )
    print(table)
    for name, arms in paired.items():
        print(name, {arm: _cell(cell, scale=1, digits=2) for arm, cell in arms.items()})
    print(verdict)
    plot = args.out.with_suffix(".png")
    _plot(summary, plot)
    write_result(
        "tamiyo_policies",
        {
            "seeds": args.seeds,
            "tasks": tasks,
            "arms": [arm.value for arm in ARMS],
            "checkpoint": checkpoint or "packaged",
        },
        {
            "runs": runs,
            "per_task": summary,
            "overall": overall,
            "verdict": verdict,
            "table": table.splitlines(),
            "plot": plot.name,
        },
        out=args.out,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
