"""The random-grafting baseline: the heuristic's timing, uniform legal choices, resumable."""

from collections import Counter

import pytest

from esper.contracts.decisions import DecisionAction
from esper.contracts.seed import SeedStage
from esper.tamiyo.random_policy import RandomPolicy
from esper.tamiyo.rules import legal_germinations
from tests.unit.tamiyo.builders import MID_LIFECYCLE, SLOT_IDS, candidate, observe, slot


def plateaued(seed: int = 0) -> RandomPolicy:
    """A policy one boundary without progress away from a plateau (patience 1)."""
    policy = RandomPolicy(plateau_patience=1, plateau_threshold=0.1, seed=seed)
    policy.load_state_dict({"best": 1.0, "stale": 0, "draws": 0})
    return policy


def choices(policy: RandomPolicy, count: int) -> list[tuple[str, str]]:
    made = []
    for _ in range(count):
        policy.load_state_dict({**policy.state_dict(), "best": 1.0, "stale": 0})
        [decision] = policy.decide(observe(1.0, candidates=CANDIDATES))
        made.append((decision.slot_id, decision.kernel_id))
    return made


CANDIDATES = {slot_id: [candidate(1, 500), candidate(2, 900)] for slot_id in SLOT_IDS}


def test_refuses_nonsense_settings() -> None:
    with pytest.raises(ValueError, match="plateau_patience must be >= 1"):
        RandomPolicy(plateau_patience=0, plateau_threshold=0.1, seed=0)


def test_waits_without_a_plateau_like_the_heuristic() -> None:
    policy = RandomPolicy(plateau_patience=2, plateau_threshold=0.1, seed=0)
    assert policy.decide(observe(None)) == []  # no validation loss: nothing to judge
    assert policy.decide(observe(1.0)) == []  # first loss seen
    assert policy.decide(observe(0.5)) == []  # improving
    assert policy.decide(observe(0.5)) == []  # one boundary stale of two
    [decision] = policy.decide(observe(0.5))
    assert decision.action is DecisionAction.GERMINATE
    assert "random grafting" in decision.reason


def test_chooses_uniformly_among_legal_pairs_only() -> None:
    # A FOSSILIZED layer2 and a kernel beyond the budget leave the small kernel in layer1 and
    # in layer3: exactly two legal pairs.
    slots = [slot("layer1"), slot("layer2", stage=SeedStage.FOSSILIZED), slot("layer3")]
    candidates = {slot_id: [candidate(1, 500), candidate(2, 10**6)] for slot_id in SLOT_IDS}
    observation = observe(1.0, slots=slots, candidates=candidates, budget=1000)
    legal = {(s.slot_id, c.kernel.id) for s, c in legal_germinations(observation)}
    assert len(legal) == 2
    policy = plateaued()
    seen: Counter[tuple[str, str]] = Counter()
    for _ in range(200):
        policy.load_state_dict({**policy.state_dict(), "best": 1.0, "stale": 0})
        [decision] = policy.decide(observe(1.0, slots=slots, candidates=candidates, budget=1000))
        seen[(decision.slot_id, decision.kernel_id)] += 1
        assert decision.confidence == pytest.approx(0.5)
    assert set(seen) == legal
    assert min(seen.values()) > 60  # both drawn about half the time


@pytest.mark.parametrize("stage", MID_LIFECYCLE)
def test_never_grows_while_a_seed_is_judged(stage: SeedStage) -> None:
    slots = [slot("layer1"), slot("layer2", stage=stage), slot("layer3")]
    assert plateaued().decide(observe(1.0, slots=slots)) == []


def test_respects_max_seeds_and_exclusions() -> None:
    fossils = [slot("layer1", stage=SeedStage.FOSSILIZED), slot("layer2"), slot("layer3")]
    assert plateaued().decide(observe(1.0, slots=fossils, max_seeds=1)) == []
    kernel_id = CANDIDATES["layer1"][0].kernel.id
    excluded = frozenset(
        (slot_id, c.kernel.id) for slot_id in SLOT_IDS for c in CANDIDATES[slot_id]
    )
    assert plateaued().decide(observe(1.0, candidates=CANDIDATES, excluded=excluded)) == []
    only = excluded - {("layer3", kernel_id)}
    [decision] = plateaued().decide(observe(1.0, candidates=CANDIDATES, excluded=only))
    assert (decision.slot_id, decision.kernel_id) == ("layer3", kernel_id)


def test_the_same_seed_draws_the_same_sequence_and_resume_continues_it() -> None:
    first = choices(plateaued(seed=7), 10)
    assert choices(plateaued(seed=7), 10) == first
    assert choices(plateaued(seed=8), 10) != first
    # Stop after four choices, restore into a fresh policy: the remaining six follow.
    policy = plateaued(seed=7)
    head = choices(policy, 4)
    resumed = RandomPolicy(plateau_patience=1, plateau_threshold=0.1, seed=7)
    resumed.load_state_dict(policy.state_dict())
    assert head + choices(resumed, 6) == first
