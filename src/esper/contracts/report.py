"""RunReport: what a finished ``esper run`` produced, written as ``report.json``.

The Markdown summary and the PNG plot are rendered from this document, so anything they show
can be checked against it.
"""

from datetime import datetime
from typing import Literal

from pydantic import Field, model_validator

from esper.contracts._base import Contract
from esper.contracts.decisions import AdaptationDecision
from esper.contracts.run import MorphogeneticRunSpec
from esper.contracts.seed import SEED_STAGES, SeedStage
from esper.contracts.types import (
    Count,
    Fraction,
    Identifier,
    KernelId,
    NonNegativeFloat,
    Sha256Hex,
    ShortText,
    Step,
)

REPORT_FORMAT = "esper.dev/run-report/v1"
MAX_POINTS = 100_000


class CurvePoint(Contract):
    """The model's state at one decision boundary.

    Attributes:
        step: Training step.
        epoch: Epoch.
        train_loss: Mean training loss since the previous point.
        val_loss: Validation loss.
        val_accuracy: Validation accuracy.
        params: Parameters of the model (host plus live and fossilized seeds).
        train_flops: Training FLOPs spent up to this point, this boundary's evaluation
            included (forward, backward and the controller's work; see
            ``esper.tolaria.flops``); None when no trainer counted them.
    """

    step: Step
    epoch: Step
    train_loss: NonNegativeFloat
    val_loss: NonNegativeFloat
    val_accuracy: Fraction
    params: Count
    train_flops: Count | None = None


class LifecycleMark(Contract):
    """A seed's stage change.

    Attributes:
        step: Training step.
        slot_id: The slot.
        source: Stage before.
        target: Stage after.
        kernel_id: The seed's kernel.
        blueprint_name: Its blueprint's name.
        reason: Why (a decision's reason, the schedule, or the governor).
    """

    step: Step
    slot_id: Identifier
    source: SeedStage
    target: SeedStage
    kernel_id: KernelId | None = None
    blueprint_name: ShortText | None = None
    reason: ShortText

    @model_validator(mode="after")
    def _legal_move(self) -> "LifecycleMark":
        SEED_STAGES.check(self.source, self.target)
        return self


class Rollback(Contract):
    """The governor restored the last good state.

    Attributes:
        step: Step at which the problem was seen.
        restored_step: Step of the state restored.
        reason: What was wrong (non-finite loss or a spike).
        culled_slot: The seed culled as the likely cause, if any.
    """

    step: Step
    restored_step: Step
    reason: ShortText
    culled_slot: Identifier | None = None

    @model_validator(mode="after")
    def _restored_earlier(self) -> "Rollback":
        if self.restored_step > self.step:
            raise ValueError(
                f"a rollback at step {self.step} cannot restore the later step "
                f"{self.restored_step}"
            )
        return self


class SeedSummary(Contract):
    """One seed's life.

    Attributes:
        slot_id: The slot.
        kernel_id: Its kernel.
        blueprint_hash: Its blueprint.
        blueprint_name: The blueprint's name.
        final_stage: Where it ended: FOSSILIZED, CULLED, or a live stage when the run ended.
        germinated_step: Step of germination.
        ended_step: Step of fossilization or cull, if any.
        params: Its parameters.
        contribution: Counterfactual contribution measured in probation, if measured.
    """

    slot_id: Identifier
    kernel_id: KernelId
    blueprint_hash: Sha256Hex
    blueprint_name: ShortText
    final_stage: SeedStage
    germinated_step: Step
    ended_step: Step | None = None
    params: Count
    contribution: float | None = Field(default=None, allow_inf_nan=False)

    @model_validator(mode="after")
    def _ended_after_germination(self) -> "SeedSummary":
        if self.ended_step is not None and self.ended_step < self.germinated_step:
            raise ValueError(
                f"slot '{self.slot_id}': the seed ended (step {self.ended_step}) before it "
                f"germinated (step {self.germinated_step})"
            )
        return self


class ModelResult(Contract):
    """How one trained model did.

    Attributes:
        test_accuracy: Accuracy on the test split.
        test_loss: Loss on the test split.
        params: Final parameters.
        train_seconds: Wall time of training.
        steps: Training steps.
        curve: Validation curve at each decision boundary.
        train_flops: FLOPs of the whole training: every step's forward and backward pass and
            the controller's evaluations and decisions, culled seeds included (matrix products
            and convolutions, counted with ``torch.utils.flop_counter``).
        inference_flops: Forward FLOPs per example of the final model.
    """

    test_accuracy: Fraction
    test_loss: NonNegativeFloat
    params: Count
    train_seconds: NonNegativeFloat
    steps: Step
    train_flops: Count
    inference_flops: Count
    curve: list[CurvePoint] = Field(max_length=MAX_POINTS)


class RunReport(Contract):
    """The report of one run.

    Attributes:
        format: Report format version.
        run_id: The run.
        spec: The run's configuration.
        started_at: When the run started.
        finished_at: When it finished.
        device: Where it trained.
        torch_version: The torch version.
        grown: The model that could grow.
        baseline: The same host trained without growth (same seed), when requested.
        lifecycle: Every seed stage change, in order.
        decisions: Tamiyo's decisions, in order.
        seeds: Every seed grown.
        rollbacks: The governor's rollbacks.
    """

    format: Literal["esper.dev/run-report/v1"] = REPORT_FORMAT
    run_id: Identifier
    spec: MorphogeneticRunSpec
    started_at: datetime
    finished_at: datetime
    device: ShortText
    torch_version: ShortText
    grown: ModelResult
    baseline: ModelResult | None = None
    lifecycle: list[LifecycleMark] = Field(default_factory=list, max_length=MAX_POINTS)
    decisions: list[AdaptationDecision] = Field(default_factory=list, max_length=MAX_POINTS)
    seeds: list[SeedSummary] = Field(default_factory=list, max_length=4096)
    rollbacks: list[Rollback] = Field(default_factory=list, max_length=MAX_POINTS)

    @model_validator(mode="after")
    def _consistent(self) -> "RunReport":
        if self.finished_at < self.started_at:
            raise ValueError("finishedAt is before startedAt")
        if (self.baseline is not None) != self.spec.baseline:
            raise ValueError(
                "a report has a baseline result exactly when its spec asks for one "
                f"(spec.baseline is {self.spec.baseline})"
            )
        return self
