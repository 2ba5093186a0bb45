"""The GNN policy as a Tamiyo policy: legal decisions only, seeded sampling, checkpoints."""

from pathlib import Path

import pytest
import torch

from esper.contracts.decisions import AdaptationDecision, DecisionAction
from esper.contracts.seed import SeedStage
from esper.tamiyo import gnn
from esper.tamiyo.gnn_policy import GnnPolicy
from esper.tamiyo.policy import Observation
from esper.tamiyo.rules import legal_germinations
from tests.unit.tamiyo.builders import SLOT_IDS, candidate, observe, slot

CANDIDATES = {slot_id: [candidate(1, 500), candidate(2, 900)] for slot_id in SLOT_IDS}


@pytest.fixture
def net() -> gnn.TamiyoNet:
    torch.manual_seed(0)
    return gnn.TamiyoNet()


def sampled(policy: GnnPolicy, observation: Observation, count: int) -> list[AdaptationDecision]:
    return [decision for _ in range(count) for decision in policy.decide(observation)]


def test_waits_when_nothing_else_is_legal(net: gnn.TamiyoNet) -> None:
    # Every slot dormant and no kernel ready: the only legal action is to wait.
    observation = observe(1.0, candidates={})
    assert GnnPolicy(net).decide(observation) == []
    assert sampled(GnnPolicy(net, greedy=False), observation, 20) == []


def test_sampled_germinations_are_legal_and_name_their_kernel(net: gnn.TamiyoNet) -> None:
    excluded = frozenset({("layer1", CANDIDATES["layer1"][0].kernel.id)})
    observation = observe(1.0, candidates=CANDIDATES, excluded=excluded)
    legal = {(s.slot_id, c.kernel.id) for s, c in legal_germinations(observation)}
    decisions = sampled(GnnPolicy(net, greedy=False, seed=3), observation, 60)
    assert decisions, "an untrained policy should act about half the time"
    for decision in decisions:
        assert decision.action is DecisionAction.GERMINATE
        assert (decision.slot_id, decision.kernel_id) in legal
        [chosen] = [c for c in CANDIDATES[decision.slot_id] if c.kernel.id == decision.kernel_id]
        assert decision.blueprint_hash == chosen.kernel.blueprint_hash
        assert decision.reason.startswith("gnn policy: germinate ")
        assert 0.0 < decision.confidence <= 1.0
    assert len({(d.slot_id, d.kernel_id) for d in decisions}) > 1  # it explores


def test_a_seed_on_probation_may_be_culled_or_fossilized_only(net: gnn.TamiyoNet) -> None:
    slots = [slot("layer1"), slot("layer2", stage=SeedStage.PROBATION), slot("layer3")]
    observation = observe(1.0, slots=slots, candidates=CANDIDATES)
    decisions = sampled(GnnPolicy(net, greedy=False, seed=5), observation, 80)
    assert {d.action for d in decisions} == {DecisionAction.CULL, DecisionAction.FOSSILIZE}
    assert {d.slot_id for d in decisions} == {"layer2"}
    assert all(d.kernel_id is None and d.blueprint_hash is None for d in decisions)


def test_greedy_is_deterministic_and_sampling_replays_after_resume(net: gnn.TamiyoNet) -> None:
    observation = observe(1.0, candidates=CANDIDATES)
    assert GnnPolicy(net).decide(observation) == GnnPolicy(net).decide(observation)
    whole = sampled(GnnPolicy(net, greedy=False, seed=11), observation, 15)
    first = GnnPolicy(net, greedy=False, seed=11)
    head = sampled(first, observation, 5)
    assert first.state_dict() == {"draws": 5}
    resumed = GnnPolicy(net, greedy=False, seed=11)
    resumed.load_state_dict(first.state_dict())
    assert head + sampled(resumed, observation, 10) == whole


def test_a_saved_network_decides_the_same_after_loading(net: gnn.TamiyoNet, tmp_path: Path) -> None:
    path = tmp_path / "tamiyo.pt"
    gnn.save(net, path)
    observation = observe(1.0, candidates=CANDIDATES)
    loaded = GnnPolicy.from_checkpoint(path, greedy=False, seed=2)
    assert sampled(loaded, observation, 20) == sampled(
        GnnPolicy(net, greedy=False, seed=2), observation, 20
    )
    other = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(3)}, other)
    with pytest.raises(ValueError, match="is not a Tamiyo checkpoint"):
        GnnPolicy.from_checkpoint(other)


@pytest.mark.parametrize(
    "content",
    [b"", b"hello, not a checkpoint", b"PK\x03\x04broken zip"],
    ids=["empty", "text", "zip"],
)
def test_files_that_are_not_checkpoints_are_refused(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "tamiyo.pt"
    path.write_bytes(content)
    with pytest.raises(ValueError, match="is not a Tamiyo checkpoint"):
        GnnPolicy.from_checkpoint(path)
