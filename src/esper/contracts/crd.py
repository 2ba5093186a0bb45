"""Spec and status of the three custom resources, and their Kubernetes-style conditions.

The CRD manifests under ``crds/`` are generated from these models (``esper crds generate``);
:data:`CUSTOM_RESOURCES` describes each resource's names and printer columns.
"""

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Literal

from pydantic import Field, StringConstraints

from esper.contracts._base import Contract
from esper.contracts.blueprint import BlueprintIR
from esper.contracts.decisions import DecisionAction
from esper.contracts.kernel import KernelPhase, KernelTarget, Verdict
from esper.contracts.run import MorphogeneticRunSpec
from esper.contracts.seed import SeedStage
from esper.contracts.types import (
    Count,
    Fraction,
    Identifier,
    KernelId,
    LongText,
    NonNegativeFloat,
    ResourceName,
    Sha256Hex,
    ShortText,
    Step,
)

GROUP = "esper.dev"
"""API group of Esper's custom resources."""

VERSION = "v1alpha1"
"""API version of Esper's custom resources."""

CATEGORY = "esper"
"""``kubectl get esper`` lists every Esper resource."""


class ConditionStatus(StrEnum):
    """Status of a condition, as Kubernetes spells it."""

    TRUE = "True"
    FALSE = "False"
    UNKNOWN = "Unknown"


ConditionReason = Annotated[
    str, StringConstraints(pattern=r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$", max_length=1024)
]
"""A CamelCase reason, as metav1.Condition requires."""


class Condition(Contract):
    """One observation about a resource, in the shape of Kubernetes' ``metav1.Condition``.

    Attributes:
        type: What is observed (``Valid``, ``Compiled``, ``Ready``...), CamelCase.
        status: True, False or Unknown.
        reason: Machine-readable CamelCase reason.
        message: Human-readable detail.
        last_transition_time: When ``status`` last changed.
        observed_generation: The ``metadata.generation`` the condition was computed from.
    """

    type: Annotated[str, StringConstraints(pattern=r"^[A-Z][A-Za-z0-9]{0,63}$")]
    status: ConditionStatus
    reason: ConditionReason
    message: LongText = ""
    last_transition_time: datetime
    observed_generation: int = Field(default=0, ge=0)


Conditions = Annotated[list[Condition], Field(default_factory=list, max_length=16)]


class BlueprintPhase(StrEnum):
    """Summary phase of a ``Blueprint`` resource."""

    PENDING = "Pending"
    INVALID = "Invalid"
    COMPILING = "Compiling"
    READY = "Ready"
    FAILED = "Failed"


class BlueprintResourceSpec(Contract):
    """``spec`` of a ``Blueprint``: the design and the targets to compile it for.

    Attributes:
        ir: The blueprint design.
        targets: Compile targets; one compile Job runs per target.
    """

    ir: BlueprintIR
    targets: list[KernelTarget] = Field(min_length=1, max_length=16)


class KernelRef(Contract):
    """A kernel of a blueprint, as listed in the blueprint's status.

    Attributes:
        name: The ``KernelArtifact`` resource's name.
        kernel_id: The kernel's id in Urza.
        target: The short form of its target.
        phase: Its phase.
    """

    name: ResourceName
    kernel_id: KernelId
    target: ShortText
    phase: KernelPhase


class BlueprintResourceStatus(Contract):
    """``status`` of a ``Blueprint``.

    Attributes:
        phase: Summary phase.
        blueprint_hash: Canonical hash, once validated.
        kernel_count: Kernels created so far (printer column KERNELS).
        kernels: Those kernels.
        conditions: Conditions (``Valid``, ``Registered``, ``Ready``).
        observed_generation: The generation last reconciled.
    """

    phase: BlueprintPhase = BlueprintPhase.PENDING
    blueprint_hash: Sha256Hex | None = None
    kernel_count: int = Field(default=0, ge=0, le=1024)
    kernels: list[KernelRef] = Field(default_factory=list, max_length=64)
    conditions: Conditions
    observed_generation: int = Field(default=0, ge=0)


class KernelArtifactResourceSpec(Contract):
    """``spec`` of a ``KernelArtifact``: which blueprint, for which target.

    Attributes:
        blueprint_name: The owning ``Blueprint`` resource.
        blueprint_hash: The blueprint's canonical hash.
        target: The compile target.
    """

    blueprint_name: ResourceName
    blueprint_hash: Sha256Hex
    target: KernelTarget


class KernelArtifactResourceStatus(Contract):
    """``status`` of a ``KernelArtifact``, mirroring Urza's record for kubectl.

    Attributes:
        phase: The kernel's phase.
        kernel_id: Its id in Urza.
        target: The short form of the target (printer column TARGET).
        sha256: SHA-256 of the bundle.
        artifact_uri: Where the bundle is stored.
        latency_p50_ms: Median latency at the largest benchmarked batch (printer column
            LATENCY).
        verdict: Urabrask's verdict.
        reasons: Why it was rejected or failed.
        job_name: The Job currently working on it.
        conditions: Conditions (``Compiled``, ``Validated``).
        observed_generation: The generation last reconciled.
    """

    phase: KernelPhase = KernelPhase.PENDING
    kernel_id: KernelId | None = None
    target: ShortText | None = None
    sha256: Sha256Hex | None = None
    artifact_uri: ShortText | None = None
    latency_p50_ms: NonNegativeFloat | None = None
    verdict: Verdict | None = None
    reasons: list[LongText] = Field(default_factory=list, max_length=32)
    job_name: ResourceName | None = None
    conditions: Conditions
    observed_generation: int = Field(default=0, ge=0)


class RunPhase(StrEnum):
    """Phase of a ``MorphogeneticRun``."""

    PENDING = "Pending"
    RUNNING = "Running"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"


class AdaptationRecord(Contract):
    """One adaptation of a run, as listed in its status.

    Attributes:
        step: Training step.
        action: What was done.
        slot_id: Where.
        kernel_id: Which kernel (germinate only).
        reason: Why.
    """

    step: Step
    action: DecisionAction
    slot_id: Identifier
    kernel_id: KernelId | None = None
    reason: ShortText


class SlotState(Contract):
    """Where one seed slot of a run is, as its lifecycle events last reported.

    Attributes:
        slot_id: The slot.
        stage: Its stage.
        step: The training step of its last change (later events win, replays are ignored).
        kernel_id: The seed's kernel, if any.
    """

    slot_id: Identifier
    stage: SeedStage
    step: Step
    kernel_id: KernelId | None = None


class MorphogeneticRunResourceStatus(Contract):
    """``status`` of a ``MorphogeneticRun``.

    Attributes:
        phase: The run's phase.
        epoch: Last finished epoch (printer column EPOCH).
        accuracy: Latest validation accuracy (printer column ACCURACY).
        seeds: Seeds alive or fossilized (printer column SEEDS).
        seeds_by_stage: How many slots are in each stage other than DORMANT.
        slots: Each slot that has left DORMANT at least once, with its stage.
        test_accuracy: Test accuracy of the final model, once the run finished.
        params: Parameters of the model now.
        adaptations: The most recent adaptations.
        job_name: The training Job.
        conditions: Conditions.
        observed_generation: The generation last reconciled.
    """

    phase: RunPhase = RunPhase.PENDING
    epoch: Step = 0
    accuracy: Fraction | None = None
    seeds: int = Field(default=0, ge=0, le=512)
    seeds_by_stage: dict[SeedStage, int] = Field(default_factory=dict, max_length=16)
    slots: list[SlotState] = Field(default_factory=list, max_length=512)
    test_accuracy: Fraction | None = None
    params: Count | None = None
    adaptations: list[AdaptationRecord] = Field(default_factory=list, max_length=50)
    job_name: ResourceName | None = None
    conditions: Conditions
    observed_generation: int = Field(default=0, ge=0)


class PrinterColumn(Contract):
    """An ``additionalPrinterColumns`` entry of a CRD.

    Attributes:
        name: Column header.
        type: OpenAPI type of the column.
        json_path: JSONPath into the object.
        description: What the column shows.
    """

    name: ShortText
    type: Literal["string", "integer", "number", "boolean", "date"]
    json_path: ShortText
    description: ShortText = ""


@dataclass(frozen=True)
class CustomResource:
    """Names, schema models and printer columns of one custom resource.

    Attributes:
        kind: The kind (``Blueprint``).
        plural: The plural resource name (``blueprints``).
        singular: The singular name.
        short_names: kubectl short names.
        spec_model: The model of ``spec``.
        status_model: The model of ``status``.
        printer_columns: Columns of ``kubectl get``.
    """

    kind: str
    plural: str
    singular: str
    short_names: tuple[str, ...]
    spec_model: type[Contract]
    status_model: type[Contract]
    printer_columns: tuple[PrinterColumn, ...]


_AGE = PrinterColumn(name="AGE", type="date", json_path=".metadata.creationTimestamp")

CUSTOM_RESOURCES: tuple[CustomResource, ...] = (
    CustomResource(
        kind="Blueprint",
        plural="blueprints",
        singular="blueprint",
        short_names=("bp",),
        spec_model=BlueprintResourceSpec,
        status_model=BlueprintResourceStatus,
        printer_columns=(
            PrinterColumn(name="PHASE", type="string", json_path=".status.phase"),
            PrinterColumn(name="KERNELS", type="integer", json_path=".status.kernelCount"),
            _AGE,
        ),
    ),
    CustomResource(
        kind="KernelArtifact",
        plural="kernelartifacts",
        singular="kernelartifact",
        short_names=("ka", "kernel"),
        spec_model=KernelArtifactResourceSpec,
        status_model=KernelArtifactResourceStatus,
        printer_columns=(
            PrinterColumn(name="BLUEPRINT", type="string", json_path=".spec.blueprintName"),
            PrinterColumn(name="TARGET", type="string", json_path=".status.target"),
            PrinterColumn(name="PHASE", type="string", json_path=".status.phase"),
            PrinterColumn(
                name="LATENCY",
                type="number",
                json_path=".status.latencyP50Ms",
                description="Median latency (ms) at the largest benchmarked batch",
            ),
            _AGE,
        ),
    ),
    CustomResource(
        kind="MorphogeneticRun",
        plural="morphogeneticruns",
        singular="morphogeneticrun",
        short_names=("mrun",),
        spec_model=MorphogeneticRunSpec,
        status_model=MorphogeneticRunResourceStatus,
        printer_columns=(
            PrinterColumn(name="PHASE", type="string", json_path=".status.phase"),
            PrinterColumn(name="EPOCH", type="integer", json_path=".status.epoch"),
            PrinterColumn(name="ACCURACY", type="number", json_path=".status.accuracy"),
            PrinterColumn(name="SEEDS", type="integer", json_path=".status.seeds"),
            _AGE,
        ),
    ),
)
"""Esper's custom resources."""
