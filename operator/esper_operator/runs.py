"""Reconciling a ``MorphogeneticRun``: its spec ConfigMap, its training Job, its phase.

The training Job runs ``esper run`` against the cluster's Urza and publishes its progress on
Oona; :mod:`esper_operator.run_events` turns those events into the run's status and Kubernetes
Events. This module owns the phase: Pending until the Job exists, Running while it runs,
Succeeded or Failed (with the pod's reason) when it ends. A run's spec is fixed once its Job
exists: a changed spec is reported, not applied (delete the run and apply it again).
"""

import logging

from pydantic import ValidationError

from esper.contracts._base import describe_validation_error
from esper.contracts.crd import (
    ConditionStatus,
    MorphogeneticRunResourceStatus,
    RunPhase,
)
from esper.contracts.run import MorphogeneticRunSpec
from esper_operator import manifests, names
from esper_operator.blueprints import Requeue
from esper_operator.conditions import set_condition
from esper_operator.jobs import GpuJobGate, JobState, failure_reason, job_state
from esper_operator.kube import KubeApi, esper_path, generation_of, metadata_of, resource_path
from esper_operator.settings import JsonObject, OperatorSettings

LOGGER = logging.getLogger("esper_operator.runs")

FINISHED = frozenset({RunPhase.SUCCEEDED, RunPhase.FAILED})


def current_run_status(body: JsonObject) -> MorphogeneticRunResourceStatus:
    """Return a run's status as stored, or a fresh one when it is missing or unreadable.

    Args:
        body: The run.

    Returns:
        The status.
    """
    raw = body.get("status")
    if not isinstance(raw, dict):
        return MorphogeneticRunResourceStatus()
    try:
        return MorphogeneticRunResourceStatus.model_validate(raw)
    except ValidationError:
        return MorphogeneticRunResourceStatus()


def current_or(status: MorphogeneticRunResourceStatus, generation: int) -> int:
    """Return the generation a run's Job was started from, as its status records it.

    Args:
        status: The run's status.
        generation: The run's generation now (used when the status has none yet).

    Returns:
        The observed generation.
    """
    return status.observed_generation or generation


def rejected_spec_replaced(status: MorphogeneticRunResourceStatus, generation: int) -> bool:
    """Tell whether a run Failed for its spec and its spec changed since.

    Such a run never had a Job (an invalid spec stops before one), so, like a Blueprint, its
    new spec is judged again; a run that Failed in its Job stays Failed.

    Args:
        status: The run's status.
        generation: The run's generation now.

    Returns:
        True when the new spec should be judged.
    """
    rejected = any(
        item.type == "Valid" and item.status is ConditionStatus.FALSE for item in status.conditions
    )
    return status.phase is RunPhase.FAILED and rejected and generation > status.observed_generation


class RunReconciler:
    """Starts each run's training Job and follows it to the end."""

    def __init__(self, api: KubeApi, settings: OperatorSettings, gate: GpuJobGate) -> None:
        """Create the reconciler.

        Args:
            api: The Kubernetes API.
            settings: Image, resources, Urza and Oona addresses.
            gate: The GPU Job cap (a ``device: cuda`` run takes a GPU).
        """
        self._api = api
        self._settings = settings
        self._gate = gate

    def reconcile(self, namespace: str, name: str) -> RunPhase | None:
        """Take the step that is due for one run.

        Args:
            namespace: Its namespace.
            name: Its name.

        Returns:
            Its phase afterwards, or None when it is gone or being deleted.

        Raises:
            Requeue: When its GPU Job waits for a slot.
        """
        body = self._api.get(esper_path("morphogeneticruns", namespace, name))
        if body is None or metadata_of(body).get("deletionTimestamp"):
            return None
        status = current_run_status(body)
        generation = generation_of(body)
        if status.phase in FINISHED and not rejected_spec_replaced(status, generation):
            return status.phase
        try:
            spec = MorphogeneticRunSpec.model_validate(body.get("spec"))
        except ValidationError as error:
            message = f"spec: {describe_validation_error(error)}"
            self._write(namespace, name, status, RunPhase.FAILED, generation, invalid=message)
            return RunPhase.FAILED
        owner = manifests.esper_owner("MorphogeneticRun", body)
        job_name = names.training_job_name(name, owner.uid)
        job = self._api.get(resource_path("batch/v1", "jobs", namespace, job_name))
        state = job_state(job)
        # The generation the Job was started from; a later one is reported, never applied.
        observed = generation if state is JobState.MISSING else current_or(status, generation)
        reason: str | None = None
        if state is JobState.MISSING:
            self._api.create(
                resource_path("v1", "configmaps", namespace),
                manifests.run_spec_config_map(owner, spec),
            )
            manifest = manifests.training_job(owner, spec, self._settings)
            if not self._gate.start(namespace, manifest, gpu=spec.device == "cuda"):
                self._write(namespace, name, status, RunPhase.PENDING, observed, queued=True)
                raise Requeue(
                    f"training Job waits for a GPU slot (cap {self._settings.max_gpu_jobs})",
                    self._settings.queue_retry_seconds,
                )
            phase = RunPhase.RUNNING
        elif state is JobState.ACTIVE:
            phase = RunPhase.RUNNING
        elif state is JobState.SUCCEEDED:
            phase = RunPhase.SUCCEEDED
        else:
            phase = RunPhase.FAILED
            reason = failure_reason(self._api, namespace, job or {})
        self._write(
            namespace,
            name,
            status,
            phase,
            observed,
            job_name=job_name,
            failure=reason,
            spec_changed=generation > observed,
        )
        return phase

    def _write(
        self,
        namespace: str,
        name: str,
        current: MorphogeneticRunResourceStatus,
        phase: RunPhase,
        generation: int,
        *,
        job_name: str | None = None,
        failure: str | None = None,
        invalid: str | None = None,
        queued: bool = False,
        spec_changed: bool = False,
    ) -> None:
        conditions = set_condition(
            current.conditions,
            "Valid",
            invalid is None,
            "InvalidSpec" if invalid else "SpecAccepted",
            invalid or "",
            generation=generation,
        )
        if spec_changed:
            conditions = set_condition(
                conditions,
                "SpecChanged",
                True,
                "RunAlreadyStarted",
                "a run's spec is fixed once its Job exists; delete the run and apply it again",
                generation=generation,
            )
        running_reason = {
            RunPhase.PENDING: "WaitingForGpu" if queued else "Pending",
            RunPhase.RUNNING: "JobRunning",
            RunPhase.SUCCEEDED: "JobSucceeded",
            RunPhase.FAILED: "InvalidSpec" if invalid else "JobFailed",
        }[phase]
        conditions = set_condition(
            conditions,
            "Running",
            phase is RunPhase.RUNNING,
            running_reason,
            "",
            generation=generation,
        )
        if phase not in FINISHED:
            # Left over from a rejected spec that has been replaced by a valid one.
            conditions = [item for item in conditions if item.type != "Complete"]
        else:
            conditions = set_condition(
                conditions,
                "Complete",
                phase is RunPhase.SUCCEEDED,
                running_reason,
                invalid or failure or "",
                generation=generation,
            )
        patch: JsonObject = {
            "phase": phase.value,
            "conditions": [item.model_dump(mode="json", by_alias=True) for item in conditions],
            "observedGeneration": generation,
        }
        if job_name is not None:
            patch["jobName"] = job_name
        unchanged = (
            phase is current.phase
            and job_name in (None, current.job_name)
            and conditions == current.conditions
        )
        if unchanged:
            return
        if failure:
            LOGGER.warning("run %s/%s failed: %s", namespace, name, failure)
        # A merge patch of these fields only, so the progress the event consumer writes
        # (epoch, accuracy, seeds, adaptations) is never overwritten here.
        self._api.merge_patch(
            esper_path("morphogeneticruns", namespace, name) + "/status", {"status": patch}
        )
