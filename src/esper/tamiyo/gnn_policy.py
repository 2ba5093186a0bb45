"""Tamiyo's learned policy: the GNN's action at a decision boundary, as an AdaptationDecision.

At each boundary the observation is encoded (:mod:`esper.tamiyo.features`), scored by
:class:`~esper.tamiyo.gnn.TamiyoNet`, and one action is taken: wait, germinate a candidate,
cull a seed or fossilize one early. Only legal actions can be taken (the network masks the rest
with the rules of :mod:`esper.tamiyo.rules`). In a run the policy acts greedily; Simic samples
(``greedy=False``) to explore, from a seeded generator whose draws the state counts, so a resumed
run continues the same sequence.
"""

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

from esper.contracts.decisions import AdaptationDecision, DecisionAction
from esper.tamiyo import gnn
from esper.tamiyo.encoding import ActionKind, PolicyInput
from esper.tamiyo.features import encode
from esper.tamiyo.policy import KernelCandidate, Observation, decision_id

_ACTIONS = {
    ActionKind.GERMINATE: DecisionAction.GERMINATE,
    ActionKind.CULL: DecisionAction.CULL,
    ActionKind.FOSSILIZE: DecisionAction.FOSSILIZE,
}


@dataclass(frozen=True)
class PolicyStep:
    """One action taken at a boundary, as Simic's rollouts store it.

    Attributes:
        step: The training step of the boundary.
        inp: The encoded observation.
        action: The action taken.
        log_prob: Its log-probability under the network that took it (PPO's old log-prob).
        value: The network's state value there.
    """

    step: int
    inp: PolicyInput
    action: gnn.Action
    log_prob: float
    value: float


Recorder = Callable[[PolicyStep], None]


class GnnPolicy:
    """The GNN's choice at each boundary (see the module docstring).

    Args:
        net: The trained network (put in eval mode here).
        greedy: Take the most probable action (runs) or sample one (training rollouts).
        seed: Seed of the sampling generator.
        recorder: Called with every action taken, waits included (Simic's rollouts).
    """

    def __init__(
        self,
        net: gnn.TamiyoNet,
        *,
        greedy: bool = True,
        seed: int = 0,
        recorder: Recorder | None = None,
    ) -> None:
        """Hold the network; no decision made yet."""
        self.net = net.eval()
        self._greedy = greedy
        self._recorder = recorder
        self._seed = seed
        self._draws = 0
        self._generator = torch.Generator().manual_seed(seed)

    @classmethod
    def from_checkpoint(cls, path: Path, *, greedy: bool = True, seed: int = 0) -> "GnnPolicy":
        """Load a network saved by :func:`esper.tamiyo.gnn.save` (weights only, never pickles).

        Args:
            path: The checkpoint.
            greedy: See the class.
            seed: See the class.

        Returns:
            The policy.

        Raises:
            ValueError: When the file is not a checkpoint of this network's sizes.
        """
        return cls(gnn.load(path), greedy=greedy, seed=seed)

    def state_dict(self) -> dict[str, float | int]:
        """Return how many actions were sampled (nothing else changes between boundaries)."""
        return {"draws": self._draws}

    def load_state_dict(self, state: Mapping[str, float | int]) -> None:
        """Restore :meth:`state_dict`'s output: replay the generator to the same position.

        Args:
            state: The saved state.
        """
        self._generator = torch.Generator().manual_seed(self._seed)
        self._draws = 0
        for _ in range(int(state["draws"])):
            self._next_seed()

    def decide(self, observation: Observation) -> list[AdaptationDecision]:
        """Return the network's action as a decision, or nothing when it waits.

        Args:
            observation: What the policy sees.

        Returns:
            At most one decision.
        """
        inp = encode(observation)
        with torch.no_grad():
            out = self.net(inp)
            action = self._act(out)
            action_log_prob = float(gnn.log_prob(out, action))
        snapshot = observation.snapshot
        if self._recorder is not None:
            self._recorder(
                PolicyStep(snapshot.step, inp, action, action_log_prob, float(out.value))
            )
        probability = math.exp(action_log_prob)
        if action.kind is ActionKind.WAIT:
            return []
        slot_id, candidate = self._target(observation, inp, action)
        verb = _ACTIONS[action.kind]
        what = (
            f"{candidate.blueprint_name} ({candidate.params} parameters) in {slot_id}"
            if candidate is not None
            else f"the seed in {slot_id}"
        )
        return [
            AdaptationDecision(
                decision_id=decision_id(snapshot.run_id, snapshot.step, slot_id, verb.value),
                run_id=snapshot.run_id,
                step=snapshot.step,
                action=verb,
                slot_id=slot_id,
                kernel_id=None if candidate is None else candidate.kernel.id,
                blueprint_hash=None if candidate is None else candidate.kernel.blueprint_hash,
                reason=(
                    f"gnn policy: {verb.value} {what} with probability {probability:.2f} "
                    f"(state value {float(out.value):.3f})"
                ),
                confidence=min(1.0, probability),
            )
        ]

    def _act(self, out: gnn.PolicyOutput) -> gnn.Action:
        if self._greedy:
            return gnn.greedy(out)
        # One draw per boundary from the counted generator seeds a private one, so the number of
        # random numbers a sample consumes never shifts later boundaries.
        return gnn.sample(out, torch.Generator().manual_seed(self._next_seed()))

    def _next_seed(self) -> int:
        self._draws += 1
        return int(torch.randint(0, 2**62, (), generator=self._generator))

    @staticmethod
    def _target(
        observation: Observation, inp: PolicyInput, action: gnn.Action
    ) -> tuple[str, KernelCandidate | None]:
        # The inverse of action_for_decision.
        if action.kind is not ActionKind.GERMINATE:
            return inp.slot_ids[action.target], None
        slot_id = inp.slot_ids[int(inp.candidate_slot[action.target])]
        kernel_id = inp.candidate_kernel_ids[action.target]
        [candidate] = [c for c in observation.candidates[slot_id] if c.kernel.id == kernel_id]
        return slot_id, candidate


def action_for_decision(inp: PolicyInput, decision: AdaptationDecision | None) -> gnn.Action:
    """Return the network's action that makes a decision (None: wait), for imitation.

    Args:
        inp: The encoded observation the decision was made on.
        decision: Another policy's decision there.

    Returns:
        The action: the candidate row of a germination's (slot, kernel), or the slot row of a
        cull or fossilization.

    Raises:
        ValueError: When the decision's target is not in the observation (a kernel that was not
            a candidate for that slot, or an unknown slot).
    """
    if decision is None:
        return gnn.Action(ActionKind.WAIT, -1)
    if decision.slot_id not in inp.slot_ids:
        raise ValueError(
            f"decision {decision.decision_id}: slot {decision.slot_id} is not observed"
        )
    slot = inp.slot_ids.index(decision.slot_id)
    if decision.action is not DecisionAction.GERMINATE:
        kind = {value: key for key, value in _ACTIONS.items()}[decision.action]
        return gnn.Action(kind, slot)
    for row, kernel_id in enumerate(inp.candidate_kernel_ids):
        if kernel_id == decision.kernel_id and int(inp.candidate_slot[row]) == slot:
            return gnn.Action(ActionKind.GERMINATE, row)
    raise ValueError(
        f"decision {decision.decision_id}: kernel {decision.kernel_id} is not a candidate for "
        f"slot {decision.slot_id}"
    )
