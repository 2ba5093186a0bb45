"""SeedState consistency and SlotDescriptor bounds."""

import math
from typing import Any

import pytest
from pydantic import ValidationError

from esper.contracts import KernelTarget, Layout, SeedStage, SeedState, SlotDescriptor
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
            shape=[64],
        )


def slot(layout: str, shape: list[Any], channels: int, slot_id: str = "blocks.3") -> SlotDescriptor:
    return SlotDescriptor(
        slot_id=slot_id,
        module_path="blocks.3",
        module_type="Block",
        channels=channels,
        layout=layout,
        shape=shape,
    )


@pytest.mark.parametrize(
    ("layout", "shape", "channels", "bindings"),
    [
        ("features", [128], 128, {"C": 128}),
        ("image", [32, 16, 8], 32, {"C": 32, "H": 16, "W": 8}),
        ("sequence", [50, 64], 64, {"T": 50, "C": 64}),
        ("features", [1], 1, {"C": 1}),
        ("image", [1_048_576, 1, 1], 1_048_576, {"C": 1_048_576, "H": 1, "W": 1}),
    ],
    ids=["features", "image", "sequence", "smallest", "largest"],
)
def test_slot_bindings_per_layout(
    layout: str, shape: list[int], channels: int, bindings: dict[str, int]
) -> None:
    descriptor = slot(layout, shape, channels)
    assert descriptor.layout is Layout(layout)
    assert descriptor.bindings() == bindings
    assert descriptor.bindings()["C"] == descriptor.channels
    # The bindings make a valid kernel target for the slot.
    assert KernelTarget(device="cpu", bindings=descriptor.bindings()).bindings == bindings


def test_a_square_image_binds_h_and_w_in_order() -> None:
    # H and W come from their own axes, not from each other.
    assert slot("image", [3, 7, 5], 3).bindings() == {"C": 3, "H": 7, "W": 5}


def test_a_sequence_with_as_many_steps_as_channels() -> None:
    assert slot("sequence", [16, 16], 16).bindings() == {"T": 16, "C": 16}


@pytest.mark.parametrize(
    ("layout", "shape", "rank"),
    [
        ("features", [8, 8], 1),
        ("features", [8, 4, 4], 1),
        ("image", [8], 3),
        ("image", [8, 4], 3),
        ("sequence", [8], 2),
        ("sequence", [10, 8, 2], 2),
    ],
    ids=str,
)
def test_shape_rank_must_fit_the_layout(layout: str, shape: list[int], rank: int) -> None:
    with pytest.raises(ValidationError) as caught:
        slot(layout, shape, 8)
    assert f"slot 'blocks.3': a {layout} slot has a shape of rank {rank}, got {shape}" in str(
        caught.value
    )


@pytest.mark.parametrize(
    ("layout", "shape", "axis_size"),
    [
        ("features", [16], 16),
        ("image", [16, 8, 8], 16),
        # The channel axis of an image is the first, so H == channels does not help.
        ("image", [4, 8, 4], 4),
        # A sequence's channels are its last axis, not its first.
        ("sequence", [8, 32], 32),
    ],
    ids=["features", "image", "image-h", "sequence-last"],
)
def test_channels_must_match_the_channel_axis(
    layout: str, shape: list[int], axis_size: int
) -> None:
    with pytest.raises(ValidationError) as caught:
        slot(layout, shape, 8)
    assert (
        f"slot 'blocks.3': channels 8 differ from the shape's channel dimension {axis_size}"
        in str(caught.value)
    )


@pytest.mark.parametrize(
    "shape",
    [[], [0], [8, 0, 4], [1_048_577], ["C"], [8, 8, 8, 8]],
    ids=["empty", "zero", "zero-h", "too-big", "symbol", "rank-4"],
)
def test_slot_shape_entries_are_bounded(shape: list[Any]) -> None:
    with pytest.raises(ValidationError, match="shape"):
        slot("image", shape, 8)


def test_slot_descriptor_needs_a_shape() -> None:
    with pytest.raises(ValidationError, match="shape\n  Field required"):
        SlotDescriptor(
            slot_id="s", module_path="a.b", module_type="Linear", channels=8, layout="features"
        )


def test_slot_descriptor_wire_form() -> None:
    descriptor = slot("sequence", [50, 64], 64)
    document = descriptor.model_dump(mode="json")
    assert document == {
        "slotId": "blocks.3",
        "modulePath": "blocks.3",
        "moduleType": "Block",
        "channels": 64,
        "layout": "sequence",
        "shape": [50, 64],
    }
    assert SlotDescriptor.model_validate(document) == descriptor
