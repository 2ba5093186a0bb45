"""Telemetry: the cheap per-slot statistics Kasmina collects and Tamiyo reads.

Statistics are gathered on the device during training and read back only at decision
boundaries, so collecting them never forces a host synchronisation per step.
"""

from pydantic import Field, model_validator

from esper.contracts._base import Contract
from esper.contracts.seed import SeedStage
from esper.contracts.types import (
    Count,
    FiniteFloat,
    Fraction,
    Identifier,
    NonNegativeFloat,
    Step,
)

MAX_SLOTS = 512


class SlotTelemetry(Contract):
    """Statistics of one seed slot since the previous snapshot.

    Attributes:
        slot_id: The slot.
        activation_mean: Mean of the host activation entering the slot.
        activation_std: Standard deviation of that activation.
        gradient_norm: L2 norm of the gradient flowing through the slot.
        dead_fraction: Fraction of activations that were exactly zero (dead units).
        param_count: Parameters of the host layer before the slot.
        seed_param_count: Parameters of the seed grown in the slot (0 while dormant).
        stage: The seed's lifecycle stage.
        alpha: The seed's blend weight.
        contribution: Last measured counterfactual contribution, if any.
        steps_since_change: Steps since the slot's stage last changed.
    """

    slot_id: Identifier
    activation_mean: FiniteFloat
    activation_std: NonNegativeFloat
    gradient_norm: NonNegativeFloat
    dead_fraction: Fraction
    param_count: Count
    seed_param_count: Count = 0
    stage: SeedStage
    alpha: Fraction
    contribution: FiniteFloat | None = None
    steps_since_change: Step


class TelemetrySnapshot(Contract):
    """Everything Tamiyo sees at one decision boundary.

    Attributes:
        run_id: The training run.
        step: Global training step.
        epoch: Current epoch.
        train_loss: Mean training loss since the previous snapshot.
        val_loss: Latest validation loss, if evaluated.
        val_accuracy: Latest validation accuracy, if evaluated.
        loss_trend: Relative change of the training loss over the recent window (negative while
            improving).
        training_progress: Fraction of the planned training done.
        budget_left_params: Parameters that may still be added under the run's budget.
        slots: Per-slot statistics.
    """

    run_id: Identifier
    step: Step
    epoch: Step
    train_loss: NonNegativeFloat
    val_loss: NonNegativeFloat | None = None
    val_accuracy: Fraction | None = None
    loss_trend: FiniteFloat
    training_progress: Fraction
    budget_left_params: Count
    slots: list[SlotTelemetry] = Field(max_length=MAX_SLOTS)

    @model_validator(mode="after")
    def _unique_slots(self) -> "TelemetrySnapshot":
        seen: set[str] = set()
        for slot in self.slots:
            if slot.slot_id in seen:
                raise ValueError(f"slot '{slot.slot_id}': reported twice in one snapshot")
            seen.add(slot.slot_id)
        return self
