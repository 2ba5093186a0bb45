"""Simic's learning rules: behaviour cloning of a teacher, and PPO with GAE.

Both work on :class:`Transition`s — one action of a rollout with its encoded observation — and
run the network on one observation at a time: observations differ in graph and candidate
sizes, episodes hold tens of actions, and a forward takes milliseconds, so batching would buy
little here and cost the static shapes the network is built around.

PPO (Schulman et al., 2017) maximises the clipped surrogate
``min(r A, clip(r, 1 - eps, 1 + eps) A)`` with ``r = exp(log p_new - log p_old)``, where
``log p_old`` is the log-probability *stored* when the rollout took the action, and advantages
``A`` from generalised advantage estimation (GAE, Schulman et al., 2016) over each episode;
plus a value loss and an entropy bonus. Every update reports each head's mean entropy, so a
collapsing head (entropy falling to 0) is seen in the training log.
"""

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from esper.tamiyo import gnn
from esper.tamiyo.encoding import PolicyInput

HEADS = ("kind", "germinate", "location", "cull", "fossilize")


@dataclass(frozen=True)
class Transition:
    """One action of a rollout, ready for learning.

    Attributes:
        inp: The encoded observation.
        action: The action taken.
        log_prob: Its log-probability when it was taken (0 for a teacher's action).
        advantage: Its advantage estimate (0 for imitation).
        value_target: The return the value head regresses to.
    """

    inp: PolicyInput
    action: gnn.Action
    log_prob: float
    advantage: float
    value_target: float


def gae(
    rewards: Sequence[float], values: Sequence[float], *, gamma: float, lam: float
) -> tuple[list[float], list[float]]:
    """Return GAE advantages and returns for one finished episode.

    Args:
        rewards: Reward of each action.
        values: The value estimate at each action's state.
        gamma: Discount per action.
        lam: GAE's lambda (0: one-step TD, 1: Monte Carlo).

    Returns:
        ``(advantages, returns)``, with ``returns = advantages + values``. The state after the
        last action is terminal (value 0).

    Raises:
        ValueError: When the lengths differ or a coefficient is outside ``[0, 1]``.
    """
    if len(rewards) != len(values):
        raise ValueError(f"{len(rewards)} rewards but {len(values)} values")
    if not (0.0 <= gamma <= 1.0 and 0.0 <= lam <= 1.0):
        raise ValueError(f"gamma and lam must be in [0, 1] (got {gamma}, {lam})")
    advantages = [0.0] * len(rewards)
    running = 0.0
    for index in reversed(range(len(rewards))):
        following = values[index + 1] if index + 1 < len(values) else 0.0
        delta = rewards[index] + gamma * following - values[index]
        running = delta + gamma * lam * running
        advantages[index] = running
    returns = [advantage + value for advantage, value in zip(advantages, values, strict=True)]
    return advantages, returns


@dataclass(frozen=True)
class PPOConfig:
    """PPO's hyper-parameters.

    Attributes:
        clip: The ratio's clip range epsilon.
        value_coef: Weight of the value loss.
        entropy_coef: Weight of the entropy bonus (on the sum of the kind head's and the
            taken kind's target head's entropy).
        epochs: Passes over the rollouts per update.
        minibatch: Transitions per optimiser step.
        max_grad_norm: Gradient clipping.
        target_kl: Stop the update's passes early once the approximate KL exceeds this.
    """

    clip: float = 0.2
    value_coef: float = 0.5
    entropy_coef: float = 0.01
    epochs: int = 4
    minibatch: int = 32
    max_grad_norm: float = 0.5
    target_kl: float = 0.05


@dataclass(frozen=True)
class UpdateStats:
    """What one update did (means over its minibatches).

    Attributes:
        policy_loss: The surrogate (or, for imitation, the negative log-likelihood).
        value_loss: Mean squared error of the value head.
        entropy: Mean entropy of each head over the transitions (nats).
        approx_kl: Mean ``log p_old - log p_new`` (PPO only; 0 for imitation).
        clip_fraction: Share of transitions whose ratio was clipped (PPO only).
        passes: Passes over the data done (PPO may stop early on the KL).
    """

    policy_loss: float
    value_loss: float
    entropy: dict[str, float]
    approx_kl: float
    clip_fraction: float
    passes: int


def _minibatches(count: int, size: int, generator: torch.Generator) -> list[list[int]]:
    order = torch.randperm(count, generator=generator).tolist()
    return [order[start : start + size] for start in range(0, count, size)]


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else 0.0


class _Tally:
    def __init__(self) -> None:
        self.policy: list[float] = []
        self.value: list[float] = []
        self.kl: list[float] = []
        self.clipped: list[float] = []
        self.entropy: dict[str, list[float]] = {head: [] for head in HEADS}

    def entropies(self, out: gnn.PolicyOutput) -> dict[str, Tensor]:
        heads = gnn.entropy(out)
        for head in HEADS:
            self.entropy[head].append(float(heads[head].detach()))
        return heads

    def stats(self, passes: int) -> UpdateStats:
        return UpdateStats(
            policy_loss=_mean(self.policy),
            value_loss=_mean(self.value),
            entropy={head: _mean(values) for head, values in self.entropy.items()},
            approx_kl=_mean(self.kl),
            clip_fraction=_mean(self.clipped),
            passes=passes,
        )


def _acting_entropy(heads: dict[str, Tensor], action: gnn.Action) -> Tensor:
    # The kind head, plus the head that chose this action's target (the others did not act).
    target_head = {1: "germinate", 2: "cull", 3: "fossilize"}.get(int(action.kind))
    return heads["kind"] + (heads[target_head] if target_head is not None else 0.0)


def imitation_update(
    net: gnn.TamiyoNet,
    optimizer: torch.optim.Optimizer,
    transitions: Sequence[Transition],
    *,
    epochs: int,
    minibatch: int,
    generator: torch.Generator,
    value_coef: float = 0.5,
) -> UpdateStats:
    """Behaviour cloning: maximise the log-likelihood of the teacher's actions.

    The value head regresses to the teacher's returns at the same time, so PPO starts with a
    critic that already knows what growth tends to be worth.

    Args:
        net: The network (trained in place).
        optimizer: Its optimiser.
        transitions: The teacher's actions (``value_target``: the teacher's return).
        epochs: Passes over the data.
        minibatch: Transitions per optimiser step.
        generator: Shuffles the data (seed it).
        value_coef: Weight of the value loss.

    Returns:
        The mean losses and entropies.
    """
    net.train()
    tally = _Tally()
    for _ in range(epochs):
        for batch in _minibatches(len(transitions), minibatch, generator):
            losses = []
            for index in batch:
                item = transitions[index]
                out = net(item.inp)
                tally.entropies(out)
                nll = -gnn.log_prob(out, item.action)
                value_loss = (out.value - item.value_target) ** 2
                tally.policy.append(float(nll.detach()))
                tally.value.append(float(value_loss.detach()))
                losses.append(nll + value_coef * value_loss)
            optimizer.zero_grad(set_to_none=True)
            torch.stack(losses).mean().backward()
            optimizer.step()
    return tally.stats(epochs)


def ppo_update(
    net: gnn.TamiyoNet,
    optimizer: torch.optim.Optimizer,
    transitions: Sequence[Transition],
    config: PPOConfig,
    generator: torch.Generator,
) -> UpdateStats:
    """One PPO update over a batch of rollouts (see the module docstring).

    Advantages are normalised over the batch (mean 0, standard deviation 1).

    Args:
        net: The network (trained in place).
        optimizer: Its optimiser.
        transitions: The rollouts' actions with stored log-probabilities, advantages and
            returns.
        config: Hyper-parameters.
        generator: Shuffles the minibatches (seed it).

    Returns:
        The update's statistics.

    Raises:
        ValueError: When there are no transitions.
    """
    if not transitions:
        raise ValueError("PPO needs at least one transition")
    advantages = torch.tensor([item.advantage for item in transitions])
    scale = float(advantages.std()) if len(transitions) > 1 else 0.0
    normalised = (advantages - advantages.mean()) / (scale if scale > 1e-8 else 1.0)
    net.train()
    tally = _Tally()
    passes = 0
    for _ in range(config.epochs):
        passes += 1
        for batch in _minibatches(len(transitions), config.minibatch, generator):
            losses = []
            for index in batch:
                item = transitions[index]
                out = net(item.inp)
                heads = tally.entropies(out)
                new_log_prob = gnn.log_prob(out, item.action)
                log_ratio = new_log_prob - item.log_prob
                ratio = torch.exp(log_ratio)
                advantage = normalised[index]
                clipped = torch.clamp(ratio, 1 - config.clip, 1 + config.clip)
                surrogate = -torch.minimum(ratio * advantage, clipped * advantage)
                value_loss = (out.value - item.value_target) ** 2
                tally.policy.append(float(surrogate.detach()))
                tally.value.append(float(value_loss.detach()))
                tally.kl.append(float(-log_ratio.detach()))
                tally.clipped.append(float(abs(float(ratio.detach()) - 1.0) > config.clip))
                losses.append(
                    surrogate
                    + config.value_coef * value_loss
                    - config.entropy_coef * _acting_entropy(heads, item.action)
                )
            optimizer.zero_grad(set_to_none=True)
            torch.stack(losses).mean().backward()
            torch.nn.utils.clip_grad_norm_(net.parameters(), config.max_grad_norm)
            optimizer.step()
        if math.isfinite(_mean(tally.kl)) and _mean(tally.kl) > config.target_kl:
            break
    return tally.stats(passes)
