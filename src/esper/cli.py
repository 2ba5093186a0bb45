"""The ``esper`` command.

Every subcommand of the design is listed here. Those whose component has not landed yet say so
and exit with status 1; none prints made-up output.
"""

import importlib.util
import os
import signal
import sys
import threading
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Annotated, NoReturn

import typer
from pydantic import ValidationError

from esper import __version__
from esper.config import ForgeSettings, SigningSettings, UrzaSettings, WorkerSettings
from esper.contracts import KernelArtifact, KernelPhase, KernelTarget, describe_validation_error
from esper.crds.generate import DEFAULT_DIRECTORIES, StructuralSchemaError, check_directories
from esper.crds.generate import write as write_crds
from esper.crds.schema import SchemaConversionError
from esper.urza.client import UrzaClient, UrzaError

if TYPE_CHECKING:
    from esper.blueprints.signing import Keyring
    from esper.forge.scheduler import Forge
    from esper.oona import Bus

app = typer.Typer(
    name="esper",
    help="Esper: a morphogenetic training platform (networks that grow while they train).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
urza_app = typer.Typer(help="Urza, the artifact library.", no_args_is_help=True)
tezzeret_app = typer.Typer(help="Tezzeret, the blueprint compiler.", no_args_is_help=True)
urabrask_app = typer.Typer(help="Urabrask, the kernel validator.", no_args_is_help=True)
crds_app = typer.Typer(help="The Kubernetes CustomResourceDefinitions.", no_args_is_help=True)
simic_app = typer.Typer(help="Simic, the trainer of Tamiyo's GNN policy.", no_args_is_help=True)
app.add_typer(urza_app, name="urza")
app.add_typer(tezzeret_app, name="tezzeret")
app.add_typer(urabrask_app, name="urabrask")
app.add_typer(crds_app, name="crds")
app.add_typer(simic_app, name="simic")

EXIT_FAILURE = 1


def fail(message: str) -> NoReturn:
    """Print one clear line to stderr and exit non-zero.

    Args:
        message: What went wrong.

    Raises:
        typer.Exit: Always, with status 1.
    """
    typer.echo(f"esper: error: {message}", err=True)
    raise typer.Exit(EXIT_FAILURE)


def not_implemented(command: str, milestone: str) -> NoReturn:
    """Report that a subcommand's component has not landed yet, and exit non-zero.

    Args:
        command: The subcommand, as typed.
        milestone: Where it arrives (the roadmap phase).

    Raises:
        typer.Exit: Always, with status 1.
    """
    fail(f"'esper {command}' is not implemented yet; it arrives with {milestone}.")


def _version_callback(value: bool) -> None:
    if value:
        typer.echo(f"esper {__version__}")
        raise typer.Exit(0)


@app.callback()
def main_callback(
    version: Annotated[
        bool,
        typer.Option("--version", help="Print the version and exit.", callback=_version_callback),
    ] = False,
) -> None:
    """Esper: a morphogenetic training platform."""


@app.command()
def run(
    config: Annotated[Path, typer.Argument(help="Run configuration (YAML).")],
    *,
    resume: Annotated[
        Path | None, typer.Option(help="Run directory of an interrupted run to resume.")
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option(help="Run directory (default: $ESPER_HOME/runs/<config name>-<time>)."),
    ] = None,
    compile_cache: Annotated[
        bool,
        typer.Option(
            help="Have the forge also compile forward+backward and ship torch.compile caches "
            "(slow on CPU; seeds run eagerly either way)."
        ),
    ] = False,
    run_id: Annotated[
        str | None,
        typer.Option(
            "--run-id",
            help="The run's id in its events and report (default: <config name>-<time>, or "
            "the resumed directory's name).",
        ),
    ] = None,
    urza: Annotated[
        str | None,
        typer.Option(
            help="A running Urza (e.g. http://urza:8420) to use instead of the embedded one; "
            "kernels it lacks are compiled by a local forge. Token: ESPER_URZA_TOKEN or "
            "ESPER_URZA_TOKEN_FILE."
        ),
    ] = None,
    bus: Annotated[
        str | None,
        typer.Option(
            help="Oona (redis://host:port/db or memory://) to announce the run's progress, "
            "seed lifecycle, decisions and end on (default: announce nothing)."
        ),
    ] = None,
) -> None:
    """Train a model that grows while it trains (the main job); embedded unless --urza."""
    from esper.data import DatasetUnavailableError
    from esper.run_command import (
        RunConfigError,
        RunOptions,
        RunTerminatedError,
        execute_run,
        sigterm_stops_the_run,
    )
    from esper.tolaria.controller import TrainingDivergedError

    options = RunOptions(
        config=config,
        resume=resume,
        out=out,
        compile_cache=compile_cache,
        run_id=run_id,
        urza=urza,
        bus=bus,
    )
    # A cluster stops a Job's pod with SIGTERM: the run unwinds, tells the bus, frees kernels.
    in_cluster = urza is not None or bus is not None
    try:
        with sigterm_stops_the_run() if in_cluster else nullcontext():
            execute_run(options)
    except (
        RunConfigError,
        DatasetUnavailableError,
        TrainingDivergedError,
        TimeoutError,
        RunTerminatedError,
    ) as error:
        fail(str(error))
    except UrzaError as error:
        fail(f"Urza: {error}")
    except KeyboardInterrupt:
        fail(
            "interrupted; the last epoch checkpoint is in the run directory printed above: "
            f"continue with 'esper run {config} --resume RUN_DIR'"
        )


@app.command()
def up() -> None:
    """Start Urza and the local forge together on the embedded default (one process)."""
    import uvicorn

    from esper.oona import InProcessBus
    from esper.urza.service import build_service

    urza_settings = _urza_settings()
    bus = InProcessBus()
    service = build_service(urza_settings, publish=bus.publish)
    forge = _build_forge(_forge_settings(), _worker_settings(), bus, urza_settings)
    thread = threading.Thread(target=forge.run, name="forge", daemon=True)
    thread.start()
    typer.echo(f"Urza and the forge on http://{urza_settings.host}:{urza_settings.port}", err=True)
    # uvicorn shuts down on SIGTERM and then re-raises it; with the default action the process
    # would die on the spot, before the forge could stop its workers.
    signal.signal(signal.SIGTERM, _exit_on_signal)
    try:
        uvicorn.run(
            service.app,
            host=urza_settings.host,
            port=urza_settings.port,
            log_level="info",
            access_log=urza_settings.access_log,
        )
    finally:
        forge.stop(wait=True, kill_workers=True)


def _exit_on_signal(signum: int, _frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


@app.command()
def forge() -> None:
    """Run the local forge against Urza (ESPER_URZA_URL), reacting to ESPER_FORGE_BUS_URL."""
    from esper.oona import make_bus

    settings = _forge_settings()
    bus = make_bus(settings.bus_url)
    scheduler = _build_forge(settings, _worker_settings(), bus, None)
    typer.echo(f"forge: targets {settings.target_list()}, bus {settings.bus_url}", err=True)
    signal.signal(signal.SIGTERM, _exit_on_signal)
    try:
        scheduler.run()
    except KeyboardInterrupt:
        pass
    finally:
        scheduler.stop(wait=True, kill_workers=True)


def _forge_settings() -> ForgeSettings:
    try:
        return ForgeSettings()
    except ValidationError as error:
        fail(f"invalid forge settings: {describe_validation_error(error)}")


def _build_forge(
    settings: ForgeSettings,
    worker: WorkerSettings,
    bus: "Bus",
    urza: UrzaSettings | None,
) -> "Forge":
    from esper.embedded import build_forge

    return build_forge(
        settings,
        url=f"http://{urza.host}:{urza.port}" if urza is not None else worker.urza_url,
        token=urza.token() if urza is not None else worker.token(),
        consumer=worker.worker_name,
        bus=bus,
        targets=tuple(_parse_target(text) for text in settings.target_list()),
    )


@app.command()
def operator() -> None:
    """Run the Kubernetes operator (kopf; settings from ESPER_OPERATOR_*, see docs/operator.md)."""
    # The operator is its own package that imports esper, never the reverse, so the command
    # replaces this process with it instead of importing it.
    if importlib.util.find_spec("esper_operator") is None or (
        importlib.util.find_spec("kopf") is None
    ):
        fail("the operator is not installed here (pip install 'esper[operator]')")
    os.execv(sys.executable, [sys.executable, "-m", "esper_operator"])


@simic_app.command("train")
def simic_train(
    *,
    out: Annotated[Path, typer.Option(help="Where the trained checkpoint is written.")],
    work_dir: Annotated[
        Path,
        typer.Option(
            help="Urza's database and artifacts, the episodes' runs and simic-log.jsonl "
            "(reusing it reuses compiled kernels)."
        ),
    ],
    seed: Annotated[int, typer.Option(min=0, help="Seed of tasks, network and samplers.")] = 0,
    imitation_tasks: Annotated[
        int, typer.Option(min=0, help="Tasks the heuristic runs for imitation.")
    ] = 24,
    iterations: Annotated[int, typer.Option(min=0, help="PPO rounds.")] = 10,
    episodes_per_iteration: Annotated[
        int, typer.Option(min=1, help="New tasks per PPO round.")
    ] = 8,
) -> None:
    """Train Tamiyo's GNN policy: imitation of the heuristic, then PPO (docs/simic.md)."""
    import logging

    from esper.simic.train import SimicConfig, train_locally

    try:
        config = SimicConfig(
            seed=seed,
            imitation_tasks=imitation_tasks,
            iterations=iterations,
            episodes_per_iteration=episodes_per_iteration,
        )
    except ValueError as error:
        fail(str(error))
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
    simic_logger = logging.getLogger("esper.simic")
    simic_logger.addHandler(handler)
    simic_logger.setLevel(logging.INFO)
    path = train_locally(config, out, work_dir)
    typer.echo(f"checkpoint: {path}; log: {work_dir / 'simic-log.jsonl'}")


@app.command()
def bench(name: Annotated[str, typer.Argument(help="Benchmark name.")]) -> None:
    """Run a recorded benchmark."""
    del name
    not_implemented("bench", "the benchmark milestone")


@urza_app.command("serve")
def urza_serve(
    host: Annotated[str | None, typer.Option(help="Address (default ESPER_URZA_HOST).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (default ESPER_URZA_PORT).")] = None,
) -> None:
    """Serve Urza's HTTP API (embedded default: SQLite and ~/.esper/artifacts)."""
    # Each role's modules are imported by its own command, so an image that installs only one
    # extra (the operator's has no SQLAlchemy) still runs its commands.
    import uvicorn

    from esper.urza.database import DatabaseNotReadyError
    from esper.urza.service import build_service

    settings = _urza_settings(host=host, port=port)
    try:
        service = build_service(settings)
    except (DatabaseNotReadyError, ValueError) as error:
        fail(str(error))
    typer.echo(
        f"Urza on http://{settings.host}:{settings.port} "
        f"(database {service.engine.url.render_as_string(hide_password=True)}, "
        f"{settings.blob_store} blob store)",
        err=True,
    )
    uvicorn.run(
        service.app,
        host=settings.host,
        port=settings.port,
        log_level="info",
        access_log=settings.access_log,
    )


@urza_app.command("migrate")
def urza_migrate(
    wait: Annotated[
        float,
        typer.Option(
            min=0,
            max=3600,
            help="Seconds to wait for the database to accept connections (a cluster starts "
            "it together with the migration Job).",
        ),
    ] = 0.0,
) -> None:
    """Apply Urza's database migrations (ESPER_URZA_DATABASE_URL)."""
    from sqlalchemy.exc import SQLAlchemyError

    from esper.urza.database import (
        DatabaseNotReadyError,
        make_engine,
        migrate,
        wait_until_reachable,
    )

    settings = _urza_settings()
    try:
        engine = make_engine(settings.database_url)
    except (ValueError, OSError) as error:
        fail(str(error))
    try:
        wait_until_reachable(engine, timeout=wait)
        revision = migrate(engine)
    except DatabaseNotReadyError as error:
        fail(str(error))
    except SQLAlchemyError as error:
        cause = str(getattr(error, "orig", None) or error).splitlines()[0]
        fail(f"database {engine.url.render_as_string(hide_password=True)}: {cause}")
    typer.echo(f"Urza's database is at revision {revision}.")


def _urza_settings(**overrides: object) -> UrzaSettings:
    values = {key: value for key, value in overrides.items() if value is not None}
    try:
        return UrzaSettings(**values)
    except ValidationError as error:
        fail(f"invalid Urza settings: {describe_validation_error(error)}")


@tezzeret_app.command("compile")
def tezzeret_compile(
    blueprint: Annotated[str, typer.Option(help="Blueprint hash in Urza.")],
    target: Annotated[str, typer.Option(help="Kernel target, e.g. cpu:fp32:C=256.")],
    compile_cache: Annotated[
        bool, typer.Option(help="Compile forward+backward and ship the compile cache.")
    ] = True,
    aoti: Annotated[bool, typer.Option(help="Also build an AOTInductor package.")] = False,
) -> None:
    """Compile a blueprint for a target and push the kernel to Urza (ESPER_URZA_URL)."""
    from esper.tezzeret.compiler import CompileOptions
    from esper.tezzeret.worker import compile_and_publish

    parsed = _parse_target(target)
    settings = _worker_settings()
    keyring = _signing_keyring()
    if keyring is not None and keyring.signing_key_id is None:
        fail(f"{keyring.source}: set ESPER_SIGNING_KEY_ID to the key that signs")
    with _urza_client(settings) as client:
        kernel = _run_unit(
            lambda: compile_and_publish(
                client,
                blueprint,
                parsed,
                worker=settings.worker_name,
                keyring=keyring,
                options=CompileOptions(compile_cache=compile_cache, aoti=aoti),
            )
        )
    typer.echo(f"{kernel.id} {kernel.phase.value} {kernel.sha256 or ''}".strip())


@urabrask_app.command("bench")
def urabrask_bench(kernel: Annotated[str, typer.Option(help="Kernel id in Urza.")]) -> None:
    """Validate and benchmark a Compiled kernel and report to Urza (ESPER_URZA_URL)."""
    from esper.urabrask.worker import validate_and_publish

    settings = _worker_settings()
    keyring = _signing_keyring()
    with _urza_client(settings) as client:
        result = _run_unit(lambda: validate_and_publish(client, kernel, keyring=keyring))
    reasons = "; ".join(result.benchmark.reasons) if result.benchmark else ""
    if result.phase not in (KernelPhase.VALIDATED, KernelPhase.REJECTED):
        fail(f"kernel {result.id} is {result.phase.value}: {result.error or 'not validated'}")
    typer.echo(f"{result.id} {result.phase.value} {reasons}".strip())


def _parse_target(text: str) -> KernelTarget:
    try:
        return KernelTarget.parse(text)
    except ValueError as error:
        fail(str(error))


def _worker_settings() -> WorkerSettings:
    try:
        return WorkerSettings()
    except ValidationError as error:
        fail(f"invalid worker settings: {describe_validation_error(error)}")


def _signing_keyring() -> "Keyring | None":
    from esper.blueprints.signing import SigningKeyError, load_keyring

    try:
        return load_keyring(SigningSettings())
    except ValidationError as error:
        fail(f"invalid signing settings: {describe_validation_error(error)}")
    except SigningKeyError as error:
        fail(str(error))


def _urza_client(settings: WorkerSettings) -> UrzaClient:
    return UrzaClient(settings.urza_url, token=settings.token())


def _run_unit(unit: Callable[[], KernelArtifact]) -> KernelArtifact:
    # As a Job container's PID 1 the process would ignore SIGTERM (no default action for PID 1),
    # and a deleted Job's pod would wait out its grace period: exit 143 instead.
    signal.signal(signal.SIGTERM, _exit_on_signal)
    try:
        return unit()
    except UrzaError as error:
        fail(str(error))
    except Exception as error:  # noqa: BLE001
        # The unit already recorded the failure in Urza (phase Failed, with the error); the
        # command's job is to say so in one line and exit non-zero, as a Job's container must.
        fail(f"{type(error).__name__}: {error}")


@crds_app.command("generate")
def crds_generate(
    check: Annotated[
        bool,
        typer.Option("--check", help="Compare the files with the generator; write nothing."),
    ] = False,
    directory: Annotated[
        list[Path] | None,
        typer.Option(
            "--dir",
            help="Directory to write or check (repeatable); default: crds and helm/esper/crds.",
        ),
    ] = None,
) -> None:
    """Generate the CRD manifests from the contracts (or check they are current)."""
    directories = list(directory) if directory else list(DEFAULT_DIRECTORIES)
    try:
        if check:
            drift = check_directories(directories)
            for item in drift:
                typer.echo(f"{item.path}: {item.problem}", err=True)
            if drift:
                fail(
                    f"{len(drift)} CRD file(s) differ from the contracts; "
                    "run 'esper crds generate' and commit the result."
                )
            typer.echo(f"CRDs are current in {', '.join(str(d) for d in directories)}.")
            return
        written = write_crds(directories)
    except (SchemaConversionError, StructuralSchemaError) as error:
        fail(str(error))
    for path in written:
        typer.echo(f"wrote {path}")


def main() -> None:
    """Entry point of the ``esper`` console script."""
    app()
