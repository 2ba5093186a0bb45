"""Seed lifecycle: the stages a seed slot passes through and its observable state.

``DORMANT -> GERMINATED -> TRAINING -> BLENDING -> PROBATION -> FOSSILIZED``, with ``CULLED``
reachable from every live stage. A culled slot is reset to ``DORMANT`` so it can grow again;
a fossilized seed is a permanent part of the host.
"""

from enum import StrEnum

from pydantic import Field, model_validator

from esper.contracts._base import Contract
from esper.contracts.blueprint import Layout
from esper.contracts.lifecycle import TransitionTable
from esper.contracts.types import (
    FiniteFloat,
    Fraction,
    Identifier,
    KernelId,
    Sha256Hex,
    ShortText,
    Size,
    Step,
)


class SeedStage(StrEnum):
    """The lifecycle stage of a seed slot."""

    DORMANT = "DORMANT"
    """Empty: the slot is an identity and costs nothing."""
    GERMINATED = "GERMINATED"
    """A kernel is loaded into the slot; its output path is zero, so the host is unchanged."""
    TRAINING = "TRAINING"
    """The seed learns in isolation (detached input); alpha is 0."""
    BLENDING = "BLENDING"
    """Alpha ramps from 0 to 1, mixing the seed into the host."""
    PROBATION = "PROBATION"
    """Alpha is 1; the seed's counterfactual contribution is measured."""
    FOSSILIZED = "FOSSILIZED"
    """The seed earned its place and is now part of the host."""
    CULLED = "CULLED"
    """The seed was removed; the host is exactly as before it germinated."""


LIVE_STAGES = frozenset(
    {SeedStage.GERMINATED, SeedStage.TRAINING, SeedStage.BLENDING, SeedStage.PROBATION}
)
"""Stages in which a seed occupies its slot and may still be culled."""

SEED_STAGES: TransitionTable[SeedStage] = TransitionTable(
    "SeedStage",
    {
        SeedStage.DORMANT: frozenset({SeedStage.GERMINATED}),
        SeedStage.GERMINATED: frozenset({SeedStage.TRAINING, SeedStage.CULLED}),
        SeedStage.TRAINING: frozenset({SeedStage.BLENDING, SeedStage.CULLED}),
        SeedStage.BLENDING: frozenset({SeedStage.PROBATION, SeedStage.CULLED}),
        SeedStage.PROBATION: frozenset({SeedStage.FOSSILIZED, SeedStage.CULLED}),
        SeedStage.FOSSILIZED: frozenset(),
        # The slot is emptied and may host a new seed later.
        SeedStage.CULLED: frozenset({SeedStage.DORMANT}),
    },
)
"""The legal stage moves of a seed slot."""


class SeedState(Contract):
    """The observable state of one seed slot.

    Attributes:
        slot_id: The slot's id (stable for the life of the wrapped model).
        stage: Current lifecycle stage.
        kernel_id: The kernel grown in the slot (none while dormant).
        blueprint_hash: The blueprint of that kernel.
        alpha: Blend weight of the seed's output, 0 (host only) to 1 (seed fully mixed in).
        stage_entered_step: Training step at which the current stage began.
        germinated_step: Training step of germination (none while dormant).
        contribution: Last measured counterfactual contribution (metric with the seed minus
            without it); none until measured.
    """

    slot_id: Identifier
    stage: SeedStage = SeedStage.DORMANT
    kernel_id: KernelId | None = None
    blueprint_hash: Sha256Hex | None = None
    alpha: Fraction = 0.0
    stage_entered_step: Step = 0
    germinated_step: Step | None = None
    contribution: FiniteFloat | None = None

    @model_validator(mode="after")
    def _stage_consistent(self) -> "SeedState":
        occupied = self.stage in LIVE_STAGES or self.stage is SeedStage.FOSSILIZED
        if occupied and (self.kernel_id is None or self.germinated_step is None):
            raise ValueError(
                f"slot '{self.slot_id}': a {self.stage.value} seed needs kernelId and "
                "germinatedStep"
            )
        dormant_leftovers = (self.kernel_id, self.blueprint_hash, self.germinated_step)
        if self.stage is SeedStage.DORMANT and any(item is not None for item in dormant_leftovers):
            raise ValueError(
                f"slot '{self.slot_id}': a DORMANT slot holds no kernel, blueprint or "
                "germination step"
            )
        unblended = (SeedStage.DORMANT, SeedStage.GERMINATED, SeedStage.TRAINING)
        if self.stage in unblended and self.alpha != 0.0:
            raise ValueError(
                f"slot '{self.slot_id}': alpha must be 0 while {self.stage.value}, "
                f"got {self.alpha}"
            )
        if self.stage in (SeedStage.PROBATION, SeedStage.FOSSILIZED) and self.alpha != 1.0:
            raise ValueError(
                f"slot '{self.slot_id}': alpha must be 1 while {self.stage.value}, "
                f"got {self.alpha}"
            )
        return self

    def moved_to(self, stage: SeedStage, step: int, **changes: object) -> "SeedState":
        """Return the state after a legal stage move.

        Args:
            stage: The new stage.
            step: The training step at which the move happens.
            **changes: Other fields that change with the move (``kernel_id``, ``alpha``...).

        Returns:
            The new, validated state.

        Raises:
            IllegalTransitionError: When the lifecycle table forbids the move.
            pydantic.ValidationError: When the result is inconsistent.
        """
        SEED_STAGES.check(self.stage, stage)
        data = self.model_dump(by_alias=False)
        data.update(changes)
        data["stage"] = stage
        data["stage_entered_step"] = step
        return SeedState.model_validate(data)


class SlotDescriptor(Contract):
    """Where a seed slot sits in the host model.

    Attributes:
        slot_id: The slot's id.
        module_path: Dotted path of the host module the slot follows (``layer2.0.conv1``).
        module_type: Class name of that module.
        channels: Feature or channel count at the slot, which binds ``C`` for kernels.
        layout: ``features``, ``image`` or ``sequence``.
        shape: The per-example shape of the activation at the slot (no batch dimension):
            ``[C]``, ``[C, H, W]`` or ``[T, C]``; it binds a kernel target's symbols.
    """

    slot_id: Identifier
    module_path: ShortText
    module_type: ShortText
    channels: int = Field(ge=1, le=1_048_576)
    layout: Layout
    shape: list[Size] = Field(min_length=1, max_length=3)

    @model_validator(mode="after")
    def _shape_fits_layout(self) -> "SlotDescriptor":
        rank = {Layout.FEATURES: 1, Layout.IMAGE: 3, Layout.SEQUENCE: 2}[self.layout]
        if len(self.shape) != rank:
            raise ValueError(
                f"slot '{self.slot_id}': a {self.layout.value} slot has a shape of rank {rank}, "
                f"got {self.shape}"
            )
        channel_axis = -1 if self.layout is Layout.SEQUENCE else 0
        if self.shape[channel_axis] != self.channels:
            raise ValueError(
                f"slot '{self.slot_id}': channels {self.channels} differ from the shape's "
                f"channel dimension {self.shape[channel_axis]}"
            )
        return self

    def bindings(self) -> dict[str, int]:
        """Return the kernel-target symbol bindings of this slot.

        Returns:
            ``C`` always; ``H`` and ``W`` for images; ``T`` for sequences.
        """
        if self.layout is Layout.IMAGE:
            return {"C": self.shape[0], "H": self.shape[1], "W": self.shape[2]}
        if self.layout is Layout.SEQUENCE:
            return {"T": self.shape[0], "C": self.shape[1]}
        return {"C": self.shape[0]}
