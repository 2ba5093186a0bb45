"""The heuristic policy: grow where the model is a bottleneck once validation loss plateaus.

- **When:** the validation loss has not improved by ``plateau_threshold`` (relative) for
  ``plateau_patience`` decision boundaries, no seed is mid-lifecycle (one graft at a time keeps
  each seed's counterfactual verdict clean), and fewer than ``max_seeds`` seeds exist.
- **Where:** the dormant slot with the highest bottleneck score: the gradient norm reaching the
  slot relative to the mean over slots (where the loss is most sensitive), scaled down by its
  share of dead activations (capacity the host already wastes there).
- **Which:** among the kernels ready for that slot (Validated for its target and loaded) that fit
  the remaining parameter budget and were not culled there before, the one adding the most
  parameters (capacity is what a plateau asks for); ties go to the lower benchmarked latency,
  then the name.

After a germination the plateau counter restarts, so the next growth waits for a new plateau.
"""

from collections.abc import Mapping

from esper.contracts.decisions import AdaptationDecision
from esper.contracts.seed import SeedStage
from esper.contracts.telemetry import SlotTelemetry
from esper.tamiyo.policy import KernelCandidate, Observation, germination
from esper.tamiyo.rules import PlateauTracker, germination_blocked, may_germinate


def bottleneck_scores(slots: list[SlotTelemetry]) -> dict[str, float]:
    """Score each slot's need for capacity (higher is more of a bottleneck).

    Args:
        slots: Per-slot telemetry.

    Returns:
        Slot id to score: gradient norm over the mean gradient norm, times the share of live
        (non-zero) activations.
    """
    norms = [slot.gradient_norm for slot in slots]
    mean = sum(norms) / len(norms) if norms else 0.0
    scale = mean if mean > 0 else 1.0
    return {
        slot.slot_id: (slot.gradient_norm / scale) * (1.0 - slot.dead_fraction) for slot in slots
    }


class HeuristicPolicy:
    """Plateau plus bottleneck (see the module docstring).

    Args:
        plateau_patience: Boundaries without improvement that make a plateau.
        plateau_threshold: Relative improvement that counts.
    """

    def __init__(self, plateau_patience: int, plateau_threshold: float) -> None:
        """Start with no loss seen."""
        self._plateau = PlateauTracker(plateau_patience, plateau_threshold)

    def state_dict(self) -> dict[str, float | int]:
        """Return the plateau tracker's state."""
        return self._plateau.state_dict()

    def load_state_dict(self, state: Mapping[str, float | int]) -> None:
        """Restore the plateau tracker's state.

        Args:
            state: What :meth:`state_dict` returned.
        """
        self._plateau.load_state_dict(state)

    def decide(self, observation: Observation) -> list[AdaptationDecision]:
        """Return a germination at a plateau, or nothing.

        Args:
            observation: What the policy sees.

        Returns:
            At most one germinate decision.
        """
        snapshot = observation.snapshot
        if snapshot.val_loss is None or not self._plateau.plateaued(snapshot.val_loss):
            return []
        choice = None if germination_blocked(observation) else self._choose(observation)
        if choice is None:
            return []
        slot, candidate, score = choice
        self._plateau.restart(snapshot.val_loss)
        reason = (
            f"validation loss {snapshot.val_loss:.4f} has not improved by "
            f"{self._plateau.threshold:.1%} for {self._plateau.patience} evaluations; "
            f"slot {slot.slot_id} has "
            f"the highest bottleneck score ({score:.2f}: gradient norm "
            f"{slot.gradient_norm:.3g}, dead {slot.dead_fraction:.0%}); "
            f"{candidate.blueprint_name} adds {candidate.params} parameters "
            f"(budget left {snapshot.budget_left_params})"
        )
        return [
            germination(
                snapshot,
                slot.slot_id,
                candidate,
                reason=reason,
                confidence=min(1.0, score / (1.0 + score)),
            )
        ]

    def _choose(
        self, observation: Observation
    ) -> tuple[SlotTelemetry, KernelCandidate, float] | None:
        snapshot = observation.snapshot
        scores = bottleneck_scores(snapshot.slots)
        dormant = [slot for slot in snapshot.slots if slot.stage is SeedStage.DORMANT]
        for slot in sorted(dormant, key=lambda s: (-scores[s.slot_id], s.slot_id)):
            fitting = [
                candidate
                for candidate in observation.candidates.get(slot.slot_id, ())
                if may_germinate(observation, slot, candidate)
            ]
            if fitting:
                best = min(fitting, key=lambda c: (-c.params, c.latency_ms(), c.blueprint_name))
                return slot, best, scores[slot.slot_id]
        return None
