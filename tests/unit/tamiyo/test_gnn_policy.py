"""The GNN policy as a Tamiyo policy: legal decisions only, seeded sampling, checkpoints."""

from pathlib import Path

import pytest
import torch

from esper.contracts.decisions import AdaptationDecision, DecisionAction
from esper.contracts.seed import SeedStage
from esper.tamiyo import gnn
from esper.tamiyo.encoding import ActionKind
from esper.tamiyo.features import encode
from esper.tamiyo.gnn_policy import GnnPolicy, PolicyStep, action_for_decision
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


def test_the_recorder_sees_every_action_with_its_log_prob_and_value(net: gnn.TamiyoNet) -> None:
    steps: list[PolicyStep] = []
    policy = GnnPolicy(net, greedy=False, seed=5, recorder=steps.append)
    observations = [observe(1.0, candidates=CANDIDATES, step=100 * (i + 1)) for i in range(12)]
    decisions = [policy.decide(observation) for observation in observations]
    assert [step.step for step in steps] == [100 * (i + 1) for i in range(12)]
    for step, made in zip(steps, decisions, strict=True):
        # A wait is recorded too: PPO learns from it like from any other action.
        assert (step.action.kind is ActionKind.WAIT) == (made == [])
        with torch.no_grad():
            out = net(step.inp)
        assert step.log_prob == pytest.approx(float(gnn.log_prob(out, step.action)), abs=1e-5)
        assert step.value == pytest.approx(float(out.value), abs=1e-5)
        if made:
            assert action_for_decision(step.inp, made[0]) == step.action


def test_action_for_decision_maps_each_kind(net: gnn.TamiyoNet) -> None:
    slots = [slot("layer1", stage=SeedStage.PROBATION), slot("layer2"), slot("layer3")]
    observation = observe(1.0, slots=slots, candidates=CANDIDATES)
    inp = encode(observation)
    wait = action_for_decision(inp, None)
    assert wait == gnn.Action(ActionKind.WAIT, -1)

    def decision(action: DecisionAction, slot_id: str, kernel_id: str | None) -> AdaptationDecision:
        return AdaptationDecision(
            decision_id="d-" + "0" * 32,
            run_id="run-1",
            step=100,
            action=action,
            slot_id=slot_id,
            kernel_id=kernel_id,
            blueprint_hash=None if kernel_id is None else "a" * 64,
            reason="test",
            confidence=1.0,
        )

    kernel = CANDIDATES["layer3"][1].kernel.id
    germinate = action_for_decision(inp, decision(DecisionAction.GERMINATE, "layer3", kernel))
    assert germinate.kind is ActionKind.GERMINATE
    assert inp.slot_ids[int(inp.candidate_slot[germinate.target])] == "layer3"
    assert inp.candidate_kernel_ids[germinate.target] == kernel
    cull = action_for_decision(inp, decision(DecisionAction.CULL, "layer1", None))
    assert cull == gnn.Action(ActionKind.CULL, inp.slot_ids.index("layer1"))
    fossilize = action_for_decision(inp, decision(DecisionAction.FOSSILIZE, "layer1", None))
    assert fossilize == gnn.Action(ActionKind.FOSSILIZE, inp.slot_ids.index("layer1"))
    with pytest.raises(ValueError, match="slot nowhere is not observed"):
        action_for_decision(inp, decision(DecisionAction.CULL, "nowhere", None))
    with pytest.raises(ValueError, match="is not a candidate for slot layer2"):
        action_for_decision(inp, decision(DecisionAction.GERMINATE, "layer2", "k-" + "f" * 24))
