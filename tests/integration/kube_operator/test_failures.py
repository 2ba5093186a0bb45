"""What goes wrong, on the real control plane: bad manifests, failing compiles, the GPU Job cap.

Real parts only: kube-apiserver (with the CRDs' schemas), the Job controller, the scheduler, the
stand-in kubelet running each pod's `esper` command, Urza on PostgreSQL and the S3 server, and
the operator as a process with its own ServiceAccount. CUDA targets fail to compile on this
CPU-only machine (``esper tezzeret compile`` says the target needs CUDA), which is the failure
these tests need.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field

import pytest

from tests.integration.kube_operator.conftest import OperatorFactory
from tests.integration.kube_operator.support import (
    apply_manifest,
    blueprint,
    blueprint_manifest,
    conditions_of,
    cpu_target,
    cuda_target,
    holds_for,
    items,
    job_outcome,
    jobs,
    kube_json,
    log_messages,
    name_of,
    phase_of,
    status_of,
    uid_of,
    wait_for,
    wait_for_phase,
)
from tests.integration.phase1.support import RunningUrza
from tests.servers.kube import ControlPlane

pytestmark = pytest.mark.timeout(900)

GPU_NODE = "esper-gpu-0"
GPU_SELECTOR = {"esper.dev/accelerator": "true"}
GPU_TOLERATION = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
NO_CUDA = "needs CUDA, which this machine lacks"
"""What ``esper tezzeret compile`` says about a CUDA target on a machine without CUDA."""


def _spec(manifest: dict[str, object]) -> dict[str, object]:
    spec = manifest["spec"]
    assert isinstance(spec, dict)
    return spec


def _ir(manifest: dict[str, object]) -> dict[str, object]:
    ir = _spec(manifest)["ir"]
    assert isinstance(ir, dict)
    return ir


def _targets_as_string(manifest: dict[str, object]) -> None:
    _spec(manifest)["targets"] = "cpu"


def _batch_size_as_string(manifest: dict[str, object]) -> None:
    _spec(manifest)["targets"] = [{**cpu_target(32), "batchSizes": ["one"]}]


def _without_output(manifest: dict[str, object]) -> None:
    del _ir(manifest)["output"]


def _unknown_op(manifest: dict[str, object]) -> None:
    nodes = _ir(manifest)["nodes"]
    assert isinstance(nodes, list)
    nodes[1]["op"] = "swish"


# (the mutation, what the API server's message must say, including the field's path)
SCHEMA_VIOLATIONS = {
    "targets-not-a-list": (
        _targets_as_string,
        r'spec\.targets: Invalid value: "string": spec\.targets in body must be of type array',
    ),
    "batch-size-not-an-integer": (
        _batch_size_as_string,
        r"spec\.targets\[0\]\.batchSizes\[0\]: Invalid value: \"string\": "
        r".*must be of type integer",
    ),
    "missing-output": (_without_output, r"spec\.ir\.output: Required value"),
    # The op allow-list is an enum in the CRD, so an unknown op never reaches the operator.
    "unknown-op": (_unknown_op, r'spec\.ir\.nodes\[1\]\.op: Unsupported value: "swish"'),
}


@pytest.mark.parametrize("case", sorted(SCHEMA_VIOLATIONS))
def test_api_server_rejects_a_manifest_that_breaks_the_schema(
    control_plane: ControlPlane, kube_namespace: str, case: str
) -> None:
    mutate, message = SCHEMA_VIOLATIONS[case]
    manifest = blueprint_manifest(f"bad-{case}")
    mutate(manifest)

    result = apply_manifest(control_plane, kube_namespace, manifest, check=False)

    assert result.returncode != 0, result.stdout
    assert re.search(message, result.stderr), result.stderr
    assert f'The Blueprint "bad-{case}" is invalid: ' in result.stderr
    assert not items(control_plane, "blueprints,jobs", "-n", kube_namespace)


# (the manifest, what Valid=False's message must say)
def _operator_only_violations() -> dict[str, tuple[dict[str, object], str]]:
    # The residual add of a 16-wide linear and the 32-wide input: the API server cannot see
    # it (the widths are symbols until a target binds them), shape inference can.
    mismatched = blueprint_manifest(
        "mismatched-residual",
        nodes=[
            {"id": "down", "op": "linear", "inputs": ["input"], "params": {"outFeatures": 16}},
            {"id": "join", "op": "add", "inputs": ["input", "down"]},
        ],
        output="join",
    )
    unbound = blueprint_manifest(
        "unbound-symbol", targets=[{"device": "cpu", "dtype": "fp32", "batchSizes": [1, 8]}]
    )
    # The schema allows a CUDA target without a compute capability; the contract does not.
    no_capability = blueprint_manifest(
        "cuda-without-capability",
        targets=[{"device": "cuda", "dtype": "fp32", "bindings": {"C": 32}, "batchSizes": [1]}],
    )
    return {
        "mismatched-residual": (
            mismatched,
            "blueprint 'mismatched-residual': node 'join' (add): inputs differ in shape: "
            "features[32] and features[16]",
        ),
        "unbound-symbol": (unbound, "target 'cpu:fp32:b=1,8' does not bind symbol(s) C"),
        "cuda-without-capability": (
            no_capability,
            "a cuda target needs computeCapability (for example '9.0')",
        ),
    }


def test_operator_reports_designs_the_schema_cannot_judge_as_invalid(
    control_plane: ControlPlane,
    operator_namespace: str,
    urza: RunningUrza,
    start_operator: OperatorFactory,
) -> None:
    namespace = operator_namespace
    start_operator()
    cases = _operator_only_violations()
    for manifest, _ in cases.values():
        apply_manifest(control_plane, namespace, manifest)  # the API server accepts them

    for name, (_, message) in cases.items():
        invalid = wait_for_phase(control_plane, namespace, name, "Invalid", timeout=120)
        conditions = conditions_of(invalid)
        assert conditions["Valid"]["status"] == "False", conditions
        assert conditions["Valid"]["reason"] == "InvalidSpec"
        assert message in str(conditions["Valid"]["message"]), conditions["Valid"]
        assert conditions["Ready"]["status"] == "False"
        status = status_of(invalid)
        assert status["observedGeneration"] == 1
        assert "blueprintHash" not in status
        assert "kernels" not in status or status["kernels"] == []

    # Nothing was started or registered for any of them.
    assert not items(control_plane, "jobs,pods,kernelartifacts", "-n", namespace)
    client = urza.client()
    assert client.list_blueprints().items == []
    assert client.list_kernels().items == []


def _pods_of(
    plane: ControlPlane, namespace: str, job: dict[str, object]
) -> list[dict[str, object]]:
    uid = uid_of(job)
    return items(plane, "pods", "-n", namespace, "-l", f"batch.kubernetes.io/controller-uid={uid}")


def test_failed_compile_marks_the_blueprint_failed_and_is_retried_only_when_deleted(
    control_plane: ControlPlane,
    operator_namespace: str,
    urza: RunningUrza,
    start_operator: OperatorFactory,
) -> None:
    namespace = operator_namespace
    operator = start_operator(JOB_BACKOFF_LIMIT="1")
    apply_manifest(
        control_plane, namespace, blueprint_manifest("gpu-compile", targets=[cuda_target(32)])
    )

    # The compile Job asks for a GPU and may only land on GPU nodes.
    found = wait_for(
        lambda: jobs(control_plane, namespace, "compile"),
        timeout=120,
        description="the compile Job",
    )
    assert isinstance(found, list)
    assert len(found) == 1
    job = found[0]
    job_name = name_of(job)
    assert job["spec"]["backoffLimit"] == 1  # type: ignore[index]
    pod_spec = job["spec"]["template"]["spec"]  # type: ignore[index]
    resources = pod_spec["containers"][0]["resources"]
    assert resources["limits"]["nvidia.com/gpu"] == "1"
    assert resources["requests"]["nvidia.com/gpu"] == "1"
    assert pod_spec["nodeSelector"] == GPU_SELECTOR
    assert pod_spec["tolerations"] == [GPU_TOLERATION]

    # The Job controller runs the pod twice (backoffLimit 1), then gives up.
    failed_job = wait_for(
        lambda: (
            current
            if job_outcome(current := kube_json(control_plane, "job", job_name, "-n", namespace))
            else None
        ),
        timeout=400,
        description=f"Job {job_name} to finish",
        interval=2.0,
    )
    assert isinstance(failed_job, dict)
    assert job_outcome(failed_job) == "Failed", failed_job
    pods = _pods_of(control_plane, namespace, failed_job)
    assert len(pods) == 2, [name_of(pod) for pod in pods]
    for pod in pods:
        assert pod["spec"]["nodeName"] == GPU_NODE  # type: ignore[index]
        assert phase_of(pod) == "Failed"
        terminated = status_of(pod)["containerStatuses"][0]["state"]["terminated"]  # type: ignore[index]
        assert terminated["exitCode"] == 1
        assert NO_CUDA in terminated["message"]
    last_pod = max(pods, key=lambda pod: str(pod["metadata"]["creationTimestamp"]))  # type: ignore[index]

    # The Blueprint says why, with the pod's exit code and the tail of its output.
    failed = wait_for_phase(control_plane, namespace, "gpu-compile", "Failed", timeout=120)
    conditions = conditions_of(failed)
    assert conditions["Failed"]["status"] == "True"
    assert conditions["Failed"]["reason"] == "JobFailed"
    message = str(conditions["Failed"]["message"])
    assert f"compile Job {job_name} failed: BackoffLimitExceeded" in message, message
    assert f"pod {name_of(last_pod)} exited 1 (Error)" in message, message
    assert "esper: error: TargetUnavailableError: target cuda@9.0:fp32:C=32:b=1,8 " + NO_CUDA in (
        message
    )
    assert conditions["Ready"]["status"] == "False"
    assert conditions["Compiling"]["status"] == "False"
    kernels = status_of(failed)["kernels"]
    assert isinstance(kernels, list)
    assert len(kernels) == 1
    assert kernels[0]["phase"] == "Failed"
    assert urza.client().get_kernel(kernels[0]["kernelId"]).phase.value == "Failed"
    assert not items(control_plane, "kernelartifacts", "-n", namespace)

    # Never recreated on its own, not even by a restarted operator's pass over it.
    pod_names = sorted(name_of(pod) for pod in items(control_plane, "pods", "-n", namespace))
    job_uids = [uid_of(job) for job in jobs(control_plane, namespace)]
    operator.stop()
    restarted = start_operator(JOB_BACKOFF_LIMIT="1")
    wait_for(
        lambda: log_messages(restarted, about="gpu-compile", contains="succeeded"),
        timeout=60,
        description="the restarted operator to reconcile the Blueprint",
    )

    def unchanged() -> bool:
        now_jobs = [uid_of(job) for job in jobs(control_plane, namespace)]
        now_pods = sorted(name_of(pod) for pod in items(control_plane, "pods", "-n", namespace))
        return (
            now_jobs == job_uids
            and now_pods == pod_names
            and phase_of(blueprint(control_plane, namespace, "gpu-compile")) == "Failed"
        )

    holds_for(
        unchanged,
        seconds=15.0,
        description="no new Job or pod for the Failed Blueprint",
    )

    # Deleting the failed Job is the documented way to ask for a fresh attempt.
    control_plane.kubectl("delete", "job", job_name, "-n", namespace)
    fresh = wait_for(
        lambda: [job for job in jobs(control_plane, namespace) if uid_of(job) not in job_uids],
        timeout=60,
        description="a fresh compile Job",
    )
    assert isinstance(fresh, list)
    assert [name_of(job) for job in fresh] == [job_name]
    retrying = wait_for_phase(
        control_plane, namespace, "gpu-compile", "Compiling", timeout=60, fail_on=()
    )
    assert conditions_of(retrying)["Failed"]["status"] == "False"
    assert conditions_of(retrying)["Compiling"]["status"] == "True"


@dataclass
class _GpuTimeline:
    """What sampling the GPU Jobs and the Blueprints saw."""

    samples: int = 0
    most_active: int = 0
    waiting_for_gpu: set[str] = field(default_factory=set)
    first_seen: dict[str, float] = field(default_factory=dict)
    finished_at: dict[str, float] = field(default_factory=dict)
    owner_of: dict[str, str] = field(default_factory=dict)


def _sample(plane: ControlPlane, namespace: str, names: list[str], timeline: _GpuTimeline) -> bool:
    now = time.monotonic()
    gpu_jobs = items(plane, "jobs", "-n", namespace, "-l", "esper.dev/gpu=true")
    active = [job for job in gpu_jobs if job_outcome(job) is None]
    timeline.samples += 1
    timeline.most_active = max(timeline.most_active, len(active))
    for job in gpu_jobs:
        name = name_of(job)
        timeline.first_seen.setdefault(name, now)
        timeline.owner_of[name] = str(job["metadata"]["annotations"]["esper.dev/blueprint"])  # type: ignore[index]
        if job_outcome(job) is not None:
            timeline.finished_at.setdefault(name, now)
    phases = []
    for name in names:
        found = blueprint(plane, namespace, name)
        compiling = conditions_of(found).get("Compiling", {})
        if compiling.get("status") == "True" and compiling.get("reason") == "WaitingForGpu":
            timeline.waiting_for_gpu.add(name)
        phases.append(phase_of(found))
    return all(phase == "Failed" for phase in phases)


def test_gpu_job_cap_runs_one_gpu_job_at_a_time(
    control_plane: ControlPlane,
    operator_namespace: str,
    start_operator: OperatorFactory,
) -> None:
    namespace = operator_namespace
    start_operator(MAX_GPU_JOBS="1", JOB_BACKOFF_LIMIT="1")
    names = ["gpu-first", "gpu-second"]
    for hidden, name in zip((16, 24), names, strict=True):
        manifest = blueprint_manifest(name, hidden=hidden, targets=[cuda_target(32)])
        apply_manifest(control_plane, namespace, manifest)

    timeline = _GpuTimeline()
    wait_for(
        lambda: _sample(control_plane, namespace, names, timeline),
        timeout=600,
        description="both Blueprints to be Failed",
        interval=0.5,
    )

    assert timeline.most_active == 1, timeline
    assert sorted(timeline.owner_of.values()) == names, timeline
    first, second = sorted(timeline.first_seen, key=timeline.first_seen.__getitem__)
    # The second Job was created only after the first had finished...
    assert timeline.first_seen[second] >= timeline.finished_at[first], timeline
    first_job = kube_json(control_plane, "job", first, "-n", namespace)
    second_job = kube_json(control_plane, "job", second, "-n", namespace)
    failed_at = conditions_of(first_job)["Failed"]["lastTransitionTime"]
    assert str(second_job["metadata"]["creationTimestamp"]) >= str(failed_at)  # type: ignore[index]
    # ... while its Blueprint said it waited for a GPU.
    assert timeline.owner_of[second] in timeline.waiting_for_gpu, timeline
    for name in names:
        conditions = conditions_of(blueprint(control_plane, namespace, name))
        assert conditions["Failed"]["status"] == "True"
        assert NO_CUDA in str(conditions["Failed"]["message"])
