"""BlueprintIR: the design of a small sub-network that can be grafted into a seed slot.

A blueprint is a directed acyclic graph of nodes. Each node applies one operation from a fixed
allow-list (:class:`Op`) to the outputs of its input nodes; the reserved name ``input`` refers to
the blueprint's single input tensor, and ``output`` names the node whose value is the result.
Dimensions are integers or upper-case symbols (``C``, ``H``...), bound to sizes later by a
:class:`~esper.contracts.kernel.KernelTarget`; the batch dimension is always implicit and
symbolic.

Validation here is structural (ids, references, arity, cycles, dangling nodes, per-op
parameters). Shape inference lives in ``esper.blueprints.shapes`` because it needs the target's
bindings.

The identity of a blueprint is the SHA-256 of its canonical JSON form; see
:meth:`BlueprintIR.canonical_json` and docs/contracts.md.
"""

import hashlib
import json
from enum import StrEnum
from typing import Annotated, Literal

from pydantic import Field, ValidationError, model_validator

from esper.contracts._base import Contract, describe_validation_error
from esper.contracts.types import Dim, LongText, NodeId, ResourceName, Sha256Hex, Tag

INPUT_REF = "input"
"""The reserved node reference meaning the blueprint's input tensor."""

CANONICAL_SCHEMA = "esper.dev/blueprint-ir/v1"
"""Schema tag inside the canonical form; bumped only if the canonical form itself changes."""

MAX_NODES = 256


class Op(StrEnum):
    """The allow-list of operations a blueprint node may apply."""

    LINEAR = "linear"
    LOW_RANK = "low_rank"
    CONV2D = "conv2d"
    DEPTHWISE_CONV2D = "depthwise_conv2d"
    BATCH_NORM = "batch_norm"
    LAYER_NORM = "layer_norm"
    GROUP_NORM = "group_norm"
    RELU = "relu"
    GELU = "gelu"
    SILU = "silu"
    TANH = "tanh"
    SIGMOID = "sigmoid"
    DROPOUT = "dropout"
    ADD = "add"
    MUL = "mul"
    CONCAT = "concat"
    SQUEEZE_EXCITE = "squeeze_excite"
    ATTENTION = "attention"
    SCALE = "scale"
    GLOBAL_AVG_POOL = "global_avg_pool"
    IDENTITY = "identity"


class Layout(StrEnum):
    """How the non-batch dimensions of a tensor are laid out."""

    FEATURES = "features"
    """``[C]``: a feature vector (MLP layers)."""
    IMAGE = "image"
    """``[C, H, W]``: channels-first feature maps (convolutional layers)."""
    SEQUENCE = "sequence"
    """``[T, C]``: a sequence of feature vectors (transformer blocks)."""


LAYOUT_RANK: dict[Layout, int] = {Layout.FEATURES: 1, Layout.IMAGE: 3, Layout.SEQUENCE: 2}


class Init(StrEnum):
    """How a layer's weights start.

    ``zeros`` on the layers of a blueprint's output path makes its contribution exactly zero at
    graft time, which is what keeps a graft function-preserving.
    """

    DEFAULT = "default"
    ZEROS = "zeros"


class TensorSpec(Contract):
    """The shape of a tensor without its (always symbolic) batch dimension.

    Attributes:
        layout: How the dimensions are laid out.
        shape: The non-batch dimensions, integers or symbols; its length matches the layout.
    """

    layout: Layout
    shape: list[Dim] = Field(min_length=1, max_length=3)

    @model_validator(mode="after")
    def _rank_matches_layout(self) -> "TensorSpec":
        expected = LAYOUT_RANK[self.layout]
        if len(self.shape) != expected:
            raise ValueError(
                f"layout '{self.layout.value}' has {expected} non-batch dimension(s), "
                f"shape {self.shape} has {len(self.shape)}"
            )
        return self


class NoParams(Contract):
    """Parameters of an operation that takes none."""


class LinearParams(Contract):
    """Parameters of ``linear``: a dense layer over the last dimension."""

    out_features: Dim
    bias: bool = True
    init: Init = Init.DEFAULT


class LowRankParams(Contract):
    """Parameters of ``low_rank``: ``x @ A @ B`` with ``A`` (in x rank) and ``B`` (rank x out).

    ``B`` starts at zero when ``init`` is ``zeros``, as in LoRA.
    """

    rank: int = Field(ge=1, le=4096)
    out_features: Dim
    init: Init = Init.ZEROS


class Conv2dParams(Contract):
    """Parameters of ``conv2d``."""

    out_channels: Dim
    kernel_size: int = Field(ge=1, le=11)
    stride: int = Field(default=1, ge=1, le=4)
    padding: int | Literal["same"] = "same"
    groups: int = Field(default=1, ge=1, le=4096)
    bias: bool = True
    init: Init = Init.DEFAULT

    @model_validator(mode="after")
    def _padding_bounds(self) -> "Conv2dParams":
        if isinstance(self.padding, int) and not 0 <= self.padding <= 10:
            raise ValueError(f"padding must be 'same' or an integer in [0, 10], got {self.padding}")
        if self.padding == "same" and self.stride != 1:
            raise ValueError("padding 'same' requires stride 1")
        return self


class DepthwiseConv2dParams(Contract):
    """Parameters of ``depthwise_conv2d`` (one filter per input channel)."""

    kernel_size: int = Field(ge=1, le=11)
    stride: int = Field(default=1, ge=1, le=4)
    padding: int | Literal["same"] = "same"
    bias: bool = True
    init: Init = Init.DEFAULT

    @model_validator(mode="after")
    def _padding_bounds(self) -> "DepthwiseConv2dParams":
        if isinstance(self.padding, int) and not 0 <= self.padding <= 10:
            raise ValueError(f"padding must be 'same' or an integer in [0, 10], got {self.padding}")
        if self.padding == "same" and self.stride != 1:
            raise ValueError("padding 'same' requires stride 1")
        return self


class NormParams(Contract):
    """Parameters of ``batch_norm`` and ``layer_norm``."""

    eps: float = Field(default=1e-5, gt=0.0, le=0.1)


class GroupNormParams(Contract):
    """Parameters of ``group_norm``."""

    num_groups: int = Field(ge=1, le=1024)
    eps: float = Field(default=1e-5, gt=0.0, le=0.1)


class DropoutParams(Contract):
    """Parameters of ``dropout``."""

    p: float = Field(ge=0.0, le=0.9)


class SqueezeExciteParams(Contract):
    """Parameters of ``squeeze_excite``: channel gating with a bottleneck of C / reduction."""

    reduction: int = Field(default=4, ge=1, le=64)


class AttentionParams(Contract):
    """Parameters of ``attention``: multi-head self-attention over a sequence."""

    num_heads: int = Field(ge=1, le=64)
    dropout: float = Field(default=0.0, ge=0.0, le=0.9)
    init: Init = Init.DEFAULT
    """Initialisation of the output projection."""


class ScaleParams(Contract):
    """Parameters of ``scale``: multiply by one learnable scalar gate."""

    init_value: float = Field(default=0.0, ge=-10.0, le=10.0)


OpParams = (
    LinearParams
    | LowRankParams
    | Conv2dParams
    | DepthwiseConv2dParams
    | NormParams
    | GroupNormParams
    | DropoutParams
    | SqueezeExciteParams
    | AttentionParams
    | ScaleParams
    | NoParams
)
"""Any operation's parameter model; which one a node uses is fixed by its ``op``."""

PARAMS_BY_OP: dict[Op, type[Contract]] = {
    Op.LINEAR: LinearParams,
    Op.LOW_RANK: LowRankParams,
    Op.CONV2D: Conv2dParams,
    Op.DEPTHWISE_CONV2D: DepthwiseConv2dParams,
    Op.BATCH_NORM: NormParams,
    Op.LAYER_NORM: NormParams,
    Op.GROUP_NORM: GroupNormParams,
    Op.RELU: NoParams,
    Op.GELU: NoParams,
    Op.SILU: NoParams,
    Op.TANH: NoParams,
    Op.SIGMOID: NoParams,
    Op.DROPOUT: DropoutParams,
    Op.ADD: NoParams,
    Op.MUL: NoParams,
    Op.CONCAT: NoParams,
    Op.SQUEEZE_EXCITE: SqueezeExciteParams,
    Op.ATTENTION: AttentionParams,
    Op.SCALE: ScaleParams,
    Op.GLOBAL_AVG_POOL: NoParams,
    Op.IDENTITY: NoParams,
}
"""The parameter model of each operation."""

VARIADIC_OPS = frozenset({Op.ADD, Op.MUL, Op.CONCAT})
"""Operations that combine two or more inputs; every other operation takes exactly one."""

MAX_NODE_INPUTS = 8


class Node(Contract):
    """One operation in a blueprint graph.

    Attributes:
        id: Unique identifier within the blueprint (``input`` is reserved).
        op: The operation, from the allow-list.
        inputs: Node ids (or ``input``) whose outputs feed this node, in order.
        params: The operation's parameters; their model is fixed by ``op``.
    """

    id: NodeId
    op: Op
    inputs: list[NodeId] = Field(min_length=1, max_length=MAX_NODE_INPUTS)
    params: OpParams = Field(default_factory=NoParams)

    @model_validator(mode="before")
    @classmethod
    def _parse_params_for_op(cls, data: object) -> object:
        # The union alone would accept whichever parameter model happens to fit; the op decides
        # which one applies, and errors must name the node so a user can find it.
        if not isinstance(data, dict):
            return data
        node_id = data.get("id", "?")
        raw_op = data.get("op")
        if not isinstance(raw_op, str):
            return data
        if raw_op not in Op.__members__.values():
            allowed = ", ".join(op.value for op in Op)
            raise ValueError(
                f"node '{node_id}': op '{raw_op}' is not allow-listed; allowed: {allowed}"
            )
        model = PARAMS_BY_OP[Op(raw_op)]
        raw_params = data.get("params", {})
        if isinstance(raw_params, model):
            return data
        if isinstance(raw_params, Contract):
            raise ValueError(
                f"node '{node_id}' ({raw_op}): invalid params: must be {model.__name__}, "
                f"not {type(raw_params).__name__}"
            )
        try:
            parsed = model.model_validate(raw_params if raw_params is not None else {})
        except ValidationError as error:
            raise ValueError(
                f"node '{node_id}' ({raw_op}): invalid params: {describe_validation_error(error)}"
            ) from None
        return {**data, "params": parsed}

    @model_validator(mode="after")
    def _check_arity_and_id(self) -> "Node":
        if self.id == INPUT_REF:
            raise ValueError(f"node id '{INPUT_REF}' is reserved for the blueprint's input")
        if not isinstance(self.params, PARAMS_BY_OP[self.op]):
            raise ValueError(
                f"node '{self.id}' ({self.op.value}): params must be "
                f"{PARAMS_BY_OP[self.op].__name__}"
            )
        if self.op in VARIADIC_OPS:
            if len(self.inputs) < 2:
                raise ValueError(
                    f"node '{self.id}' ({self.op.value}): needs at least 2 inputs, "
                    f"got {len(self.inputs)}"
                )
        elif len(self.inputs) != 1:
            raise ValueError(
                f"node '{self.id}' ({self.op.value}): takes exactly 1 input, got {len(self.inputs)}"
            )
        return self


class BlueprintIR(Contract):
    """A blueprint: a small DAG of allow-listed operations with one input and one output.

    Attributes:
        name: Human-facing name (a DNS label); not part of the blueprint's identity.
        description: Free text; not part of the identity.
        tags: Labels for search; not part of the identity.
        input: Layout and non-batch shape of the single input tensor.
        nodes: The operations. Order does not matter; references define the graph.
        output: Id of the node whose value is the blueprint's output.
    """

    name: ResourceName
    description: LongText = ""
    tags: list[Tag] = Field(default_factory=list, max_length=32)
    input: TensorSpec
    nodes: list[Node] = Field(min_length=1, max_length=MAX_NODES)
    output: NodeId

    @model_validator(mode="after")
    def _check_graph(self) -> "BlueprintIR":
        by_id: dict[str, Node] = {}
        for node in self.nodes:
            if node.id in by_id:
                raise ValueError(f"node '{node.id}': duplicate node id")
            by_id[node.id] = node
        for node in self.nodes:
            for ref in node.inputs:
                if ref != INPUT_REF and ref not in by_id:
                    raise ValueError(
                        f"node '{node.id}': input '{ref}' is neither a node nor '{INPUT_REF}'"
                    )
        if self.output not in by_id:
            raise ValueError(f"output '{self.output}' is not a node of the blueprint")
        order = _topological_order(self.nodes)
        reaching_output = _ancestors(by_id, self.output)
        for node_id in order:
            if node_id not in reaching_output:
                raise ValueError(f"node '{node_id}': dangling, its value never reaches the output")
        if not any(INPUT_REF in by_id[node_id].inputs for node_id in reaching_output):
            raise ValueError("the output does not depend on the blueprint's input")
        return self

    def node(self, node_id: str) -> Node:
        """Return the node with the given id.

        Args:
            node_id: The node's id.

        Returns:
            The node.

        Raises:
            KeyError: When no node has that id.
        """
        for node in self.nodes:
            if node.id == node_id:
                return node
        raise KeyError(f"blueprint '{self.name}' has no node '{node_id}'")

    def topological_order(self) -> list[str]:
        """Return the node ids in an order where every node follows its inputs.

        Ties are broken by node id, so the order is deterministic.

        Returns:
            Node ids, inputs first.
        """
        return _topological_order(self.nodes)

    def symbols(self) -> frozenset[str]:
        """Return the dimension symbols the blueprint uses, which a target must bind.

        Returns:
            The set of symbol names.
        """
        found: set[str] = {dim for dim in self.input.shape if isinstance(dim, str)}
        for node in self.nodes:
            for field_name in ("out_features", "out_channels"):
                value = getattr(node.params, field_name, None)
                if isinstance(value, str):
                    found.add(value)
        return frozenset(found)

    def canonical_json(self) -> str:
        """Return the canonical JSON form that defines the blueprint's identity.

        The form covers only what changes the computation: the schema tag, the input spec, the
        nodes sorted by id, and the output. Parameters equal to their defaults are omitted, so
        spelling out a default does not change identity, and object keys are sorted. The text is
        compact (no whitespace) UTF-8. Name, description and tags are metadata and excluded.

        Returns:
            The canonical JSON text.
        """
        nodes = sorted(self.nodes, key=lambda node: node.id)
        document = {
            "schema": CANONICAL_SCHEMA,
            "input": self.input.model_dump(mode="json", by_alias=True),
            "nodes": [
                node.model_dump(mode="json", by_alias=True, exclude_defaults=True) for node in nodes
            ],
            "output": self.output,
        }
        return json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False)

    def canonical_hash(self) -> Sha256Hex:
        """Return the blueprint's identity: SHA-256 of :meth:`canonical_json`, in hex.

        Returns:
            64 lower-case hex digits.
        """
        return hashlib.sha256(self.canonical_json().encode("utf-8")).hexdigest()


def _topological_order(nodes: list[Node]) -> list[str]:
    pending = {node.id: {ref for ref in node.inputs if ref != INPUT_REF} for node in nodes}
    order: list[str] = []
    ready = sorted(node_id for node_id, deps in pending.items() if not deps)
    while ready:
        current = ready.pop(0)
        order.append(current)
        del pending[current]
        for node_id, deps in pending.items():
            if current in deps:
                deps.discard(current)
                if not deps and node_id not in ready:
                    ready.append(node_id)
        ready.sort()
    if pending:
        cycle = ", ".join(f"'{node_id}'" for node_id in sorted(pending))
        raise ValueError(f"nodes {cycle}: the graph has a cycle through these nodes")
    return order


def _ancestors(by_id: dict[str, Node], start: str) -> set[str]:
    seen = {start}
    stack = [start]
    while stack:
        for ref in by_id[stack.pop()].inputs:
            if ref != INPUT_REF and ref not in seen:
                seen.add(ref)
                stack.append(ref)
    return seen


BlueprintHash = Annotated[Sha256Hex, Field(description="Canonical SHA-256 of a BlueprintIR.")]
"""A blueprint's identity."""
