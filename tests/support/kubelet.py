"""A test-only stand-in kubelet: registers Nodes and runs their Pods as local processes.

Never import this from ``src/`` or ``operator/``: it exists so integration tests can run the real
Job controller, scheduler and garbage collector of ``tests/servers/kube.py`` end to end without a
container runtime.

What it does, per Node it owns (:data:`DEFAULT_NODES`: ``esper-gpu-0`` with two fake GPUs behind a
``nvidia.com/gpu=present:NoSchedule`` taint, and ``esper-cpu-0``):

- registers the Node (capacity, labels, taints, a Ready condition; the ``not-ready`` taint that the
  API server's admission adds is replaced, since no node-lifecycle controller runs), renews its
  Lease in ``kube-node-lease`` and heartbeats its status every ``heartbeat_interval`` seconds;
- watches the Pods bound to it and runs each Pod's single container as a host process:
  ``command`` + ``args`` with Kubernetes' ``$(VAR)`` expansion, ``env``/``envFrom`` resolved like a
  kubelet (values, Secret and ConfigMap keys, a few ``fieldRef`` paths), the pytest process's
  environment underneath (``PATH`` with this venv's ``bin`` first; ``KUBECONFIG`` removed) plus
  ``KUBERNETES_SERVICE_HOST``/``PORT`` pointing at the API server, working directory a per-pod
  directory (``workingDir`` when it exists);
- materialises ``configMap``, ``secret``, ``emptyDir``, ``downwardAPI``, ``projected`` (including
  ServiceAccount tokens, so in-cluster clients work) and ``hostPath`` volumes as files and
  bind-mounts them at their ``mountPath`` in a private mount namespace (``unshare --mount``; needs
  root), so ``/etc/esper/run/run.yaml`` reads as in a cluster;
- reports Pod status like a kubelet: Pending -> Running -> Succeeded/Failed, container states with
  exit codes, reasons (``Completed``/``Error``) and a termination message (the last 2 KiB / 80
  lines of the container's output, for every exit, not only failures);
- on deletion, SIGTERMs the container's process group, SIGKILLs it after the grace period (capped at
  ``termination_grace_cap`` seconds) and deletes the Pod object with grace period 0.

Limits (a Pod using them fails with reason ``UnsupportedPodSpec``): one container, no init
containers, an explicit ``command`` (there are no images), no ``resourceFieldRef``. Images,
resource limits, probes, security contexts and ports are ignored.

Run it inside pytest (:class:`StandInKubelet` ``start()``/``stop()``) or as a process::

    python -m tests.support.kubelet --kubeconfig PATH [--work-dir DIR]
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import TypeVar

import urllib3.exceptions
from kubernetes import client, config, watch
from kubernetes.client.exceptions import ApiException

LOG = logging.getLogger("esper.tests.kubelet")

KEEP_DIRS_ENV = "ESPER_KEEP_SERVER_DIRS"
GPU_RESOURCE = "nvidia.com/gpu"
NODE_LEASE_NAMESPACE = "kube-node-lease"
KUBELET_VERSION = "v1.37.2-esper-stand-in"
POD_IP = "127.0.0.1"
#: The termination message: at most this many bytes and lines of the container's output.
MESSAGE_MAX_BYTES = 2048
MESSAGE_MAX_LINES = 80
#: Seconds between two checks of a container process (also the reaction time to a deletion).
POLL_INTERVAL = 0.1
#: Seconds to wait for the API server when it is briefly unreachable (e.g. a restart in a test).
API_RETRY_SECONDS = 30.0
SERVICE_ACCOUNT_TOKEN_SECONDS = 3607
_MAX_RESTART_BACKOFF = 10.0
_T = TypeVar("_T")
_ENV_NAME = re.compile(r"^[-._a-zA-Z][-._a-zA-Z0-9]*$")

# Runs inside `unshare --mount --propagation private`: bind-mounts each (source, target, mode)
# triple, then execs the container command that follows "--".
_MOUNT_SCRIPT = r"""
set -e
while [ "$#" -gt 0 ] && [ "$1" != "--" ]; do
    src=$1; dst=$2; mode=$3; shift 3
    if [ -d "$src" ]; then
        mkdir -p "$dst"
    else
        mkdir -p "$(dirname "$dst")"
        [ -e "$dst" ] || : > "$dst"
    fi
    mount --bind "$src" "$dst"
    if [ "$mode" = ro ]; then mount -o remount,bind,ro "$dst"; fi
done
shift
exec "$@"
"""


@dataclass(frozen=True)
class NodeSpec:
    """A Node the stand-in kubelet registers.

    Attributes:
        name: The Node name.
        capacity: Capacity (also used as allocatable), e.g. ``{"cpu": "16", "memory": "64Gi"}``.
        labels: Extra labels (``kubernetes.io/hostname``, ``/os`` and ``/arch`` are always set).
        taints: Taints as API dicts (``key``, ``value``, ``effect``).
    """

    name: str
    capacity: Mapping[str, str]
    labels: Mapping[str, str] = field(default_factory=dict)
    taints: Sequence[Mapping[str, str]] = ()


GPU_NODE = NodeSpec(
    name="esper-gpu-0",
    capacity={"cpu": "16", "memory": "64Gi", "pods": "110", GPU_RESOURCE: "2"},
    labels={"esper.dev/accelerator": "true", "nvidia.com/gpu.present": "true"},
    taints=({"key": GPU_RESOURCE, "value": "present", "effect": "NoSchedule"},),
)
CPU_NODE = NodeSpec(name="esper-cpu-0", capacity={"cpu": "16", "memory": "64Gi", "pods": "110"})
DEFAULT_NODES: tuple[NodeSpec, ...] = (GPU_NODE, CPU_NODE)


class KubeletError(RuntimeError):
    """The stand-in kubelet hit an unexpected error (reported by :meth:`StandInKubelet.stop`)."""


class _UnsupportedPodError(Exception):
    """The Pod uses something the stand-in kubelet cannot run; the Pod fails with this message."""


class _ConfigNotReadyError(Exception):
    """A referenced ConfigMap, Secret or key is missing; retried, as a real kubelet does."""


class _PodGoneError(Exception):
    """The Pod object no longer exists (or is a different Pod now)."""


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _now_micro() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def expand(text: str, variables: Mapping[str, str]) -> str:
    """Expand ``$(VAR)`` references the way Kubernetes does for command, args and env values.

    ``$$`` is an escaped ``$``; references to undefined variables and unterminated references stay
    as written.

    Args:
        text: The string to expand.
        variables: The variables that are defined.

    Returns:
        The expanded string.
    """
    out: list[str] = []
    checkpoint = 0
    i = 0
    while i < len(text):
        if text[i] == "$" and i + 1 < len(text):
            out.append(text[checkpoint:i])
            following = text[i + 1]
            advance = 1
            if following == "$":
                out.append("$")
            elif following == "(":
                end = text.find(")", i + 2)
                if end == -1:
                    out.append("$(")
                else:
                    name = text[i + 2 : end]
                    out.append(variables.get(name, f"$({name})"))
                    advance = end - i
            else:
                out.append("$" + following)
            i += advance
            checkpoint = i + 1
        i += 1
    out.append(text[checkpoint:])
    return "".join(out)


def _tail(path: Path, start: int = 0) -> str:
    """The termination message: the last lines of a log from ``start``, within the size limits."""
    try:
        with path.open("rb") as log:
            log.seek(0, os.SEEK_END)
            size = log.tell()
            log.seek(max(start, size - MESSAGE_MAX_BYTES))
            data = log.read()
    except FileNotFoundError:
        return ""
    lines = data.decode("utf-8", errors="replace").splitlines()
    if size - start > MESSAGE_MAX_BYTES and lines:
        lines = lines[1:]  # a partial first line
    return "\n".join(lines[-MESSAGE_MAX_LINES:])


def _is_transient(exc: BaseException) -> bool:
    """Whether an API error is worth retrying (connection trouble, 429, 5xx)."""
    if isinstance(exc, ApiException):
        return exc.status in (429, 500, 502, 503, 504)
    return isinstance(exc, urllib3.exceptions.HTTPError | ConnectionError)


def _hides_the_image(mount_path: str, work_dir: Path) -> bool:
    """Tell whether a mount at ``mount_path`` would hide the checkout, the venv or our files."""
    target = Path(mount_path).resolve()
    protected = (
        Path(__file__).resolve().parents[2],
        Path(sys.prefix).resolve(),
        Path(sys.executable).resolve().parent,
        work_dir.resolve(),
    )
    return any(path == target or target in path.parents for path in protected)


@dataclass
class _Mount:
    source: Path
    target: str
    read_only: bool


@dataclass
class _Container:
    """A container as the kubelet prepared it: argv, environment and mounts."""

    argv: list[str]
    env: dict[str, str]
    mounts: list[_Mount]
    cwd: Path


class StandInKubelet:
    """Registers Nodes and runs the Pods scheduled to them as local processes.

    Attributes:
        kubeconfig: The kubeconfig it uses (admin rights).
        nodes: The Nodes it owns.
        work_dir: Per-pod directories (logs, volumes, working directories) live here.
        heartbeat_interval: Seconds between Lease renewals and Node status heartbeats.
        termination_grace_cap: The most seconds a deleted Pod's process gets after SIGTERM.
    """

    def __init__(
        self,
        kubeconfig: Path,
        *,
        nodes: Sequence[NodeSpec] = DEFAULT_NODES,
        work_dir: Path | None = None,
        heartbeat_interval: float = 10.0,
        termination_grace_cap: float = 3.0,
        extra_env: Mapping[str, str] | None = None,
    ) -> None:
        """Load the kubeconfig; nothing is registered or started yet.

        Args:
            kubeconfig: A kubeconfig with rights on Nodes, Leases, Pods, Secrets and ConfigMaps.
            nodes: The Nodes to register (names must be unique).
            work_dir: Where the per-pod directories go; a fresh temporary directory (deleted on
                :meth:`stop` unless ``ESPER_KEEP_SERVER_DIRS=1``) when None.
            heartbeat_interval: Seconds between Lease renewals and status heartbeats.
            termination_grace_cap: Upper bound on a deleted Pod's grace period, in seconds.
            extra_env: Variables added to every container's environment (under the Pod's own).
        """
        names = [node.name for node in nodes]
        if len(set(names)) != len(names) or not names:
            raise ValueError(f"node names must be unique and non-empty: {names}")
        self.kubeconfig = kubeconfig
        self.nodes = tuple(nodes)
        self._node_names = frozenset(names)
        self._own_work_dir = work_dir is None
        self.work_dir = (
            work_dir
            if work_dir is not None
            # Not under /tmp: pods commonly mount an emptyDir at /tmp, which would hide the
            # sources of their later mounts if those lived there.
            else Path(tempfile.mkdtemp(prefix="esper-kubelet-", dir="/var/tmp"))
        )
        self.heartbeat_interval = heartbeat_interval
        self.termination_grace_cap = termination_grace_cap
        self._extra_env = dict(extra_env or {})
        configuration = client.Configuration()
        config.load_kube_config(config_file=str(kubeconfig), client_configuration=configuration)
        configuration.connection_pool_maxsize = 64
        self.api_server = configuration.host
        self._api_client = client.ApiClient(configuration)
        self.core = client.CoreV1Api(self._api_client)
        self.coordination = client.CoordinationV1Api(self._api_client)
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._workers: dict[str, _PodWorker] = {}
        self._by_name: dict[tuple[str, str], _PodWorker] = {}
        self._threads: list[threading.Thread] = []
        self._errors: list[str] = []
        self._node_uids: dict[str, str] = {}
        self._synced = threading.Event()
        self._started = False

    # -- public API ----------------------------------------------------------------------------

    def start(self, *, timeout: float = 60.0) -> None:
        """Register the Nodes, start heartbeats and the Pod watch; return once Pods are watched.

        Args:
            timeout: Seconds to wait for the first Pod list.

        Raises:
            KubeletError: Started twice, or the Pod watch did not sync in time.
        """
        if self._started:
            raise KubeletError("stand-in kubelet: start() twice")
        self._started = True
        try:
            for node in self.nodes:
                self._register_node(node)
                self._renew_lease(node.name)
            for target, name in (
                (self._heartbeat_loop, "heartbeat"),
                (self._watch_loop, "pod-watch"),
            ):
                thread = threading.Thread(
                    target=target, name=f"stand-in-kubelet-{name}", daemon=True
                )
                thread.start()
                self._threads.append(thread)
            if not self._synced.wait(timeout):
                raise KubeletError(
                    f"stand-in kubelet: the Pod watch did not sync within {timeout}s"
                )
            self.raise_errors()
        except BaseException:
            self._shutdown(timeout=10.0)
            raise
        LOG.info("stand-in kubelet running nodes %s", ", ".join(sorted(self._node_names)))

    def stop(self, *, timeout: float = 30.0) -> None:
        """Kill every running Pod process, stop the threads and remove the work directory.

        Pod objects are left as they are (the control plane usually goes away next).

        Args:
            timeout: Seconds to wait for the threads.

        Raises:
            KubeletError: A worker or loop hit an unexpected error during the kubelet's life.
        """
        self._shutdown(timeout=timeout)
        self.raise_errors()

    def _shutdown(self, *, timeout: float) -> None:
        if self._stopping.is_set():
            return
        self._stopping.set()
        with self._lock:
            workers = list(self._workers.values())
        for worker in workers:
            worker.kill()
        deadline = time.monotonic() + timeout
        for thread in [*self._threads, *(w.thread for w in workers)]:
            if thread.is_alive():
                thread.join(max(0.0, deadline - time.monotonic()))
        self._api_client.close()
        if self._own_work_dir and os.environ.get(KEEP_DIRS_ENV) != "1":
            shutil.rmtree(self.work_dir, ignore_errors=True)

    def raise_errors(self) -> None:
        """Raise :class:`KubeletError` if anything unexpected happened so far.

        Raises:
            KubeletError: With every recorded error.
        """
        with self._lock:
            errors = list(self._errors)
        if errors:
            raise KubeletError("stand-in kubelet errors:\n" + "\n".join(errors))

    def pod_dir(self, namespace: str, name: str) -> Path:
        """The directory of the latest Pod with this name that this kubelet ran.

        Raises:
            KeyError: This kubelet has not seen the Pod.
        """
        with self._lock:
            return self._by_name[(namespace, name)].directory

    def log_path(self, namespace: str, name: str) -> Path:
        """The file holding the container's combined stdout and stderr (all restarts).

        Raises:
            KeyError: This kubelet has not seen the Pod.
        """
        with self._lock:
            return self._by_name[(namespace, name)].log_path

    def log_text(self, namespace: str, name: str) -> str:
        """The container's output so far (empty before it started).

        Raises:
            KeyError: This kubelet has not seen the Pod.
        """
        path = self.log_path(namespace, name)
        return path.read_text(errors="replace") if path.exists() else ""

    def __enter__(self) -> StandInKubelet:
        """Start the kubelet."""
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Stop the kubelet."""
        self.stop()

    # -- internals: errors and retries ---------------------------------------------------------

    def _record_error(self, where: str, exc: BaseException) -> None:
        LOG.error("stand-in kubelet: %s: %s", where, exc, exc_info=exc)
        with self._lock:
            self._errors.append(f"{where}: {type(exc).__name__}: {exc}")

    def _call(self, func: Callable[[], _T]) -> _T:
        """Call the API, retrying transient errors for up to :data:`API_RETRY_SECONDS`."""
        deadline = time.monotonic() + API_RETRY_SECONDS
        while True:
            try:
                return func()
            except (ApiException, urllib3.exceptions.HTTPError, ConnectionError) as exc:
                if (
                    not _is_transient(exc)
                    or time.monotonic() >= deadline
                    or self._stopping.is_set()
                ):
                    raise
                LOG.warning("API call failed, retrying: %s", exc)
                time.sleep(0.5)

    # -- internals: nodes ----------------------------------------------------------------------

    def _node_status(self, node: NodeSpec) -> dict[str, object]:
        now = _now()
        conditions = [
            ("MemoryPressure", "False", "KubeletHasSufficientMemory"),
            ("DiskPressure", "False", "KubeletHasNoDiskPressure"),
            ("PIDPressure", "False", "KubeletHasSufficientPID"),
            ("Ready", "True", "KubeletReady"),
        ]
        return {
            "capacity": dict(node.capacity),
            "allocatable": dict(node.capacity),
            "conditions": [
                {
                    "type": kind,
                    "status": status,
                    "reason": reason,
                    "message": "stand-in kubelet",
                    "lastHeartbeatTime": now,
                    "lastTransitionTime": now,
                }
                for kind, status, reason in conditions
            ],
            "addresses": [
                {"type": "InternalIP", "address": POD_IP},
                {"type": "Hostname", "address": node.name},
            ],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": 10250}},
            "nodeInfo": {
                "machineID": node.name,
                "systemUUID": node.name,
                "bootID": node.name,
                "kernelVersion": os.uname().release,
                "osImage": "esper stand-in kubelet",
                "containerRuntimeVersion": "esper-stand-in://1",
                "kubeletVersion": KUBELET_VERSION,
                "kubeProxyVersion": "",
                "operatingSystem": "linux",
                "architecture": "amd64",
            },
        }

    def _register_node(self, node: NodeSpec) -> None:
        labels = {
            "kubernetes.io/hostname": node.name,
            "kubernetes.io/os": "linux",
            "kubernetes.io/arch": "amd64",
            **node.labels,
        }
        body = {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": node.name, "labels": labels},
        }
        try:
            created = self._call(lambda: self.core.create_node(client.V1Node.from_dict(body)))
            uid = str(created.metadata.uid)
        except ApiException as exc:
            if exc.status != 409:
                raise
            patched = self._call(
                lambda: self.core.patch_node(node.name, {"metadata": {"labels": labels}})
            )
            uid = str(patched.metadata.uid)
        self._node_uids[node.name] = uid
        # Replaces the node.kubernetes.io/not-ready taint that admission adds on creation.
        self._call(
            lambda: self.core.patch_node(
                node.name, {"spec": {"taints": [dict(t) for t in node.taints]}}
            )
        )
        status = self._node_status(node)
        self._call(lambda: self.core.patch_node_status(node.name, {"status": status}))

    def _renew_lease(self, node_name: str) -> None:
        spec = {
            "holderIdentity": node_name,
            "leaseDurationSeconds": 40,
            "renewTime": _now_micro(),
        }
        try:
            self._call(
                lambda: self.coordination.patch_namespaced_lease(
                    node_name, NODE_LEASE_NAMESPACE, {"spec": spec}
                )
            )
        except ApiException as exc:
            if exc.status != 404:
                raise
            body = {
                "metadata": {
                    "name": node_name,
                    "namespace": NODE_LEASE_NAMESPACE,
                    "ownerReferences": [
                        {
                            "apiVersion": "v1",
                            "kind": "Node",
                            "name": node_name,
                            "uid": self._node_uids[node_name],
                        }
                    ],
                },
                "spec": spec,
            }
            self._call(
                lambda: self.coordination.create_namespaced_lease(
                    NODE_LEASE_NAMESPACE, client.V1Lease.from_dict(body)
                )
            )

    def _heartbeat_loop(self) -> None:
        while not self._stopping.wait(self.heartbeat_interval):
            for node in self.nodes:
                try:
                    self._renew_lease(node.name)
                    status = self._node_status(node)
                    self._call(
                        lambda name=node.name, status=status: self.core.patch_node_status(
                            name, {"status": {"conditions": status["conditions"]}}
                        )
                    )
                except (ApiException, urllib3.exceptions.HTTPError, ConnectionError) as exc:
                    if self._stopping.is_set():
                        return
                    LOG.warning("heartbeat of node %s failed: %s", node.name, exc)

    # -- internals: the Pod watch --------------------------------------------------------------

    def _watch_loop(self) -> None:
        try:
            self._watch_pods()
        except Exception as exc:  # noqa: BLE001 - thread boundary: recorded, raised by stop()
            if not self._stopping.is_set():
                self._record_error("pod watch", exc)
            self._synced.set()

    def _watch_pods(self) -> None:
        resource_version: str | None = None
        selector = "spec.nodeName!="
        while not self._stopping.is_set():
            try:
                if resource_version is None:
                    pods = self._call(
                        lambda: self.core.list_pod_for_all_namespaces(field_selector=selector)
                    )
                    resource_version = pods.metadata.resource_version
                    for pod in pods.items:
                        self._on_pod("ADDED", pod)
                    self._synced.set()
                stream = watch.Watch().stream(
                    self.core.list_pod_for_all_namespaces,
                    field_selector=selector,
                    resource_version=resource_version,
                    allow_watch_bookmarks=True,
                    timeout_seconds=5,
                )
                for event in stream:
                    if event["type"] == "BOOKMARK":
                        resource_version = event["raw_object"]["metadata"]["resourceVersion"]
                        continue
                    pod = event["object"]
                    resource_version = pod.metadata.resource_version
                    self._on_pod(event["type"], pod)
                    if self._stopping.is_set():
                        break
            except ApiException as exc:
                if exc.status == 410:  # too old: list again
                    resource_version = None
                    continue
                if not _is_transient(exc):
                    raise
                LOG.warning("pod watch failed, retrying: %s", exc)
                self._stopping.wait(1.0)
            except (urllib3.exceptions.HTTPError, ConnectionError) as exc:
                LOG.warning("pod watch connection failed, retrying: %s", exc)
                self._stopping.wait(1.0)

    def _on_pod(self, event_type: str, pod: client.V1Pod) -> None:
        if pod.spec is None or pod.spec.node_name not in self._node_names:
            return
        uid = str(pod.metadata.uid)
        with self._lock:
            if self._stopping.is_set():
                return
            worker = self._workers.get(uid)
            if event_type == "DELETED":
                if worker is not None:
                    worker.forget()
                    del self._workers[uid]
                return
            if worker is None:
                phase = pod.status.phase if pod.status is not None else None
                if pod.metadata.deletion_timestamp is None and phase in ("Succeeded", "Failed"):
                    return  # finished before this kubelet started
                worker = _PodWorker(self, pod, adopted=phase == "Running")
                self._workers[uid] = worker
                self._by_name[(worker.namespace, worker.name)] = worker
                if pod.metadata.deletion_timestamp is not None:
                    worker.request_termination(pod.metadata.deletion_grace_period_seconds)
                worker.thread.start()
            elif pod.metadata.deletion_timestamp is not None:
                worker.request_termination(pod.metadata.deletion_grace_period_seconds)

    # -- internals: used by the workers --------------------------------------------------------

    def _base_env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.pop("KUBECONFIG", None)  # Pods find the API server as in a cluster (below)
        venv_bin = str(Path(sys.executable).parent)
        env["PATH"] = os.pathsep.join([venv_bin, env.get("PATH", "/usr/local/bin:/usr/bin:/bin")])
        api = urllib.parse.urlsplit(self.api_server)
        host, port = api.hostname or "127.0.0.1", str(api.port or 443)
        env.update(
            {
                "KUBERNETES_SERVICE_HOST": host,
                "KUBERNETES_SERVICE_PORT": port,
                "KUBERNETES_SERVICE_PORT_HTTPS": port,
                "KUBERNETES_PORT": f"tcp://{host}:{port}",
                "KUBERNETES_PORT_443_TCP": f"tcp://{host}:{port}",
                "KUBERNETES_PORT_443_TCP_PROTO": "tcp",
                "KUBERNETES_PORT_443_TCP_ADDR": host,
                "KUBERNETES_PORT_443_TCP_PORT": port,
            }
        )
        env.update(self._extra_env)
        return env


class _PodWorker:
    """Runs one Pod: prepares it, runs its container (restarting per policy), reports status."""

    def __init__(self, kubelet: StandInKubelet, pod: client.V1Pod, *, adopted: bool) -> None:
        self.kubelet = kubelet
        self.core = kubelet.core
        self.pod = pod
        self.uid = str(pod.metadata.uid)
        self.namespace = str(pod.metadata.namespace)
        self.name = str(pod.metadata.name)
        self.adopted = adopted
        self.directory = kubelet.work_dir / "pods" / self.namespace / f"{self.name}-{self.uid[:8]}"
        container = pod.spec.containers[0]
        self.container_name = str(container.name)
        self.log_path = self.directory / f"{self.container_name}.log"
        self.thread = threading.Thread(
            target=self._main, name=f"pod-{self.namespace}/{self.name}", daemon=True
        )
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._terminate = False
        self._grace: float = 30.0
        self._finished = False
        self._deleting = False
        self._gone = False
        self._proc: subprocess.Popen[bytes] | None = None
        self._restart_count = 0
        self._started_at: str | None = None
        self._last_state: dict[str, object] = {}
        start_time = pod.status.start_time if pod.status is not None else None
        self._start_time = (
            start_time.strftime("%Y-%m-%dT%H:%M:%SZ") if start_time is not None else _now()
        )

    # -- called from other threads -------------------------------------------------------------

    def request_termination(self, grace: int | None) -> None:
        """The Pod is being deleted: stop its process and delete the object."""
        with self._lock:
            self._terminate = True
            if grace is not None:
                self._grace = float(grace)
            start_deletion = self._finished and not self._deleting
            if start_deletion:
                self._deleting = True
        self._wake.set()
        if start_deletion:
            threading.Thread(
                target=self._delete_thread, name=f"delete-{self.namespace}/{self.name}", daemon=True
            ).start()

    def forget(self) -> None:
        """The Pod object is gone: kill the process without touching the API."""
        with self._lock:
            self._gone = True
            self._terminate = True
            self._grace = 0.0
        self._wake.set()

    def kill(self) -> None:
        """The kubelet stops: kill the process now."""
        self.forget()

    # -- the worker thread ---------------------------------------------------------------------

    def _main(self) -> None:
        try:
            self._run()
        except _PodGoneError:
            pass
        except Exception as exc:  # noqa: BLE001 - thread boundary: recorded, raised by stop()
            if not self.kubelet._stopping.is_set():
                self.kubelet._record_error(f"pod {self.namespace}/{self.name}", exc)
                with contextlib.suppress(ApiException, urllib3.exceptions.HTTPError, _PodGoneError):
                    self._fail_pod("StandInKubeletError", f"{type(exc).__name__}: {exc}")
        finally:
            self._stop_process()
            with self._lock:
                self._finished = True
                delete = self._terminate and not self._deleting and not self._gone
                if delete:
                    self._deleting = True
        if delete:
            self._delete_thread()

    def _delete_thread(self) -> None:
        if self.kubelet._stopping.is_set():
            return
        try:
            self.kubelet._call(
                lambda: self.core.delete_namespaced_pod(
                    self.name,
                    self.namespace,
                    grace_period_seconds=0,
                    body=client.V1DeleteOptions(
                        grace_period_seconds=0, preconditions=client.V1Preconditions(uid=self.uid)
                    ),
                )
            )
        except ApiException as exc:
            if exc.status not in (404, 409):  # gone already, or a new Pod with this name
                self.kubelet._record_error(f"deleting pod {self.namespace}/{self.name}", exc)
        except (urllib3.exceptions.HTTPError, ConnectionError) as exc:
            if not self.kubelet._stopping.is_set():
                self.kubelet._record_error(f"deleting pod {self.namespace}/{self.name}", exc)

    def _terminating(self) -> bool:
        with self._lock:
            return self._terminate or self.kubelet._stopping.is_set()

    def _run(self) -> None:
        if self._terminating():
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        if self.adopted:
            self._fail_pod(
                "StandInKubeletRestarted",
                "the Pod was running under an earlier stand-in kubelet whose processes are gone",
            )
            return
        self._patch_status(self._pending_status("ContainerCreating", ""))
        try:
            container = self._prepare_until_ready()
        except _UnsupportedPodError as exc:
            self._fail_pod("UnsupportedPodSpec", str(exc))
            return
        if container is not None:  # None: deleted while waiting for its configuration
            self._run_with_restarts(container)

    def _run_with_restarts(self, container: _Container) -> None:
        policy = self.pod.spec.restart_policy or "Always"
        backoff = 1.0
        while True:
            exit_code, reason, message = self._run_once(container)
            if exit_code is None:
                return  # killed because the Pod is being deleted; status already reported
            restart = policy == "Always" or (policy == "OnFailure" and exit_code != 0)
            if not restart:
                self._report_terminated(exit_code, reason, message)
                return
            self._report_restarting(exit_code, reason, message)
            self._wake.wait(backoff)
            if self._terminating():
                return
            backoff = min(backoff * 2, _MAX_RESTART_BACKOFF)
            self._restart_count += 1

    def _prepare_until_ready(self) -> _Container | None:
        while True:
            try:
                return self._prepare()
            except _ConfigNotReadyError as exc:
                self._patch_status(self._pending_status("CreateContainerConfigError", str(exc)))
                self._wake.wait(1.0)
                if self._terminating():
                    return None

    # -- preparing a container -----------------------------------------------------------------

    def _prepare(self) -> _Container:
        spec = self.pod.spec
        if spec.init_containers:
            raise _UnsupportedPodError("init containers are not supported by the stand-in kubelet")
        if len(spec.containers) != 1:
            raise _UnsupportedPodError(
                f"the stand-in kubelet runs Pods with exactly one container, not "
                f"{len(spec.containers)}"
            )
        container = spec.containers[0]
        if not container.command:
            raise _UnsupportedPodError(
                f"container {container.name!r} has no command (the stand-in kubelet has no images "
                f"to take an entrypoint from)"
            )
        env = self.kubelet._base_env()
        pod_env = self._container_env(container)
        env.update(pod_env)
        env.setdefault("HOSTNAME", self.name)
        argv = [expand(part, pod_env) for part in [*container.command, *(container.args or [])]]
        volumes = self._materialise_volumes()
        mounts: list[_Mount] = []
        for mount in container.volume_mounts or []:
            if mount.name not in volumes:
                raise _UnsupportedPodError(f"volumeMount {mount.name!r} names no volume of the Pod")
            source = volumes[mount.name]
            if mount.sub_path:
                source = source / expand(mount.sub_path, pod_env)
            read_only = bool(mount.read_only) or self._volume_is_read_only(mount.name)
            if _hides_the_image(mount.mount_path, self.kubelet.work_dir):
                # A real pod mounts over its image's directories, not the host's. Here the
                # "image" is this checkout and its Python environment (and the kubelet's own
                # files): a mount at or above them (an emptyDir at /tmp while the checkout
                # lives in /tmp) would hide them, so the pod gets the directory through the
                # usual variable instead (TMPDIR for /tmp) and the host path stays visible.
                if mount.mount_path.rstrip("/") == "/tmp":
                    env["TMPDIR"] = str(source)
                continue
            mounts.append(_Mount(source=source, target=mount.mount_path, read_only=read_only))
        mounts.sort(key=lambda m: m.target.count("/"))
        cwd = self.directory / "work"
        cwd.mkdir(exist_ok=True)
        if container.working_dir and Path(container.working_dir).is_dir():
            cwd = Path(container.working_dir)
        return _Container(argv=argv, env=env, mounts=mounts, cwd=cwd)

    def _volume_is_read_only(self, name: str) -> bool:
        for volume in self.pod.spec.volumes or []:
            if volume.name == name:
                return bool(
                    volume.config_map or volume.secret or volume.projected or volume.downward_api
                )
        return False

    def _field(self, path: str) -> str:
        meta = self.pod.metadata
        match = re.fullmatch(r"metadata\.(labels|annotations)\['([^']+)'\]", path)
        if match:
            mapping = (meta.labels if match.group(1) == "labels" else meta.annotations) or {}
            return str(mapping.get(match.group(2), ""))
        values: dict[str, str] = {
            "metadata.name": self.name,
            "metadata.namespace": self.namespace,
            "metadata.uid": self.uid,
            "spec.nodeName": str(self.pod.spec.node_name),
            "spec.serviceAccountName": str(self.pod.spec.service_account_name or "default"),
            "status.hostIP": POD_IP,
            "status.hostIPs": POD_IP,
            "status.podIP": POD_IP,
            "status.podIPs": POD_IP,
        }
        if path not in values:
            raise _UnsupportedPodError(
                f"fieldRef {path!r} is not supported by the stand-in kubelet"
            )
        return values[path]

    def _config_map(self, name: str, optional: bool | None) -> dict[str, bytes] | None:
        try:
            cm = self.kubelet._call(
                lambda: self.core.read_namespaced_config_map(name, self.namespace)
            )
        except ApiException as exc:
            if exc.status != 404:
                raise
            if optional:
                return None
            raise _ConfigNotReadyError(f'configmap "{name}" not found') from None
        data = {k: v.encode() for k, v in (cm.data or {}).items()}
        for key, value in (cm.binary_data or {}).items():
            data[key] = base64.b64decode(value)
        return data

    def _secret(self, name: str, optional: bool | None) -> dict[str, bytes] | None:
        try:
            secret = self.kubelet._call(
                lambda: self.core.read_namespaced_secret(name, self.namespace)
            )
        except ApiException as exc:
            if exc.status != 404:
                raise
            if optional:
                return None
            raise _ConfigNotReadyError(f'secret "{name}" not found') from None
        return {k: base64.b64decode(v) for k, v in (secret.data or {}).items()}

    def _key(
        self,
        kind: str,
        source: Mapping[str, bytes] | None,
        name: str,
        key: str,
        optional: bool | None,
    ) -> str | None:
        if source is None:
            return None
        if key not in source:
            if optional:
                return None
            raise _ConfigNotReadyError(f"couldn't find key {key} in {kind} {self.namespace}/{name}")
        return source[key].decode("utf-8", errors="replace")

    def _env_from(self, container: client.V1Container) -> dict[str, str]:
        env: dict[str, str] = {}
        for source in container.env_from or []:
            prefix = source.prefix or ""
            if source.config_map_ref is not None:
                ref = source.config_map_ref
                data = self._config_map(ref.name, ref.optional)
            elif source.secret_ref is not None:
                ref = source.secret_ref
                data = self._secret(ref.name, ref.optional)
            else:
                raise _UnsupportedPodError("envFrom without configMapRef or secretRef")
            for key, value in (data or {}).items():
                if _ENV_NAME.match(prefix + key):
                    env[prefix + key] = value.decode("utf-8", errors="replace")
        return env

    def _container_env(self, container: client.V1Container) -> dict[str, str]:
        env = self._env_from(container)
        for var in container.env or []:
            if var.value_from is None:
                env[var.name] = expand(var.value or "", env)
                continue
            value_from = var.value_from
            value: str | None
            if value_from.secret_key_ref is not None:
                ref = value_from.secret_key_ref
                value = self._key(
                    "secret", self._secret(ref.name, ref.optional), ref.name, ref.key, ref.optional
                )
            elif value_from.config_map_key_ref is not None:
                ref = value_from.config_map_key_ref
                value = self._key(
                    "configmap",
                    self._config_map(ref.name, ref.optional),
                    ref.name,
                    ref.key,
                    ref.optional,
                )
            elif value_from.field_ref is not None:
                value = self._field(value_from.field_ref.field_path)
            else:
                raise _UnsupportedPodError(
                    f"env {var.name!r}: only value, secretKeyRef, configMapKeyRef and fieldRef are "
                    f"supported by the stand-in kubelet"
                )
            if value is not None:
                env[var.name] = value
        return env

    def _write_items(
        self,
        target: Path,
        data: Mapping[str, bytes] | None,
        items: Sequence[client.V1KeyToPath] | None,
        *,
        kind: str,
        name: str,
        optional: bool | None,
    ) -> None:
        if data is None:
            return
        if items:
            for item in items:
                if item.key not in data:
                    if optional:
                        continue
                    raise _ConfigNotReadyError(f"couldn't find key {item.key} in {kind} {name}")
                self._write_file(target / item.path, data[item.key])
        else:
            for key, value in data.items():
                self._write_file(target / key, value)

    @staticmethod
    def _write_file(path: Path, content: bytes) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)

    def _service_account_token(self, audience: str | None, seconds: int | None) -> bytes:
        service_account = self.pod.spec.service_account_name or "default"
        request = client.AuthenticationV1TokenRequest(
            spec=client.V1TokenRequestSpec(
                audiences=[audience] if audience else [],
                expiration_seconds=seconds or SERVICE_ACCOUNT_TOKEN_SECONDS,
                bound_object_ref=client.V1BoundObjectReference(
                    api_version="v1", kind="Pod", name=self.name, uid=self.uid
                ),
            )
        )
        result = self.kubelet._call(
            lambda: self.core.create_namespaced_service_account_token(
                service_account, self.namespace, request
            )
        )
        return str(result.status.token).encode()

    def _downward_items(
        self, target: Path, items: Sequence[client.V1DownwardAPIVolumeFile]
    ) -> None:
        for item in items:
            if item.field_ref is None:
                raise _UnsupportedPodError("downwardAPI items support fieldRef only")
            self._write_file(target / item.path, self._field(item.field_ref.field_path).encode())

    def _materialise_volumes(self) -> dict[str, Path]:
        root = self.directory / "volumes"
        paths: dict[str, Path] = {}
        for volume in self.pod.spec.volumes or []:
            target = root / volume.name
            if volume.host_path is not None:
                host = Path(volume.host_path.path)
                if volume.host_path.type in ("DirectoryOrCreate",):
                    host.mkdir(parents=True, exist_ok=True)
                paths[volume.name] = host
                continue
            if target.exists():
                shutil.rmtree(target)  # a retry after a missing ConfigMap or Secret
            target.mkdir(parents=True)
            paths[volume.name] = target
            if volume.empty_dir is not None:
                continue
            if volume.config_map is not None:
                cm = volume.config_map
                data = self._config_map(cm.name, cm.optional)
                self._write_items(
                    target, data, cm.items, kind="configmap", name=cm.name, optional=cm.optional
                )
            elif volume.secret is not None:
                sec = volume.secret
                data = self._secret(sec.secret_name, sec.optional)
                self._write_items(
                    target,
                    data,
                    sec.items,
                    kind="secret",
                    name=sec.secret_name,
                    optional=sec.optional,
                )
            elif volume.downward_api is not None:
                self._downward_items(target, volume.downward_api.items or [])
            elif volume.projected is not None:
                self._projected(target, volume.projected.sources or [])
            else:
                raise _UnsupportedPodError(
                    f"volume {volume.name!r}: only configMap, secret, emptyDir, downwardAPI, "
                    f"projected and hostPath volumes are supported by the stand-in kubelet"
                )
        return paths

    def _projected(self, target: Path, sources: Sequence[client.V1VolumeProjection]) -> None:
        for source in sources:
            if source.service_account_token is not None:
                token = source.service_account_token
                content = self._service_account_token(token.audience, token.expiration_seconds)
                self._write_file(target / token.path, content)
            elif source.config_map is not None:
                cm = source.config_map
                data = self._config_map(cm.name, cm.optional)
                self._write_items(
                    target, data, cm.items, kind="configmap", name=cm.name, optional=cm.optional
                )
            elif source.secret is not None:
                sec = source.secret
                data = self._secret(sec.name, sec.optional)
                self._write_items(
                    target, data, sec.items, kind="secret", name=sec.name, optional=sec.optional
                )
            elif source.downward_api is not None:
                self._downward_items(target, source.downward_api.items or [])
            else:
                raise _UnsupportedPodError(
                    "projected volumes support serviceAccountToken, configMap, secret and "
                    "downwardAPI sources only"
                )

    # -- running the process -------------------------------------------------------------------

    def _command_line(self, container: _Container) -> list[str]:
        argv = ["setpriv", "--pdeathsig", "KILL", "--"]
        if not container.mounts:
            return [*argv, *container.argv]
        mount_args: list[str] = []
        for mount in container.mounts:
            mount_args += [str(mount.source), mount.target, "ro" if mount.read_only else "rw"]
        return [
            *argv,
            "unshare", "--mount", "--propagation", "private", "--",
            "sh", "-c", _MOUNT_SCRIPT, "stand-in-kubelet-mounts", *mount_args, "--",
            *container.argv,
        ]  # fmt: skip

    def _run_once(self, container: _Container) -> tuple[int | None, str, str]:
        """Run the container once; return (exit code, reason, message); None when deleted."""
        program = container.argv[0]
        if "/" not in program and shutil.which(program, path=container.env.get("PATH")) is None:
            message = f'exec: "{program}": executable file not found in $PATH'
            with self.log_path.open("ab") as log:
                log.write(f"stand-in kubelet: {message}\n".encode())
            return 128, "StartError", message
        with self.log_path.open("ab") as log:
            log_start = log.tell()  # this run's output starts here (restarts append)
            # The thread that starts the process also waits for it: the parent-death signal
            # (setpriv --pdeathsig) fires when this thread ends.
            self._proc = subprocess.Popen(
                self._command_line(container),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=container.cwd,
                env=container.env,
                start_new_session=True,
            )
        self._started_at = _now()
        LOG.info("pod %s/%s: started pid %d", self.namespace, self.name, self._proc.pid)
        self._patch_status(self._running_status())
        while not self._exited():
            if self._wake.wait(POLL_INTERVAL):
                self._wake.clear()
                if self._terminating():
                    self._kill_gracefully()
                    if not self.kubelet._stopping.is_set() and not self._gone:
                        code = self._reap()
                        self._report_terminated(code, "Error", _tail(self.log_path, log_start))
                    return None, "", ""
        code = self._reap()
        LOG.info("pod %s/%s: exited with %d", self.namespace, self.name, code)
        return code, "Completed" if code == 0 else "Error", _tail(self.log_path, log_start)

    def _exited(self) -> bool:
        proc = self._proc
        if proc is None or proc.returncode is not None:
            return True
        try:
            info = os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            return True
        return info is not None

    def _signal_group(self, sig: signal.Signals) -> None:
        proc = self._proc
        if proc is None or proc.returncode is not None:
            return  # reaped: the group id may belong to someone else now
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)

    def _kill_gracefully(self) -> None:
        with self._lock:
            grace = min(self._grace, self.kubelet.termination_grace_cap)
        if grace > 0:
            self._signal_group(signal.SIGTERM)
            deadline = time.monotonic() + grace
            while not self._exited() and time.monotonic() < deadline:
                time.sleep(POLL_INTERVAL)
        self._signal_group(signal.SIGKILL)

    def _reap(self) -> int:
        """Sweep the process group (as a container's end kills all of it), reap, exit code."""
        proc = self._proc
        if proc is None:
            return 137
        self._signal_group(signal.SIGKILL)
        code = proc.wait(timeout=30)
        self._proc = None
        return code if code >= 0 else 128 - code

    def _stop_process(self) -> None:
        if self._proc is not None:
            self._signal_group(signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._proc.wait(timeout=10)
            self._proc = None

    # -- status --------------------------------------------------------------------------------

    def _patch_status(self, status: dict[str, object]) -> None:
        if self._gone or self.kubelet._stopping.is_set():
            raise _PodGoneError
        try:
            self.kubelet._call(
                lambda: self.core.patch_namespaced_pod_status(
                    self.name,
                    self.namespace,
                    {"metadata": {"uid": self.uid}, "status": status},
                )
            )
        except ApiException as exc:
            if exc.status in (404, 409):
                raise _PodGoneError from None
            raise

    def _condition(self, kind: str, status: bool, reason: str | None = None) -> dict[str, object]:
        condition: dict[str, object] = {
            "type": kind,
            "status": "True" if status else "False",
            "lastTransitionTime": _now(),
            "lastProbeTime": None,
        }
        if reason is not None:
            condition["reason"] = reason
        return condition

    def _container_status(
        self, state: dict[str, object], *, ready: bool, started: bool
    ) -> dict[str, object]:
        container = self.pod.spec.containers[0]
        proc = self._proc
        return {
            "name": self.container_name,
            "image": container.image or "",
            "imageID": "",
            "containerID": f"esper-stand-in://{self.uid}/{proc.pid if proc else 0}",
            "ready": ready,
            "started": started,
            "restartCount": self._restart_count,
            "state": state,
            "lastState": self._last_state,
        }

    def _base_status(self, phase: str) -> dict[str, object]:
        return {
            "phase": phase,
            "hostIP": POD_IP,
            "hostIPs": [{"ip": POD_IP}],
            "podIP": POD_IP,
            "podIPs": [{"ip": POD_IP}],
            "startTime": self._start_time,
        }

    def _pending_status(self, reason: str, message: str) -> dict[str, object]:
        status = self._base_status("Pending")
        status["conditions"] = [
            self._condition("PodReadyToStartContainers", True),
            self._condition("Initialized", True),
            self._condition("ContainersReady", False, "ContainersNotReady"),
            self._condition("Ready", False, "ContainersNotReady"),
        ]
        waiting: dict[str, object] = {"reason": reason}
        if message:
            waiting["message"] = message
        status["containerStatuses"] = [
            self._container_status({"waiting": waiting}, ready=False, started=False)
        ]
        return status

    def _running_status(self) -> dict[str, object]:
        status = self._base_status("Running")
        status["conditions"] = [
            self._condition("PodReadyToStartContainers", True),
            self._condition("Initialized", True),
            self._condition("ContainersReady", True),
            self._condition("Ready", True),
        ]
        status["containerStatuses"] = [
            self._container_status(
                {"running": {"startedAt": self._started_at}}, ready=True, started=True
            )
        ]
        return status

    def _terminated_state(self, exit_code: int, reason: str, message: str) -> dict[str, object]:
        terminated: dict[str, object] = {
            "exitCode": exit_code,
            "reason": reason,
            "startedAt": self._started_at or _now(),
            "finishedAt": _now(),
            "containerID": f"esper-stand-in://{self.uid}",
        }
        if message:
            terminated["message"] = message
        return {"terminated": terminated}

    def _report_terminated(self, exit_code: int, reason: str, message: str) -> None:
        status = self._base_status("Succeeded" if exit_code == 0 else "Failed")
        status["conditions"] = [
            self._condition("PodReadyToStartContainers", False),
            self._condition("Initialized", True, "PodCompleted"),
            self._condition("ContainersReady", False, "PodCompleted"),
            self._condition("Ready", False, "PodCompleted"),
        ]
        status["containerStatuses"] = [
            self._container_status(
                self._terminated_state(exit_code, reason, message), ready=False, started=False
            )
        ]
        self._patch_status(status)

    def _report_restarting(self, exit_code: int, reason: str, message: str) -> None:
        self._last_state = self._terminated_state(exit_code, reason, message)
        status = self._base_status("Running")
        status["conditions"] = [
            self._condition("ContainersReady", False, "ContainersNotReady"),
            self._condition("Ready", False, "ContainersNotReady"),
        ]
        status["containerStatuses"] = [
            self._container_status(
                {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off restarting"}},
                ready=False,
                started=False,
            )
        ]
        self._patch_status(status)

    def _fail_pod(self, reason: str, message: str) -> None:
        LOG.warning("pod %s/%s failed: %s: %s", self.namespace, self.name, reason, message)
        with self.log_path.open("ab") as log:
            log.write(f"stand-in kubelet: {reason}: {message}\n".encode())
        status = self._base_status("Failed")
        status["reason"] = reason
        status["message"] = message
        status["conditions"] = [
            self._condition("ContainersReady", False, "PodFailed"),
            self._condition("Ready", False, "PodFailed"),
        ]
        status["containerStatuses"] = [
            self._container_status(
                self._terminated_state(128, "StartError", f"{reason}: {message}"),
                ready=False,
                started=False,
            )
        ]
        self._patch_status(status)


def _iter_nodes(names: Sequence[str] | None) -> Iterator[NodeSpec]:
    known = {node.name: node for node in DEFAULT_NODES}
    for name in names or known:
        if name not in known:
            raise SystemExit(f"unknown node {name!r}; known: {', '.join(known)}")
        yield known[name]


def main(argv: Sequence[str] | None = None) -> int:
    """Run the stand-in kubelet until SIGTERM or SIGINT.

    Args:
        argv: Command line arguments (``sys.argv[1:]`` when None).

    Returns:
        The exit status.
    """
    parser = argparse.ArgumentParser(
        prog="python -m tests.support.kubelet", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--kubeconfig", type=Path, required=True, help="admin kubeconfig")
    parser.add_argument("--work-dir", type=Path, help="per-pod directories (default: a temp dir)")
    parser.add_argument(
        "--node",
        action="append",
        help=f"a node to register (repeatable; default: all of {[n.name for n in DEFAULT_NODES]})",
    )
    parser.add_argument("--heartbeat-interval", type=float, default=10.0)
    parser.add_argument("-v", "--verbose", action="store_true")
    options = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if options.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(threadName)s %(message)s",
    )
    if options.work_dir is not None:
        options.work_dir.mkdir(parents=True, exist_ok=True)
    kubelet = StandInKubelet(
        options.kubeconfig,
        nodes=tuple(_iter_nodes(options.node)),
        work_dir=options.work_dir,
        heartbeat_interval=options.heartbeat_interval,
    )
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda _signum, _frame: stop.set())
    kubelet.start()
    print(f"stand-in kubelet running; work dir {kubelet.work_dir}", flush=True)
    stop.wait()
    kubelet.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
