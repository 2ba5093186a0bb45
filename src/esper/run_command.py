"""``esper run CONFIG``: the main job on the embedded default, with a live progress display.

It reads and validates the config, picks the run directory, starts the embedded stack (Urza on
SQLite and a local artifact directory, the in-process bus, the local forge), runs the job and
prints where the report is.
"""

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from pydantic import ValidationError
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from esper.blueprints.library import LIBRARY
from esper.blueprints.resolve import BlueprintReferenceError, resolve_blueprints
from esper.config import EsperSettings, ForgeSettings, UrzaSettings, WorkerSettings
from esper.contracts._base import describe_validation_error
from esper.contracts.blueprint import BlueprintIR
from esper.contracts.report import LifecycleMark, RunReport
from esper.contracts.run import MorphogeneticRunSpec
from esper.contracts.seed import SeedStage
from esper.embedded import embedded_stack
from esper.tolaria.job import (
    SPEC_FILE,
    JobHooks,
    UnsupportedPolicyError,
    check_policy,
    run_job,
)
from esper.tolaria.report import ReportFiles
from esper.tolaria.trainer import StepInfo
from esper.yamlfile import YamlFileError, load_yaml_file


class RunConfigError(ValueError):
    """Raised for a config or run directory that cannot be used; the message says why."""


@dataclass(frozen=True)
class RunOptions:
    """What the command line asked for.

    Attributes:
        config: The config file.
        resume: A run directory to resume.
        out: The run directory for a new run.
        compile_cache: Whether the forge ships compile caches.
    """

    config: Path
    resume: Path | None
    out: Path | None
    compile_cache: bool


def load_config(path: Path) -> MorphogeneticRunSpec:
    """Read and validate a run config.

    Args:
        path: The YAML file.

    Returns:
        The spec.

    Raises:
        RunConfigError: When the file is missing, not YAML, or not a valid spec.
    """
    try:
        document = load_yaml_file(path, "config file")
    except YamlFileError as error:
        raise RunConfigError(str(error)) from None
    try:
        return MorphogeneticRunSpec.model_validate(document)
    except ValidationError as error:
        raise RunConfigError(f"{path}: {describe_validation_error(error)}") from None


def run_id_for(config: Path, now: datetime) -> str:
    """Return a new run's id: the config's name and the start time.

    Args:
        config: The config file.
        now: The start time.

    Returns:
        An id such as ``run-mnist1d-20261126-031500``.
    """
    stem = re.sub(r"[^A-Za-z0-9._-]+", "-", config.stem).strip("-.") or "run"
    return f"{stem[:100]}-{now:%Y%m%d-%H%M%S}"


def _run_directory(options: RunOptions, spec: MorphogeneticRunSpec) -> tuple[str, Path]:
    if options.resume is not None:
        saved = options.resume / SPEC_FILE
        if not saved.is_file():
            raise RunConfigError(f"{options.resume} is not a run directory (no {SPEC_FILE})")
        previous = MorphogeneticRunSpec.model_validate_json(saved.read_text(encoding="utf-8"))
        if previous != spec:
            raise RunConfigError(
                f"{options.config} differs from the config {options.resume} was started with; "
                "resume with the same config"
            )
        return options.resume.name, options.resume
    run_id = run_id_for(options.config, datetime.now(UTC))
    run_dir = options.out or EsperSettings().home / "runs" / run_id
    if run_dir.exists() and any(run_dir.iterdir()):
        raise RunConfigError(f"run directory {run_dir} is not empty; use --resume to continue it")
    return run_id, run_dir


def _blueprints(spec: MorphogeneticRunSpec, config: Path) -> list[BlueprintIR]:
    if not spec.blueprints:
        return list(LIBRARY.values())
    return resolve_blueprints(spec.blueprints, config.parent)


class _Display:
    """The live progress display: phase lines, kernel statuses, a bar with each seed's stage."""

    def __init__(self, console: Console) -> None:
        self._console = console
        self._progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            TextColumn("step {task.completed}/{task.total}"),
            TimeElapsedColumn(),
            TextColumn("{task.fields[stages]}"),
            console=console,
            transient=False,
        )
        self._task: int | None = None
        self._last_kernels: Mapping[str, str] = {}

    def phase(self, text: str) -> None:
        self._console.print(f"[cyan]esper[/]: {text}")

    def kernels(self, status: Mapping[str, str]) -> None:
        if status != self._last_kernels:
            counts: dict[str, int] = {}
            for value in status.values():
                counts[value.split(":")[0]] = counts.get(value.split(":")[0], 0) + 1
            summary = ", ".join(f"{count} {state}" for state, count in sorted(counts.items()))
            self._console.print(f"  kernels: {summary}")
            self._last_kernels = dict(status)

    def step(self, info: StepInfo, stages: Mapping[str, SeedStage]) -> None:
        text = " ".join(f"{slot}:{stage.value.lower()}" for slot, stage in stages.items())
        if self._task is None:
            self._progress.start()
            self._task = self._progress.add_task("training", total=info.total_steps, stages="")
        self._progress.update(self._task, completed=info.step, stages=text)

    def lifecycle(self, mark: LifecycleMark) -> None:
        if mark.target is SeedStage.DORMANT:
            return
        self._progress.console.print(
            f"  step {mark.step}: slot {mark.slot_id} {mark.source.value} -> "
            f"{mark.target.value} ({mark.blueprint_name or 'no seed'})"
        )

    def stop(self) -> None:
        if self._task is not None:
            self._progress.stop()

    def hooks(self) -> JobHooks:
        return JobHooks(
            phase=self.phase, kernels=self.kernels, step=self.step, lifecycle=self.lifecycle
        )


def execute_run(options: RunOptions) -> tuple[RunReport, ReportFiles]:
    """Run the main job and print the result.

    Args:
        options: The command line's choices.

    Returns:
        The report and its files.

    Raises:
        RunConfigError: For a bad config or run directory (nothing is started).
    """
    spec = load_config(options.config)
    try:
        check_policy(spec)
        blueprints = _blueprints(spec, options.config)
    except (UnsupportedPolicyError, BlueprintReferenceError) as error:
        raise RunConfigError(str(error)) from None
    run_id, run_dir = _run_directory(options, spec)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / SPEC_FILE).write_text(spec.to_json() + "\n", encoding="utf-8")
    console = Console(stderr=True)
    display = _Display(console)
    display.phase(f"run {run_id} -> {run_dir}")
    display.phase("starting Urza, the bus and the forge (embedded)")
    try:
        with embedded_stack(
            UrzaSettings(),
            ForgeSettings(),
            consumer=WorkerSettings().worker_name,
            compile_cache=options.compile_cache,
        ) as stack:
            report, files = run_job(
                spec,
                run_id=run_id,
                run_dir=run_dir,
                client=stack.client,
                blueprints=blueprints,
                cache_dir=EsperSettings().home / "data",
                resume=options.resume is not None,
                hooks=display.hooks(),
            )
    finally:
        display.stop()
    _print_summary(console, report, files)
    return report, files


def _print_summary(console: Console, report: RunReport, files: ReportFiles) -> None:
    grown = report.grown
    console.print(
        f"[bold]grown model[/]: test accuracy {100 * grown.test_accuracy:.2f}%, "
        f"{grown.params} parameters, {len(report.seeds)} seed(s): "
        + (", ".join(f"{s.slot_id}={s.final_stage.value}" for s in report.seeds) or "none")
    )
    if report.baseline is not None:
        base = report.baseline
        delta = 100 * (grown.test_accuracy - base.test_accuracy)
        console.print(
            f"[bold]baseline[/] (same host and seed {report.spec.seed}, no growth): test accuracy "
            f"{100 * base.test_accuracy:.2f}%, {base.params} parameters ({delta:+.2f} points)"
        )
    console.print(f"report: {files.json}\n        {files.markdown}\n        {files.plot}")
