"""The operator under test: a real ``python -m esper_operator`` process, run as its ServiceAccount.

The operator logs in with a token of ``esper-system/esper-operator`` bound to the ClusterRole of
``operator/deploy/rbac.yaml``, so every test also proves that role is enough.
"""

from __future__ import annotations

import json
import os
import selectors
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Collection, Mapping
from pathlib import Path
from typing import ClassVar

from tests.servers._process import ServerProcess, free_port
from tests.servers.kube import ControlPlane

REPO_ROOT = Path(__file__).resolve().parents[3]
DEPLOY_DIR = REPO_ROOT / "operator" / "deploy"
OPERATOR_NAMESPACE = "esper-system"
OPERATOR_ACCOUNT = "esper-operator"
WORKER_TOKEN_SECRET = "urza-token"
WORKER_SIGNING_SECRET = "esper-signing-keys"
"""The kernel signing keys' Secret in the worker namespace, as the chart creates it."""
SIGNING_KEY_ID = "k1"
SIGNING_KEY = "kube-operator-signing-key-" + "0" * 32
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


def validated_artifacts(plane: ControlPlane, namespace: str) -> list[dict[str, object]]:
    """Return the namespace's KernelArtifacts once all of them are Validated (else nothing).

    Args:
        plane: The control plane.
        namespace: Where they are.

    Returns:
        The artifacts, or an empty list while any is not Validated yet.

    Raises:
        AssertionError: When one of them Failed (waiting longer would not help).
    """
    artifacts = items(plane, "kernelartifacts", "-n", namespace)
    phases = [status_of(artifact).get("phase") for artifact in artifacts]
    assert "Failed" not in phases, artifacts
    return artifacts if artifacts and all(phase == "Validated" for phase in phases) else []


def finished_run(plane: ControlPlane, namespace: str, name: str) -> dict[str, object] | None:
    """Return a MorphogeneticRun once it Succeeded with its final results (else None).

    Args:
        plane: The control plane.
        namespace: Its namespace.
        name: Its name.

    Returns:
        The run, or None while it is not finished.

    Raises:
        AssertionError: When it Failed.
    """
    run = kube_json(plane, "morphogeneticrun", name, "-n", namespace)
    status = status_of(run)
    if status.get("phase") == "Failed":
        raise AssertionError(f"the run failed: {status}")
    return (
        run
        if status.get("phase") == "Succeeded" and status.get("testAccuracy") is not None
        else None
    )


# Manifests ------------------------------------------------------------------------------------


def cpu_target(width: int) -> dict[str, object]:
    """Return a small CPU kernel target binding the width ``C``.

    Args:
        width: The size bound to ``C``.

    Returns:
        The target, as a manifest writes it.
    """
    return {"device": "cpu", "dtype": "fp32", "bindings": {"C": width}, "batchSizes": [1, 8]}


def cuda_target(width: int, capability: str = "9.0") -> dict[str, object]:
    """Return a CUDA kernel target (its Jobs request a GPU; this machine has none).

    Args:
        width: The size bound to ``C``.
        capability: The compute capability.

    Returns:
        The target, as a manifest writes it.
    """
    return {**cpu_target(width), "device": "cuda", "computeCapability": capability}


def blueprint_manifest(
    name: str,
    *,
    hidden: int = 16,
    targets: list[dict[str, object]] | None = None,
    nodes: list[dict[str, object]] | None = None,
    output: str = "up",
    design: str | None = None,
) -> dict[str, object]:
    """Return a Blueprint: by default a bottleneck MLP (linear, relu, zero-initialised linear).

    Args:
        name: The resource's (and the design's) name.
        hidden: The bottleneck width (a different width is a different design and hash).
        targets: Compile targets (default: one small CPU target).
        nodes: Other nodes instead of the MLP.
        output: The output node.
        design: The design's name (``spec.ir.name``; default: ``name``). Two Blueprints with
            the same design and targets share its hash, and so its kernels in Urza.

    Returns:
        The manifest, for :func:`apply_manifest`.
    """
    mlp: list[dict[str, object]] = [
        {"id": "down", "op": "linear", "inputs": ["input"], "params": {"outFeatures": hidden}},
        {"id": "act", "op": "relu", "inputs": ["down"]},
        {
            "id": "up",
            "op": "linear",
            "inputs": ["act"],
            "params": {"outFeatures": "C", "init": "zeros"},
        },
    ]
    return {
        "apiVersion": "esper.dev/v1alpha1",
        "kind": "Blueprint",
        "metadata": {"name": name},
        "spec": {
            "ir": {
                "name": design or name,
                "input": {"layout": "features", "shape": ["C"]},
                "nodes": nodes if nodes is not None else mlp,
                "output": output,
            },
            "targets": targets if targets is not None else [cpu_target(32)],
        },
    }


def apply_manifest(
    plane: ControlPlane, namespace: str, manifest: Mapping[str, object], *, check: bool = True
) -> subprocess.CompletedProcess[str]:
    """``kubectl apply`` a manifest in a namespace, as a user would.

    Args:
        plane: The control plane.
        namespace: The namespace.
        manifest: The object.
        check: Raise ``KubectlError`` when kubectl fails.

    Returns:
        kubectl's completed process.
    """
    return plane.kubectl(
        "apply", "-n", namespace, "-f", "-", input=json.dumps(manifest), check=check
    )


# Reading the cluster --------------------------------------------------------------------------


def conditions_of(resource: dict[str, object]) -> dict[str, dict[str, object]]:
    """Return a resource's status conditions by type.

    Args:
        resource: The object.

    Returns:
        ``{type: condition}``.
    """
    raw = status_of(resource).get("conditions")
    found = raw if isinstance(raw, list) else []
    return {str(item["type"]): item for item in found if isinstance(item, dict) and "type" in item}


def blueprint(plane: ControlPlane, namespace: str, name: str) -> dict[str, object]:
    """Return a Blueprint.

    Args:
        plane: The control plane.
        namespace: Its namespace.
        name: Its name.

    Returns:
        The object.
    """
    return kube_json(plane, "blueprint", name, "-n", namespace)


def phase_of(resource: dict[str, object]) -> object:
    """Return ``status.phase`` (None when unset).

    Args:
        resource: The object.

    Returns:
        The phase.
    """
    return status_of(resource).get("phase")


def labels_of(resource: dict[str, object]) -> dict[str, str]:
    """Return a resource's labels.

    Args:
        resource: The object.

    Returns:
        Its labels (empty when it has none).
    """
    metadata = resource.get("metadata")
    raw = metadata.get("labels") if isinstance(metadata, dict) else None
    return {str(key): str(value) for key, value in raw.items()} if isinstance(raw, dict) else {}


def name_of(resource: dict[str, object]) -> str:
    """Return ``metadata.name``.

    Args:
        resource: The object.

    Returns:
        The name.
    """
    metadata = resource.get("metadata")
    assert isinstance(metadata, dict)
    return str(metadata["name"])


def uid_of(resource: dict[str, object]) -> str:
    """Return ``metadata.uid``.

    Args:
        resource: The object.

    Returns:
        The uid.
    """
    metadata = resource.get("metadata")
    assert isinstance(metadata, dict)
    return str(metadata["uid"])


def job_outcome(job: dict[str, object]) -> str | None:
    """Return ``Complete`` or ``Failed`` for a finished Job, None for one still active.

    Args:
        job: The Job.

    Returns:
        The type of its true finishing condition, if any.
    """
    for kind, condition in conditions_of(job).items():
        if kind in ("Complete", "Failed") and condition.get("status") == "True":
            return kind
    return None


def jobs(plane: ControlPlane, namespace: str, role: str | None = None) -> list[dict[str, object]]:
    """Return the operator's Jobs in a namespace, optionally of one role.

    Args:
        plane: The control plane.
        namespace: The namespace.
        role: ``compile``, ``benchmark`` or ``training``; None for all.

    Returns:
        The Jobs.
    """
    selector = "app.kubernetes.io/managed-by=esper-operator"
    if role is not None:
        selector += f",esper.dev/role={role}"
    return items(plane, "jobs", "-n", namespace, "-l", selector)


def holds_for(
    check: Callable[[], bool], *, seconds: float, description: str, interval: float = 1.0
) -> None:
    """Assert that ``check`` stays true for ``seconds`` (something must *not* happen).

    Args:
        check: The invariant.
        seconds: How long it must hold.
        description: What must hold (for the error).
        interval: Seconds between checks.

    Raises:
        AssertionError: When it was false at some check.
    """
    deadline = time.monotonic() + seconds
    while True:
        assert check(), f"{description} stopped holding"
        if time.monotonic() >= deadline:
            return
        time.sleep(interval)


def log_messages(
    replica: OperatorProcess, *, about: str | None = None, contains: str | None = None
) -> list[str]:
    """Return a replica's log messages, optionally about one object or containing a text.

    Args:
        replica: The operator.
        about: Only lines of kopf's per-object logger for objects of this name.
        contains: Only messages containing this text.

    Returns:
        The messages.
    """
    messages: list[str] = []
    for line in replica.log_lines():
        reference = line.get("object")
        if about is not None and not (
            isinstance(reference, dict) and reference.get("name") == about
        ):
            continue
        message = str(line.get("message", ""))
        if contains is None or contains in message:
            messages.append(message)
    return messages


def wait_for_phase(
    plane: ControlPlane,
    namespace: str,
    name: str,
    phase: str,
    *,
    timeout: float,
    kind: str = "blueprint",
    fail_on: Collection[str] = ("Failed", "Invalid"),
) -> dict[str, object]:
    """Wait until a resource's ``status.phase`` is ``phase`` and return it.

    Args:
        plane: The control plane.
        namespace: Its namespace.
        name: Its name.
        phase: The phase awaited.
        timeout: Seconds before giving up.
        kind: The resource (``blueprint``, ``kernelartifact``...).
        fail_on: Phases that end the wait at once (the resource settled elsewhere).

    Returns:
        The resource in that phase.

    Raises:
        AssertionError: When it reached one of ``fail_on`` instead (its status in the message).
    """

    def reached() -> dict[str, object] | None:
        found = kube_json(plane, kind, name, "-n", namespace)
        current = phase_of(found)
        assert (
            current == phase or current not in fail_on
        ), f"{kind} {name} is {current}, not {phase}: {json.dumps(status_of(found), indent=1)}"
        return found if current == phase else None

    found = wait_for(
        reached, timeout=timeout, description=f"{kind} {name} to be {phase}", interval=2.0
    )
    assert isinstance(found, dict)
    return found


def job_roles(plane: ControlPlane, namespace: str, blueprint_name: str) -> list[str]:
    """Return the roles of the Jobs working for one Blueprint, sorted (one entry per Job).

    Args:
        plane: The control plane.
        namespace: The namespace.
        blueprint_name: The Blueprint (its Jobs carry its name in ``esper.dev/blueprint``).

    Returns:
        E.g. ``["benchmark", "compile"]`` for one kernel compiled and benchmarked.
    """
    roles = []
    for job in jobs(plane, namespace):
        metadata = job["metadata"]
        assert isinstance(metadata, dict)
        if metadata.get("annotations", {}).get("esper.dev/blueprint") == blueprint_name:
            roles.append(labels_of(job)["esper.dev/role"])
    return sorted(roles)


def first_watched(plane: ControlPlane, *args: str, timeout: float) -> str:
    """Watch with ``kubectl get ARGS --watch -o name`` and return the first object it names.

    Faster to react than polling: the name arrives as the API server's watch event does.

    Args:
        plane: The control plane.
        *args: What to watch (``"jobs", "-n", ns``...).
        timeout: Seconds before giving up.

    Returns:
        The first ``kind/name`` printed.

    Raises:
        TimeoutError: When nothing appeared in time.
    """
    home = plane.base_dir / "home"
    home.mkdir(exist_ok=True)
    command = [str(plane.bin_dir / "kubectl"), f"--kubeconfig={plane.kubeconfig}", "get", *args]
    with subprocess.Popen(
        [*command, "--watch", "-o", "name"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home), "LC_ALL": "C"},
    ) as watcher:
        assert watcher.stdout is not None
        try:
            with selectors.DefaultSelector() as selector:
                selector.register(watcher.stdout, selectors.EVENT_READ)
                if not selector.select(timeout):
                    raise TimeoutError(f"nothing appeared within {timeout:.0f}s: {args}")
                return watcher.stdout.readline().decode("utf-8").strip()
        finally:
            watcher.kill()
