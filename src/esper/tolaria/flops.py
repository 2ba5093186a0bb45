"""Training compute, counted with ``torch.utils.flop_counter``: what a run's growth cost.

A run's total is every training step's forward and backward pass plus the controller's work at
decision boundaries (validation passes, probation counterfactuals, a network policy's forward),
culled seeds included: they are part of the model while they live. ``FlopCounterMode`` counts
matrix products and convolutions (the ops torch registers FLOP formulas for); elementwise work
(activations, the optimizer's update) is not counted, the usual convention.

Counting every step under ``FlopCounterMode`` makes a step several times slower (it intercepts
every op in Python), so the meter counts a training step fully only the first time it meets its
*signature* — the batch size and each slot's stage, kernel and switch — and adds the cached
count afterwards. That is exact, not an estimate: a step's FLOPs are a function of the ops it
runs and their shapes, which the signature determines. The controller's work is counted fully
whenever it can run ops that count (a decision boundary, an end-of-epoch validation); between
boundaries :meth:`MorphogeneticController.after_step` does only elementwise bookkeeping. Both
claims are checked against counting every op of a run (``tests/unit/tolaria/test_flops.py``).
"""

from collections.abc import Callable, Hashable, Iterator
from contextlib import contextmanager
from typing import TypeVar

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from esper.kasmina.wrap import MorphogeneticModel

_Result = TypeVar("_Result")


def step_signature(model: MorphogeneticModel, batch: int) -> Hashable:
    """Return what determines the FLOPs of one training step of ``model``.

    Args:
        model: The wrapped model.
        batch: Examples in the step's batch.

    Returns:
        A hashable key: the batch size and every slot's (stage, kernel, disabled), in the
        model's slot order.
    """
    return (batch, tuple(slot.compute_key for slot in model.seed_slots()))


def count_flops(work: Callable[[], _Result]) -> tuple[_Result, int]:
    """Run ``work`` under ``FlopCounterMode`` and return its result and the FLOPs it ran.

    Args:
        work: What to run.

    Returns:
        Its result and the FLOP count.
    """
    with FlopCounterMode(display=False) as counter:
        result = work()
    return result, int(counter.get_total_flops())


def inference_flops_per_sample(model: nn.Module, features: object, examples: int) -> int:
    """Return the forward FLOPs per example of ``model`` in eval mode (no gradients).

    Args:
        model: The model (its mode is restored afterwards).
        features: A batch of inputs.
        examples: Examples in that batch.

    Returns:
        FLOPs of one forward pass divided by ``examples`` (rounded down).

    Raises:
        ValueError: When ``examples`` is not positive.
    """
    if examples <= 0:
        raise ValueError(f"inference FLOPs need at least one example, got {examples}")
    was_training = model.training
    model.eval()
    try:
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            model(features)
    finally:
        model.train(was_training)
    return int(counter.get_total_flops()) // examples


class FlopMeter:
    """The running FLOP total of one training run (see the module docstring).

    Attributes:
        total: FLOPs counted so far.
    """

    def __init__(self, total: int = 0) -> None:
        """Start at ``total`` (a resumed run's count so far) with no step measured."""
        if total < 0:
            raise ValueError(f"a FLOP total cannot be negative, got {total}")
        self.total = total
        self._per_step: dict[Hashable, int] = {}

    @property
    def signatures(self) -> int:
        """Distinct step signatures measured so far (each cost one fully counted step)."""
        return len(self._per_step)

    @contextmanager
    def training_step(self, model: MorphogeneticModel, batch: int) -> Iterator[None]:
        """Count the training step run inside the block (forward, backward, optimizer).

        Args:
            model: The model being trained (its state before the step sets the signature).
            batch: Examples in the step's batch.

        Yields:
            Nothing; the step runs in the block.
        """
        signature = step_signature(model, batch)
        known = self._per_step.get(signature)
        if known is not None:
            self.total += known
            yield
            return
        with FlopCounterMode(display=False) as counter:
            yield
        flops = int(counter.get_total_flops())
        self._per_step[signature] = flops
        self.total += flops

    @contextmanager
    def controller_work(self) -> Iterator[None]:
        """Count everything run inside the block (a boundary's evaluations and decisions).

        Yields:
            Nothing; the work runs in the block.
        """
        with FlopCounterMode(display=False) as counter:
            yield
        self.total += int(counter.get_total_flops())
