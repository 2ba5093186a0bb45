"""The morphogenetic payoff protocol: does growing beat training a fixed model?

Arms, all with the same optimizer, schedule, data order, evaluation cadence and host
initialisation (one job, :func:`esper.tolaria.job.run_job`, for every arm):

- ``static-small``: the seed host, never grown;
- ``static-large``: the reference, a wider host;
- ``static-final``: Esper's final grown architecture (heuristic arm, same seed) trained from
  scratch, every seed built in from the first step;
- ``static-flop-matched``: the host's family at the width whose training costs what the heuristic
  arm's runs cost (mean over seeds), one width for every seed;
- ``esper-heuristic``, ``esper-gnn``: Esper growing with Tamiyo's heuristic and with its packaged
  network;
- ``esper-random``: the heuristic's graft count for the same seed, at random boundaries, in
  random legal slots with random kernels.

Per arm, over the seeds: test accuracy (mean and 95% Student-t interval), final parameters,
inference FLOPs per example, total training FLOPs (``esper.tolaria.flops``: every step's forward
and backward, culled seeds and the controller's evaluations and decisions included), the
training FLOPs at which the validation curve first reaches static-large's final validation
accuracy minus one point, and the training wall-clock. The target (docs/results.md) is judged
at the end. Nothing is tuned on the test split: the policies and the FLOPs-to-target read
validation accuracy only, and no setting here was changed after seeing test results.

Tiers: ``cpu`` (MNIST-1D, MLP host, 3 seeds, meant to take under two minutes on a CPU once
kernels are compiled), ``smoke`` (the same, smaller: CI runs it to check the runner, not the
target) and ``h100`` (Fashion-MNIST with a small ResNet host, on one GPU).

Rerun: ``python benchmarks/payoff.py --tier cpu`` (writes
``benchmarks/results/payoff_cpu.json`` and ``.png``).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from _common import RESULTS_DIR, format_table, interval, log, write_result
from payoff_arms import ScheduledRandomPolicy, flop_matched_width, write_plan
from payoff_tiers import TIERS, Tier

from esper.blueprints.library import builtin
from esper.config import ForgeSettings, UrzaSettings
from esper.contracts.report import ModelResult, RunReport
from esper.contracts.run import HostSpec, PolicyKind
from esper.contracts.seed import SeedStage
from esper.data import load_dataset
from esper.embedded import RunStack, embedded_stack
from esper.tamiyo.policy import Policy
from esper.tolaria.job import run_job

ESPER_ARMS = ("esper-heuristic", "esper-gnn")
ARMS = (
    "static-small",
    "static-large",
    "static-final",
    "static-flop-matched",
    "esper-heuristic",
    "esper-random",
    "esper-gnn",
)
KEPT_STAGES = (SeedStage.FOSSILIZED, SeedStage.PROBATION, SeedStage.BLENDING)
"""Seeds that are part of the final model (a blending seed is built in at full weight)."""


@dataclass
class Runner:
    """Runs one arm's job on the embedded stack.

    Attributes:
        tier: The tier.
        stack: Urza and the forge.
        work_dir: Where the runs and the dataset cache go.
    """

    tier: Tier
    stack: RunStack
    work_dir: Path
    count: int = 0

    def run(
        self,
        arm: str,
        seed: int,
        kind: PolicyKind,
        *,
        host: HostSpec | None = None,
        policy: Policy | None = None,
        epochs: int | None = None,
    ) -> tuple[RunReport, float]:
        """Run one job and return its report and its wall-clock seconds.

        Args:
            arm: The arm (names the run).
            seed: The seed.
            kind: The spec's policy kind.
            host: Another host than the tier's.
            policy: A policy instance overriding the kind's.
            epochs: Another number of epochs than the tier's.

        Returns:
            The report and the job's seconds, kernel waits included.
        """
        self.count += 1
        run_id = f"{arm}-s{seed}-{self.count:03d}"
        spec = self.tier.run_spec(kind, seed=seed, host=host, epochs=epochs)
        started = time.perf_counter()
        report, _files = run_job(
            spec,
            run_id=run_id,
            run_dir=self.work_dir / "runs" / run_id,
            client=self.stack.client,
            blueprints=[builtin(name) for name in self.tier.blueprints],
            cache_dir=self.work_dir / "data",
            prepare=self.stack.prepare,
            policy=policy,
        )
        seconds = time.perf_counter() - started
        log(
            f"{arm} seed {seed}: test accuracy {report.grown.test_accuracy:.4f}, "
            f"{report.grown.params} parameters, {report.grown.train_flops:.3e} training FLOPs, "
            f"{seconds:.1f} s"
        )
        return report, seconds

    def data_shape(self, seed: int) -> tuple[tuple[int, ...], int]:
        """Return one example's shape and the number of classes."""
        spec = self.tier.run_spec(PolicyKind.NONE, seed=seed)
        data = load_dataset(spec.dataset, seed, self.work_dir / "data")
        return tuple(data.input_shape), data.num_classes


def _record(arm: str, seed: int, result: ModelResult, seconds: float) -> dict[str, object]:
    return {
        "arm": arm,
        "seed": seed,
        "test_accuracy": result.test_accuracy,
        "params": result.params,
        "inference_flops": result.inference_flops,
        "train_flops": result.train_flops,
        "train_seconds": result.train_seconds,
        "job_seconds": seconds,
        "final_val_accuracy": result.curve[-1].val_accuracy if result.curve else None,
        "curve": [[point.step, point.train_flops, point.val_accuracy] for point in result.curve],
    }


def _grown(report: RunReport) -> dict[str, object]:
    germinations = sum(1 for d in report.decisions if d.action.value == "germinate")
    kept = [s for s in report.seeds if s.final_stage in KEPT_STAGES]
    return {
        "germinations": germinations,
        "seeds_kept": [s.blueprint_name for s in kept],
        "seed_params_kept": sum(s.params for s in kept),
    }


def _boundaries(tier: Tier, steps: int) -> list[int]:
    """Decision boundaries that leave a seed its whole lifecycle before the end."""
    last = steps - 3 * tier.lifecycle_steps
    interval_steps = tier.decision_interval
    return list(range(interval_steps, last + 1, interval_steps))


def _static_final_host(runner: Runner, report: RunReport, seed: int, plan: Path) -> HostSpec:
    shape, classes = runner.data_shape(seed)
    grafts = []
    for summary in report.seeds:
        if summary.final_stage in KEPT_STAGES:
            kernel = runner.stack.client.get_kernel(summary.kernel_id)
            grafts.append((summary.slot_id, summary.blueprint_name, kernel.target.bindings))
    write_plan(plan, host=runner.tier.host, input_shape=shape, num_classes=classes, grafts=grafts)
    return HostSpec(factory="payoff_arms:grown_host", kwargs={"plan": str(plan)})


def run_protocol(tier: Tier, seeds: int, work_dir: Path) -> list[dict[str, object]]:
    """Run every arm for every seed and return one record per run.

    Args:
        tier: The tier.
        seeds: Seeds per arm (0, 1, ...).
        work_dir: The embedded stack's database and artifacts, the runs and the data cache.

    Returns:
        The records.
    """
    records: list[dict[str, object]] = []
    with _stack(work_dir) as stack:
        runner = Runner(tier, stack, work_dir)
        # Compiles and validates every kernel before anything is measured, so no arm trains
        # while the forge competes for the CPU; the kernels stay in Urza for every later run.
        _, seconds = runner.run("warmup", 0, PolicyKind.HEURISTIC, epochs=1)
        log(f"kernels compiled and validated in {seconds:.1f} s")
        heuristic_flops: list[float] = []
        for seed in range(seeds):
            # The same host, initialisation and data order as every arm, in a job of its own,
            # so that its wall-clock is measured like the other static arms'.
            small, seconds = runner.run("static-small", seed, PolicyKind.NONE)
            records.append(_record("static-small", seed, small.grown, seconds))

            report, seconds = runner.run("esper-heuristic", seed, PolicyKind.HEURISTIC)
            heuristic = _record("esper-heuristic", seed, report.grown, seconds) | _grown(report)
            records.append(heuristic)
            heuristic_flops.append(report.grown.train_flops / report.grown.steps)

            count = int(heuristic["germinations"])
            random_policy = ScheduledRandomPolicy(
                count, _boundaries(tier, report.grown.steps), seed=seed
            )
            grown, seconds = runner.run(
                "esper-random", seed, PolicyKind.RANDOM, policy=random_policy
            )
            records.append(
                _record("esper-random", seed, grown.grown, seconds)
                | _grown(grown)
                | {"scheduled_steps": random_policy.times}
            )

            grown, seconds = runner.run("esper-gnn", seed, PolicyKind.GNN)
            records.append(_record("esper-gnn", seed, grown.grown, seconds) | _grown(grown))

            large, seconds = runner.run("static-large", seed, PolicyKind.NONE, host=tier.large)
            records.append(_record("static-large", seed, large.grown, seconds))

            plan = work_dir / f"static-final-s{seed}.json"
            final_host = _static_final_host(runner, report, seed, plan)
            final, seconds = runner.run("static-final", seed, PolicyKind.NONE, host=final_host)
            records.append(
                _record("static-final", seed, final.grown, seconds)
                | {"seeds_built_in": _grown(report)["seeds_kept"]}
            )

        shape, classes = runner.data_shape(0)
        width, width_flops = flop_matched_width(
            tier.host,
            tier.width_key,
            target_per_step=statistics.fmean(heuristic_flops),
            input_shape=shape,
            num_classes=classes,
            batch=tier.batch_size,
            widths=range(*tier.widths),
        )
        log(f"FLOP-matched width {width} ({width_flops:.3e} FLOPs a step)")
        matched = HostSpec(zoo=tier.host.zoo, kwargs={**tier.host.kwargs, tier.width_key: width})
        for seed in range(seeds):
            report, seconds = runner.run("static-flop-matched", seed, PolicyKind.NONE, host=matched)
            records.append(
                _record("static-flop-matched", seed, report.grown, seconds) | {"width": width}
            )
    return records


@contextmanager
def _stack(work_dir: Path) -> Iterator[RunStack]:
    work_dir.mkdir(parents=True, exist_ok=True)
    urza = UrzaSettings(
        database_url=f"sqlite:///{work_dir / 'urza.sqlite'}",
        artifact_dir=work_dir / "artifacts",
        allow_anonymous_writes=True,
    )
    with embedded_stack(urza, ForgeSettings(), consumer="payoff") as stack:
        yield stack


def flops_to_reach(curve: Sequence[Sequence[float | None]], threshold: float) -> float | None:
    """Return the training FLOPs at the first curve point at or above ``threshold``.

    Args:
        curve: ``[step, train_flops, val_accuracy]`` points in order.
        threshold: Validation accuracy to reach.

    Returns:
        The FLOPs, or None if the curve never reaches it.
    """
    for _step, flops, accuracy in curve:
        if accuracy is not None and flops is not None and accuracy >= threshold:
            return float(flops)
    return None


def summarize(records: list[dict[str, object]]) -> dict[str, object]:
    """Return per-arm statistics, the FLOPs-to-target and the target's verdict.

    Args:
        records: What :func:`run_protocol` returned.

    Returns:
        ``threshold``, ``arms`` (per arm: mean and 95% CI of each metric) and ``target``.
    """
    large = [r for r in records if r["arm"] == "static-large"]
    threshold = statistics.fmean(float(r["final_val_accuracy"]) for r in large) - 0.01
    for record in records:
        record["flops_to_target"] = flops_to_reach(record["curve"], threshold)
    arms: dict[str, dict[str, object]] = {}
    for arm in ARMS:
        runs = [r for r in records if r["arm"] == arm]
        reached = [float(r["flops_to_target"]) for r in runs if r["flops_to_target"] is not None]
        arms[arm] = {
            metric: interval([float(r[metric]) for r in runs])
            for metric in (
                "test_accuracy",
                "params",
                "inference_flops",
                "train_flops",
                "train_seconds",
            )
        } | {
            "flops_to_target": interval(reached) if reached else None,
            "reached_target": f"{len(reached)}/{len(runs)}",
        }
    return {"val_threshold": threshold, "arms": arms, "target": _target(arms, records)}


def _mean(arms: dict[str, dict[str, object]], arm: str, metric: str) -> float:
    cell = arms[arm][metric]
    if not isinstance(cell, dict):
        raise TypeError(f"{arm} has no {metric}")
    return float(cell["mean"])


def _target(arms: dict[str, dict[str, object]], records: list[dict[str, object]]) -> dict:
    """The issue's target, judged for each Esper arm, with every measured gap."""
    large_params = _mean(arms, "static-large", "params")
    large_accuracy = _mean(arms, "static-large", "test_accuracy")
    large_flops = _mean(arms, "static-large", "train_flops")
    host_share = _mean(arms, "static-small", "params") / large_params
    verdicts: dict[str, object] = {"host_params_share_of_large": host_share}
    for arm in ESPER_ARMS:
        accuracy = _mean(arms, arm, "test_accuracy")
        checks = {
            "host_at_most_25pct_of_large_params": host_share <= 0.25,
            "accuracy_gap_to_large_points": 100 * (accuracy - large_accuracy),
            "within_half_point_of_large": accuracy >= large_accuracy - 0.005,
            "params_share_of_large": _mean(arms, arm, "params") / large_params,
            "train_flops_share_of_large": _mean(arms, arm, "train_flops") / large_flops,
            "points_over_static_final": 100
            * (accuracy - _mean(arms, "static-final", "test_accuracy")),
            "points_over_random": 100 * (accuracy - _mean(arms, "esper-random", "test_accuracy")),
        }
        checks["at_most_50pct_params"] = checks["params_share_of_large"] <= 0.5
        checks["at_most_60pct_train_flops"] = checks["train_flops_share_of_large"] <= 0.6
        checks["beats_static_final"] = checks["points_over_static_final"] > 0
        checks["beats_random"] = checks["points_over_random"] > 0
        checks["met"] = all(
            checks[key]
            for key in (
                "host_at_most_25pct_of_large_params",
                "within_half_point_of_large",
                "at_most_50pct_params",
                "at_most_60pct_train_flops",
                "beats_static_final",
                "beats_random",
            )
        )
        verdicts[arm] = checks
    verdicts["seeds"] = len([r for r in records if r["arm"] == "static-large"])
    return verdicts


def _cell(summary: object, *, scale: float = 1.0, digits: int = 2) -> str:
    if not isinstance(summary, dict):
        return "—"
    mean, low, high = (scale * float(summary[key]) for key in ("mean", "low", "high"))
    return f"{mean:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"


def table(summary: dict[str, object]) -> str:
    """Return the per-arm table (the one docs/results.md shows).

    Args:
        summary: What :func:`summarize` returned.

    Returns:
        The table as text.
    """
    arms = summary["arms"]
    if not isinstance(arms, dict):
        raise TypeError("summary without arms")
    rows = [
        [
            arm,
            _cell(cell["test_accuracy"], scale=100),
            f"{cell['params']['mean']:.0f}",
            f"{cell['inference_flops']['mean']:.3g}",
            f"{cell['train_flops']['mean']:.3g}",
            _cell(cell["flops_to_target"], scale=1e-9, digits=3) + f" ({cell['reached_target']})",
            f"{cell['train_seconds']['mean']:.1f}",
        ]
        for arm, cell in arms.items()
    ]
    return format_table(
        [
            "arm",
            "test acc % [95% CI]",
            "params",
            "inference FLOPs/ex",
            "training FLOPs",
            "GFLOPs to large-1pt (reached)",
            "train s",
        ],
        rows,
    )


def _plot(summary: dict[str, object], title: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    arms = summary["arms"]
    if not isinstance(arms, dict):
        raise TypeError("summary without arms")
    figure, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for arm, cell in arms.items():
        accuracy = cell["test_accuracy"]
        error = 100 * (accuracy["mean"] - accuracy["low"])
        for axis, metric in ((axes[0], "train_flops"), (axes[1], "params")):
            axis.errorbar(
                cell[metric]["mean"],
                100 * accuracy["mean"],
                yerr=error,
                fmt="o",
                capsize=3,
                label=arm,
            )
    axes[0].set_xlabel("training FLOPs (mean)")
    axes[1].set_xlabel("final parameters (mean)")
    for axis in axes:
        axis.set_xscale("log")
        axis.set_ylabel("test accuracy % (mean, 95% CI)")
    axes[0].legend(fontsize=8)
    figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def main(argv: Sequence[str] | None = None) -> int:
    """Run a tier of the protocol and record it.

    Args:
        argv: Command-line arguments.

    Returns:
        The exit status.
    """
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tier", choices=sorted(TIERS), default="cpu")
    parser.add_argument("--seeds", type=int, default=None, help="default: the tier's")
    parser.add_argument("--work-dir", type=Path, default=None, help="default: a temporary one")
    parser.add_argument("--out", type=Path, default=None, help="default: results/payoff_<tier>")
    args = parser.parse_args(argv)
    tier = TIERS[args.tier]
    seeds = args.seeds or tier.seeds
    out = args.out or RESULTS_DIR / f"payoff_{tier.name}.json"
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="payoff-") as temporary:
        records = run_protocol(tier, seeds, args.work_dir or Path(temporary))
    seconds = time.perf_counter() - started
    summary = summarize(records)
    text = table(summary)
    print(text)
    print(summary["target"])
    plot = out.with_suffix(".png")
    out.parent.mkdir(parents=True, exist_ok=True)
    _plot(summary, f"payoff protocol, {tier.name} tier ({seeds} seeds)", plot)
    write_result(
        f"payoff_{tier.name}",
        {"tier": tier.describe(), "seeds": seeds, "arms": list(ARMS)},
        {
            "seconds": seconds,
            "runs": records,
            **summary,
            "table": text.splitlines(),
            "plot": plot.name,
        },
        out=out,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
