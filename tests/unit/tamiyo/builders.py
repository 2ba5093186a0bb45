"""Observations for the policy tests: slots, snapshots, graphs, candidates."""

from collections.abc import Mapping, Sequence

from esper.contracts.graph import GraphEdge, GraphNode, ModelGraph
from esper.contracts.kernel import KernelPhase, KernelTarget
from esper.contracts.seed import SeedStage, SlotDescriptor
from esper.contracts.telemetry import SlotTelemetry, TelemetrySnapshot
from esper.tamiyo.policy import KernelCandidate, Observation
from tests.unit.contracts import samples

SLOT_IDS = ("layer1", "layer2", "layer3")
MID_LIFECYCLE = [SeedStage.GERMINATED, SeedStage.TRAINING, SeedStage.BLENDING, SeedStage.PROBATION]


def slot(
    slot_id: str, gradient: float = 1.0, dead: float = 0.0, stage: SeedStage = SeedStage.DORMANT
) -> SlotTelemetry:
    return SlotTelemetry(
        slot_id=slot_id,
        activation_mean=0.0,
        activation_std=1.0,
        gradient_norm=gradient,
        dead_fraction=dead,
        param_count=272,
        stage=stage,
        alpha=1.0 if stage in (SeedStage.PROBATION, SeedStage.FOSSILIZED) else 0.0,
        steps_since_change=10,
    )


def default_slots() -> list[SlotTelemetry]:
    return [slot(slot_id) for slot_id in SLOT_IDS]


def snapshot(
    val_loss: float | None,
    slots: Sequence[SlotTelemetry] | None = None,
    *,
    step: int = 100,
    budget: int = 100_000,
) -> TelemetrySnapshot:
    return TelemetrySnapshot(
        run_id="run-1",
        step=step,
        epoch=1,
        train_loss=0.5,
        val_loss=val_loss,
        val_accuracy=None if val_loss is None else 0.5,
        loss_trend=0.0,
        training_progress=0.5,
        budget_left_params=budget,
        slots=list(default_slots() if slots is None else slots),
    )


def graph(slot_ids: Sequence[str] = SLOT_IDS) -> ModelGraph:
    descriptors = [
        SlotDescriptor(
            slot_id=slot_id,
            module_path=slot_id,
            module_type="Linear",
            channels=16,
            layout="features",
            shape=[16],
        )
        for slot_id in slot_ids
    ]
    nodes = [
        GraphNode(module_path=s, module_type="Linear", param_count=272, slot_id=s) for s in slot_ids
    ]
    edges = [GraphEdge(source=i, target=i + 1) for i in range(len(nodes) - 1)]
    return ModelGraph(nodes=nodes, edges=edges, slots=descriptors, host_param_count=816)


def candidate(
    number: int, params: int = 500, p50_ms: float | None = 0.5, name: str = "residual-mlp"
) -> KernelCandidate:
    """A Validated candidate (a distinct kernel per ``number``), or a benchmark-less one."""
    target = KernelTarget(device="cpu", bindings={"C": number})
    if p50_ms is None:
        kernel = samples.kernel_artifact(KernelPhase.COMPILED, target=target)
    else:
        report = samples.benchmark_report(target, latency=[samples.latency(32, p50_ms, p50_ms)])
        kernel = samples.kernel_artifact(target=target, benchmark=report)
    return KernelCandidate(kernel=kernel, blueprint_name=name, params=params)


def observe(
    val_loss: float | None,
    *,
    slots: Sequence[SlotTelemetry] | None = None,
    candidates: Mapping[str, Sequence[KernelCandidate]] | None = None,
    max_seeds: int = 4,
    excluded: frozenset[tuple[str, str]] = frozenset(),
    step: int = 100,
    budget: int = 100_000,
) -> Observation:
    if candidates is None:
        candidates = {slot_id: [candidate(1, 500)] for slot_id in SLOT_IDS}
    return Observation(
        snapshot=snapshot(val_loss, slots, step=step, budget=budget),
        graph=graph(),
        candidates=candidates,
        max_seeds=max_seeds,
        excluded=excluded,
    )
