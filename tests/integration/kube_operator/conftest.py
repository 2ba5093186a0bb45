"""Fixtures of the operator tests: real control plane, stand-in kubelet, Urza, the operator."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.integration.kube_operator.support import (
    SIGNING_KEY,
    SIGNING_KEY_ID,
    TEST_IMAGE,
    WORKER_SIGNING_SECRET,
    WORKER_TOKEN_SECRET,
    OperatorProcess,
    install_operator_prerequisites,
    items,
    wait_for,
)
from tests.integration.phase1.support import RunningUrza, cluster_settings, serving
from tests.servers import S3Location
from tests.servers.kube import ControlPlane

OperatorFactory = Callable[..., OperatorProcess]

KOPF_PEERING = """\
apiVersion: kopf.dev/v1
kind: KopfPeering
metadata:
  name: esper-operator
"""


@pytest.fixture(scope="session")
def operator_kubeconfig(control_plane: ControlPlane) -> Path:
    """The operator's ServiceAccount kubeconfig, after its RBAC and peering are installed."""
    return install_operator_prerequisites(control_plane)


@pytest.fixture
def urza(postgres_sqlalchemy_url: str, s3_bucket: S3Location) -> Iterator[RunningUrza]:
    """Urza on PostgreSQL and the S3 server, served over HTTP on loopback."""
    with serving(cluster_settings(postgres_sqlalchemy_url, s3_bucket)) as running:
        yield running


@pytest.fixture
def worker_namespace(control_plane: ControlPlane, kube_namespace: str, urza: RunningUrza) -> str:
    """The test namespace, holding the Secrets that give Job pods Urza's token and the keys."""
    assert urza.token is not None
    control_plane.kubectl(
        "create",
        "secret",
        "generic",
        WORKER_TOKEN_SECRET,
        f"--from-literal=token={urza.token}",
        "-n",
        kube_namespace,
    )
    control_plane.kubectl(
        "create",
        "secret",
        "generic",
        WORKER_SIGNING_SECRET,
        f"--from-literal={SIGNING_KEY_ID}={SIGNING_KEY}",
        "-n",
        kube_namespace,
    )
    return kube_namespace


@pytest.fixture
def start_operator(
    control_plane: ControlPlane,
    operator_kubeconfig: Path,
    urza: RunningUrza,
    kubelet: object,
    worker_namespace: str,
) -> Iterator[OperatorFactory]:
    """Start operator replicas (each a real process); all are stopped after the test.

    They serve the test's namespace only (with its KopfPeering), as the chart deploys the
    operator: whatever another test left elsewhere in the cluster is never adopted.
    """
    del kubelet  # requested so Job pods run
    started: list[OperatorProcess] = []
    assert urza.token is not None
    control_plane.kubectl(
        "apply", "-n", worker_namespace, "-f", "-", input=KOPF_PEERING, timeout=30
    )

    def start(**overrides: str) -> OperatorProcess:
        settings = {
            "NAMESPACES": worker_namespace,
            "URZA_URL": urza.url,
            "URZA_TOKEN": urza.token or "",
            "WORKER_TOKEN_SECRET": WORKER_TOKEN_SECRET,
            "WORKER_SIGNING_SECRET": WORKER_SIGNING_SECRET,
            "WORKER_SIGNING_KEY_ID": SIGNING_KEY_ID,
            "IMAGE": TEST_IMAGE,
            "COMPILE_CACHE": "false",
            "JOB_BACKOFF_LIMIT": "1",
            "RESYNC_SECONDS": "5",
            "QUEUE_RETRY_SECONDS": "2",
            "PEERING_LIFETIME_SECONDS": "5",
            "LOG_FORMAT": "json",
            "GPU_NODE_SELECTOR": json.dumps({"esper.dev/accelerator": "true"}),
            "GPU_TOLERATIONS": json.dumps(
                [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
            ),
            **overrides,
        }
        replica = OperatorProcess(operator_kubeconfig, settings)
        started.append(replica)
        replica.start()
        return replica

    yield start
    for replica in started:
        replica.close()


@pytest.fixture
def operator_namespace(
    control_plane: ControlPlane, worker_namespace: str, start_operator: OperatorFactory
) -> Iterator[str]:
    """The worker namespace, emptied while the test's operator still runs.

    At teardown its Blueprints are deleted (their finalizer needs an operator, which stops
    right after) and the garbage collector's deletion of their Jobs and pods is awaited, so no
    pod of this test keeps running, or holds a GPU slot, while the next test runs.
    """
    del start_operator  # torn down after this fixture: the operator finalizes the Blueprints
    yield worker_namespace
    control_plane.kubectl(
        "delete", "blueprints", "--all", "-n", worker_namespace, "--timeout=90s", timeout=120
    )
    wait_for(
        lambda: not items(control_plane, "jobs,pods", "-n", worker_namespace),
        timeout=120,
        description=f"the Jobs and pods of {worker_namespace} to be garbage-collected",
    )
