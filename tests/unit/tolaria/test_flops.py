"""The FLOP meter: exact against counting every op, through growth, culls and resumes."""

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from esper.contracts.seed import SeedStage
from esper.tolaria.flops import FlopMeter, count_flops, inference_flops_per_sample
from esper.tolaria.trainer import Trainer
from tests.unit.tolaria.support import (
    BATCH,
    CPU,
    FakeKernels,
    ScriptedPolicy,
    germinate_decision,
    make_split,
    options,
    rig,
    schedule,
)

EPOCHS = 12
TRAIN_SIZE = 70
"""Five steps an epoch, the last one short: two batch sizes, so two signatures per state."""


def _trainer(
    *, min_contribution: float, on_epoch: bool, grow: bool = True
) -> tuple[Trainer, ScriptedPolicy]:
    kernels = FakeKernels()
    plan = {
        4: [germinate_decision(kernels, "0", 4)],
        12: [germinate_decision(kernels, "2", 12)],
    }
    policy = ScriptedPolicy(plan=plan if grow else {})
    opts = options(
        sched=schedule(epochs=EPOCHS),
        interval=4,
        telemetry_every=2,
        min_contribution=min_contribution,
        total_steps=EPOCHS * 5,
    )
    r = rig(opts, policy=policy, kernels=kernels)
    trainer = Trainer(
        r.controller,
        make_split(TRAIN_SIZE, seed=1),
        epochs=EPOCHS,
        batch_size=BATCH,
        seed=3,
        device=CPU,
        on_epoch=(lambda _info: None) if on_epoch else None,
    )
    return trainer, policy


@pytest.mark.parametrize(
    ("min_contribution", "ending"),
    [(-1.0, SeedStage.FOSSILIZED), (1.0, SeedStage.CULLED)],
)
@pytest.mark.parametrize("on_epoch", [False, True])
def test_the_meter_counts_exactly_what_counting_every_op_counts(
    min_contribution: float, ending: SeedStage, on_epoch: bool
) -> None:
    metered, _ = _trainer(min_contribution=min_contribution, on_epoch=on_epoch)
    metered.fit()
    reference, _ = _trainer(min_contribution=min_contribution, on_epoch=on_epoch)
    with FlopCounterMode(display=False) as everything:
        reference.fit()

    ends = [mark.target for mark in metered.controller.lifecycle]
    assert ends.count(SeedStage.GERMINATED) == 2
    assert ending in ends
    assert metered.flops.total == int(everything.get_total_flops()) > 0
    # Far fewer steps were counted op by op than were run: the cache did the rest.
    assert metered.flops.signatures < metered.total_steps // 3


def test_growth_costs_flops_and_the_curve_carries_the_running_total() -> None:
    grown, _ = _trainer(min_contribution=-1.0, on_epoch=False)
    grown.fit()
    static, _ = _trainer(min_contribution=-1.0, on_epoch=False, grow=False)
    static.fit()

    assert grown.flops.total > static.flops.total > 0
    totals = [point.train_flops for point in grown.controller.curve]
    # A point per boundary, except where the governor rolled a window back instead.
    assert grown.total_steps // 4 - 2 <= len(totals) <= grown.total_steps // 4
    assert all(total is not None for total in totals)
    assert totals == sorted(totals)
    assert totals[-1] is not None
    assert totals[-1] <= grown.flops.total


def test_count_flops_returns_the_result_and_the_count() -> None:
    left, right = torch.ones(3, 5), torch.ones(5, 7)
    product, flops = count_flops(lambda: left @ right)
    assert torch.equal(product, torch.full((3, 7), 5.0))
    assert flops == 2 * 3 * 5 * 7


@pytest.mark.parametrize("training", [True, False])
def test_inference_flops_per_sample_of_a_linear_layer(training: bool) -> None:
    layer = nn.Linear(10, 4)
    layer.train(training)
    assert inference_flops_per_sample(layer, torch.ones(8, 10), 8) == 2 * 10 * 4
    assert layer.training is training


def test_inference_flops_need_an_example() -> None:
    with pytest.raises(ValueError, match="at least one example"):
        inference_flops_per_sample(nn.Linear(2, 2), torch.ones(0, 2), 0)


def test_a_meter_cannot_start_below_zero() -> None:
    with pytest.raises(ValueError, match="cannot be negative"):
        FlopMeter(-1)
