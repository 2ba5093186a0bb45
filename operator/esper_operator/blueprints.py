"""Reconciling a ``Blueprint``: validate, register in Urza, compile, benchmark, report.

Level-triggered: every call looks at the world (the resource, Urza's kernels, the Jobs) and
takes the next missing step for each target, so it may run any number of times, from any
trigger (the resource changed, one of its Jobs finished, a resync, a restarted operator), and
always converges without duplicates: every object it creates has a deterministic name.

Per target: compile Job (owner: the Blueprint) -> on success a ``KernelArtifact`` (owner: the
Blueprint) -> benchmark Job (owner: the KernelArtifact) -> the KernelArtifact's status mirrors
Urza's record. A Job that fails after its retries marks the kernel Failed with the pod's reason;
it is not recreated until someone deletes it.
"""

import logging
from dataclasses import dataclass

from pydantic import ValidationError

from esper.blueprints.shapes import ShapeError, check_graftable, infer_shapes
from esper.contracts._base import describe_validation_error
from esper.contracts.crd import (
    GROUP,
    VERSION,
    BlueprintPhase,
    BlueprintResourceSpec,
    BlueprintResourceStatus,
    Condition,
    KernelArtifactResourceStatus,
    KernelRef,
)
from esper.contracts.kernel import (
    PHASES_WITH_ARTIFACT,
    KernelArtifact,
    KernelPhase,
    KernelTarget,
    Verdict,
)
from esper.contracts.urza_api import PhaseChange
from esper.urza.client import UrzaClient, UrzaNotFoundError, UrzaRequestError
from esper_operator import manifests, names
from esper_operator.conditions import set_condition
from esper_operator.jobs import GpuJobGate, JobState, failure_reason, job_state
from esper_operator.kube import KubeApi, esper_path, generation_of, metadata_of, resource_path
from esper_operator.settings import JsonObject, OperatorSettings

LOGGER = logging.getLogger("esper_operator.blueprints")

JUDGED = frozenset({KernelPhase.VALIDATED, KernelPhase.REJECTED})
SUPERSEDABLE = frozenset({KernelPhase.COMPILED, KernelPhase.VALIDATED})


class Requeue(Exception):  # noqa: N818 - it is a request, not an error
    """Look at the resource again later (a GPU Job is waiting for a slot under the cap).

    Attributes:
        delay: Seconds to wait.
        reason: Why.
    """

    def __init__(self, reason: str, delay: float) -> None:
        """Create the request.

        Args:
            reason: Why.
            delay: Seconds to wait.
        """
        super().__init__(reason)
        self.reason = reason
        self.delay = delay


def registered_designs(body: JsonObject) -> list[str]:
    """Return the design hashes a Blueprint has registered in Urza (its annotation).

    Args:
        body: The Blueprint.

    Returns:
        The hashes, oldest first.
    """
    annotations = metadata_of(body).get("annotations")
    raw = annotations.get(names.DESIGNS_ANNOTATION) if isinstance(annotations, dict) else None
    return [item for item in str(raw or "").split(",") if item]


def _status_dump(status: BlueprintResourceStatus | KernelArtifactResourceStatus) -> JsonObject:
    return status.model_dump(mode="json", by_alias=True, exclude_none=True)


@dataclass
class _TargetOutcome:
    """What one target's pipeline looks like after this pass."""

    ref: KernelRef
    waiting: bool
    failure: str | None
    queued: bool


class BlueprintReconciler:
    """Drives Blueprints through Urza, compile Jobs and benchmark Jobs."""

    def __init__(
        self, api: KubeApi, urza: UrzaClient, settings: OperatorSettings, gate: GpuJobGate
    ) -> None:
        """Create the reconciler.

        Args:
            api: The Kubernetes API.
            urza: Urza's client (the operator's token).
            settings: Job images, resources, limits.
            gate: The GPU Job cap.
        """
        self._api = api
        self._urza = urza
        self._settings = settings
        self._gate = gate

    # The whole pass ---------------------------------------------------------------------------

    def reconcile(self, namespace: str, name: str) -> BlueprintPhase | None:
        """Take every step that is due for one Blueprint.

        Args:
            namespace: Its namespace.
            name: Its name.

        Returns:
            Its phase afterwards, or None when it is gone or being deleted.

        Raises:
            Requeue: When a GPU Job waits for a slot.
            UrzaUnavailableError: When Urza cannot be reached (kopf retries with backoff).
        """
        body = self._api.get(esper_path("blueprints", namespace, name))
        if body is None or metadata_of(body).get("deletionTimestamp"):
            return None
        generation = generation_of(body)
        status = self._current_status(body)
        spec_or_error = self._validated_spec(body)
        if isinstance(spec_or_error, str):
            self._write_invalid(namespace, name, status, generation, spec_or_error)
            return BlueprintPhase.INVALID
        spec = spec_or_error
        designs = registered_designs(body)
        if spec.ir.canonical_hash() not in designs:
            # Recorded before Urza hears of it, so that supersession and the finalizer find
            # every design this Blueprint registered, even one whose compile never finished.
            designs = self._record_design(body, designs, spec.ir.canonical_hash())
        try:
            record = self._urza.submit_blueprint(spec.ir)
        except UrzaRequestError as error:
            self._write_invalid(namespace, name, status, generation, str(error))
            return BlueprintPhase.INVALID
        owner = manifests.esper_owner("Blueprint", body)
        outcomes = [self._reconcile_target(owner, record.hash, target) for target in spec.targets]
        self._supersede_older(owner, record.hash, designs)
        phase = self._write_status(
            namespace, name, status, generation, record.hash, outcomes=outcomes
        )
        queued = sum(outcome.queued for outcome in outcomes)
        if queued:
            raise Requeue(
                f"{queued} GPU Job(s) wait for a slot (cap {self._settings.max_gpu_jobs})",
                self._settings.queue_retry_seconds,
            )
        return phase

    def _current_status(self, body: JsonObject) -> BlueprintResourceStatus:
        raw = body.get("status")
        if not isinstance(raw, dict):
            return BlueprintResourceStatus()
        try:
            return BlueprintResourceStatus.model_validate(raw)
        except ValidationError:
            # A status someone edited by hand is recomputed from the world, not trusted.
            return BlueprintResourceStatus()

    def _validated_spec(self, body: JsonObject) -> BlueprintResourceSpec | str:
        try:
            spec = BlueprintResourceSpec.model_validate(body.get("spec"))
        except ValidationError as error:
            return f"spec: {describe_validation_error(error)}"
        try:
            infer_shapes(spec.ir)
            for target in spec.targets:
                unbound = sorted(spec.ir.symbols() - set(target.bindings))
                if unbound:
                    return f"target '{target.short()}' does not bind symbol(s) {', '.join(unbound)}"
                check_graftable(spec.ir, target.bindings)
        except ShapeError as error:
            return f"blueprint '{spec.ir.name}': {error}"
        return spec

    # One target -------------------------------------------------------------------------------

    def _reconcile_target(
        self, owner: manifests.Owner, blueprint_hash: str, target: KernelTarget
    ) -> _TargetOutcome:
        short = target.short()
        kernel = self._urza.create_kernel(blueprint_hash, target)
        failure: str | None = None
        waiting = False
        queued = False
        if kernel.phase not in PHASES_WITH_ARTIFACT:
            job_name = names.compile_job_name(owner.name, blueprint_hash, short)
            job = self._api.get(resource_path("batch/v1", "jobs", owner.namespace, job_name))
            state = job_state(job)
            if state is JobState.MISSING:
                manifest = manifests.compile_job(owner, blueprint_hash, target, self._settings)
                queued = not self._gate.start(
                    owner.namespace, manifest, gpu=manifests.gpu_count(target) > 0
                )
                waiting = True
            elif state is JobState.ACTIVE:
                waiting = True
            elif job is not None and state is JobState.FAILED:
                failure = f"{short}: compile Job {job_name} failed: " + failure_reason(
                    self._api, owner.namespace, job
                )
            else:
                kernel = self._urza.get_kernel(kernel.id)
                if kernel.phase is KernelPhase.COMPILING:
                    # The Job found another worker compiling it (a forge, or a Blueprint of the
                    # same design): wait for that one; the resync timer looks again.
                    waiting = True
                elif kernel.phase not in PHASES_WITH_ARTIFACT:
                    failure = (
                        f"{short}: compile Job {job_name} succeeded but kernel {kernel.id} is "
                        f"{kernel.phase.value}: {kernel.error or 'no artifact'}"
                    )
        if kernel.phase in PHASES_WITH_ARTIFACT:
            outcome = self._reconcile_artifact(owner, blueprint_hash, target, kernel)
            waiting, failure, queued, kernel = outcome
        phase = KernelPhase.FAILED if failure else kernel.phase
        ref = KernelRef(
            name=names.kernel_artifact_name(owner.name, blueprint_hash, short),
            kernel_id=kernel.id,
            target=short,
            phase=phase,
        )
        return _TargetOutcome(ref=ref, waiting=waiting, failure=failure, queued=queued)

    def _reconcile_artifact(
        self,
        owner: manifests.Owner,
        blueprint_hash: str,
        target: KernelTarget,
        kernel: KernelArtifact,
    ) -> tuple[bool, str | None, bool, KernelArtifact]:
        short = target.short()
        namespace = owner.namespace
        artifact_name = names.kernel_artifact_name(owner.name, blueprint_hash, short)
        self._api.create(
            esper_path("kernelartifacts", namespace),
            manifests.kernel_artifact(owner, blueprint_hash, target, kernel.id),
        )
        artifact = self._api.get(esper_path("kernelartifacts", namespace, artifact_name))
        if artifact is None:
            # Deleted between create and read (its Blueprint is going away): nothing to do.
            return False, None, False, kernel
        job_name = names.benchmark_job_name(owner.name, blueprint_hash, short)
        failure: str | None = None
        waiting = False
        queued = False
        if kernel.phase in (KernelPhase.COMPILED, KernelPhase.VALIDATING):
            job = self._api.get(resource_path("batch/v1", "jobs", namespace, job_name))
            state = job_state(job)
            if state is JobState.MISSING:
                artifact_owner = manifests.esper_owner("KernelArtifact", artifact)
                manifest = manifests.benchmark_job(
                    artifact_owner,
                    owner.name,
                    blueprint_hash,
                    kernel.id,
                    target,
                    settings=self._settings,
                )
                queued = not self._gate.start(
                    namespace, manifest, gpu=manifests.gpu_count(target) > 0
                )
                waiting = True
            elif state is JobState.ACTIVE:
                waiting = True
            elif job is not None and state is JobState.FAILED:
                failure = f"{short}: benchmark Job {job_name} failed: " + failure_reason(
                    self._api, namespace, job
                )
            else:
                kernel = self._urza.get_kernel(kernel.id)
                if kernel.phase is KernelPhase.VALIDATING:
                    waiting = True  # another worker is benchmarking it
                elif kernel.phase not in JUDGED | {KernelPhase.SUPERSEDED}:
                    failure = (
                        f"{short}: benchmark Job {job_name} succeeded but kernel {kernel.id} is "
                        f"{kernel.phase.value}: {kernel.error or 'no verdict'}"
                    )
        self._write_artifact_status(artifact, kernel, job_name, failure)
        return waiting, failure, queued, kernel

    # Status -----------------------------------------------------------------------------------

    def _write_artifact_status(
        self, artifact: JsonObject, kernel: KernelArtifact, job_name: str, failure: str | None
    ) -> None:
        raw = artifact.get("status")
        try:
            current = KernelArtifactResourceStatus.model_validate(
                raw if isinstance(raw, dict) else {}
            )
        except ValidationError:
            current = KernelArtifactResourceStatus()
        generation = generation_of(artifact)
        latency = None
        verdict: Verdict | None = None
        reasons: list[str] = []
        if kernel.benchmark is not None:
            largest = max(kernel.benchmark.latency, key=lambda item: item.batch_size)
            latency = round(largest.p50_ms, 3)  # a readable LATENCY column
            verdict = kernel.benchmark.verdict
            reasons = list(kernel.benchmark.reasons)
        if kernel.error:
            reasons.append(kernel.error[:4096])
        if failure:
            reasons.append(failure[:4096])
        conditions = set_condition(
            current.conditions,
            "Compiled",
            True,
            "ArtifactStored",
            kernel.artifact_uri or "",
            generation=generation,
        )
        if kernel.phase in JUDGED:
            validated = kernel.phase is KernelPhase.VALIDATED
            conditions = set_condition(
                conditions,
                "Validated",
                validated,
                "Validated" if validated else "Rejected",
                "; ".join(reasons) or "benchmarked and checked",
                generation=generation,
            )
        elif failure:
            conditions = set_condition(
                conditions, "Validated", False, "BenchmarkFailed", failure, generation=generation
            )
        status = KernelArtifactResourceStatus(
            phase=KernelPhase.FAILED if failure else kernel.phase,
            kernel_id=kernel.id,
            target=kernel.target.short(),
            sha256=kernel.sha256,
            artifact_uri=kernel.artifact_uri,
            latency_p50_ms=latency,
            verdict=verdict,
            reasons=reasons[:32],
            job_name=job_name,
            conditions=conditions,
            observed_generation=generation,
        )
        if _status_dump(status) != _status_dump(current):
            metadata = metadata_of(artifact)
            self._api.merge_patch(
                esper_path("kernelartifacts", str(metadata["namespace"]), str(metadata["name"]))
                + "/status",
                {"status": _status_dump(status)},
            )

    def _write_invalid(
        self,
        namespace: str,
        name: str,
        current: BlueprintResourceStatus,
        generation: int,
        message: str,
    ) -> None:
        conditions = set_condition(
            current.conditions, "Valid", False, "InvalidSpec", message, generation=generation
        )
        conditions = set_condition(
            conditions, "Ready", False, "InvalidSpec", message, generation=generation
        )
        status = BlueprintResourceStatus(
            phase=BlueprintPhase.INVALID,
            conditions=conditions,
            observed_generation=generation,
        )
        LOGGER.warning("blueprint %s/%s is invalid: %s", namespace, name, message)
        self._patch_status(namespace, name, current, status)

    def _write_status(
        self,
        namespace: str,
        name: str,
        current: BlueprintResourceStatus,
        generation: int,
        blueprint_hash: str,
        *,
        outcomes: list[_TargetOutcome],
    ) -> BlueprintPhase:
        failures = [outcome.failure for outcome in outcomes if outcome.failure]
        waiting = any(outcome.waiting for outcome in outcomes)
        refs = [outcome.ref for outcome in outcomes]
        judged = [ref for ref in refs if ref.phase in JUDGED]
        conditions: list[Condition] = set_condition(
            current.conditions, "Valid", True, "ShapesChecked", "", generation=generation
        )
        if failures:
            phase = BlueprintPhase.FAILED
            message = "; ".join(failures)
            conditions = set_condition(
                conditions, "Failed", True, "JobFailed", message, generation=generation
            )
            conditions = set_condition(
                conditions, "Ready", False, "JobFailed", message, generation=generation
            )
        else:
            conditions = set_condition(
                conditions, "Failed", False, "NoFailure", "", generation=generation
            )
        if not failures and len(judged) == len(refs):
            phase = BlueprintPhase.READY
            validated = sum(ref.phase is KernelPhase.VALIDATED for ref in refs)
            message = f"{validated} validated, {len(refs) - validated} rejected"
            conditions = set_condition(
                conditions, "Ready", True, "KernelsJudged", message, generation=generation
            )
        elif not failures:
            phase = BlueprintPhase.COMPILING
            message = f"{len(judged)}/{len(refs)} kernels judged"
            conditions = set_condition(
                conditions, "Ready", False, "InProgress", message, generation=generation
            )
        queued = any(outcome.queued for outcome in outcomes)
        conditions = set_condition(
            conditions,
            "Compiling",
            waiting,
            "WaitingForGpu" if queued else ("JobsRunning" if waiting else "Idle"),
            "",
            generation=generation,
        )
        status = BlueprintResourceStatus(
            phase=phase,
            blueprint_hash=blueprint_hash,
            kernel_count=len(refs),
            kernels=refs,
            conditions=conditions,
            observed_generation=generation,
        )
        self._patch_status(namespace, name, current, status)
        return phase

    def _patch_status(
        self,
        namespace: str,
        name: str,
        current: BlueprintResourceStatus,
        status: BlueprintResourceStatus,
    ) -> None:
        if _status_dump(status) == _status_dump(current):
            return
        self._api.merge_patch(
            esper_path("blueprints", namespace, name) + "/status", {"status": _status_dump(status)}
        )

    # Older generations ------------------------------------------------------------------------

    def _record_design(self, body: JsonObject, designs: list[str], design: str) -> list[str]:
        metadata = metadata_of(body)
        updated = [*designs, design]
        # The resourceVersion makes the patch fail (409, retried) if the Blueprint changed since
        # it was read, so two passes cannot each drop the other's design.
        self._api.merge_patch(
            esper_path("blueprints", str(metadata["namespace"]), str(metadata["name"])),
            {
                "metadata": {
                    "resourceVersion": metadata.get("resourceVersion"),
                    "annotations": {names.DESIGNS_ANNOTATION: ",".join(updated)},
                }
            },
        )
        return updated

    def _supersede_older(
        self, owner: manifests.Owner, blueprint_hash: str, designs: list[str]
    ) -> None:
        older = [design for design in designs if design != blueprint_hash]
        stale = [
            artifact
            for artifact in self._api.list(
                esper_path("kernelartifacts", owner.namespace), f"{names.OWNER_UID}={owner.uid}"
            )
            if isinstance(artifact.get("spec"), dict)
            and artifact["spec"].get("blueprintHash") != blueprint_hash
        ]
        if not older and not stale:
            return
        # Urza stores kernels by design and target: one that another live Blueprint holds
        # stays as it is (as the finalizer keeps its design).
        held = self._hashes_held_by_others(owner.uid)
        # Older designs that never got a KernelArtifact (their compile was still running when
        # the spec changed) have usable kernels only in Urza.
        for design in older:
            if design in held:
                continue
            for kernel in self._urza.list_kernels(blueprint_hash=design).items:
                if kernel.phase in SUPERSEDABLE:
                    self._urza.change_phase(kernel.id, PhaseChange(phase=KernelPhase.SUPERSEDED))
        for artifact in stale:
            spec = artifact.get("spec")
            if not isinstance(spec, dict):
                continue
            raw = artifact.get("status")
            status = raw if isinstance(raw, dict) else {}
            if status.get("phase") == KernelPhase.SUPERSEDED.value:
                continue
            kernel_id = status.get("kernelId")
            if not isinstance(kernel_id, str):
                continue
            try:
                kernel = self._urza.get_kernel(kernel_id)
            except UrzaNotFoundError:
                continue
            if kernel.phase in SUPERSEDABLE and spec.get("blueprintHash") not in held:
                kernel = self._urza.change_phase(
                    kernel_id, PhaseChange(phase=KernelPhase.SUPERSEDED)
                )
            generation = generation_of(artifact)
            conditions = set_condition(
                KernelArtifactResourceStatus.model_validate(status).conditions,
                "Superseded",
                True,
                "NewerSpec",
                f"the Blueprint's spec now has hash {blueprint_hash}",
                generation=generation,
            )
            metadata = metadata_of(artifact)
            self._api.merge_patch(
                esper_path("kernelartifacts", owner.namespace, str(metadata["name"])) + "/status",
                {
                    "status": {
                        "phase": kernel.phase.value,
                        "conditions": [
                            item.model_dump(mode="json", by_alias=True) for item in conditions
                        ],
                    }
                },
            )

    # Deletion ---------------------------------------------------------------------------------

    def finalize(self, namespace: str, name: str, body: JsonObject) -> list[str]:
        """Remove a deleted Blueprint's blueprints, kernels and artifacts from Urza.

        Urza stores designs by content hash, so a hash that another live Blueprint also holds
        is kept. The Jobs and KernelArtifacts go by garbage collection (owner references).

        Args:
            namespace: Its namespace.
            name: Its name.
            body: The Blueprint as last seen.

        Returns:
            The blueprint hashes removed from Urza.
        """
        uid = str(metadata_of(body).get("uid", ""))
        hashes: set[str] = set(registered_designs(body))
        raw = body.get("status")
        if isinstance(raw, dict) and isinstance(raw.get("blueprintHash"), str):
            hashes.add(str(raw["blueprintHash"]))
        for artifact in self._api.list(
            esper_path("kernelartifacts", namespace), f"{names.OWNER_UID}={uid}"
        ):
            spec = artifact.get("spec")
            if isinstance(spec, dict) and isinstance(spec.get("blueprintHash"), str):
                hashes.add(str(spec["blueprintHash"]))
        still_used = self._hashes_held_by_others(uid)
        removed: list[str] = []
        for blueprint_hash in sorted(hashes - still_used):
            try:
                self._urza.delete_blueprint(blueprint_hash, cascade=True)
            except UrzaNotFoundError:
                continue
            removed.append(blueprint_hash)
        LOGGER.info(
            "blueprint %s/%s deleted; removed %d blueprint(s) from Urza, kept %d shared",
            namespace,
            name,
            len(removed),
            len(hashes & still_used),
        )
        return removed

    def _hashes_held_by_others(self, uid: str) -> set[str]:
        namespaces = self._settings.namespaces
        paths = (
            [esper_path("blueprints", namespace) for namespace in namespaces]
            if namespaces
            else [f"/apis/{GROUP}/{VERSION}/blueprints"]
        )
        held: set[str] = set()
        for path in paths:
            for other in self._api.list(path):
                metadata = metadata_of(other)
                status = other.get("status")
                if metadata.get("uid") == uid or metadata.get("deletionTimestamp"):
                    continue
                if isinstance(status, dict) and isinstance(status.get("blueprintHash"), str):
                    held.add(str(status["blueprintHash"]))
        return held
