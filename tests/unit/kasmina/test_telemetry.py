"""Per-slot statistics: what they accumulate, when, and how a reading is computed."""

import copy
import math
from collections.abc import Callable

import pytest
import torch
from torch import Tensor, nn

from esper.contracts.seed import SeedStage
from esper.kasmina import SeedSlot, wrap
from esper.kasmina.telemetry import SlotReading, SlotStatistics, reading_from


def _activations() -> list[Tensor]:
    generator = torch.Generator().manual_seed(3)
    first = torch.relu(torch.randn(4, 6, generator=generator))  # about half exact zeros
    second = torch.randn(2, 3, 5, generator=generator) * 2.0 + 1.0
    second[0, 0, :2] = 0.0
    return [first, second]


def _direct(activations: list[Tensor]) -> tuple[float, float, float, int]:
    values = torch.cat([a.flatten() for a in activations]).double()
    return (
        values.mean().item(),
        values.std(unbiased=False).item(),
        (values == 0).double().mean().item(),
        values.numel(),
    )


def test_activation_statistics_match_a_direct_computation() -> None:
    statistics = SlotStatistics()
    activations = _activations()
    for activation in activations:
        statistics.observe(activation)

    reading = reading_from(statistics.raw().tolist())
    mean, std, dead, count = _direct(activations)

    assert reading.samples == count == 54
    assert reading.activation_mean == pytest.approx(mean, rel=1e-6)
    assert reading.activation_std == pytest.approx(std, rel=1e-5)
    assert reading.dead_fraction == pytest.approx(dead)
    assert 0 < reading.dead_fraction < 1
    # No gradient was ever observed.
    assert reading.gradient_norm == 0.0


def test_gradient_norm_is_the_root_mean_square_of_per_step_norms() -> None:
    statistics = SlotStatistics()
    generator = torch.Generator().manual_seed(5)
    norms = []
    for _ in range(3):
        activation = torch.randn(4, 6, generator=generator, requires_grad=True)
        upstream = torch.randn(4, 6, generator=generator)
        statistics.observe(activation)
        (activation * upstream).sum().backward()
        assert activation.grad is not None
        norms.append(activation.grad.norm().item())

    reading = reading_from(statistics.raw().tolist())

    expected = math.sqrt(sum(n * n for n in norms) / len(norms))
    assert reading.gradient_norm == pytest.approx(expected, rel=1e-6)
    assert statistics.raw()[5].item() == 3


def test_no_gradient_hook_without_autograd() -> None:
    statistics = SlotStatistics()
    activation = torch.randn(3, 4, requires_grad=True)
    with torch.no_grad():
        statistics.observe(activation)
    statistics.observe(torch.randn(3, 4))  # does not require grad
    (activation * 2).sum().backward()

    raw = statistics.raw()
    assert raw[3].item() == 24
    assert raw[4].item() == raw[5].item() == 0


def test_raw_is_a_copy_and_reset_zeroes_the_sums() -> None:
    statistics = SlotStatistics()
    statistics.observe(torch.ones(2, 3))
    raw = statistics.raw()
    raw.zero_()
    assert statistics.raw()[3].item() == 6

    statistics.reset()

    assert torch.equal(statistics.raw(), torch.zeros(6))
    assert reading_from(statistics.raw().tolist()) == SlotReading(0.0, 0.0, 0.0, 0.0, 0)


def test_reading_of_nothing_is_all_zero() -> None:
    assert reading_from([0.0] * 6) == SlotReading(0.0, 0.0, 0.0, 0.0, 0)


def test_reading_clamps_rounding_noise() -> None:
    # Sums whose variance comes out negative (as float rounding can make it) give std 0.
    reading = reading_from([3.0, 0.0, 0.0, 3.0, 0.0, 0.0])
    assert reading.activation_std == 0.0
    assert reading_from([0.0, 0.0, 3.5, 3.0, 0.0, 0.0]).dead_fraction == 1.0


def test_statistics_are_not_part_of_the_state_dict() -> None:
    statistics = SlotStatistics()
    statistics.observe(torch.ones(2))
    assert statistics.state_dict() == {}


def _slot_gradient(reference: nn.Module, path: str, x: Tensor) -> tuple[Tensor, Tensor]:
    """The activation of ``reference.<path>`` and the task loss's gradient there."""
    seen: list[Tensor] = []

    def keep(_module: nn.Module, _inputs: object, output: Tensor) -> None:
        output.retain_grad()
        seen.append(output)

    handle = reference.get_submodule(path).register_forward_hook(keep)
    reference(x).square().sum().backward()
    handle.remove()
    [activation] = seen
    assert activation.grad is not None
    return activation.detach(), activation.grad


@pytest.mark.parametrize("stage", [SeedStage.DORMANT, SeedStage.TRAINING])
def test_collecting_slot_observes_the_host_activation_and_its_gradient(
    mlp: nn.Sequential, grow: Callable[..., SeedSlot], stage: SeedStage
) -> None:
    reference = copy.deepcopy(mlp)
    model = wrap(mlp, ["2"])
    slot = model.slot("2")
    if stage is not SeedStage.DORMANT:
        grow(slot, stage)
    slot.collecting = True
    x = torch.randn(5, 8, generator=torch.Generator().manual_seed(2))

    output = model(x)
    output.square().sum().backward()

    activation, gradient = _slot_gradient(reference, "2", x)
    assert torch.equal(output, reference(x))  # collecting never changes the function
    reading = reading_from(slot.statistics.raw().tolist())
    assert reading.samples == activation.numel()
    assert reading.activation_mean == pytest.approx(activation.mean().item(), rel=1e-5)
    assert reading.activation_std == pytest.approx(activation.std(unbiased=False).item(), rel=1e-4)
    assert reading.gradient_norm == pytest.approx(gradient.norm().item(), rel=1e-5)


def test_slot_collects_nothing_unless_asked(
    mlp: nn.Sequential, grow: Callable[..., SeedSlot]
) -> None:
    model = wrap(mlp, ["0", "2"])
    grow(model.slot("2"), SeedStage.BLENDING, alpha=0.5)
    x = torch.randn(5, 8)

    model(x).sum().backward()
    assert all(torch.equal(s.statistics.raw(), torch.zeros(6)) for s in model.seed_slots())

    model.slot("0").collecting = True
    model(x).sum().backward()
    model.slot("0").collecting = False
    model(x).sum().backward()

    assert model.slot("0").statistics.raw()[3].item() == 5 * 16
    assert model.slot("0").statistics.raw()[5].item() == 1
    assert torch.equal(model.slot("2").statistics.raw(), torch.zeros(6))


def test_collecting_makes_a_dormant_slot_busy_and_stopping_makes_it_idle(
    mlp: nn.Sequential,
) -> None:
    slot = wrap(mlp, ["2"]).slot("2")
    assert slot.idle
    slot.collecting = True
    assert slot.collecting
    assert not slot.idle
    slot.collecting = False
    assert slot.idle
