"""The Kubernetes operator: Blueprint -> compile Job latency, a 500-Blueprint burst, and memory.

Checks two rows of the design's targets (``ARCHITECTURE.md``): a Blueprint applied gets its
compile Job with a p50 of at most 1 s, and 500 Blueprints applied at once all have their compile
Jobs within 60 s; plus the operator's memory at that load.

Everything is real and local: etcd, kube-apiserver, kube-controller-manager and kube-scheduler
v1.37.2 (``tests.servers.kube.ControlPlane``; no kubelet, so the Jobs' pods stay Pending), Urza
(``esper urza serve`` in its own process) on PostgreSQL and MinIO, and the operator as a process
(``python -m esper_operator``) logged in as its ServiceAccount with the ClusterRole of
``operator/deploy/rbac.yaml``. The benchmark creates Blueprints through the API server (httpx
with the admin client certificate, so kubectl's start-up is not measured) and sees the compile
Jobs appear through a watch on Jobs in the benchmark namespace.

- ``latency``: ``--latency-count`` Blueprints one at a time, ``--latency-gap`` seconds apart; a
  Blueprint's latency is the time from the return of its create request to the arrival of its
  compile Job's ADDED event on the watch.
- ``burst``: ``--burst-count`` Blueprints created as fast as ``--burst-threads`` threads can;
  the time from the first create request to the last compile Job's ADDED event, the per-Blueprint
  latencies, the operator's RSS (sampled every 0.2 s; the idle RSS before it), the CPU of every
  process, the reconcile metrics and the operator's log lines by level.
- ``after``: ``--after-seconds`` more of observation with every Blueprint unsettled (the pods
  never run), which is when the resync timers (``RESYNC_SECONDS``) fire.

Every Blueprint has a distinct design (the bottleneck MLP of ``examples/blueprints`` with its
own hidden width), so Urza registers a new blueprint and kernel for each one, and one CPU target
(no GPU Job cap involved).

Every phase also records the machine's CPU (busy share of all cores, and the CPU seconds spent
by processes outside the benchmark: other work on a shared machine), the CPU seconds of each
component, and the API server's requests by verb and resource. The operator and Urza run from a
copy of ``src/`` and ``operator/`` taken at start (``--code snapshot``), so edits to the checkout
during a run do not change the code under test; ``--code-patch DIFF`` applies a proposed change
to that copy only. ``--py-spy PATH`` profiles the operator during the burst (a diagnostic: it
perturbs the timings).

Rerun (from the repository root): ``python benchmarks/operator_reconcile.py`` (see
``docs/benchmarks.md``).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import hashlib
import importlib.metadata
import json
import os
import re
import shutil
import signal
import ssl
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psutil
from _common import (
    REPO_ROOT,
    PostgresServer,
    S3Server,
    UrzaServer,
    environment,
    format_table,
    log,
    process_tree_cpu_seconds,
    summarize,
    temporary_directory,
    write_result,
)

from esper_operator.settings import OperatorSettings
from tests.integration.kube_operator.support import (
    OPERATOR_ACCOUNT,
    OPERATOR_NAMESPACE,
    WORKER_TOKEN_SECRET,
    OperatorProcess,
    install_operator_prerequisites,
)
from tests.servers.kube import KUBERNETES_VERSION, ControlPlane

NAME = "operator_reconcile"
NAMESPACE = "esper-bench"
DATABASE = "urza_operator_bench"
BLUEPRINTS = "/apis/esper.dev/v1alpha1/namespaces/{namespace}/blueprints"
JOBS = "/apis/batch/v1/namespaces/{namespace}/jobs"
BLUEPRINT_ANNOTATION = "esper.dev/blueprint"
ROLE_LABEL = "esper.dev/role"
MANAGED_SELECTOR = "app.kubernetes.io/managed-by=esper-operator"
TARGET = {"device": "cpu", "dtype": "fp32", "bindings": {"C": 128}, "batchSizes": [1, 32]}
TARGET_P50_S = 1.0
TARGET_BURST_S = 60.0
SAMPLE_INTERVAL_S = 0.2

Metrics = dict[tuple[str, tuple[tuple[str, str], ...]], float]
"""Prometheus samples: (name, sorted labels) -> value."""

#: What the operator runs with: the deployment's defaults (``WORKERS`` 16, ``RESYNC_SECONDS``
#: 60, ``QUEUE_RETRY_SECONDS`` 10, ``PEERING_LIFETIME_SECONDS`` 30, ``MAX_GPU_JOBS`` 8, ...),
#: plus what a local run needs (Urza's address and token, the worker token Secret, an image).
OPERATOR_SETTINGS = {
    "IMAGE": "esper-worker:bench",
    "WORKER_TOKEN_SECRET": WORKER_TOKEN_SECRET,
    "RESYNC_SECONDS": "60",
    "LOG_FORMAT": "json",
}


# -- the designs -------------------------------------------------------------------------------


def blueprint_manifest(name: str, width: int) -> dict[str, Any]:
    """Return a Blueprint whose design is the bottleneck MLP with ``width`` hidden units.

    Args:
        name: The resource's (and the design's) name.
        width: The hidden width; distinct widths give distinct designs (and hashes).

    Returns:
        The manifest.
    """
    return {
        "apiVersion": "esper.dev/v1alpha1",
        "kind": "Blueprint",
        "metadata": {"name": name},
        "spec": {
            "ir": {
                "name": name,
                "description": f"Bottleneck MLP ({width} hidden units), operator benchmark.",
                "tags": ["mlp", "bottleneck", "benchmark"],
                "input": {"layout": "features", "shape": ["C"]},
                "nodes": [
                    {
                        "id": "down",
                        "op": "linear",
                        "inputs": ["input"],
                        "params": {"outFeatures": width},
                    },
                    {"id": "act", "op": "relu", "inputs": ["down"]},
                    {
                        "id": "up",
                        "op": "linear",
                        "inputs": ["act"],
                        "params": {"outFeatures": "C", "init": "zeros"},
                    },
                ],
                "output": "up",
            },
            "targets": [TARGET],
        },
    }


# -- talking to the API server -----------------------------------------------------------------


def admin_client(plane: ControlPlane, *, connections: int = 8) -> httpx.Client:
    """Return an httpx client authenticated with the admin client certificate.

    Args:
        plane: The control plane.
        connections: Most connections in the pool.

    Returns:
        The client.
    """
    context = ssl.create_default_context(cafile=str(plane.credentials.ca_cert))
    context.load_cert_chain(str(plane.credentials.admin_cert), str(plane.credentials.admin_key))
    return httpx.Client(
        base_url=plane.server,
        verify=context,
        timeout=httpx.Timeout(30.0),
        limits=httpx.Limits(max_connections=connections, max_keepalive_connections=connections),
    )


@dataclass
class Created:
    """One create request.

    Attributes:
        name: The Blueprint.
        sent: ``time.monotonic()`` just before the request.
        returned: ``time.monotonic()`` when the answer was read.
        wall_returned: ``time.time()`` at the same moment (for the operator's log times).
        status: The final HTTP status.
        attempts: Requests sent (retries after 429 or 5xx).
    """

    name: str
    sent: float
    returned: float
    wall_returned: float
    status: int
    attempts: int


def create_blueprint(client: httpx.Client, name: str, width: int) -> Created:
    """POST one Blueprint, retrying a 429 or 5xx a few times.

    Args:
        client: The admin client.
        name: Its name.
        width: Its design's hidden width.

    Returns:
        The timings.
    """
    body = blueprint_manifest(name, width)
    path = BLUEPRINTS.format(namespace=NAMESPACE)
    sent = time.monotonic()
    status = 0
    attempts = 0
    for attempts in range(1, 6):
        try:
            status = client.post(path, json=body).status_code
        except httpx.TransportError:
            status = -1
        if status == 201 or (status not in (-1, 429) and status < 500):
            break
        time.sleep(0.2 * attempts)
    return Created(name, sent, time.monotonic(), time.time(), status, attempts)


def server_version(client: httpx.Client) -> str | None:
    """Return the API server's ``gitVersion``.

    Args:
        client: The admin client.

    Returns:
        The version, or None when it could not be read.
    """
    with contextlib.suppress(httpx.HTTPError, ValueError):
        return str(client.get("/version").json().get("gitVersion"))
    return None


class JobWatcher(threading.Thread):
    """Watches the benchmark namespace's operator Jobs and timestamps each compile Job's ADDED.

    Attributes:
        seen: Blueprint name -> ``time.monotonic()`` when its compile Job's ADDED event was read.
        restarts: Watch requests made after the first (the server closes a watch every
            ``timeoutSeconds``; a 410 Gone relists).
    """

    def __init__(self, plane: ControlPlane) -> None:
        """Prepare the watcher (``start()`` begins listing and watching).

        Args:
            plane: The control plane.
        """
        super().__init__(name="job-watcher", daemon=True)
        self._plane = plane
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._condition = threading.Condition()
        self.seen: dict[str, float] = {}
        self.restarts = 0
        self.error: str | None = None

    def _record(self, job: dict[str, Any], now: float) -> None:
        metadata = job.get("metadata") or {}
        if (metadata.get("labels") or {}).get(ROLE_LABEL) != "compile":
            return
        blueprint = (metadata.get("annotations") or {}).get(BLUEPRINT_ANNOTATION)
        if not blueprint:
            return
        with self._condition:
            if blueprint not in self.seen:
                self.seen[blueprint] = now
                self._condition.notify_all()

    def _list(self, client: httpx.Client) -> str:
        response = client.get(
            JOBS.format(namespace=NAMESPACE), params={"labelSelector": MANAGED_SELECTOR}
        )
        response.raise_for_status()
        page = response.json()
        now = time.monotonic()
        for job in page.get("items") or []:
            self._record(job, now)
        return str(page["metadata"]["resourceVersion"])

    def run(self) -> None:
        """List, then watch until stopped (relisting on 410 Gone)."""
        try:
            with admin_client(self._plane, connections=2) as client:
                version = self._list(client)
                self._ready.set()
                while not self._stop.is_set():
                    params = {
                        "watch": "1",
                        "resourceVersion": version,
                        "allowWatchBookmarks": "true",
                        "timeoutSeconds": "30",
                        "labelSelector": MANAGED_SELECTOR,
                    }
                    with client.stream(
                        "GET",
                        JOBS.format(namespace=NAMESPACE),
                        params=params,
                        timeout=httpx.Timeout(10.0, read=60.0),
                    ) as response:
                        response.raise_for_status()
                        for line in response.iter_lines():
                            now = time.monotonic()
                            if not line:
                                continue
                            event = json.loads(line)
                            kind = event.get("type")
                            job = event.get("object") or {}
                            if kind == "ERROR":
                                version = self._list(client)  # 410 Gone: start from a new list
                                break
                            version = str(job["metadata"]["resourceVersion"])
                            if kind == "ADDED":
                                self._record(job, now)
                            if self._stop.is_set():
                                break
                    self.restarts += 1
        except Exception as error:  # noqa: BLE001 - reported in the results, and waits end
            self.error = f"{type(error).__name__}: {error}"
            with self._condition:
                self._condition.notify_all()
            self._ready.set()

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Wait until the first list was read (the watch starts from it).

        Args:
            timeout: Seconds to wait.

        Raises:
            RuntimeError: The watcher failed or did not start in time.
        """
        if not self._ready.wait(timeout) or self.error:
            raise RuntimeError(f"job watcher did not start: {self.error}")

    def wait_for(self, names: set[str], deadline: float) -> bool:
        """Wait until every one of ``names`` has its compile Job, or the deadline.

        Args:
            names: Blueprint names.
            deadline: ``time.monotonic()`` to give up at.

        Returns:
            Whether all were seen.
        """
        with self._condition:
            return (
                self._condition.wait_for(
                    lambda: names <= self.seen.keys() or self.error is not None,
                    timeout=max(0.0, deadline - time.monotonic()),
                )
                and names <= self.seen.keys()
            )

    def count(self, names: set[str]) -> int:
        """Return how many of ``names`` have their compile Job so far.

        Args:
            names: Blueprint names.

        Returns:
            The count.
        """
        with self._condition:
            return len(names & self.seen.keys())

    def stop(self) -> None:
        """Ask the watcher to end (at the next event or the server's watch timeout)."""
        self._stop.set()


# -- processes: RSS and CPU --------------------------------------------------------------------


@dataclass
class Sample:
    """One sample of the operator process.

    Attributes:
        at: ``time.monotonic()``.
        rss: Resident set size in bytes (its children included; it has none normally).
        threads: Its thread count.
    """

    at: float
    rss: int
    threads: int


class Sampler(threading.Thread):
    """Samples the operator's RSS every :data:`SAMPLE_INTERVAL_S` seconds."""

    def __init__(self, pid: int) -> None:
        """Prepare the sampler.

        Args:
            pid: The operator's process id.
        """
        super().__init__(name="rss-sampler", daemon=True)
        self._process = psutil.Process(pid)
        self._stop = threading.Event()
        self.samples: list[Sample] = []
        self._lock = threading.Lock()

    def run(self) -> None:
        """Sample until stopped or the process is gone."""
        while not self._stop.is_set():
            try:
                rss = self._process.memory_info().rss
                threads = self._process.num_threads()
                for child in self._process.children(recursive=True):
                    with contextlib.suppress(psutil.Error):
                        rss += child.memory_info().rss
            except psutil.Error:
                return
            with self._lock:
                self.samples.append(Sample(time.monotonic(), rss, threads))
            self._stop.wait(SAMPLE_INTERVAL_S)

    def window(self, start: float, end: float) -> dict[str, Any] | None:
        """Summarize the samples taken within ``[start, end]``.

        Args:
            start: ``time.monotonic()`` of the window's start.
            end: Its end.

        Returns:
            Samples, MiB mean/min/max of the RSS, and the most threads; None without samples.
        """
        with self._lock:
            inside = [sample for sample in self.samples if start <= sample.at <= end]
        if not inside:
            return None
        mib = [sample.rss / 2**20 for sample in inside]
        return {
            "samples": len(inside),
            "rss_mib_mean": round(sum(mib) / len(mib), 1),
            "rss_mib_min": round(min(mib), 1),
            "rss_mib_max": round(max(mib), 1),
            "threads_max": max(sample.threads for sample in inside),
        }

    def stop(self) -> None:
        """Stop sampling."""
        self._stop.set()


@dataclass
class Processes:
    """The processes whose CPU time is recorded per phase.

    Attributes:
        pids: Component name -> pid (PostgreSQL: the postmaster, counted with its backends).
    """

    pids: dict[str, int]

    def cpu_seconds(self) -> dict[str, float]:
        """Return each component's CPU seconds so far.

        Returns:
            Component name -> user + system seconds (PostgreSQL: the whole process tree).
        """
        seconds: dict[str, float] = {}
        for name, pid in self.pids.items():
            try:
                if name == "postgres":
                    seconds[name] = process_tree_cpu_seconds(pid)
                else:
                    times = psutil.Process(pid).cpu_times()
                    seconds[name] = times.user + times.system
            except (psutil.Error, OSError):
                seconds[name] = float("nan")
        seconds["benchmark_client"] = sum(os.times()[:2])
        return seconds


@dataclass
class Mark:
    """The state of everything at one moment, to difference two of them.

    Attributes:
        at: ``time.monotonic()``.
        cpu: CPU seconds per component.
        machine: The machine's CPU seconds by mode (all cores), from ``psutil.cpu_times()``.
        load: The 1-minute load average.
        metrics: The operator's metrics.
        apiserver: The API server's metrics (requests, durations, flow control).
    """

    at: float
    cpu: dict[str, float]
    machine: dict[str, float]
    load: float
    metrics: Metrics
    apiserver: Metrics


_APISERVER_METRICS = (
    "apiserver_request_total",
    "apiserver_request_duration_seconds_sum",
    "apiserver_request_duration_seconds_count",
    "apiserver_flowcontrol_request_wait_duration_seconds_sum",
    "apiserver_flowcontrol_request_wait_duration_seconds_count",
    "apiserver_flowcontrol_rejected_requests_total",
)


def apiserver_metrics(client: httpx.Client) -> Metrics:
    """Return the API server's request and flow-control metrics (admin certificate).

    Args:
        client: The admin client.

    Returns:
        The samples of :data:`_APISERVER_METRICS` (empty when ``/metrics`` failed).
    """
    try:
        response = client.get("/metrics")
        response.raise_for_status()
    except httpx.HTTPError:
        return {}
    wanted = tuple(f"{name}{{" for name in _APISERVER_METRICS)
    lines = "\n".join(line for line in response.text.splitlines() if line.startswith(wanted))
    return parse_metrics(lines)


def mark(processes: Processes, operator: OperatorProcess, client: httpx.Client) -> Mark:
    """Take a :class:`Mark` now.

    Args:
        processes: The components.
        operator: The operator (its metrics).
        client: The admin client (the API server's metrics).

    Returns:
        The mark.
    """
    return Mark(
        at=time.monotonic(),
        cpu=processes.cpu_seconds(),
        machine=psutil.cpu_times()._asdict(),
        load=os.getloadavg()[0],
        metrics=parse_metrics(operator.metrics()),
        apiserver=apiserver_metrics(client),
    )


# -- the operator's metrics and logs -----------------------------------------------------------

_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{([^}]*)\})?\s+(\S+)")
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def parse_metrics(text: str) -> Metrics:
    """Parse Prometheus text into ``(name, sorted labels) -> value``.

    Args:
        text: The body of ``/metrics``.

    Returns:
        The samples.
    """
    samples: Metrics = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        match = _SAMPLE.match(line)
        if match is None:
            continue
        labels = tuple(sorted(_LABEL.findall(match.group(3) or "")))
        with contextlib.suppress(ValueError):
            samples[(match.group(1), labels)] = float(match.group(4))
    return samples


def _metric_delta(before: Mark, after: Mark, name: str) -> dict[str, float]:
    """Differences of every sample of ``name``, keyed by its labels (``k=v,...``)."""
    delta: dict[str, float] = {}
    for (metric, labels), value in after.metrics.items():
        if metric != name:
            continue
        key = ",".join(f"{k}={v}" for k, v in labels)
        change = value - before.metrics.get((metric, labels), 0.0)
        if change:
            delta[key] = round(change, 4)
    return delta


def phase_report(before: Mark, after: Mark) -> dict[str, Any]:
    """Describe what happened between two marks: CPU per component and the operator's metrics.

    Args:
        before: The phase's start.
        after: Its end.

    Returns:
        ``seconds``, ``cpu_percent_of_one_core`` and ``cpu_seconds`` per component, and the
        reconcile metrics: passes by result, errors, the reconcile duration's count, sum, mean
        and histogram buckets (cumulative, upper bound in seconds -> passes).
    """
    seconds = after.at - before.at
    cpu = {
        name: round(after.cpu[name] - before.cpu.get(name, 0.0), 2)
        for name in after.cpu
        if after.cpu[name] == after.cpu[name]  # not NaN
    }
    buckets = {
        key.split("le=")[1].split(",")[0]: value
        for key, value in _metric_delta(
            before, after, "esper_operator_reconcile_seconds_bucket"
        ).items()
        if "kind=Blueprint" in key
    }
    count = _metric_delta(before, after, "esper_operator_reconcile_seconds_count").get(
        "kind=Blueprint", 0.0
    )
    reconcile_sum = _metric_delta(before, after, "esper_operator_reconcile_seconds_sum").get(
        "kind=Blueprint", 0.0
    )
    machine_delta = {
        mode: after.machine[mode] - before.machine.get(mode, 0.0) for mode in after.machine
    }
    total = sum(machine_delta.values())
    idle = machine_delta.get("idle", 0.0) + machine_delta.get("iowait", 0.0)
    busy = total - idle
    stack = sum(cpu.values())
    cores = psutil.cpu_count() or 1
    return {
        "seconds": round(seconds, 2),
        "machine": {
            "busy_percent_of_all_cores": round(busy / total * 100, 1) if total else None,
            "steal_percent": (
                round(machine_delta.get("steal", 0.0) / total * 100, 1) if total else None
            ),
            "busy_cpu_seconds": round(busy, 2),
            "stack_cpu_seconds": round(stack, 2),
            # What the machine spent on anything but this benchmark's processes (other work).
            "other_work_cpu_seconds": round(max(0.0, busy - stack), 2),
            "other_work_cores": round(max(0.0, busy - stack) / seconds, 2) if seconds else None,
            "cores": cores,
            "load_1m_start_end": [round(before.load, 2), round(after.load, 2)],
        },
        "cpu_seconds": cpu,
        "cpu_percent_of_one_core": {
            name: round(value / seconds * 100, 1) for name, value in cpu.items()
        },
        "reconciles_total": _metric_delta(before, after, "esper_operator_reconciles_total"),
        "errors_total": _metric_delta(before, after, "esper_operator_errors_total"),
        "blueprint_reconcile_seconds": {
            "count": int(count),
            "sum": round(reconcile_sum, 3),
            "mean": round(reconcile_sum / count, 4) if count else None,
            "buckets_cumulative": buckets,
        },
        "apiserver": apiserver_report(before, after),
    }


def _aggregate(
    before: Metrics, after: Metrics, name: str, keys: tuple[str, ...]
) -> dict[str, float]:
    totals: Counter[str] = Counter()
    for (metric, labels), value in after.items():
        if metric != name:
            continue
        label = dict(labels)
        if label.get("verb") == "WATCH":
            continue
        key = " ".join(label.get(k, "") for k in keys if label.get(k)) or "-"
        totals[key] += value - before.get((metric, labels), 0.0)
    return {key: round(value, 4) for key, value in totals.items() if value}


def apiserver_report(before: Mark, after: Mark) -> dict[str, Any]:
    """Summarize the API server's requests between two marks.

    Args:
        before: The phase's start.
        after: Its end.

    Returns:
        Requests by verb and resource (WATCH excluded) with their mean duration, and the time
        requests waited in API Priority and Fairness queues, by priority level.
    """
    keys = ("verb", "resource", "subresource")
    counts = _aggregate(before.apiserver, after.apiserver, "apiserver_request_total", keys)
    sums = _aggregate(
        before.apiserver, after.apiserver, "apiserver_request_duration_seconds_sum", keys
    )
    requests = {
        key: {"requests": int(count), "mean_ms": round(sums.get(key, 0.0) / count * 1000, 1)}
        for key, count in sorted(counts.items(), key=lambda item: -item[1])
        if count >= 1
    }
    level = ("priority_level",)
    waits = _aggregate(
        before.apiserver,
        after.apiserver,
        "apiserver_flowcontrol_request_wait_duration_seconds_sum",
        level,
    )
    waited = _aggregate(
        before.apiserver,
        after.apiserver,
        "apiserver_flowcontrol_request_wait_duration_seconds_count",
        level,
    )
    return {
        "requests_by_verb_resource": requests,
        "requests_total": int(sum(counts.values())),
        "flowcontrol_wait_mean_ms": {
            key: round(waits.get(key, 0.0) / count * 1000, 2)
            for key, count in waited.items()
            if count
        },
        "flowcontrol_rejected": _aggregate(
            before.apiserver,
            after.apiserver,
            "apiserver_flowcontrol_rejected_requests_total",
            level,
        ),
    }


_VARIABLE = re.compile(r"bench-[a-z]+-\d+|[0-9a-f]{10,}|\d+(\.\d+)?")


def log_summary(operator: OperatorProcess, start_wall: float, end_wall: float) -> dict[str, Any]:
    """Summarize the operator's JSON log lines written between two wall-clock times.

    Args:
        operator: The operator.
        start_wall: ``time.time()`` of the window's start.
        end_wall: Its end.

    Returns:
        Lines by level and logger, and the most frequent warning-or-worse messages (names,
        hashes and numbers replaced by ``#``).
    """
    levels: Counter[str] = Counter()
    loggers: Counter[str] = Counter()
    problems: Counter[str] = Counter()
    for line in operator.log_lines():
        try:
            at = dt.datetime.fromisoformat(str(line.get("time"))).timestamp()
        except ValueError:
            continue
        if not start_wall <= at <= end_wall:
            continue
        level = str(line.get("level"))
        levels[level] += 1
        loggers[str(line.get("logger"))] += 1
        if level in ("warning", "error", "critical"):
            problems[f"{level}: {_VARIABLE.sub('#', str(line.get('message')))[:200]}"] += 1
    return {
        "lines_by_level": dict(levels),
        "lines_by_logger": dict(loggers.most_common(10)),
        "warnings_and_errors": dict(problems.most_common(15)),
    }


def creations_processed(operator: OperatorProcess) -> Counter[str]:
    """Count kopf's "Creation is processed" lines per Blueprint.

    More than one means kopf ran the creation handler again: it saw an event older than its
    own last patch and stopped waiting for the patch after ``consistency_timeout``.

    Args:
        operator: The operator.

    Returns:
        Blueprint name -> lines.
    """
    counts: Counter[str] = Counter()
    for line in operator.log_lines():
        reference = line.get("object")
        if str(line.get("message", "")).startswith("Creation is processed") and isinstance(
            reference, dict
        ):
            counts[str(reference.get("name"))] += 1
    return counts


def handler_done_times(operator: OperatorProcess) -> dict[str, float]:
    """Return, per Blueprint, the wall-clock time kopf logged its creation as processed.

    Args:
        operator: The operator.

    Returns:
        Blueprint name -> ``time.time()`` of kopf's "Creation is processed" line.
    """
    done: dict[str, float] = {}
    for line in operator.log_lines():
        message = str(line.get("message", ""))
        reference = line.get("object")
        if not message.startswith("Creation is processed") or not isinstance(reference, dict):
            continue
        name = reference.get("name")
        if isinstance(name, str) and name not in done:
            with contextlib.suppress(ValueError):
                done[name] = dt.datetime.fromisoformat(str(line.get("time"))).timestamp()
    return done


# -- the phases --------------------------------------------------------------------------------


@dataclass
class Bench:
    """What the phases share.

    Attributes:
        plane: The control plane.
        client: The admin client (for creates).
        watcher: The Job watcher.
        operator: The operator process.
        sampler: The operator's RSS sampler.
        processes: Every component, for CPU time.
        width: The next design's hidden width.
    """

    plane: ControlPlane
    client: httpx.Client
    watcher: JobWatcher
    operator: OperatorProcess
    sampler: Sampler
    processes: Processes
    width: int = 8

    def next_width(self) -> int:
        """Return a hidden width no earlier Blueprint used."""
        self.width += 1
        return self.width


def _latencies(created: list[Created], watcher: JobWatcher) -> dict[str, list[float]]:
    return {
        "create_return_to_job_s": [
            watcher.seen[item.name] - item.returned for item in created if item.name in watcher.seen
        ],
        "create_sent_to_job_s": [
            watcher.seen[item.name] - item.sent for item in created if item.name in watcher.seen
        ],
        "create_request_s": [item.returned - item.sent for item in created],
    }


def _handler_done(created: list[Created], done: dict[str, float]) -> list[float]:
    return [done[item.name] - item.wall_returned for item in created if item.name in done]


def latency_phase(bench: Bench, count: int, gap: float, timeout: float) -> dict[str, Any]:
    """Create Blueprints one at a time and time each compile Job's arrival.

    Args:
        bench: The shared pieces.
        count: How many Blueprints.
        gap: Seconds between one Job's arrival and the next create.
        timeout: Seconds to wait for one Job.

    Returns:
        The phase's results.
    """
    created: list[Created] = []
    missed: list[str] = []
    before = mark(bench.processes, bench.operator, bench.client)
    start_wall = time.time()
    for index in range(count):
        name = f"bench-lat-{index:04d}"
        item = create_blueprint(bench.client, name, bench.next_width())
        created.append(item)
        if item.status != 201:
            missed.append(f"{name}: HTTP {item.status}")
            continue
        if not bench.watcher.wait_for({name}, time.monotonic() + timeout):
            missed.append(f"{name}: no Job within {timeout:.0f}s")
            if len(missed) == 3 and index == 2:
                problems = log_summary(bench.operator, 0.0, time.time())["warnings_and_errors"]
                raise RuntimeError(
                    f"the first 3 Blueprints got no compile Job; operator says: {problems}"
                )
        if (index + 1) % 10 == 0:
            log(f"latency: {index + 1}/{count}")
        time.sleep(gap)
    after = mark(bench.processes, bench.operator, bench.client)
    end_wall = time.time()
    latencies = _latencies(created, bench.watcher)
    done = handler_done_times(bench.operator)
    return {
        "blueprints": count,
        "gap_s": gap,
        "missed": missed,
        "create_return_to_job_s": (
            summarize(latencies["create_return_to_job_s"])
            if latencies["create_return_to_job_s"]
            else None
        ),
        "create_sent_to_job_s": (
            summarize(latencies["create_sent_to_job_s"])
            if latencies["create_sent_to_job_s"]
            else None
        ),
        "create_request_s": summarize(latencies["create_request_s"]),
        "create_return_to_kopf_creation_processed_s": (
            summarize(_handler_done(created, done)) if _handler_done(created, done) else None
        ),
        "samples_s": [round(value, 4) for value in latencies["create_return_to_job_s"]],
        "meets_target_p50_le_1s": bool(latencies["create_return_to_job_s"])
        and summarize(latencies["create_return_to_job_s"])["p50"] <= TARGET_P50_S,
        "rss": bench.sampler.window(before.at, after.at),
        "operator_log": log_summary(bench.operator, start_wall, end_wall),
        **phase_report(before, after),
    }


def idle_phase(bench: Bench, seconds: float) -> dict[str, Any]:
    """Observe the operator idle (no creates) for ``seconds``.

    Args:
        bench: The shared pieces.
        seconds: How long.

    Returns:
        Its RSS and CPU.
    """
    before = mark(bench.processes, bench.operator, bench.client)
    time.sleep(seconds)
    after = mark(bench.processes, bench.operator, bench.client)
    return {"rss": bench.sampler.window(before.at, after.at), **phase_report(before, after)}


def _blueprint_phases(client: httpx.Client, names: set[str]) -> Counter[str]:
    response = client.get(BLUEPRINTS.format(namespace=NAMESPACE), params={"limit": "1000"})
    response.raise_for_status()
    phases: Counter[str] = Counter()
    for item in response.json().get("items") or []:
        if item["metadata"]["name"] in names:
            phases[str((item.get("status") or {}).get("phase"))] += 1
    return phases


def _progress(
    watcher: JobWatcher, names: set[str], start: float, deadline: float
) -> tuple[bool, list[tuple[float, int]]]:
    """Wait for every Job, recording (seconds since start, Jobs seen) once a second."""
    curve: list[tuple[float, int]] = []
    while True:
        done = watcher.wait_for(names, min(deadline, time.monotonic() + 1.0))
        seen = watcher.count(names)
        curve.append((round(time.monotonic() - start, 1), seen))
        if done or time.monotonic() >= deadline or watcher.error:
            return done, curve
        if len(curve) % 10 == 0:
            log(f"burst: {seen}/{len(names)} compile Jobs after {curve[-1][0]:.0f}s")


class Profiler:
    """``py-spy record`` of the operator (idle samples included), or nothing without py-spy.

    A diagnostic: sampling costs CPU that the stack then lacks, so a profiled run's timings are
    not the benchmark's numbers.
    """

    def __init__(
        self, py_spy: Path | None, pid: int, output: Path | None, *, idle: bool = True
    ) -> None:
        """Describe the profile.

        Args:
            py_spy: The py-spy binary; None profiles nothing.
            pid: The operator's process id.
            output: Where the collapsed stacks go.
            idle: Sample waiting threads too (wall time); False samples only running ones (CPU).
        """
        self._command = (
            [
                str(py_spy), "record", "--pid", str(pid), "--nonblocking",
                "--rate", "20", "--format", "raw", "--output", str(output),
                *(["--idle"] if idle else []),
            ]
            if py_spy is not None and output is not None
            else None
        )  # fmt: skip
        self.mode = "wall (idle threads sampled)" if idle else "cpu (running threads only)"
        self._process: subprocess.Popen[bytes] | None = None
        self.output = output

    def start(self) -> None:
        """Start sampling."""
        if self._command is not None:
            self._process = subprocess.Popen(
                self._command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
            )

    def stop(self) -> dict[str, Any] | None:
        """Stop sampling (py-spy writes its file on SIGINT) and summarize the stacks.

        Returns:
            The summary (see :func:`summarize_stacks`), or None when nothing was profiled.
        """
        if self._process is None or self.output is None:
            return None
        self._process.send_signal(signal.SIGINT)
        try:
            self._process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        if not self.output.exists():
            return None
        return {"file": str(self.output), "mode": self.mode, **summarize_stacks(self.output)}


def summarize_stacks(path: Path) -> dict[str, Any]:
    """Summarize py-spy's collapsed stacks by thread kind and by what handler threads wait on.

    Args:
        path: The raw (collapsed) output of ``py-spy record``.

    Returns:
        Samples per thread kind; for the handler threads in a handler, samples by the innermost
        operator frame (an Urza call by its client method; a Kubernetes call by the operator
        frame that made it); and the event loop thread's innermost frames.
    """
    kinds: Counter[str] = Counter()
    steps: Counter[str] = Counter()
    loop_frames: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = stack.split(";")
        total += count
        for frame in {_short_frame(frame) for frame in frames[2:]}:
            inclusive[frame] += count
        handler_thread = any("concurrent/futures/thread.py" in frame for frame in frames)
        if handler_thread:
            operator_frames = [
                frame.split(" (")[0]
                for frame in frames
                if "esper_operator/" in frame or "esper/urza/client.py" in frame
            ]
            if not operator_frames:
                kinds["handler thread: idle (no handler)"] += count
                continue
            kinds["handler thread: in a handler"] += count
            innermost = operator_frames[-1]
            if any("esper/urza/client.py" in frame for frame in frames):
                innermost = "Urza call: " + next(
                    frame.split(" (")[0] for frame in frames if "esper/urza/client.py" in frame
                )
            elif any("httpx" in frame for frame in frames):
                innermost = "Kubernetes call in " + innermost
            steps[innermost] += count
        elif any("asyncio" in frame or "kopf" in frame for frame in frames):
            kinds["event loop (kopf)"] += count
            loop_frames[frames[-1].split(" (")[0]] += count
        else:
            kinds["other threads"] += count
    return {
        "samples": total,
        "samples_by_thread_kind": dict(kinds.most_common()),
        "top_inclusive_frames": dict(inclusive.most_common(40)),
        "handler_samples_by_step": dict(steps.most_common(20)),
        "event_loop_innermost_frames": dict(loop_frames.most_common(15)),
    }


def _short_frame(frame: str) -> str:
    """``func (path/to/module.py:12)`` -> ``func (module.py)``: one entry per function."""
    name, _, where = frame.partition(" (")
    module = where.rsplit(":", 1)[0].rsplit("/", 2)
    return f"{name} ({'/'.join(module[-2:])})" if where else name


def burst_phase(
    bench: Bench, count: int, threads: int, timeout: float, profiler: Profiler
) -> dict[str, Any]:
    """Create ``count`` Blueprints at once and wait for all their compile Jobs.

    Args:
        bench: The shared pieces.
        count: How many Blueprints.
        threads: Threads sending create requests.
        timeout: Seconds from the first create to give up waiting.
        profiler: Samples the operator while the Jobs are awaited (when py-spy is given).

    Returns:
        The phase's results.
    """
    names = [f"bench-burst-{index:04d}" for index in range(count)]
    widths = [bench.next_width() for _ in names]
    before = mark(bench.processes, bench.operator, bench.client)
    profiler.start()
    start_wall = time.time()
    start = time.monotonic()
    with (
        admin_client(bench.plane, connections=threads) as client,
        ThreadPoolExecutor(threads, thread_name_prefix="create") as pool,
    ):
        created = list(
            pool.map(lambda pair: create_blueprint(client, *pair), zip(names, widths, strict=True))
        )
    creates_done = time.monotonic()
    log(f"burst: {count} creates sent in {creates_done - start:.1f}s")
    accepted = {item.name for item in created if item.status == 201}
    all_seen, curve = _progress(bench.watcher, accepted, start, start + timeout)
    finished = time.monotonic()
    profile = profiler.stop()
    after = mark(bench.processes, bench.operator, bench.client)
    last_job = max((bench.watcher.seen[name] for name in accepted if name in bench.watcher.seen),
                   default=finished)  # fmt: skip
    # Status: every Blueprint's status written (phase Compiling), polled once a second.
    status_deadline = time.monotonic() + timeout
    phases = _blueprint_phases(bench.client, accepted)
    while phases.get("Compiling", 0) < len(accepted) and time.monotonic() < status_deadline:
        time.sleep(1.0)
        phases = _blueprint_phases(bench.client, accepted)
    statuses_written = time.monotonic()
    end_wall = time.time()
    latencies = _latencies(created, bench.watcher)
    done = handler_done_times(bench.operator)
    handler = _handler_done(created, done)
    seconds_to_all = last_job - start
    return {
        "blueprints": count,
        "threads": threads,
        "create_errors": dict(Counter(item.status for item in created if item.status != 201)),
        "create_retries": sum(item.attempts - 1 for item in created),
        "creates_sent_s": round(creates_done - start, 2),
        "all_jobs_seen": all_seen,
        "jobs_seen": bench.watcher.count(accepted),
        "first_create_to_last_job_s": round(seconds_to_all, 2),
        "last_create_return_to_last_job_s": round(last_job - creates_done, 2),
        "meets_target_all_within_60s": all_seen and seconds_to_all <= TARGET_BURST_S,
        "jobs_per_s": round(bench.watcher.count(accepted) / max(seconds_to_all, 1e-9), 2),
        "first_create_to_all_status_compiling_s": round(statuses_written - start, 2),
        "status_phases_at_end": dict(phases),
        "create_return_to_job_s": (
            summarize(latencies["create_return_to_job_s"])
            if latencies["create_return_to_job_s"]
            else None
        ),
        "create_request_s": summarize(latencies["create_request_s"]),
        "create_return_to_kopf_creation_processed_s": summarize(handler) if handler else None,
        "jobs_seen_curve_s_count": curve,
        "rss_idle_before": bench.sampler.window(before.at - 10.0, before.at),
        "rss": bench.sampler.window(before.at, finished),
        "rss_until_statuses_written": bench.sampler.window(before.at, statuses_written),
        "operator_log": log_summary(bench.operator, start_wall, end_wall),
        "creations_processed_twice_or_more": sum(
            1
            for name, lines in creations_processed(bench.operator).items()
            if name in accepted and lines > 1
        ),
        "operator_profile": profile,
        **phase_report(before, after),
    }


# -- the run -----------------------------------------------------------------------------------


def snapshot_code(directory: Path) -> dict[str, Any]:
    """Copy the checkout's ``src/esper`` and ``operator/esper_operator`` into ``directory``.

    The operator and Urza run from this copy (``PYTHONPATH``), so edits to the checkout while
    the benchmark runs do not change the code under test halfway.

    Args:
        directory: An empty directory; ``src`` and ``operator`` are created in it.

    Returns:
        The copy's ``pythonpath`` and a SHA-256 over the operator's and Esper's source files.
    """
    digest = hashlib.sha256()
    for source, target in (
        (REPO_ROOT / "src" / "esper", directory / "src" / "esper"),
        (REPO_ROOT / "operator" / "esper_operator", directory / "operator" / "esper_operator"),
    ):
        shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        for path in sorted(target.rglob("*.py")):
            digest.update(str(path.relative_to(directory)).encode())
            digest.update(path.read_bytes())
    return {
        "pythonpath": f"{directory / 'operator'}:{directory / 'src'}",
        "sources_sha256": digest.hexdigest(),
    }


def apply_patch(directory: Path, patch: Path) -> dict[str, str]:
    """Apply a unified diff (paths ``a/operator/...``, ``a/src/...``) to the code snapshot.

    For measuring a proposed change to the operator without touching the checkout.

    Args:
        directory: The snapshot (what :func:`snapshot_code` filled).
        patch: The diff.

    Returns:
        The patch's path and SHA-256.

    Raises:
        RuntimeError: The patch did not apply.
    """
    text = patch.read_bytes()
    result = subprocess.run(
        ["patch", "-p1", "--forward", "--batch", "-d", str(directory)],
        input=text,
        capture_output=True,
        check=False,
        timeout=60,
    )
    if result.returncode != 0:
        raise RuntimeError(f"{patch} did not apply: {result.stdout.decode(errors='replace')}")
    return {"path": str(patch), "sha256": hashlib.sha256(text).hexdigest()}


class SnapshotOperator(OperatorProcess):
    """The operator process, importing Esper and the operator from a snapshot when given."""

    def __init__(self, kubeconfig: Path, settings: dict[str, str], pythonpath: str | None) -> None:
        """Describe the replica.

        Args:
            kubeconfig: Its ServiceAccount kubeconfig.
            settings: ``ESPER_OPERATOR_*`` settings without the prefix.
            pythonpath: Where the code snapshot is; None runs the checkout's code.
        """
        super().__init__(kubeconfig, settings)
        self._pythonpath = pythonpath

    def _env(self) -> dict[str, str]:
        environment = dict(super()._env())
        if self._pythonpath is not None:
            environment["PYTHONPATH"] = self._pythonpath
        return environment


@contextlib.contextmanager
def started_stack(args: argparse.Namespace) -> Iterator[tuple[Bench, dict[str, Any]]]:
    """Start PostgreSQL, MinIO, Urza, the control plane and the operator; yield the pieces.

    Args:
        args: The command line.

    Yields:
        The shared pieces and the startup facts (seconds, versions, settings).
    """
    facts: dict[str, Any] = {}
    with ExitStack() as stack:
        started = time.monotonic()
        pythonpath: str | None = None
        if args.code == "snapshot":
            work = stack.enter_context(temporary_directory("esper-bench-operator-code-"))
            snapshot = snapshot_code(work)
            pythonpath = snapshot["pythonpath"]
            facts["code"] = {"run_from": "snapshot of the checkout", **snapshot}
            facts["code"]["patches"] = [apply_patch(work, patch) for patch in args.code_patch]
        else:
            facts["code"] = {"run_from": "the checkout (live)"}
        facts["code"]["operator_diff_vs_head"] = _git_diff_stat("operator", "src")
        postgres = stack.enter_context(PostgresServer())
        postgres.create_database(DATABASE)
        minio = stack.enter_context(S3Server())
        log("postgresql and minio started; starting urza")
        urza = stack.enter_context(
            UrzaServer(
                {
                    "ESPER_URZA_DATABASE_URL": postgres.sqlalchemy_url(DATABASE),
                    "ESPER_URZA_BLOB_STORE": "s3",
                    "ESPER_URZA_S3_ENDPOINT_URL": minio.endpoint_url,
                    "ESPER_URZA_S3_BUCKET": minio.default_bucket,
                    "ESPER_URZA_S3_REGION": minio.region,
                    "ESPER_URZA_S3_ACCESS_KEY_ID": minio.access_key,
                    "ESPER_URZA_S3_SECRET_ACCESS_KEY": minio.secret_key,
                    **({"PYTHONPATH": pythonpath} if pythonpath else {}),
                }
            )
        )
        log("starting the control plane (etcd, kube-apiserver, controller manager, scheduler)")
        plane = stack.enter_context(ControlPlane())
        facts["control_plane_startup_s"] = round(plane.startup_seconds or 0.0, 1)
        kubeconfig = install_operator_prerequisites(plane)
        plane.kubectl("create", "namespace", NAMESPACE)
        plane.wait_for_service_account(NAMESPACE)
        plane.kubectl(
            "create", "secret", "generic", WORKER_TOKEN_SECRET,
            f"--from-literal=token={urza.token}", "-n", NAMESPACE,
        )  # fmt: skip
        settings = {
            **OPERATOR_SETTINGS,
            "URZA_URL": urza.url,
            "URZA_TOKEN": urza.token,
            **dict(item.split("=", 1) for item in args.operator_setting),
        }
        log("starting the operator")
        operator = SnapshotOperator(kubeconfig, settings, pythonpath)
        stack.callback(operator.close)
        operator.start()
        client = stack.enter_context(admin_client(plane))
        watcher = JobWatcher(plane)
        watcher.start()
        stack.callback(watcher.stop)
        watcher.wait_ready()
        assert operator.pid is not None
        sampler = Sampler(operator.pid)
        sampler.start()
        stack.callback(sampler.stop)
        processes = Processes(
            {
                "operator": operator.pid,
                "kube_apiserver": _pid(plane.apiserver.pid),
                "etcd": _pid(plane.etcd.pid),
                "kube_controller_manager": _pid(plane.controller_manager.pid),
                "kube_scheduler": _pid(plane.scheduler.pid),
                "urza": urza.pid,
                "postgres": _pid(postgres.pid),
                "minio": _pid(minio.pid),
            }
        )
        facts["stack_startup_s"] = round(time.monotonic() - started, 1)
        facts["kubernetes_server_version"] = server_version(client)
        facts["operator_settings_env"] = {
            f"ESPER_OPERATOR_{key}": ("<token>" if key == "URZA_TOKEN" else value)
            for key, value in settings.items()
        }
        defaults = OperatorSettings.model_fields
        facts["operator_defaults_in_effect"] = {
            name: defaults[name].default
            for name in (
                "workers", "resync_seconds", "queue_retry_seconds", "max_gpu_jobs",
                "job_backoff_limit", "peering_lifetime_seconds", "compile_cache",
            )
            if name.upper() not in settings
        }  # fmt: skip
        facts["urza"] = "esper urza serve (own process): PostgreSQL + S3 (MinIO)"
        facts["operator_identity"] = f"ServiceAccount {OPERATOR_NAMESPACE}/{OPERATOR_ACCOUNT}"
        facts["operator_log"] = str(operator.log_path)
        yield (
            Bench(
                plane=plane,
                client=client,
                watcher=watcher,
                operator=operator,
                sampler=sampler,
                processes=processes,
            ),
            facts,
        )


def _git_diff_stat(*paths: str) -> list[str]:
    try:
        result = subprocess.run(
            ["git", "diff", "--stat", "HEAD", "--", *paths],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            check=True,
            timeout=30,
        )
    except (OSError, subprocess.SubprocessError):
        return []
    return result.stdout.strip().splitlines()


def _pid(pid: int | None) -> int:
    if pid is None:
        raise RuntimeError("a server of the stack is not running")
    return pid


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Start everything, run the phases and return the results.

    Args:
        args: The command line.

    Returns:
        The results document's ``results`` part.
    """
    with started_stack(args) as (bench, facts):
        results: dict[str, Any] = {"setup": facts}
        log(f"operator up; idle for {args.idle_seconds:g}s")
        results["idle_after_start"] = idle_phase(bench, args.idle_seconds)
        if args.latency_count:
            log(f"latency: {args.latency_count} Blueprints one at a time")
            results["latency"] = latency_phase(
                bench, args.latency_count, args.latency_gap, args.job_timeout
            )
        log(f"idle for {args.idle_seconds:g}s before the burst")
        results["idle_before_burst"] = idle_phase(bench, args.idle_seconds)
        if args.burst_count:
            log(f"burst: {args.burst_count} Blueprints from {args.burst_threads} threads")
            assert bench.operator.pid is not None
            profiler = Profiler(
                args.py_spy, bench.operator.pid, args.py_spy_out, idle=args.py_spy_mode == "wall"
            )
            results["burst"] = burst_phase(
                bench, args.burst_count, args.burst_threads, args.burst_timeout, profiler
            )
        if args.after_seconds:
            log(f"observing {args.after_seconds:g}s more (resync timers of unsettled Blueprints)")
            after = idle_phase(bench, args.after_seconds)
            start_wall = time.time() - after["seconds"]
            after["operator_log"] = log_summary(bench.operator, start_wall, time.time())
            results["after_burst"] = after
        results["watch_restarts"] = bench.watcher.restarts
        results["watch_error"] = bench.watcher.error
        results["operator_peak_rss_mib"] = round(
            max((sample.rss for sample in bench.sampler.samples), default=0) / 2**20, 1
        )
        if args.keep_log is not None:
            args.keep_log.write_bytes(bench.operator.log_path.read_bytes())
            results["setup"]["operator_log"] = str(args.keep_log)
    return results


def table(results: dict[str, Any]) -> str:
    """Render the headline numbers.

    Args:
        results: What :func:`run` returned.

    Returns:
        The table.
    """
    rows: list[list[object]] = []
    latency = results.get("latency")
    if latency and latency["create_return_to_job_s"]:
        summary = latency["create_return_to_job_s"]
        rows.append(["latency: create -> Job p50 s", summary["p50"], f"<= {TARGET_P50_S}"])
        rows.append(["latency: p99 / max s", f"{summary['p99']} / {summary['max']}", ""])
        rows.append(["latency: meets target", latency["meets_target_p50_le_1s"], ""])
    burst = results.get("burst")
    if burst:
        rows.append(
            [
                f"burst: {burst['blueprints']} -> all Jobs s",
                burst["first_create_to_last_job_s"],
                f"<= {TARGET_BURST_S:.0f}",
            ]
        )
        rows.append(["burst: Jobs seen", f"{burst['jobs_seen']}/{burst['blueprints']}", ""])
        rows.append(["burst: meets target", burst["meets_target_all_within_60s"], ""])
        rows.append(["burst: creates sent s", burst["creates_sent_s"], ""])
        if burst["create_return_to_job_s"]:
            summary = burst["create_return_to_job_s"]
            rows.append(["burst: per-Blueprint p50/p99 s", f"{summary['p50']} / {summary['p99']}"])
        rows.append(
            ["burst: all statuses written s", burst["first_create_to_all_status_compiling_s"]]
        )
        rows.append(["burst: Jobs/s", burst["jobs_per_s"]])
        rows.append(["burst: created twice (kopf)", burst["creations_processed_twice_or_more"]])
        idle = burst["rss_idle_before"] or {}
        peak = burst["rss"] or {}
        rows.append(["operator RSS idle before MiB", idle.get("rss_mib_mean", "-")])
        rows.append(["operator RSS peak in burst MiB", peak.get("rss_mib_max", "-")])
        rows.append(["operator CPU % of a core", burst["cpu_percent_of_one_core"].get("operator")])
        rows.append(
            ["apiserver / etcd CPU %", "{} / {}".format(
                burst["cpu_percent_of_one_core"].get("kube_apiserver"),
                burst["cpu_percent_of_one_core"].get("etcd"),
            )]
        )  # fmt: skip
        rows.append(["urza / postgres CPU %", "{} / {}".format(
            burst["cpu_percent_of_one_core"].get("urza"),
            burst["cpu_percent_of_one_core"].get("postgres"),
        )])  # fmt: skip
        rows.append(["reconcile mean s (burst)", burst["blueprint_reconcile_seconds"]["mean"]])
        machine = burst["machine"]
        rows.append(["machine busy % (2 cores)", machine["busy_percent_of_all_cores"]])
        rows.append(["other work, cores", machine["other_work_cores"]])
    after = results.get("after_burst")
    if after:
        rows.append(["after: reconciles", after["reconciles_total"]])
        rows.append(["after: operator CPU %", after["cpu_percent_of_one_core"].get("operator")])
    padded = [[*row, *[""] * (3 - len(row))] for row in rows]
    return format_table(["measure", "value", "target"], padded)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse the command line.

    Args:
        argv: The arguments (``sys.argv[1:]`` when None).

    Returns:
        The options.
    """
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--latency-count", type=int, default=50, help="Blueprints created one at a time (50)"
    )
    parser.add_argument(
        "--latency-gap",
        type=float,
        default=1.0,
        help="seconds between a Job's arrival and the next create (1)",
    )
    parser.add_argument(
        "--burst-count", type=int, default=500, help="Blueprints created at once (500)"
    )
    parser.add_argument(
        "--burst-threads", type=int, default=32, help="threads sending the burst's creates (32)"
    )
    parser.add_argument(
        "--burst-timeout",
        type=float,
        default=900.0,
        help="seconds to wait for the burst's Jobs, and again for their statuses (900)",
    )
    parser.add_argument(
        "--job-timeout", type=float, default=60.0, help="seconds to wait for one latency Job (60)"
    )
    parser.add_argument(
        "--idle-seconds", type=float, default=10.0, help="idle observation before phases (10)"
    )
    parser.add_argument(
        "--after-seconds",
        type=float,
        default=75.0,
        help="observation after the burst, covering one resync period (75)",
    )
    parser.add_argument(
        "--operator-setting",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra ESPER_OPERATOR_ setting without the prefix (e.g. WORKERS=32); repeatable",
    )
    parser.add_argument(
        "--code",
        choices=("snapshot", "live"),
        default="snapshot",
        help="run the operator and Urza from a copy of src/ and operator/ taken at start "
        "(snapshot, default) or from the checkout (live)",
    )
    parser.add_argument(
        "--code-patch",
        type=Path,
        action="append",
        default=[],
        metavar="DIFF",
        help="apply a unified diff to the code snapshot (a proposed operator change); repeatable",
    )
    parser.add_argument(
        "--py-spy",
        type=Path,
        default=None,
        help="diagnostic: py-spy binary; profiles the operator during the burst (perturbs it)",
    )
    parser.add_argument(
        "--py-spy-mode",
        choices=("wall", "cpu"),
        default="wall",
        help="wall: sample waiting threads too (where the time goes); cpu: running threads only",
    )
    parser.add_argument(
        "--py-spy-out",
        type=Path,
        default=Path("/tmp/operator_burst.pyspy.txt"),
        help="where the profile's collapsed stacks go (/tmp/operator_burst.pyspy.txt)",
    )
    parser.add_argument(
        "--keep-log", type=Path, default=None, help="copy the operator's log here at the end"
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="result file (benchmarks/results/operator_reconcile.json)",
    )
    args = parser.parse_args(argv)
    if args.latency_count < 0 or args.burst_count < 0 or args.burst_threads < 1:
        parser.error("counts must be >= 0 and --burst-threads >= 1")
    if args.code_patch and args.code != "snapshot":
        parser.error("--code-patch needs --code snapshot")
    if any("=" not in item for item in args.operator_setting):
        parser.error("--operator-setting takes KEY=VALUE")
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark, print its table and write its JSON.

    Args:
        argv: The arguments (``sys.argv[1:]`` when None).

    Returns:
        The exit status.
    """
    args = parse_args(argv)
    # SIGTERM (a timeout, a CI cancel) unwinds like Ctrl-C, so every server is stopped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    env = environment()
    env["packages"].update(
        {
            name: _version(name)
            for name in ("kopf", "prometheus-client", "aiohttp", "psutil", "torch")
        }
    )
    env["kubernetes"] = KUBERNETES_VERSION
    env["note"] = (
        "shared 2-core VM: every component (etcd, kube-apiserver, controller manager, scheduler, "
        "PostgreSQL, MinIO, Urza, the operator and this client) shares the same 2 cores with each "
        "other and with unrelated work; see load_average_1_5_15 before and after"
    )
    started = time.perf_counter()
    results = run(args)
    results["wall_seconds"] = round(time.perf_counter() - started, 1)
    parameters = {
        "latency_count": args.latency_count,
        "latency_gap_s": args.latency_gap,
        "burst_count": args.burst_count,
        "burst_threads": args.burst_threads,
        "burst_timeout_s": args.burst_timeout,
        "idle_seconds": args.idle_seconds,
        "after_seconds": args.after_seconds,
        "operator_settings": results["setup"]["operator_settings_env"],
        "target": TARGET,
        "designs": "bottleneck MLP, a distinct hidden width per Blueprint",
        "client": "httpx, admin client certificate; Jobs seen through a watch (ADDED events)",
        "kubelet": "none: the Jobs' pods stay Pending",
        "profiled_with_py_spy": args.py_spy is not None,
        "code": args.code,
        "code_patches": [str(patch) for patch in args.code_patch],
        "targets": {"latency_p50_s": TARGET_P50_S, "burst_all_jobs_s": TARGET_BURST_S},
    }
    path = write_result(NAME, parameters, results, out=args.out, env=env)
    print(table(results))
    print(f"wrote {path} (run took {results['wall_seconds']} s)")
    return 0


def _version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


if __name__ == "__main__":
    raise SystemExit(main())
