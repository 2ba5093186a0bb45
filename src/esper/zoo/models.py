"""Host models for examples and benchmarks, and ``build_host`` for a run's ``HostSpec``.

Seed slots attach after a module's output, and a blueprint reads that output as its input, so
every zoo model is a stack of *blocks* whose outputs are the features worth growing on. All three
models share one naming scheme, ``blocks.N`` (N = 0, 1, ...) inside an ``nn.Sequential``:

- ``mlp``: ``blocks.N`` is an ``MLPBlock`` (``blocks.N.linear``, then ``blocks.N.act``); its
  output is the post-activation feature vector ``[hidden]``.
- ``cnn``: ``blocks.N`` is a ``ConvBlock`` (``blocks.N.conv``, ``blocks.N.norm``,
  ``blocks.N.act``: Conv2d, BatchNorm2d, ReLU); its output is an image ``[channels, H', W']``.
- ``resnet``: a ``ConvBlock`` ``stem``, then ``blocks.N``, each a ``ResidualBlock`` (two 3x3
  convolutions with batch norm, added to a shortcut, then ReLU; ``blocks.N.conv1`` ...); its
  output is an image ``[channels, H', W']``, halved at every odd N.
- ``transformer``: ``blocks.N`` is torch's ``TransformerEncoderLayer`` (pre-norm, batch-first,
  no dropout); its output is a sequence ``[tokens, dim]``.

Every model ends in ``head`` (``nn.Linear`` to the class logits). Widths are constant across
blocks (``hidden``, ``channels``, ``dim``), so one kernel target fits every block of a model.

Targeting: ``InjectionSpec.module_globs`` are ``fnmatch`` patterns, and fnmatch's ``*`` also
matches dots, so ``blocks.*`` selects the blocks' inner layers too (``blocks.0.linear``,
``blocks.0.self_attn``, ...). Select the blocks themselves with ``blocks.?`` (up to ten blocks),
or by type: ``MLPBlock``, ``ConvBlock``, ``ResidualBlock``, ``TransformerEncoderLayer``
(``ConvBlock`` also selects the ``resnet``'s stem). ``Linear`` selects the pre-activation
``blocks.N.linear`` layers of the MLP and every ``head``.

Inputs: ``mlp`` takes any shape (it flattens). ``cnn`` and ``resnet`` take images
``(C, H, W)``, or signals ``(L,)`` viewed as ``(1, 1, L)`` images with ``1x3`` kernels, so their
blocks always output images; in a ``cnn`` every block after the first halves the resolution
(stride 2), in a ``resnet`` every block at an odd index does. ``transformer`` cuts
signals ``(L,)`` into ``L / patch`` tokens of ``patch`` values and images ``(C, H, W)`` into
``patch x patch`` tiles, embeds them (``embed``) and adds a learned position embedding
(``position``). Models draw their initial weights from torch's global generator; seeding it is
the caller's job.
"""

import importlib
import inspect
from collections.abc import Callable, Mapping
from types import MappingProxyType

import torch
from torch import Tensor, nn

from esper.contracts.run import HostSpec, KwargValue

_ACTIVATIONS: Mapping[str, type[nn.Module]] = MappingProxyType(
    {"relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU, "tanh": nn.Tanh}
)
"""Activations the ``mlp`` accepts by name."""


def _require_positive(**values: int) -> None:
    for name, value in values.items():
        if value < 1:
            raise ValueError(f"{name} must be at least 1, got {value}")


class MLPBlock(nn.Module):
    """A hidden layer of the MLP: ``act(linear(x))``.

    Args:
        in_features: Input width.
        out_features: Output width.
        activation: Name of the activation (a key of ``_ACTIVATIONS``).
    """

    def __init__(self, in_features: int, out_features: int, activation: str) -> None:
        """Create the layer (see the class docstring)."""
        super().__init__()
        self.linear = nn.Linear(in_features, out_features)
        self.act = _ACTIVATIONS[activation]()

    def forward(self, x: Tensor) -> Tensor:
        """Apply the layer and its activation."""
        return self.act(self.linear(x))


class MLP(nn.Module):
    """``flatten -> blocks (MLPBlock x depth) -> head``.

    Args:
        in_features: Number of input values per example (the flattened input).
        num_classes: Number of logits.
        hidden: Width of every hidden block.
        depth: Number of hidden blocks.
        activation: Activation of the hidden blocks.
    """

    def __init__(
        self, in_features: int, num_classes: int, *, hidden: int, depth: int, activation: str
    ) -> None:
        """Create the layers (see the class docstring)."""
        super().__init__()
        self.flatten = nn.Flatten()
        widths = [in_features] + [hidden] * depth
        self.blocks = nn.Sequential(
            *(MLPBlock(widths[i], widths[i + 1], activation) for i in range(depth))
        )
        self.head = nn.Linear(hidden, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        """Return the logits of a batch."""
        return self.head(self.blocks(self.flatten(x)))


class ConvBlock(nn.Module):
    """A convolutional block: ``relu(batchnorm(conv(x)))``.

    Args:
        in_channels: Input channels.
        out_channels: Output channels.
        kernel_size: ``(kh, kw)`` of the convolution (padded to keep the size at stride 1).
        stride: ``(sh, sw)`` of the convolution.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: tuple[int, int],
        stride: tuple[int, int],
    ) -> None:
        """Create the layers (see the class docstring)."""
        super().__init__()
        padding = (kernel_size[0] // 2, kernel_size[1] // 2)
        # No conv bias: the batch norm's shift makes it redundant.
        self.conv = nn.Conv2d(
            in_channels, out_channels, kernel_size, stride=stride, padding=padding, bias=False
        )
        self.norm = nn.BatchNorm2d(out_channels)
        self.act = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        """Apply the block."""
        return self.act(self.norm(self.conv(x)))


class ResidualBlock(nn.Module):
    """A basic residual block: ``relu(shortcut(x) + bn(conv(relu(bn(conv(x))))))``.

    The shortcut is the identity at stride 1 and a strided 1x1 convolution with batch norm
    otherwise (the block keeps its channels, so only the resolution changes).

    Args:
        channels: Input and output channels.
        kernel_size: ``(kh, kw)`` of both convolutions (padded to keep the size at stride 1).
        stride: ``(sh, sw)`` of the first convolution and of the shortcut.
    """

    def __init__(
        self, channels: int, kernel_size: tuple[int, int], stride: tuple[int, int]
    ) -> None:
        """Create the layers (see the class docstring)."""
        super().__init__()
        padding = (kernel_size[0] // 2, kernel_size[1] // 2)
        self.conv1 = nn.Conv2d(
            channels, channels, kernel_size, stride=stride, padding=padding, bias=False
        )
        self.norm1 = nn.BatchNorm2d(channels)
        self.act1 = nn.ReLU()
        self.conv2 = nn.Conv2d(channels, channels, kernel_size, padding=padding, bias=False)
        self.norm2 = nn.BatchNorm2d(channels)
        self.shortcut: nn.Module = nn.Identity()
        if stride != (1, 1):
            self.shortcut = nn.Sequential(
                nn.Conv2d(channels, channels, 1, stride=stride, bias=False),
                nn.BatchNorm2d(channels),
            )
        self.act = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        """Apply the block."""
        residual = self.norm2(self.conv2(self.act1(self.norm1(self.conv1(x)))))
        return self.act(self.shortcut(x) + residual)


def _image_layout(input_shape: tuple[int, ...]) -> tuple[int, tuple[int, int], tuple[int, int]]:
    """Return input channels, kernel and downsampling stride for images or signals."""
    if len(input_shape) == 3:
        return input_shape[0], (3, 3), (2, 2)
    if len(input_shape) == 1:
        # A signal is a one-pixel-high image, so blocks output images (the layout image
        # blueprints expect) rather than [C, L], which would read as a sequence.
        return 1, (1, 3), (1, 2)
    raise ValueError(
        f"convolutional hosts take (C, H, W) images or (L,) signals, not {input_shape}"
    )


class ResNet(nn.Module):
    """``stem (ConvBlock) -> blocks (ResidualBlock x depth) -> global average pool -> head``.

    Args:
        input_shape: ``(C, H, W)`` for images or ``(L,)`` for signals.
        num_classes: Number of logits.
        channels: Channels of the stem and every block.
        depth: Number of residual blocks; each at an odd index halves the resolution.
    """

    def __init__(
        self, input_shape: tuple[int, ...], num_classes: int, *, channels: int, depth: int
    ) -> None:
        """Create the layers (see the class docstring)."""
        super().__init__()
        in_channels, kernel, down = _image_layout(input_shape)
        self.input_shape = input_shape
        self.stem = ConvBlock(in_channels, channels, kernel, (1, 1))
        self.blocks = nn.Sequential(
            *(ResidualBlock(channels, kernel, down if i % 2 else (1, 1)) for i in range(depth))
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.head = nn.Linear(channels, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        """Return the logits of a batch."""
        if len(self.input_shape) == 1:
            x = x.view(x.shape[0], 1, 1, x.shape[1])
        return self.head(self.flatten(self.pool(self.blocks(self.stem(x)))))


class CNN(nn.Module):
    """``blocks (ConvBlock x depth) -> global average pool -> head``.

    Args:
        input_shape: ``(C, H, W)`` for images or ``(L,)`` for signals.
        num_classes: Number of logits.
        channels: Channels of every block.
        depth: Number of blocks; each after the first halves the resolution.
    """

    def __init__(
        self, input_shape: tuple[int, ...], num_classes: int, *, channels: int, depth: int
    ) -> None:
        """Create the layers (see the class docstring)."""
        super().__init__()
        in_channels, kernel, down = _image_layout(input_shape)
        self.input_shape = input_shape
        self.blocks = nn.Sequential(
            *(
                ConvBlock(
                    in_channels if i == 0 else channels,
                    channels,
                    kernel,
                    (1, 1) if i == 0 else down,
                )
                for i in range(depth)
            )
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.head = nn.Linear(channels, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        """Return the logits of a batch."""
        if len(self.input_shape) == 1:
            x = x.view(x.shape[0], 1, 1, x.shape[1])
        return self.head(self.flatten(self.pool(self.blocks(x))))


class PatchTransformer(nn.Module):
    """``patchify -> embed + position -> blocks -> norm -> mean over tokens -> head``.

    The blocks are ``depth`` pre-norm ``TransformerEncoderLayer``s.

    Args:
        input_shape: ``(L,)`` for signals (``L`` divisible by ``patch``) or ``(C, H, W)`` for
            images (``H`` and ``W`` divisible by ``patch``).
        num_classes: Number of logits.
        dim: Token width.
        depth: Number of encoder layers.
        heads: Attention heads (must divide ``dim``).
        patch: Values per token (signals) or tile side (images).
    """

    def __init__(
        self,
        input_shape: tuple[int, ...],
        num_classes: int,
        *,
        dim: int,
        depth: int,
        heads: int,
        patch: int,
    ) -> None:
        """Create the layers (see the class docstring)."""
        super().__init__()
        if dim % heads:
            raise ValueError(f"transformer: heads ({heads}) must divide dim ({dim})")
        if len(input_shape) == 1:
            (length,) = input_shape
            if length % patch:
                raise ValueError(f"transformer: patch {patch} does not divide length {length}")
            tokens, token_values = length // patch, patch
        elif len(input_shape) == 3:
            channels, height, width = input_shape
            if height % patch or width % patch:
                raise ValueError(
                    f"transformer: patch {patch} does not divide the image size {height}x{width}"
                )
            tokens, token_values = (height // patch) * (width // patch), channels * patch * patch
        else:
            raise ValueError(
                f"transformer takes (L,) signals or (C, H, W) images, not {input_shape}"
            )
        self.input_shape = input_shape
        self.patch = patch
        self.embed = nn.Linear(token_values, dim)
        self.position = nn.Parameter(torch.randn(tokens, dim) * 0.02)
        self.blocks = nn.Sequential(
            *(
                # Pre-norm trains stably without warm-up; no dropout, so a forward pass in
                # training mode is deterministic (growth decisions compare such passes).
                nn.TransformerEncoderLayer(
                    dim,
                    heads,
                    dim_feedforward=4 * dim,
                    dropout=0.0,
                    batch_first=True,
                    norm_first=True,
                )
                for _ in range(depth)
            )
        )
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def _tokens(self, x: Tensor) -> Tensor:
        batch = x.shape[0]
        if len(self.input_shape) == 1:
            return x.reshape(batch, -1, self.patch)
        channels, height, width = self.input_shape
        p = self.patch
        tiles = x.reshape(batch, channels, height // p, p, width // p, p)
        # (B, H/p, W/p, C, p, p): one row of C*p*p values per tile, tiles in raster order.
        return tiles.permute(0, 2, 4, 1, 3, 5).reshape(batch, -1, channels * p * p)

    def forward(self, x: Tensor) -> Tensor:
        """Return the logits of a batch."""
        hidden = self.embed(self._tokens(x)) + self.position
        return self.head(self.norm(self.blocks(hidden)).mean(dim=1))


def mlp(
    input_shape: tuple[int, ...],
    num_classes: int,
    *,
    hidden: int = 64,
    depth: int = 2,
    activation: str = "relu",
) -> MLP:
    """Build the ``mlp`` zoo model.

    Args:
        input_shape: Shape of one example (any rank; flattened).
        num_classes: Number of logits.
        hidden: Width of every hidden block.
        depth: Number of hidden blocks.
        activation: One of ``relu``, ``gelu``, ``silu``, ``tanh``.

    Returns:
        The model.

    Raises:
        ValueError: On a non-positive size or an unknown activation.
    """
    _require_positive(num_classes=num_classes, hidden=hidden, depth=depth)
    if activation not in _ACTIVATIONS:
        raise ValueError(
            f"mlp: unknown activation '{activation}'; valid: {', '.join(sorted(_ACTIVATIONS))}"
        )
    in_features = 1
    for size in input_shape:
        in_features *= size
    return MLP(in_features, num_classes, hidden=hidden, depth=depth, activation=activation)


def cnn(
    input_shape: tuple[int, ...], num_classes: int, *, channels: int = 16, depth: int = 2
) -> CNN:
    """Build the ``cnn`` zoo model.

    Args:
        input_shape: ``(C, H, W)`` or ``(L,)``.
        num_classes: Number of logits.
        channels: Channels of every block.
        depth: Number of blocks.

    Returns:
        The model.

    Raises:
        ValueError: On a non-positive size or an input shape of another rank.
    """
    _require_positive(num_classes=num_classes, channels=channels, depth=depth)
    return CNN(input_shape, num_classes, channels=channels, depth=depth)


def resnet(
    input_shape: tuple[int, ...], num_classes: int, *, channels: int = 16, depth: int = 4
) -> ResNet:
    """Build the ``resnet`` zoo model.

    Args:
        input_shape: ``(C, H, W)`` or ``(L,)``.
        num_classes: Number of logits.
        channels: Channels of the stem and every block.
        depth: Number of residual blocks.

    Returns:
        The model.

    Raises:
        ValueError: On a non-positive size or an input shape of another rank.
    """
    _require_positive(num_classes=num_classes, channels=channels, depth=depth)
    return ResNet(input_shape, num_classes, channels=channels, depth=depth)


def transformer(
    input_shape: tuple[int, ...],
    num_classes: int,
    *,
    dim: int = 32,
    depth: int = 2,
    heads: int = 4,
    patch: int = 4,
) -> PatchTransformer:
    """Build the ``transformer`` zoo model.

    Args:
        input_shape: ``(L,)`` or ``(C, H, W)``.
        num_classes: Number of logits.
        dim: Token width.
        depth: Number of encoder layers.
        heads: Attention heads (must divide ``dim``).
        patch: Values per token (signals) or tile side (images).

    Returns:
        The model.

    Raises:
        ValueError: On a non-positive size, ``heads`` not dividing ``dim``, ``patch`` not
            dividing the input, or an input shape of another rank.
    """
    _require_positive(num_classes=num_classes, dim=dim, depth=depth, heads=heads, patch=patch)
    return PatchTransformer(
        input_shape, num_classes, dim=dim, depth=depth, heads=heads, patch=patch
    )


HostBuilder = Callable[..., nn.Module]
"""``builder(input_shape, num_classes, **kwargs)``; its keyword-only parameters are its kwargs."""

ZOO: Mapping[str, HostBuilder] = MappingProxyType(
    {"mlp": mlp, "cnn": cnn, "resnet": resnet, "transformer": transformer}
)
"""The zoo: ``HostSpec.zoo`` names and their builders."""


def _kwarg_fits(value: KwargValue, annotation: type) -> bool:
    # bool is a subclass of int, but `depth: true` in a config is a mistake, not 1.
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, annotation)


def _check_kwargs(name: str, builder: HostBuilder, kwargs: Mapping[str, KwargValue]) -> None:
    parameters = {
        parameter.name: parameter
        for parameter in inspect.signature(builder).parameters.values()
        if parameter.kind is inspect.Parameter.KEYWORD_ONLY
    }
    for key, value in kwargs.items():
        if key not in parameters:
            raise ValueError(
                f"zoo model '{name}' has no kwarg '{key}'; valid: {', '.join(sorted(parameters))}"
            )
        annotation = parameters[key].annotation
        if not _kwarg_fits(value, annotation):
            raise ValueError(
                f"zoo model '{name}': kwarg '{key}' must be {annotation.__name__}, "
                f"got {value!r} ({type(value).__name__})"
            )


def _load_factory(path: str) -> Callable[..., object]:
    module_name, _, attribute = path.partition(":")
    module = importlib.import_module(module_name)
    if not hasattr(module, attribute):
        raise ValueError(f"host factory '{path}': module '{module_name}' has no '{attribute}'")
    factory = getattr(module, attribute)
    if not callable(factory):
        raise TypeError(f"host factory '{path}' is not callable")
    return factory


def build_host(spec: HostSpec, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """Build the host model a run names.

    A zoo model gets ``input_shape``, ``num_classes`` and the spec's kwargs; a factory gets only
    the kwargs (it knows its own model). Weights come from torch's global generator.

    Args:
        spec: A zoo name or a ``package.module:callable`` factory, and kwargs.
        input_shape: Shape of one example (``DatasetSplits.input_shape``).
        num_classes: Number of classes.

    Returns:
        The model (a zoo model comes in training mode).

    Raises:
        ValueError: On an unknown zoo name, an unknown or ill-typed kwarg, a bad size, or a
            factory module without the named attribute.
        TypeError: When the factory is not callable or does not return an ``nn.Module``.
        ImportError: When the factory's module cannot be imported.
    """
    if spec.factory is not None:
        model = _load_factory(spec.factory)(**spec.kwargs)
        if not isinstance(model, nn.Module):
            raise TypeError(
                f"host factory '{spec.factory}' returned {type(model).__name__}, not an nn.Module"
            )
        return model
    name = spec.zoo
    if name is None:
        # HostSpec's validator forbids this; a spec built without validation must not slip by.
        raise ValueError("host spec names neither a zoo model nor a factory")
    if name not in ZOO:
        raise ValueError(f"unknown zoo model '{name}'; valid: {', '.join(sorted(ZOO))}")
    builder = ZOO[name]
    _check_kwargs(name, builder, spec.kwargs)
    return builder(tuple(input_shape), num_classes, **spec.kwargs)
