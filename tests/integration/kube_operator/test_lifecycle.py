"""The operator's life on the real control plane: a crash mid-reconcile, spec updates, its RBAC.

Three tests reproduce operator bugs found while writing them (a design replaced mid-compile was
never cleaned up; supersession touched a kernel another Blueprint shared; a Job that found its
kernel compiling elsewhere left the Blueprint Failed); they guard the fixes.

Real parts only: kube-apiserver, the Job controller, the garbage collector, the scheduler, the
stand-in kubelet running each pod's `esper` command, Urza on PostgreSQL and the S3 server, and
the operator as a process with its own ServiceAccount.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from esper.blueprints.signing import Keyring
from esper.contracts.blueprint import BlueprintIR
from esper.contracts.kernel import KernelPhase, KernelTarget
from esper.contracts.urza_api import PhaseChange
from tests.integration.kube_operator.conftest import OperatorFactory
from tests.integration.kube_operator.support import (
    OPERATOR_ACCOUNT,
    OPERATOR_NAMESPACE,
    SIGNING_KEY,
    SIGNING_KEY_ID,
    apply_manifest,
    blueprint,
    blueprint_manifest,
    conditions_of,
    first_watched,
    holds_for,
    items,
    job_outcome,
    job_roles,
    jobs,
    kube_json,
    labels_of,
    name_of,
    phase_of,
    status_of,
    uid_of,
    wait_for,
    wait_for_phase,
)
from tests.integration.phase1.support import RunningUrza
from tests.servers.kube import ControlPlane
from tests.support.reliability import note_faults, note_lost, note_served

pytestmark = pytest.mark.timeout(900)

USABLE = frozenset({KernelPhase.COMPILED, KernelPhase.VALIDATED})
"""Kernel phases a consumer of Urza's catalogue would pick up."""


def _owner_uid(resource: dict[str, object]) -> str:
    return labels_of(resource)["esper.dev/owner-uid"]


def _spec(resource: dict[str, object]) -> dict[str, object]:
    spec = resource["spec"]
    assert isinstance(spec, dict)
    return spec


@pytest.mark.reliability("operator-killed")
def test_operator_killed_mid_reconcile_converges_without_duplicates(
    control_plane: ControlPlane,
    operator_namespace: str,
    urza: RunningUrza,
    start_operator: OperatorFactory,
) -> None:
    namespace = operator_namespace
    first = start_operator()
    names = ["crash-narrow", "crash-wide"]
    for hidden, name in zip((8, 24), names, strict=True):
        apply_manifest(control_plane, namespace, blueprint_manifest(name, hidden=hidden))

    # Crash (SIGKILL) as soon as the first compile Job exists: mid-pass, no goodbye.
    first_watched(
        control_plane, "jobs", "-n", namespace, "-l", "esper.dev/role=compile", timeout=120
    )
    first.kill()
    note_faults()
    assert not first.is_running
    start_operator()

    ready = {
        name: wait_for_phase(control_plane, namespace, name, "Ready", timeout=600) for name in names
    }

    # Exactly one of everything per Blueprint: Jobs, KernelArtifacts, Urza's kernels.
    artifacts = items(control_plane, "kernelartifacts", "-n", namespace)
    client = urza.client()
    assert len(client.list_blueprints().items) == len(names)
    for name, resource in ready.items():
        uid = uid_of(resource)
        compile_jobs = [
            job for job in jobs(control_plane, namespace, "compile") if _owner_uid(job) == uid
        ]
        assert len(compile_jobs) == 1, (name, [name_of(job) for job in compile_jobs])
        own = [artifact for artifact in artifacts if _owner_uid(artifact) == uid]
        assert len(own) == 1, (name, [name_of(artifact) for artifact in own])
        assert phase_of(own[0]) == "Validated", name
        benchmark_jobs = [
            job
            for job in jobs(control_plane, namespace, "benchmark")
            if _owner_uid(job) == uid_of(own[0])
        ]
        assert len(benchmark_jobs) == 1, (name, [name_of(job) for job in benchmark_jobs])
        status = status_of(resource)
        assert status["kernelCount"] == 1
        kernels = client.list_kernels(blueprint_hash=str(status["blueprintHash"])).items
        note_lost(int(not kernels))  # a Ready Blueprint whose kernel Urza no longer has
        assert len(kernels) == 1, (name, kernels)
        assert kernels[0].phase is KernelPhase.VALIDATED
        assert kernels[0].id == status_of(own[0])["kernelId"]
    assert len(jobs(control_plane, namespace)) == 2 * len(names)


def test_spec_update_builds_new_kernels_and_supersedes_the_old_ones(
    control_plane: ControlPlane,
    operator_namespace: str,
    urza: RunningUrza,
    start_operator: OperatorFactory,
) -> None:
    namespace = operator_namespace
    name = "evolving"
    start_operator()
    apply_manifest(control_plane, namespace, blueprint_manifest(name, hidden=8))
    before = status_of(wait_for_phase(control_plane, namespace, name, "Ready", timeout=600))
    old_hash = str(before["blueprintHash"])
    old_ref = before["kernels"][0]  # type: ignore[index]

    # A different hidden width is a different design: a new hash, new kernels and Jobs.
    apply_manifest(control_plane, namespace, blueprint_manifest(name, hidden=12))

    def new_artifact_validated() -> dict[str, object] | None:
        for artifact in items(control_plane, "kernelartifacts", "-n", namespace):
            if _spec(artifact)["blueprintHash"] != old_hash:
                return artifact if phase_of(artifact) == "Validated" else None
        return None

    new_artifact = wait_for(
        new_artifact_validated,
        timeout=600,
        description="the new generation's KernelArtifact to be Validated",
        interval=2.0,
    )
    assert isinstance(new_artifact, dict)
    new_hash = str(_spec(new_artifact)["blueprintHash"])
    assert new_hash != old_hash

    def blueprint_caught_up() -> dict[str, object] | None:
        status = status_of(blueprint(control_plane, namespace, name))
        ready = status.get("phase") == "Ready" and status.get("blueprintHash") == new_hash
        return status if ready else None

    after = wait_for(
        blueprint_caught_up, timeout=120, description="the Blueprint to report the new hash"
    )
    assert isinstance(after, dict)
    assert after["observedGeneration"] == 2
    assert after["kernelCount"] == 1
    assert after["kernels"][0]["kernelId"] == status_of(new_artifact)["kernelId"]  # type: ignore[index]
    assert after["kernels"][0]["phase"] == "Validated"  # type: ignore[index]
    assert conditions_of({"status": after})["Ready"]["observedGeneration"] == 2

    # The old generation: its KernelArtifact and Urza's kernel say Superseded.
    old_artifact = wait_for_phase(
        control_plane,
        namespace,
        str(old_ref["name"]),
        "Superseded",
        timeout=60,
        kind="kernelartifact",
    )
    superseded = conditions_of(old_artifact)["Superseded"]
    assert superseded["status"] == "True"
    assert superseded["reason"] == "NewerSpec"
    assert new_hash in str(superseded["message"])
    client = urza.client()
    assert client.get_kernel(str(old_ref["kernelId"])).phase is KernelPhase.SUPERSEDED
    assert client.get_kernel(str(after["kernels"][0]["kernelId"])).phase is KernelPhase.VALIDATED  # type: ignore[index]

    # One compile and one benchmark Job per generation, named after its hash.
    assert len(jobs(control_plane, namespace, "compile")) == 2
    assert len(jobs(control_plane, namespace, "benchmark")) == 2
    hashes = sorted(
        job["metadata"]["annotations"]["esper.dev/blueprint-hash"]  # type: ignore[index]
        for job in jobs(control_plane, namespace, "compile")
    )
    assert hashes == sorted([old_hash, new_hash])

    # Deleting the Blueprint removes both generations from Urza.
    control_plane.kubectl("delete", "blueprint", name, "-n", namespace, timeout=120)
    assert client.list_blueprints().items == []
    assert client.list_kernels().items == []


def test_spec_update_mid_compile_leaves_nothing_of_the_old_design(
    control_plane: ControlPlane,
    operator_namespace: str,
    urza: RunningUrza,
    start_operator: OperatorFactory,
) -> None:
    namespace = operator_namespace
    name = "hasty"
    start_operator()
    apply_manifest(control_plane, namespace, blueprint_manifest(name, hidden=8))
    old_job = first_watched(
        control_plane, "jobs", "-n", namespace, "-l", "esper.dev/role=compile", timeout=120
    )
    old_hash = str(
        kube_json(control_plane, old_job, "-n", namespace)["metadata"]["annotations"][  # type: ignore[index]
            "esper.dev/blueprint-hash"
        ]
    )
    # The design changes while its first version still compiles.
    assert job_outcome(kube_json(control_plane, old_job, "-n", namespace)) is None
    apply_manifest(control_plane, namespace, blueprint_manifest(name, hidden=12))
    wait_for(
        lambda: (
            status_of(blueprint(control_plane, namespace, name)).get("blueprintHash")
            not in (None, old_hash)
        ),
        timeout=60,
        description="the Blueprint to take the new design",
    )
    # The old compile Job runs to its end; then the new design is Ready.
    wait_for(
        lambda: job_outcome(kube_json(control_plane, old_job, "-n", namespace)),
        timeout=600,
        description="the old design's compile Job to finish",
        interval=2.0,
    )
    ready = status_of(wait_for_phase(control_plane, namespace, name, "Ready", timeout=600))
    new_hash = str(ready["blueprintHash"])
    assert new_hash != old_hash

    # Urza holds no usable kernel of the old design: it is Superseded (or was never compiled).
    client = urza.client()
    old_kernels = client.list_kernels(blueprint_hash=old_hash).items
    assert [kernel.phase for kernel in old_kernels if kernel.phase in USABLE] == [], old_kernels

    # Deleting the Blueprint removes both designs from Urza.
    control_plane.kubectl("delete", "blueprint", name, "-n", namespace, timeout=120)
    assert client.list_blueprints().items == []
    assert client.list_kernels().items == []


def test_spec_update_keeps_a_design_another_blueprint_still_holds(
    control_plane: ControlPlane,
    operator_namespace: str,
    urza: RunningUrza,
    start_operator: OperatorFactory,
) -> None:
    namespace = operator_namespace
    start_operator()
    # Two Blueprints, one design: Urza stores it (and its kernel) once, by content hash. The
    # second one, applied once the kernel is Validated, finds it so and runs no Job.
    twin = blueprint_manifest("twin-left", hidden=8, design="twin")
    apply_manifest(control_plane, namespace, twin)
    left = status_of(wait_for_phase(control_plane, namespace, "twin-left", "Ready", timeout=600))
    twin["metadata"] = {"name": "twin-right"}
    apply_manifest(control_plane, namespace, twin)
    right = status_of(wait_for_phase(control_plane, namespace, "twin-right", "Ready", timeout=120))
    assert job_roles(control_plane, namespace, "twin-right") == []
    assert left["blueprintHash"] == right["blueprintHash"]
    shared = str(left["kernels"][0]["kernelId"])  # type: ignore[index]
    assert right["kernels"][0]["kernelId"] == shared  # type: ignore[index]

    # One of them moves on to another design; the other still holds the first one.
    apply_manifest(
        control_plane, namespace, blueprint_manifest("twin-left", hidden=12, design="twin")
    )
    wait_for(
        lambda: (
            phase_of(found := blueprint(control_plane, namespace, "twin-left")) == "Ready"
            and status_of(found)["blueprintHash"] != right["blueprintHash"]
        ),
        timeout=600,
        description="twin-left to be Ready with its new design",
        interval=2.0,
    )
    old_artifact = kube_json(
        control_plane, "kernelartifact", str(left["kernels"][0]["name"]), "-n", namespace  # type: ignore[index]
    )
    assert conditions_of(old_artifact)["Superseded"]["status"] == "True"
    assert urza.client().get_kernel(shared).phase is KernelPhase.VALIDATED
    assert phase_of(blueprint(control_plane, namespace, "twin-right")) == "Ready"


def test_blueprint_waits_for_a_kernel_another_worker_is_compiling(
    control_plane: ControlPlane,
    operator_namespace: str,
    urza: RunningUrza,
    start_operator: OperatorFactory,
) -> None:
    namespace = operator_namespace
    manifest = blueprint_manifest("patient", hidden=8)
    spec = _spec(manifest)
    ir = BlueprintIR.model_validate(spec["ir"])
    target = KernelTarget.model_validate(spec["targets"][0])  # type: ignore[index]
    # Another worker has claimed the kernel: a local forge sharing this Urza, or the Job of
    # another Blueprint of the same design (Urza stores kernels by design and target).
    client = urza.client()
    kernel = client.create_kernel(client.submit_blueprint(ir).hash, target)
    client.change_phase(kernel.id, PhaseChange(phase=KernelPhase.COMPILING))

    start_operator()
    apply_manifest(control_plane, namespace, manifest)
    job = first_watched(
        control_plane, "jobs", "-n", namespace, "-l", "esper.dev/role=compile", timeout=120
    )
    # The Blueprint's own compile Job finds nothing to do...
    wait_for(
        lambda: job_outcome(kube_json(control_plane, job, "-n", namespace)) == "Complete",
        timeout=300,
        description="the compile Job to complete",
        interval=2.0,
    )
    # ... and the Blueprint waits (over two resyncs) instead of giving up.
    holds_for(
        lambda: phase_of(blueprint(control_plane, namespace, "patient")) == "Compiling",
        seconds=12.0,
        description="the Blueprint Compiling while the other worker compiles",
    )

    # The other worker finishes; the Blueprint's pipeline picks the kernel up from there.
    import torch  # the test compiles as that worker does (torch is heavy: imported here only)

    from esper.tezzeret.compiler import CompileOptions, compile_kernel

    compiled = compile_kernel(ir, target, CompileOptions(compile_cache=False))
    # It signs with the key the cluster's workers hold, as Tezzeret would: the benchmark Job
    # refuses an unsigned bundle.
    keyring = Keyring(
        {SIGNING_KEY_ID: SIGNING_KEY.encode()}, signing_key_id=SIGNING_KEY_ID, source="test"
    )
    client.upload_artifact(kernel.id, compiled.data, keyring.sign(kernel.id, compiled.data))
    client.change_phase(
        kernel.id,
        PhaseChange(
            phase=KernelPhase.COMPILED,
            compile_seconds=compiled.manifest.compile_seconds,
            torch_version=torch.__version__,
        ),
    )
    ready = wait_for_phase(control_plane, namespace, "patient", "Ready", timeout=600)
    assert status_of(ready)["kernels"][0]["kernelId"] == kernel.id  # type: ignore[index]
    assert job_roles(control_plane, namespace, "patient") == ["benchmark", "compile"]


OPERATOR_USER = f"system:serviceaccount:{OPERATOR_NAMESPACE}:{OPERATOR_ACCOUNT}"


@dataclass(frozen=True)
class Permission:
    """One row of the operator's RBAC table: may it ``verb`` the ``resource``?"""

    verb: str
    resource: str
    allowed: bool
    subresource: str | None = None

    def __str__(self) -> str:
        """Name the row for the test id."""
        subresource = f"/{self.subresource}" if self.subresource else ""
        return f"{'can' if self.allowed else 'cannot'} {self.verb} {self.resource}{subresource}"


# What operator/deploy/rbac.yaml must grant, and what a compromised operator must not be able to
# do (delete or read what it does not own, run arbitrary pods, touch the cluster).
PERMISSIONS = [
    Permission("create", "jobs.batch", allowed=True),
    Permission("create", "kernelartifacts.esper.dev", allowed=True),
    Permission("patch", "blueprints.esper.dev", allowed=True),
    Permission("update", "morphogeneticruns.esper.dev", allowed=True, subresource="status"),
    Permission("create", "events", allowed=True),
    Permission("list", "pods", allowed=True),
    Permission("delete", "jobs.batch", allowed=False),
    Permission("get", "secrets", allowed=False),
    Permission("create", "pods", allowed=False),
    Permission("delete", "blueprints.esper.dev", allowed=False),
    Permission("create", "deployments.apps", allowed=False),
    Permission("update", "nodes", allowed=False),
]


@pytest.mark.parametrize("permission", PERMISSIONS, ids=str)
@pytest.mark.reliability("rbac")
def test_operator_service_account_has_least_privilege(
    control_plane: ControlPlane, operator_kubeconfig: Path, permission: Permission
) -> None:
    del operator_kubeconfig  # requested so the ClusterRole and its binding are installed
    subresource = [f"--subresource={permission.subresource}"] if permission.subresource else []
    result = control_plane.kubectl(
        "auth", "can-i", permission.verb, permission.resource, *subresource,
        "--all-namespaces", f"--as={OPERATOR_USER}",
        check=False,
    )  # fmt: skip
    # can-i exits 0 with "yes" or 1 with "no"; anything else is an error, not an answer.
    answer = result.stdout.strip()
    assert answer in ("yes", "no"), (result.returncode, result.stdout, result.stderr)
    note_served()
    assert answer == ("yes" if permission.allowed else "no"), result.stderr
    assert result.returncode == (0 if permission.allowed else 1)
