"""Telemetry snapshots, Tamiyo's decisions and Kasmina's commands."""

import json
import math
from typing import Any

import pytest
from pydantic import ValidationError

from esper.contracts import (
    AdaptationDecision,
    CommandKind,
    DecisionAction,
    KasminaCommand,
    SlotTelemetry,
    TelemetrySnapshot,
)
from esper.contracts.telemetry import MAX_SLOTS

from .samples import (
    BLUEPRINT_HASH,
    SAMPLE_KERNEL_ID,
    adaptation_decision,
    kasmina_command,
    slot_telemetry,
    telemetry_snapshot,
)


def test_snapshot_slots_are_unique() -> None:
    with pytest.raises(ValidationError, match=r"slot 'layer1\.0': reported twice in one snapshot"):
        TelemetrySnapshot.model_validate(
            telemetry_snapshot().model_dump(by_alias=False)
            | {"slots": [slot_telemetry("layer1.0"), slot_telemetry("layer1.0")]}
        )


def test_snapshot_may_have_no_slots_and_no_validation_yet() -> None:
    document = telemetry_snapshot().model_dump(by_alias=False)
    document.update(slots=[], val_loss=None, val_accuracy=None)
    snapshot = TelemetrySnapshot.model_validate(document)
    assert snapshot.slots == []
    assert TelemetrySnapshot.model_validate_json(snapshot.to_json()) == snapshot


def test_snapshot_slot_count_is_bounded() -> None:
    document = telemetry_snapshot().model_dump(by_alias=False)
    document["slots"] = [slot_telemetry(f"s{i}") for i in range(MAX_SLOTS + 1)]
    with pytest.raises(ValidationError, match="slots"):
        TelemetrySnapshot.model_validate(document)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("train_loss", -0.1),
        ("train_loss", math.nan),
        ("val_accuracy", 1.01),
        ("loss_trend", math.inf),
        ("training_progress", -0.01),
        ("budget_left_params", -1),
        ("step", -1),
        ("run_id", ""),
    ],
)
def test_snapshot_bounds(field: str, value: Any) -> None:
    document = telemetry_snapshot().model_dump(by_alias=False) | {field: value}
    with pytest.raises(ValidationError, match=field):
        TelemetrySnapshot.model_validate(document)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("activation_mean", math.nan),
        ("activation_std", -1.0),
        ("gradient_norm", math.inf),
        ("dead_fraction", 1.5),
        ("param_count", -1),
        ("seed_param_count", 10**16),
        ("stage", "SLEEPING"),
        ("alpha", 2.0),
        ("contribution", math.inf),
        ("steps_since_change", -5),
    ],
)
def test_slot_telemetry_bounds(field: str, value: Any) -> None:
    document = slot_telemetry().model_dump(by_alias=False) | {field: value}
    with pytest.raises(ValidationError, match=field):
        SlotTelemetry.model_validate(document)


def test_slot_telemetry_accepts_negative_activation_means() -> None:
    document = slot_telemetry().model_dump(by_alias=False) | {"activation_mean": -3.5}
    assert SlotTelemetry.model_validate(document).activation_mean == -3.5


# ---------------------------------------------------------------- decisions


def decision(action: DecisionAction, **changes: Any) -> AdaptationDecision:
    document = adaptation_decision().model_dump(by_alias=False) | {"action": action}
    if action is not DecisionAction.GERMINATE:
        document.update(kernel_id=None, blueprint_hash=None)
    return AdaptationDecision.model_validate(document | changes)


@pytest.mark.parametrize("action", list(DecisionAction), ids=str)
def test_a_consistent_decision_for_every_action(action: DecisionAction) -> None:
    value = decision(action)
    assert value.action is action
    assert AdaptationDecision.model_validate_json(value.to_json()) == value


@pytest.mark.parametrize(
    "missing",
    [{"kernel_id": None}, {"blueprint_hash": None}, {"kernel_id": None, "blueprint_hash": None}],
    ids=str,
)
def test_germinate_names_kernel_and_blueprint(missing: dict[str, Any]) -> None:
    with pytest.raises(
        ValidationError, match="a germinate decision names kernelId and blueprintHash"
    ):
        decision(DecisionAction.GERMINATE, **missing)


@pytest.mark.parametrize(
    "action",
    [action for action in DecisionAction if action is not DecisionAction.GERMINATE],
    ids=str,
)
@pytest.mark.parametrize(
    "extra", [{"kernel_id": SAMPLE_KERNEL_ID}, {"blueprint_hash": BLUEPRINT_HASH}], ids=str
)
def test_other_actions_name_no_kernel(action: DecisionAction, extra: dict[str, Any]) -> None:
    with pytest.raises(ValidationError, match=f"a {action.value} decision names no kernel"):
        decision(action, **extra)


@pytest.mark.parametrize("confidence", [-0.1, 1.1, math.nan])
def test_confidence_is_a_fraction(confidence: float) -> None:
    with pytest.raises(ValidationError, match="confidence"):
        decision(DecisionAction.CULL, confidence=confidence)


def test_decision_reason_is_bounded() -> None:
    with pytest.raises(ValidationError, match="reason"):
        decision(DecisionAction.CULL, reason="x" * 4097)
    assert decision(DecisionAction.CULL, reason="x" * 4096).reason


# ---------------------------------------------------------------- commands


@pytest.mark.parametrize("kind", list(CommandKind), ids=str)
def test_kernel_id_is_given_exactly_for_germinate(kind: CommandKind) -> None:
    base = kasmina_command().model_dump(by_alias=False) | {"kind": kind}
    with_kernel = base | {"kernel_id": SAMPLE_KERNEL_ID}
    without = base | {"kernel_id": None}
    good, bad = (with_kernel, without) if kind is CommandKind.GERMINATE else (without, with_kernel)
    assert KasminaCommand.model_validate(good).kind is kind
    with pytest.raises(ValidationError, match="kernelId is given exactly when kind is germinate"):
        KasminaCommand.model_validate(bad)


def test_schedule_driven_commands_have_no_decision() -> None:
    command = KasminaCommand(command_id="c-2", slot_id="layer1.0", kind="advance", apply_at_step=5)
    assert command.decision_id is None
    assert json.loads(command.to_json())["applyAtStep"] == 5
