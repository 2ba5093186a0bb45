"""Checkpoints: a state dict restores the grown morphology (stages, alpha, kernels, weights)."""

import io
from collections.abc import Callable

import pytest
import torch
from torch import Tensor, nn

from esper.contracts.seed import SeedStage
from esper.kasmina import MorphogeneticModel, SeedSlot, wrap
from esper.kasmina.slot import EXTRA_STATE_VERSION

Grow = Callable[..., SeedSlot]
X = torch.randn(6, 8, generator=torch.Generator().manual_seed(21))


def host(seed: int) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Linear(8, 16),
        nn.ReLU(),
        nn.Linear(16, 16),
        nn.ReLU(),
        nn.Linear(16, 16),
        nn.ReLU(),
        nn.Linear(16, 16),
    )


def fresh(seed: int = 1) -> MorphogeneticModel:
    return wrap(host(seed), [nn.Linear])


def roundtrip(state: dict[str, object]) -> dict[str, object]:
    """Save with torch.save and load back with the weights-only unpickler."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def grown(grow: Grow) -> MorphogeneticModel:
    """Seeds of three blueprints in TRAINING, BLENDING (alpha .3) and FOSSILIZED; one slot empty."""
    model = fresh(seed=0)
    grow(model.slot("0"), SeedStage.TRAINING, kernel=1, blueprint="bottleneck-mlp")
    grow(model.slot("2"), SeedStage.BLENDING, kernel=2, blueprint="low-rank-adapter", alpha=0.3)
    grow(model.slot("4"), SeedStage.FOSSILIZED, kernel=3, blueprint="residual-mlp")
    model.slot("4").record_contribution(0.75)
    return model


def seed_weights(model: MorphogeneticModel) -> dict[str, Tensor]:
    return {name: tensor for name, tensor in model.state_dict().items() if ".seed." in name}


def outputs(model: MorphogeneticModel) -> Tensor:
    model.eval()
    with torch.no_grad():
        return model(X)


def test_a_checkpoint_restores_the_grown_model(grow: Grow) -> None:
    original = grown(grow)
    state = roundtrip(original.state_dict())
    restored = fresh(seed=1)
    assert not torch.equal(outputs(restored), outputs(original))

    result = restored.load_state_dict(state)

    assert result.missing_keys == result.unexpected_keys == []
    for path in ("0", "2", "4", "6"):
        before, after = original.slot(path), restored.slot(path)
        assert after.state == before.state, path
        assert after.blueprint == before.blueprint
        assert after.blueprint_name == before.blueprint_name
        assert after.idle == before.idle
        assert torch.equal(after.alpha, before.alpha)
    assert [s.stage for s in restored.seed_slots()] == [
        SeedStage.TRAINING,
        SeedStage.BLENDING,
        SeedStage.FOSSILIZED,
        SeedStage.DORMANT,
    ]
    assert restored.slot("2").alpha.item() == pytest.approx(0.3)
    assert restored.slot("2").state.alpha == 0.3
    assert restored.slot("4").state.contribution == 0.75
    assert [s.state.kernel_id for s in restored.seed_slots()] == [
        original.slot(p).state.kernel_id for p in ("0", "2", "4", "6")
    ]
    assert restored.slot("6").seed is None
    weights = seed_weights(restored)
    assert weights.keys() == seed_weights(original).keys()
    for name, tensor in seed_weights(original).items():
        assert torch.equal(weights[name], tensor), name
    assert restored.param_count() == original.param_count()
    assert torch.equal(outputs(restored), outputs(original))


def test_a_restored_model_keeps_growing_like_the_original(grow: Grow) -> None:
    original = grown(grow)
    restored = fresh(seed=1)
    restored.load_state_dict(roundtrip(original.state_dict()))
    for model in (original, restored):
        model.slot("2").set_alpha(0.8)
        model.slot("0").advance(50)
        model.slot("0").set_alpha(0.1)
    assert torch.equal(outputs(restored), outputs(original))
    # The restored seed is a module of the restored model, trained by its optimizer.
    restored_seed = restored.slot("0").seed
    assert restored_seed is not None
    names = {id(p) for p in restored.parameters()}
    assert all(id(p) in names for p in restored_seed.parameters())
    assert restored_seed.training is restored.training


def test_the_state_dict_holds_plain_data_only(grow: Grow) -> None:
    state = grown(grow).state_dict()
    extra = state["slots.2._extra_state"]
    assert isinstance(extra, dict)
    assert extra["version"] == EXTRA_STATE_VERSION
    assert extra["state"]["stage"] == "BLENDING"
    assert extra["state"]["kernelId"] == "k-" + "0" * 23 + "2"
    assert extra["blueprintName"] == "low-rank-adapter"
    assert extra["bindings"] == {"C": 16}
    assert extra["ir"]["name"] == "low-rank-adapter"
    assert state["slots.6._extra_state"]["ir"] is None
    assert not any(".statistics." in name for name in state)


def test_loading_an_older_checkpoint_with_fewer_seeds_removes_the_newer_ones(grow: Grow) -> None:
    model = fresh(seed=0)
    grow(model.slot("0"), SeedStage.TRAINING, kernel=1)
    older = roundtrip(model.state_dict())
    before = outputs(model)
    model.train()
    grow(model.slot("2"), SeedStage.BLENDING, kernel=2, alpha=0.5)
    grow(model.slot("4"), SeedStage.GERMINATED, kernel=3)
    assert not torch.equal(outputs(model), before)

    model.load_state_dict(older)

    assert [s.stage for s in model.seed_slots()] == [
        SeedStage.TRAINING,
        SeedStage.DORMANT,
        SeedStage.DORMANT,
        SeedStage.DORMANT,
    ]
    for path in ("2", "4"):
        slot = model.slot(path)
        assert slot.seed is None
        assert slot.blueprint is None
        assert slot.blueprint_name is None
        assert slot.state.kernel_id is None
        assert slot.alpha.item() == 0.0
        assert slot.idle
    assert model.param_count() == model.host_param_count() + model.slot("0").seed_param_count()
    assert torch.equal(outputs(model), before)


def test_loading_keeps_a_seed_of_the_same_kernel_and_replaces_another(grow: Grow) -> None:
    source = fresh(seed=0)
    grow(source.slot("0"), SeedStage.BLENDING, kernel=1, alpha=0.5)
    grow(source.slot("2"), SeedStage.BLENDING, kernel=2, alpha=0.5, blueprint="low-rank-adapter")
    target = fresh(seed=1)
    grow(target.slot("0"), SeedStage.TRAINING, kernel=1)
    grow(target.slot("2"), SeedStage.TRAINING, kernel=9, blueprint="bottleneck-mlp")
    same_kernel_seed = target.slot("0").seed

    target.load_state_dict(roundtrip(source.state_dict()))

    assert target.slot("0").seed is same_kernel_seed
    assert target.slot("2").blueprint_name == "low-rank-adapter"
    assert target.slot("2").state.kernel_id == source.slot("2").state.kernel_id
    assert [s.stage for s in target.seed_slots()][:2] == [SeedStage.BLENDING] * 2
    assert torch.equal(outputs(target), outputs(source))


def test_a_state_of_another_slot_is_refused(grow: Grow) -> None:
    model = grown(grow)
    state = model.state_dict()
    state["slots.6._extra_state"] = state["slots.4._extra_state"]
    with pytest.raises(ValueError, match="slot '6': the state belongs to slot '4'"):
        fresh().load_state_dict(state)


@pytest.mark.parametrize(
    "extra",
    [{"version": EXTRA_STATE_VERSION + 1}, {"state": {}}, ["not", "a", "dict"], None],
    ids=["newer-version", "no-version", "list", "none"],
)
def test_a_state_that_is_not_a_slot_state_of_this_version_is_refused(
    grow: Grow, extra: object
) -> None:
    state = grown(grow).state_dict()
    state["slots.2._extra_state"] = extra
    model = fresh()
    with pytest.raises(ValueError, match=f"slot '2': not a version-{EXTRA_STATE_VERSION} state"):
        model.load_state_dict(state)


def test_a_checkpoint_without_slot_state_is_missing_keys(grow: Grow) -> None:
    state = grown(grow).state_dict()
    del state["slots.6._extra_state"]
    result = fresh().load_state_dict(state, strict=False)
    assert result.missing_keys == ["slots.6._extra_state"]
    with pytest.raises(RuntimeError, match=r"Missing key\(s\).*slots\.6\._extra_state"):
        fresh().load_state_dict(state)
