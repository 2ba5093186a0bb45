"""Build a torch module from a BlueprintIR and a target's bindings.

Only allow-listed ops exist, each mapped to a fixed torch module here: an IR can name no import
path and run no code of its own. Initial weights are seeded from the blueprint's hash, so the
same design and target always start from the same weights (the eager reference Urabrask builds
equals the exported program Tezzeret compiled).
"""

from collections.abc import Callable, Mapping

import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors
from torch import Tensor, nn

from esper.blueprints.bundle import BundleError, KernelBundle
from esper.blueprints.shapes import TensorShape, check_graftable
from esper.contracts.blueprint import (
    INPUT_REF,
    AttentionParams,
    BlueprintIR,
    Conv2dParams,
    DepthwiseConv2dParams,
    DropoutParams,
    GroupNormParams,
    Init,
    Layout,
    LinearParams,
    LowRankParams,
    Node,
    NormParams,
    Op,
    ScaleParams,
    SqueezeExciteParams,
)
from esper.contracts.bundle import BundleMemberName


class LowRank(nn.Module):
    """``x @ A @ B``: a rank-limited linear map (B starts at zero for ``init: zeros``).

    Args:
        in_features: Input size.
        rank: Inner rank.
        out_features: Output size.
    """

    def __init__(self, in_features: int, rank: int, out_features: int) -> None:
        """Create the two factors (see the class docstring)."""
        super().__init__()
        self.down = nn.Linear(in_features, rank, bias=False)
        self.up = nn.Linear(rank, out_features, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        """Apply the low-rank map."""
        return self.up(self.down(x))


class SqueezeExcite(nn.Module):
    """Channel gating: ``x * sigmoid(W2 relu(W1 mean(x)))``.

    Args:
        channels: Channel count.
        hidden: Bottleneck width.
        image: Whether the input is a feature map (pool over H, W) or a feature vector.
    """

    def __init__(self, channels: int, hidden: int, image: bool) -> None:
        """Create the gate (see the class docstring)."""
        super().__init__()
        self.image = image
        self.squeeze = nn.Linear(channels, hidden)
        self.excite = nn.Linear(hidden, channels)

    def forward(self, x: Tensor) -> Tensor:
        """Gate the channels of ``x``."""
        pooled = x.mean(dim=(2, 3)) if self.image else x
        gate = torch.sigmoid(self.excite(torch.relu(self.squeeze(pooled))))
        return x * (gate[:, :, None, None] if self.image else gate)


class SelfAttention(nn.Module):
    """Multi-head self-attention over ``[batch, T, C]``.

    Args:
        channels: Embedding size.
        num_heads: Heads.
        dropout: Attention dropout.
    """

    def __init__(self, channels: int, num_heads: int, dropout: float) -> None:
        """Create the attention layer (see the class docstring)."""
        super().__init__()
        self.attention = nn.MultiheadAttention(
            channels, num_heads, dropout=dropout, batch_first=True
        )

    def forward(self, x: Tensor) -> Tensor:
        """Attend over the sequence."""
        output, _ = self.attention(x, x, x, need_weights=False)
        return output


class Scale(nn.Module):
    """Multiply by one learnable scalar.

    Args:
        init_value: The scalar's starting value (0 makes a closed gate).
    """

    def __init__(self, init_value: float) -> None:
        """Create the scalar (see the class docstring)."""
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(float(init_value)))

    def forward(self, x: Tensor) -> Tensor:
        """Scale ``x``."""
        return x * self.scale


class GlobalAvgPool(nn.Module):
    """Average a feature map over its spatial dimensions: ``[B, C, H, W] -> [B, C]``."""

    def forward(self, x: Tensor) -> Tensor:
        """Pool ``x``."""
        return x.mean(dim=(2, 3))


class BlueprintModule(nn.Module):
    """A blueprint as a torch module: its nodes run in a fixed topological order.

    Args:
        ir: The blueprint.
        bindings: The target's symbol bindings.
    """

    def __init__(self, ir: BlueprintIR, bindings: Mapping[str, int]) -> None:
        """Build every node's module (see the class docstring)."""
        super().__init__()
        report = check_graftable(ir, bindings)
        self.blueprint_hash = ir.canonical_hash()
        self.order = tuple(ir.topological_order())
        self.inputs = {node.id: tuple(node.inputs) for node in ir.nodes}
        self.combine = {node.id: node.op for node in ir.nodes if node.op in _COMBINERS}
        self.concat_dims = {
            node_id: (
                _channel_axis(report.nodes[ir.node(node_id).inputs[0]].shape)
                if ir.node(node_id).inputs[0] != INPUT_REF
                else _channel_axis(report.input)
            )
            for node_id in self.combine
        }
        self.output_id = ir.output
        self.layers = nn.ModuleDict()
        for node_id in self.order:
            node = ir.node(node_id)
            if node.op in _COMBINERS:
                continue
            source = node.inputs[0]
            shape = report.input if source == INPUT_REF else report.nodes[source].shape
            self.layers[node_id] = _build_node(node, shape, bindings)

    def forward(self, x: Tensor) -> Tensor:
        """Run the blueprint on ``x`` (``[batch, *input_shape]``)."""
        values: dict[str, Tensor] = {INPUT_REF: x}
        for node_id in self.order:
            sources = [values[ref] for ref in self.inputs[node_id]]
            op = self.combine.get(node_id)
            if op is Op.ADD:
                result = sources[0]
                for other in sources[1:]:
                    result = result + other
            elif op is Op.MUL:
                result = sources[0]
                for other in sources[1:]:
                    result = result * other
            elif op is Op.CONCAT:
                result = torch.cat(sources, dim=self.concat_dims[node_id])
            else:
                result = self.layers[node_id](sources[0])
            values[node_id] = result
        return values[self.output_id]


_COMBINERS = frozenset({Op.ADD, Op.MUL, Op.CONCAT})


def _channel_axis(shape: TensorShape) -> int:
    # Axis in the batched tensor: channels follow the batch axis except in sequences.
    return 2 if shape.layout is Layout.SEQUENCE else 1


def _int(value: object, node: Node, what: str) -> int:
    if not isinstance(value, int):
        raise ValueError(f"node '{node.id}': {what} is not bound to a size")
    return value


def _build_node(node: Node, shape: TensorShape, bindings: Mapping[str, int]) -> nn.Module:
    builder = _BUILDERS.get(node.op)
    if builder is None:
        raise ValueError(f"node '{node.id}': op '{node.op.value}' has no torch builder")
    return builder(node, shape, bindings)


def _dim(value: int | str, bindings: Mapping[str, int], node: Node) -> int:
    return _int(bindings.get(value) if isinstance(value, str) else value, node, str(value))


def _linear(node: Node, shape: TensorShape, bindings: Mapping[str, int]) -> nn.Module:
    params = node.params
    if not isinstance(params, LinearParams):
        raise TypeError(f"node '{node.id}': expected LinearParams")
    layer = nn.Linear(
        _int(shape.channels, node, "input features"),
        _dim(params.out_features, bindings, node),
        bias=params.bias,
    )
    if params.init is Init.ZEROS:
        _zero(layer)
    return layer


def _low_rank(node: Node, shape: TensorShape, bindings: Mapping[str, int]) -> nn.Module:
    params = node.params
    if not isinstance(params, LowRankParams):
        raise TypeError(f"node '{node.id}': expected LowRankParams")
    layer = LowRank(
        _int(shape.channels, node, "input features"),
        params.rank,
        _dim(params.out_features, bindings, node),
    )
    if params.init is Init.ZEROS:
        _zero(layer.up)
    return layer


def _conv2d(node: Node, shape: TensorShape, bindings: Mapping[str, int]) -> nn.Module:
    params = node.params
    channels = _int(shape.channels, node, "input channels")
    if isinstance(params, Conv2dParams):
        out_channels = _dim(params.out_channels, bindings, node)
        groups = params.groups
    elif isinstance(params, DepthwiseConv2dParams):
        out_channels = channels
        groups = channels
    else:
        raise TypeError(f"node '{node.id}': expected convolution params")
    layer = nn.Conv2d(
        channels,
        out_channels,
        params.kernel_size,
        stride=params.stride,
        padding=params.padding,
        groups=groups,
        bias=params.bias,
    )
    if params.init is Init.ZEROS:
        _zero(layer)
    return layer


def _norm(node: Node, shape: TensorShape, _bindings: Mapping[str, int]) -> nn.Module:
    params = node.params
    channels = _int(shape.channels, node, "channels")
    if isinstance(params, GroupNormParams):
        return nn.GroupNorm(params.num_groups, channels, eps=params.eps)
    if not isinstance(params, NormParams):
        raise TypeError(f"node '{node.id}': expected NormParams")
    if node.op is Op.LAYER_NORM:
        return nn.LayerNorm(channels, eps=params.eps)
    if shape.layout is Layout.IMAGE:
        return nn.BatchNorm2d(channels, eps=params.eps)
    return nn.BatchNorm1d(channels, eps=params.eps)


def _dropout(node: Node, _shape: TensorShape, _bindings: Mapping[str, int]) -> nn.Module:
    params = node.params
    if not isinstance(params, DropoutParams):
        raise TypeError(f"node '{node.id}': expected DropoutParams")
    return nn.Dropout(params.p)


def _squeeze_excite(node: Node, shape: TensorShape, _bindings: Mapping[str, int]) -> nn.Module:
    params = node.params
    if not isinstance(params, SqueezeExciteParams):
        raise TypeError(f"node '{node.id}': expected SqueezeExciteParams")
    channels = _int(shape.channels, node, "channels")
    return SqueezeExcite(channels, channels // params.reduction, shape.layout is Layout.IMAGE)


def _attention(node: Node, shape: TensorShape, _bindings: Mapping[str, int]) -> nn.Module:
    params = node.params
    if not isinstance(params, AttentionParams):
        raise TypeError(f"node '{node.id}': expected AttentionParams")
    layer = SelfAttention(_int(shape.channels, node, "channels"), params.num_heads, params.dropout)
    if params.init is Init.ZEROS:
        _zero(layer.attention.out_proj)
    return layer


def _scale(node: Node, _shape: TensorShape, _bindings: Mapping[str, int]) -> nn.Module:
    params = node.params
    if not isinstance(params, ScaleParams):
        raise TypeError(f"node '{node.id}': expected ScaleParams")
    return Scale(params.init_value)


def _fixed(
    factory: Callable[[], nn.Module],
) -> Callable[[Node, TensorShape, Mapping[str, int]], nn.Module]:
    def build(_node: Node, _shape: TensorShape, _bindings: Mapping[str, int]) -> nn.Module:
        return factory()

    return build


def _zero(layer: nn.Module) -> None:
    with torch.no_grad():
        for parameter in layer.parameters(recurse=False):
            parameter.zero_()


_BUILDERS: dict[Op, Callable[[Node, TensorShape, Mapping[str, int]], nn.Module]] = {
    Op.LINEAR: _linear,
    Op.LOW_RANK: _low_rank,
    Op.CONV2D: _conv2d,
    Op.DEPTHWISE_CONV2D: _conv2d,
    Op.BATCH_NORM: _norm,
    Op.LAYER_NORM: _norm,
    Op.GROUP_NORM: _norm,
    Op.RELU: _fixed(nn.ReLU),
    Op.GELU: _fixed(nn.GELU),
    Op.SILU: _fixed(nn.SiLU),
    Op.TANH: _fixed(nn.Tanh),
    Op.SIGMOID: _fixed(nn.Sigmoid),
    Op.DROPOUT: _dropout,
    Op.SQUEEZE_EXCITE: _squeeze_excite,
    Op.ATTENTION: _attention,
    Op.SCALE: _scale,
    Op.GLOBAL_AVG_POOL: _fixed(GlobalAvgPool),
    Op.IDENTITY: _fixed(nn.Identity),
}


def seed_from_hash(blueprint_hash: str) -> int:
    """Return the initialisation seed of a blueprint (the first 15 hex digits of its hash).

    Args:
        blueprint_hash: The canonical hash.

    Returns:
        A non-negative seed below 2**60.
    """
    return int(blueprint_hash[:15], 16)


def build_module(ir: BlueprintIR, bindings: Mapping[str, int]) -> BlueprintModule:
    """Build a blueprint's module with deterministic initial weights.

    The global RNG is left untouched: weights come from a private generator seeded from the
    blueprint's hash, so building never perturbs the caller's random stream.

    Args:
        ir: The blueprint.
        bindings: The target's symbol bindings.

    Returns:
        The module, in training mode, on CPU, in float32.

    Raises:
        ShapeError: When the blueprint does not fit the bindings or is not graftable.
    """
    with torch.random.fork_rng(devices=[]):
        # Only the CPU generator: weights are created on CPU, and torch.manual_seed would also
        # reseed (and so disturb) the caller's CUDA generators, which fork_rng does not restore.
        torch.random.default_generator.manual_seed(seed_from_hash(ir.canonical_hash()))
        module = BlueprintModule(ir, bindings)
    return module


def weights_to_bytes(module: nn.Module) -> bytes:
    """Serialise a module's parameters and buffers as safetensors (no pickle).

    Args:
        module: The module.

    Returns:
        The safetensors bytes.
    """
    tensors = {
        name: tensor.detach().contiguous().cpu() for name, tensor in module.state_dict().items()
    }
    return save_safetensors(tensors)


def module_from_bundle(bundle: KernelBundle) -> BlueprintModule:
    """Rebuild a kernel's module from its bundle, with the bundle's weights.

    The IR goes through the allow-listed builder and the weights are safetensors, so nothing
    from the bundle is executed or unpickled.

    Args:
        bundle: A verified bundle.

    Returns:
        The module, with the bundle's weights, on CPU.

    Raises:
        BundleError: When the IR or weights do not fit each other.
    """
    ir = bundle.ir()
    module = build_module(ir, bundle.manifest.target.bindings)
    weights = bundle.get(BundleMemberName.WEIGHTS)
    if weights is None:
        raise BundleError("bundle has no weights")
    state = load_safetensors(weights)
    expected = set(module.state_dict())
    if set(state) != expected:
        raise BundleError(
            f"bundle weights do not fit the blueprint (missing {sorted(expected - set(state))}, "
            f"unexpected {sorted(set(state) - expected)})"
        )
    module.load_state_dict(state, strict=True)
    return module
