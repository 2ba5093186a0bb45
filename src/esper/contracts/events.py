"""Oona's event envelope, its topics and the payload each topic carries.

Every event has a unique id (consumers are idempotent by it), a trace id that follows one piece
of work across components, and a payload whose model is fixed by the topic.
"""

import uuid
from datetime import UTC, datetime
from enum import StrEnum

from pydantic import Field, ValidationError, model_validator

from esper.contracts._base import Contract, describe_validation_error
from esper.contracts.decisions import AdaptationDecision
from esper.contracts.kernel import KernelPhase, KernelTarget
from esper.contracts.seed import SeedStage
from esper.contracts.telemetry import TelemetrySnapshot
from esper.contracts.types import (
    Count,
    FiniteFloat,
    Fraction,
    Identifier,
    KernelId,
    LongText,
    Sha256Hex,
    ShortText,
    Step,
)


class Topic(StrEnum):
    """The topics on Oona's bus."""

    BLUEPRINT_SUBMITTED = "blueprint.submitted"
    KERNEL_PHASE_CHANGED = "kernel.phase_changed"
    SEED_LIFECYCLE = "seed.lifecycle"
    ADAPTATION_DECIDED = "adaptation.decided"
    TELEMETRY = "telemetry.snapshot"
    RUN_PROGRESS = "run.progress"
    RUN_FINISHED = "run.finished"


class BlueprintSubmitted(Contract):
    """A blueprint was registered in Urza and wants compiling.

    Attributes:
        blueprint_hash: The blueprint.
        name: Its name.
        targets: Targets to compile it for.
    """

    blueprint_hash: Sha256Hex
    name: ShortText
    targets: list[KernelTarget] = Field(max_length=16)


class KernelPhaseChanged(Contract):
    """A kernel moved to a new phase.

    Attributes:
        kernel_id: The kernel.
        blueprint_hash: Its blueprint.
        target: Its target.
        phase: The new phase.
    """

    kernel_id: KernelId
    blueprint_hash: Sha256Hex
    target: KernelTarget
    phase: KernelPhase


class SeedLifecycleEvent(Contract):
    """A seed slot changed stage during a run.

    Attributes:
        run_id: The run.
        slot_id: The slot.
        source: Stage before.
        target: Stage after.
        step: Training step of the change.
        kernel_id: The seed's kernel, if any.
    """

    run_id: Identifier
    slot_id: Identifier
    source: SeedStage
    target: SeedStage
    step: Step
    kernel_id: KernelId | None = None


class RunProgress(Contract):
    """A run's progress at an epoch boundary.

    Attributes:
        run_id: The run.
        epoch: The epoch just finished.
        train_loss: Mean training loss over the epoch.
        val_accuracy: Validation accuracy after the epoch.
        params: Parameters of the model now.
    """

    run_id: Identifier
    epoch: Step
    train_loss: FiniteFloat
    val_accuracy: FiniteFloat
    params: int = Field(ge=0)


class RunFinished(Contract):
    """A run ended: its training job finished and wrote its report, or it stopped on an error.

    Published once, last, by the run itself; a consumer that mirrors a run (the operator) takes
    it as the run's outcome.

    Attributes:
        run_id: The run.
        succeeded: Whether the run finished and wrote its report.
        test_accuracy: The grown model's test accuracy (succeeded only).
        params: The grown model's parameters at the end (succeeded only).
        seeds_fossilized: Seeds that ended fossilized (succeeded only).
        seeds_culled: Seeds that ended culled (succeeded only).
        error: What stopped the run (failed only).
    """

    run_id: Identifier
    succeeded: bool
    test_accuracy: Fraction | None = None
    params: Count | None = None
    seeds_fossilized: Count | None = None
    seeds_culled: Count | None = None
    error: LongText | None = None

    @model_validator(mode="after")
    def _outcome_is_complete(self) -> "RunFinished":
        results = (self.test_accuracy, self.params, self.seeds_fossilized, self.seeds_culled)
        if self.succeeded and (any(value is None for value in results) or self.error):
            raise ValueError(
                "a succeeded run gives testAccuracy, params, seedsFossilized and seedsCulled, "
                "and no error"
            )
        if not self.succeeded and (not self.error or any(v is not None for v in results)):
            raise ValueError("a failed run gives an error and no results")
        return self


EventPayload = (
    BlueprintSubmitted
    | KernelPhaseChanged
    | SeedLifecycleEvent
    | AdaptationDecision
    | TelemetrySnapshot
    | RunProgress
    | RunFinished
)
"""Any event payload; which one an event carries is fixed by its topic."""

PAYLOAD_BY_TOPIC: dict[Topic, type[Contract]] = {
    Topic.BLUEPRINT_SUBMITTED: BlueprintSubmitted,
    Topic.KERNEL_PHASE_CHANGED: KernelPhaseChanged,
    Topic.SEED_LIFECYCLE: SeedLifecycleEvent,
    Topic.ADAPTATION_DECIDED: AdaptationDecision,
    Topic.TELEMETRY: TelemetrySnapshot,
    Topic.RUN_PROGRESS: RunProgress,
    Topic.RUN_FINISHED: RunFinished,
}
"""The payload model of each topic."""


def _new_id() -> str:
    return uuid.uuid4().hex


def _now() -> datetime:
    return datetime.now(UTC)


class Event(Contract):
    """The envelope of every message on Oona.

    Attributes:
        id: Unique event id; consumers deduplicate by it.
        topic: The topic, which fixes the payload's model.
        trace_id: Follows one piece of work across components.
        source: The component that published the event.
        created_at: When the event was created (UTC).
        payload: The message.
    """

    id: Identifier = Field(default_factory=_new_id)
    topic: Topic
    trace_id: Identifier = Field(default_factory=_new_id)
    source: Identifier
    created_at: datetime = Field(default_factory=_now)
    payload: EventPayload

    @model_validator(mode="before")
    @classmethod
    def _parse_payload_for_topic(cls, data: object) -> object:
        # Decide the payload model from the topic instead of letting the union guess.
        if not isinstance(data, dict) or data.get("topic") not in Topic.__members__.values():
            return data
        model = PAYLOAD_BY_TOPIC[Topic(data["topic"])]
        payload = data.get("payload")
        if isinstance(payload, model):
            return data
        if isinstance(payload, Contract):
            raise ValueError(
                f"topic '{data['topic']}' carries {model.__name__}, not {type(payload).__name__}"
            )
        try:
            parsed = model.model_validate(payload)
        except ValidationError as error:
            raise ValueError(
                f"payload of topic '{data['topic']}' is not a valid {model.__name__}: "
                f"{describe_validation_error(error)}"
            ) from None
        return {**data, "payload": parsed}

    @model_validator(mode="after")
    def _payload_matches_topic(self) -> "Event":
        expected = PAYLOAD_BY_TOPIC[self.topic]
        if not isinstance(self.payload, expected):
            raise ValueError(
                f"topic '{self.topic.value}' carries {expected.__name__}, "
                f"not {type(self.payload).__name__}"
            )
        return self
