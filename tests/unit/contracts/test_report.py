"""RunReport: the report.json a finished run writes, and the models inside it."""

import json
import math
from datetime import UTC, datetime
from typing import Any

import pytest
from pydantic import ValidationError

from esper.contracts import (
    CurvePoint,
    LifecycleMark,
    ModelResult,
    Rollback,
    RunReport,
    SeedStage,
    SeedSummary,
)
from esper.contracts.report import MAX_POINTS, REPORT_FORMAT

from .samples import (
    MEASURED_AT,
    curve_point,
    lifecycle_mark,
    model_result,
    rollback,
    run_report,
    run_spec,
    seed_summary,
)


def report_document(**changes: Any) -> dict[str, Any]:
    """The sample report as report.json holds it (camelCase JSON), with changes."""
    document = json.loads(run_report().to_json())
    document.update(changes)
    return document


def minimal_report(**changes: Any) -> RunReport:
    data: dict[str, Any] = {
        "run_id": "run-2",
        "spec": run_spec().model_copy(update={"baseline": False}),
        "started_at": MEASURED_AT,
        "finished_at": MEASURED_AT,
        "device": "cpu",
        "torch_version": "2.11.0",
        "grown": model_result(),
    }
    data.update(changes)
    return RunReport.model_validate(data)


def test_report_format_is_versioned() -> None:
    assert REPORT_FORMAT == "esper.dev/run-report/v1"
    assert run_report().format == REPORT_FORMAT
    assert json.loads(run_report().to_json())["format"] == REPORT_FORMAT


def test_report_json_round_trip_by_alias() -> None:
    report = run_report()
    text = report.to_json()
    assert text == report.model_dump_json(by_alias=True)
    document = json.loads(text)
    assert set(document) == {
        "format",
        "runId",
        "spec",
        "startedAt",
        "finishedAt",
        "device",
        "torchVersion",
        "grown",
        "baseline",
        "lifecycle",
        "decisions",
        "seeds",
        "rollbacks",
    }
    # Nested models are camelCase too, down to the spec's new fields and the curve points.
    assert {"testAccuracy", "testLoss", "trainSeconds", "curve"} <= set(document["grown"])
    assert {"trainLoss", "valLoss", "valAccuracy"} <= set(document["grown"]["curve"][0])
    assert {"slotId", "kernelId", "blueprintName"} <= set(document["lifecycle"][0])
    assert {"restoredStep", "culledSlot"} <= set(document["rollbacks"][0])
    assert {"finalStage", "germinatedStep", "endedStep"} <= set(document["seeds"][0])
    assert {"waitForKernels", "baseline", "blueprints"} <= set(document["spec"])
    assert document["startedAt"] == "2025-01-02T03:04:05Z"
    assert document["lifecycle"][0]["target"] == "GERMINATED"
    again = RunReport.model_validate_json(text)
    assert again == report
    assert again.to_json() == text
    # snake_case input (a Python caller) gives the same value.
    assert RunReport.model_validate(report.model_dump(by_alias=False)) == report


def test_a_minimal_report_gets_empty_histories() -> None:
    report = minimal_report()
    assert report.baseline is None
    assert (report.lifecycle, report.decisions, report.seeds, report.rollbacks) == ([], [], [], [])
    assert RunReport.model_validate_json(report.to_json()) == report
    assert json.loads(report.to_json())["baseline"] is None


@pytest.mark.parametrize(
    "value", ["esper.dev/run-report/v2", "run-report/v1", "", "ESPER.DEV/RUN-REPORT/V1"]
)
def test_another_format_is_rejected(value: str) -> None:
    with pytest.raises(ValidationError) as caught:
        RunReport.model_validate(report_document(format=value))
    assert "format" in str(caught.value)
    assert caught.value.errors()[0]["type"] == "literal_error"


def test_the_format_may_be_omitted_on_input() -> None:
    document = report_document()
    del document["format"]
    assert RunReport.model_validate(document) == run_report()


@pytest.mark.parametrize(
    "missing",
    ["runId", "spec", "startedAt", "finishedAt", "device", "torchVersion", "grown"],
)
def test_report_required_fields(missing: str) -> None:
    document = report_document()
    del document[missing]
    with pytest.raises(ValidationError, match=f"{missing}\n  Field required"):
        RunReport.model_validate(document)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("runId", "run 1"),
        ("device", "d" * 257),
        ("torchVersion", "t" * 257),
        ("startedAt", "yesterday"),
    ],
)
def test_report_field_bounds(field: str, value: Any) -> None:
    with pytest.raises(ValidationError, match=field):
        RunReport.model_validate(report_document(**{field: value}))


def test_an_invalid_spec_inside_a_report_is_an_error() -> None:
    document = report_document()
    document["spec"]["schedule"]["lossSpikeFactor"] = 1.0
    with pytest.raises(ValidationError, match=r"spec\.schedule\.lossSpikeFactor"):
        RunReport.model_validate(document)


def test_decisions_inside_a_report_are_validated() -> None:
    document = report_document()
    document["decisions"][0]["kernelId"] = None
    with pytest.raises(ValidationError, match="a germinate decision names kernelId"):
        RunReport.model_validate(document)


def test_history_lists_are_bounded() -> None:
    assert MAX_POINTS == 100_000
    mark = lifecycle_mark()
    with pytest.raises(ValidationError, match="lifecycle"):
        minimal_report(lifecycle=[mark] * (MAX_POINTS + 1))
    with pytest.raises(ValidationError, match="seeds"):
        minimal_report(seeds=[seed_summary()] * 4097)
    point = curve_point()
    with pytest.raises(ValidationError, match="curve"):
        ModelResult.model_validate(
            model_result().model_dump(by_alias=False) | {"curve": [point] * (MAX_POINTS + 1)}
        )


# ------------------------------------------------------------------------------- CurvePoint


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("step", -1),
        ("epoch", 10**12 + 1),
        ("train_loss", -0.1),
        ("train_loss", math.nan),
        ("val_loss", math.inf),
        ("val_accuracy", 1.01),
        ("val_accuracy", -0.01),
        ("val_accuracy", math.nan),
        ("params", -1),
    ],
)
def test_curve_point_bounds(field: str, value: Any) -> None:
    document = curve_point().model_dump(by_alias=False) | {field: value}
    with pytest.raises(ValidationError, match=field):
        CurvePoint.model_validate(document)


def test_curve_point_boundaries_are_accepted() -> None:
    point = CurvePoint(
        step=0, epoch=0, train_loss=0.0, val_loss=0.0, val_accuracy=1.0, params=10**15
    )
    assert (point.val_accuracy, point.params) == (1.0, 10**15)


# ------------------------------------------------------------------------------ ModelResult


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("test_accuracy", 1.5),
        ("test_loss", -1.0),
        ("test_loss", math.nan),
        ("train_seconds", -0.5),
        ("train_seconds", math.inf),
        ("params", -1),
        ("steps", -1),
        ("train_flops", -1),
        ("inference_flops", -1),
        ("train_flops", None),
    ],
)
def test_model_result_bounds(field: str, value: Any) -> None:
    document = model_result().model_dump(by_alias=False) | {field: value}
    with pytest.raises(ValidationError, match=field):
        ModelResult.model_validate(document)


def test_model_result_needs_a_curve_but_it_may_be_empty() -> None:
    document = model_result().model_dump(by_alias=False)
    del document["curve"]
    with pytest.raises(ValidationError, match="curve"):
        ModelResult.model_validate(document)
    assert ModelResult.model_validate(document | {"curve": []}).curve == []


# ---------------------------------------------------------------------------- LifecycleMark


def test_lifecycle_mark_optional_fields() -> None:
    mark = LifecycleMark(
        step=5, slot_id="blocks.0", source="TRAINING", target="CULLED", reason="governor"
    )
    assert (mark.kernel_id, mark.blueprint_name) == (None, None)
    assert (mark.source, mark.target) == (SeedStage.TRAINING, SeedStage.CULLED)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("source", "SPROUTED"),
        ("target", "dormant"),
        ("kernel_id", "k-short"),
        ("slot_id", "a b"),
        ("reason", "r" * 257),
        ("step", -1),
    ],
)
def test_lifecycle_mark_bounds(field: str, value: Any) -> None:
    document = lifecycle_mark().model_dump(by_alias=False) | {field: value}
    with pytest.raises(ValidationError, match=field):
        LifecycleMark.model_validate(document)


# --------------------------------------------------------------------------------- Rollback


def test_rollback_without_a_culled_slot() -> None:
    value = Rollback(step=10, restored_step=0, reason="non-finite loss")
    assert value.culled_slot is None
    assert Rollback.model_validate_json(value.to_json()) == value


@pytest.mark.parametrize(
    ("field", "value"),
    [("step", -1), ("restored_step", -1), ("culled_slot", "bad slot"), ("reason", "x" * 257)],
)
def test_rollback_bounds(field: str, value: Any) -> None:
    document = rollback().model_dump(by_alias=False) | {field: value}
    with pytest.raises(ValidationError, match=field):
        Rollback.model_validate(document)


# ------------------------------------------------------------------------------ SeedSummary


def test_a_live_seed_when_the_run_ended() -> None:
    data = seed_summary().model_dump(by_alias=False)
    data.update(final_stage="BLENDING", ended_step=None, contribution=None)
    summary = SeedSummary.model_validate(data)
    assert summary.final_stage is SeedStage.BLENDING
    assert (summary.ended_step, summary.contribution) == (None, None)


@pytest.mark.parametrize("contribution", [-0.5, 0.0, 12.0])
def test_seed_contribution_may_be_any_finite_number(contribution: float) -> None:
    data = seed_summary().model_dump(by_alias=False) | {"contribution": contribution}
    assert SeedSummary.model_validate(data).contribution == contribution


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("contribution", math.nan),
        ("contribution", math.inf),
        ("contribution", -math.inf),
        ("kernel_id", "k-" + "0" * 23),
        ("blueprint_hash", "A" * 64),
        ("final_stage", "GROWN"),
        ("germinated_step", -1),
        ("ended_step", -1),
        ("params", -1),
    ],
)
def test_seed_summary_bounds(field: str, value: Any) -> None:
    document = seed_summary().model_dump(by_alias=False) | {field: value}
    with pytest.raises(ValidationError, match=field):
        SeedSummary.model_validate(document)


def test_report_timestamps_keep_their_timezone() -> None:
    report = minimal_report(finished_at=datetime(2025, 1, 2, 4, 0, tzinfo=UTC))
    again = RunReport.model_validate_json(report.to_json())
    assert again.finished_at == datetime(2025, 1, 2, 4, 0, tzinfo=UTC)
    assert again.finished_at.tzinfo is not None


def test_baseline_presence_must_match_the_spec() -> None:
    with pytest.raises(ValidationError, match="baseline"):
        minimal_report(spec=run_spec().model_copy(update={"baseline": True}))


def test_finished_before_started_is_rejected() -> None:
    with pytest.raises(ValidationError, match="finishedAt is before startedAt"):
        minimal_report(started_at=datetime(2025, 1, 3, tzinfo=UTC))


def test_an_illegal_lifecycle_move_is_rejected() -> None:
    with pytest.raises(ValidationError, match="SeedStage"):
        LifecycleMark(step=1, slot_id="s", source="DORMANT", target="FOSSILIZED", reason="x")


def test_a_rollback_cannot_restore_a_later_step() -> None:
    with pytest.raises(ValidationError, match="cannot restore the later step"):
        Rollback(step=5, restored_step=6, reason="spike")


def test_a_seed_cannot_end_before_it_germinated() -> None:
    document = seed_summary().model_dump()
    document.update(germinatedStep=10, endedStep=9)
    with pytest.raises(ValidationError, match="before it germinated"):
        SeedSummary.model_validate(document)
