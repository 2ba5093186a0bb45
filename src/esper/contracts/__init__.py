"""The contracts: Pydantic models that are the single source of truth between components.

Every component exchanges these values and nothing else; the CRD schemas are generated from
them. This package imports only pydantic and the standard library.
"""

from esper.contracts._base import Contract, describe_validation_error
from esper.contracts.blueprint import (
    INPUT_REF,
    BlueprintIR,
    Init,
    Layout,
    Node,
    Op,
    TensorSpec,
)
from esper.contracts.crd import (
    CUSTOM_RESOURCES,
    AdaptationRecord,
    BlueprintPhase,
    BlueprintResourceSpec,
    BlueprintResourceStatus,
    Condition,
    ConditionStatus,
    CustomResource,
    KernelArtifactResourceSpec,
    KernelArtifactResourceStatus,
    KernelRef,
    MorphogeneticRunResourceStatus,
    RunPhase,
)
from esper.contracts.decisions import (
    AdaptationDecision,
    CommandKind,
    DecisionAction,
    KasminaCommand,
)
from esper.contracts.events import PAYLOAD_BY_TOPIC, Event, Topic
from esper.contracts.graph import GraphEdge, GraphNode, ModelGraph
from esper.contracts.kernel import (
    KERNEL_PHASES,
    ArtifactSignature,
    BenchmarkReport,
    DeviceKind,
    DType,
    KernelArtifact,
    KernelPhase,
    KernelTarget,
    LatencyMeasurement,
    Verdict,
    kernel_id,
)
from esper.contracts.lifecycle import IllegalTransitionError, TransitionTable
from esper.contracts.report import (
    CurvePoint,
    LifecycleMark,
    ModelResult,
    Rollback,
    RunReport,
    SeedSummary,
)
from esper.contracts.run import MorphogeneticRunSpec
from esper.contracts.seed import SEED_STAGES, SeedStage, SeedState, SlotDescriptor
from esper.contracts.telemetry import SlotTelemetry, TelemetrySnapshot

__all__ = [
    "CUSTOM_RESOURCES",
    "INPUT_REF",
    "KERNEL_PHASES",
    "PAYLOAD_BY_TOPIC",
    "SEED_STAGES",
    "AdaptationDecision",
    "AdaptationRecord",
    "ArtifactSignature",
    "BenchmarkReport",
    "BlueprintIR",
    "BlueprintPhase",
    "BlueprintResourceSpec",
    "BlueprintResourceStatus",
    "CommandKind",
    "Condition",
    "ConditionStatus",
    "Contract",
    "CurvePoint",
    "CustomResource",
    "DType",
    "DecisionAction",
    "DeviceKind",
    "Event",
    "GraphEdge",
    "GraphNode",
    "IllegalTransitionError",
    "Init",
    "KasminaCommand",
    "KernelArtifact",
    "KernelArtifactResourceSpec",
    "KernelArtifactResourceStatus",
    "KernelPhase",
    "KernelRef",
    "KernelTarget",
    "LatencyMeasurement",
    "Layout",
    "LifecycleMark",
    "ModelGraph",
    "ModelResult",
    "MorphogeneticRunResourceStatus",
    "MorphogeneticRunSpec",
    "Node",
    "Op",
    "Rollback",
    "RunPhase",
    "RunReport",
    "SeedStage",
    "SeedState",
    "SeedSummary",
    "SlotDescriptor",
    "SlotTelemetry",
    "TelemetrySnapshot",
    "TensorSpec",
    "Topic",
    "TransitionTable",
    "Verdict",
    "describe_validation_error",
    "kernel_id",
]
