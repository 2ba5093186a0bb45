"""The host zoo: shapes on every dataset's inputs, block naming, kwargs, factories, determinism."""

from fnmatch import fnmatch

import pytest
import torch
from torch import Tensor, nn

from esper.contracts.run import HostSpec, KwargValue
from esper.zoo import ZOO, build_host
from esper.zoo.models import CNN, MLP, ConvBlock, MLPBlock, PatchTransformer, ResidualBlock, ResNet

FASHION = (1, 28, 28)
MNIST1D = (40,)
DIGITS = (64,)
BATCH = 3
CLASSES = 10
THIS_MODULE = "tests.unit.zoo.test_models"


def tiny_factory(width: int = 4) -> nn.Module:
    """A user's own host, reached through HostSpec.factory."""
    return nn.Sequential(nn.Flatten(), nn.Linear(40, width), nn.ReLU(), nn.Linear(width, 10))


def not_a_module() -> str:
    return "not a module"


NOT_CALLABLE = 3


def _host(zoo: str, shape: tuple[int, ...] = MNIST1D, **kwargs: KwargValue) -> nn.Module:
    return build_host(HostSpec(zoo=zoo, kwargs=kwargs), shape, CLASSES)


def _inputs(shape: tuple[int, ...]) -> Tensor:
    return torch.randn(BATCH, *shape, generator=torch.Generator().manual_seed(0))


def _block_outputs(model: nn.Module, shape: tuple[int, ...]) -> dict[str, tuple[int, ...]]:
    """Run a batch and record the output shape of every module matched by ``blocks.?``."""
    shapes: dict[str, tuple[int, ...]] = {}
    handles = []
    for name, module in model.named_modules():
        if fnmatch(name, "blocks.?"):

            def record(
                module: nn.Module, args: tuple[Tensor, ...], output: Tensor, name: str = name
            ) -> None:
                del module, args
                shapes[name] = tuple(output.shape)

            handles.append(module.register_forward_hook(record))
    model(_inputs(shape))
    for handle in handles:
        handle.remove()
    return shapes


@pytest.mark.parametrize("zoo", ["mlp", "cnn", "resnet", "transformer"])
@pytest.mark.parametrize("shape", [FASHION, MNIST1D, DIGITS])
def test_every_model_classifies_every_dataset(zoo: str, shape: tuple[int, ...]) -> None:
    torch.manual_seed(0)
    model = _host(zoo, shape)
    logits = model(_inputs(shape))
    assert logits.shape == (BATCH, CLASSES)
    logits.square().mean().backward()
    # Every parameter takes part in the forward pass (the position embedding included).
    assert all(parameter.grad is not None for parameter in model.parameters())


def test_mlp_blocks_are_post_activation_features() -> None:
    torch.manual_seed(0)
    model = _host("mlp", FASHION, hidden=8, depth=3, activation="tanh")
    assert isinstance(model, MLP)
    assert _block_outputs(model, FASHION) == {f"blocks.{i}": (BATCH, 8) for i in range(3)}
    assert [type(model.get_submodule(f"blocks.{i}")) for i in range(3)] == [MLPBlock] * 3
    assert isinstance(model.get_submodule("blocks.0.linear"), nn.Linear)
    assert isinstance(model.get_submodule("blocks.0.act"), nn.Tanh)
    assert model.get_submodule("blocks.0.linear").in_features == 784
    # The example run config selects moduleTypes [Linear]: one per block, plus the head.
    linears = [name for name, module in model.named_modules() if type(module) is nn.Linear]
    assert linears == ["blocks.0.linear", "blocks.1.linear", "blocks.2.linear", "head"]
    block = model.get_submodule("blocks.1")
    x = torch.randn(2, 8)
    assert torch.equal(block(x), torch.tanh(block.linear(x)))


def test_cnn_blocks_are_images_halved_after_the_first() -> None:
    torch.manual_seed(0)
    model = _host("cnn", FASHION, channels=6, depth=3)
    assert isinstance(model, CNN)
    assert _block_outputs(model, FASHION) == {
        "blocks.0": (BATCH, 6, 28, 28),
        "blocks.1": (BATCH, 6, 14, 14),
        "blocks.2": (BATCH, 6, 7, 7),
    }
    assert type(model.get_submodule("blocks.0")) is ConvBlock
    assert isinstance(model.get_submodule("blocks.0.conv"), nn.Conv2d)
    assert isinstance(model.get_submodule("blocks.0.norm"), nn.BatchNorm2d)
    assert isinstance(model.get_submodule("blocks.0.act"), nn.ReLU)


def test_cnn_reads_signals_as_one_pixel_high_images() -> None:
    torch.manual_seed(0)
    model = _host("cnn", MNIST1D, channels=4, depth=2)
    assert _block_outputs(model, MNIST1D) == {
        "blocks.0": (BATCH, 4, 1, 40),
        "blocks.1": (BATCH, 4, 1, 20),
    }
    assert model.get_submodule("blocks.0.conv").kernel_size == (1, 3)


def test_resnet_blocks_are_residual_images_halved_at_odd_blocks() -> None:
    torch.manual_seed(0)
    model = _host("resnet", FASHION, channels=6, depth=4)
    assert isinstance(model, ResNet)
    assert _block_outputs(model, FASHION) == {
        "blocks.0": (BATCH, 6, 28, 28),
        "blocks.1": (BATCH, 6, 14, 14),
        "blocks.2": (BATCH, 6, 14, 14),
        "blocks.3": (BATCH, 6, 7, 7),
    }
    assert type(model.stem) is ConvBlock
    assert all(type(block) is ResidualBlock for block in model.blocks)
    assert isinstance(model.blocks[0].shortcut, nn.Identity)
    assert model.blocks[1].shortcut[0].stride == (2, 2)
    assert model.get_submodule("blocks.0.conv1").kernel_size == (3, 3)


def test_resnet_block_adds_its_residual_to_the_shortcut() -> None:
    torch.manual_seed(0)
    block = ResidualBlock(4, (3, 3), (1, 1)).eval()
    x = torch.randn(2, 4, 5, 5)
    residual = block.norm2(block.conv2(block.act1(block.norm1(block.conv1(x)))))
    assert torch.equal(block(x), torch.relu(x + residual))


def test_resnet_reads_signals_as_one_pixel_high_images() -> None:
    torch.manual_seed(0)
    model = _host("resnet", MNIST1D, channels=4, depth=2)
    assert _block_outputs(model, MNIST1D) == {
        "blocks.0": (BATCH, 4, 1, 40),
        "blocks.1": (BATCH, 4, 1, 20),
    }
    assert model.get_submodule("blocks.1.conv1").stride == (1, 2)


def test_transformer_blocks_are_token_sequences() -> None:
    torch.manual_seed(0)
    signal = _host("transformer", MNIST1D, dim=16, depth=2, heads=2, patch=4)
    assert isinstance(signal, PatchTransformer)
    assert _block_outputs(signal, MNIST1D) == {
        "blocks.0": (BATCH, 10, 16),
        "blocks.1": (BATCH, 10, 16),
    }
    assert type(signal.get_submodule("blocks.0")) is nn.TransformerEncoderLayer
    image = _host("transformer", FASHION, dim=8, depth=1, heads=1, patch=7)
    assert _block_outputs(image, FASHION) == {"blocks.0": (BATCH, 16, 8)}
    assert image.get_submodule("embed").in_features == 49


def test_transformer_tiles_images_in_raster_order() -> None:
    torch.manual_seed(0)
    model = _host("transformer", (2, 4, 6), patch=2)
    assert isinstance(model, PatchTransformer)
    image = torch.arange(2 * 4 * 6, dtype=torch.float32).reshape(1, 2, 4, 6)
    tokens = model._tokens(image)
    assert tokens.shape == (1, 6, 8)
    # The second tile is rows 0-1, columns 2-3 of both channels.
    assert torch.equal(tokens[0, 1], image[0, :, 0:2, 2:4].reshape(-1))


def test_blocks_glob_selects_only_the_blocks() -> None:
    model = _host("transformer", MNIST1D, depth=2)
    selected = [name for name, _ in model.named_modules() if fnmatch(name, "blocks.?")]
    assert selected == ["blocks.0", "blocks.1"]
    # The pitfall the module docstring warns about: fnmatch's * crosses dots.
    too_many = [name for name, _ in model.named_modules() if fnmatch(name, "blocks.*")]
    assert "blocks.0.self_attn" in too_many


@pytest.mark.parametrize("zoo", ["mlp", "cnn", "resnet", "transformer"])
def test_models_are_deterministic_under_the_callers_seed(zoo: str) -> None:
    torch.manual_seed(7)
    first = _host(zoo).state_dict()
    torch.manual_seed(7)
    second = _host(zoo).state_dict()
    torch.manual_seed(8)
    third = _host(zoo).state_dict()
    assert first.keys() == second.keys()
    assert all(torch.equal(first[key], second[key]) for key in first)
    assert not all(torch.equal(first[key], third[key]) for key in first)


def test_transformer_training_forward_is_deterministic() -> None:
    # No dropout: two forward passes in training mode agree.
    torch.manual_seed(0)
    model = _host("transformer").train()
    x = _inputs(MNIST1D)
    assert torch.equal(model(x), model(x))


def test_defaults() -> None:
    mlp = _host("mlp")
    assert len(mlp.blocks) == 2
    assert mlp.head.in_features == 64
    assert isinstance(mlp.get_submodule("blocks.0.act"), nn.ReLU)
    cnn = _host("cnn", FASHION)
    assert len(cnn.blocks) == 2
    assert cnn.head.in_features == 16
    resnet = _host("resnet", FASHION)
    assert len(resnet.blocks) == 4
    assert resnet.head.in_features == 16
    transformer = _host("transformer")
    assert len(transformer.blocks) == 2
    assert transformer.head.in_features == 32
    assert transformer.blocks[0].self_attn.num_heads == 4
    assert transformer.position.shape == (10, 32)


def test_zoo_lists_the_four_models() -> None:
    assert sorted(ZOO) == ["cnn", "mlp", "resnet", "transformer"]


def test_unknown_zoo_name_lists_the_valid_ones() -> None:
    with pytest.raises(
        ValueError, match="unknown zoo model 'vgg'; valid: cnn, mlp, resnet, transformer"
    ):
        _host("vgg")


@pytest.mark.parametrize(
    ("zoo", "kwargs", "message"),
    [
        (
            "mlp",
            {"width": 3},
            "zoo model 'mlp' has no kwarg 'width'; valid: activation, depth, hidden",
        ),
        ("cnn", {"hidden": 3}, "zoo model 'cnn' has no kwarg 'hidden'; valid: channels, depth"),
        ("mlp", {"depth": 2.0}, "kwarg 'depth' must be int, got 2.0"),
        ("mlp", {"depth": True}, "kwarg 'depth' must be int, got True"),
        ("mlp", {"hidden": "64"}, "kwarg 'hidden' must be int"),
        ("mlp", {"activation": 1}, "kwarg 'activation' must be str"),
        (
            "mlp",
            {"activation": "swish"},
            "unknown activation 'swish'; valid: gelu, relu, silu, tanh",
        ),
        ("mlp", {"depth": 0}, "depth must be at least 1, got 0"),
        ("cnn", {"channels": -1}, "channels must be at least 1"),
        ("resnet", {"depth": 0}, "depth must be at least 1"),
        ("transformer", {"heads": 0}, "heads must be at least 1"),
        ("transformer", {"dim": 30, "heads": 4}, r"heads \(4\) must divide dim \(30\)"),
        ("transformer", {"patch": 3}, "patch 3 does not divide length 40"),
    ],
)
def test_bad_kwargs_are_named(zoo: str, kwargs: dict[str, KwargValue], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        _host(zoo, MNIST1D, **kwargs)


def test_transformer_patch_must_divide_images() -> None:
    with pytest.raises(ValueError, match="patch 3 does not divide the image size 28x28"):
        _host("transformer", FASHION, patch=3)


@pytest.mark.parametrize("zoo", ["cnn", "resnet", "transformer"])
def test_unsupported_input_ranks_are_refused(zoo: str) -> None:
    with pytest.raises(ValueError, match=r"not \(4, 10\)"):
        _host(zoo, (4, 10))


def test_num_classes_must_be_positive() -> None:
    with pytest.raises(ValueError, match="num_classes must be at least 1"):
        build_host(HostSpec(zoo="mlp"), MNIST1D, 0)


def test_a_spec_without_a_source_is_refused() -> None:
    spec = HostSpec.model_construct(zoo=None, factory=None, kwargs={})
    with pytest.raises(ValueError, match="neither a zoo model nor a factory"):
        build_host(spec, MNIST1D, CLASSES)


def test_factory_builds_the_users_model_with_its_kwargs() -> None:
    torch.manual_seed(0)
    model = build_host(
        HostSpec(factory=f"{THIS_MODULE}:tiny_factory", kwargs={"width": 5}), MNIST1D, CLASSES
    )
    assert isinstance(model, nn.Sequential)
    assert model[1].out_features == 5
    assert model(_inputs(MNIST1D)).shape == (BATCH, CLASSES)


def test_factory_returning_something_else_is_a_type_error() -> None:
    with pytest.raises(TypeError, match=f"'{THIS_MODULE}:not_a_module' returned str"):
        build_host(HostSpec(factory=f"{THIS_MODULE}:not_a_module"), MNIST1D, CLASSES)


def test_factory_that_is_not_callable_is_a_type_error() -> None:
    with pytest.raises(TypeError, match=f"'{THIS_MODULE}:NOT_CALLABLE' is not callable"):
        build_host(HostSpec(factory=f"{THIS_MODULE}:NOT_CALLABLE"), MNIST1D, CLASSES)


def test_factory_naming_a_missing_attribute() -> None:
    with pytest.raises(ValueError, match=f"module '{THIS_MODULE}' has no 'missing'"):
        build_host(HostSpec(factory=f"{THIS_MODULE}:missing"), MNIST1D, CLASSES)


def test_factory_in_a_missing_module() -> None:
    with pytest.raises(ModuleNotFoundError, match="no_such_package"):
        build_host(HostSpec(factory="no_such_package.models:build"), MNIST1D, CLASSES)


def test_factory_with_a_bad_kwarg() -> None:
    with pytest.raises(TypeError, match="unexpected keyword argument 'depth'"):
        build_host(
            HostSpec(factory=f"{THIS_MODULE}:tiny_factory", kwargs={"depth": 2}), MNIST1D, CLASSES
        )
