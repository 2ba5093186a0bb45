"""Alpha ramps: how a seed's blend weight rises from 0 to 1 during BLENDING."""

import math

from esper.contracts.run import AlphaSchedule

SIGMOID_STEEPNESS = 10.0
"""Steepness of the logistic ramp (its slope at the midpoint is a quarter of this)."""


def alpha_at(schedule: AlphaSchedule, progress: float) -> float:
    """Return the blend weight after a fraction of the ramp.

    Every ramp starts at exactly 0 and ends at exactly 1, and never decreases.

    Args:
        schedule: The ramp's shape.
        progress: Fraction of the blending steps done; clamped to ``[0, 1]``.

    Returns:
        Alpha in ``[0, 1]``.
    """
    p = min(1.0, max(0.0, progress))
    if schedule is AlphaSchedule.LINEAR:
        return p
    if schedule is AlphaSchedule.COSINE:
        return 0.5 * (1.0 - math.cos(math.pi * p))
    # The logistic curve rescaled so that the ramp's ends are exactly 0 and 1.
    low = _logistic(0.0)
    high = _logistic(1.0)
    return (_logistic(p) - low) / (high - low)


def _logistic(p: float) -> float:
    return 1.0 / (1.0 + math.exp(-SIGMOID_STEEPNESS * (p - 0.5)))
