"""The Phase 1 criterion with real parts: POST a blueprint, and with no other action a Validated
kernel with its benchmark report appears.

The same story in both deployments:

- cluster: Urza on PostgreSQL and the S3 server (MinIO) behind a bearer token, Oona on Redis
  Streams; kernels ship their compile cache (the forge's default);
- embedded: Urza on SQLite and a local directory, the in-process bus; the forge is told to skip
  the compile cache (``RunnerOptions.compile_cache``), which makes compiling much faster.

Urza is served over real HTTP, its events are published on the bus, and the real forge reacts to
them, running ``esper tezzeret compile`` and ``esper urabrask bench`` as worker processes that
compile with torch on CPU. The forge's reconciliation sweep runs once at start (before anything
exists) and is then pushed beyond the test's time, so the events alone carry the pipeline.
"""

from __future__ import annotations

import contextlib
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from esper.blueprints.bundle import read_bundle
from esper.blueprints.exported import load_exported
from esper.blueprints.library import builtin
from esper.blueprints.shapes import check_graftable
from esper.config import UrzaSettings
from esper.contracts.bundle import BundleMemberName
from esper.contracts.events import BlueprintSubmitted, Event, KernelPhaseChanged, Topic
from esper.contracts.kernel import KernelArtifact, KernelPhase, KernelTarget, Verdict, kernel_id
from esper.forge.runner import RunnerOptions, UnitKind, UnitRunner
from esper.forge.scheduler import Forge, ForgeOptions
from esper.oona import Bus, InProcessBus, Subscription, make_bus
from esper.urabrask.bench import TOLERANCE
from esper.urza.client import UrzaClient
from tests.integration.phase1.support import (
    RunningUrza,
    assert_no_marked_processes,
    cluster_settings,
    describe,
    embedded_settings,
    kill_marked,
    local_blob_path,
    marked_processes,
    serving,
    wait_for,
)

pytestmark = pytest.mark.timeout(900)

BLUEPRINT = "low-rank-adapter"
TARGET = KernelTarget.parse("cpu:fp32:C=16:b=1,4")
PIPELINE_TIMEOUT = 600.0
"""Bound on POST -> Validated (two worker processes, one torch compile, on 2 loaded cores)."""
TERMINAL = frozenset({KernelPhase.VALIDATED, KernelPhase.REJECTED, KernelPhase.FAILED})
EXPECTED_PHASES = [
    KernelPhase.PENDING,
    KernelPhase.COMPILING,
    KernelPhase.COMPILED,
    KernelPhase.VALIDATING,
    KernelPhase.VALIDATED,
]


@dataclass
class Stack:
    """Urza, Oona and the forge, wired as in a deployment."""

    flavour: str
    compile_cache: bool
    urza: RunningUrza
    bus: Bus
    forge: Forge
    client: UrzaClient
    observer: Subscription
    marker: str


def _stop_forge(forge: Forge, thread: threading.Thread, marker: str) -> None:
    """Stop scheduling; kill workers a failed test left running; wait until the forge is idle."""
    forge.stop(wait=False)
    deadline = time.monotonic() + 120.0
    while (forge.busy() or thread.is_alive()) and time.monotonic() < deadline:
        kill_marked(marker)
        thread.join(0.5)
    assert not thread.is_alive(), "the forge's thread did not stop"
    assert not forge.busy(), "forge units still running after stop"
    forge.stop(wait=True)


@contextlib.contextmanager
def running_stack(
    flavour: str, settings: UrzaSettings, bus: Bus, compile_cache: bool
) -> Iterator[Stack]:
    marker = uuid.uuid4().hex
    with bus, serving(settings, forward=bus.publish) as urza:
        observer = bus.subscribe(
            [Topic.BLUEPRINT_SUBMITTED, Topic.KERNEL_PHASE_CHANGED], "phase1-observer", "observer"
        )
        runner = UnitRunner(
            urza.client(retries=4, sleep=time.sleep),
            RunnerOptions(
                timeout_seconds=PIPELINE_TIMEOUT,
                max_attempts=2,
                backoff_seconds=1.0,
                extra_env=urza.worker_env(marker),
                compile_cache=compile_cache,
            ),
        )
        forge = Forge(
            urza.client(retries=4, sleep=time.sleep),
            runner,
            ForgeOptions(targets=(TARGET,), sweep_seconds=3600.0, consumer="phase1-forge"),
            bus=bus,
        )
        thread = threading.Thread(target=forge.run, name="phase1-forge", daemon=True)
        thread.start()
        try:
            client = urza.client(retries=2)
            yield Stack(flavour, compile_cache, urza, bus, forge, client, observer, marker)
        finally:
            _stop_forge(forge, thread, marker)
            observer.close()


@pytest.fixture(
    params=[
        pytest.param("cluster", marks=[pytest.mark.postgres, pytest.mark.redis, pytest.mark.s3]),
        pytest.param("embedded"),
    ]
)
def stack(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Stack]:
    """The cluster flavour (PostgreSQL + MinIO + Redis) or the embedded default."""
    if request.param == "cluster":
        settings = cluster_settings(
            request.getfixturevalue("postgres_sqlalchemy_url"),
            request.getfixturevalue("s3_bucket"),
        )
        bus = make_bus(request.getfixturevalue("redis_url"))
    else:
        settings = embedded_settings(tmp_path)
        bus = InProcessBus()
    cluster = request.param == "cluster"
    with running_stack(request.param, settings, bus, compile_cache=cluster) as running:
        yield running


def _drain(subscription: Subscription) -> list[Event]:
    events: list[Event] = []
    while batch := subscription.receive(max_count=100, block_ms=0):
        subscription.ack(*batch)
        events.extend(delivery.event for delivery in batch)
    return events


def _wait_for_verdict(stack: Stack, blueprint_hash: str) -> KernelArtifact:
    def kernels() -> list[KernelArtifact]:
        return stack.client.list_kernels(blueprint_hash=blueprint_hash).items

    try:
        found = wait_for(
            kernels,
            lambda items: any(item.phase in TERMINAL for item in items),
            timeout=PIPELINE_TIMEOUT,
            what="a kernel with a verdict",
            interval=1.0,
        )
    except TimeoutError as error:
        pytest.fail(
            f"{error}\nforge outcomes: {stack.forge.outcomes}\n"
            f"workers: {describe(marked_processes(stack.marker))}"
        )
    assert len(found) == 1, found
    return found[0]


def test_post_a_blueprint_and_a_validated_kernel_appears(stack: Stack) -> None:
    ir = builtin(BLUEPRINT)

    record = stack.client.submit_blueprint(ir)
    kernel = _wait_for_verdict(stack, record.hash)

    # The kernel: the forge's target restricted to the blueprint's symbols, Validated.
    assert kernel.id == kernel_id(record.hash, TARGET)
    assert kernel.target == TARGET
    assert kernel.phase is KernelPhase.VALIDATED, (kernel.error, kernel.benchmark)
    assert kernel.error is None
    assert kernel.compile_seconds is not None
    assert kernel.compile_seconds > 0
    assert kernel.torch_version == torch.__version__

    # Its benchmark report.
    report = kernel.benchmark
    assert report is not None
    assert report.kernel_id == kernel.id
    assert report.verdict is Verdict.VALIDATED
    assert report.reasons == []
    assert report.function_preserving is True
    assert report.gradients_finite is True
    assert report.tolerance == TOLERANCE[TARGET.dtype]
    assert report.max_abs_error <= report.tolerance
    assert report.gradient_max_abs_error <= report.tolerance
    assert [item.batch_size for item in report.latency] == TARGET.batch_sizes
    assert all(0 < item.p50_ms <= item.p95_ms for item in report.latency)
    shapes = check_graftable(ir, TARGET.bindings)
    assert report.params == shapes.params > 0
    assert report.flops_per_sample > 0
    assert report.device_name.startswith("cpu")
    assert report.torch_version == torch.__version__
    assert {"layout:features", "device:cpu", "dtype:fp32"} <= set(report.tags)

    # The artifact downloads (verified against Urza's sha256) and opens as a verified bundle.
    data = stack.client.download_artifact(kernel.id)
    assert kernel.size_bytes == len(data)
    bundle = read_bundle(data, kernel.sha256)
    assert bundle.manifest.kernel_id == kernel.id
    assert bundle.manifest.target == TARGET
    assert bundle.ir() == ir
    names = {member.name for member in bundle.manifest.members}
    required = {BundleMemberName.IR, BundleMemberName.WEIGHTS, BundleMemberName.EXPORTED_PROGRAM}
    if stack.compile_cache:
        assert names == required | {BundleMemberName.COMPILE_CACHE}
        assert bundle.manifest.compile_cache_seconds is not None
    else:
        assert names == required
        assert bundle.manifest.compile_cache_seconds is None
    if stack.flavour == "cluster":
        assert kernel.artifact_uri == f"s3://{stack.urza.settings.s3_bucket}/sha256/" + (
            f"{kernel.sha256[:2]}/{kernel.sha256}"
        )
    else:
        path = local_blob_path(kernel.artifact_uri or "")
        assert path.is_relative_to(stack.urza.settings.artifact_dir)
        assert path.read_bytes() == data
    program = load_exported(bundle)
    for batch in (1, 3):
        output = program(torch.ones(batch, 16))
        assert output.shape == (batch, 16)
        assert torch.equal(output, torch.zeros(batch, 16))

    # One successful compile attempt was recorded by the worker.
    records = stack.client.compile_records(kernel.id)
    assert [item.succeeded for item in records] == [True]

    # The forge ran exactly one compile and one validate unit, each in one attempt, and left
    # no worker process behind.
    wait_for(
        lambda: (stack.forge.busy(), len(stack.forge.outcomes)),
        lambda state: state == (False, 2),
        timeout=60.0,
        what="the forge to record both units",
    )
    outcomes = [(item.unit.kind, item.succeeded, item.attempts) for item in stack.forge.outcomes]
    assert outcomes == [(UnitKind.COMPILE, True, 1), (UnitKind.VALIDATE, True, 1)]
    assert_no_marked_processes(stack.marker)

    # Everything travelled over Oona: the submission and the kernel's whole life, in order.
    events = _drain(stack.observer)
    submitted = [e.payload for e in events if isinstance(e.payload, BlueprintSubmitted)]
    assert [payload.blueprint_hash for payload in submitted] == [record.hash]
    phases = [
        e.payload.phase
        for e in events
        if isinstance(e.payload, KernelPhaseChanged) and e.payload.kernel_id == kernel.id
    ]
    assert phases == EXPECTED_PHASES
    assert stack.urza.events.phases(kernel.id) == EXPECTED_PHASES
