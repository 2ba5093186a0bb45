"""Simic's learning rules: GAE, behaviour cloning and PPO move the network the right way."""

import pytest
import torch

from esper.simic.ppo import HEADS, PPOConfig, Transition, gae, imitation_update, ppo_update
from esper.tamiyo import gnn
from esper.tamiyo.encoding import ActionKind, PolicyInput
from esper.tamiyo.features import encode
from tests.unit.tamiyo.builders import SLOT_IDS, candidate, observe


def test_gae_with_lambda_one_gives_discounted_returns() -> None:
    advantages, returns = gae([1.0, 0.0, 2.0], [0.5, 0.5, 0.5], gamma=0.9, lam=1.0)
    expected = [1.0 + 0.9 * 0.0 + 0.81 * 2.0, 0.0 + 0.9 * 2.0, 2.0]
    assert returns == pytest.approx(expected)
    assert advantages == pytest.approx([r - 0.5 for r in expected])


def test_gae_with_lambda_zero_is_the_one_step_td_error() -> None:
    advantages, returns = gae([1.0, 2.0], [0.3, 0.7], gamma=0.5, lam=0.0)
    # The state after the last action is terminal: its value is 0.
    assert advantages == pytest.approx([1.0 + 0.5 * 0.7 - 0.3, 2.0 - 0.7])
    assert returns == pytest.approx([1.0 + 0.5 * 0.7, 2.0])


@pytest.mark.parametrize(
    ("rewards", "values", "gamma", "lam", "message"),
    [
        ([1.0], [], 0.9, 0.9, "1 rewards but 0 values"),
        ([1.0], [0.0], 1.5, 0.9, "gamma and lam must be in"),
        ([1.0], [0.0], 0.9, -0.1, "gamma and lam must be in"),
    ],
)
def test_gae_refuses_bad_input(
    rewards: list[float], values: list[float], gamma: float, lam: float, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        gae(rewards, values, gamma=gamma, lam=lam)


@pytest.fixture
def inp() -> PolicyInput:
    candidates = {slot_id: [candidate(1, 500), candidate(2, 900)] for slot_id in SLOT_IDS}
    return encode(observe(1.0, candidates=candidates))


@pytest.fixture
def net() -> gnn.TamiyoNet:
    torch.manual_seed(0)
    return gnn.TamiyoNet()


def _log_prob(net: gnn.TamiyoNet, inp: PolicyInput, action: gnn.Action) -> float:
    with torch.no_grad():
        return float(gnn.log_prob(net(inp), action))


def test_imitation_makes_the_teachers_action_likely(net: gnn.TamiyoNet, inp: PolicyInput) -> None:
    teacher = gnn.Action(ActionKind.GERMINATE, 4)
    before = _log_prob(net, inp, teacher)
    data = [Transition(inp, teacher, 0.0, 0.0, 1.5)] * 8
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-2)
    stats = imitation_update(
        net, optimizer, data, epochs=10, minibatch=4, generator=torch.Generator().manual_seed(0)
    )
    assert _log_prob(net, inp, teacher) > max(before, -0.2)
    with torch.no_grad():
        assert float(net(inp).value) == pytest.approx(1.5, abs=0.3)
    assert set(stats.entropy) == set(HEADS)
    assert stats.passes == 10
    assert stats.approx_kl == 0.0


def test_ppo_raises_the_probability_of_advantaged_actions(
    net: gnn.TamiyoNet, inp: PolicyInput
) -> None:
    good = gnn.Action(ActionKind.GERMINATE, 2)
    bad = gnn.Action(ActionKind.WAIT, -1)
    old = {action: _log_prob(net, inp, action) for action in (good, bad)}
    data = [Transition(inp, good, old[good], 1.0, 1.0), Transition(inp, bad, old[bad], -1.0, -1.0)]
    optimizer = torch.optim.Adam(net.parameters(), lr=3e-3)
    config = PPOConfig(epochs=3, minibatch=2, target_kl=10.0)
    stats = ppo_update(net, optimizer, data * 4, config, torch.Generator().manual_seed(0))
    assert _log_prob(net, inp, good) > old[good]
    assert _log_prob(net, inp, bad) < old[bad]
    assert stats.passes == 3
    assert set(stats.entropy) == set(HEADS)
    assert stats.entropy["cull"] == 0.0  # nothing to cull: a head with one choice or none
    assert stats.entropy["kind"] > 0.0


def test_ppo_stops_its_passes_once_the_policy_moved_too_far(
    net: gnn.TamiyoNet, inp: PolicyInput
) -> None:
    good = gnn.Action(ActionKind.GERMINATE, 2)
    data = [Transition(inp, good, _log_prob(net, inp, good), 1.0, 1.0)] * 4
    # A huge step with a tiny KL limit: the first pass already exceeds it.
    optimizer = torch.optim.SGD(net.parameters(), lr=50.0)
    config = PPOConfig(epochs=5, minibatch=4, target_kl=1e-6, max_grad_norm=100.0)
    stats = ppo_update(net, optimizer, data, config, torch.Generator().manual_seed(0))
    assert stats.passes < 5


def test_ppo_needs_transitions(net: gnn.TamiyoNet) -> None:
    optimizer = torch.optim.Adam(net.parameters())
    with pytest.raises(ValueError, match="at least one transition"):
        ppo_update(net, optimizer, [], PPOConfig(), torch.Generator())
