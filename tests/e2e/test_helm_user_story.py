"""The design card's user story in a cluster: helm install, kubectl apply, kubectl get, uninstall.

Real parts only: the control plane built from Kubernetes' Go module (API server, etcd, Job,
Deployment and garbage-collection controllers, scheduler), the real ``helm`` and ``kubectl``
binaries, and the test-only stand-in kubelet running every pod's command as a local process —
the chart's operator and Urza Deployments, its migration Job, then the operator's compile,
benchmark and training Jobs. The chart's in-cluster databases are replaced through values by the
suite's PostgreSQL, Redis and S3 server, and the pods reach Urza on loopback through ``urza.url``
(there is no Service network here); everything else comes from the chart as a user installs it.

The story:

1. ``helm install`` with ``--wait``: the operator and Urza run from the chart's manifests, the
   migration Job brings the suite's database to Urza's schema;
2. ``kubectl apply -f examples/blueprints/residual-mlp.yaml``: ``kubectl get kernelartifacts``
   shows the kernel Validated with a latency;
3. ``kubectl apply -f examples/runs/mnist1d-quick.yaml``: the run trains in a Job, grows a seed
   from that very kernel (no second compile), and succeeds with its adaptations in its status
   and as Events;
4. ``helm upgrade`` replaces the migration Job with the new revision's and keeps the generated
   Urza token;
5. deleting the resources cleans Urza (the upgraded operator's finalizers, with that token), and
   ``helm uninstall`` removes every object of the release and stops its processes.
"""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import pytest
import yaml

from esper.blueprints.library import builtin
from esper.contracts.kernel import KernelPhase
from esper.urza.client import UrzaClient
from tests.integration.kube_operator.support import (
    finished_run,
    items,
    kube_json,
    status_of,
    validated_artifacts,
    wait_for,
)
from tests.servers import RedisServer, S3Location, free_port
from tests.servers.kube import ControlPlane
from tests.support.helm import CHART, REPO_ROOT, Helm
from tests.support.kubelet import StandInKubelet

pytestmark = [pytest.mark.postgres, pytest.mark.s3, pytest.mark.redis, pytest.mark.timeout(1800)]

RELEASE = "story"
BLUEPRINT = REPO_ROOT / "examples" / "blueprints" / "residual-mlp.yaml"
RUN = REPO_ROOT / "examples" / "runs" / "mnist1d-quick.yaml"
INSTANCE = f"app.kubernetes.io/instance={RELEASE}"


def _values(
    namespace: str, *, urza_port: int, database_url: str, redis_url: str, s3: S3Location
) -> dict[str, object]:
    return {
        "operator": {
            "healthPort": free_port(),
            "metricsPort": free_port(),
            "resyncSeconds": 5,
            "queueRetrySeconds": 2,
            "jobBackoffLimit": 1,
        },
        "urza": {
            "port": urza_port,
            # Pods are host processes here: they reach Urza on loopback, not through a Service.
            "url": f"http://127.0.0.1:{urza_port}",
            "schemaWaitSeconds": 120,
            "migration": {"waitSeconds": 60},
        },
        "workers": {"namespaces": [namespace], "compileCache": False},
        "postgresql": {"enabled": False},
        "externalDatabase": {"url": database_url},
        "redis": {"enabled": False},
        "externalRedis": {"url": redis_url},
        "minio": {"enabled": False},
        "externalS3": {
            "endpoint": s3.endpoint_url,
            "bucket": s3.bucket,
            "region": s3.region,
            "accessKeyId": s3.access_key,
            "secretAccessKey": s3.secret_key,
        },
    }


def _answers(url: str) -> bool:
    try:
        return httpx.get(f"{url}/healthz", timeout=2.0).status_code == 200
    except httpx.TransportError:
        return False


def _token(plane: ControlPlane, namespace: str) -> str:
    secret = kube_json(plane, "secret", f"{RELEASE}-esper-urza-token", "-n", namespace)
    data = secret["data"]
    assert isinstance(data, dict)
    return str(data["token"])


def _release_objects(plane: ControlPlane, namespace: str) -> list[str]:
    namespaced = plane.kubectl(
        "get", "deployments,statefulsets,jobs,pods,services,secrets,serviceaccounts",
        "-n", namespace, "-l", INSTANCE, "-o", "name",
    ).stdout.split()  # fmt: skip
    cluster_wide = plane.kubectl(
        "get", "clusterroles,clusterrolebindings,clusterkopfpeerings", "-l", INSTANCE, "-o", "name"
    ).stdout.split()
    return namespaced + cluster_wide


def test_helm_install_apply_blueprint_and_run_then_uninstall(
    *,
    control_plane: ControlPlane,
    kubelet: StandInKubelet,
    kube_namespace: str,
    postgres_sqlalchemy_url: str,
    redis_server: RedisServer,
    s3_bucket: S3Location,
    tmp_path: Path,
) -> None:
    del kubelet  # requested so the release's pods run
    namespace = kube_namespace
    urza_port = free_port()
    urza_url = f"http://127.0.0.1:{urza_port}"
    redis_server.ensure_running()
    redis_server.flush_all()
    values = tmp_path / "values.yaml"
    values.write_text(
        yaml.safe_dump(
            _values(
                namespace,
                urza_port=urza_port,
                database_url=postgres_sqlalchemy_url,
                redis_url=redis_server.url(3),
                s3=s3_bucket,
            )
        ),
        encoding="utf-8",
    )
    helm = Helm(tmp_path / "helm-home", control_plane.kubeconfig)

    # 1. helm install --wait: the operator and Urza Deployments become available.
    installed = helm.run(
        "install", RELEASE, str(CHART), "--namespace", namespace, "-f", str(values),
        "--wait", "--timeout", "5m",
    )  # fmt: skip
    assert "STATUS: deployed" in installed.stdout
    assert "kubectl -n" in installed.stdout  # NOTES.txt: the first commands to run
    wait_for(lambda: _answers(urza_url), timeout=180, description="Urza to serve", interval=1.0)
    [migration] = items(control_plane, "jobs", "-n", namespace, "-l", INSTANCE)
    assert migration["metadata"]["name"] == f"{RELEASE}-esper-urza-migrate-1"  # type: ignore[index]
    wait_for(
        lambda: status_of(kube_json(control_plane, "job", f"{RELEASE}-esper-urza-migrate-1",
                                    "-n", namespace)).get("succeeded"),
        timeout=120,
        description="the migration Job to succeed",
    )  # fmt: skip
    deployments = items(control_plane, "deployments", "-n", namespace, "-l", INSTANCE)
    assert sorted(d["metadata"]["name"] for d in deployments) == [  # type: ignore[index]
        f"{RELEASE}-esper-operator",
        f"{RELEASE}-esper-urza",
    ]
    assert all(status_of(d).get("availableReplicas") == 1 for d in deployments), deployments

    # 2. A Blueprint from the examples: its kernel is compiled and validated by Jobs.
    control_plane.kubectl("apply", "-n", namespace, "-f", str(BLUEPRINT))
    artifacts = wait_for(
        lambda: validated_artifacts(control_plane, namespace),
        timeout=900,
        description="the residual-mlp KernelArtifact to be Validated",
        interval=3.0,
    )
    assert isinstance(artifacts, list)
    assert len(artifacts) == 1
    table = control_plane.kubectl("get", "kernelartifacts", "-n", namespace).stdout
    header, row = table.strip().splitlines()
    assert re.search(r"PHASE\s+.*LATENCY", header), table
    latency = row.split()[header.split().index("LATENCY")]
    assert re.fullmatch(r"\d+(\.\d+)?", latency), table
    assert "Validated" in row.split()
    kernel_id = str(status_of(artifacts[0])["kernelId"])
    client = UrzaClient(urza_url)
    assert client.get_kernel(kernel_id).phase is KernelPhase.VALIDATED

    # 3. A run from the examples grows a seed from that kernel and reports through its status.
    control_plane.kubectl("apply", "-n", namespace, "-f", str(RUN))
    run = wait_for(
        lambda: finished_run(control_plane, namespace, "mnist1d-quick"),
        timeout=900,
        description="the mnist1d-quick run to succeed",
        interval=3.0,
    )
    assert isinstance(run, dict)
    status = status_of(run)
    assert status["epoch"] == 6
    adaptations = status["adaptations"]
    assert isinstance(adaptations, list)
    assert any(item["action"] == "germinate" for item in adaptations), adaptations
    events = items(
        control_plane, "events", "-n", namespace, "--field-selector",
        "involvedObject.kind=MorphogeneticRun,involvedObject.name=mnist1d-quick",
    )  # fmt: skip
    assert {"Germinate", "RunFinished"} <= {str(event.get("reason")) for event in events}
    # The run grafted the cluster's kernel: no kernel of residual-mlp but that one exists.
    residual = builtin("residual-mlp").canonical_hash()
    assert [kernel.id for kernel in client.list_kernels(blueprint_hash=residual).items] == [
        kernel_id
    ]

    # 4. helm upgrade: a new migration Job replaces the old one, the generated token survives
    # (read back from the release's Secret), so the upgraded operator can still delete in Urza.
    token_before = _token(control_plane, namespace)
    helm.run(
        "upgrade", RELEASE, str(CHART), "--namespace", namespace, "-f", str(values),
        "--set", "operator.logFormat=plain", "--wait", "--timeout", "5m",
    )  # fmt: skip
    assert _token(control_plane, namespace) == token_before
    wait_for(
        lambda: [job["metadata"]["name"] for job in items(  # type: ignore[index]
            control_plane, "jobs", "-n", namespace, "-l", INSTANCE
        )] == [f"{RELEASE}-esper-urza-migrate-2"],
        timeout=60,
        description="the revision-2 migration Job to replace revision 1's",
    )  # fmt: skip
    wait_for(lambda: _answers(urza_url), timeout=180, description="Urza to serve again")

    # 5. Cleaning up: the resources (finalizers clear Urza), then the release itself.
    control_plane.kubectl(
        "delete", "-n", namespace, "-f", str(RUN), "-f", str(BLUEPRINT), "--timeout=120s",
        timeout=150,
    )  # fmt: skip
    assert client.list_kernels(blueprint_hash=residual).items == []
    helm.run("uninstall", RELEASE, "--namespace", namespace, "--wait", "--timeout", "3m")
    wait_for(
        lambda: not _release_objects(control_plane, namespace),
        timeout=120,
        description="every object of the release to be gone",
    )
    wait_for(lambda: not _answers(urza_url), timeout=60, description="Urza's process to stop")
    assert helm.run("status", RELEASE, "--namespace", namespace, check=False).returncode != 0
