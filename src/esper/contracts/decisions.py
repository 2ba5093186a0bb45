"""Decisions and commands: Tamiyo's choices and the instructions Kasmina executes.

Tamiyo returns an :class:`AdaptationDecision` at a decision boundary; Tolaria turns it into one
or more :class:`KasminaCommand` values applied at a step boundary.
"""

from enum import StrEnum

from pydantic import model_validator

from esper.contracts._base import Contract
from esper.contracts.types import (
    Fraction,
    Identifier,
    KernelId,
    LongText,
    Sha256Hex,
    Step,
)


class DecisionAction(StrEnum):
    """What Tamiyo decided to do about one slot."""

    GERMINATE = "germinate"
    """Grow the chosen kernel in a dormant slot."""
    FOSSILIZE = "fossilize"
    """End a seed's probation early and keep it."""
    CULL = "cull"
    """Remove a live seed."""


class AdaptationDecision(Contract):
    """One decision of the controller.

    Attributes:
        decision_id: Unique id, used to correlate commands and events.
        run_id: The training run.
        step: The step at which the decision was made.
        action: What to do.
        slot_id: Which slot.
        kernel_id: The kernel to grow (germinate only).
        blueprint_hash: That kernel's blueprint (germinate only).
        reason: Why, in words a person can audit.
        confidence: The policy's confidence in the action.
    """

    decision_id: Identifier
    run_id: Identifier
    step: Step
    action: DecisionAction
    slot_id: Identifier
    kernel_id: KernelId | None = None
    blueprint_hash: Sha256Hex | None = None
    reason: LongText
    confidence: Fraction = 1.0

    @model_validator(mode="after")
    def _kernel_iff_germinate(self) -> "AdaptationDecision":
        has_kernel = self.kernel_id is not None and self.blueprint_hash is not None
        if self.action is DecisionAction.GERMINATE and not has_kernel:
            raise ValueError("a germinate decision names kernelId and blueprintHash")
        if self.action is not DecisionAction.GERMINATE and (
            self.kernel_id is not None or self.blueprint_hash is not None
        ):
            raise ValueError(f"a {self.action.value} decision names no kernel")
        return self


class CommandKind(StrEnum):
    """An instruction to Kasmina for one slot."""

    GERMINATE = "germinate"
    ADVANCE = "advance"
    """Move the seed to the next stage of its lifecycle."""
    FOSSILIZE = "fossilize"
    CULL = "cull"


class KasminaCommand(Contract):
    """An instruction applied to a seed slot at a step boundary.

    Attributes:
        command_id: Unique id.
        decision_id: The decision this command carries out, if any (lifecycle advances driven
            by the schedule have none).
        slot_id: The slot.
        kind: What to do.
        kernel_id: The kernel to load (germinate only).
        apply_at_step: The step boundary at which to apply it.
    """

    command_id: Identifier
    decision_id: Identifier | None = None
    slot_id: Identifier
    kind: CommandKind
    kernel_id: KernelId | None = None
    apply_at_step: Step

    @model_validator(mode="after")
    def _kernel_iff_germinate(self) -> "KasminaCommand":
        if (self.kind is CommandKind.GERMINATE) != (self.kernel_id is not None):
            raise ValueError("kernelId is given exactly when kind is germinate")
        return self
