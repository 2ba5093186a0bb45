"""The two state machines (seed stages, kernel phases), exhaustively."""

import itertools
from enum import StrEnum
from typing import Any

import pytest
from pydantic import ValidationError

from esper.contracts import (
    KERNEL_PHASES,
    SEED_STAGES,
    IllegalTransitionError,
    KernelArtifact,
    KernelPhase,
    SeedStage,
    SeedState,
    TransitionTable,
)

from .samples import SAMPLE_KERNEL_ID, kernel_artifact

SEED_PAIRS = list(itertools.product(SeedStage, SeedStage))
KERNEL_PAIRS = list(itertools.product(KernelPhase, KernelPhase))


def pair_id(pair: tuple[StrEnum, StrEnum]) -> str:
    return f"{pair[0].value}->{pair[1].value}"


# The design (docs: "SeedStage with an explicit transition table"): the happy path, CULLED from
# every live stage, a culled slot returns to DORMANT, FOSSILIZED is final.
EXPECTED_SEED_MOVES = {
    (SeedStage.DORMANT, SeedStage.GERMINATED),
    (SeedStage.GERMINATED, SeedStage.TRAINING),
    (SeedStage.TRAINING, SeedStage.BLENDING),
    (SeedStage.BLENDING, SeedStage.PROBATION),
    (SeedStage.PROBATION, SeedStage.FOSSILIZED),
    (SeedStage.GERMINATED, SeedStage.CULLED),
    (SeedStage.TRAINING, SeedStage.CULLED),
    (SeedStage.BLENDING, SeedStage.CULLED),
    (SeedStage.PROBATION, SeedStage.CULLED),
    (SeedStage.CULLED, SeedStage.DORMANT),
}
EXPECTED_KERNEL_MOVES = {
    (KernelPhase.PENDING, KernelPhase.COMPILING),
    (KernelPhase.PENDING, KernelPhase.FAILED),
    (KernelPhase.COMPILING, KernelPhase.COMPILED),
    (KernelPhase.COMPILING, KernelPhase.FAILED),
    (KernelPhase.COMPILED, KernelPhase.VALIDATING),
    (KernelPhase.COMPILED, KernelPhase.FAILED),
    (KernelPhase.COMPILED, KernelPhase.SUPERSEDED),
    (KernelPhase.VALIDATING, KernelPhase.VALIDATED),
    (KernelPhase.VALIDATING, KernelPhase.REJECTED),
    (KernelPhase.VALIDATING, KernelPhase.FAILED),
    (KernelPhase.VALIDATED, KernelPhase.SUPERSEDED),
    (KernelPhase.FAILED, KernelPhase.PENDING),
}


def listed(table: TransitionTable[Any]) -> set[tuple[Any, Any]]:
    return {(source, target) for source, targets in table.rows().items() for target in targets}


@pytest.mark.parametrize(
    ("table", "expected"),
    [(SEED_STAGES, EXPECTED_SEED_MOVES), (KERNEL_PHASES, EXPECTED_KERNEL_MOVES)],
    ids=["seed", "kernel"],
)
def test_tables_match_the_design(table: TransitionTable[Any], expected: set[Any]) -> None:
    assert listed(table) == expected


@pytest.mark.parametrize(
    ("table", "enum"),
    [(SEED_STAGES, SeedStage), (KERNEL_PHASES, KernelPhase)],
    ids=["seed", "kernel"],
)
def test_every_state_has_a_row(table: TransitionTable[Any], enum: type[StrEnum]) -> None:
    assert set(table.rows()) == set(enum)


@pytest.mark.parametrize("pair", SEED_PAIRS, ids=pair_id)
def test_seed_stage_pairs(pair: tuple[SeedStage, SeedStage]) -> None:
    _check_pair(SEED_STAGES, "SeedStage", pair)


@pytest.mark.parametrize("pair", KERNEL_PAIRS, ids=pair_id)
def test_kernel_phase_pairs(pair: tuple[KernelPhase, KernelPhase]) -> None:
    _check_pair(KERNEL_PHASES, "KernelPhase", pair)


def _check_pair(table: TransitionTable[Any], machine: str, pair: tuple[Any, Any]) -> None:
    source, target = pair
    if target in table.rows()[source]:
        assert table.is_legal(source, target)
        assert table.check(source, target) is target
        return
    assert not table.is_legal(source, target)
    with pytest.raises(IllegalTransitionError) as caught:
        table.check(source, target)
    error = caught.value
    assert isinstance(error, ValueError)
    assert f"{machine}: illegal transition {source.value} -> {target.value}" in str(error)
    assert (error.machine, error.source, error.target) == (machine, source.value, target.value)
    allowed = sorted(state.value for state in table.allowed(source))
    assert (", ".join(allowed) if allowed else "none (terminal state)") in str(error)


def test_terminal_states() -> None:
    assert {stage for stage in SeedStage if SEED_STAGES.is_terminal(stage)} == {
        SeedStage.FOSSILIZED
    }
    assert {phase for phase in KernelPhase if KERNEL_PHASES.is_terminal(phase)} == {
        KernelPhase.REJECTED,
        KernelPhase.SUPERSEDED,
    }
    with pytest.raises(IllegalTransitionError, match=r"allowed from FOSSILIZED: none \(terminal"):
        SEED_STAGES.check(SeedStage.FOSSILIZED, SeedStage.CULLED)


def test_rows_is_a_copy() -> None:
    rows = SEED_STAGES.rows()
    rows[SeedStage.DORMANT] = frozenset(SeedStage)
    assert not SEED_STAGES.is_legal(SeedStage.DORMANT, SeedStage.FOSSILIZED)


class Light(StrEnum):
    RED = "red"
    GREEN = "green"


class Other(StrEnum):
    ONE = "one"


def test_a_table_must_cover_every_state_of_one_enum() -> None:
    with pytest.raises(ValueError, match=r"Light: transition table lacks rows for \['green'\]"):
        TransitionTable("Light", {Light.RED: frozenset({Light.GREEN})})
    with pytest.raises(ValueError, match="covers exactly one enum"):
        TransitionTable("Mixed", {Light.RED: frozenset(), Other.ONE: frozenset()})
    with pytest.raises(ValueError, match="covers exactly one enum"):
        TransitionTable("Empty", {})
    table = TransitionTable(
        "Light", {Light.RED: frozenset({Light.GREEN}), Light.GREEN: frozenset()}
    )
    assert table.name == "Light"
    assert table.allowed(Light.RED) == {Light.GREEN}


# ---------------------------------------------------------------- moved_to enforces the tables


def seed_in(stage: SeedStage, **changes: Any) -> SeedState:
    """A consistent seed state in ``stage``."""
    data: dict[str, Any] = {"slot_id": "layer1.0", "stage": stage, "stage_entered_step": 10}
    if stage is not SeedStage.DORMANT:
        data.update(kernel_id=SAMPLE_KERNEL_ID, germinated_step=5)
    data["alpha"] = {
        SeedStage.BLENDING: 0.5,
        SeedStage.PROBATION: 1.0,
        SeedStage.FOSSILIZED: 1.0,
        SeedStage.CULLED: 0.3,
    }.get(stage, 0.0)
    data.update(changes)
    return SeedState.model_validate(data)


def _fields_of(value: SeedState | KernelArtifact, *skip: str) -> dict[str, Any]:
    return {key: item for key, item in value.model_dump(by_alias=False).items() if key not in skip}


@pytest.mark.parametrize("pair", SEED_PAIRS, ids=pair_id)
def test_seed_moved_to_follows_the_table(pair: tuple[SeedStage, SeedStage]) -> None:
    source, target = pair
    before = seed_in(source)
    changes = _fields_of(seed_in(target), "stage", "stage_entered_step", "slot_id")
    if SEED_STAGES.is_legal(source, target):
        after = before.moved_to(target, step=99, **changes)
        assert after == seed_in(target, stage_entered_step=99)
        assert before.stage is source  # values are immutable
    else:
        with pytest.raises(IllegalTransitionError, match=f"{source.value} -> {target.value}"):
            before.moved_to(target, step=99, **changes)


@pytest.mark.parametrize("pair", KERNEL_PAIRS, ids=pair_id)
def test_kernel_moved_to_follows_the_table(pair: tuple[KernelPhase, KernelPhase]) -> None:
    source, target = pair
    before = kernel_artifact(source)
    changes = _fields_of(kernel_artifact(target), "phase")
    if KERNEL_PHASES.is_legal(source, target):
        after = before.moved_to(target, **changes)
        assert after == kernel_artifact(target)
        assert before.phase is source
    else:
        with pytest.raises(IllegalTransitionError, match=f"{source.value} -> {target.value}"):
            before.moved_to(target, **changes)


def test_seed_moved_to_validates_the_result() -> None:
    dormant = seed_in(SeedStage.DORMANT)
    with pytest.raises(
        ValidationError, match="a GERMINATED seed needs kernelId and germinatedStep"
    ):
        dormant.moved_to(SeedStage.GERMINATED, step=1)
    grown = dormant.moved_to(
        SeedStage.GERMINATED, step=1, kernel_id=SAMPLE_KERNEL_ID, germinated_step=1
    )
    assert (grown.stage, grown.stage_entered_step, grown.germinated_step) == (
        SeedStage.GERMINATED,
        1,
        1,
    )
    with pytest.raises(ValidationError, match="alpha must be 1 while PROBATION"):
        seed_in(SeedStage.BLENDING).moved_to(SeedStage.PROBATION, step=2)
    with pytest.raises(ValidationError, match="a DORMANT slot holds no kernel"):
        seed_in(SeedStage.CULLED).moved_to(SeedStage.DORMANT, step=3, alpha=0.0)


def test_kernel_moved_to_validates_the_result() -> None:
    compiling = kernel_artifact(KernelPhase.COMPILING)
    with pytest.raises(ValidationError, match="a Compiled kernel needs artifactUri"):
        compiling.moved_to(KernelPhase.COMPILED)
    with pytest.raises(ValidationError, match="a Failed kernel must record its error"):
        compiling.moved_to(KernelPhase.FAILED)
    failed = compiling.moved_to(KernelPhase.FAILED, error="OOM")
    assert failed.error == "OOM"
    # A failure may be retried from the start.
    assert failed.moved_to(KernelPhase.PENDING).phase is KernelPhase.PENDING
    validating = kernel_artifact(KernelPhase.VALIDATING)
    with pytest.raises(ValidationError, match="a Validated kernel needs its benchmark report"):
        validating.moved_to(KernelPhase.VALIDATED)
