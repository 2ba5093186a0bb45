"""``esper run --urza URL --bus redis://...``: the run a cluster's training Job starts.

Real parts throughout: Urza as a cluster runs it (PostgreSQL, the S3 server, a bearer token),
served over HTTP; Redis for Oona; and the real ``esper`` CLI as a subprocess (``python -m esper
run``) on the e2e test's tiny config without its baseline, with the token in a file
(``ESPER_URZA_TOKEN_FILE``, as a mounted secret gives it) and the run id the operator passes
(``<namespace>.<name>``). Before the run, Urza already holds two kernels of other blueprints:
one Pending, one Compiling (as a compile Job leaves it while it works).

What the module checks:

- the run used that Urza (no embedded Urza under ``ESPER_HOME``), its local forge compiled and
  validated the run's kernel into it (the compile record names the run's worker, the bundle is
  in the bucket), left no worker process behind, and left the other kernels alone;
- the streams, read with a consumer group as the operator reads them: one ``run.progress`` per
  epoch (epochs 1..N, the last one with the grown model's parameters), ``seed.lifecycle``
  events mirroring the report's lifecycle in a legal order, ``adaptation.decided`` events
  equal to the report's decisions, one ``run.finished`` with the report's outcome, every event
  traced to the run, and nothing dead-lettered;
- a second run of the same config against the same Urza reuses the Validated kernel (no second
  compile) and still grows it;
- a run that does not wait for its kernels and is stopped (SIGTERM) while its worker compiles
  one leaves no worker behind and returns that kernel to Pending (through Failed) instead of
  Compiling.

The error paths run in-process through the Typer app (nothing trains): each ends with status 1
and one ``esper: error:`` line; a run that cannot reach its Urza still tells the bus it failed.
"""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from esper import cli
from esper.blueprints.library import builtin
from esper.contracts.decisions import AdaptationDecision
from esper.contracts.events import (
    Event,
    RunFinished,
    RunProgress,
    SeedLifecycleEvent,
    Topic,
)
from esper.contracts.kernel import KernelPhase, KernelTarget
from esper.contracts.report import LifecycleMark, RunReport
from esper.contracts.seed import SEED_STAGES, SeedStage
from esper.contracts.urza_api import PhaseChange
from esper.oona import RedisStreamsBus
from esper.tolaria.announce import SOURCE
from esper.urza.client import UrzaClient
from tests.integration.phase1.support import (
    MARKER_VARIABLE,
    TOKEN,
    RunningUrza,
    assert_no_marked_processes,
    cluster_settings,
    kill_marked,
    serving,
    wait_for,
)
from tests.servers import PostgresServer, RedisServer, S3Server, free_port, to_sqlalchemy_url

pytestmark = [
    pytest.mark.postgres,
    pytest.mark.s3,
    pytest.mark.redis,
    pytest.mark.timeout(1500),
]

TINY = Path(__file__).parents[2] / "e2e" / "configs" / "run-tiny.yaml"
RUN_ID = "team-a.tiny-remote"
"""The id the operator passes: ``<namespace>.<name>``."""
WORKER = "tiny-remote-pod"
"""The pod's name (``ESPER_WORKER_NAME``), recorded with the forge's compile attempts."""
BLUEPRINT = "bottleneck-mlp"
SIGNING_KEY_ID = "k1"
SIGNING_KEY = "run-remote-signing-key-" + "0" * 32
"""The cluster's signing key, one file of the mounted Secret."""
DATABASE = "m_run_remote"
BUCKET = "m-run-remote"
RUN_TIMEOUT = 900.0
TOPICS = (Topic.RUN_PROGRESS, Topic.SEED_LIFECYCLE, Topic.ADAPTATION_DECIDED, Topic.RUN_FINISHED)
BYSTANDER_TARGET = KernelTarget.parse("cpu:fp32:C=48:b=1,8")
"""Other blueprints' kernels, sized for no slot of the run."""


@dataclass
class Cluster:
    """The cluster's services and what Urza held before any run."""

    urza: RunningUrza
    client: UrzaClient
    redis: RedisServer
    root: Path
    token_file: Path
    config: Path
    bystanders: dict[str, KernelPhase]

    def redis_url(self, db: int = 0) -> str:
        return self.redis.url(db)

    @property
    def home(self) -> Path:
        """``ESPER_HOME`` of every run, as a pod's volume: the dataset is generated once."""
        return self.root / "pod-home"

    @property
    def signing_keys(self) -> Path:
        """The signing keys' Secret as the operator mounts it (``ESPER_SIGNING_KEY_DIR``)."""
        return self.root / "signing-keys"


def _bystanders(client: UrzaClient) -> dict[str, KernelPhase]:
    """A Pending kernel and one a compile Job is working on (Compiling)."""
    waiting = client.create_kernel(
        client.submit_blueprint(builtin("widening-branch")).hash, BYSTANDER_TARGET
    )
    held = client.create_kernel(
        client.submit_blueprint(builtin("low-rank-adapter")).hash, BYSTANDER_TARGET
    )
    held = client.change_phase(held.id, PhaseChange(phase=KernelPhase.COMPILING))
    return {waiting.id: waiting.phase, held.id: held.phase}


@pytest.fixture(scope="module")
def cluster(
    postgres_server: PostgresServer,
    s3_server: S3Server,
    redis_server: RedisServer,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Cluster]:
    with pytest.MonkeyPatch.context() as patch:
        for name in list(os.environ):  # settings come from here alone
            if name.startswith("ESPER_"):
                patch.delenv(name)
        postgres_server.ensure_running()
        s3_server.ensure_running()
        redis_server.ensure_running()
        redis_server.flush_all()
        dsn = postgres_server.create_database(DATABASE)
        s3 = s3_server.create_bucket(BUCKET)
        try:
            with serving(cluster_settings(to_sqlalchemy_url(dsn), s3)) as urza:
                client = urza.client()
                root = tmp_path_factory.mktemp("run-remote")
                token_file = root / "urza-token"
                token_file.write_text(TOKEN + "\n", encoding="utf-8")
                (root / "signing-keys").mkdir()
                (root / "signing-keys" / SIGNING_KEY_ID).write_text(
                    SIGNING_KEY + "\n", encoding="utf-8"
                )
                document = yaml.safe_load(TINY.read_text(encoding="utf-8"))
                document["baseline"] = False  # the baseline adds time and no event
                config = root / "run-tiny-remote.yaml"
                config.write_text(yaml.safe_dump(document), encoding="utf-8")
                yield Cluster(
                    urza, client, redis_server, root, token_file, config, _bystanders(client)
                )
        finally:
            postgres_server.ensure_running()
            postgres_server.drop_database(DATABASE)
            s3_server.ensure_running()
            s3_server.delete_bucket(BUCKET)


def _environment(cluster: Cluster, marker: str) -> dict[str, str]:
    """A pod's environment: no ESPER_* but its home, the token file and its name."""
    environment = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(cluster.root),
        "LANG": "C.UTF-8",
        "COLUMNS": "200",
        "ESPER_HOME": str(cluster.home),
        "ESPER_URZA_TOKEN_FILE": str(cluster.token_file),
        "ESPER_SIGNING_KEY_DIR": str(cluster.signing_keys),
        "ESPER_SIGNING_KEY_ID": SIGNING_KEY_ID,
        "ESPER_WORKER_NAME": WORKER,
        MARKER_VARIABLE: marker,
    }
    if "PYTHONPATH" in os.environ:
        environment["PYTHONPATH"] = os.environ["PYTHONPATH"]
    environment.update({k: v for k, v in os.environ.items() if k.startswith("COVERAGE_")})
    return environment


def _esper_run(
    cluster: Cluster, *arguments: str, config: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``esper run CONFIG ARGS`` as a pod would; its processes must all be gone after."""
    marker = f"run-remote-{uuid.uuid4().hex[:8]}"
    try:
        result = subprocess.run(
            [sys.executable, "-m", "esper", "run", str(config or cluster.config), *arguments],
            env=_environment(cluster, marker),
            cwd=cluster.root,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=RUN_TIMEOUT,
            check=False,
        )
        assert_no_marked_processes(marker)
    finally:
        kill_marked(marker)
    return result


def _read_events(url: str, group: str) -> dict[Topic, list[Event]]:
    """Everything on the run's topics, read and acknowledged by a new consumer group."""
    found: dict[Topic, list[Event]] = {topic: [] for topic in TOPICS}
    with RedisStreamsBus(url) as bus, bus.subscribe(TOPICS, group, "reader-0") as subscription:
        while deliveries := subscription.receive(max_count=1000, block_ms=0):
            for delivery in deliveries:
                found[delivery.topic].append(delivery.event)
            subscription.ack(*deliveries)
        assert bus.dead_letters() == []
    return found


@dataclass(frozen=True)
class RemoteRun:
    """The module's run against the cluster's Urza."""

    result: subprocess.CompletedProcess[str]
    run_dir: Path
    home: Path
    report: RunReport
    events: dict[Topic, list[Event]]

    def payloads(self, topic: Topic) -> list[object]:
        return [event.payload for event in self.events[topic]]


@pytest.fixture(scope="module")
def remote_run(cluster: Cluster) -> RemoteRun:
    run_dir = cluster.root / "run"
    result = _esper_run(
        cluster,
        "--out",
        str(run_dir),
        "--run-id",
        RUN_ID,
        "--urza",
        cluster.urza.url,
        "--bus",
        cluster.redis_url(),
    )
    assert result.returncode == 0, f"esper run failed:\n{result.stdout}\n{result.stderr}"
    report = RunReport.model_validate_json((run_dir / "report.json").read_text(encoding="utf-8"))
    events = _read_events(cluster.redis_url(), "test-operator")
    return RemoteRun(result, run_dir, cluster.home, report, events)


def _run_kernels(client: UrzaClient) -> list[str]:
    blueprint_hash = builtin(BLUEPRINT).canonical_hash()
    return [kernel.id for kernel in client.list_kernels(blueprint_hash=blueprint_hash).items]


# The run and Urza ------------------------------------------------------------------------------


def test_the_run_succeeds_on_the_remote_urza_only(remote_run: RemoteRun, cluster: Cluster) -> None:
    output = remote_run.result.stdout + remote_run.result.stderr
    assert "Traceback" not in output
    assert f"using Urza at {cluster.urza.url}" in output
    assert str(remote_run.run_dir / "report.json") in output
    assert remote_run.report.run_id == RUN_ID
    assert remote_run.report.baseline is None
    # No embedded Urza was started: no database, no artifact directory under the run's home.
    assert not (remote_run.home / "urza.sqlite").exists()
    assert not (remote_run.home / "artifacts").exists()


def test_the_runs_kernel_was_compiled_into_that_urza_by_the_runs_forge(
    remote_run: RemoteRun, cluster: Cluster
) -> None:
    client = cluster.client
    [kernel_id] = _run_kernels(client)
    kernel = client.get_kernel(kernel_id)
    assert kernel.phase is KernelPhase.VALIDATED
    assert kernel.artifact_uri is not None
    assert kernel.artifact_uri.startswith("s3://")
    assert len(client.download_artifact(kernel_id)) == kernel.size_bytes  # digest checked
    # Signed by the run's forge with the mounted key; the run's loader verified it to graft.
    assert kernel.signature is not None
    assert kernel.signature.key_id == SIGNING_KEY_ID
    assert not (cluster.home / "signing.key").exists()  # no local key in a configured pod
    records = client.compile_records(kernel_id)
    assert [(record.worker, record.succeeded) for record in records] == [(WORKER, True)]
    assert {seed.kernel_id for seed in remote_run.report.seeds} == {kernel_id}


def test_other_kernels_of_that_urza_were_left_alone(
    remote_run: RemoteRun, cluster: Cluster
) -> None:
    assert remote_run.result.returncode == 0
    for kernel_id, phase in cluster.bystanders.items():
        kernel = cluster.client.get_kernel(kernel_id)
        assert kernel.phase is phase, kernel_id
        assert cluster.client.compile_records(kernel_id) == []


# The events ------------------------------------------------------------------------------------


def test_every_epoch_is_announced(remote_run: RemoteRun) -> None:
    report = remote_run.report
    progress = remote_run.payloads(Topic.RUN_PROGRESS)
    assert all(isinstance(point, RunProgress) for point in progress)
    assert [point.epoch for point in progress] == list(range(1, report.spec.schedule.epochs + 1))
    assert {point.run_id for point in progress} == {RUN_ID}
    assert all(0.0 <= point.val_accuracy <= 1.0 for point in progress)
    assert all(point.train_loss > 0.0 for point in progress)
    assert progress[-1].params == report.grown.params
    # The seed grew during training: the parameter count rose between the first and last epoch.
    assert progress[0].params < progress[-1].params


def test_seed_lifecycle_events_mirror_the_report_in_a_legal_order(remote_run: RemoteRun) -> None:
    changes = remote_run.payloads(Topic.SEED_LIFECYCLE)
    assert all(isinstance(change, SeedLifecycleEvent) for change in changes)
    marks = remote_run.report.lifecycle
    assert marks, "no seed grew"
    assert [(c.step, c.slot_id, c.source, c.target, c.kernel_id) for c in changes] == [
        (m.step, m.slot_id, m.source, m.target, m.kernel_id) for m in marks
    ]
    assert {change.run_id for change in changes} == {RUN_ID}
    stages: dict[str, SeedStage] = {}
    for change in changes:
        assert change.source is stages.get(change.slot_id, SeedStage.DORMANT), change
        SEED_STAGES.check(change.source, change.target)
        stages[change.slot_id] = change.target
    steps = [change.step for change in changes]
    assert steps == sorted(steps)
    fossilized = [c for c in changes if c.target is SeedStage.FOSSILIZED]
    assert len(fossilized) == 1
    chain = [(c.source, c.target) for c in changes if c.slot_id == fossilized[0].slot_id]
    assert chain == [
        *itertools.pairwise(
            [
                SeedStage.DORMANT,
                SeedStage.GERMINATED,
                SeedStage.TRAINING,
                SeedStage.BLENDING,
                SeedStage.PROBATION,
                SeedStage.FOSSILIZED,
            ]
        )
    ]


def test_decisions_are_announced_as_taken(remote_run: RemoteRun) -> None:
    decisions = remote_run.payloads(Topic.ADAPTATION_DECIDED)
    assert decisions
    assert all(isinstance(decision, AdaptationDecision) for decision in decisions)
    assert decisions == remote_run.report.decisions


def test_the_last_event_is_the_runs_outcome(remote_run: RemoteRun) -> None:
    report = remote_run.report
    finished = remote_run.payloads(Topic.RUN_FINISHED)
    assert finished == [
        RunFinished(
            run_id=RUN_ID,
            succeeded=True,
            test_accuracy=report.grown.test_accuracy,
            params=report.grown.params,
            seeds_fossilized=1,
            seeds_culled=sum(seed.final_stage is SeedStage.CULLED for seed in report.seeds),
        )
    ]
    [end] = remote_run.events[Topic.RUN_FINISHED]
    others = [event for topic in TOPICS[:-1] for event in remote_run.events[topic]]
    assert all(event.created_at <= end.created_at for event in others)


def test_every_event_is_traced_to_the_run(remote_run: RemoteRun) -> None:
    events = [event for topic in TOPICS for event in remote_run.events[topic]]
    assert {(event.source, event.trace_id) for event in events} == {(SOURCE, RUN_ID)}
    assert len({event.id for event in events}) == len(events)


# A second run ----------------------------------------------------------------------------------


def test_a_second_run_reuses_the_validated_kernel(remote_run: RemoteRun, cluster: Cluster) -> None:
    [kernel_id] = _run_kernels(cluster.client)
    run_dir = cluster.root / "second-run"
    result = _esper_run(
        cluster,
        "--out",
        str(run_dir),
        "--run-id",
        "team-a.tiny-remote-2",
        "--urza",
        cluster.urza.url,
    )
    assert result.returncode == 0, f"second run failed:\n{result.stdout}\n{result.stderr}"
    report = RunReport.model_validate_json((run_dir / "report.json").read_text(encoding="utf-8"))
    # Same kernel, not compiled again; the run grew it and came out the same as the first.
    assert _run_kernels(cluster.client) == [kernel_id]
    assert len(cluster.client.compile_records(kernel_id)) == 1
    assert {seed.kernel_id for seed in report.seeds} == {kernel_id}
    assert report.grown.test_accuracy == remote_run.report.grown.test_accuracy
    # The reasons name the decisions, whose ids derive from the run id: compare the rest.
    assert [_change(mark) for mark in report.lifecycle] == [
        _change(mark) for mark in remote_run.report.lifecycle
    ]


def _change(mark: LifecycleMark) -> tuple[int, str, SeedStage, SeedStage, str | None]:
    return (mark.step, mark.slot_id, mark.source, mark.target, mark.kernel_id)


@contextmanager
def _started_run(
    cluster: Cluster, config: Path, arguments: list[str]
) -> Iterator[tuple[subprocess.Popen[str], str]]:
    """Start ``esper run CONFIG ARGS`` as a pod would; its processes must all be gone after."""
    marker = f"run-remote-{uuid.uuid4().hex[:8]}"
    process = subprocess.Popen(
        [sys.executable, "-m", "esper", "run", str(config), *arguments],
        env=_environment(cluster, marker),
        cwd=cluster.root,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        yield process, marker
    finally:
        process.kill()
        kill_marked(marker)


def _long_config(cluster: Cluster, name: str, **changes: object) -> Path:
    """The module's config trained for 500 epochs (ended by a signal), with ``changes``."""
    document = yaml.safe_load(cluster.config.read_text(encoding="utf-8"))
    document.update(changes)
    document["schedule"]["epochs"] = 500
    config = cluster.root / name
    config.write_text(yaml.safe_dump(document), encoding="utf-8")
    return config


def _stop(process: subprocess.Popen[str], marker: str) -> tuple[str, str]:
    """SIGTERM the run as Kubernetes stops a pod; it must end cleanly, leaving nothing behind."""
    process.send_signal(signal.SIGTERM)
    stdout, stderr = process.communicate(timeout=120)
    assert_no_marked_processes(marker)
    assert process.returncode == 1, (stdout, stderr)
    assert "esper: error: terminated by SIGTERM" in stderr
    assert "Traceback" not in stderr
    return stdout, stderr


def test_a_run_that_ends_while_its_forge_compiles_releases_the_kernel(cluster: Cluster) -> None:
    # No waiting for kernels, and the slow compile (with the torch.compile cache). The run is
    # stopped once its worker holds the kernel Compiling, so it always ends mid-compile (a run
    # left to end by itself may finish before the worker even claims the kernel).
    config = _long_config(
        cluster, "run-no-wait.yaml", blueprints=["residual-mlp"], waitForKernels=False
    )
    arguments = ["--out", str(cluster.root / "no-wait-run"), "--urza", cluster.urza.url]
    blueprint_hash = builtin("residual-mlp").canonical_hash()

    def kernels() -> list[KernelPhase]:
        listed = cluster.client.list_kernels(blueprint_hash=blueprint_hash, device="cpu")
        return [kernel.phase for kernel in listed.items]

    with _started_run(cluster, config, [*arguments, "--compile-cache"]) as (process, marker):
        wait_for(
            kernels,
            lambda phases: KernelPhase.COMPILING in phases or process.poll() is not None,
            timeout=RUN_TIMEOUT,
            what="the run's worker to claim its kernel",
        )
        assert process.poll() is None, process.communicate()
        _stop(process, marker)
    [kernel] = cluster.client.list_kernels(blueprint_hash=blueprint_hash, device="cpu").items
    # Its worker is gone (checked by _stop) and the kernel is Pending again, for the next run
    # or compile Job, instead of Compiling forever.
    assert kernel.phase is KernelPhase.PENDING
    assert cluster.urza.events.phases(kernel.id)[-3:] == [
        KernelPhase.COMPILING,
        KernelPhase.FAILED,
        KernelPhase.PENDING,
    ]


def test_a_run_stopped_by_sigterm_tells_the_bus(remote_run: RemoteRun, cluster: Cluster) -> None:
    # The kernel already Validated: the run trains until the signal comes, sent once its first
    # epoch is announced (as a pod is stopped mid-training).
    config = _long_config(cluster, "run-long.yaml")
    bus = cluster.redis_url(db=2)
    arguments = ["--out", str(cluster.root / "long"), "--run-id", "team-a.stopped"]
    arguments += ["--urza", cluster.urza.url, "--bus", bus]
    with _started_run(cluster, config, arguments) as (process, marker):
        with RedisStreamsBus(bus) as reader:
            wait_for(
                lambda: reader.stream_length(Topic.RUN_PROGRESS),
                lambda length: length > 0 or process.poll() is not None,
                timeout=RUN_TIMEOUT,
                what="the first epoch of the long run",
            )
        assert process.poll() is None, process.communicate()
        _stop(process, marker)
    events = _read_events(bus, "test-stopped")
    assert len(events[Topic.RUN_PROGRESS]) < 500
    assert [event.payload for event in events[Topic.RUN_FINISHED]] == [
        RunFinished(
            run_id="team-a.stopped",
            succeeded=False,
            error="RunTerminatedError: terminated by SIGTERM",
        )
    ]


# Errors, through the CLI in-process ------------------------------------------------------------


def _fails(
    monkeypatch: pytest.MonkeyPatch,
    root: Path,
    arguments: list[str],
    *,
    started: bool = False,
    **variables: str,
) -> str:
    """Run ``esper run TINY ARGS`` in-process in a bare environment; return its one error line.

    Unless the services answered (``started``), the run directory must not have been created.
    """
    for name in list(os.environ):
        if name.startswith("ESPER_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("ESPER_HOME", str(root / "esper-home"))
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    out = root / "run"
    result = CliRunner().invoke(cli.app, ["run", str(TINY), "--out", str(out), *arguments])
    assert result.exit_code == 1, (result.exit_code, result.output, result.exception)
    lines = [line for line in result.stderr.splitlines() if line.startswith("esper: error: ")]
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert result.stdout == ""
    assert out.exists() is started
    return lines[0]


def _closed_url(scheme: str, suffix: str = "") -> str:
    return f"{scheme}://127.0.0.1:{free_port()}{suffix}"


def test_a_bad_run_id(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    line = _fails(monkeypatch, tmp_path, ["--run-id", "team a/run 1"])
    assert "--run-id 'team a/run 1' is not a valid run id" in line


def test_an_urza_address_that_is_not_a_url(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    line = _fails(monkeypatch, tmp_path, ["--urza", "urza:8420"])
    assert "--urza 'urza:8420' is not an http:// or https:// URL" in line


def test_an_unreachable_urza(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    url = _closed_url("http")
    line = _fails(monkeypatch, tmp_path, ["--urza", url])
    assert f"esper: error: Urza: {url} is unreachable or not ready" in line


def test_a_missing_token_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    absent = tmp_path / "no-token"
    line = _fails(
        monkeypatch,
        tmp_path,
        ["--urza", _closed_url("http")],
        ESPER_URZA_TOKEN_FILE=str(absent),
    )
    assert f"ESPER_URZA_TOKEN_FILE {absent}: No such file or directory" in line


def test_a_bus_url_of_another_scheme(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    line = _fails(monkeypatch, tmp_path, ["--bus", "http://redis:6379/0"])
    assert "--bus: unsupported bus URL scheme 'http'" in line
    assert "use redis://, rediss:// or memory://" in line


def test_an_unreachable_bus(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    url = _closed_url("redis", "/0")
    line = _fails(monkeypatch, tmp_path, ["--bus", url])
    assert "--bus: the bus does not answer" in line
    assert f"127.0.0.1:{url.rsplit(':', 1)[1].split('/')[0]}" in line


def test_an_urza_that_refuses_the_token_stops_the_run_and_the_bus_hears_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, cluster: Cluster
) -> None:
    bus = cluster.redis_url(db=1)
    line = _fails(
        monkeypatch,
        tmp_path,
        ["--urza", cluster.urza.url, "--bus", bus, "--run-id", "team-a.refused"],
        started=True,
        ESPER_URZA_TOKEN="not-the-token",
    )
    assert line.startswith("esper: error: Urza: POST /v1/blueprints: HTTP 401")
    events = _read_events(bus, "test-refused")
    assert events[Topic.RUN_PROGRESS] == []
    [finished] = [event.payload for event in events[Topic.RUN_FINISHED]]
    assert isinstance(finished, RunFinished)
    assert finished.run_id == "team-a.refused"
    assert not finished.succeeded
    assert finished.error is not None
    assert finished.error.startswith("UrzaAuthError: POST /v1/blueprints: HTTP 401")
