"""The heuristic policy: plateau (when), bottleneck score (where), kernel choice (which)."""

from collections.abc import Sequence

import pytest

from esper.contracts.decisions import DecisionAction
from esper.contracts.seed import SeedStage
from esper.tamiyo.heuristic import HeuristicPolicy, bottleneck_scores
from esper.tamiyo.policy import KernelCandidate, decision_id
from tests.unit.tamiyo.builders import (
    MID_LIFECYCLE,
    candidate,
    observe,
    slot,
)


def plateaued(patience: int = 1, threshold: float = 0.1, loss: float = 1.0) -> HeuristicPolicy:
    """A policy that has seen ``loss`` and then ``patience - 1`` boundaries without progress."""
    policy = HeuristicPolicy(plateau_patience=patience, plateau_threshold=threshold)
    policy.load_state_dict({"best": loss, "stale": patience - 1})
    return policy


# Construction ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("patience", "threshold"), [(0, 0.1), (-1, 0.1), (2, -0.01)])
def test_refuses_nonsense_settings(patience: int, threshold: float) -> None:
    with pytest.raises(ValueError, match="plateau_patience must be >= 1"):
        HeuristicPolicy(plateau_patience=patience, plateau_threshold=threshold)


def test_starts_with_no_loss_seen() -> None:
    policy = HeuristicPolicy(plateau_patience=3, plateau_threshold=0.05)
    assert policy.state_dict() == {"best": float("inf"), "stale": 0}


# Bottleneck scores ----------------------------------------------------------------------------


def test_bottleneck_score_is_relative_gradient_times_live_share() -> None:
    scores = bottleneck_scores([slot("a", gradient=1.0, dead=0.0), slot("b", 3.0, dead=0.5)])
    # Mean gradient norm 2: a -> 0.5 * 1, b -> 1.5 * 0.5.
    assert scores == pytest.approx({"a": 0.5, "b": 0.75})


def test_bottleneck_scores_without_gradients_are_zero() -> None:
    assert bottleneck_scores([slot("a", 0.0), slot("b", 0.0, dead=0.3)]) == {"a": 0.0, "b": 0.0}


def test_bottleneck_scores_of_no_slots_are_empty() -> None:
    assert bottleneck_scores([]) == {}


# When: the plateau ----------------------------------------------------------------------------


def test_first_loss_is_progress_not_a_plateau() -> None:
    policy = HeuristicPolicy(plateau_patience=1, plateau_threshold=0.1)
    assert policy.decide(observe(2.0)) == []
    assert policy.state_dict() == {"best": 2.0, "stale": 0}


def test_plateau_needs_patience_boundaries_without_enough_improvement() -> None:
    policy = HeuristicPolicy(plateau_patience=3, plateau_threshold=0.1)
    outcomes = [len(policy.decide(observe(loss))) for loss in [1.0, 0.95, 0.92, 0.91]]
    assert outcomes == [0, 0, 0, 1]


def test_improvement_resets_the_patience_count() -> None:
    policy = HeuristicPolicy(plateau_patience=2, plateau_threshold=0.1)
    losses = [1.0, 0.95, 0.8, 0.79, 0.78]
    outcomes = [len(policy.decide(observe(loss))) for loss in losses]
    # 0.95 is stale (1); 0.8 beats 1.0 by 20%: reset; 0.79 stale (1); 0.78 stale (2): plateau.
    assert outcomes == [0, 0, 0, 0, 1]


@pytest.mark.parametrize(
    ("loss", "improved"),
    [(0.91, False), (0.9, False), (0.89, True)],
    ids=["9pct", "exactly-10pct", "11pct"],
)
def test_improvement_must_exceed_the_relative_threshold(loss: float, improved: bool) -> None:
    policy = HeuristicPolicy(plateau_patience=5, plateau_threshold=0.1)
    policy.load_state_dict({"best": 1.0, "stale": 0})
    policy.decide(observe(loss))
    expected = {"best": loss, "stale": 0} if improved else {"best": 1.0, "stale": 1}
    assert policy.state_dict() == expected


def test_zero_threshold_counts_any_decrease_and_an_equal_loss_as_stale() -> None:
    policy = plateaued(patience=1, threshold=0.0, loss=1.0)
    assert policy.decide(observe(0.999)) == []
    assert len(policy.decide(observe(0.999))) == 1


def test_no_validation_loss_is_no_decision_and_no_count() -> None:
    policy = plateaued(patience=1)
    before = policy.state_dict()
    assert policy.decide(observe(None)) == []
    assert policy.state_dict() == before


def test_germination_restarts_the_plateau_counter() -> None:
    policy = plateaued(patience=2, threshold=0.1, loss=1.0)
    assert len(policy.decide(observe(0.97))) == 1
    assert policy.state_dict() == {"best": 0.97, "stale": 0}
    assert policy.decide(observe(0.97)) == []
    assert len(policy.decide(observe(0.97))) == 1


# When: one seed at a time, and at most max_seeds ----------------------------------------------


@pytest.mark.parametrize("stage", MID_LIFECYCLE, ids=[s.value for s in MID_LIFECYCLE])
def test_no_decision_while_any_seed_is_mid_lifecycle(stage: SeedStage) -> None:
    policy = plateaued(patience=1)
    slots = [slot("layer1", stage=stage), slot("layer2"), slot("layer3")]
    assert policy.decide(observe(1.0, slots=slots)) == []
    # The plateau keeps counting, so growth follows as soon as the seed is done.
    assert policy.state_dict() == {"best": 1.0, "stale": 1}
    slots[0] = slot("layer1", stage=SeedStage.FOSSILIZED)
    assert len(policy.decide(observe(1.0, slots=slots))) == 1


def test_no_decision_once_max_seeds_are_fossilized() -> None:
    fossil = SeedStage.FOSSILIZED
    slots = [slot("layer1", stage=fossil), slot("layer2", stage=fossil), slot("layer3")]
    assert plateaued().decide(observe(1.0, slots=slots, max_seeds=2)) == []
    [decision] = plateaued().decide(observe(1.0, slots=slots, max_seeds=3))
    assert decision.slot_id == "layer3"


def test_max_seeds_zero_never_grows() -> None:
    assert plateaued().decide(observe(1.0, max_seeds=0)) == []


def test_a_failed_choice_does_not_restart_the_plateau() -> None:
    policy = plateaued(patience=1)
    assert policy.decide(observe(1.0, candidates={})) == []
    assert policy.state_dict() == {"best": 1.0, "stale": 1}
    assert len(policy.decide(observe(1.0))) == 1


# Where: the slot ------------------------------------------------------------------------------


def test_grows_in_the_slot_with_the_highest_bottleneck_score() -> None:
    # Mean gradient 2: layer1 0.5 * 1, layer2 0.9 * (1 - 0.5) = 0.45, layer3 1.6 * 0.4 = 0.64.
    slots = [slot("layer1", 1.0), slot("layer2", 1.8, dead=0.5), slot("layer3", 3.2, dead=0.6)]
    scores = bottleneck_scores(slots)
    assert max(scores, key=scores.__getitem__) == "layer3"
    [decision] = plateaued().decide(observe(1.0, slots=slots))
    assert decision.slot_id == "layer3"


def test_dead_activations_lower_a_slot_below_a_weaker_gradient() -> None:
    slots = [slot("layer1", 2.0, dead=0.9), slot("layer2", 1.0), slot("layer3", 0.5)]
    [decision] = plateaued().decide(observe(1.0, slots=slots))
    assert decision.slot_id == "layer2"


def test_equal_scores_go_to_the_first_slot_id() -> None:
    slots = [slot("layer3"), slot("layer2"), slot("layer1")]
    [decision] = plateaued().decide(observe(1.0, slots=slots))
    assert decision.slot_id == "layer1"


def test_only_dormant_slots_are_chosen() -> None:
    slots = [slot("layer1", 9.0, stage=SeedStage.FOSSILIZED), slot("layer2", 1.0), slot("layer3")]
    [decision] = plateaued().decide(observe(1.0, slots=slots))
    assert decision.slot_id == "layer2"


def test_a_slot_without_ready_kernels_passes_to_the_next_best() -> None:
    slots = [slot("layer1", 1.0), slot("layer2", 3.0), slot("layer3", 2.0)]
    candidates = {"layer1": [candidate(1, 10)], "layer3": [candidate(2, 10)]}
    [decision] = plateaued().decide(observe(1.0, slots=slots, candidates=candidates))
    assert decision.slot_id == "layer3"


# Which: the kernel ----------------------------------------------------------------------------


def choose(candidates: Sequence[KernelCandidate], **kwargs: object) -> str | None:
    """The kernel id the policy grows in layer1 (the only slot with candidates), if any."""
    decisions = plateaued().decide(observe(1.0, candidates={"layer1": candidates}, **kwargs))
    assert len(decisions) <= 1
    return decisions[0].kernel_id if decisions else None


def test_prefers_the_kernel_adding_the_most_parameters() -> None:
    small, large, medium = candidate(1, 100), candidate(2, 900), candidate(3, 500)
    assert choose([small, large, medium]) == large.kernel.id


def test_largest_within_the_budget() -> None:
    small, large, medium = candidate(1, 100), candidate(2, 900), candidate(3, 500)
    assert choose([small, large, medium], budget=899) == medium.kernel.id
    assert choose([small, large, medium], budget=900) == large.kernel.id
    assert choose([small, large, medium], budget=99) is None


def test_equal_parameters_go_to_the_lower_latency() -> None:
    slow, fast, unmeasured = candidate(1, 500, 2.0), candidate(2, 500, 0.3), candidate(3, 500, None)
    assert choose([slow, unmeasured, fast]) == fast.kernel.id


def test_equal_parameters_and_latency_go_to_the_blueprint_name() -> None:
    zeta = candidate(1, 500, 1.0, name="zeta")
    alpha = candidate(2, 500, 1.0, name="alpha")
    assert choose([zeta, alpha]) == alpha.kernel.id


def test_kernels_culled_in_a_slot_are_not_tried_there_again() -> None:
    large, small = candidate(1, 900), candidate(2, 100)
    assert choose([large, small], excluded=frozenset({("layer1", large.kernel.id)})) == (
        small.kernel.id
    )
    # The exclusion is per slot: the same kernel culled elsewhere is still fine here.
    assert choose([large, small], excluded=frozenset({("layer2", large.kernel.id)})) == (
        large.kernel.id
    )
    everything = frozenset({("layer1", large.kernel.id), ("layer1", small.kernel.id)})
    assert choose([large, small], excluded=everything) is None


# The decision ---------------------------------------------------------------------------------


def test_decision_fields_and_reason() -> None:
    slots = [slot("layer1", 1.0), slot("layer2", 3.0, dead=0.25), slot("layer3", 2.0)]
    chosen = candidate(7, 544, name="bottleneck-mlp")
    policy = HeuristicPolicy(plateau_patience=2, plateau_threshold=0.05)
    observation = observe(
        0.8765,
        slots=slots,
        candidates={"layer2": [chosen]},
        step=240,
        budget=10_000,
    )
    policy.load_state_dict({"best": 0.8, "stale": 1})
    [decision] = policy.decide(observation)
    score = bottleneck_scores(slots)["layer2"]  # 1.5 * 0.75
    assert score == pytest.approx(1.125)
    assert decision.action is DecisionAction.GERMINATE
    assert decision.run_id == "run-1"
    assert decision.step == 240
    assert decision.slot_id == "layer2"
    assert decision.kernel_id == chosen.kernel.id
    assert decision.blueprint_hash == chosen.kernel.blueprint_hash
    assert decision.decision_id == decision_id("run-1", 240, "layer2", "germinate")
    assert decision.confidence == pytest.approx(score / (1.0 + score))
    for text in [
        "validation loss 0.8765 has not improved by 5.0% for 2 evaluations",
        f"slot layer2 has the highest bottleneck score ({score:.2f}: gradient norm 3, dead 25%)",
        "bottleneck-mlp adds 544 parameters (budget left 10000)",
    ]:
        assert text in decision.reason


def test_decisions_are_deterministic_across_policies() -> None:
    first = plateaued().decide(observe(1.0, step=480))
    second = plateaued().decide(observe(1.0, step=480))
    assert first == second
    assert first[0].decision_id == decision_id("run-1", 480, "layer1", "germinate")


# State ----------------------------------------------------------------------------------------


def test_state_dict_round_trip_continues_identically() -> None:
    original = HeuristicPolicy(plateau_patience=3, plateau_threshold=0.1)
    for loss in (1.0, 0.95):
        original.decide(observe(loss))
    state = original.state_dict()
    assert state == {"best": 1.0, "stale": 1}
    restored = HeuristicPolicy(plateau_patience=3, plateau_threshold=0.1)
    restored.load_state_dict(state)
    assert restored.state_dict() == state
    for loss in (0.97, 0.96):
        assert restored.decide(observe(loss)) == original.decide(observe(loss))
    assert restored.state_dict() == original.state_dict() == {"best": 0.96, "stale": 0}


def test_a_fresh_policy_does_not_share_the_restored_plateau() -> None:
    restored = HeuristicPolicy(plateau_patience=2, plateau_threshold=0.1)
    restored.load_state_dict({"best": 1.0, "stale": 1})
    fresh = HeuristicPolicy(plateau_patience=2, plateau_threshold=0.1)
    assert len(restored.decide(observe(1.0))) == 1
    assert fresh.decide(observe(1.0)) == []
