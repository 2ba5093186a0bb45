"""A seed slot's lifecycle (the contract's transition table), its forward, gradient isolation."""

import copy
import math
from collections.abc import Callable

import pytest
import torch
from torch import Tensor, nn

from esper.blueprints.builder import build_module
from esper.blueprints.library import builtin
from esper.contracts.lifecycle import IllegalTransitionError
from esper.contracts.seed import SeedStage
from esper.kasmina import MorphogeneticModel, SeedSlot, StageChange, wrap

Grow = Callable[..., SeedSlot]
KERNEL = "k-" + "ab" * 12
X = torch.randn(6, 8, generator=torch.Generator().manual_seed(11))


def _fresh_seed(slot: SeedSlot, name: str = "bottleneck-mlp") -> nn.Module:
    return build_module(builtin(name), slot.descriptor.bindings())


def _germinate(slot: SeedSlot, seed: nn.Module | None = None, step: int = 3) -> StageChange:
    return slot.germinate(
        _fresh_seed(slot) if seed is None else seed,
        kernel_id=KERNEL,
        ir=builtin("bottleneck-mlp"),
        bindings=slot.descriptor.bindings(),
        blueprint_name="bottleneck-mlp",
        step=step,
    )


@pytest.fixture
def model(mlp: nn.Sequential) -> MorphogeneticModel:
    return wrap(mlp, [nn.Linear])


@pytest.fixture
def reference(mlp: nn.Sequential) -> nn.Sequential:
    """An untouched copy of the host (taken before wrapping changes anything)."""
    return copy.deepcopy(mlp)


# Germination ----------------------------------------------------------------------------------


def test_germination_records_the_seed_and_leaves_the_host_function_unchanged(
    model: MorphogeneticModel, reference: nn.Sequential
) -> None:
    slot = model.slot("2")
    seed = _fresh_seed(slot)
    host_params = model.host_param_count()

    change = _germinate(slot, seed, step=3)

    assert change == StageChange("2", SeedStage.DORMANT, SeedStage.GERMINATED, 3, KERNEL)
    assert slot.stage is SeedStage.GERMINATED
    assert slot.state.kernel_id == KERNEL
    assert slot.state.germinated_step == slot.state.stage_entered_step == 3
    assert slot.state.blueprint_hash == builtin("bottleneck-mlp").canonical_hash()
    assert slot.blueprint == builtin("bottleneck-mlp")
    assert slot.blueprint_name == "bottleneck-mlp"
    assert slot.seed is seed
    assert slot.seed_parameters() == list(seed.parameters())
    assert slot.seed_param_count() == sum(p.numel() for p in seed.parameters()) > 0
    assert model.param_count() == host_params + slot.seed_param_count()
    assert slot.idle
    assert torch.equal(model(X), reference(X))


def test_an_empty_slot_has_no_seed(model: MorphogeneticModel) -> None:
    slot = model.slot("0")
    assert slot.seed is None
    assert slot.blueprint is None
    assert slot.blueprint_name is None
    assert slot.seed_parameters() == []
    assert slot.seed_param_count() == 0
    assert slot.state.kernel_id is None


def test_the_seed_follows_the_models_mode_when_germinated(model: MorphogeneticModel) -> None:
    model.eval()
    seed = _fresh_seed(model.slot("0")).train()
    _germinate(model.slot("0"), seed)
    assert not seed.training
    model.train()
    assert seed.training


def test_bindings_that_do_not_fit_the_slot_are_refused(model: MorphogeneticModel) -> None:
    slot = model.slot("2")
    with pytest.raises(ValueError, match=r"slot '2' has sizes \{'C': 16\}") as caught:
        slot.germinate(
            build_module(builtin("bottleneck-mlp"), {"C": 32}),
            kernel_id=KERNEL,
            ir=builtin("bottleneck-mlp"),
            bindings={"C": 32},
            blueprint_name="bottleneck-mlp",
            step=0,
        )
    assert not isinstance(caught.value, IllegalTransitionError)
    assert slot.stage is SeedStage.DORMANT
    assert slot.seed is None


# Stage moves ----------------------------------------------------------------------------------


def test_a_seed_advances_through_its_whole_lifecycle(model: MorphogeneticModel) -> None:
    slot = model.slot("2")
    _germinate(slot, step=1)
    changes = [slot.advance(2), slot.advance(3), slot.advance(4), slot.advance(5)]
    assert [(c.source, c.target, c.step, c.kernel_id) for c in changes] == [
        (SeedStage.GERMINATED, SeedStage.TRAINING, 2, KERNEL),
        (SeedStage.TRAINING, SeedStage.BLENDING, 3, KERNEL),
        (SeedStage.BLENDING, SeedStage.PROBATION, 4, KERNEL),
        (SeedStage.PROBATION, SeedStage.FOSSILIZED, 5, KERNEL),
    ]
    assert slot.state.stage_entered_step == 5
    assert slot.state.germinated_step == 1


@pytest.mark.parametrize(
    ("stage", "alpha", "idle"),
    [
        (SeedStage.GERMINATED, 0.0, True),
        (SeedStage.TRAINING, 0.0, False),
        (SeedStage.BLENDING, 0.0, False),
        (SeedStage.PROBATION, 1.0, False),
        (SeedStage.FOSSILIZED, 1.0, False),
    ],
)
def test_alpha_and_idleness_by_stage(
    model: MorphogeneticModel, grow: Grow, stage: SeedStage, alpha: float, idle: bool
) -> None:
    slot = grow(model.slot("2"), stage)
    assert slot.alpha.item() == alpha
    assert slot.state.alpha == alpha
    assert slot.idle is idle
    # The key the FLOP meter caches a step's count under follows every move.
    assert slot.compute_key == (stage, slot.state.kernel_id, False)
    slot.disabled = True
    assert slot.compute_key == (stage, slot.state.kernel_id, True)


def test_fossilize_makes_a_seed_in_probation_permanent(
    model: MorphogeneticModel, grow: Grow
) -> None:
    slot = grow(model.slot("2"), SeedStage.PROBATION)
    change = slot.fossilize(9)
    assert change == StageChange(
        "2", SeedStage.PROBATION, SeedStage.FOSSILIZED, 9, "k-" + "0" * 23 + "1"
    )
    assert slot.stage is SeedStage.FOSSILIZED
    assert slot.alpha.item() == slot.state.alpha == 1.0


@pytest.mark.parametrize(
    ("stage", "move"),
    [
        (SeedStage.DORMANT, "advance"),
        (SeedStage.DORMANT, "fossilize"),
        (SeedStage.DORMANT, "cull"),
        (SeedStage.GERMINATED, "germinate"),
        (SeedStage.GERMINATED, "fossilize"),
        (SeedStage.TRAINING, "fossilize"),
        (SeedStage.TRAINING, "germinate"),
        (SeedStage.BLENDING, "fossilize"),
        (SeedStage.FOSSILIZED, "advance"),
        (SeedStage.FOSSILIZED, "cull"),
        (SeedStage.FOSSILIZED, "germinate"),
    ],
)
def test_illegal_moves_raise_and_change_nothing(
    model: MorphogeneticModel, grow: Grow, stage: SeedStage, move: str
) -> None:
    slot = model.slot("2")
    if stage is not SeedStage.DORMANT:
        grow(slot, stage)
    state, seed, alpha = slot.state, slot.seed, slot.alpha.clone()
    moves = {
        "advance": lambda: slot.advance(20),
        "fossilize": lambda: slot.fossilize(20),
        "cull": lambda: slot.cull(20),
        "germinate": lambda: _germinate(slot, step=20),
    }

    with pytest.raises(IllegalTransitionError, match=f"SeedStage: illegal transition {stage}"):
        moves[move]()

    assert slot.state == state
    assert slot.seed is seed
    assert torch.equal(slot.alpha, alpha)


# Alpha ----------------------------------------------------------------------------------------


def test_alpha_is_set_only_while_blending(model: MorphogeneticModel, grow: Grow) -> None:
    slot = grow(model.slot("2"), SeedStage.TRAINING)
    with pytest.raises(
        ValueError, match=r"slot '2': alpha only changes while BLENDING \(stage TRAINING\)"
    ):
        slot.set_alpha(0.5)
    slot.advance(10)
    for value in (0.0, 0.25, 1.0):
        slot.set_alpha(value)
        assert slot.alpha.item() == value
        assert slot.state.alpha == value
    slot.advance(11)
    with pytest.raises(ValueError, match="only changes while BLENDING"):
        slot.set_alpha(0.5)
    assert slot.alpha.item() == 1.0


@pytest.mark.parametrize("value", [-0.01, 1.01, math.nan, math.inf])
def test_alpha_outside_the_unit_interval_is_refused(
    model: MorphogeneticModel, grow: Grow, value: float
) -> None:
    slot = grow(model.slot("2"), SeedStage.BLENDING, alpha=0.4)
    with pytest.raises(ValueError, match="is outside \\[0, 1\\]"):
        slot.set_alpha(value)
    assert slot.alpha.item() == pytest.approx(0.4)
    assert slot.state.alpha == 0.4


def test_alpha_is_filled_in_place(model: MorphogeneticModel, grow: Grow) -> None:
    slot = grow(model.slot("2"), SeedStage.BLENDING)
    buffer = slot.alpha
    slot.set_alpha(0.7)
    slot.advance(10)
    assert slot.alpha is buffer


def test_record_contribution(model: MorphogeneticModel, grow: Grow) -> None:
    slot = grow(model.slot("2"), SeedStage.PROBATION)
    slot.record_contribution(-0.125)
    assert slot.state.contribution == -0.125
    slot.fossilize(10)
    assert slot.state.contribution == -0.125


def test_a_non_finite_contribution_is_refused_and_the_seed_stays_cullable(
    model: MorphogeneticModel, grow: Grow
) -> None:
    slot = grow(model.slot("2"), SeedStage.PROBATION)
    with pytest.raises(ValueError, match="contribution"):
        slot.record_contribution(math.nan)
    slot.cull(10)
    assert slot.stage is SeedStage.DORMANT


# Cull -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "stage",
    [SeedStage.GERMINATED, SeedStage.TRAINING, SeedStage.BLENDING, SeedStage.PROBATION],
)
def test_cull_restores_the_host_exactly_and_frees_the_slot(
    model: MorphogeneticModel, reference: nn.Sequential, grow: Grow, stage: SeedStage
) -> None:
    slot = grow(model.slot("2"), stage, alpha=0.6 if stage is SeedStage.BLENDING else None)
    seed_parameters = slot.seed_parameters()
    kernel = slot.state.kernel_id
    slot.record_contribution(0.5)

    culled, dormant, removed = slot.cull(12)

    assert culled == StageChange("2", stage, SeedStage.CULLED, 12, kernel)
    assert dormant == StageChange("2", SeedStage.CULLED, SeedStage.DORMANT, 12, kernel)
    assert len(removed) == len(seed_parameters) > 0
    assert all(a is b for a, b in zip(removed, seed_parameters, strict=True))
    assert slot.stage is SeedStage.DORMANT
    assert slot.seed is None
    assert slot.blueprint is None
    assert slot.blueprint_name is None
    assert slot.state.kernel_id is None
    assert slot.state.germinated_step is None
    assert slot.state.contribution is None
    assert slot.alpha.item() == 0.0
    assert slot.idle
    assert model.param_count() == model.host_param_count()
    output = model(X)
    output.sum().backward()
    assert torch.equal(output, reference(X))

    # The slot can grow again.
    _germinate(slot, step=13)
    slot.advance(14)
    assert slot.stage is SeedStage.TRAINING


# Forward by stage -----------------------------------------------------------------------------


def _seed_of(slot: SeedSlot) -> nn.Module:
    assert slot.seed is not None
    return slot.seed


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_training_seed_leaves_the_forward_bit_identical(
    model: MorphogeneticModel, reference: nn.Sequential, grow: Grow, training: bool
) -> None:
    for path in ("0", "2", "4"):
        grow(model.slot(path), SeedStage.TRAINING, kernel=int(path) + 1)
    model.train(training)
    reference.train(training)
    # The seeds are perturbed: they would change the activation if it were blended in.
    h = reference[:3](X)
    assert not torch.equal(_seed_of(model.slot("2"))(h), torch.zeros_like(h))
    assert torch.equal(model(X), reference(X))
    with torch.no_grad():
        assert torch.equal(model(X), reference(X))


def test_blending_output_is_the_host_plus_alpha_times_the_seed(
    model: MorphogeneticModel, reference: nn.Sequential, grow: Grow
) -> None:
    slot = grow(model.slot("4"), SeedStage.BLENDING, alpha=0.3)
    seed = _seed_of(slot)
    with torch.no_grad():
        h = reference(X)
        expected = h + 0.3 * seed(h)
        output = model(X)
    torch.testing.assert_close(output, expected)
    assert not torch.allclose(output, h)
    slot.set_alpha(0.0)
    with torch.no_grad():
        assert torch.equal(model(X), h)


@pytest.mark.parametrize("stage", [SeedStage.PROBATION, SeedStage.FOSSILIZED])
def test_probation_and_fossilized_add_the_whole_seed(
    model: MorphogeneticModel, reference: nn.Sequential, grow: Grow, stage: SeedStage
) -> None:
    seed = _seed_of(grow(model.slot("4"), stage))
    with torch.no_grad():
        h = reference(X)
        assert torch.equal(model(X), h + seed(h))


def test_slot_forward_by_stage_on_a_raw_activation(model: MorphogeneticModel, grow: Grow) -> None:
    slot = model.slot("2")
    h = torch.randn(3, 16)
    assert slot(h) is h
    grow(slot, SeedStage.GERMINATED)
    assert slot(h) is h
    slot.advance(5)
    assert torch.equal(slot(h), h)
    slot.advance(6)
    slot.set_alpha(0.5)
    torch.testing.assert_close(slot(h), h + 0.5 * _seed_of(slot)(h))


def test_without_seed_bypasses_one_slot_inside_the_block_only(
    model: MorphogeneticModel, reference: nn.Sequential, grow: Grow
) -> None:
    grow(model.slot("2"), SeedStage.FOSSILIZED, kernel=1)
    grow(model.slot("4"), SeedStage.FOSSILIZED, kernel=2)
    with torch.no_grad():
        grown = model(X)
        with model.without_seed("2"):
            assert model.slot("2").disabled
            without_two = model(X)
        assert not model.slot("2").disabled
        with model.without_seed("2"), model.without_seed("4"):
            assert torch.equal(model(X), reference(X))
        with pytest.raises(RuntimeError, match="inside"), model.without_seed("4"):
            raise RuntimeError("inside")
        assert not model.slot("4").disabled
        assert torch.equal(model(X), grown)
    assert not torch.equal(without_two, grown)
    assert not torch.equal(without_two, reference(X))


def test_a_disabled_slot_is_idle_unless_collecting(model: MorphogeneticModel, grow: Grow) -> None:
    slot = grow(model.slot("2"), SeedStage.BLENDING)
    assert not slot.idle
    slot.disabled = True
    assert slot.idle
    slot.collecting = True
    assert not slot.idle
    slot.collecting = False
    slot.disabled = False
    assert not slot.idle


# Gradient isolation ---------------------------------------------------------------------------


def _gradients(module: nn.Module) -> dict[str, Tensor]:
    gradients = {}
    for name, parameter in module.named_parameters():
        assert parameter.grad is not None, name
        gradients[name] = parameter.grad
    return gradients


def _activation_gradient(reference: nn.Sequential, index: int) -> tuple[Tensor, Tensor]:
    """The reference's activation after layer ``index`` and the loss's gradient there."""
    kept: list[Tensor] = []

    def keep(_module: nn.Module, _inputs: object, output: Tensor) -> None:
        output.retain_grad()
        kept.append(output)

    handle = reference[index].register_forward_hook(keep)
    reference(X).square().sum().backward()
    handle.remove()
    [activation] = kept
    assert activation.grad is not None
    return activation.detach(), activation.grad


def test_training_seed_learns_while_the_host_gets_exactly_its_own_gradient(
    model: MorphogeneticModel, reference: nn.Sequential, grow: Grow
) -> None:
    slot = grow(model.slot("2"), SeedStage.TRAINING)
    seed = _seed_of(slot)

    model(X).square().sum().backward()
    activation, upstream = _activation_gradient(reference, 2)

    wrapped, original = _gradients(model.host), _gradients(reference)
    assert wrapped.keys() == original.keys()
    for name in original:
        assert torch.equal(wrapped[name], original[name]), name
    # The straight-through term hands the seed the loss's gradient at the slot.
    parameters = list(seed.parameters())
    expected = torch.autograd.grad((seed(activation) * upstream).sum(), parameters)
    for parameter, gradient in zip(parameters, expected, strict=True):
        assert parameter.grad is not None
        torch.testing.assert_close(parameter.grad, gradient)
        assert parameter.grad.abs().sum() > 0


def test_a_fresh_seeds_zero_output_layer_receives_gradient_in_training(
    model: MorphogeneticModel, grow: Grow
) -> None:
    slot = grow(model.slot("2"), SeedStage.TRAINING, perturbed=False)
    gradients = {}
    model(X).square().sum().backward()
    for name, parameter in _seed_of(slot).named_parameters():
        assert parameter.grad is not None, name
        gradients[name] = parameter.grad.abs().sum().item()
    # Zero-initialised output: it learns first; the layers behind it see no gradient yet.
    assert gradients["layers.up.weight"] > 0
    assert gradients["layers.up.bias"] > 0
    assert gradients["layers.down.weight"] == gradients["layers.down.bias"] == 0


def test_blending_seed_sends_gradient_into_the_host(
    model: MorphogeneticModel, reference: nn.Sequential, grow: Grow
) -> None:
    grow(model.slot("2"), SeedStage.BLENDING, alpha=0.5)
    model(X).square().sum().backward()
    reference(X).square().sum().backward()
    wrapped, original = _gradients(model.host), _gradients(reference)
    # Layers up to the slot get the seed path's gradient too; the slot's output is blended, so
    # the layer after it sees a different activation and gradient as well.
    for name in ("0.weight", "2.weight", "2.bias", "4.weight"):
        assert not torch.allclose(wrapped[name], original[name]), name


def test_a_kernel_of_another_layout_is_refused() -> None:
    from esper.blueprints.builder import build_module
    from esper.blueprints.library import builtin
    from esper.contracts.seed import SlotDescriptor
    from esper.kasmina.slot import SeedSlot

    slot = SeedSlot(
        SlotDescriptor(
            slot_id="conv",
            module_path="conv",
            module_type="Conv2d",
            channels=16,
            layout="image",
            shape=[16, 16, 16],
        )
    )
    ir = builtin("bottleneck-mlp")
    with pytest.raises(ValueError, match=r"carries image; kernel .* takes features"):
        slot.germinate(
            build_module(ir, {"C": 16}),
            kernel_id="k-" + "0" * 24,
            ir=ir,
            bindings={"C": 16},
            blueprint_name=ir.name,
            step=0,
        )
