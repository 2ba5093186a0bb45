"""A Blueprint through the real chain: kubectl apply -> Jobs run -> KernelArtifact Validated.

Real parts only: kube-apiserver, etcd, the Job controller, the garbage collector and the scheduler
(built from Kubernetes' Go module), the stand-in kubelet running each pod's `esper` command,
Urza on PostgreSQL and the S3 server, and the operator as a process with its own ServiceAccount.
"""

from __future__ import annotations

import re

import boto3
import pytest

from esper.urza.client import UrzaNotFoundError
from tests.integration.kube_operator.conftest import OperatorFactory
from tests.integration.kube_operator.support import (
    REPO_ROOT,
    SIGNING_KEY_ID,
    items,
    kube_json,
    status_of,
    validated_artifacts,
    wait_for,
)
from tests.integration.phase1.support import RunningUrza
from tests.servers import S3Location
from tests.servers.kube import ControlPlane

pytestmark = pytest.mark.timeout(900)

EXAMPLE = REPO_ROOT / "examples" / "blueprints" / "bottleneck-mlp.yaml"


def test_applied_blueprint_compiles_validates_and_is_listed(
    control_plane: ControlPlane,
    worker_namespace: str,
    urza: RunningUrza,
    s3_bucket: S3Location,
    start_operator: OperatorFactory,
) -> None:
    namespace = worker_namespace
    operator = start_operator()
    control_plane.kubectl("apply", "-n", namespace, "-f", str(EXAMPLE))

    artifacts = wait_for(
        lambda: validated_artifacts(control_plane, namespace),
        timeout=600,
        description="the KernelArtifact to be Validated",
        interval=2.0,
    )
    assert isinstance(artifacts, list)
    assert len(artifacts) == 1
    artifact = artifacts[0]
    status = status_of(artifact)
    latency = status.get("latencyP50Ms")
    assert isinstance(latency, float | int)
    assert latency > 0

    # Urza's record is what the status mirrors.
    client = urza.client()
    kernel = client.get_kernel(str(status["kernelId"]))
    assert kernel.phase.value == "Validated"
    assert status["sha256"] == kernel.sha256
    assert status["artifactUri"] == kernel.artifact_uri
    assert status["verdict"] == "Validated"
    # The compile Job signed with the key mounted from the Secret, and the benchmark Job
    # validated only after checking that signature.
    assert kernel.signature is not None
    assert kernel.signature.key_id == SIGNING_KEY_ID

    # The Blueprint's status: Ready, its one kernel, conditions, the generation it saw.
    blueprint = kube_json(control_plane, "blueprint", "bottleneck-mlp", "-n", namespace)
    blueprint_status = status_of(blueprint)
    assert blueprint_status["phase"] == "Ready"
    assert blueprint_status["kernelCount"] == 1
    assert blueprint_status["observedGeneration"] == blueprint["metadata"]["generation"]  # type: ignore[index]
    conditions = {item["type"]: item["status"] for item in blueprint_status["conditions"]}  # type: ignore[union-attr,index]
    assert conditions["Valid"] == "True"
    assert conditions["Ready"] == "True"
    assert conditions["Compiling"] == "False"
    assert conditions["Failed"] == "False"

    # Exactly one compile and one benchmark Job, owned by the Blueprint and the KernelArtifact.
    jobs = items(control_plane, "jobs", "-n", namespace)
    roles = sorted(job["metadata"]["labels"]["esper.dev/role"] for job in jobs)  # type: ignore[index]
    assert roles == ["benchmark", "compile"]
    owners = {
        job["metadata"]["labels"]["esper.dev/role"]: job["metadata"]["ownerReferences"][0]["kind"]  # type: ignore[index]
        for job in jobs
    }
    assert owners == {"compile": "Blueprint", "benchmark": "KernelArtifact"}
    assert artifact["metadata"]["ownerReferences"][0]["kind"] == "Blueprint"  # type: ignore[index]

    # What a user sees: the printer columns of all three resources, through the real kubectl.
    table = control_plane.kubectl(
        "get", "blueprints,kernelartifacts,morphogeneticruns", "-n", namespace
    ).stdout
    assert re.search(r"NAME\s+PHASE\s+KERNELS\s+AGE", table), table
    assert re.search(r"bottleneck-mlp\s+Ready\s+1\s+", table), table
    assert re.search(r"NAME\s+BLUEPRINT\s+TARGET\s+PHASE\s+LATENCY\s+AGE", table), table
    assert re.search(r"bottleneck-mlp\s+cpu:fp32:C=128\S*\s+Validated\s+[0-9.]+", table), table

    # Metrics and structured logs.
    metrics = operator.metrics()
    assert re.search(
        r'esper_operator_reconciles_total\{kind="Blueprint",result="ok"\} [1-9]', metrics
    )
    assert "esper_operator_reconcile_seconds_bucket" in metrics
    assert any(line.get("logger", "").startswith("esper_operator") for line in operator.log_lines())  # type: ignore[union-attr]

    # Delete: the finalizer empties Urza and the bucket; the garbage collector takes the rest.
    blueprint_hash = str(blueprint_status["blueprintHash"])
    control_plane.kubectl("delete", "blueprint", "bottleneck-mlp", "-n", namespace, timeout=120)
    with pytest.raises(UrzaNotFoundError):
        client.get_blueprint(blueprint_hash)
    with pytest.raises(UrzaNotFoundError):
        client.get_kernel(kernel.id)
    s3 = boto3.client(
        "s3",
        endpoint_url=s3_bucket.endpoint_url,
        region_name=s3_bucket.region,
        aws_access_key_id=s3_bucket.access_key,
        aws_secret_access_key=s3_bucket.secret_key,
    )
    assert s3.list_objects_v2(Bucket=s3_bucket.bucket).get("KeyCount", 0) == 0
    wait_for(
        lambda: not items(control_plane, "jobs,pods,kernelartifacts", "-n", namespace),
        timeout=120,
        description="the garbage collector to delete the Jobs, pods and KernelArtifact",
    )
