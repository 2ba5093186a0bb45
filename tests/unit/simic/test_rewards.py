"""Simic's reward: validation gain over the no-growth run, minus parameter rent and culled waste."""

import pytest

from esper.contracts.report import CurvePoint, SeedSummary
from esper.contracts.seed import SeedStage
from esper.simic.rewards import RewardWeights, action_rewards

HOST = 1000
TOTAL = 400


def curve(accuracies: list[float], params: list[int] | None = None) -> list[CurvePoint]:
    """One point per 100 steps, from step 100."""
    sizes = params or [HOST] * len(accuracies)
    return [
        CurvePoint(
            step=100 * (i + 1), epoch=i, train_loss=1.0, val_loss=1.0, val_accuracy=a, params=p
        )
        for i, (a, p) in enumerate(zip(accuracies, sizes, strict=True))
    ]


def seed(stage: SeedStage, germinated: int, ended: int | None, params: int = 500) -> SeedSummary:
    return SeedSummary(
        slot_id="blocks.0",
        kernel_id="k-" + "0" * 24,
        blueprint_hash="a" * 64,
        blueprint_name="residual-mlp",
        final_stage=stage,
        germinated_step=germinated,
        ended_step=ended,
        params=params,
    )


NO_COST = RewardWeights(parameter_rent=0.0, culled_compute=0.0)


def test_no_growth_earns_exactly_nothing() -> None:
    same = curve([0.5, 0.6, 0.7, 0.8])
    rewards = action_rewards(
        [100, 200, 300], same, same, [], host_params=HOST, total_steps=TOTAL, weights=NO_COST
    )
    assert rewards == [0.0, 0.0, 0.0]


def test_gains_telescope_to_the_final_gap_in_points() -> None:
    grown = curve([0.5, 0.62, 0.75, 0.86])
    baseline = curve([0.5, 0.6, 0.7, 0.8])
    rewards = action_rewards(
        [100, 200, 300], grown, baseline, [], host_params=HOST, total_steps=TOTAL, weights=NO_COST
    )
    # The last action is rewarded up to the run's last boundary (step 400).
    assert rewards == pytest.approx([2.0, 3.0, 1.0])
    assert sum(rewards) == pytest.approx(100 * (0.86 - 0.8))


def test_parameter_rent_charges_added_parameters_for_the_time_held() -> None:
    same = curve([0.5, 0.5, 0.5, 0.5], params=[HOST, 1500, 1500, 2000])
    weights = RewardWeights(parameter_rent=2.0, culled_compute=0.0)
    rewards = action_rewards(
        [100, 300], same, same, [], host_params=HOST, total_steps=TOTAL, weights=weights
    )
    # 100 -> 300: 500 added (half the host) for half the run; 300 -> 400: 1000 for a quarter.
    assert rewards == pytest.approx([-2.0 * 0.5 * 0.5, -2.0 * 1.0 * 0.25])


def test_culled_seeds_cost_their_compute_once_in_the_action_span_that_culled_them() -> None:
    same = curve([0.5, 0.5, 0.5, 0.5])
    weights = RewardWeights(parameter_rent=0.0, culled_compute=4.0)
    seeds = [
        seed(SeedStage.CULLED, germinated=100, ended=300),
        seed(SeedStage.FOSSILIZED, germinated=100, ended=200),
        seed(SeedStage.CULLED, germinated=300, ended=400, params=1000),
    ]
    rewards = action_rewards(
        [100, 300], same, same, seeds, host_params=HOST, total_steps=TOTAL, weights=weights
    )
    # The cull at step 300 happened at the second action's boundary: it is charged there, as
    # is the cull at the run's last boundary (the last span includes its end); a fossilized
    # seed costs nothing.
    first_cull = 4.0 * 0.5 * (200 / TOTAL)
    last_cull = 4.0 * 1.0 * (100 / TOTAL)
    assert rewards == pytest.approx([0.0, -(first_cull + last_cull)])


def test_steps_between_boundaries_use_the_latest_evaluation() -> None:
    grown = curve([0.5, 0.7, 0.7, 0.7])
    baseline = curve([0.5, 0.5, 0.5, 0.5])
    rewards = action_rewards(
        [150, 250], grown, baseline, [], host_params=HOST, total_steps=TOTAL, weights=NO_COST
    )
    # Step 150 reads the point of step 100, step 250 that of step 200.
    assert rewards == pytest.approx([20.0, 0.0])


@pytest.mark.parametrize(
    ("steps", "grown", "host", "message"),
    [
        ([100], [], HOST, "both runs need a validation curve"),
        ([200, 100], curve([0.5, 0.5]), HOST, "strictly ascending"),
        ([100, 100], curve([0.5, 0.5]), HOST, "strictly ascending"),
        ([100], curve([0.5, 0.5]), 0, "host_params and total_steps must be >= 1"),
    ],
)
def test_bad_inputs_are_refused(
    steps: list[int], grown: list[CurvePoint], host: int, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        action_rewards(
            steps,
            grown,
            curve([0.5, 0.5]),
            [],
            host_params=host,
            total_steps=TOTAL,
            weights=NO_COST,
        )
