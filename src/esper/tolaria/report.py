"""Write a run's report: ``report.json`` (the contract), ``report.md`` and ``report.png``.

The Markdown and the plot are rendered from the :class:`~esper.contracts.report.RunReport` alone,
so everything they show is in the JSON.
"""

from dataclasses import dataclass
from pathlib import Path

from matplotlib.axes import Axes
from matplotlib.figure import Figure

from esper.contracts.report import ModelResult, RunReport
from esper.contracts.seed import SeedStage

MARKER_COLOURS: dict[SeedStage, str] = {
    SeedStage.GERMINATED: "tab:green",
    SeedStage.FOSSILIZED: "tab:blue",
    SeedStage.CULLED: "tab:red",
}


@dataclass(frozen=True)
class ReportFiles:
    """Where a report was written.

    Attributes:
        json: The contract document.
        markdown: The summary.
        plot: The PNG.
    """

    json: Path
    markdown: Path
    plot: Path


def write_report(report: RunReport, run_dir: Path) -> ReportFiles:
    """Write the three report files into the run directory.

    Args:
        report: The report.
        run_dir: The run directory (created if missing).

    Returns:
        The paths written.
    """
    run_dir.mkdir(parents=True, exist_ok=True)
    files = ReportFiles(
        json=run_dir / "report.json",
        markdown=run_dir / "report.md",
        plot=run_dir / "report.png",
    )
    files.json.write_text(report.to_json() + "\n", encoding="utf-8")
    files.markdown.write_text(render_markdown(report), encoding="utf-8")
    plot(report, files.plot)
    return files


def _pct(value: float) -> str:
    return f"{100.0 * value:.2f}%"


def render_markdown(report: RunReport) -> str:
    """Return the report's short Markdown summary.

    Args:
        report: The report.

    Returns:
        Markdown text.
    """
    spec = report.spec
    host = spec.host.zoo or spec.host.factory
    grown = report.grown
    lines = [
        f"# Esper run `{report.run_id}`",
        "",
        f"- host: `{host}` {dict(spec.host.kwargs)} on `{spec.dataset.name.value}`, "
        f"seed {spec.seed}, device {report.device}, torch {report.torch_version}",
        f"- policy: {spec.policy.kind.value}; budget {spec.budget.max_added_params} parameters, "
        f"at most {spec.budget.max_seeds} seeds",
        f"- {grown.steps} steps in {grown.train_seconds:.1f} s",
        "",
        "| model | test accuracy | test loss | parameters | training FLOPs | "
        "inference FLOPs/example |",
        "|---|---|---|---|---|---|",
        _result_row("grown", grown),
    ]
    if report.baseline is not None:
        base = report.baseline
        lines.append(_result_row("baseline (no growth)", base))
        delta = grown.test_accuracy - base.test_accuracy
        verdict = "beats" if delta > 0 else "does not beat"
        lines += [
            "",
            f"The grown model **{verdict}** the same host trained without growth "
            f"({100.0 * delta:+.2f} points of test accuracy, seed {spec.seed}).",
        ]
    lines += ["", "## Seeds", ""]
    if not report.seeds:
        lines.append("No seed was grown.")
    else:
        lines += [
            "| slot | blueprint | params | germinated | end | contribution |",
            "|---|---|---|---|---|---|",
        ]
        for seed in report.seeds:
            ended = "" if seed.ended_step is None else f" at step {seed.ended_step}"
            contribution = "" if seed.contribution is None else f"{seed.contribution:+.4f}"
            lines.append(
                f"| `{seed.slot_id}` | {seed.blueprint_name} | {seed.params} | "
                f"step {seed.germinated_step} | {seed.final_stage.value}{ended} | {contribution} |"
            )
    if report.rollbacks:
        lines += ["", "## Rollbacks", ""]
        lines += [
            f"- step {r.step}: {r.reason} (restored step {r.restored_step})"
            for r in report.rollbacks
        ]
    lines += ["", "## Decisions", ""]
    lines += [f"- step {d.step}, `{d.slot_id}`: {d.reason}" for d in report.decisions] or ["None."]
    return "\n".join(lines) + "\n"


def _result_row(label: str, result: ModelResult) -> str:
    return (
        f"| {label} | {_pct(result.test_accuracy)} | {result.test_loss:.4f} | {result.params} | "
        f"{result.train_flops:.3e} | {result.inference_flops} |"
    )


def _curve(ax_acc: Axes, ax_params: Axes, result: ModelResult, label: str) -> None:
    steps = [point.step for point in result.curve]
    style = "-" if label == "grown" else "--"
    ax_acc.plot(steps, [p.val_accuracy for p in result.curve], style, label=label)
    # Parameters change at a boundary and hold until the next: a step plot puts each jump at
    # the step where it happened.
    ax_params.plot(
        steps, [p.params for p in result.curve], style, label=label, drawstyle="steps-post"
    )


def plot(report: RunReport, path: Path) -> None:
    """Plot validation accuracy and parameter count against steps, with lifecycle markers.

    Args:
        report: The report.
        path: The PNG to write.
    """
    # A bare Figure (no pyplot): nothing global, no display backend, safe off the main thread.
    figure = Figure(figsize=(8, 6))
    ax_acc, ax_params = figure.subplots(2, 1, sharex=True, height_ratios=(2, 1))
    _curve(ax_acc, ax_params, report.grown, "grown")
    if report.baseline is not None:
        _curve(ax_acc, ax_params, report.baseline, "baseline")
    labelled: set[SeedStage] = set()
    for mark in report.lifecycle:
        colour = MARKER_COLOURS.get(mark.target)
        if colour is None:
            continue
        label = mark.target.value.lower() if mark.target not in labelled else None
        labelled.add(mark.target)
        for axis in (ax_acc, ax_params):
            axis.axvline(mark.step, color=colour, linestyle=":", alpha=0.8, label=label)
            label = None
    ax_acc.set_ylabel("validation accuracy")
    ax_acc.set_title(f"{report.run_id}: test accuracy {_pct(report.grown.test_accuracy)}")
    ax_acc.legend(loc="lower right", fontsize="small")
    ax_params.set_ylabel("parameters")
    ax_params.set_xlabel("training step")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
