"""``esper run CONFIG``: the main job, with a live progress display.

It reads and validates the config and the options, picks the run directory, and starts what
the run works with: the embedded stack (Urza on SQLite and a local artifact directory, the
in-process bus, the local forge) or, with ``--urza``, that Urza and a local forge confined to
the run's kernels; with ``--bus``, it announces the run's events there. Then it runs the job
and prints where the report is.
"""

import re
import signal
import urllib.parse
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType

from pydantic import ValidationError
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from esper.blueprints.library import LIBRARY
from esper.blueprints.resolve import BlueprintReferenceError, resolve_blueprints
from esper.blueprints.signing import SigningKeyError, load_keyring
from esper.config import (
    EsperSettings,
    ForgeSettings,
    SigningSettings,
    UrzaSettings,
    WorkerSettings,
)
from esper.contracts._base import describe_validation_error
from esper.contracts.blueprint import BlueprintIR
from esper.contracts.events import Topic
from esper.contracts.report import LifecycleMark, RunReport
from esper.contracts.run import MorphogeneticRunSpec
from esper.contracts.seed import SeedStage
from esper.contracts.types import IDENTIFIER_PATTERN
from esper.embedded import RunStack, embedded_stack, remote_urza_stack
from esper.oona import Bus, BusUnavailableError, make_bus
from esper.tolaria.announce import RunAnnouncer, announcing
from esper.tolaria.job import (
    SPEC_FILE,
    JobHooks,
    UnsupportedPolicyError,
    check_policy,
    merge_hooks,
    run_job,
)
from esper.tolaria.report import ReportFiles
from esper.tolaria.trainer import StepInfo
from esper.yamlfile import YamlFileError, load_yaml_file


class RunConfigError(ValueError):
    """Raised for a config, option, run directory or bus that cannot be used; says why."""


class RunTerminatedError(RuntimeError):
    """Raised in the run's main thread when the process is asked to stop (SIGTERM)."""


def _terminate(signum: int, _frame: FrameType | None) -> None:
    raise RunTerminatedError(f"terminated by {signal.Signals(signum).name}")


@contextmanager
def sigterm_stops_the_run() -> Iterator[None]:
    """Turn SIGTERM into :class:`RunTerminatedError` in the main thread for the block.

    A cluster stops a Job's pod with SIGTERM; unwinding (instead of dying on the spot) lets the
    run tell the bus it stopped and hand the kernels its forge held back to Urza. The previous
    handler is restored afterwards. Call it from the main thread.

    Yields:
        Nothing.
    """
    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        yield
    finally:
        # None: the previous handler was not installed from Python; the default is the closest.
        signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)


@dataclass(frozen=True)
class RunOptions:
    """What the command line asked for.

    Attributes:
        config: The config file.
        resume: A run directory to resume.
        out: The run directory for a new run.
        compile_cache: Whether the forge ships compile caches.
        run_id: The run's id (default: the config's name and the start time, or the resumed
            directory's name).
        urza: A running Urza to use instead of the embedded one.
        bus: Oona's URL (``memory://`` or ``redis://...``) to announce the run's events on;
            None announces nothing.
    """

    config: Path
    resume: Path | None
    out: Path | None
    compile_cache: bool
    run_id: str | None = None
    urza: str | None = None
    bus: str | None = None


def load_config(path: Path) -> MorphogeneticRunSpec:
    """Read and validate a run config.

    Args:
        path: The YAML file.

    Returns:
        The spec; a relative ``policy.checkpoint`` is made relative to the config's directory,
        as blueprint files are.

    Raises:
        RunConfigError: When the file is missing, not YAML, or not a valid spec.
    """
    try:
        document = load_yaml_file(path, "config file")
    except YamlFileError as error:
        raise RunConfigError(str(error)) from None
    try:
        spec = MorphogeneticRunSpec.model_validate(document)
    except ValidationError as error:
        raise RunConfigError(f"{path}: {describe_validation_error(error)}") from None
    checkpoint = spec.policy.checkpoint
    if checkpoint is None or Path(checkpoint).is_absolute():
        return spec
    policy = spec.policy.model_copy(update={"checkpoint": str(path.parent / checkpoint)})
    return spec.model_copy(update={"policy": policy})


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


def check_run_id(run_id: str) -> str:
    """Return ``run_id`` when it can name a run in events and reports.

    Args:
        run_id: The id asked for.

    Returns:
        The id.

    Raises:
        RunConfigError: It does not match the contracts' identifier pattern.
    """
    if re.fullmatch(IDENTIFIER_PATTERN, run_id) is None:
        raise RunConfigError(
            f"--run-id {run_id!r} is not a valid run id: use 1 to 128 letters, digits, '.', "
            "'_', ':' or '-', starting with a letter or digit"
        )
    return run_id


def check_urza_url(url: str) -> str:
    """Return ``url`` when it can address an Urza.

    Args:
        url: The address asked for.

    Returns:
        The address without a trailing slash.

    Raises:
        RunConfigError: It is not an ``http://`` or ``https://`` URL with a host.
    """
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise RunConfigError(
            f"--urza {url!r} is not an http:// or https:// URL of Urza "
            "(for example http://urza:8420)"
        )
    return url.rstrip("/")


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
        return options.run_id or options.resume.name, options.resume
    run_id = options.run_id or run_id_for(options.config, datetime.now(UTC))
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
        RunConfigError: For a bad config, option, run directory or bus (nothing is started).
        UrzaError: When Urza (``--urza``) does not answer, or refuses the run's requests.
    """
    if options.run_id is not None:
        check_run_id(options.run_id)
    urza_url = None if options.urza is None else check_urza_url(options.urza)
    spec = load_config(options.config)
    try:
        check_policy(spec)
        blueprints = _blueprints(spec, options.config)
    except (UnsupportedPolicyError, BlueprintReferenceError) as error:
        raise RunConfigError(str(error)) from None
    run_id, run_dir = _run_directory(options, spec)
    worker = _worker_settings()
    token = None if urza_url is None else _urza_token(worker)
    _check_signing()
    console = Console(stderr=True)
    display = _Display(console)
    display.phase(f"run {run_id} -> {run_dir}")
    try:
        with _announcer(options.bus, run_id, display) as announcer:
            hooks = display.hooks()
            if announcer is not None:
                hooks = merge_hooks(hooks, announcer.hooks())
            with _stack(options, urza_url, token, worker.worker_name, display) as stack:
                # Written once the services answer, so a run that could not start leaves no
                # directory that a retry of the same command would refuse as not empty.
                run_dir.mkdir(parents=True, exist_ok=True)
                (run_dir / SPEC_FILE).write_text(spec.to_json() + "\n", encoding="utf-8")
                report, files = run_job(
                    spec,
                    run_id=run_id,
                    run_dir=run_dir,
                    client=stack.client,
                    blueprints=blueprints,
                    cache_dir=EsperSettings().home / "data",
                    resume=options.resume is not None,
                    hooks=hooks,
                    prepare=stack.prepare,
                )
                if announcer is not None:
                    announcer.finished(report)
    finally:
        display.stop()
    _print_summary(console, report, files)
    return report, files


def _stack(
    options: RunOptions,
    urza_url: str | None,
    token: str | None,
    consumer: str,
    display: "_Display",
) -> AbstractContextManager[RunStack]:
    if urza_url is None:
        display.phase("starting Urza, the bus and the forge (embedded)")
        return embedded_stack(
            UrzaSettings(),
            ForgeSettings(),
            consumer=consumer,
            compile_cache=options.compile_cache,
        )
    display.phase(f"using Urza at {urza_url}, with a local forge for the run's kernels")
    return remote_urza_stack(
        urza_url,
        token,
        ForgeSettings(),
        consumer=consumer,
        compile_cache=options.compile_cache,
    )


@contextmanager
def _announcer(url: str | None, run_id: str, display: "_Display") -> Iterator[RunAnnouncer | None]:
    if url is None:
        yield None
        return
    bus = _open_bus(url)
    try:
        with announcing(bus, run_id) as announcer:
            display.phase(f"announcing the run's events on Oona at {_where(url)}")
            yield announcer
        if announcer.unpublished:
            display.phase(
                f"[yellow]warning[/]: {announcer.unpublished} event(s) of the run could not be "
                "published on the bus"
            )
    finally:
        bus.close()


def _where(url: str) -> str:
    # Scheme, host and port only: a bus URL may carry a password.
    parts = urllib.parse.urlsplit(url)
    port = f":{parts.port}" if parts.port is not None else ""
    return f"{parts.scheme}://{parts.hostname or ''}{port}"


def _open_bus(url: str) -> Bus:
    try:
        bus = make_bus(url)
    except ValueError as error:
        raise RunConfigError(f"--bus: {error}") from None
    try:
        # Any cheap read: it tells an unreachable bus at the start, not after the training.
        bus.stream_length(Topic.RUN_PROGRESS)
    except BusUnavailableError as error:
        bus.close()
        raise RunConfigError(f"--bus: the bus does not answer: {error}") from None
    return bus


def _worker_settings() -> WorkerSettings:
    try:
        return WorkerSettings()
    except ValidationError as error:
        raise RunConfigError(
            f"invalid worker settings: {describe_validation_error(error)}"
        ) from None


def _check_signing() -> None:
    # The run's loader and its forge's workers read the same settings later; an unusable key
    # is refused here, before any service starts (and the local key, when it is the one, is
    # created once here rather than raced for by the workers).
    try:
        load_keyring(SigningSettings())
    except ValidationError as error:
        raise RunConfigError(
            f"invalid signing settings: {describe_validation_error(error)}"
        ) from None
    except SigningKeyError as error:
        raise RunConfigError(str(error)) from None


def _urza_token(settings: WorkerSettings) -> str | None:
    try:
        return settings.token()
    except OSError as error:
        raise RunConfigError(
            f"ESPER_URZA_TOKEN_FILE {settings.urza_token_file}: {error.strerror}"
        ) from None


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
