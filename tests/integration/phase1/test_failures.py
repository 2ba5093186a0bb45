"""Phase 1 failure paths with real parts: each ends in a clear, recorded state, never Validated.

- an IR that passes the contract but fails shape inference: POST answers 422 naming the node;
- a target whose sizes break a blueprint: kernel registration answers 422 naming the node;
- a worker that hangs past its timeout, and one killed mid-compile: the kernel ends Failed with
  the reason after the last attempt, and no worker process is left;
- a kernel whose bundle produces NaN: Rejected with the reason;
- a tampered artifact: refused, the kernel ends Failed;
- a bundle with an unknown member or a member that does not match its manifest: BundleError.
"""

from __future__ import annotations

import io
import os
import signal
import threading
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from esper.blueprints.bundle import BundleError, read_bundle
from esper.blueprints.library import builtin
from esper.blueprints.signing import Keyring
from esper.contracts.blueprint import BlueprintIR
from esper.contracts.bundle import BundleMemberName
from esper.contracts.kernel import KernelPhase, KernelTarget, Verdict
from esper.contracts.urza_api import PhaseChange
from esper.forge.runner import RunnerOptions, UnitKind, UnitRunner, WorkUnit
from esper.urabrask.worker import validate_and_publish
from esper.urza.blobs.base import blob_key
from esper.urza.client import UrzaClient, UrzaError, UrzaRequestError
from tests.integration.phase1.support import (
    RunningUrza,
    assert_no_marked_processes,
    cluster_settings,
    embedded_settings,
    local_blob_path,
    marked_processes,
    serving,
)
from tests.servers.s3 import make_client
from tests.support.reliability import note_faults, note_lost
from tests.unit.tezzeret import bundles

KEYRING = Keyring({"phase1": b"p" * 32}, "phase1", "the test's key")
"""Tezzeret's key: the test signs the bundles it uploads as Tezzeret would."""

pytestmark = pytest.mark.timeout(600)

BACKENDS = [
    pytest.param("cluster", marks=[pytest.mark.postgres, pytest.mark.s3], id="postgres-s3"),
    pytest.param("embedded", id="sqlite-local"),
]


@pytest.fixture
def embedded_urza(tmp_path: Path) -> Iterator[RunningUrza]:
    with serving(embedded_settings(tmp_path)) as running:
        yield running


@pytest.fixture(params=BACKENDS)
def urza(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[RunningUrza]:
    """Urza on PostgreSQL + MinIO (token) or on the embedded default."""
    if request.param == "cluster":
        settings = cluster_settings(
            request.getfixturevalue("postgres_sqlalchemy_url"),
            request.getfixturevalue("s3_bucket"),
        )
    else:
        settings = embedded_settings(tmp_path)
    with serving(settings) as running:
        yield running


def _ir(name: str, layout: str, shape: list[str], nodes: list[dict[str, object]]) -> BlueprintIR:
    return BlueprintIR.model_validate(
        {
            "name": name,
            "input": {"layout": layout, "shape": shape},
            "nodes": nodes,
            "output": nodes[-1]["id"],
        }
    )


ATTENTION_ON_FEATURES = _ir(
    "attention-on-features",
    "features",
    ["C"],
    [{"id": "mix", "op": "attention", "inputs": ["input"], "params": {"numHeads": 4}}],
)
CONV_ON_FEATURES = _ir(
    "conv-on-features",
    "features",
    ["C"],
    [
        {"id": "pre", "op": "linear", "inputs": ["input"], "params": {"outFeatures": 32}},
        {
            "id": "conv",
            "op": "conv2d",
            "inputs": ["pre"],
            "params": {"outChannels": "C", "kernelSize": 3, "init": "zeros"},
        },
    ],
)


def _registered_kernel(client: UrzaClient, target: KernelTarget | None = None) -> str:
    record = client.submit_blueprint(bundles.ir())
    return client.create_kernel(record.hash, target or bundles.target()).id


def _compiled_kernel(client: UrzaClient, data: bytes) -> str:
    """A kernel of the shared blueprint and target, Compiled with ``data`` as its artifact."""
    identifier = _registered_kernel(client)
    client.change_phase(identifier, PhaseChange(phase=KernelPhase.COMPILING))
    client.upload_artifact(identifier, data, KEYRING.sign(identifier, data))
    client.change_phase(identifier, PhaseChange(phase=KernelPhase.COMPILED, compile_seconds=1.0))
    return identifier


# Refused at the door ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ir", "node", "problem"),
    [
        (ATTENTION_ON_FEATURES, "mix", "needs sequence input"),
        (CONV_ON_FEATURES, "conv", "needs image input"),
    ],
    ids=["attention-on-features", "conv2d-on-features"],
)
def test_shape_error_is_refused_at_post_naming_the_node(
    urza: RunningUrza, ir: BlueprintIR, node: str, problem: str
) -> None:
    client = urza.client()
    with pytest.raises(UrzaRequestError) as refused:
        client.submit_blueprint(ir)
    assert refused.value.status == 422
    assert f"node '{node}'" in str(refused.value)
    assert problem in str(refused.value)
    assert client.list_blueprints().items == []
    assert urza.events.events == []


def test_target_whose_sizes_break_the_blueprint_is_refused_at_registration(
    urza: RunningUrza,
) -> None:
    client = urza.client()
    record = client.submit_blueprint(builtin("self-attention"))
    broken = KernelTarget.parse("cpu:fp32:C=18,T=8:b=1,4")  # 18 channels, 4 heads
    with pytest.raises(UrzaRequestError) as refused:
        client.create_kernel(record.hash, broken)
    assert refused.value.status == 422
    assert "node 'attn'" in str(refused.value)
    assert "not divisible by 4 heads" in str(refused.value)
    assert client.list_kernels().items == []
    # The same blueprint on sizes that fit registers fine.
    fitting = client.create_kernel(record.hash, KernelTarget.parse("cpu:fp32:C=16,T=8:b=1,4"))
    assert fitting.phase is KernelPhase.PENDING


# Workers that hang or die -----------------------------------------------------------------------


@pytest.mark.reliability("worker-killed")
def test_worker_past_its_timeout_is_killed_and_the_kernel_ends_failed(
    embedded_urza: RunningUrza, marker: str
) -> None:
    client = embedded_urza.client()
    identifier = _registered_kernel(client)
    record = client.get_kernel(identifier)
    waits: list[float] = []
    runner = UnitRunner(
        client,
        RunnerOptions(
            timeout_seconds=2,
            max_attempts=2,
            backoff_seconds=0.5,
            extra_env=embedded_urza.worker_env(marker),
            compile_cache=False,
        ),
        sleep=waits.append,
    )

    outcome = runner.run(
        WorkUnit(UnitKind.COMPILE, identifier, record.blueprint_hash, record.target)
    )

    note_faults(outcome.attempts)  # each attempt hung past the timeout and was killed
    kernel = client.get_kernel(identifier)
    # Lost: a unit left Compiling by a killed worker, neither finished nor marked for retry.
    note_lost(int(kernel.phase is KernelPhase.COMPILING))
    assert not outcome.succeeded
    assert outcome.attempts == 2
    assert outcome.error == "worker timed out after 2 s and was killed"
    assert waits == [0.5]
    assert kernel.phase is KernelPhase.FAILED
    # Usually killed while still importing torch (the kernel stays Pending, and the reason reads
    # "gave up after 2 attempts: worker timed out ..."); on a fast machine a worker may have
    # reached Compiling first. Either way the reason names the timeout.
    assert kernel.error is not None
    assert kernel.error.endswith("worker timed out after 2 s and was killed"), kernel.error
    assert_no_marked_processes(marker)


@pytest.mark.reliability("worker-killed")
def test_worker_killed_mid_compile_is_retried_then_the_kernel_ends_failed(
    embedded_urza: RunningUrza, marker: str
) -> None:
    """A worker dies (SIGKILL, as by the OOM killer) each time the kernel is Compiling."""
    client = embedded_urza.client()
    identifier = _registered_kernel(client)
    record = client.get_kernel(identifier)
    waits: list[float] = []
    runner = UnitRunner(
        client,
        RunnerOptions(
            timeout_seconds=300,
            max_attempts=2,
            backoff_seconds=1.0,
            extra_env=embedded_urza.worker_env(marker),
            compile_cache=False,
        ),
        sleep=waits.append,
    )
    done = threading.Event()
    killed: list[int] = []

    def kill_each_compiling_worker() -> None:
        while not done.is_set() and len(killed) < 2:
            compiling = embedded_urza.events.phases(identifier).count(KernelPhase.COMPILING)
            workers = [p for p in marked_processes(marker) if p.pid not in killed]
            if compiling > len(killed) and workers:
                os.killpg(workers[0].pid, signal.SIGKILL)
                killed.append(workers[0].pid)
                note_faults()
            done.wait(0.1)

    killer = threading.Thread(target=kill_each_compiling_worker, daemon=True)
    killer.start()
    try:
        outcome = runner.run(
            WorkUnit(UnitKind.COMPILE, identifier, record.blueprint_hash, record.target)
        )
    finally:
        done.set()
        killer.join(10)

    note_lost(int(client.get_kernel(identifier).phase is KernelPhase.COMPILING))
    assert len(killed) == 2
    assert not outcome.succeeded
    assert outcome.attempts == 2
    assert outcome.error is not None
    assert outcome.error.startswith("worker killed by signal 9")
    assert waits == [1.0]
    # Each dead worker's Compiling was repaired to Failed; the retry started from there.
    assert embedded_urza.events.phases(identifier) == [
        KernelPhase.PENDING,
        KernelPhase.COMPILING,
        KernelPhase.FAILED,
        KernelPhase.PENDING,
        KernelPhase.COMPILING,
        KernelPhase.FAILED,
    ]
    kernel = client.get_kernel(identifier)
    assert kernel.phase is KernelPhase.FAILED
    assert kernel.error is not None
    assert "worker killed by signal 9" in kernel.error
    # After the last attempt the recorded reason says that the forge gave up.
    assert kernel.error.startswith("gave up after 2 attempts: "), kernel.error
    assert_no_marked_processes(marker)


# Bad kernels ------------------------------------------------------------------------------------


def test_kernel_whose_bundle_produces_nan_is_rejected(embedded_urza: RunningUrza) -> None:
    client = embedded_urza.client()
    identifier = _compiled_kernel(client, bundles.with_nan())

    kernel = validate_and_publish(client, identifier, keyring=KEYRING)

    assert kernel.phase is KernelPhase.REJECTED
    report = kernel.benchmark
    assert report is not None
    assert report.verdict is Verdict.REJECTED
    assert "the kernel yields NaN or Inf at graft" in report.reasons
    assert report.function_preserving is False
    assert report.gradients_finite is False
    assert client.get_kernel(identifier).phase is KernelPhase.REJECTED
    assert embedded_urza.events.phases(identifier)[-2:] == [
        KernelPhase.VALIDATING,
        KernelPhase.REJECTED,
    ]


def test_tampered_artifact_is_refused_and_the_kernel_ends_failed(urza: RunningUrza) -> None:
    client = urza.client(retries=0)
    data = bundles.compiled().data
    identifier = _compiled_kernel(client, data)
    kernel = client.get_kernel(identifier)
    assert kernel.sha256 == bundles.sha256(data)
    tampered = bytearray(data)
    tampered[len(tampered) // 2] ^= 0xFF
    settings = urza.settings
    if settings.blob_store == "s3":
        assert settings.s3_access_key_id is not None
        assert settings.s3_secret_access_key is not None
        s3 = make_client(
            settings.s3_endpoint_url or "",
            settings.s3_access_key_id.get_secret_value(),
            settings.s3_secret_access_key.get_secret_value(),
            settings.s3_region,
        )
        try:
            s3.put_object(
                Bucket=settings.s3_bucket, Key=blob_key(kernel.sha256 or ""), Body=bytes(tampered)
            )
        finally:
            s3.close()
    else:
        local_blob_path(kernel.artifact_uri or "").write_bytes(bytes(tampered))

    with pytest.raises((UrzaError, BundleError)) as refused:
        validate_and_publish(client, identifier, keyring=KEYRING)

    assert "sha256 mismatch" in str(refused.value)
    kernel = client.get_kernel(identifier)
    assert kernel.phase is KernelPhase.FAILED
    assert kernel.benchmark is None
    assert kernel.error is not None
    assert "sha256 mismatch" in kernel.error


def test_bundle_with_an_unknown_member_is_refused() -> None:
    # The compiled bundle with an entry appended that the format does not allow.
    buffer = io.BytesIO(bundles.compiled().data)
    with zipfile.ZipFile(buffer, "a", compression=zipfile.ZIP_STORED) as archive:
        archive.writestr("payload.py", b"import os; os.system('true')")
    with pytest.raises(BundleError, match=r"unexpected member\(s\): payload\.py"):
        read_bundle(buffer.getvalue())


def test_bundle_member_that_does_not_match_its_manifest_is_refused() -> None:
    original = bundles.bundle()
    listed = original.manifest.member(BundleMemberName.WEIGHTS)
    assert listed is not None
    forged_weights = bundles.with_perturbed(bundles.UP)
    forged = read_bundle(forged_weights).members[BundleMemberName.WEIGHTS]
    assert len(forged) == listed.size_bytes
    # The original manifest (and its digests), with the forged weights in the archive.
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_STORED) as archive:
        archive.writestr("manifest.json", original.manifest.to_json())
        for name, content in original.members.items():
            archive.writestr(name.value, forged if name is BundleMemberName.WEIGHTS else content)
    with pytest.raises(BundleError, match=r"member weights\.safetensors does not match"):
        read_bundle(buffer.getvalue())
