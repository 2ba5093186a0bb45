"""The random-grafting baseline: the heuristic's timing, a random legal slot and kernel.

It grows exactly when the heuristic would (a validation-loss plateau, the same rules) but picks
uniformly among every legal (slot, kernel) pair, so comparing it with the heuristic or the GNN
isolates the value of choosing *where* and *what* to grow. Its draws come from the run's seed;
its state records how many draws were made, so a resumed run draws the same sequence.
"""

import random
from collections.abc import Mapping

from esper.contracts.decisions import AdaptationDecision
from esper.tamiyo.policy import Observation, germination
from esper.tamiyo.rules import PlateauTracker, legal_germinations


class RandomPolicy:
    """Plateau timing, uniform choice among legal germinations (see the module docstring).

    Args:
        plateau_patience: Boundaries without improvement that make a plateau.
        plateau_threshold: Relative improvement that counts.
        seed: Seed of the draws.
    """

    def __init__(self, plateau_patience: int, plateau_threshold: float, *, seed: int) -> None:
        """Start with no loss seen and no draw made."""
        self._plateau = PlateauTracker(plateau_patience, plateau_threshold)
        self._seed = seed
        self._draws = 0
        self._random = random.Random(seed)

    def state_dict(self) -> dict[str, float | int]:
        """Return the plateau tracker's state and the number of draws made."""
        return {**self._plateau.state_dict(), "draws": self._draws}

    def load_state_dict(self, state: Mapping[str, float | int]) -> None:
        """Restore :meth:`state_dict`'s output, replaying the draws from the seed.

        Args:
            state: The saved state.
        """
        self._plateau.load_state_dict(state)
        self._random = random.Random(self._seed)
        self._draws = 0
        for _ in range(int(state["draws"])):
            self._draw(1)

    def decide(self, observation: Observation) -> list[AdaptationDecision]:
        """Return a random legal germination at a plateau, or nothing.

        Args:
            observation: What the policy sees.

        Returns:
            At most one germinate decision.
        """
        snapshot = observation.snapshot
        if snapshot.val_loss is None or not self._plateau.plateaued(snapshot.val_loss):
            return []
        legal = legal_germinations(observation)
        if not legal:
            return []
        slot, candidate = legal[self._draw(len(legal))]
        self._plateau.restart(snapshot.val_loss)
        return [
            germination(
                snapshot,
                slot.slot_id,
                candidate,
                reason=(
                    f"random grafting: validation loss {snapshot.val_loss:.4f} plateaued; "
                    f"{candidate.blueprint_name} in {slot.slot_id}, drawn uniformly from "
                    f"{len(legal)} legal (slot, kernel) pairs"
                ),
                confidence=1.0 / len(legal),
            )
        ]

    def _draw(self, count: int) -> int:
        self._draws += 1
        return self._random.randrange(count)
