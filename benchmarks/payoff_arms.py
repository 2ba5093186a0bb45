"""The payoff protocol's baselines that Esper itself does not ship.

- :class:`ScheduledRandomPolicy`: random grafting with the heuristic's graft *count* but random
  times, slots and blueprints (the issue's "same count, random time, slot and blueprint").
- :func:`grown_host`: a host factory for ``static-final``, Esper's final grown architecture
  trained from scratch: the zoo host with each fossilized seed's blueprint built in at full
  weight, fresh initial weights, no growth. A run names it as ``host.factory`` so it trains
  through exactly the same job as every other arm.
- :func:`flop_matched_width`: the width of the static host whose training step costs what
  Esper's whole run cost per step.

``benchmarks/payoff.py`` runs the protocol; this module holds only the arms.
"""

from __future__ import annotations

import json
import random
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional

from esper.blueprints.builder import build_module
from esper.blueprints.library import builtin
from esper.contracts.decisions import AdaptationDecision
from esper.contracts.run import HostSpec
from esper.kasmina.wrap import Grafted
from esper.tamiyo.policy import Observation, germination
from esper.tamiyo.rules import legal_germinations
from esper.tolaria.flops import count_flops
from esper.zoo import build_host


class ScheduledRandomPolicy:
    """Germinate ``count`` times at random boundaries, in a random legal slot with a random kernel.

    The times are drawn once, uniformly without replacement, among the decision boundaries that
    leave a seed its whole lifecycle before training ends. A drawn time that finds nothing legal
    (every slot busy, the budget spent) waits for the next boundary that does.

    Args:
        count: Germinations to make (the heuristic's count for the same task and seed).
        boundaries: The boundary steps to draw from.
        seed: Seed of the draws.
    """

    def __init__(self, count: int, boundaries: Sequence[int], *, seed: int) -> None:
        """Draw the times."""
        if count < 0:
            raise ValueError(f"a germination count cannot be negative, got {count}")
        if count > len(boundaries):
            raise ValueError(f"cannot place {count} germinations on {len(boundaries)} boundaries")
        self._random = random.Random(seed)
        self._times = sorted(self._random.sample(list(boundaries), count))
        self._made = 0

    @property
    def times(self) -> list[int]:
        """The drawn germination times (steps), earliest first."""
        return list(self._times)

    def state_dict(self) -> dict[str, float | int]:
        """Return how many germinations were made (the times follow from the seed)."""
        return {"made": self._made}

    def load_state_dict(self, state: Mapping[str, float | int]) -> None:
        """Restore :meth:`state_dict`'s output.

        Args:
            state: The saved state.
        """
        self._made = int(state["made"])

    def decide(self, observation: Observation) -> list[AdaptationDecision]:
        """Germinate when a drawn time has come and something is legal.

        Args:
            observation: What the policy sees.

        Returns:
            At most one germinate decision.
        """
        snapshot = observation.snapshot
        if self._made >= len(self._times) or snapshot.step < self._times[self._made]:
            return []
        legal = legal_germinations(observation)
        if not legal:
            return []
        slot, candidate = legal[self._random.randrange(len(legal))]
        self._made += 1
        return [
            germination(
                snapshot,
                slot.slot_id,
                candidate,
                reason=(
                    f"scheduled random graft {self._made}/{len(self._times)}: "
                    f"{candidate.blueprint_name} in {slot.slot_id}"
                ),
                confidence=1.0 / len(legal),
            )
        ]


def write_plan(
    path: Path,
    *,
    host: HostSpec,
    input_shape: Sequence[int],
    num_classes: int,
    grafts: Sequence[tuple[str, str, Mapping[str, int]]],
) -> Path:
    """Write what :func:`grown_host` builds: the zoo host and its grafts.

    Args:
        path: The plan file.
        host: The zoo host of the Esper run.
        input_shape: One example's shape.
        num_classes: Number of classes.
        grafts: ``(module path, blueprint name, bindings)`` of every fossilized seed.

    Returns:
        ``path``.
    """
    if host.zoo is None:
        raise ValueError("static-final rebuilds zoo hosts only")
    plan = {
        "zoo": host.zoo,
        "kwargs": dict(host.kwargs),
        "input_shape": list(input_shape),
        "num_classes": num_classes,
        "grafts": [
            {"module": module, "blueprint": name, "bindings": dict(bindings)}
            for module, name, bindings in grafts
        ],
    }
    path.write_text(json.dumps(plan, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return path


def grown_host(plan: str) -> nn.Module:
    """Build the static-final host a plan file describes (a ``host.factory``).

    The host's weights come from torch's global generator, seeded by the job like any host's;
    each seed module gets its blueprint's own initial weights (zero-initialised outputs, so
    the model starts as the host) and trains with the host from the first step.

    Args:
        plan: Path of a file :func:`write_plan` wrote.

    Returns:
        The host with the grafts built in.
    """
    document = json.loads(Path(plan).read_text(encoding="utf-8"))
    host = build_host(
        HostSpec(zoo=document["zoo"], kwargs=document["kwargs"]),
        tuple(document["input_shape"]),
        int(document["num_classes"]),
    )
    for graft in document["grafts"]:
        seed = build_module(builtin(graft["blueprint"]), graft["bindings"])
        parent_path, _, name = str(graft["module"]).rpartition(".")
        parent = host.get_submodule(parent_path) if parent_path else host
        parent.register_module(name, Grafted(getattr(parent, name), seed))
    return host


def step_flops(model: nn.Module, input_shape: Sequence[int], batch: int) -> int:
    """Return the FLOPs of one training step (forward and backward) of ``model``.

    Args:
        model: The model.
        input_shape: One example's shape.
        batch: Examples per step.

    Returns:
        The count.
    """
    features = torch.zeros(batch, *input_shape)
    labels = torch.zeros(batch, dtype=torch.long)

    def step() -> None:
        functional.cross_entropy(model(features), labels).backward()

    _, flops = count_flops(step)
    return flops


def flop_matched_width(
    host: HostSpec,
    width_key: str,
    *,
    target_per_step: float,
    input_shape: Sequence[int],
    num_classes: int,
    batch: int,
    widths: range,
) -> tuple[int, int]:
    """Return the host width whose training step is closest to ``target_per_step`` FLOPs.

    A step's FLOPs grow with the width, so a bisection finds the two widths around the target
    and the closer one wins.

    Args:
        host: The zoo host (its other kwargs are kept).
        width_key: The kwarg that sets its width (``hidden``, ``channels``).
        target_per_step: Esper's training FLOPs divided by its steps.
        input_shape: One example's shape.
        num_classes: Number of classes.
        batch: Examples per step.
        widths: The widths to consider (ascending, step 1).

    Returns:
        The width and its step FLOPs.

    Raises:
        ValueError: When ``widths`` is empty.
    """
    if not widths:
        raise ValueError("no width to choose from")

    def flops_at(width: int) -> int:
        spec = HostSpec(zoo=host.zoo, kwargs={**host.kwargs, width_key: width})
        return step_flops(build_host(spec, tuple(input_shape), num_classes), input_shape, batch)

    low, high = widths.start, widths.stop - 1
    while high - low > 1:
        middle = (low + high) // 2
        if flops_at(middle) < target_per_step:
            low = middle
        else:
            high = middle
    candidates = [(abs(flops_at(width) - target_per_step), width) for width in {low, high}]
    _, best = min(candidates)
    return best, flops_at(best)
