"""Observation -> tensors: the features and action masks Tamiyo's GNN policy reads.

:func:`encode` is a pure function of an :class:`~esper.tamiyo.policy.Observation`: the same
observation always gives identical float32 CPU tensors. Every feature is scaled to roughly
``[0, 1]`` (a few may reach 2 or a little beyond for extreme but valid values) and none is an
absolute step count or epoch, which would not transfer between tasks of different lengths.

Node features (one row per ``ModelGraph`` node, :data:`NODE_COLUMNS`; columns 28-31 are zero
padding up to ``NODE_FEATURES``). The slot columns (10-26) are zero for a node without a slot.

=====  =====================  ==========================================================
col    name                   value
=====  =====================  ==========================================================
0      param_count            ``log1p(node.param_count) / log1p(1e8)``
1-8    type_*                 one-hot module kind: linear, conv, norm, activation,
                              dropout, embedding, attention, other (:func:`module_category`)
9      has_slot               1 when the node carries a seed slot
10     activation_mean        ``tanh(activation_mean)``
11     activation_std         ``log1p(activation_std)``
12     gradient_ratio         ``log1p(gradient_norm / mean gradient_norm over slots)``;
                              0 when every slot's gradient norm is 0
13     dead_fraction          fraction of dead activations
14     host_params            ``log1p(slot.param_count) / log1p(1e8)``: the whole host module
                              before the slot (``param_count`` counts the node's own only)
15     seed_params            ``log1p(seed_param_count) / log1p(1e8)``
16-22  stage_*                one-hot :class:`~esper.contracts.seed.SeedStage`, in its order
23     alpha                  blend weight
24     contribution           ``tanh(contribution)``, 0 when unmeasured
25     has_contribution       1 when the contribution was measured
26     steps_since_change     ``log1p(steps_since_change) / log1p(1e6)``
27     position               ``index / (N - 1)`` (0 for a single node)
=====  =====================  ==========================================================

Graph features (:data:`GRAPH_COLUMNS`, exactly ``GRAPH_FEATURES``):

=====  =====================  ==========================================================
col    name                   value
=====  =====================  ==========================================================
0      training_progress      fraction of the planned training done
1      loss_trend             ``tanh(loss_trend)``
2      train_loss             ``log1p(train_loss)``
3      val_loss               ``log1p(val_loss)``, 0 when not evaluated
4      has_val_loss           1 when evaluated
5      val_accuracy           validation accuracy, 0 when not evaluated
6      has_val_accuracy       1 when evaluated
7      budget_share           ``clip(budget_left_params / host_param_count, 0, 4) / 4``
8      seed_occupancy         seeds alive or fossilized / ``max_seeds``, clipped to
                              ``[0, 1]``; 1 when ``max_seeds`` is 0 (no room at all)
9      dormant_fraction       fraction of slots DORMANT (0 without slots)
10     slot_count             ``log1p(number of slots) / log1p(512)``
11     seed_in_lifecycle      1 while any seed is GERMINATED, TRAINING, BLENDING or
                              PROBATION (germination waits for it)
=====  =====================  ==========================================================

Candidate features (one row per (slot, ready kernel), :data:`KERNEL_COLUMNS`; columns
18-23 are zero padding up to ``KERNEL_FEATURES``). The benchmark columns (6-9) are zero for a
kernel without a report.

=====  =====================  ==========================================================
col    name                   value
=====  =====================  ==========================================================
0      params                 ``log1p(params) / log1p(1e8)``
1      budget_share           ``clip(params / max(budget_left_params, 1), 0, 2) / 2``
2      host_share             ``clip(params / max(host_param_count, 1), 0, 2) / 2``
3      latency                ``log1p(p50 ms at the largest batch) / log1p(1000)``;
                              0 when unmeasured
4      has_latency            1 when measured
5      has_benchmark          1 when the kernel has a benchmark report
6      max_abs_error          ``clip((log10(max(error, 1e-12)) + 12) / 12, 0, 2)``
7      gradient_check         1 when gradients were finite and within the tolerance
8      peak_memory            ``log1p(peak_memory_bytes) / log1p(1e10)``
9      flops                  ``log1p(flops_per_sample) / log1p(1e12)``
10-17  blueprint_*            the blueprint name hashed (SHA-256) into 8 one-hot buckets
=====  =====================  ==========================================================
"""

import functools
import hashlib
import itertools
import math
import re
from collections.abc import Mapping, Sequence

import torch
from torch_geometric.data import Data

from esper.contracts.seed import LIVE_STAGES, SeedStage
from esper.contracts.telemetry import MAX_SLOTS, SlotTelemetry
from esper.tamiyo.encoding import GRAPH_FEATURES, KERNEL_FEATURES, NODE_FEATURES, PolicyInput
from esper.tamiyo.policy import KernelCandidate, Observation
from esper.tamiyo.rules import germination_blocked, may_germinate

NODE_COLUMNS: tuple[str, ...] = (
    "param_count",
    "type_linear",
    "type_conv",
    "type_norm",
    "type_activation",
    "type_dropout",
    "type_embedding",
    "type_attention",
    "type_other",
    "has_slot",
    "activation_mean",
    "activation_std",
    "gradient_ratio",
    "dead_fraction",
    "host_params",
    "seed_params",
    "stage_dormant",
    "stage_germinated",
    "stage_training",
    "stage_blending",
    "stage_probation",
    "stage_fossilized",
    "stage_culled",
    "alpha",
    "contribution",
    "has_contribution",
    "steps_since_change",
    "position",
)
"""Names of the used node feature columns, in column order (the rest is zero padding)."""

GRAPH_COLUMNS: tuple[str, ...] = (
    "training_progress",
    "loss_trend",
    "train_loss",
    "val_loss",
    "has_val_loss",
    "val_accuracy",
    "has_val_accuracy",
    "budget_share",
    "seed_occupancy",
    "dormant_fraction",
    "slot_count",
    "seed_in_lifecycle",
)
"""Names of the graph feature columns, in column order."""

KERNEL_COLUMNS: tuple[str, ...] = (
    "params",
    "budget_share",
    "host_share",
    "latency",
    "has_latency",
    "has_benchmark",
    "max_abs_error",
    "gradient_check",
    "peak_memory",
    "flops",
    *(f"blueprint_{bucket}" for bucket in range(8)),
)
"""Names of the used candidate feature columns, in column order (the rest is zero padding)."""

MODULE_CATEGORIES: tuple[str, ...] = (
    "linear",
    "conv",
    "norm",
    "activation",
    "dropout",
    "embedding",
    "attention",
    "other",
)
"""Module kinds of the ``type_*`` node columns, in column order."""

BLUEPRINT_BUCKETS = 8
"""Hash buckets of the ``blueprint_*`` candidate columns."""

MAX_CANDIDATE_PARAMS = 10**15
"""Largest parameter count a candidate may claim (the contracts' ``Count`` bound)."""

_LOG_PARAMS = math.log1p(1e8)
_LOG_STEPS = math.log1p(1e6)
_LOG_SLOTS = math.log1p(MAX_SLOTS)
_LOG_LATENCY_MS = math.log1p(1e3)
_LOG_MEMORY_BYTES = math.log1p(1e10)
_LOG_FLOPS = math.log1p(1e12)
# Errors below 1e-12 are all "exact" for fp32/bf16/fp16 kernels; 12 decades span [0, 1].
_ERROR_FLOOR_DECADES = 12.0
_MAX_BUDGET_SHARE = 4.0
_MAX_PARAM_SHARE = 2.0

_NODE_INDEX = {name: index for index, name in enumerate(NODE_COLUMNS)}
_SLOT_START = _NODE_INDEX["activation_mean"]
_SLOT_END = _NODE_INDEX["steps_since_change"] + 1
_SLOT_COLUMNS = NODE_COLUMNS[_SLOT_START:_SLOT_END]
_TYPE_COLUMNS = tuple(_NODE_INDEX[f"type_{category}"] for category in MODULE_CATEGORIES)

_CONV = re.compile(r"^(Lazy)?Conv(Transpose)?[123]d$")
_ACTIVATIONS = frozenset(
    {
        "CELU",
        "ELU",
        "GELU",
        "GLU",
        "Hardshrink",
        "Hardsigmoid",
        "Hardswish",
        "Hardtanh",
        "LeakyReLU",
        "LogSigmoid",
        "LogSoftmax",
        "Mish",
        "PReLU",
        "RReLU",
        "ReLU",
        "ReLU6",
        "SELU",
        "SiLU",
        "Sigmoid",
        "Softmax",
        "Softmax2d",
        "Softmin",
        "Softplus",
        "Softshrink",
        "Softsign",
        "Tanh",
        "Tanhshrink",
        "Threshold",
    }
)


@functools.cache
def module_category(module_type: str) -> int:
    """Return the kind of a module class name, as an index into :data:`MODULE_CATEGORIES`.

    ``Linear``/``LazyLinear``/``Bilinear`` are linear; ``(Lazy)Conv{1,2,3}d`` and their
    transposes are conv; any name containing ``Norm`` (BatchNorm*, LayerNorm, GroupNorm,
    InstanceNorm*, RMSNorm) is norm; torch's activation classes are activation; names
    containing ``Dropout`` are dropout, starting with ``Embedding`` embedding, containing
    ``Attention`` attention; anything else is other.

    Args:
        module_type: The class name, as ``GraphNode.module_type`` records it.

    Returns:
        The category's index.
    """
    # Attention comes first: a custom "AttentionNorm" block is attention, not a norm.
    if "Attention" in module_type:
        category = "attention"
    elif module_type.startswith("Embedding"):
        category = "embedding"
    elif "Norm" in module_type:
        category = "norm"
    elif "Dropout" in module_type:
        category = "dropout"
    elif _CONV.match(module_type):
        category = "conv"
    elif module_type.endswith("Linear") or module_type == "Bilinear":
        category = "linear"
    elif module_type in _ACTIVATIONS:
        category = "activation"
    else:
        category = "other"
    return MODULE_CATEGORIES.index(category)


def blueprint_bucket(name: str) -> int:
    """Return the hash bucket of a blueprint name (stable across processes, unlike ``hash``).

    Args:
        name: The blueprint's name.

    Returns:
        A bucket in ``[0, BLUEPRINT_BUCKETS)``.
    """
    digest = hashlib.sha256(name.encode()).digest()
    return int.from_bytes(digest[:8], "big") % BLUEPRINT_BUCKETS


def gradient_ratios(norms: Sequence[float]) -> list[float]:
    """Return each gradient norm relative to the mean norm (all 0 when every norm is 0).

    Args:
        norms: Gradient norms, one per slot.

    Returns:
        ``norm / mean(norms)`` per slot.
    """
    peak = max(norms, default=0.0)
    if peak == 0.0:
        return [0.0] * len(norms)
    # Dividing by the largest norm first keeps the sum finite for norms near the float limit.
    scaled = [norm / peak for norm in norms]
    mean = sum(scaled) / len(scaled)
    return [value / mean for value in scaled]


def _row(values: Mapping[str, float], columns: tuple[str, ...], width: int) -> list[float]:
    return [values[name] for name in columns] + [0.0] * (width - len(columns))


def _stage_one_hot(stage: SeedStage) -> dict[str, float]:
    return {f"stage_{member.value.lower()}": float(stage is member) for member in SeedStage}


def slot_features(slot: SlotTelemetry, gradient_ratio: float) -> list[float]:
    """Return a slot's telemetry columns (``activation_mean`` .. ``steps_since_change``).

    Args:
        slot: The slot's telemetry.
        gradient_ratio: Its gradient norm over the mean over slots (:func:`gradient_ratios`).

    Returns:
        The values of node columns 10-26, in column order.
    """
    values = {
        "activation_mean": math.tanh(slot.activation_mean),
        "activation_std": math.log1p(slot.activation_std),
        "gradient_ratio": math.log1p(gradient_ratio),
        "dead_fraction": slot.dead_fraction,
        "host_params": math.log1p(slot.param_count) / _LOG_PARAMS,
        "seed_params": math.log1p(slot.seed_param_count) / _LOG_PARAMS,
        **_stage_one_hot(slot.stage),
        "alpha": slot.alpha,
        "contribution": 0.0 if slot.contribution is None else math.tanh(slot.contribution),
        "has_contribution": float(slot.contribution is not None),
        "steps_since_change": math.log1p(slot.steps_since_change) / _LOG_STEPS,
    }
    return [values[name] for name in _SLOT_COLUMNS]


def node_features(observation: Observation, slot_nodes: Sequence[int]) -> torch.Tensor:
    """Return the node feature matrix (see the module docstring's first table).

    Args:
        observation: What the policy sees.
        slot_nodes: The node row carrying each slot, in ``snapshot.slots`` order.

    Returns:
        ``[N, NODE_FEATURES]`` float32.
    """
    nodes = observation.graph.nodes
    count = len(nodes)
    features = torch.zeros((count, NODE_FEATURES), dtype=torch.float32)
    params = torch.tensor([node.param_count for node in nodes], dtype=torch.float64)
    features[:, _NODE_INDEX["param_count"]] = (torch.log1p(params) / _LOG_PARAMS).float()
    categories = torch.tensor(
        [module_category(node.module_type) for node in nodes], dtype=torch.int64
    )
    type_columns = torch.tensor(_TYPE_COLUMNS, dtype=torch.int64)
    features[torch.arange(count), type_columns[categories]] = 1.0
    features[:, _NODE_INDEX["position"]] = (
        torch.arange(count, dtype=torch.float64) / max(count - 1, 1)
    ).float()
    slots = observation.snapshot.slots
    if slots:
        ratios = gradient_ratios([slot.gradient_norm for slot in slots])
        rows = [slot_features(slot, ratio) for slot, ratio in zip(slots, ratios, strict=True)]
        index = torch.tensor(slot_nodes, dtype=torch.int64)
        features[index, _NODE_INDEX["has_slot"]] = 1.0
        features[index, _SLOT_START:_SLOT_END] = torch.tensor(rows, dtype=torch.float64).float()
    return features


def graph_features(observation: Observation) -> torch.Tensor:
    """Return the graph feature vector (see the module docstring's second table).

    Args:
        observation: What the policy sees.

    Returns:
        ``[GRAPH_FEATURES]`` float32.
    """
    snapshot = observation.snapshot
    stages = [slot.stage for slot in snapshot.slots]
    seeds = sum(stage in LIVE_STAGES or stage is SeedStage.FOSSILIZED for stage in stages)
    host = max(observation.graph.host_param_count, 1)
    values = {
        "training_progress": snapshot.training_progress,
        "loss_trend": math.tanh(snapshot.loss_trend),
        "train_loss": math.log1p(snapshot.train_loss),
        "val_loss": 0.0 if snapshot.val_loss is None else math.log1p(snapshot.val_loss),
        "has_val_loss": float(snapshot.val_loss is not None),
        "val_accuracy": 0.0 if snapshot.val_accuracy is None else snapshot.val_accuracy,
        "has_val_accuracy": float(snapshot.val_accuracy is not None),
        "budget_share": min(snapshot.budget_left_params / host, _MAX_BUDGET_SHARE)
        / _MAX_BUDGET_SHARE,
        "seed_occupancy": (
            1.0 if observation.max_seeds == 0 else min(seeds / observation.max_seeds, 1.0)
        ),
        "dormant_fraction": (
            sum(stage is SeedStage.DORMANT for stage in stages) / len(stages) if stages else 0.0
        ),
        "slot_count": math.log1p(len(stages)) / _LOG_SLOTS,
        "seed_in_lifecycle": float(any(stage in LIVE_STAGES for stage in stages)),
    }
    return torch.tensor(_row(values, GRAPH_COLUMNS, GRAPH_FEATURES), dtype=torch.float64).float()


def kernel_features(candidate: KernelCandidate, budget_left: int, host_params: int) -> list[float]:
    """Return one candidate's feature row (see the module docstring's third table).

    Args:
        candidate: The ready kernel.
        budget_left: Parameters the run may still add.
        host_params: Parameters of the host without seeds.

    Returns:
        ``KERNEL_FEATURES`` values.
    """
    latency = candidate.latency_ms()
    report = candidate.kernel.benchmark
    bucket = blueprint_bucket(candidate.blueprint_name)
    values = {
        "params": math.log1p(candidate.params) / _LOG_PARAMS,
        "budget_share": min(candidate.params / max(budget_left, 1), _MAX_PARAM_SHARE)
        / _MAX_PARAM_SHARE,
        "host_share": min(candidate.params / max(host_params, 1), _MAX_PARAM_SHARE)
        / _MAX_PARAM_SHARE,
        "latency": math.log1p(latency) / _LOG_LATENCY_MS if math.isfinite(latency) else 0.0,
        "has_latency": float(math.isfinite(latency)),
        "has_benchmark": float(report is not None),
        "max_abs_error": 0.0,
        "gradient_check": 0.0,
        "peak_memory": 0.0,
        "flops": 0.0,
        **{f"blueprint_{index}": float(index == bucket) for index in range(BLUEPRINT_BUCKETS)},
    }
    if report is not None:
        decades = math.log10(max(report.max_abs_error, 10.0**-_ERROR_FLOOR_DECADES))
        values["max_abs_error"] = min(
            max((decades + _ERROR_FLOOR_DECADES) / _ERROR_FLOOR_DECADES, 0.0), 2.0
        )
        values["gradient_check"] = float(
            report.gradients_finite and report.gradient_max_abs_error <= report.tolerance
        )
        values["peak_memory"] = math.log1p(report.peak_memory_bytes) / _LOG_MEMORY_BYTES
        values["flops"] = math.log1p(report.flops_per_sample) / _LOG_FLOPS
    return _row(values, KERNEL_COLUMNS, KERNEL_FEATURES)


def _slot_nodes(observation: Observation) -> list[int]:
    carriers: dict[str, int] = {}
    for index, node in enumerate(observation.graph.nodes):
        if node.slot_id is None:
            continue
        if node.slot_id in carriers:
            raise ValueError(
                f"slot '{node.slot_id}': carried by graph nodes {carriers[node.slot_id]} and "
                f"{index}; each slot follows exactly one module"
            )
        carriers[node.slot_id] = index
    reported = {slot.slot_id for slot in observation.snapshot.slots}
    silent = sorted(set(carriers) - reported)
    if silent:
        raise ValueError(
            f"graph node(s) carry slot(s) the telemetry does not report: {', '.join(silent)}"
        )
    missing = [slot.slot_id for slot in observation.snapshot.slots if slot.slot_id not in carriers]
    if missing:
        raise ValueError(f"no graph node carries slot(s): {', '.join(missing)}")
    return [carriers[slot.slot_id] for slot in observation.snapshot.slots]


def _ordered_candidates(
    observation: Observation,
) -> list[tuple[int, KernelCandidate]]:
    ordered: list[tuple[int, KernelCandidate]] = []
    for slot_index, slot in enumerate(observation.snapshot.slots):
        candidates = sorted(observation.candidates.get(slot.slot_id, ()), key=lambda c: c.kernel.id)
        for previous, current in itertools.pairwise(candidates):
            if previous.kernel.id == current.kernel.id:
                raise ValueError(
                    f"slot '{slot.slot_id}': kernel '{current.kernel.id}' is a candidate twice"
                )
        for candidate in candidates:
            if not 0 <= candidate.params <= MAX_CANDIDATE_PARAMS:
                raise ValueError(
                    f"slot '{slot.slot_id}': kernel '{candidate.kernel.id}' claims "
                    f"{candidate.params} parameters (expected 0 to {MAX_CANDIDATE_PARAMS})"
                )
            ordered.append((slot_index, candidate))
    return ordered


def _require_finite(name: str, tensor: torch.Tensor) -> None:
    if not bool(torch.isfinite(tensor).all()):
        raise ValueError(f"the observation gives non-finite {name}; its telemetry is corrupt")


def encode(observation: Observation) -> PolicyInput:
    """Turn an observation into the policy's tensors and action masks.

    Per-slot tensors follow ``snapshot.slots``; candidates follow the slots, then kernel id
    within a slot, so the input order of ``observation.candidates`` does not matter.
    Candidates for a slot the snapshot does not report are ignored (no action could reach
    them). A candidate may germinate when its slot is DORMANT, it fits the remaining budget,
    ``(slot, kernel)`` was not culled before, fewer than ``max_seeds`` seeds are alive or
    fossilized, and no seed is mid-lifecycle anywhere (one graft at a time, as the heuristic).

    Args:
        observation: What the policy sees.

    Returns:
        The tensors (see :class:`~esper.tamiyo.encoding.PolicyInput` and this module's tables).

    Raises:
        ValueError: When the observation is inconsistent (a slot no graph node carries, or one
            carried by two; a node's slot missing from the telemetry; a kernel offered twice in
            one slot), ``max_seeds`` is negative, a candidate's parameter count is out of
            bounds, or a feature would not be finite.
    """
    if observation.max_seeds < 0:
        raise ValueError(f"max_seeds must be >= 0, got {observation.max_seeds}")
    snapshot = observation.snapshot
    slot_nodes = _slot_nodes(observation)
    candidates = _ordered_candidates(observation)
    stages = [slot.stage for slot in snapshot.slots]
    # The same rules as every policy's (esper.tamiyo.rules).
    blocked = germination_blocked(observation)
    germinate = [
        not blocked and may_germinate(observation, snapshot.slots[slot_index], candidate)
        for slot_index, candidate in candidates
    ]
    host_params = observation.graph.host_param_count
    rows = [
        kernel_features(candidate, snapshot.budget_left_params, host_params)
        for _, candidate in candidates
    ]
    nodes = node_features(observation, slot_nodes)
    graph = graph_features(observation)
    candidate_features = (
        torch.tensor(rows, dtype=torch.float64).float()
        if rows
        else torch.zeros((0, KERNEL_FEATURES), dtype=torch.float32)
    )
    for name, tensor in (
        ("node features", nodes),
        ("graph features", graph),
        ("candidate features", candidate_features),
    ):
        _require_finite(name, tensor)
    edges = observation.graph.edges
    return PolicyInput(
        node_features=nodes,
        edge_index=torch.tensor(
            [[edge.source for edge in edges], [edge.target for edge in edges]], dtype=torch.int64
        ),
        graph_features=graph,
        slot_nodes=torch.tensor(slot_nodes, dtype=torch.int64),
        slot_ids=tuple(slot.slot_id for slot in snapshot.slots),
        candidate_features=candidate_features,
        candidate_slot=torch.tensor([index for index, _ in candidates], dtype=torch.int64),
        candidate_kernel_ids=tuple(candidate.kernel.id for _, candidate in candidates),
        germinate_mask=torch.tensor(germinate, dtype=torch.bool),
        cull_mask=torch.tensor([stage in LIVE_STAGES for stage in stages], dtype=torch.bool),
        fossilize_mask=torch.tensor(
            [stage is SeedStage.PROBATION for stage in stages], dtype=torch.bool
        ),
    )


class PolicyData(Data):
    """A :class:`PolicyInput` as a torch_geometric graph that batches correctly.

    ``Batch.from_data_list`` offsets ``edge_index`` and ``slot_nodes`` by the nodes of the
    graphs before, and ``candidate_slot`` by their slots; ``graph_features`` is ``[1, G]`` so
    it stacks to ``[B, G]``.
    """

    def __inc__(self, key: str, value: object, *args: object, **kwargs: object) -> object:
        """Return how much ``key``'s indices grow per preceding graph when batching.

        Args:
            key: The attribute.
            value: Its value.
            *args: Passed on to torch_geometric.
            **kwargs: Passed on to torch_geometric.

        Returns:
            The offset.
        """
        if key == "slot_nodes":
            return self.num_nodes
        if key == "candidate_slot":
            return int(self.cull_mask.numel())
        return super().__inc__(key, value, *args, **kwargs)


def to_data(inp: PolicyInput) -> PolicyData:
    """Return a :class:`PolicyInput` as a torch_geometric graph (tensors are shared, not copied).

    Args:
        inp: The encoded observation.

    Returns:
        ``x`` and ``edge_index`` plus every other field of ``inp`` under its own name
        (``graph_features`` as ``[1, GRAPH_FEATURES]``).
    """
    return PolicyData(
        x=inp.node_features,
        edge_index=inp.edge_index,
        graph_features=inp.graph_features.unsqueeze(0),
        slot_nodes=inp.slot_nodes,
        slot_ids=inp.slot_ids,
        candidate_features=inp.candidate_features,
        candidate_slot=inp.candidate_slot,
        candidate_kernel_ids=inp.candidate_kernel_ids,
        germinate_mask=inp.germinate_mask,
        cull_mask=inp.cull_mask,
        fossilize_mask=inp.fossilize_mask,
    )
