"""The governor's loss watch: healthy windows, non-finite losses, spikes, the reference mean."""

import math

import pytest
import torch

from esper.tolaria.governor import LossMonitor

CPU = torch.device("cpu")


def window(monitor: LossMonitor, *losses: float) -> tuple[float, str | None]:
    for loss in losses:
        monitor.record(torch.tensor(loss))
    return monitor.judge()


@pytest.mark.parametrize("factor", [1.0, 0.5, -2.0])
def test_spike_factor_must_exceed_one(factor: float) -> None:
    with pytest.raises(ValueError, match="spike_factor must exceed 1"):
        LossMonitor(CPU, factor)


def test_healthy_window_returns_its_mean_and_becomes_the_reference() -> None:
    monitor = LossMonitor(CPU, 4.0)
    assert monitor.previous_mean is None
    mean, problem = window(monitor, 1.0, 2.0, 3.0)
    assert problem is None
    assert mean == pytest.approx(2.0)
    assert monitor.previous_mean == pytest.approx(2.0)


def test_each_judgement_starts_a_new_window() -> None:
    monitor = LossMonitor(CPU, 4.0)
    window(monitor, 10.0, 10.0)
    mean, problem = window(monitor, 1.0)
    assert (mean, problem) == (pytest.approx(1.0), None)


def test_an_empty_window_repeats_the_reference() -> None:
    monitor = LossMonitor(CPU, 4.0)
    assert monitor.judge() == (0.0, None)
    window(monitor, 0.5, 1.5)
    assert monitor.judge() == (pytest.approx(1.0), None)
    assert monitor.previous_mean == pytest.approx(1.0)


def test_record_accepts_a_graph_attached_loss_without_keeping_the_graph() -> None:
    monitor = LossMonitor(CPU, 4.0)
    weight = torch.tensor(2.0, requires_grad=True)
    monitor.record(weight * 1.5)
    mean, problem = monitor.judge()
    assert (mean, problem) == (pytest.approx(3.0), None)


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_a_non_finite_loss_anywhere_in_the_window_is_a_problem(bad: float) -> None:
    monitor = LossMonitor(CPU, 4.0)
    window(monitor, 1.0)
    _mean, problem = window(monitor, 1.0, bad, 1.0)
    assert problem == "the training loss was not finite"
    # The reference stays that of the last healthy window.
    assert monitor.previous_mean == pytest.approx(1.0)
    # And the next window is judged on its own.
    assert window(monitor, 1.0) == (pytest.approx(1.0), None)


def test_a_non_finite_first_window_is_a_problem_without_reference() -> None:
    monitor = LossMonitor(CPU, 4.0)
    _mean, problem = window(monitor, math.nan)
    assert problem == "the training loss was not finite"
    assert monitor.previous_mean is None


def test_a_spike_is_a_window_maximum_above_factor_times_the_previous_mean() -> None:
    monitor = LossMonitor(CPU, 4.0)
    window(monitor, 0.5, 1.5)  # reference 1.0
    mean, problem = window(monitor, 1.0, 4.5, 1.0)
    assert mean == pytest.approx(6.5 / 3)
    assert problem == "loss spike: 4.5 exceeds 4x the previous mean 1"
    assert monitor.previous_mean == pytest.approx(1.0)


def test_a_maximum_at_exactly_the_factor_is_no_spike() -> None:
    monitor = LossMonitor(CPU, 4.0)
    window(monitor, 1.0)
    assert window(monitor, 4.0) == (pytest.approx(4.0), None)
    assert monitor.previous_mean == pytest.approx(4.0)


def test_the_first_window_is_never_a_spike() -> None:
    monitor = LossMonitor(CPU, 2.0)
    assert window(monitor, 1000.0) == (pytest.approx(1000.0), None)


def test_the_reference_moves_only_with_healthy_windows() -> None:
    monitor = LossMonitor(CPU, 2.0)
    window(monitor, 1.0)
    assert window(monitor, 3.0)[1] is not None  # spike vs 1.0
    assert window(monitor, math.nan)[1] is not None
    assert monitor.previous_mean == pytest.approx(1.0)
    assert window(monitor, 1.9) == (pytest.approx(1.9), None)
    # Judged against the new reference 1.9: 3.0 is no longer a spike.
    assert window(monitor, 3.0) == (pytest.approx(3.0), None)


def test_previous_mean_can_be_restored() -> None:
    monitor = LossMonitor(CPU, 2.0)
    monitor.previous_mean = 0.25
    assert window(monitor, 0.6)[1] == "loss spike: 0.6 exceeds 2x the previous mean 0.25"
