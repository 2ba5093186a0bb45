"""Simic's reward: real outcomes of a run, per action, relative to the same run without growth.

The reward of the action at boundary ``s`` is what happened until the policy's next action at
``e`` (or the run's last boundary), in accuracy points:

- **validation gain**: the change of ``100 * (grown accuracy - no-growth accuracy)`` from ``s``
  to ``e``. The no-growth run has the same host, initial weights and data order, and a wrapped
  model with idle slots computes exactly the host, so this is 0 until the first graft and
  then measures only what growth did; summed over an episode it telescopes to the final gap;
- **minus a parameter rent**: ``parameter_rent * added / host * (e - s) / total`` — holding
  as many added parameters as the host has for the whole run costs ``parameter_rent`` points;
- **minus wasted compute**: a seed culled in ``[s, e)`` (the last action: ``[s, e]``) costs
  ``culled_compute * params / host * (its steps alive) / total`` — the compute spent on a seed
  the model does not keep.
"""

import bisect
from collections.abc import Sequence
from dataclasses import dataclass

from esper.contracts.report import CurvePoint, SeedSummary
from esper.contracts.seed import SeedStage


@dataclass(frozen=True)
class RewardWeights:
    """How the reward's terms are weighed (accuracy points per unit).

    Attributes:
        parameter_rent: Points per host-sized block of added parameters held a whole run.
        culled_compute: Points per host-sized seed trained a whole run and then culled.
    """

    parameter_rent: float = 2.0
    culled_compute: float = 2.0


def _at(curve: Sequence[CurvePoint], step: int) -> CurvePoint:
    """Return the last curve point at or before ``step`` (the first one before any)."""
    steps = [point.step for point in curve]
    index = bisect.bisect_right(steps, step) - 1
    return curve[max(0, index)]


def action_rewards(
    action_steps: Sequence[int],
    grown: Sequence[CurvePoint],
    baseline: Sequence[CurvePoint],
    seeds: Sequence[SeedSummary],
    *,
    host_params: int,
    total_steps: int,
    weights: RewardWeights,
) -> list[float]:
    """Return the reward of each action (see the module docstring).

    Args:
        action_steps: The boundary steps where the policy acted, ascending.
        grown: The grown run's validation curve (one point per boundary).
        baseline: The no-growth run's curve, on the same cadence.
        seeds: The grown run's seeds.
        host_params: The host's parameters.
        total_steps: The run's training steps.
        weights: The terms' weights.

    Returns:
        One reward per action, in order.

    Raises:
        ValueError: When a curve is empty, the steps are not ascending, or a size is not
            positive.
    """
    if not grown or not baseline:
        raise ValueError("both runs need a validation curve to reward actions")
    if list(action_steps) != sorted(set(action_steps)):
        raise ValueError(f"action steps must be strictly ascending, got {list(action_steps)}")
    if host_params < 1 or total_steps < 1:
        raise ValueError(f"host_params and total_steps must be >= 1 ({host_params}, {total_steps})")
    ends = [*action_steps[1:], max(grown[-1].step, action_steps[-1] if action_steps else 0)]

    def gap(step: int) -> float:
        return 100.0 * (_at(grown, step).val_accuracy - _at(baseline, step).val_accuracy)

    rewards = []
    last = len(ends) - 1
    for index, (start, end) in enumerate(zip(action_steps, ends, strict=True)):
        span = (end - start) / total_steps
        added = _at(grown, end).params - host_params
        rent = weights.parameter_rent * max(0, added) / host_params * span
        waste = sum(
            weights.culled_compute
            * seed.params
            / host_params
            * (seed.ended_step - seed.germinated_step)
            / total_steps
            for seed in seeds
            if seed.final_stage is SeedStage.CULLED
            and seed.ended_step is not None
            and (start <= seed.ended_step < end or (index == last and seed.ended_step == end))
        )
        rewards.append(gap(end) - gap(start) - rent - waste)
    return rewards
