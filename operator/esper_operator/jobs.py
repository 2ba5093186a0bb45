"""Jobs the operator launches: their outcome, why a failed one failed, and the GPU Job cap."""

import threading
from enum import StrEnum

from esper_operator import names
from esper_operator.kube import KubeApi, resource_path
from esper_operator.settings import JsonObject

JOB_NAME_LABEL = "batch.kubernetes.io/job-name"
"""The label the Job controller puts on a Job's pods."""


class JobState(StrEnum):
    """Where a Job is."""

    MISSING = "Missing"
    ACTIVE = "Active"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"


def _dict(value: object) -> JsonObject:
    return value if isinstance(value, dict) else {}


def _items(value: object) -> list[JsonObject]:
    return [item for item in value if isinstance(item, dict)] if isinstance(value, list) else []


def job_state(job: JsonObject | None) -> JobState:
    """Return a Job's state from its ``Complete`` and ``Failed`` conditions.

    Args:
        job: The Job, or None when it does not exist.

    Returns:
        The state.
    """
    if job is None:
        return JobState.MISSING
    for condition in _items(_dict(job.get("status")).get("conditions")):
        if condition.get("status") != "True":
            continue
        if condition.get("type") == "Complete":
            return JobState.SUCCEEDED
        if condition.get("type") == "Failed":
            return JobState.FAILED
    return JobState.ACTIVE


def failure_reason(api: KubeApi, namespace: str, job: JsonObject) -> str:
    """Explain why a failed Job failed: its condition, then its last pod's exit and message.

    Args:
        api: The Kubernetes API.
        namespace: The Job's namespace.
        job: The failed Job.

    Returns:
        One line (or a few) a person can act on.
    """
    job_name = str(_dict(job.get("metadata")).get("name", ""))
    parts: list[str] = []
    for condition in _items(_dict(job.get("status")).get("conditions")):
        if condition.get("type") == "Failed" and condition.get("status") == "True":
            parts.append(
                f"{condition.get('reason', 'Failed')}: {condition.get('message', '')}".strip(" :")
            )
    pods = api.list(resource_path("v1", "pods", namespace), f"{JOB_NAME_LABEL}={job_name}")
    pods.sort(key=lambda pod: str(_dict(pod.get("metadata")).get("creationTimestamp", "")))
    for pod in reversed(pods):
        for container in _items(_dict(pod.get("status")).get("containerStatuses")):
            terminated = _dict(_dict(container.get("state")).get("terminated"))
            if terminated:
                message = str(terminated.get("message", "")).strip()
                parts.append(
                    f"pod {_dict(pod.get('metadata')).get('name')} exited "
                    f"{terminated.get('exitCode')} ({terminated.get('reason', 'Error')})"
                    + (f": {message[-2000:]}" if message else "")
                )
                return "; ".join(part.strip() for part in parts)
    return "; ".join(parts) or f"Job {job_name} failed"


class GpuJobGate:
    """The cap on concurrent GPU Jobs, counted from the API so it holds across restarts.

    :meth:`start` serialises check and creation through one lock, so two handler threads cannot
    both take the last slot. A Job counts from its creation until it succeeds or fails.
    """

    def __init__(self, api: KubeApi, limit: int, namespaces: list[str]) -> None:
        """Create the gate.

        Args:
            api: The Kubernetes API.
            limit: Most GPU Jobs at once.
            namespaces: Namespaces served (empty: the whole cluster).
        """
        self._api = api
        self._limit = limit
        self._namespaces = namespaces
        self._lock = threading.Lock()

    def active(self) -> int:
        """Count the operator's GPU Jobs that have not finished.

        Returns:
            The count.
        """
        selector = f"{names.MANAGED_SELECTOR},{names.GPU}=true"
        paths = (
            [resource_path("batch/v1", "jobs", namespace) for namespace in self._namespaces]
            if self._namespaces
            else ["/apis/batch/v1/jobs"]
        )
        return sum(
            1
            for path in paths
            for job in self._api.list(path, selector)
            if job_state(job) is JobState.ACTIVE
        )

    def start(self, namespace: str, manifest: JsonObject, *, gpu: bool) -> bool:
        """Create a Job, unless it needs a GPU and the cap is reached.

        Args:
            namespace: Its namespace.
            manifest: The Job.
            gpu: Whether it requests a GPU (counted against the cap).

        Returns:
            True when the Job exists now (created, or found), False when it must wait.
        """
        path = resource_path("batch/v1", "jobs", namespace)
        if not gpu:
            self._api.create(path, manifest)
            return True
        with self._lock:
            if not self.has_room():
                return False
            self._api.create(path, manifest)
        return True

    def has_room(self) -> bool:
        """Tell whether one more GPU Job may start (:meth:`start` asks under its lock).

        Returns:
            True below the cap.
        """
        return self.active() < self._limit
