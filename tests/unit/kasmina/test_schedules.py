"""Alpha ramps, and alpha as a tensor buffer that compiled graphs do not specialise on."""

import itertools
import math
from collections.abc import Callable

import pytest
import torch
from torch import nn

from esper.contracts.run import AlphaSchedule
from esper.contracts.seed import SeedStage
from esper.kasmina import SeedSlot, wrap
from esper.kasmina.schedules import SIGMOID_STEEPNESS, alpha_at

GRID = [i / 1000 for i in range(1001)]


@pytest.mark.parametrize("schedule", list(AlphaSchedule))
def test_every_ramp_starts_at_exactly_zero_and_ends_at_exactly_one(
    schedule: AlphaSchedule,
) -> None:
    assert alpha_at(schedule, 0.0) == 0.0
    assert alpha_at(schedule, 1.0) == 1.0


@pytest.mark.parametrize("schedule", list(AlphaSchedule))
def test_every_ramp_never_decreases_and_stays_in_the_unit_interval(
    schedule: AlphaSchedule,
) -> None:
    values = [alpha_at(schedule, p) for p in GRID]
    assert all(0.0 <= value <= 1.0 for value in values)
    assert all(later >= earlier for earlier, later in itertools.pairwise(values))
    # Not flat: the ramp really rises through the middle.
    assert values[250] < values[500] < values[750]


@pytest.mark.parametrize("schedule", list(AlphaSchedule))
@pytest.mark.parametrize(("progress", "expected"), [(-0.5, 0.0), (-1e-9, 0.0), (1.5, 1.0)])
def test_progress_outside_the_ramp_is_clamped(
    schedule: AlphaSchedule, progress: float, expected: float
) -> None:
    assert alpha_at(schedule, progress) == expected


@pytest.mark.parametrize("schedule", list(AlphaSchedule))
def test_every_ramp_is_symmetric_about_its_midpoint(schedule: AlphaSchedule) -> None:
    assert alpha_at(schedule, 0.5) == pytest.approx(0.5)
    for p in (0.1, 0.25, 0.4):
        assert alpha_at(schedule, p) + alpha_at(schedule, 1 - p) == pytest.approx(1.0)


def test_each_ramp_has_its_own_shape() -> None:
    assert alpha_at(AlphaSchedule.LINEAR, 0.25) == 0.25
    assert alpha_at(AlphaSchedule.COSINE, 0.25) == pytest.approx(0.5 * (1 - math.cos(math.pi / 4)))
    logistic = [1 / (1 + math.exp(-SIGMOID_STEEPNESS * (p - 0.5))) for p in (0.0, 0.25, 1.0)]
    expected = (logistic[1] - logistic[0]) / (logistic[2] - logistic[0])
    assert alpha_at(AlphaSchedule.SIGMOID, 0.25) == pytest.approx(expected)
    # The sigmoid is the slowest to leave 0 and the steepest through the middle.
    early = {schedule: alpha_at(schedule, 0.1) for schedule in AlphaSchedule}
    assert early[AlphaSchedule.SIGMOID] < early[AlphaSchedule.COSINE] < early[AlphaSchedule.LINEAR]


def test_alpha_is_a_tensor_buffer_of_the_slot(
    mlp: nn.Sequential, grow: Callable[..., SeedSlot]
) -> None:
    model = wrap(mlp, ["2"])
    slot = grow(model.slot("2"), SeedStage.BLENDING, alpha=0.25)
    buffers = dict(model.named_buffers())
    assert buffers["slots.2.alpha"] is slot.alpha
    assert slot.alpha.shape == ()
    assert slot.alpha.item() == 0.25
    assert model.state_dict()["slots.2.alpha"].item() == 0.25


def test_ramping_alpha_under_torch_compile_does_not_recompile(
    mlp: nn.Sequential, grow: Callable[..., SeedSlot]
) -> None:
    model = wrap(mlp, ["2"])
    slot = grow(model.slot("2"), SeedStage.BLENDING)
    graphs: list[torch.fx.GraphModule] = []

    def counting_backend(graph: torch.fx.GraphModule, _inputs: list[torch.Tensor]) -> object:
        graphs.append(graph)
        return graph.forward

    torch._dynamo.reset()
    compiled = torch.compile(model, backend=counting_backend)
    x = torch.randn(4, 8, generator=torch.Generator().manual_seed(1))
    outputs = []
    for step in range(5):
        slot.set_alpha(alpha_at(AlphaSchedule.COSINE, step / 4))
        outputs.append(compiled(x))
        torch.testing.assert_close(outputs[-1], model(x), rtol=0, atol=0)
    torch._dynamo.reset()

    assert len(graphs) == 1
    # The blend really changed from step to step: the graph read alpha as data.
    assert not torch.equal(outputs[0], outputs[-1])
    assert not torch.equal(outputs[1], outputs[2])
