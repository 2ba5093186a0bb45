"""Shape inference, parameter and FLOP counts over a BlueprintIR — pure Python, no torch.

Urza and the operator use it to refuse a blueprint at the door; Tezzeret and Urabrask use it
with a target's symbol bindings to know every node's size.

Inference works on partly symbolic shapes: a dimension is an ``int`` once bound, a symbol
(``"C"``) while unbound, or ``None`` when it was derived from a symbol by arithmetic (a strided
convolution of ``H``). A check fails only when it is certain to fail (two different integers,
an op applied to the wrong layout), so an unbound blueprint can be checked as far as its
symbols allow, and a bound one completely. Parameter and FLOP counts need every dimension
bound.
"""

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TypeVar

from esper.contracts._base import Contract
from esper.contracts.blueprint import (
    INPUT_REF,
    AttentionParams,
    BlueprintIR,
    Conv2dParams,
    DepthwiseConv2dParams,
    GroupNormParams,
    Layout,
    LinearParams,
    LowRankParams,
    Node,
    Op,
    SqueezeExciteParams,
)

ShapeDim = int | str | None
"""A dimension during inference: bound size, unbound symbol, or unknown (derived)."""


class ShapeError(ValueError):
    """Raised when a blueprint's shapes do not fit together; the message names the node.

    Attributes:
        node_id: The node at fault.
    """

    def __init__(self, node: Node, problem: str) -> None:
        """Build the error.

        Args:
            node: The node at fault.
            problem: What is wrong.
        """
        super().__init__(f"node '{node.id}' ({node.op.value}): {problem}")
        self.node_id = node.id


@dataclass(frozen=True)
class TensorShape:
    """A tensor's layout and non-batch dimensions.

    Attributes:
        layout: Features, image or sequence.
        dims: The non-batch dimensions.
    """

    layout: Layout
    dims: tuple[ShapeDim, ...]

    @property
    def channels(self) -> ShapeDim:
        """The channel/feature dimension (first for features and images, last for sequences)."""
        return self.dims[-1] if self.layout is Layout.SEQUENCE else self.dims[0]

    def with_channels(self, channels: ShapeDim) -> "TensorShape":
        """Return the same shape with another channel count.

        Args:
            channels: The new channel count.

        Returns:
            The new shape.
        """
        if self.layout is Layout.SEQUENCE:
            return TensorShape(self.layout, (*self.dims[:-1], channels))
        return TensorShape(self.layout, (channels, *self.dims[1:]))

    def numel(self) -> int | None:
        """Return the number of elements per sample, or None while a dim is not bound."""
        total = 1
        for dim in self.dims:
            if not isinstance(dim, int):
                return None
            total *= dim
        return total

    def is_bound(self) -> bool:
        """Tell whether every dimension is a concrete size."""
        return all(isinstance(dim, int) for dim in self.dims)


@dataclass(frozen=True)
class NodeInfo:
    """What inference found about one node.

    Attributes:
        shape: The node's output shape.
        params: Its parameter count (None while a dimension is unbound).
        flops: Its forward FLOPs per sample, counting a multiply-add as two (None while
            unbound).
    """

    shape: TensorShape
    params: int | None
    flops: int | None


@dataclass(frozen=True)
class ShapeReport:
    """Shapes and costs of a whole blueprint.

    Attributes:
        input: The input shape.
        nodes: Per-node results, in topological order.
        output: The output shape.
    """

    input: TensorShape
    nodes: dict[str, NodeInfo]
    output: TensorShape

    @property
    def params(self) -> int | None:
        """Total parameters (None while a dimension is unbound)."""
        return _total(info.params for info in self.nodes.values())

    @property
    def flops(self) -> int | None:
        """Total forward FLOPs per sample (None while a dimension is unbound)."""
        return _total(info.flops for info in self.nodes.values())


def _total(values: Iterable[int | None]) -> int | None:
    total = 0
    for value in values:
        if value is None:
            return None
        total += value
    return total


def infer_shapes(ir: BlueprintIR, bindings: Mapping[str, int] | None = None) -> ShapeReport:
    """Infer every node's shape, parameters and FLOPs.

    Args:
        ir: The blueprint.
        bindings: Sizes of its symbols (a target's bindings); unbound symbols stay symbolic.

    Returns:
        The report.

    Raises:
        ShapeError: When shapes certainly do not fit; the message names the node.
    """
    bound = dict(bindings or {})
    input_shape = TensorShape(ir.input.layout, tuple(_bind(dim, bound) for dim in ir.input.shape))
    shapes: dict[str, TensorShape] = {INPUT_REF: input_shape}
    infos: dict[str, NodeInfo] = {}
    for node_id in ir.topological_order():
        node = ir.node(node_id)
        inputs = [shapes[ref] for ref in node.inputs]
        info = _infer_node(node, inputs, bound)
        shapes[node_id] = info.shape
        infos[node_id] = info
    return ShapeReport(input=input_shape, nodes=infos, output=shapes[ir.output])


def check_graftable(ir: BlueprintIR, bindings: Mapping[str, int]) -> ShapeReport:
    """Check a blueprint can be grafted into a slot with these bindings.

    A seed's output is added to the host activation it reads, so the output shape must equal
    the input shape, and every dimension must be bound to compile it.

    Args:
        ir: The blueprint.
        bindings: The slot's symbol bindings.

    Returns:
        The fully bound report.

    Raises:
        ShapeError: When shapes do not fit, a symbol is unbound, or output differs from input.
    """
    report = infer_shapes(ir, bindings)
    output_node = ir.node(ir.output)
    unbound = sorted(ir.symbols() - set(bindings))
    if unbound:
        raise ShapeError(output_node, f"symbol(s) {', '.join(unbound)} are not bound")
    if report.output != report.input:
        raise ShapeError(
            output_node,
            f"output {_describe(report.output)} differs from input {_describe(report.input)}; "
            "a seed's output is added to the activation it reads",
        )
    return report


def _describe(shape: TensorShape) -> str:
    return f"{shape.layout.value}{list(shape.dims)}"


def _bind(dim: int | str, bindings: Mapping[str, int]) -> ShapeDim:
    if isinstance(dim, str):
        return bindings.get(dim, dim)
    return dim


def _same(left: ShapeDim, right: ShapeDim) -> bool:
    """Possibly equal: only two different integers are certainly different.

    Two different symbols may be bound to the same size, so they are not a certain mismatch.
    """
    if isinstance(left, int) and isinstance(right, int):
        return left == right
    return True


def _product(*values: ShapeDim) -> int | None:
    total = 1
    for value in values:
        if not isinstance(value, int):
            return None
        total *= value
    return total


def _require_layout(node: Node, shape: TensorShape, *layouts: Layout) -> None:
    if shape.layout not in layouts:
        names = " or ".join(layout.value for layout in layouts)
        raise ShapeError(node, f"needs {names} input, got {_describe(shape)}")


ParamsT = TypeVar("ParamsT", bound=Contract)


def _params(node: Node, kind: type[ParamsT]) -> ParamsT:
    params = node.params
    if not isinstance(params, kind):
        # The contract pairs every op with its parameter model, so this is a programming error.
        raise TypeError(f"node '{node.id}': expected {kind.__name__}, got {type(params).__name__}")
    return params


def _infer_node(node: Node, inputs: list[TensorShape], bindings: Mapping[str, int]) -> NodeInfo:
    handler = _HANDLERS.get(node.op)
    if handler is not None:
        return handler(node, inputs, bindings)
    # Element-wise ops without parameters: activations, dropout, identity.
    first = inputs[0]
    elementwise_flops = 0 if node.op in (Op.DROPOUT, Op.IDENTITY) else first.numel()
    return NodeInfo(first, 0, elementwise_flops)


def _linear(node: Node, inputs: list[TensorShape], bindings: Mapping[str, int]) -> NodeInfo:
    return _dense(node, inputs[0], _params(node, LinearParams), bindings)


def _low_rank(node: Node, inputs: list[TensorShape], bindings: Mapping[str, int]) -> NodeInfo:
    return _dense(node, inputs[0], _params(node, LowRankParams), bindings)


def _conv(node: Node, inputs: list[TensorShape], bindings: Mapping[str, int]) -> NodeInfo:
    return _convolution(node, inputs[0], _params(node, Conv2dParams), bindings)


def _depthwise(node: Node, inputs: list[TensorShape], bindings: Mapping[str, int]) -> NodeInfo:
    return _convolution(node, inputs[0], _params(node, DepthwiseConv2dParams), bindings)


def _norm(node: Node, inputs: list[TensorShape], _bindings: Mapping[str, int]) -> NodeInfo:
    return _normalisation(node, inputs[0])


def _combined(node: Node, inputs: list[TensorShape], _bindings: Mapping[str, int]) -> NodeInfo:
    return _combine(node, inputs)


def _se(node: Node, inputs: list[TensorShape], _bindings: Mapping[str, int]) -> NodeInfo:
    return _squeeze_excite(node, inputs[0], _params(node, SqueezeExciteParams))


def _attn(node: Node, inputs: list[TensorShape], _bindings: Mapping[str, int]) -> NodeInfo:
    return _attention(node, inputs[0], _params(node, AttentionParams))


def _pool(node: Node, inputs: list[TensorShape], _bindings: Mapping[str, int]) -> NodeInfo:
    first = inputs[0]
    _require_layout(node, first, Layout.IMAGE)
    return NodeInfo(TensorShape(Layout.FEATURES, (first.channels,)), 0, first.numel())


def _scale(node: Node, inputs: list[TensorShape], _bindings: Mapping[str, int]) -> NodeInfo:
    return NodeInfo(inputs[0], 1, inputs[0].numel())


def _dense(
    node: Node,
    shape: TensorShape,
    params: LinearParams | LowRankParams,
    bindings: Mapping[str, int],
) -> NodeInfo:
    _require_layout(node, shape, Layout.FEATURES, Layout.SEQUENCE)
    in_features = shape.channels
    out_features = _bind(params.out_features, bindings)
    positions = _product(*shape.dims[:-1]) if shape.layout is Layout.SEQUENCE else 1
    if isinstance(params, LowRankParams):
        weights = _product(in_features, params.rank)
        weights_b = _product(params.rank, out_features)
        count = None if weights is None or weights_b is None else weights + weights_b
        macs = count
    else:
        weights = _product(in_features, out_features)
        bias = out_features if params.bias else 0
        count = None if weights is None or not isinstance(bias, int) else weights + bias
        macs = weights
    flops = None if macs is None or positions is None else 2 * macs * positions
    return NodeInfo(shape.with_channels(out_features), count, flops)


def _spatial(node: Node, size: ShapeDim, kernel: int, stride: int, padding: int | str) -> ShapeDim:
    if padding == "same":
        return size
    if not isinstance(size, int) or not isinstance(padding, int):
        return None
    result = (size + 2 * padding - kernel) // stride + 1
    if result < 1:
        raise ShapeError(
            node, f"kernel {kernel} with padding {padding} does not fit a spatial size of {size}"
        )
    return result


def _convolution(
    node: Node,
    shape: TensorShape,
    params: Conv2dParams | DepthwiseConv2dParams,
    bindings: Mapping[str, int],
) -> NodeInfo:
    _require_layout(node, shape, Layout.IMAGE)
    channels, height, width = shape.dims
    if isinstance(params, Conv2dParams):
        out_channels = _bind(params.out_channels, bindings)
        groups = params.groups
    else:
        out_channels = channels
        groups = channels if isinstance(channels, int) else None
    for name, value in (("input channels", channels), ("output channels", out_channels)):
        if isinstance(value, int) and isinstance(groups, int) and value % groups:
            raise ShapeError(node, f"{name} {value} are not divisible by groups {groups}")
    out_height = _spatial(node, height, params.kernel_size, params.stride, params.padding)
    out_width = _spatial(node, width, params.kernel_size, params.stride, params.padding)
    per_group = None
    if isinstance(channels, int) and isinstance(groups, int):
        per_group = channels // groups
    weights = _product(out_channels, per_group, params.kernel_size, params.kernel_size)
    bias = out_channels if params.bias else 0
    count = None if weights is None or not isinstance(bias, int) else weights + bias
    positions = _product(out_height, out_width)
    flops = None if weights is None or positions is None else 2 * weights * positions
    return NodeInfo(TensorShape(Layout.IMAGE, (out_channels, out_height, out_width)), count, flops)


def _normalisation(node: Node, shape: TensorShape) -> NodeInfo:
    channels = shape.channels
    if node.op is Op.LAYER_NORM:
        _require_layout(node, shape, Layout.FEATURES, Layout.SEQUENCE)
    elif node.op is Op.BATCH_NORM:
        _require_layout(node, shape, Layout.FEATURES, Layout.IMAGE)
    else:
        _require_layout(node, shape, Layout.IMAGE)
        groups = _params(node, GroupNormParams).num_groups
        if isinstance(channels, int) and channels % groups:
            raise ShapeError(node, f"channels {channels} are not divisible by {groups} groups")
    count = _product(2, channels)
    numel = shape.numel()
    return NodeInfo(shape, count, None if numel is None else 4 * numel)


def _combine(node: Node, inputs: list[TensorShape]) -> NodeInfo:
    first = inputs[0]
    for other in inputs[1:]:
        if other.layout is not first.layout:
            raise ShapeError(
                node, f"inputs have different layouts: {_describe(first)} and {_describe(other)}"
            )
    if node.op is Op.CONCAT:
        for other in inputs[1:]:
            rest_first = first.with_channels(0).dims
            rest_other = other.with_channels(0).dims
            if not all(_same(a, b) for a, b in zip(rest_first, rest_other, strict=True)):
                raise ShapeError(
                    node,
                    f"inputs differ outside the channel axis: {_describe(first)} and "
                    f"{_describe(other)}",
                )
        counts = [shape.channels for shape in inputs]
        total = sum(c for c in counts if isinstance(c, int)) if _product(*counts) else None
        return NodeInfo(first.with_channels(total), 0, 0)
    for other in inputs[1:]:
        if not all(_same(a, b) for a, b in zip(first.dims, other.dims, strict=True)):
            raise ShapeError(
                node, f"inputs differ in shape: {_describe(first)} and {_describe(other)}"
            )
    numel = first.numel()
    return NodeInfo(first, 0, None if numel is None else numel * (len(inputs) - 1))


def _squeeze_excite(node: Node, shape: TensorShape, params: SqueezeExciteParams) -> NodeInfo:
    _require_layout(node, shape, Layout.IMAGE, Layout.FEATURES)
    channels = shape.channels
    if not isinstance(channels, int):
        return NodeInfo(shape, None, None)
    hidden = channels // params.reduction
    if hidden < 1:
        raise ShapeError(
            node, f"reduction {params.reduction} leaves no hidden unit for {channels} channels"
        )
    count = 2 * channels * hidden + hidden + channels
    numel = shape.numel()
    flops = None if numel is None else 2 * (2 * channels * hidden) + 2 * numel
    return NodeInfo(shape, count, flops)


def _attention(node: Node, shape: TensorShape, params: AttentionParams) -> NodeInfo:
    _require_layout(node, shape, Layout.SEQUENCE)
    length, channels = shape.dims
    if isinstance(channels, int) and channels % params.num_heads:
        raise ShapeError(
            node, f"embedding size {channels} is not divisible by {params.num_heads} heads"
        )
    projections = _product(4, channels, channels)
    count = (
        None if projections is None or not isinstance(channels, int) else projections + 4 * channels
    )
    per_token = None if projections is None else 2 * projections
    mixing = _product(4, length, length, channels)
    tokens = _product(length)
    flops = None
    if per_token is not None and mixing is not None and tokens is not None:
        flops = per_token * tokens + mixing
    return NodeInfo(shape, count, flops)


NodeHandler = Callable[[Node, list[TensorShape], Mapping[str, int]], NodeInfo]

_HANDLERS: dict[Op, NodeHandler] = {
    Op.LINEAR: _linear,
    Op.LOW_RANK: _low_rank,
    Op.CONV2D: _conv,
    Op.DEPTHWISE_CONV2D: _depthwise,
    Op.BATCH_NORM: _norm,
    Op.LAYER_NORM: _norm,
    Op.GROUP_NORM: _norm,
    Op.ADD: _combined,
    Op.MUL: _combined,
    Op.CONCAT: _combined,
    Op.SQUEEZE_EXCITE: _se,
    Op.ATTENTION: _attn,
    Op.GLOBAL_AVG_POOL: _pool,
    Op.SCALE: _scale,
}

__all__ = [
    "NodeInfo",
    "ShapeDim",
    "ShapeError",
    "ShapeReport",
    "TensorShape",
    "check_graftable",
    "infer_shapes",
]
