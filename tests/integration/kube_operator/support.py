"""The operator under test: a real ``python -m esper_operator`` process, run as its ServiceAccount.

The operator logs in with a token of ``esper-system/esper-operator`` bound to the ClusterRole of
``operator/deploy/rbac.yaml``, so every test also proves that role is enough.
"""

from __future__ import annotations

import json
import os
import sys
import time
import urllib.request
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import ClassVar

from tests.servers._process import ServerProcess, free_port
from tests.servers.kube import ControlPlane

REPO_ROOT = Path(__file__).resolve().parents[3]
DEPLOY_DIR = REPO_ROOT / "operator" / "deploy"
OPERATOR_NAMESPACE = "esper-system"
OPERATOR_ACCOUNT = "esper-operator"
WORKER_TOKEN_SECRET = "urza-token"
TEST_IMAGE = "esper-test:local"


def install_operator_prerequisites(plane: ControlPlane) -> Path:
    """Apply the peering CRDs and object and the operator's RBAC; return its kubeconfig.

    Args:
        plane: The control plane.

    Returns:
        A kubeconfig authenticating as the operator's ServiceAccount.
    """
    if plane.kubectl("get", "namespace", OPERATOR_NAMESPACE, check=False).returncode:
        plane.kubectl("create", "namespace", OPERATOR_NAMESPACE)
    plane.kubectl("apply", "-f", str(DEPLOY_DIR / "peering.yaml"))
    plane.kubectl(
        "wait",
        "--for=condition=Established",
        "crd/clusterkopfpeerings.kopf.dev",
        "crd/kopfpeerings.kopf.dev",
        "--timeout=60s",
    )
    plane.kubectl("apply", "-f", str(DEPLOY_DIR / "peering-object.yaml"))
    plane.kubectl("apply", "-f", str(DEPLOY_DIR / "rbac.yaml"))
    plane.wait_for_service_account(OPERATOR_NAMESPACE, OPERATOR_ACCOUNT)
    return plane.service_account_kubeconfig(OPERATOR_NAMESPACE, OPERATOR_ACCOUNT)


class OperatorProcess(ServerProcess):
    """One replica of the operator; ready when its liveness endpoint answers."""

    name: ClassVar[str] = "operator"

    def __init__(self, kubeconfig: Path, settings: Mapping[str, str]) -> None:
        """Describe the replica; nothing starts yet.

        Args:
            kubeconfig: The ServiceAccount kubeconfig it logs in with.
            settings: ``ESPER_OPERATOR_*`` variables (without the prefix), e.g. ``URZA_URL``.
        """
        super().__init__(startup_timeout=90.0, shutdown_timeout=20.0)
        self.kubeconfig = kubeconfig
        self.settings = dict(settings)
        self.metrics_port = free_port()

    def _command(self) -> list[str]:
        return [sys.executable, "-m", "esper_operator"]

    def _env(self) -> Mapping[str, str]:
        environment = dict(super()._env())
        # Coverage follows subprocesses through its own variables; the venv's bin comes first.
        environment.update({k: v for k, v in os.environ.items() if k.startswith("COVERAGE")})
        environment["PATH"] = f"{Path(sys.executable).parent}:{environment['PATH']}"
        environment["KUBECONFIG"] = str(self.kubeconfig)
        environment["POD_ID"] = f"operator-{self.port}"
        environment["ESPER_OPERATOR_HEALTH_PORT"] = str(self.port)
        environment["ESPER_OPERATOR_METRICS_PORT"] = str(self.metrics_port)
        for key, value in self.settings.items():
            environment[f"ESPER_OPERATOR_{key}"] = value
        return environment

    def _probe(self) -> bool:
        try:
            with urllib.request.urlopen(
                f"http://127.0.0.1:{self.port}/healthz", timeout=2
            ) as response:
                return bool(response.status == 200)
        except OSError:
            return False

    def metrics(self) -> str:
        """Return the Prometheus metrics text.

        Returns:
            The body of ``/metrics``.
        """
        with urllib.request.urlopen(
            f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5
        ) as response:
            return response.read().decode("utf-8")

    def log_lines(self) -> list[dict[str, object]]:
        """Return the operator's structured log lines (JSON objects) so far.

        Returns:
            The parsed lines; lines that are not JSON objects are skipped.
        """
        lines: list[dict[str, object]] = []
        if not self.log_path.exists():
            return lines
        for line in self.log_path.read_text(encoding="utf-8", errors="replace").splitlines():
            if line.startswith("{"):
                try:
                    parsed = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if isinstance(parsed, dict):
                    lines.append(parsed)
        return lines


def kube_json(plane: ControlPlane, *args: str) -> dict[str, object]:
    """Run ``kubectl get ... -o json`` and parse it.

    Args:
        plane: The control plane.
        *args: What to get (``"blueprints", "-n", ns``...).

    Returns:
        The parsed object or list.
    """
    result = plane.kubectl("get", *args, "-o", "json")
    parsed = json.loads(result.stdout)
    assert isinstance(parsed, dict)
    return parsed


def items(plane: ControlPlane, *args: str) -> list[dict[str, object]]:
    """Return the items of a ``kubectl get`` list.

    Args:
        plane: The control plane.
        *args: What to list.

    Returns:
        The items.
    """
    found = kube_json(plane, *args).get("items")
    assert isinstance(found, list)
    return [item for item in found if isinstance(item, dict)]


def wait_for(
    condition: Callable[[], object], *, timeout: float, description: str, interval: float = 1.0
) -> object:
    """Poll until ``condition`` returns something truthy and return it.

    Args:
        condition: The check.
        timeout: Seconds before giving up.
        description: What is awaited (for the error).
        interval: Seconds between checks.

    Returns:
        The truthy value.

    Raises:
        TimeoutError: When it never became true.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {description}")
        time.sleep(interval)


def status_of(resource: dict[str, object]) -> dict[str, object]:
    """Return a resource's status mapping (empty when it has none).

    Args:
        resource: The object.

    Returns:
        Its status.
    """
    status = resource.get("status")
    return status if isinstance(status, dict) else {}
