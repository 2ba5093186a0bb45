"""Kubernetes-style conditions: transition times, truncation, lookup."""

from datetime import UTC, datetime, timedelta

import pytest

from esper.contracts.crd import Condition, ConditionStatus
from esper_operator.conditions import is_true, set_condition

T0 = datetime(2025, 1, 1, 12, 0, tzinfo=UTC)
T1 = T0 + timedelta(minutes=5)


def test_a_new_condition_is_added_at_the_end() -> None:
    first = set_condition([], "Valid", True, "SpecAccepted", "", generation=1, now=T0)
    both = set_condition(first, "Ready", False, "InProgress", "0/1", generation=1, now=T0)
    assert [item.type for item in both] == ["Valid", "Ready"]
    ready = both[1]
    assert ready.status is ConditionStatus.FALSE
    assert ready.reason == "InProgress"
    assert ready.message == "0/1"
    assert ready.last_transition_time == T0
    assert ready.observed_generation == 1


@pytest.mark.parametrize(
    ("status", "expected"),
    [(True, ConditionStatus.TRUE), (False, ConditionStatus.FALSE), (None, ConditionStatus.UNKNOWN)],
)
def test_status_values(status: bool | None, expected: ConditionStatus) -> None:
    (made,) = set_condition([], "Ready", status, "Why", "", generation=0, now=T0)
    assert made.status is expected


def test_the_transition_time_is_kept_while_the_status_holds() -> None:
    before = set_condition([], "Ready", False, "InProgress", "0/2", generation=1, now=T0)
    after = set_condition(before, "Ready", False, "StillWorking", "1/2", generation=2, now=T1)
    (ready,) = after
    assert ready.last_transition_time == T0
    assert ready.reason == "StillWorking"
    assert ready.message == "1/2"
    assert ready.observed_generation == 2


def test_the_transition_time_changes_when_the_status_flips() -> None:
    before = set_condition([], "Ready", False, "InProgress", "", generation=1, now=T0)
    after = set_condition(before, "Ready", True, "KernelsJudged", "", generation=1, now=T1)
    assert after[0].last_transition_time == T1
    assert after[0].status is ConditionStatus.TRUE


def test_other_conditions_and_their_order_are_untouched() -> None:
    conditions = set_condition([], "Valid", True, "A", "", generation=1, now=T0)
    conditions = set_condition(conditions, "Ready", False, "B", "", generation=1, now=T0)
    conditions = set_condition(conditions, "Compiling", True, "C", "", generation=1, now=T0)
    updated = set_condition(conditions, "Ready", True, "D", "", generation=2, now=T1)
    assert [item.type for item in updated] == ["Valid", "Ready", "Compiling"]
    assert updated[0] is conditions[0]
    assert updated[2] is conditions[2]
    assert conditions[1].status is ConditionStatus.FALSE  # the input list is not changed


@pytest.mark.parametrize("existing", [False, True])
def test_the_message_is_truncated_to_the_contract_limit(existing: bool) -> None:
    start = set_condition([], "Ready", True, "A", "", generation=0, now=T0) if existing else []
    (made,) = set_condition(start, "Ready", True, "A", "x" * 10_000, generation=0, now=T0)
    assert made.message == "x" * 4096
    assert Condition.model_validate(made.model_dump()) == made


def test_now_defaults_to_the_current_time() -> None:
    before = datetime.now(UTC)
    (made,) = set_condition([], "Ready", True, "A", "", generation=0)
    assert before <= made.last_transition_time <= datetime.now(UTC)


def test_is_true() -> None:
    conditions = set_condition([], "Valid", True, "A", "", generation=0, now=T0)
    conditions = set_condition(conditions, "Ready", False, "B", "", generation=0, now=T0)
    conditions = set_condition(conditions, "Compiling", None, "C", "", generation=0, now=T0)
    assert is_true(conditions, "Valid")
    assert not is_true(conditions, "Ready")
    assert not is_true(conditions, "Compiling")
    assert not is_true(conditions, "Missing")
    assert not is_true([], "Valid")
