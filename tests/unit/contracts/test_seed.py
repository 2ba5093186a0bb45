"""SeedState consistency and SlotDescriptor bounds."""

import math
from typing import Any

import pytest
from pydantic import ValidationError

from esper.contracts import SeedStage, SeedState, SlotDescriptor
from esper.contracts.seed import LIVE_STAGES

from .samples import BLUEPRINT_HASH, SAMPLE_KERNEL_ID, seed_state

OCCUPIED = sorted(LIVE_STAGES | {SeedStage.FOSSILIZED})
ALPHA_ZERO = [SeedStage.DORMANT, SeedStage.GERMINATED, SeedStage.TRAINING]
ALPHA_ONE = [SeedStage.PROBATION, SeedStage.FOSSILIZED]


def state(stage: SeedStage, **changes: Any) -> SeedState:
    data: dict[str, Any] = {"slot_id": "blocks.3", "stage": stage}
    if stage in OCCUPIED:
        data.update(kernel_id=SAMPLE_KERNEL_ID, blueprint_hash=BLUEPRINT_HASH, germinated_step=7)
    if stage in ALPHA_ONE:
        data["alpha"] = 1.0
    data.update(changes)
    return SeedState.model_validate(data)


def test_a_new_slot_is_dormant_and_empty() -> None:
    slot = SeedState(slot_id="layer1.0")
    assert slot.stage is SeedStage.DORMANT
    assert (slot.kernel_id, slot.alpha, slot.stage_entered_step) == (None, 0.0, 0)


def test_live_stages() -> None:
    expected = {SeedStage.GERMINATED, SeedStage.TRAINING, SeedStage.BLENDING, SeedStage.PROBATION}
    assert expected == LIVE_STAGES


@pytest.mark.parametrize("stage", list(SeedStage), ids=str)
def test_a_consistent_state_in_every_stage(stage: SeedStage) -> None:
    assert state(stage).stage is stage


@pytest.mark.parametrize("stage", OCCUPIED, ids=str)
@pytest.mark.parametrize("missing", ["kernel_id", "germinated_step"])
def test_occupied_stages_need_a_kernel(stage: SeedStage, missing: str) -> None:
    with pytest.raises(ValidationError) as caught:
        state(stage, **{missing: None})
    assert f"slot 'blocks.3': a {stage.value} seed needs kernelId and germinatedStep" in str(
        caught.value
    )


def test_a_dormant_slot_holds_no_kernel() -> None:
    with pytest.raises(ValidationError, match=r"slot 'blocks\.3': a DORMANT slot holds no kernel"):
        state(SeedStage.DORMANT, kernel_id=SAMPLE_KERNEL_ID)


def test_a_dormant_slot_has_no_germination_step() -> None:
    # BUG (src/esper/contracts/seed.py, SeedState._stage_consistent): the docstring says
    # germinatedStep is "none while dormant", but only kernelId is checked, so a slot reset from
    # CULLED to DORMANT keeps the old germination step (and blueprint hash) without complaint.
    with pytest.raises(ValidationError, match=r"slot 'blocks\.3'"):
        state(SeedStage.DORMANT, germinated_step=7)


@pytest.mark.parametrize("stage", ALPHA_ZERO, ids=str)
@pytest.mark.parametrize("alpha", [0.5, 1.0, 1e-9])
def test_alpha_is_zero_before_blending(stage: SeedStage, alpha: float) -> None:
    with pytest.raises(ValidationError) as caught:
        state(stage, alpha=alpha)
    assert f"slot 'blocks.3': alpha must be 0 while {stage.value}, got {alpha}" in str(caught.value)


@pytest.mark.parametrize("stage", ALPHA_ONE, ids=str)
@pytest.mark.parametrize("alpha", [0.0, 0.5, 0.999])
def test_alpha_is_one_from_probation(stage: SeedStage, alpha: float) -> None:
    with pytest.raises(ValidationError) as caught:
        state(stage, alpha=alpha)
    assert f"slot 'blocks.3': alpha must be 1 while {stage.value}, got {alpha}" in str(caught.value)


@pytest.mark.parametrize("stage", [SeedStage.BLENDING, SeedStage.CULLED], ids=str)
@pytest.mark.parametrize("alpha", [0.0, 0.25, 1.0])
def test_alpha_is_free_while_blending_or_culled(stage: SeedStage, alpha: float) -> None:
    assert state(stage, alpha=alpha).alpha == alpha


def test_a_culled_slot_may_keep_or_drop_its_kernel() -> None:
    assert state(SeedStage.CULLED).kernel_id is None
    assert state(SeedStage.CULLED, kernel_id=SAMPLE_KERNEL_ID).kernel_id == SAMPLE_KERNEL_ID


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("alpha", -0.1),
        ("alpha", 1.5),
        ("contribution", math.nan),
        ("contribution", math.inf),
        ("stage_entered_step", -1),
        ("stage_entered_step", 10**12 + 1),
        ("slot_id", ""),
        ("slot_id", "has space"),
        ("kernel_id", "k-short"),
        ("blueprint_hash", "F" * 64),
        ("stage", "SPROUTED"),
    ],
)
def test_seed_state_bounds(field: str, value: Any) -> None:
    document = seed_state().model_dump(by_alias=False)
    document[field] = value
    with pytest.raises(ValidationError, match=field):
        SeedState.model_validate(document)


def test_seed_state_sample_round_trip() -> None:
    value = seed_state()
    assert SeedState.model_validate_json(value.to_json()) == value


@pytest.mark.parametrize("channels", [0, 1_048_577])
def test_slot_descriptor_channels_are_bounded(channels: int) -> None:
    with pytest.raises(ValidationError, match="channels"):
        SlotDescriptor(
            slot_id="s",
            module_path="a.b",
            module_type="Linear",
            channels=channels,
            layout="features",
        )
