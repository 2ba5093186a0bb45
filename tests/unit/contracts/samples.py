"""Valid sample values of every contract, shared by the contract tests.

Each factory returns a fresh, fully valid value. ``SAMPLES`` maps every contract class to a
factory, and ``test_every_contract_has_a_sample`` fails when a new contract lands without one,
so the generic round-trip and extra-field tests cover it automatically.
"""

import hashlib
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from hypothesis import HealthCheck, settings

from esper.contracts import (
    AdaptationDecision,
    AdaptationRecord,
    ArtifactSignature,
    BenchmarkReport,
    BlueprintIR,
    BlueprintResourceSpec,
    BlueprintResourceStatus,
    Condition,
    Contract,
    CurvePoint,
    Event,
    GraphEdge,
    GraphNode,
    KasminaCommand,
    KernelArtifact,
    KernelArtifactResourceSpec,
    KernelArtifactResourceStatus,
    KernelPhase,
    KernelRef,
    KernelTarget,
    LatencyMeasurement,
    LifecycleMark,
    ModelGraph,
    ModelResult,
    MorphogeneticRunResourceStatus,
    MorphogeneticRunSpec,
    Node,
    Rollback,
    RunReport,
    SeedState,
    SeedSummary,
    SlotDescriptor,
    SlotTelemetry,
    TelemetrySnapshot,
    TensorSpec,
    Topic,
    kernel_id,
)
from esper.contracts.blueprint import (
    AttentionParams,
    Conv2dParams,
    DepthwiseConv2dParams,
    DropoutParams,
    GroupNormParams,
    LinearParams,
    LowRankParams,
    NoParams,
    NormParams,
    ScaleParams,
    SqueezeExciteParams,
)
from esper.contracts.bundle import BundleMember, KernelBundleManifest
from esper.contracts.crd import PrinterColumn, SlotState
from esper.contracts.events import (
    BlueprintSubmitted,
    KernelPhaseChanged,
    RunFinished,
    RunProgress,
    SeedLifecycleEvent,
)
from esper.contracts.run import (
    BudgetSpec,
    DatasetSpec,
    HostSpec,
    InjectionSpec,
    PolicySpec,
    ScheduleSpec,
)
from esper.contracts.urza_api import (
    ArtifactLink,
    BlueprintPage,
    BlueprintRecord,
    CompileRecord,
    ErrorBody,
    KernelCreate,
    KernelPage,
    PhaseChange,
)

FAST = settings(
    max_examples=40,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
"""Hypothesis settings for the unit suite: deterministic and modest."""

BLUEPRINT_HASH = hashlib.sha256(b"esper sample blueprint").hexdigest()
OTHER_HASH = hashlib.sha256(b"another blueprint").hexdigest()
BUNDLE_SHA = hashlib.sha256(b"bundle").hexdigest()
MEASURED_AT = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)


def blueprint_document() -> dict[str, Any]:
    """A residual MLP block as a user writes it (camelCase, defaults omitted)."""
    return {
        "name": "residual-mlp",
        "description": "A residual MLP block.",
        "tags": ["mlp", "residual"],
        "input": {"layout": "features", "shape": ["C"]},
        "nodes": [
            {"id": "up", "op": "linear", "inputs": ["input"], "params": {"outFeatures": 128}},
            {"id": "act", "op": "gelu", "inputs": ["up"]},
            {"id": "drop", "op": "dropout", "inputs": ["act"], "params": {"p": 0.1}},
            {
                "id": "down",
                "op": "linear",
                "inputs": ["drop"],
                "params": {"outFeatures": "C", "init": "zeros"},
            },
            {"id": "sum", "op": "add", "inputs": ["input", "down"]},
        ],
        "output": "sum",
    }


def blueprint() -> BlueprintIR:
    return BlueprintIR.model_validate(blueprint_document())


def cpu_target() -> KernelTarget:
    return KernelTarget(device="cpu", bindings={"C": 64})


def cuda_target() -> KernelTarget:
    return KernelTarget(
        device="cuda",
        compute_capability="9.0",
        dtype="bf16",
        bindings={"C": 64, "H": 8},
        batch_sizes=[1, 32],
    )


def latency(batch_size: int = 32, p50: float = 0.5, p95: float = 0.7) -> LatencyMeasurement:
    return LatencyMeasurement(batch_size=batch_size, p50_ms=p50, p95_ms=p95)


def benchmark_report(
    target: KernelTarget | None = None, verdict: str = "Validated", **changes: Any
) -> BenchmarkReport:
    target = target or cpu_target()
    data: dict[str, Any] = {
        "kernel_id": kernel_id(BLUEPRINT_HASH, target),
        "device_name": "cpu",
        "torch_version": "2.11.0",
        "max_abs_error": 1e-6,
        "tolerance": 1e-4,
        "gradients_finite": True,
        "gradient_max_abs_error": 2e-6,
        "function_preserving": True,
        "latency": [latency(1, 0.1, 0.2), latency(32, 0.5, 0.7), latency(256, 2.0, 2.5)],
        "peak_memory_bytes": 1 << 20,
        "params": 16_512,
        "flops_per_sample": 33_000,
        "verdict": verdict,
        "reasons": [] if verdict == "Validated" else ["slower than eager"],
        "tags": ["fast-on-cpu"] if verdict == "Validated" else [],
        "measured_at": MEASURED_AT,
    }
    data.update(changes)
    return BenchmarkReport.model_validate(data)


ARTIFACT_FIELDS: dict[str, Any] = {
    "artifact_uri": "file:///var/lib/esper/kernels/k.tar",
    "sha256": BUNDLE_SHA,
    "size_bytes": 4096,
    "compile_seconds": 12.5,
    "torch_version": "2.11.0",
}


def kernel_artifact(phase: KernelPhase = KernelPhase.VALIDATED, **changes: Any) -> KernelArtifact:
    """A consistent kernel record in ``phase``."""
    target = changes.pop("target", None) or cpu_target()
    data: dict[str, Any] = {
        "id": kernel_id(BLUEPRINT_HASH, target),
        "blueprint_hash": BLUEPRINT_HASH,
        "target": target,
        "phase": phase,
    }
    if phase in (
        KernelPhase.COMPILED,
        KernelPhase.VALIDATING,
        KernelPhase.VALIDATED,
        KernelPhase.REJECTED,
        KernelPhase.SUPERSEDED,
    ):
        data.update(ARTIFACT_FIELDS)
    if phase in (KernelPhase.VALIDATED, KernelPhase.SUPERSEDED):
        data["benchmark"] = benchmark_report(target)
    if phase is KernelPhase.REJECTED:
        data["benchmark"] = benchmark_report(target, verdict="Rejected")
    if phase is KernelPhase.FAILED:
        data["error"] = "worker died"
    data.update(changes)
    return KernelArtifact.model_validate(data)


SAMPLE_KERNEL_ID = kernel_id(BLUEPRINT_HASH, KernelTarget(device="cpu", bindings={"C": 64}))


def seed_state() -> SeedState:
    return SeedState(
        slot_id="layer1.0",
        stage="BLENDING",
        kernel_id=SAMPLE_KERNEL_ID,
        blueprint_hash=BLUEPRINT_HASH,
        alpha=0.25,
        stage_entered_step=1200,
        germinated_step=800,
        contribution=0.012,
    )


def slot_telemetry(slot_id: str = "layer1.0") -> SlotTelemetry:
    return SlotTelemetry(
        slot_id=slot_id,
        activation_mean=0.1,
        activation_std=0.9,
        gradient_norm=0.03,
        dead_fraction=0.2,
        param_count=4096,
        seed_param_count=512,
        stage="TRAINING",
        alpha=0.0,
        contribution=None,
        steps_since_change=40,
    )


def telemetry_snapshot() -> TelemetrySnapshot:
    return TelemetrySnapshot(
        run_id="run-1",
        step=1000,
        epoch=2,
        train_loss=0.42,
        val_loss=0.5,
        val_accuracy=0.88,
        loss_trend=-0.01,
        training_progress=0.2,
        budget_left_params=100_000,
        slots=[slot_telemetry("layer1.0"), slot_telemetry("layer2.0")],
    )


def adaptation_decision() -> AdaptationDecision:
    return AdaptationDecision(
        decision_id="d-1",
        run_id="run-1",
        step=1000,
        action="germinate",
        slot_id="layer1.0",
        kernel_id=SAMPLE_KERNEL_ID,
        blueprint_hash=BLUEPRINT_HASH,
        reason="gradient norm plateaued",
        confidence=0.8,
    )


def kasmina_command() -> KasminaCommand:
    return KasminaCommand(
        command_id="c-1",
        decision_id="d-1",
        slot_id="layer1.0",
        kind="germinate",
        kernel_id=SAMPLE_KERNEL_ID,
        apply_at_step=1001,
    )


def run_spec_document() -> dict[str, Any]:
    """A run configuration as a user writes it (camelCase)."""
    return {
        "host": {"zoo": "resnet-small", "kwargs": {"num_classes": 10, "width": 1.5}},
        "dataset": {"name": "fashion-mnist", "batchSize": 256, "trainSubset": 5000},
        "budget": {"maxAddedParams": 200000, "maxSeeds": 2},
        "policy": {
            "kind": "gnn",
            "checkpoint": "policies/tamiyo.pt",
            "decisionIntervalSteps": 50,
            "plateauPatience": 3,
            "plateauThreshold": 0.02,
            "minContribution": 0.001,
        },
        "schedule": {
            "epochs": 3,
            "learningRate": 0.001,
            "alphaSchedule": "cosine",
            "lossSpikeFactor": 3.0,
        },
        "injection": {"moduleGlobs": ["layer*.0"], "moduleTypes": ["Conv2d"]},
        "blueprints": ["residual-mlp", "blueprints/bottleneck.yaml"],
        "waitForKernels": True,
        "baseline": True,
        "device": "cpu",
        "seed": 7,
    }


def run_spec() -> MorphogeneticRunSpec:
    return MorphogeneticRunSpec.model_validate(run_spec_document())


def image_slot(slot_id: str = "layer1.0") -> SlotDescriptor:
    return SlotDescriptor(
        slot_id=slot_id,
        module_path=f"{slot_id}.conv1",
        module_type="Conv2d",
        channels=64,
        layout="image",
        shape=[64, 8, 8],
    )


def graph_node(path: str = "layer1.0.conv1", slot_id: str | None = "layer1.0") -> GraphNode:
    return GraphNode(module_path=path, module_type="Conv2d", param_count=36_864, slot_id=slot_id)


def model_graph() -> ModelGraph:
    """Three leaf modules in a chain; the first two are followed by a seed slot each."""
    return ModelGraph(
        nodes=[
            graph_node("layer1.0.conv1", "layer1.0"),
            graph_node("layer2.0.conv1", "layer2.0"),
            GraphNode(module_path="fc", module_type="Linear", param_count=650),
        ],
        edges=[GraphEdge(source=0, target=1), GraphEdge(source=1, target=2)],
        slots=[image_slot("layer1.0"), image_slot("layer2.0")],
        host_param_count=74_378,
    )


def curve_point(step: int = 100, accuracy: float = 0.8) -> CurvePoint:
    return CurvePoint(
        step=step,
        epoch=step // 100,
        train_loss=0.6,
        val_loss=0.55,
        val_accuracy=accuracy,
        params=74_378,
        train_flops=step * 2_000_000,
    )


def model_result(accuracy: float = 0.86) -> ModelResult:
    return ModelResult(
        test_accuracy=accuracy,
        test_loss=0.41,
        params=78_000,
        train_seconds=12.5,
        steps=300,
        train_flops=600_000_000,
        inference_flops=150_000,
        curve=[curve_point(100, 0.7), curve_point(200, 0.8), curve_point(300, accuracy)],
    )


def lifecycle_mark() -> LifecycleMark:
    return LifecycleMark(
        step=1000,
        slot_id="layer1.0",
        source="DORMANT",
        target="GERMINATED",
        kernel_id=SAMPLE_KERNEL_ID,
        blueprint_name="residual-mlp",
        reason="gradient norm plateaued",
    )


def rollback() -> Rollback:
    return Rollback(step=1500, restored_step=1400, reason="loss spike", culled_slot="layer1.0")


def seed_summary() -> SeedSummary:
    return SeedSummary(
        slot_id="layer1.0",
        kernel_id=SAMPLE_KERNEL_ID,
        blueprint_hash=BLUEPRINT_HASH,
        blueprint_name="residual-mlp",
        final_stage="FOSSILIZED",
        germinated_step=1000,
        ended_step=1600,
        params=3_622,
        contribution=0.015,
    )


def run_report() -> RunReport:
    """A finished run with a baseline, one fossilized seed and one rollback."""
    return RunReport(
        run_id="run-1",
        spec=run_spec(),
        started_at=MEASURED_AT,
        finished_at=datetime(2025, 1, 2, 3, 9, 5, tzinfo=UTC),
        device="cpu",
        torch_version="2.11.0",
        grown=model_result(0.88),
        baseline=model_result(0.86),
        lifecycle=[lifecycle_mark()],
        decisions=[adaptation_decision()],
        seeds=[seed_summary()],
        rollbacks=[rollback()],
    )


def condition() -> Condition:
    return Condition(
        type="Ready",
        status="True",
        reason="KernelsValidated",
        message="all kernels validated",
        last_transition_time=MEASURED_AT,
        observed_generation=3,
    )


def blueprint_resource_spec() -> BlueprintResourceSpec:
    return BlueprintResourceSpec(ir=blueprint(), targets=[cpu_target(), cuda_target()])


def kernel_ref() -> KernelRef:
    return KernelRef(
        name="residual-mlp-cpu",
        kernel_id=SAMPLE_KERNEL_ID,
        target=cpu_target().short(),
        phase="Validated",
    )


def blueprint_resource_status() -> BlueprintResourceStatus:
    return BlueprintResourceStatus(
        phase="Ready",
        blueprint_hash=BLUEPRINT_HASH,
        kernel_count=1,
        kernels=[kernel_ref()],
        conditions=[condition()],
        observed_generation=3,
    )


def kernel_artifact_resource_spec() -> KernelArtifactResourceSpec:
    return KernelArtifactResourceSpec(
        blueprint_name="residual-mlp", blueprint_hash=BLUEPRINT_HASH, target=cpu_target()
    )


def kernel_artifact_resource_status() -> KernelArtifactResourceStatus:
    return KernelArtifactResourceStatus(
        phase="Validated",
        kernel_id=SAMPLE_KERNEL_ID,
        target=cpu_target().short(),
        sha256=BUNDLE_SHA,
        artifact_uri="s3://esper/kernels/k.tar",
        latency_p50_ms=2.0,
        verdict="Validated",
        reasons=[],
        job_name="urabrask-k-123",
        conditions=[condition()],
        observed_generation=1,
    )


def adaptation_record() -> AdaptationRecord:
    return AdaptationRecord(
        step=1000,
        action="germinate",
        slot_id="layer1.0",
        kernel_id=SAMPLE_KERNEL_ID,
        reason="gradient norm plateaued",
    )


def run_resource_status() -> MorphogeneticRunResourceStatus:
    return MorphogeneticRunResourceStatus(
        phase="Running",
        epoch=2,
        accuracy=0.87,
        seeds=1,
        params=123_456,
        adaptations=[adaptation_record()],
        job_name="tolaria-run-1",
        conditions=[condition()],
        observed_generation=2,
    )


def payload_for(topic: Topic) -> Contract:
    """A valid payload of each topic."""
    payloads: dict[Topic, Callable[[], Contract]] = {
        Topic.BLUEPRINT_SUBMITTED: lambda: BlueprintSubmitted(
            blueprint_hash=BLUEPRINT_HASH, name="residual-mlp", targets=[cpu_target()]
        ),
        Topic.KERNEL_PHASE_CHANGED: lambda: KernelPhaseChanged(
            kernel_id=SAMPLE_KERNEL_ID,
            blueprint_hash=BLUEPRINT_HASH,
            target=cpu_target(),
            phase="Compiled",
        ),
        Topic.SEED_LIFECYCLE: lambda: SeedLifecycleEvent(
            run_id="run-1",
            slot_id="layer1.0",
            source="TRAINING",
            target="BLENDING",
            step=1200,
            kernel_id=SAMPLE_KERNEL_ID,
        ),
        Topic.ADAPTATION_DECIDED: adaptation_decision,
        Topic.TELEMETRY: telemetry_snapshot,
        Topic.RUN_PROGRESS: lambda: RunProgress(
            run_id="run-1", epoch=2, train_loss=0.4, val_accuracy=0.9, params=123_456
        ),
        Topic.RUN_FINISHED: lambda: RunFinished(
            run_id="run-1",
            succeeded=True,
            test_accuracy=0.88,
            params=123_456,
            seeds_fossilized=1,
            seeds_culled=2,
        ),
    }
    return payloads[topic]()


def event(topic: Topic = Topic.RUN_PROGRESS) -> Event:
    return Event(
        id="evt-1",
        topic=topic,
        trace_id="trace-1",
        source="tolaria",
        created_at=MEASURED_AT,
        payload=payload_for(topic),
    )


def bundle_member(name: str = "ir.json") -> BundleMember:
    return BundleMember(
        name=name, sha256=hashlib.sha256(name.encode()).hexdigest(), size_bytes=1024
    )


def bundle_manifest(*extra: str) -> KernelBundleManifest:
    names = ["ir.json", "weights.safetensors", "module.pt2", *extra]
    return KernelBundleManifest(
        kernel_id=SAMPLE_KERNEL_ID,
        blueprint_hash=BLUEPRINT_HASH,
        target=cpu_target(),
        torch_version="2.11.0",
        device_name="cpu",
        compile_seconds=11.0,
        compile_cache_seconds=8.5,
        members=[bundle_member(name) for name in names],
    )


def blueprint_record() -> BlueprintRecord:
    bp = blueprint()
    return BlueprintRecord(hash=bp.canonical_hash(), ir=bp, created_at=MEASURED_AT)


def compile_record() -> CompileRecord:
    return CompileRecord(
        kernel_id=SAMPLE_KERNEL_ID,
        worker="worker-0",
        started_at=MEASURED_AT,
        finished_at=MEASURED_AT,
        succeeded=False,
        error="OOM",
        torch_version="2.11.0",
    )


SAMPLES: dict[type[Contract], Callable[[], Contract]] = {
    TensorSpec: lambda: TensorSpec(layout="image", shape=["C", 32, 32]),
    NoParams: NoParams,
    LinearParams: lambda: LinearParams(out_features="C", bias=False, init="zeros"),
    LowRankParams: lambda: LowRankParams(rank=4, out_features=64),
    Conv2dParams: lambda: Conv2dParams(
        out_channels=32, kernel_size=3, stride=2, padding=1, groups=2, bias=False
    ),
    DepthwiseConv2dParams: lambda: DepthwiseConv2dParams(kernel_size=5, padding=2),
    NormParams: lambda: NormParams(eps=1e-3),
    GroupNormParams: lambda: GroupNormParams(num_groups=8),
    DropoutParams: lambda: DropoutParams(p=0.2),
    SqueezeExciteParams: lambda: SqueezeExciteParams(reduction=8),
    AttentionParams: lambda: AttentionParams(num_heads=4, dropout=0.1, init="zeros"),
    ScaleParams: lambda: ScaleParams(init_value=0.5),
    Node: lambda: Node(id="proj", op="linear", inputs=["input"], params={"outFeatures": 8}),
    BlueprintIR: blueprint,
    KernelTarget: cuda_target,
    LatencyMeasurement: latency,
    BenchmarkReport: benchmark_report,
    KernelArtifact: kernel_artifact,
    ArtifactSignature: lambda: ArtifactSignature(key_id="k1", hmac_sha256="0f" * 32),
    SeedState: seed_state,
    SlotDescriptor: image_slot,
    GraphNode: graph_node,
    GraphEdge: lambda: GraphEdge(source=0, target=1),
    ModelGraph: model_graph,
    CurvePoint: curve_point,
    ModelResult: model_result,
    LifecycleMark: lifecycle_mark,
    Rollback: rollback,
    SeedSummary: seed_summary,
    RunReport: run_report,
    BlueprintSubmitted: lambda: payload_for(Topic.BLUEPRINT_SUBMITTED),
    KernelPhaseChanged: lambda: payload_for(Topic.KERNEL_PHASE_CHANGED),
    SeedLifecycleEvent: lambda: payload_for(Topic.SEED_LIFECYCLE),
    RunProgress: lambda: payload_for(Topic.RUN_PROGRESS),
    RunFinished: lambda: payload_for(Topic.RUN_FINISHED),
    Event: event,
    AdaptationDecision: adaptation_decision,
    KasminaCommand: kasmina_command,
    SlotTelemetry: slot_telemetry,
    TelemetrySnapshot: telemetry_snapshot,
    HostSpec: lambda: HostSpec(factory="my_models.nets:build", kwargs={"depth": 3, "wide": True}),
    DatasetSpec: lambda: DatasetSpec(name="digits", validation_fraction=0.2),
    BudgetSpec: lambda: BudgetSpec(max_added_params=50_000),
    PolicySpec: lambda: PolicySpec(kind="random", decision_interval_steps=10),
    ScheduleSpec: lambda: ScheduleSpec(epochs=2, learning_rate=0.1, optimizer="sgd"),
    InjectionSpec: lambda: InjectionSpec(module_types=["Linear"]),
    MorphogeneticRunSpec: run_spec,
    Condition: condition,
    BlueprintResourceSpec: blueprint_resource_spec,
    KernelRef: kernel_ref,
    BlueprintResourceStatus: blueprint_resource_status,
    KernelArtifactResourceSpec: kernel_artifact_resource_spec,
    KernelArtifactResourceStatus: kernel_artifact_resource_status,
    AdaptationRecord: adaptation_record,
    SlotState: lambda: SlotState(
        slot_id="layer1.0", stage="BLENDING", step=1200, kernel_id=SAMPLE_KERNEL_ID
    ),
    MorphogeneticRunResourceStatus: run_resource_status,
    PrinterColumn: lambda: PrinterColumn(
        name="LATENCY", type="number", json_path=".status.latencyP50Ms", description="ms"
    ),
    BundleMember: bundle_member,
    KernelBundleManifest: lambda: bundle_manifest("compile_cache.bin"),
    BlueprintRecord: blueprint_record,
    BlueprintPage: lambda: BlueprintPage(items=[blueprint_record()], next_cursor="abc"),
    KernelCreate: lambda: KernelCreate(
        blueprint_hash=BLUEPRINT_HASH, target=cuda_target(), tags=["conv"]
    ),
    PhaseChange: lambda: PhaseChange(phase="Compiled", compile_seconds=3.0, torch_version="2.11"),
    KernelPage: lambda: KernelPage(items=[kernel_artifact()], next_cursor=None),
    CompileRecord: compile_record,
    ArtifactLink: lambda: ArtifactLink(
        url="https://s3.local/esper/k?sig=1",
        sha256=BUNDLE_SHA,
        size_bytes=10,
        expires_in_seconds=60,
    ),
    ErrorBody: lambda: ErrorBody(detail="blueprint not found", errors=["hash: not found"]),
}
"""A factory of a valid value for every contract class."""
