"""wrap(): slots on real architectures, selection, the shape probe, the model graph; unwrap()."""

import copy
import logging
from collections.abc import Callable
from dataclasses import dataclass

import pytest
import torch
from torch import Tensor, nn

from esper.contracts.blueprint import Layout
from esper.contracts.run import InjectionSpec
from esper.contracts.seed import SeedStage
from esper.kasmina import Grafted, MorphogeneticModel, SeedSlot, unwrap, wrap
from esper.kasmina.wrap import SlotHook, Target

# Hosts ----------------------------------------------------------------------------------------


def small_mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 4)
    )


def small_cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 10),
    )


def small_transformer() -> nn.Module:
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(
        d_model=16, nhead=4, dim_feedforward=32, dropout=0.0, batch_first=True
    )
    return nn.TransformerEncoder(layer, num_layers=2, enable_nested_tensor=False)


class TwoTower(nn.Module):
    """A custom host: registration order differs from execution order, functional ops, a
    learned gate, a residual and a real (p > 0) dropout."""

    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Linear(12, 3)
        self.stem = nn.Linear(6, 12)
        self.norm = nn.LayerNorm(12)
        self.dropout = nn.Dropout(0.25)
        self.gate = nn.Parameter(torch.linspace(0.5, 1.5, 12))

    def forward(self, x: Tensor) -> Tensor:
        hidden = torch.tanh(self.stem(x))
        hidden = self.dropout(self.norm(hidden) * self.gate + hidden)
        return self.head(hidden)


def two_tower() -> nn.Module:
    torch.manual_seed(0)
    return TwoTower()


@dataclass(frozen=True)
class Architecture:
    name: str
    build: Callable[[], nn.Module]
    targets: list[Target] | InjectionSpec
    input_shape: tuple[int, ...]
    probe: bool
    slots: list[str]

    def input(self, seed: int) -> Tensor:
        return torch.randn(self.input_shape, generator=torch.Generator().manual_seed(seed))

    def wrap(self, host: nn.Module) -> MorphogeneticModel:
        example = self.input(99) if self.probe else None
        return wrap(host, self.targets, example_input=example)


ARCHITECTURES = [
    Architecture("mlp", small_mlp, [nn.Linear], (5, 8), False, ["0", "2", "4"]),
    Architecture("cnn", small_cnn, [nn.Conv2d], (4, 3, 8, 8), True, ["0", "3"]),
    Architecture(
        "transformer-by-class",
        small_transformer,
        [nn.TransformerEncoderLayer],
        (3, 5, 16),
        True,
        ["layers.0", "layers.1"],
    ),
    Architecture(
        "transformer-by-glob",
        small_transformer,
        ["layers.?"],
        (3, 5, 16),
        True,
        ["layers.0", "layers.1"],
    ),
    Architecture(
        "custom",
        two_tower,
        InjectionSpec(module_globs=["stem"], module_types=["LayerNorm", "Linear"]),
        (5, 6),
        True,
        ["head", "stem", "norm"],
    ),
]


def _step(model: nn.Module, parameters: nn.Module, x: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
    """One forward and backward from a fixed RNG state; the output and the gradients."""
    for parameter in parameters.parameters():
        parameter.grad = None
    torch.manual_seed(1234)
    output = model(x)
    output.square().sum().backward()
    gradients = {}
    for name, parameter in parameters.named_parameters():
        assert parameter.grad is not None, name
        gradients[name] = parameter.grad.clone()
    return output.detach(), gradients


def _assert_same_tensors(left: dict[str, Tensor], right: dict[str, Tensor]) -> None:
    assert left.keys() == right.keys()
    for name, tensor in left.items():
        assert torch.equal(tensor, right[name]), name


# Dormant slots change nothing -----------------------------------------------------------------


@pytest.mark.parametrize("architecture", ARCHITECTURES, ids=lambda a: a.name)
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_dormant_slots_leave_outputs_and_gradients_bit_identical(
    architecture: Architecture, training: bool
) -> None:
    host = architecture.build()
    reference = copy.deepcopy(host)
    model = architecture.wrap(host)
    assert [slot.slot_id for slot in model.seed_slots()] == architecture.slots
    model.train(training)
    reference.train(training)

    for step in range(3):
        x = architecture.input(step)
        wrapped_output, wrapped_gradients = _step(model, model.host, x)
        reference_output, reference_gradients = _step(reference, reference, x)
        assert torch.equal(wrapped_output, reference_output)
        _assert_same_tensors(wrapped_gradients, reference_gradients)

    # Batch-norm running statistics moved the same way (train) or not at all (eval).
    _assert_same_tensors(dict(model.host.named_buffers()), dict(reference.named_buffers()))
    if not training:
        with torch.no_grad():
            x = architecture.input(7)
            assert torch.equal(model(x), reference(x))


def test_dropout_really_samples_so_the_comparison_above_needs_the_fixed_rng() -> None:
    host = two_tower().train()
    x = torch.randn(5, 6)
    assert not torch.equal(host(x), host(x))


@pytest.mark.parametrize("architecture", ARCHITECTURES, ids=lambda a: a.name)
def test_wrapping_shares_the_hosts_parameters(architecture: Architecture) -> None:
    host = architecture.build()
    parameters = list(host.parameters())
    count = sum(p.numel() for p in parameters)

    model = architecture.wrap(host)

    assert model.host is host
    wrapped = list(model.parameters())
    assert len(wrapped) == len(parameters)
    assert all(a is b for a, b in zip(wrapped, parameters, strict=True))
    assert model.param_count() == model.host_param_count() == count


@pytest.mark.parametrize("architecture", ARCHITECTURES, ids=lambda a: a.name)
def test_each_slot_is_one_forward_hook_on_its_module_and_nothing_else(
    architecture: Architecture,
) -> None:
    model = architecture.wrap(architecture.build())
    for path, module in model.host.named_modules():
        hooks = list(module._forward_hooks.values())
        if path in architecture.slots:
            [hook] = hooks
            assert isinstance(hook, SlotHook)
            assert hook.slot is model.slot(path)
        else:
            assert hooks == [], path
        assert not module._forward_pre_hooks
        assert not module._backward_hooks


# The probe ------------------------------------------------------------------------------------


def test_probe_changes_no_batch_norm_statistics_and_no_training_flags() -> None:
    host = small_cnn().train()
    host(torch.randn(4, 3, 8, 8))  # running statistics away from their initial values
    host[4].eval()  # a mixed-mode model: the probe must restore each module's own flag
    before = {name: tensor.clone() for name, tensor in host.state_dict().items()}
    modes = {name: module.training for name, module in host.named_modules()}

    wrap(host, [nn.Conv2d], example_input=torch.randn(4, 3, 8, 8) * 5 + 3)

    _assert_same_tensors(host.state_dict(), before)
    assert {name: module.training for name, module in host.named_modules()} == modes


def test_probe_finds_each_layout_from_one_forward() -> None:
    host = small_cnn()
    model = wrap(host, [nn.Conv2d, nn.Flatten], example_input=torch.randn(2, 3, 8, 8))
    image = model.slot("3").descriptor
    assert (image.layout, image.channels, image.shape) == (Layout.IMAGE, 8, [8, 8, 8])
    assert image.module_type == "Conv2d"
    assert image.bindings() == {"C": 8, "H": 8, "W": 8}
    features = model.slot("7").descriptor
    assert (features.layout, features.channels, features.shape) == (Layout.FEATURES, 8, [8])

    sequence = wrap(small_transformer(), ["layers.1"], example_input=torch.randn(3, 5, 16)).slot(
        "layers.1"
    )
    assert (sequence.descriptor.layout, sequence.descriptor.channels) == (Layout.SEQUENCE, 16)
    assert sequence.descriptor.bindings() == {"T": 5, "C": 16}


def test_shapes_known_from_parameters_need_no_example_input() -> None:
    host = nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.LayerNorm(6))
    model = wrap(host, [nn.Linear, nn.BatchNorm1d, nn.LayerNorm])
    assert [(s.slot_id, s.descriptor.layout, s.descriptor.shape) for s in model.seed_slots()] == [
        ("0", Layout.FEATURES, [6]),
        ("1", Layout.FEATURES, [6]),
        ("2", Layout.FEATURES, [6]),
    ]


@pytest.mark.parametrize(
    ("host", "path", "kind"),
    [
        (small_cnn, "0", "Conv2d"),
        (lambda: nn.Sequential(nn.Linear(4, 6), nn.LayerNorm([3, 2])), "1", "LayerNorm"),
    ],
)
def test_a_shape_the_parameters_cannot_tell_needs_example_input(
    host: Callable[[], nn.Module], path: str, kind: str
) -> None:
    with pytest.raises(ValueError, match=rf"'{path}' \({kind}\).*pass example_input="):
        wrap(host(), [path])


class WithSpare(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.used = nn.Linear(4, 4)
        self.spare = nn.Linear(4, 4)

    def forward(self, x: Tensor) -> Tensor:
        return self.used(x)


def test_a_module_the_probe_never_ran_gets_no_slot(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="esper.kasmina"):
        model = wrap(WithSpare(), [nn.Linear], example_input=torch.randn(2, 4))
    assert [slot.slot_id for slot in model.seed_slots()] == ["used"]
    assert any("module 'spare' did not run in the example forward" in m for m in caplog.messages)


def test_targets_that_never_run_are_an_error() -> None:
    with pytest.raises(ValueError, match=r"none of the modules \['spare'\] selects ran"):
        wrap(WithSpare(), ["spare"], example_input=torch.randn(2, 4))


def test_an_activation_of_unsupported_rank_is_an_error() -> None:
    host = nn.Sequential(nn.Conv3d(1, 2, 1))
    with pytest.raises(ValueError, match=r"'0' outputs shape \[1, 2, 2, 2, 2\]; a slot needs"):
        wrap(host, [nn.Conv3d], example_input=torch.randn(1, 1, 2, 2, 2))


@pytest.mark.parametrize("stage", [SeedStage.TRAINING, SeedStage.BLENDING])
def test_seeds_follow_the_dtype_of_the_host(
    grow: Callable[..., SeedSlot], stage: SeedStage
) -> None:
    host = small_mlp().double()
    model = wrap(host, ["2"])
    slot = grow(model.slot("2"), stage, alpha=0.5 if stage is SeedStage.BLENDING else None)
    assert all(p.dtype == torch.float64 for p in slot.seed_parameters())
    output = model(torch.randn(3, 8, dtype=torch.float64))
    assert output.dtype == torch.float64


def test_device_of_a_host_without_parameters() -> None:
    buffers_only = nn.Sequential(nn.BatchNorm1d(4, affine=False))
    assert wrap(buffers_only, ["0"]).slot("0").alpha.device == torch.device("cpu")
    stateless = nn.Sequential(nn.ReLU())
    model = wrap(stateless, ["0"], example_input=torch.randn(2, 3))
    assert model.slot("0").alpha.device == torch.device("cpu")


class Shared(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inner = nn.Linear(4, 4)
        self.out = nn.Linear(4, 2)

    def forward(self, x: Tensor) -> Tensor:
        return self.out(self.inner(torch.relu(self.inner(x))))


def test_a_module_run_twice_is_one_slot_that_acts_on_both_calls(
    grow: Callable[..., SeedSlot],
) -> None:
    host = Shared()
    model = wrap(host, ["inner"], example_input=torch.randn(2, 4))
    assert [(n.module_path, n.slot_id) for n in model.graph().nodes] == [
        ("inner", "inner"),
        ("out", None),
    ]
    seed = grow(model.slot("inner"), SeedStage.FOSSILIZED).seed
    assert seed is not None
    x = torch.randn(3, 4)
    with torch.no_grad():
        h1 = nn.functional.linear(x, host.inner.weight, host.inner.bias)
        h1 = h1 + seed(h1)
        h2 = nn.functional.linear(torch.relu(h1), host.inner.weight, host.inner.bias)
        h2 = h2 + seed(h2)
        torch.testing.assert_close(model(x), host.out(h2))


class Exploding(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.first = nn.Linear(4, 4)
        self.norm = nn.BatchNorm1d(4)

    def forward(self, x: Tensor) -> Tensor:
        hidden = self.norm(self.first(x))
        raise RuntimeError(f"cannot handle {tuple(hidden.shape)}")


def test_a_failing_probe_restores_modes_and_removes_its_hooks() -> None:
    host = Exploding().train()
    with pytest.raises(RuntimeError, match=r"cannot handle \(2, 4\)"):
        wrap(host, ["first"], example_input=torch.randn(2, 4))
    assert all(module.training for module in host.modules())
    assert all(not module._forward_hooks for module in host.modules())
    assert host.norm.num_batches_tracked.item() == 0


# Selection ------------------------------------------------------------------------------------


class WideLinear(nn.Linear):
    pass


def _selected(host: nn.Module, targets: list[Target] | InjectionSpec) -> list[str]:
    return [slot.slot_id for slot in wrap(host, targets).seed_slots()]


def test_selection_by_glob_class_and_injection_spec() -> None:
    host = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), WideLinear(8, 8), nn.LayerNorm(8))
    assert _selected(host, ["[02]"]) == ["0", "2"]
    assert _selected(host, [nn.LayerNorm, "0"]) == ["0", "3"]
    # A class selects its subclasses too; a class name in an InjectionSpec matches exactly.
    assert _selected(host, [nn.Linear]) == ["0", "2"]
    assert _selected(host, InjectionSpec(module_types=["Linear"])) == ["0"]
    assert _selected(host, InjectionSpec(module_types=["WideLinear", "LayerNorm"])) == ["2", "3"]
    assert _selected(host, InjectionSpec(module_globs=["3"], module_types=["Linear"])) == ["0", "3"]
    # A module selected twice gets one slot.
    assert _selected(host, ["0", nn.Linear]) == ["0", "2"]


def test_a_glob_is_fnmatch_over_dotted_names() -> None:
    host = small_transformer()
    example = torch.randn(2, 5, 16)
    assert [s.slot_id for s in wrap(host, ["layers.*.linear?"], example).seed_slots()] == [
        "layers.0.linear1",
        "layers.0.linear2",
        "layers.1.linear1",
        "layers.1.linear2",
    ]


@pytest.mark.parametrize(
    ("targets", "shown"),
    [
        (["nothing*"], r"\['nothing\*'\]"),
        ([nn.Conv2d], r"\['Conv2d'\]"),
        (
            InjectionSpec(module_globs=["x"], module_types=["GRU"]),
            r"\(globs \['x'\], types \['GRU'\]\)",
        ),
    ],
)
def test_targets_that_select_nothing_are_an_error(
    targets: list[Target] | InjectionSpec, shown: str
) -> None:
    with pytest.raises(ValueError, match=rf"the targets {shown} select no module of the model"):
        wrap(small_mlp(), targets)


@pytest.mark.parametrize("target", [nn.Linear(2, 2), 3, int])
def test_a_target_that_is_neither_glob_nor_module_class_is_a_type_error(target: object) -> None:
    with pytest.raises(TypeError, match=r"a target is a glob or an nn\.Module class"):
        wrap(small_mlp(), [target])  # type: ignore[list-item]


def test_slot_ids_that_collide_are_an_error() -> None:
    host = nn.Module()
    host.add_module("a-b", nn.Linear(2, 2))
    host.add_module("a", nn.Module())
    host.a.add_module("b", nn.Linear(2, 2))
    with pytest.raises(ValueError, match=r"slot ids collide: 'a\.b'"):
        wrap(host, [nn.Linear])


def test_unknown_slot_is_a_key_error_listing_the_slots() -> None:
    model = wrap(small_mlp(), [nn.Linear])
    with pytest.raises(KeyError, match="no slot '1'; slots: 0, 2, 4"):
        model.slot("1")


# Active slots need tensors --------------------------------------------------------------------


class PairLinear(nn.Linear):
    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:  # type: ignore[override]
        output = super().forward(x)
        return output, output


class PairHolder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.pair = PairLinear(4, 16)

    def forward(self, x: Tensor) -> Tensor:
        return self.pair(x)[0]


def test_a_dormant_slot_ignores_a_non_tensor_output() -> None:
    host = PairHolder()
    model = wrap(host, ["pair"])
    x = torch.randn(2, 4)
    assert torch.equal(model(x), host.pair(x)[0])


@pytest.mark.parametrize("make_busy", ["grow", "collect"])
def test_a_busy_slot_on_a_non_tensor_output_is_a_type_error_naming_the_slot(
    make_busy: str, grow: Callable[..., SeedSlot]
) -> None:
    model = wrap(PairHolder(), ["pair"])
    if make_busy == "grow":
        grow(model.slot("pair"), SeedStage.TRAINING)
    else:
        model.slot("pair").collecting = True
    with pytest.raises(TypeError, match="slot 'pair': PairLinear returned tuple, and a seed slot"):
        model(torch.randn(2, 4))


# The model graph ------------------------------------------------------------------------------


def test_graph_without_example_input_follows_registration_order() -> None:
    model = wrap(small_mlp(), [nn.Linear])
    graph = model.graph()
    assert [(n.module_path, n.module_type, n.param_count, n.slot_id) for n in graph.nodes] == [
        ("0", "Linear", 8 * 16 + 16, "0"),
        ("1", "ReLU", 0, None),
        ("2", "Linear", 16 * 16 + 16, "2"),
        ("3", "ReLU", 0, None),
        ("4", "Linear", 16 * 4 + 4, "4"),
    ]
    assert [(e.source, e.target) for e in graph.edges] == [(0, 1), (1, 2), (2, 3), (3, 4)]
    assert [s.slot_id for s in graph.slots] == ["0", "2", "4"]
    assert graph.host_param_count == model.host_param_count()


def test_graph_with_example_input_follows_execution_order() -> None:
    model = wrap(two_tower(), ["stem", "head"], example_input=torch.randn(2, 6))
    graph = model.graph()
    assert [(n.module_path, n.slot_id) for n in graph.nodes] == [
        ("stem", "stem"),
        ("norm", None),
        ("dropout", None),
        ("head", "head"),
    ]
    # Data flow: dropout reads norm(h) * gate + h, so stem feeds it directly too.
    assert [(e.source, e.target) for e in graph.edges] == [(0, 1), (0, 2), (1, 2), (2, 3)]


def test_graph_shows_a_slot_on_a_container_module() -> None:
    model = wrap(
        small_transformer(), [nn.TransformerEncoderLayer], example_input=torch.randn(2, 5, 16)
    )
    nodes = [(n.module_path, n.slot_id) for n in model.graph().nodes]
    assert ("layers.0", "layers.0") in nodes
    assert ("layers.1", "layers.1") in nodes
    assert ("layers.0.linear1", None) in nodes
    paths = [path for path, _ in nodes]
    # A container's slot comes after the modules it ran.
    assert paths.index("layers.0.linear2") < paths.index("layers.0") < paths.index("layers.1")


# unwrap ---------------------------------------------------------------------------------------


def _no_hooks_anywhere(module: nn.Module) -> bool:
    return all(
        not m._forward_hooks and not m._forward_pre_hooks and not m._backward_hooks
        for m in module.modules()
    )


@pytest.fixture
def grown(grow: Callable[..., SeedSlot]) -> MorphogeneticModel:
    """An MLP whose five slots hold seeds in five different stages."""
    host = nn.Sequential(
        nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 16)
    )
    model = wrap(host, [nn.Linear, nn.ReLU], example_input=torch.randn(2, 8))
    grow(model.slot("0"), SeedStage.FOSSILIZED, kernel=1)
    grow(model.slot("1"), SeedStage.PROBATION, kernel=2, blueprint="low-rank-adapter")
    grow(model.slot("2"), SeedStage.BLENDING, kernel=3, alpha=0.3)
    grow(model.slot("3"), SeedStage.TRAINING, kernel=4)
    grow(model.slot("4"), SeedStage.GERMINATED, kernel=5)
    return model.eval()


def test_unwrap_builds_the_seeds_into_a_plain_copy_of_the_host(
    grown: MorphogeneticModel,
) -> None:
    x = torch.randn(6, 8)
    with torch.no_grad():
        expected = grown(x)

    plain = unwrap(grown)

    assert type(plain) is nn.Sequential
    assert _no_hooks_anywhere(plain)
    assert not any(isinstance(m, (MorphogeneticModel, SeedSlot)) for m in plain.modules())
    assert [type(m) for m in plain] == [Grafted, Grafted, Grafted, nn.ReLU, nn.Linear]
    assert plain[0].alpha == 1.0
    assert plain[1].alpha == 1.0
    assert plain[2].alpha == pytest.approx(0.3)
    with torch.no_grad():
        assert torch.equal(plain(x), expected)
    # The seeds still training or just germinated contribute nothing yet and are left out.
    bottleneck = {f"seed.layers.{n}.{p}" for n in ("down", "up") for p in ("weight", "bias")}
    assert set(plain.state_dict()) == {
        "0.host.weight",
        "0.host.bias",
        *(f"0.{key}" for key in bottleneck),
        "1.seed.layers.lora.down.weight",
        "1.seed.layers.lora.up.weight",
        "2.host.weight",
        "2.host.bias",
        *(f"2.{key}" for key in bottleneck),
        "4.weight",
        "4.bias",
    }


def test_unwrap_leaves_the_wrapped_model_as_it_was(grown: MorphogeneticModel) -> None:
    x = torch.randn(6, 8)
    with torch.no_grad():
        before = grown(x)
    stages = [slot.stage for slot in grown.seed_slots()]
    host_parameters = list(grown.host.parameters())

    plain = unwrap(grown)

    with torch.no_grad():
        assert torch.equal(grown(x), before)
    assert [slot.stage for slot in grown.seed_slots()] == stages
    assert all(type(m) in (nn.Linear, nn.ReLU) for m in grown.host)
    assert all(isinstance(h, SlotHook) for m in grown.host for h in m._forward_hooks.values())
    copied = {id(p) for p in plain.parameters()}
    assert not copied & {id(p) for p in host_parameters}
    assert not copied & {id(p) for s in grown.seed_slots() for p in s.seed_parameters()}


def test_unwrap_of_an_ungrown_model_is_a_copy_of_the_host() -> None:
    host = small_mlp()
    plain = unwrap(wrap(host, [nn.Linear]))
    assert type(plain) is nn.Sequential
    assert _no_hooks_anywhere(plain)
    assert plain is not host
    x = torch.randn(3, 8)
    assert torch.equal(plain(x), host(x))


def test_unwrap_of_a_fossilized_transformer_layer_still_runs(
    grow: Callable[..., SeedSlot],
) -> None:
    model = wrap(
        small_transformer(), [nn.TransformerEncoderLayer], example_input=torch.randn(2, 5, 16)
    )
    grow(model.slot("layers.0"), SeedStage.FOSSILIZED)
    model.eval()
    x = torch.randn(2, 5, 16)
    with torch.no_grad():
        expected = model(x)
    plain = unwrap(model)
    with torch.no_grad():
        assert torch.equal(plain(x), expected)


# deepcopy -------------------------------------------------------------------------------------


def test_a_deep_copy_has_independent_slots(grow: Callable[..., SeedSlot]) -> None:
    model = wrap(small_mlp(), [nn.Linear])
    grow(model.slot("2"), SeedStage.BLENDING, alpha=0.5)
    x = torch.randn(4, 8)
    before = model(x).detach()

    twin = copy.deepcopy(model)
    [hook] = twin.host[2]._forward_hooks.values()
    assert isinstance(hook, SlotHook)
    assert hook.slot is twin.slot("2") is not model.slot("2")
    assert [slot.slot_id for slot in twin.seed_slots()] == ["0", "2", "4"]
    assert all(slot is twin.slot(slot.slot_id) for slot in twin.seed_slots())
    assert torch.equal(twin(x), before)

    twin.slot("2").advance(10)
    assert model.slot("2").stage is SeedStage.BLENDING
    assert not torch.equal(twin(x), before)
    twin.slot("2").cull(11)

    assert model.slot("2").stage is SeedStage.BLENDING
    assert model.slot("2").alpha.item() == 0.5
    assert torch.equal(model(x), before)
    assert torch.equal(twin(x), twin.host(x))
    assert not torch.equal(twin(x), before)
