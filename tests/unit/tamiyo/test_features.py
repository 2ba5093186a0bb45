"""Encoding an observation for the GNN policy: shapes, column meanings, masks, determinism."""

import math
from collections.abc import Mapping, Sequence

import pytest
import torch
from torch_geometric.data import Batch

from esper.contracts.graph import GraphEdge, GraphNode, ModelGraph
from esper.contracts.kernel import KernelPhase, KernelTarget
from esper.contracts.seed import SeedStage, SlotDescriptor
from esper.contracts.telemetry import SlotTelemetry, TelemetrySnapshot
from esper.tamiyo.encoding import (
    GRAPH_FEATURES,
    KERNEL_FEATURES,
    NODE_FEATURES,
    ActionKind,
    PolicyInput,
)
from esper.tamiyo.features import (
    BLUEPRINT_BUCKETS,
    GRAPH_COLUMNS,
    KERNEL_COLUMNS,
    MODULE_CATEGORIES,
    NODE_COLUMNS,
    blueprint_bucket,
    encode,
    gradient_ratios,
    module_category,
    to_data,
)
from esper.tamiyo.policy import KernelCandidate, Observation
from tests.unit.contracts import samples
from tests.unit.tamiyo.builders import candidate

SLOT_IDS = ("a", "b", "c")
LIVE = [SeedStage.GERMINATED, SeedStage.TRAINING, SeedStage.BLENDING, SeedStage.PROBATION]
# The default graph: a Linear per slot, with an activation and a dropout between them.
LAYERS = (
    ("fc1", "Linear", 272, "a"),
    ("act1", "ReLU", 0, None),
    ("fc2", "Linear", 272, "b"),
    ("drop", "Dropout", 0, None),
    ("fc3", "Linear", 136, "c"),
)
SLOT_ROWS = (0, 2, 4)
HOST_PARAMS = 680


def node(name: str) -> int:
    return NODE_COLUMNS.index(name)


def graph_col(name: str) -> int:
    return GRAPH_COLUMNS.index(name)


def kernel_col(name: str) -> int:
    return KERNEL_COLUMNS.index(name)


# Builders -------------------------------------------------------------------------------------


def slot(
    slot_id: str,
    stage: SeedStage = SeedStage.DORMANT,
    *,
    gradient: float = 1.0,
    contribution: float | None = None,
    **changes: object,
) -> SlotTelemetry:
    data: dict[str, object] = {
        "slot_id": slot_id,
        "activation_mean": 0.0,
        "activation_std": 1.0,
        "gradient_norm": gradient,
        "dead_fraction": 0.0,
        "param_count": 272,
        "seed_param_count": 0 if stage is SeedStage.DORMANT else 500,
        "stage": stage,
        "alpha": 1.0 if stage in (SeedStage.PROBATION, SeedStage.FOSSILIZED) else 0.0,
        "contribution": contribution,
        "steps_since_change": 10,
    }
    data.update(changes)
    return SlotTelemetry.model_validate(data)


def snapshot(slots: Sequence[SlotTelemetry] | None = None, **changes: object) -> TelemetrySnapshot:
    data: dict[str, object] = {
        "run_id": "run-1",
        "step": 100,
        "epoch": 1,
        "train_loss": 0.5,
        "val_loss": 0.6,
        "val_accuracy": 0.75,
        "loss_trend": -0.1,
        "training_progress": 0.25,
        "budget_left_params": 1000,
        "slots": list(slots) if slots is not None else [slot(s) for s in SLOT_IDS],
    }
    data.update(changes)
    return TelemetrySnapshot.model_validate(data)


def graph(
    layers: Sequence[tuple[str, str, int, str | None]] = LAYERS,
    *,
    slot_ids: Sequence[str] = SLOT_IDS,
    edges: Sequence[tuple[int, int]] | None = None,
    host_params: int = HOST_PARAMS,
) -> ModelGraph:
    pairs = [(i, i + 1) for i in range(len(layers) - 1)] if edges is None else edges
    return ModelGraph(
        nodes=[
            GraphNode(module_path=path, module_type=kind, param_count=params, slot_id=slot_id)
            for path, kind, params, slot_id in layers
        ],
        edges=[GraphEdge(source=source, target=target) for source, target in pairs],
        slots=[
            SlotDescriptor(
                slot_id=slot_id,
                module_path=slot_id,
                module_type="Linear",
                channels=16,
                layout="features",
                shape=[16],
            )
            for slot_id in slot_ids
        ],
        host_param_count=host_params,
    )


def observe(
    *,
    slots: Sequence[SlotTelemetry] | None = None,
    candidates: Mapping[str, Sequence[KernelCandidate]] | None = None,
    model: ModelGraph | None = None,
    max_seeds: int = 4,
    excluded: frozenset[tuple[str, str]] = frozenset(),
    **snapshot_changes: object,
) -> Observation:
    if candidates is None:
        candidates = {slot_id: [candidate(1)] for slot_id in SLOT_IDS}
    return Observation(
        snapshot=snapshot(slots, **snapshot_changes),
        graph=graph() if model is None else model,
        candidates=candidates,
        max_seeds=max_seeds,
        excluded=excluded,
    )


def assert_same(first: PolicyInput, second: PolicyInput) -> None:
    for name in (
        "node_features",
        "edge_index",
        "graph_features",
        "slot_nodes",
        "candidate_features",
        "candidate_slot",
        "germinate_mask",
        "cull_mask",
        "fossilize_mask",
    ):
        assert torch.equal(getattr(first, name), getattr(second, name)), name
    assert first.slot_ids == second.slot_ids
    assert first.candidate_kernel_ids == second.candidate_kernel_ids


# The column tables ----------------------------------------------------------------------------


def test_named_columns_fit_the_feature_sizes_and_are_unique() -> None:
    assert len(NODE_COLUMNS) <= NODE_FEATURES
    assert len(GRAPH_COLUMNS) == GRAPH_FEATURES
    assert len(KERNEL_COLUMNS) <= KERNEL_FEATURES
    for columns in (NODE_COLUMNS, GRAPH_COLUMNS, KERNEL_COLUMNS):
        assert len(set(columns)) == len(columns)


def test_column_layout_matches_the_documented_tables() -> None:
    # Pinned: a trained policy's weights depend on where each column is.
    assert (len(NODE_COLUMNS), len(KERNEL_COLUMNS)) == (28, 18)
    assert [node(name) for name in ("has_slot", "activation_mean", "stage_dormant")] == [9, 10, 16]
    assert [node(name) for name in ("alpha", "steps_since_change", "position")] == [23, 26, 27]
    assert [kernel_col(name) for name in ("has_benchmark", "flops", "blueprint_0")] == [5, 9, 10]
    assert graph_col("seed_in_lifecycle") == 11


def test_one_hot_columns_cover_their_vocabularies_in_order() -> None:
    stages = [name for name in NODE_COLUMNS if name.startswith("stage_")]
    assert stages == [f"stage_{stage.value.lower()}" for stage in SeedStage]
    types = [name for name in NODE_COLUMNS if name.startswith("type_")]
    assert types == [f"type_{category}" for category in MODULE_CATEGORIES]
    buckets = [name for name in KERNEL_COLUMNS if name.startswith("blueprint_")]
    assert buckets == [f"blueprint_{index}" for index in range(BLUEPRINT_BUCKETS)]


# Shapes ---------------------------------------------------------------------------------------


def test_shapes_and_dtypes() -> None:
    candidates = {"a": [candidate(1), candidate(2)], "c": [candidate(3)]}
    inp = encode(observe(candidates=candidates))
    assert inp.node_features.shape == (5, NODE_FEATURES)
    assert inp.edge_index.shape == (2, 4)
    assert inp.graph_features.shape == (GRAPH_FEATURES,)
    assert inp.slot_nodes.shape == (3,)
    assert inp.candidate_features.shape == (3, KERNEL_FEATURES)
    assert inp.candidate_slot.shape == (3,)
    assert inp.germinate_mask.shape == (3,)
    assert inp.cull_mask.shape == inp.fossilize_mask.shape == (3,)
    for tensor in (inp.node_features, inp.graph_features, inp.candidate_features):
        assert tensor.dtype == torch.float32
        assert tensor.device.type == "cpu"
    for tensor in (inp.edge_index, inp.slot_nodes, inp.candidate_slot):
        assert tensor.dtype == torch.int64
    for tensor in (inp.germinate_mask, inp.cull_mask, inp.fossilize_mask):
        assert tensor.dtype == torch.bool
    assert len(inp.candidate_kernel_ids) == 3


def test_padding_columns_are_zero() -> None:
    slots = [slot("a", SeedStage.PROBATION, contribution=0.3), slot("b"), slot("c")]
    inp = encode(observe(slots=slots))
    assert not inp.node_features[:, len(NODE_COLUMNS) :].any()
    assert not inp.candidate_features[:, len(KERNEL_COLUMNS) :].any()


def test_no_slots_no_candidates_and_no_edges() -> None:
    layers = [("fc", "Linear", 10, None)]
    inp = encode(observe(slots=[], candidates={}, model=graph(layers, slot_ids=(), host_params=10)))
    assert inp.node_features.shape == (1, NODE_FEATURES)
    assert inp.edge_index.shape == (2, 0)
    assert inp.edge_index.dtype == torch.int64
    assert inp.slot_ids == ()
    assert inp.slot_nodes.shape == (0,)
    assert inp.candidate_features.shape == (0, KERNEL_FEATURES)
    assert inp.candidate_slot.shape == inp.germinate_mask.shape == (0,)
    assert inp.cull_mask.shape == (0,)
    assert inp.action_mask().tolist() == [True, False, False, False]
    assert inp.node_features[0, node("position")] == 0.0


# Nodes ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("module_type", "category"),
    [
        ("Linear", "linear"),
        ("LazyLinear", "linear"),
        ("Bilinear", "linear"),
        ("Conv1d", "conv"),
        ("Conv2d", "conv"),
        ("Conv3d", "conv"),
        ("ConvTranspose2d", "conv"),
        ("LazyConv2d", "conv"),
        ("BatchNorm1d", "norm"),
        ("BatchNorm2d", "norm"),
        ("LayerNorm", "norm"),
        ("GroupNorm", "norm"),
        ("RMSNorm", "norm"),
        ("ReLU", "activation"),
        ("GELU", "activation"),
        ("SiLU", "activation"),
        ("Tanh", "activation"),
        ("Sigmoid", "activation"),
        ("LeakyReLU", "activation"),
        ("Softmax", "activation"),
        ("Dropout", "dropout"),
        ("Dropout2d", "dropout"),
        ("AlphaDropout", "dropout"),
        ("Embedding", "embedding"),
        ("EmbeddingBag", "embedding"),
        ("MultiheadAttention", "attention"),
        ("SelfAttention", "attention"),
        ("Identity", "other"),
        ("Flatten", "other"),
        ("MaxPool2d", "other"),
        ("Conv2dBlock", "other"),
        ("relu", "other"),
    ],
)
def test_module_category(module_type: str, category: str) -> None:
    assert MODULE_CATEGORIES[module_category(module_type)] == category


def test_node_columns_without_slots() -> None:
    inp = encode(observe())
    features = inp.node_features
    assert features[0, node("param_count")].item() == pytest.approx(
        math.log1p(272) / math.log1p(1e8)
    )
    assert features[1, node("param_count")] == 0.0
    # Exactly one type per node: Linear, ReLU, Linear, Dropout, Linear.
    types = features[:, node("type_linear") : node("type_other") + 1]
    assert types.sum(dim=1).tolist() == [1.0] * 5
    expected = ["linear", "activation", "linear", "dropout", "linear"]
    assert [MODULE_CATEGORIES[int(i)] for i in types.argmax(dim=1)] == expected
    assert features[:, node("position")].tolist() == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert features[:, node("has_slot")].tolist() == [1.0, 0.0, 1.0, 0.0, 1.0]
    # Nodes without a slot carry no telemetry at all.
    slot_block = features[:, node("activation_mean") : node("steps_since_change") + 1]
    assert not slot_block[[1, 3]].any()
    assert slot_block[list(SLOT_ROWS), node("stage_dormant") - node("activation_mean")].all()


def test_slot_telemetry_columns() -> None:
    probing = slot(
        "b",
        SeedStage.PROBATION,
        gradient=3.0,
        contribution=0.5,
        activation_mean=0.2,
        activation_std=2.0,
        dead_fraction=0.25,
        param_count=5000,
        seed_param_count=900,
        steps_since_change=999,
    )
    slots = [slot("a", gradient=1.0), probing, slot("c", gradient=2.0)]
    inp = encode(observe(slots=slots))
    row = inp.node_features[2]
    expected = {
        "has_slot": 1.0,
        "activation_mean": math.tanh(0.2),
        "activation_std": math.log1p(2.0),
        # Mean gradient norm 2: 3 / 2.
        "gradient_ratio": math.log1p(1.5),
        "dead_fraction": 0.25,
        "host_params": math.log1p(5000) / math.log1p(1e8),
        "seed_params": math.log1p(900) / math.log1p(1e8),
        "stage_probation": 1.0,
        "alpha": 1.0,
        "contribution": math.tanh(0.5),
        "has_contribution": 1.0,
        "steps_since_change": math.log1p(999) / math.log1p(1e6),
    }
    for name, value in expected.items():
        assert row[node(name)].item() == pytest.approx(value, rel=1e-6), name
    stages = row[node("stage_dormant") : node("stage_culled") + 1]
    assert stages.sum() == 1.0
    assert inp.node_features[0, node("gradient_ratio")].item() == pytest.approx(math.log1p(0.5))
    assert inp.node_features[0, node("has_contribution")] == 0.0
    assert inp.node_features[0, node("contribution")] == 0.0


@pytest.mark.parametrize("stage", list(SeedStage), ids=[s.value for s in SeedStage])
def test_stage_one_hot_and_per_slot_masks(stage: SeedStage) -> None:
    inp = encode(observe(slots=[slot("a"), slot("b", stage), slot("c")]))
    stages = inp.node_features[2, node("stage_dormant") : node("stage_culled") + 1]
    assert stages.tolist() == [float(s is stage) for s in SeedStage]
    assert inp.cull_mask.tolist() == [False, stage in LIVE, False]
    assert inp.fossilize_mask.tolist() == [False, stage is SeedStage.PROBATION, False]


def test_gradient_ratios() -> None:
    assert gradient_ratios([1.0, 3.0]) == pytest.approx([0.5, 1.5])
    assert gradient_ratios([0.0, 0.0, 0.0]) == [0.0, 0.0, 0.0]
    assert gradient_ratios([]) == []
    # Norms near the float limit do not overflow the mean.
    assert gradient_ratios([1e308, 1e308, 0.0]) == pytest.approx([1.5, 1.5, 0.0])


def test_all_zero_gradients_give_zero_ratios() -> None:
    slots = [slot(slot_id, gradient=0.0) for slot_id in SLOT_IDS]
    inp = encode(observe(slots=slots))
    assert not inp.node_features[:, node("gradient_ratio")].any()


# Edges and slots ------------------------------------------------------------------------------


def test_edge_index_matches_the_graph() -> None:
    edges = [(0, 1), (1, 2), (0, 2), (2, 3), (3, 4), (4, 0)]
    inp = encode(observe(model=graph(edges=edges)))
    assert inp.edge_index.tolist() == [[s for s, _ in edges], [t for _, t in edges]]


def test_slot_nodes_follow_the_snapshot_order() -> None:
    inp = encode(observe(slots=[slot("c"), slot("a"), slot("b")]))
    assert inp.slot_ids == ("c", "a", "b")
    assert inp.slot_nodes.tolist() == [4, 0, 2]


def test_a_slot_no_node_carries_is_refused_by_name() -> None:
    layers = [layer if layer[3] != "c" else ("fc3", "Linear", 136, None) for layer in LAYERS]
    with pytest.raises(ValueError, match=r"no graph node carries slot\(s\): c"):
        encode(observe(model=graph(layers)))


def test_a_slot_carried_twice_is_refused() -> None:
    layers = [*LAYERS[:4], ("fc3", "Linear", 136, "a")]
    with pytest.raises(ValueError, match="slot 'a': carried by graph nodes 0 and 4"):
        encode(observe(model=graph(layers)))


def test_a_carried_slot_without_telemetry_is_refused() -> None:
    with pytest.raises(ValueError, match="telemetry does not report: c"):
        encode(observe(slots=[slot("a"), slot("b")]))


# Graph features -------------------------------------------------------------------------------


def test_graph_columns() -> None:
    slots = [slot("a", SeedStage.FOSSILIZED), slot("b"), slot("c")]
    inp = encode(observe(slots=slots, max_seeds=4, budget_left_params=1360))
    expected = {
        "training_progress": 0.25,
        "loss_trend": math.tanh(-0.1),
        "train_loss": math.log1p(0.5),
        "val_loss": math.log1p(0.6),
        "has_val_loss": 1.0,
        "val_accuracy": 0.75,
        "has_val_accuracy": 1.0,
        # 1360 / 680 = 2, of at most 4.
        "budget_share": 0.5,
        "seed_occupancy": 0.25,
        "dormant_fraction": 2 / 3,
        "slot_count": math.log1p(3) / math.log1p(512),
        "seed_in_lifecycle": 0.0,
    }
    assert inp.graph_features.tolist() == pytest.approx(
        [expected[name] for name in GRAPH_COLUMNS], rel=1e-6
    )


def test_missing_validation_is_zero_with_cleared_flags() -> None:
    features = encode(observe(val_loss=None, val_accuracy=None)).graph_features
    for name in ("val_loss", "has_val_loss", "val_accuracy", "has_val_accuracy"):
        assert features[graph_col(name)] == 0.0, name


@pytest.mark.parametrize(
    ("budget", "host", "share"),
    [(0, 680, 0.0), (680, 680, 0.25), (10_000, 680, 1.0), (5, 0, 1.0)],
    ids=["none-left", "one-host", "clipped", "empty-host"],
)
def test_budget_share(budget: int, host: int, share: float) -> None:
    observation = observe(model=graph(host_params=host), budget_left_params=budget)
    assert encode(observation).graph_features[graph_col("budget_share")].item() == share


@pytest.mark.parametrize(
    ("stages", "max_seeds", "occupancy"),
    [
        ([SeedStage.DORMANT] * 3, 2, 0.0),
        ([SeedStage.TRAINING, SeedStage.FOSSILIZED, SeedStage.DORMANT], 4, 0.5),
        ([SeedStage.FOSSILIZED, SeedStage.FOSSILIZED, SeedStage.CULLED], 2, 1.0),
        ([SeedStage.FOSSILIZED] * 3, 2, 1.0),
        ([SeedStage.DORMANT] * 3, 0, 1.0),
    ],
    ids=["empty", "half", "full", "over-full", "no-room"],
)
def test_seed_occupancy(stages: list[SeedStage], max_seeds: int, occupancy: float) -> None:
    slots = [slot(slot_id, stage) for slot_id, stage in zip(SLOT_IDS, stages, strict=True)]
    features = encode(observe(slots=slots, max_seeds=max_seeds)).graph_features
    assert features[graph_col("seed_occupancy")].item() == occupancy


def test_seed_in_lifecycle_flag() -> None:
    busy = encode(observe(slots=[slot("a", SeedStage.BLENDING, alpha=0.5), slot("b"), slot("c")]))
    assert busy.graph_features[graph_col("seed_in_lifecycle")] == 1.0
    assert busy.graph_features[graph_col("dormant_fraction")].item() == pytest.approx(2 / 3)


# Candidates -----------------------------------------------------------------------------------


def test_candidate_columns() -> None:
    chosen = candidate(1, params=340, p50_ms=1.5, name="bottleneck-mlp")
    inp = encode(observe(candidates={"b": [chosen]}, budget_left_params=170))
    [row] = inp.candidate_features
    report = chosen.kernel.benchmark
    assert report is not None
    expected = {
        "params": math.log1p(340) / math.log1p(1e8),
        # 340 / 170 = 2, the clip.
        "budget_share": 1.0,
        # 340 / 680.
        "host_share": 0.25,
        "latency": math.log1p(1.5) / math.log1p(1000),
        "has_latency": 1.0,
        "has_benchmark": 1.0,
        # The sample report's error is 1e-6: 6 of 12 decades above the floor.
        "max_abs_error": 0.5,
        "gradient_check": 1.0,
        "peak_memory": math.log1p(report.peak_memory_bytes) / math.log1p(1e10),
        "flops": math.log1p(report.flops_per_sample) / math.log1p(1e12),
    }
    for name, value in expected.items():
        assert row[kernel_col(name)].item() == pytest.approx(value, rel=1e-6), name
    buckets = row[kernel_col("blueprint_0") : kernel_col("blueprint_7") + 1]
    assert buckets.tolist() == [float(i == blueprint_bucket("bottleneck-mlp")) for i in range(8)]
    assert inp.candidate_slot.tolist() == [1]
    assert inp.candidate_kernel_ids == (chosen.kernel.id,)


def test_unbenchmarked_candidate_has_zero_benchmark_columns_and_cleared_flags() -> None:
    inp = encode(observe(candidates={"a": [candidate(1, p50_ms=None)]}))
    [row] = inp.candidate_features
    for name in (
        "latency",
        "has_latency",
        "has_benchmark",
        "max_abs_error",
        "gradient_check",
        "peak_memory",
        "flops",
    ):
        assert row[kernel_col(name)] == 0.0, name


def test_gradient_check_fails_beyond_the_tolerance() -> None:
    target = KernelTarget(device="cpu", bindings={"C": 9})
    report = samples.benchmark_report(target, verdict="Rejected", gradient_max_abs_error=1e-3)
    kernel = samples.kernel_artifact(KernelPhase.REJECTED, target=target, benchmark=report)
    rejected = KernelCandidate(kernel=kernel, blueprint_name="x", params=10)
    [row] = encode(observe(candidates={"a": [rejected]})).candidate_features
    assert row[kernel_col("has_benchmark")] == 1.0
    assert row[kernel_col("gradient_check")] == 0.0


def test_blueprint_buckets_are_stable_and_spread() -> None:
    # Pinned: a checkpoint's weights depend on these buckets, so they must never change.
    assert blueprint_bucket("residual-mlp") == 1
    assert blueprint_bucket("bottleneck-mlp") == 2
    assert blueprint_bucket("conv-adapter") == 0
    names = [f"blueprint-{index}" for index in range(64)]
    assert {blueprint_bucket(name) for name in names} == set(range(BLUEPRINT_BUCKETS))


def test_candidates_follow_slot_order_then_kernel_id() -> None:
    kernels = [candidate(number) for number in (5, 1, 3, 2)]
    by_id = sorted(kernels, key=lambda c: c.kernel.id)
    candidates = {"c": [kernels[0]], "a": kernels[1:]}
    inp = encode(observe(candidates=candidates))
    assert inp.candidate_slot.tolist() == [0, 0, 0, 2]
    expected_a = [c.kernel.id for c in by_id if c is not kernels[0]]
    assert inp.candidate_kernel_ids == (*expected_a, kernels[0].kernel.id)


def test_candidates_for_an_unknown_slot_are_ignored() -> None:
    inp = encode(observe(candidates={"elsewhere": [candidate(1)], "b": [candidate(2)]}))
    assert inp.candidate_slot.tolist() == [1]


def test_a_kernel_offered_twice_in_one_slot_is_refused() -> None:
    with pytest.raises(ValueError, match="is a candidate twice"):
        encode(observe(candidates={"a": [candidate(1), candidate(1, params=9)]}))


@pytest.mark.parametrize("params", [-1, 10**15 + 1])
def test_out_of_bounds_candidate_params_are_refused(params: int) -> None:
    with pytest.raises(ValueError, match=r"claims .* parameters"):
        encode(observe(candidates={"a": [candidate(1, params=params)]}))


# Masks ----------------------------------------------------------------------------------------


def test_every_candidate_may_germinate_in_a_quiet_run() -> None:
    inp = encode(observe())
    assert inp.germinate_mask.tolist() == [True, True, True]
    assert inp.action_mask().tolist() == [True, True, False, False]


def test_a_pair_culled_before_is_masked_in_its_slot_only() -> None:
    kernel = candidate(1)
    excluded = frozenset({("b", kernel.kernel.id)})
    candidates = {slot_id: [kernel] for slot_id in SLOT_IDS}
    inp = encode(observe(candidates=candidates, excluded=excluded))
    assert inp.germinate_mask.tolist() == [True, False, True]


def test_candidates_over_the_budget_are_masked() -> None:
    candidates = {"a": [candidate(1, params=99), candidate(2, params=100), candidate(3, 101)]}
    inp = encode(observe(candidates=candidates, budget_left_params=100))
    allowed = dict(zip(inp.candidate_kernel_ids, inp.germinate_mask.tolist(), strict=True))
    assert allowed == {
        candidates["a"][0].kernel.id: True,
        candidates["a"][1].kernel.id: True,
        candidates["a"][2].kernel.id: False,
    }


def test_only_dormant_slots_may_germinate() -> None:
    slots = [slot("a", SeedStage.FOSSILIZED), slot("b", SeedStage.CULLED), slot("c")]
    inp = encode(observe(slots=slots))
    assert inp.germinate_mask.tolist() == [False, False, True]


def test_max_seeds_reached_masks_all_germination() -> None:
    slots = [slot("a", SeedStage.FOSSILIZED), slot("b", SeedStage.FOSSILIZED), slot("c")]
    assert encode(observe(slots=slots, max_seeds=3)).germinate_mask.tolist() == [
        False,
        False,
        True,
    ]
    full = encode(observe(slots=slots, max_seeds=2))
    assert not full.germinate_mask.any()
    assert full.action_mask().tolist() == [True, False, False, False]


def test_max_seeds_zero_never_germinates() -> None:
    assert not encode(observe(max_seeds=0)).germinate_mask.any()


@pytest.mark.parametrize("stage", LIVE, ids=[s.value for s in LIVE])
def test_a_seed_mid_lifecycle_masks_all_germination(stage: SeedStage) -> None:
    slots = [slot("a", stage), slot("b"), slot("c")]
    inp = encode(observe(slots=slots))
    assert not inp.germinate_mask.any()
    expected = [True, False, True, stage is SeedStage.PROBATION]
    assert inp.action_mask().tolist() == expected
    assert inp.action_mask()[ActionKind.CULL]


def test_negative_max_seeds_is_refused() -> None:
    with pytest.raises(ValueError, match="max_seeds must be >= 0"):
        encode(observe(max_seeds=-1))


# Determinism ----------------------------------------------------------------------------------


def test_the_same_observation_gives_identical_tensors() -> None:
    slots = [slot("a", SeedStage.PROBATION, contribution=0.1), slot("b", gradient=2.5), slot("c")]
    candidates = {"b": [candidate(1), candidate(2, p50_ms=None)], "c": [candidate(3)]}
    first = encode(observe(slots=slots, candidates=candidates))
    second = encode(observe(slots=slots, candidates=candidates))
    assert_same(first, second)


def test_candidate_input_order_does_not_matter() -> None:
    kernels = [candidate(number, params=100 * number) for number in range(1, 6)]
    forward = {"a": kernels[:3], "c": kernels[3:]}
    backward = {"c": list(reversed(kernels[3:])), "a": list(reversed(kernels[:3]))}
    assert_same(encode(observe(candidates=forward)), encode(observe(candidates=backward)))


# Extremes -------------------------------------------------------------------------------------


def test_features_are_finite_for_extreme_but_valid_observations() -> None:
    huge = 10**15
    slots = [
        slot("a", gradient=0.0, activation_std=1e300, activation_mean=-1e300, param_count=huge),
        slot(
            "b",
            SeedStage.PROBATION,
            gradient=1e308,
            contribution=-1e300,
            seed_param_count=huge,
            steps_since_change=10**12,
        ),
        slot("c", gradient=0.0, dead_fraction=1.0),
    ]
    target = KernelTarget(device="cpu", bindings={"C": 7})
    report = samples.benchmark_report(
        target,
        max_abs_error=0.0,
        peak_memory_bytes=huge,
        flops_per_sample=huge,
        latency=[samples.latency(32, 1e300, 1e300)],
    )
    benchmarked = KernelCandidate(
        kernel=samples.kernel_artifact(target=target, benchmark=report),
        blueprint_name="",
        params=huge,
    )
    candidates = {"a": [candidate(1, params=huge, p50_ms=None), benchmarked], "c": [candidate(2)]}
    layers = [("big", "Linear", huge, "a"), ("b", "Conv2d", 0, "b"), ("c", "X", 0, "c")]
    observation = observe(
        slots=slots,
        candidates=candidates,
        model=graph(layers, host_params=0),
        max_seeds=0,
        train_loss=1e300,
        val_loss=1e300,
        loss_trend=1e300,
        budget_left_params=huge,
    )
    inp = encode(observation)
    for tensor in (inp.node_features, inp.graph_features, inp.candidate_features):
        assert torch.isfinite(tensor).all()
    has_latency = inp.candidate_features[:, kernel_col("has_latency")].tolist()
    measured = dict(zip(inp.candidate_kernel_ids, has_latency, strict=True))
    assert measured[benchmarked.kernel.id] == 1.0
    assert measured[candidates["a"][0].kernel.id] == 0.0


def test_non_finite_telemetry_that_bypassed_validation_is_refused() -> None:
    corrupt = slot("a").model_copy(update={"activation_std": math.inf})
    with pytest.raises(ValueError, match="non-finite node features"):
        encode(observe(slots=[corrupt, slot("b"), slot("c")]))


# torch_geometric ------------------------------------------------------------------------------


def test_to_data_carries_every_tensor() -> None:
    inp = encode(observe())
    data = to_data(inp)
    assert torch.equal(data.x, inp.node_features)
    assert torch.equal(data.edge_index, inp.edge_index)
    assert data.graph_features.shape == (1, GRAPH_FEATURES)
    assert data.num_nodes == 5
    for name in ("slot_nodes", "candidate_features", "candidate_slot", "germinate_mask"):
        assert torch.equal(getattr(data, name), getattr(inp, name)), name
    assert data.slot_ids == inp.slot_ids


def test_batching_offsets_node_and_slot_indices() -> None:
    first = encode(observe(candidates={"b": [candidate(1)], "c": [candidate(2)]}))
    layers = [("x", "Linear", 10, "x"), ("y", "ReLU", 0, None)]
    second = encode(
        observe(
            slots=[slot("x")],
            candidates={"x": [candidate(3)]},
            model=graph(layers, slot_ids=("x",), host_params=10),
        )
    )
    batch = Batch.from_data_list([to_data(first), to_data(second)])
    assert batch.x.shape == (7, NODE_FEATURES)
    assert batch.graph_features.shape == (2, GRAPH_FEATURES)
    assert batch.edge_index.tolist() == [[0, 1, 2, 3, 5], [1, 2, 3, 4, 6]]
    # The second graph's slot sits on its node 0 (row 5) and is the batch's fourth slot.
    assert batch.slot_nodes.tolist() == [0, 2, 4, 5]
    assert batch.candidate_slot.tolist() == [1, 2, 3]
    assert batch.batch.tolist() == [0] * 5 + [1] * 2
