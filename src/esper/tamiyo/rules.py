"""What every policy must respect, and when a plateau asks for growth.

The rules are shared by the heuristic, the random-grafting baseline and the GNN's action masks,
so the policies differ only in their choices, never in what they may choose:

- one graft at a time: no germination while any seed is mid-lifecycle (GERMINATED, TRAINING,
  BLENDING or PROBATION), which keeps each seed's counterfactual verdict clean;
- at most ``max_seeds`` seeds alive or fossilized;
- a candidate germinates only in a DORMANT slot, within the remaining parameter budget, and
  never again in a slot where it was culled before.
"""

import math
from collections.abc import Mapping

from esper.contracts.seed import LIVE_STAGES, SeedStage
from esper.contracts.telemetry import SlotTelemetry
from esper.tamiyo.policy import KernelCandidate, Observation


def germination_blocked(observation: Observation) -> bool:
    """Tell whether no germination is allowed at this boundary, whatever the slot.

    Args:
        observation: What the policy sees.

    Returns:
        True while a seed is mid-lifecycle or the run holds ``max_seeds`` seeds.
    """
    stages = [slot.stage for slot in observation.snapshot.slots]
    busy = any(stage in LIVE_STAGES for stage in stages)
    grown = sum(stage in LIVE_STAGES or stage is SeedStage.FOSSILIZED for stage in stages)
    return busy or grown >= observation.max_seeds


def may_germinate(
    observation: Observation, slot: SlotTelemetry, candidate: KernelCandidate
) -> bool:
    """Tell whether ``candidate`` may grow in ``slot`` (given germination is not blocked).

    Args:
        observation: What the policy sees.
        slot: The slot's telemetry.
        candidate: A ready kernel for that slot.

    Returns:
        True for a DORMANT slot, a candidate within the budget, not culled there before.
    """
    return (
        slot.stage is SeedStage.DORMANT
        and candidate.params <= observation.snapshot.budget_left_params
        and (slot.slot_id, candidate.kernel.id) not in observation.excluded
    )


def legal_germinations(observation: Observation) -> list[tuple[SlotTelemetry, KernelCandidate]]:
    """Return every (slot, candidate) pair that may germinate now, in slot then kernel order.

    Args:
        observation: What the policy sees.

    Returns:
        The legal pairs; empty when germination is blocked.
    """
    if germination_blocked(observation):
        return []
    return [
        (slot, candidate)
        for slot in observation.snapshot.slots
        for candidate in sorted(
            observation.candidates.get(slot.slot_id, ()), key=lambda c: c.kernel.id
        )
        if may_germinate(observation, slot, candidate)
    ]


class PlateauTracker:
    """Counts decision boundaries without enough validation-loss improvement.

    Args:
        patience: Boundaries without improvement that make a plateau.
        threshold: Relative improvement that counts.
    """

    def __init__(self, patience: int, threshold: float) -> None:
        """Start with no loss seen."""
        if patience < 1 or threshold < 0:
            raise ValueError("plateau_patience must be >= 1 and plateau_threshold >= 0")
        self.patience = patience
        self.threshold = threshold
        self.best = float("inf")
        self.stale = 0

    def plateaued(self, val_loss: float) -> bool:
        """Record a validation loss; tell whether the run has plateaued.

        Args:
            val_loss: The latest validation loss.

        Returns:
            True once ``patience`` boundaries in a row brought no relative improvement of
            ``threshold``.
        """
        if math.isinf(self.best) or val_loss < self.best * (1.0 - self.threshold):
            self.best = val_loss
            self.stale = 0
            return False
        self.stale += 1
        return self.stale >= self.patience

    def restart(self, val_loss: float) -> None:
        """Start counting afresh from ``val_loss`` (after a growth).

        Args:
            val_loss: The loss the new count starts from.
        """
        self.best = val_loss
        self.stale = 0

    def state_dict(self) -> dict[str, float | int]:
        """Return the tracker's state."""
        return {"best": self.best, "stale": self.stale}

    def load_state_dict(self, state: Mapping[str, float | int]) -> None:
        """Restore :meth:`state_dict`'s output.

        Args:
            state: The saved state.
        """
        self.best = float(state["best"])
        self.stale = int(state["stale"])
