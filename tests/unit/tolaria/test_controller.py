"""The morphogenetic controller on a real wrapped MLP: lifecycle, decisions, telemetry, governor.

Seeds are real ``bottleneck-mlp`` modules; the candidate source and the policy are scripted
(see ``support``), so each test decides exactly what grows where and when.
"""

import io
import math

import pytest
import torch
from torch import Tensor

from esper.contracts.decisions import AdaptationDecision, DecisionAction
from esper.contracts.report import CurvePoint, Rollback
from esper.contracts.run import AlphaSchedule
from esper.contracts.seed import SeedStage
from esper.kasmina.schedules import alpha_at
from esper.tamiyo.policy import decision_id
from esper.tolaria.controller import TrainingDivergedError, seed_key
from esper.tolaria.optim import seed_group_slots
from tests.unit.tolaria.support import (
    SLOTS,
    FakeKernels,
    Rig,
    ScriptedPolicy,
    boundaries,
    germinate_decision,
    optimizer_tensors,
    options,
    rig,
    same_tensors,
    schedule,
    state_of,
    transitions,
)

NAN = torch.tensor(float("nan"))


def growing(slot_id: str = "2", at: int = 4, **option_changes: object) -> tuple[Rig, FakeKernels]:
    """A rig whose policy germinates one seed in ``slot_id`` at boundary ``at``."""
    kernels = FakeKernels()
    policy = ScriptedPolicy(plan={at: [germinate_decision(kernels, slot_id, at)]})
    return rig(options(**option_changes), policy=policy, kernels=kernels), kernels  # type: ignore[arg-type]


def scripted(r: Rig) -> ScriptedPolicy:
    policy = r.policy
    assert isinstance(policy, ScriptedPolicy)
    return policy


def decision(action: DecisionAction, slot_id: str, step: int) -> AdaptationDecision:
    return AdaptationDecision(
        decision_id=decision_id("run-1", step, slot_id, action.value),
        run_id="run-1",
        step=step,
        action=action,
        slot_id=slot_id,
        reason=f"scripted {action.value}",
    )


def host_optimizer_state(r: Rig) -> list[Tensor]:
    """Clones of the optimizer state of the host's parameters."""
    return [
        value.clone()
        for parameter in r.model.host.parameters()
        for value in r.optimizer.state[parameter].values()
    ]


def host_state(r: Rig) -> dict[str, object]:
    return {k: v for k, v in state_of(r.model).items() if k.startswith("host.")}


def tensors_equal(left: list[Tensor], right: list[Tensor]) -> bool:
    return len(left) == len(right) and all(
        torch.equal(a, b) for a, b in zip(left, right, strict=True)
    )


# The lifecycle --------------------------------------------------------------------------------


def test_a_seed_moves_through_its_lifecycle_on_the_schedule_and_fossilizes() -> None:
    marks = []
    kernels = FakeKernels()
    germinate = germinate_decision(kernels, "2", 4)
    r = rig(
        options(min_contribution=-1.0),
        policy=ScriptedPolicy(plan={4: [germinate]}),
        kernels=kernels,
        listener=marks.append,
    )
    slot = r.model.slot("2")
    seen: dict[int, tuple[SeedStage, float, float]] = {}
    r.step(
        16, after=lambda s: seen.__setitem__(s, (slot.stage, float(slot.alpha), slot.state.alpha))
    )

    expected_stages = (
        [SeedStage.DORMANT] * 3
        + [SeedStage.GERMINATED]
        + [SeedStage.TRAINING] * 2
        + [SeedStage.BLENDING] * 4
        + [SeedStage.PROBATION] * 5
        + [SeedStage.FOSSILIZED]
    )
    assert [seen[s][0] for s in range(1, 17)] == expected_stages
    ramp = {8: 0.25, 9: 0.5, 10: 0.75}
    for step in range(1, 17):
        if step < 8:
            want = 0.0
        elif step in ramp:
            want = alpha_at(AlphaSchedule.COSINE, ramp[step])
        else:
            want = 1.0
        assert seen[step][1] == pytest.approx(want), step
        assert seen[step][2] == pytest.approx(want), step

    assert transitions(r.controller) == [
        (4, "2", "DORMANT", "GERMINATED"),
        (5, "2", "GERMINATED", "TRAINING"),
        (7, "2", "TRAINING", "BLENDING"),
        (11, "2", "BLENDING", "PROBATION"),
        (16, "2", "PROBATION", "FOSSILIZED"),
    ]
    assert marks == r.controller.lifecycle
    kernel = kernels.kernel_for("2")
    assert {m.kernel_id for m in marks} == {kernel.kernel_id}
    assert {m.blueprint_name for m in marks} == {"bottleneck-mlp"}
    assert marks[0].reason == f"decision {germinate.decision_id}: scripted germination in 2"
    assert marks[1].reason == "schedule: germinated seeds train next step"
    assert marks[2].reason == "schedule: 2 steps of isolated training done"
    assert marks[3].reason == "schedule: 4 blending steps done"
    assert r.controller.decisions == [germinate]


def test_probation_verdict_fossilizes_a_seed_that_contributes() -> None:
    r, _kernels = growing(min_contribution=-1.0)
    r.step(16)
    slot = r.model.slot("2")
    assert slot.stage is SeedStage.FOSSILIZED
    assert slot.seed is not None
    with_seed, without_seed = r.evaluations[-2:]
    contribution = without_seed.loss - with_seed.loss
    assert r.controller.contributions == {"2@4": contribution}
    assert slot.state.contribution == contribution
    assert r.controller.seed_params == {"2@4": 544}
    verdict = r.controller.lifecycle[-1].reason
    assert verdict.startswith(f"probation: validation loss {with_seed.loss:.4f} with the seed, ")
    assert f"contribution {contribution:+.4f}, threshold -1.0000" in verdict
    # The fossil keeps its param group; Tamiyo sees the verdict in the same boundary.
    assert seed_group_slots(r.optimizer) == ["2"]
    [_, seen, _] = scripted(r).observations[-1].snapshot.slots
    assert (seen.stage, seen.contribution, seen.seed_param_count) == (
        SeedStage.FOSSILIZED,
        pytest.approx(contribution),
        544,
    )


def test_verdict_waits_for_probation_steps_and_a_boundary() -> None:
    # PROBATION starts at step 11 and lasts 2 steps; the boundary at 12 is too early.
    r, _kernels = growing(min_contribution=-1.0, interval=4)
    r.step(12)
    assert r.model.slot("2").stage is SeedStage.PROBATION
    assert r.controller.contributions == {}
    r.step(3)
    assert r.model.slot("2").stage is SeedStage.PROBATION
    r.step(1)
    assert r.model.slot("2").stage is SeedStage.FOSSILIZED


def test_probation_verdict_culls_a_seed_below_the_threshold() -> None:
    r, kernels = growing(min_contribution=1000.0)
    r.step(15)
    slot = r.model.slot("2")
    seed_parameters = slot.seed_parameters()
    assert all(p in r.optimizer.state for p in seed_parameters)
    r.step(1)
    assert transitions(r.controller)[-2:] == [
        (16, "2", "PROBATION", "CULLED"),
        (16, "2", "CULLED", "DORMANT"),
    ]
    culled, emptied = r.controller.lifecycle[-2:]
    assert "threshold +1000.0000" in culled.reason
    assert emptied.reason == "culled slots are emptied"
    assert culled.blueprint_name == emptied.blueprint_name == "bottleneck-mlp"
    assert slot.stage is SeedStage.DORMANT
    assert slot.seed is None
    assert r.model.param_count() == r.model.host_param_count()
    assert seed_group_slots(r.optimizer) == []
    assert not any(p in r.optimizer.state for p in seed_parameters)
    assert seed_key("2", 4) in r.controller.contributions
    # The culled kernel is never offered to that slot again.
    r.step(4)
    kernel_id = kernels.kernel_for("2").kernel_id
    assert scripted(r).observations[-1].excluded == frozenset({("2", kernel_id)})


def test_germination_adds_a_param_group_that_trains_the_seed() -> None:
    r, kernels = growing()
    r.step(4)
    slot = r.model.slot("2")
    assert seed_group_slots(r.optimizer) == ["2"]
    group = r.optimizer.param_groups[-1]
    assert group["params"] == slot.seed_parameters()
    assert group["lr"] == r.optimizer.defaults["lr"]
    # The seed owns a copy of the kernel's weights; training moves the copy only.
    kernel = kernels.kernel_for("2")
    initial = {k: v.clone() for k, v in kernel.module.state_dict().items()}
    assert same_tensors(slot.seed.state_dict(), initial)  # type: ignore[union-attr]
    r.step(3)
    assert not same_tensors(slot.seed.state_dict(), initial)  # type: ignore[union-attr]
    assert same_tensors(kernel.module.state_dict(), initial)


def test_pending_germination_waits_for_the_kernel_to_load() -> None:
    kernels = FakeKernels(ready=False)
    germinate = germinate_decision(kernels, "2", 4)
    r = rig(options(), policy=ScriptedPolicy(plan={4: [germinate]}), kernels=kernels)
    kernel_id = kernels.kernel_for("2").kernel_id
    r.step(6)
    assert r.model.slot("2").stage is SeedStage.DORMANT
    assert seed_group_slots(r.optimizer) == []
    assert r.controller.decisions == [germinate]
    assert [AdaptationDecision.model_validate(d) for d in r.controller.checkpoint()["pending"]] == [
        germinate
    ]
    # Asked at the decision and at every step since (steps 5 and 6), never blocking.
    assert kernels.loaded_calls == [kernel_id] * 3

    kernels.ready.add(kernel_id)
    r.step(1)
    assert transitions(r.controller)[0] == (7, "2", "DORMANT", "GERMINATED")
    assert r.controller.lifecycle[0].reason.startswith(f"decision {germinate.decision_id}")
    assert seed_group_slots(r.optimizer) == ["2"]
    assert r.controller.checkpoint()["pending"] == []
    assert r.controller.seed_params == {"2@7": 544}
    r.step(5)
    assert r.model.slot("2").stage is SeedStage.BLENDING


def test_a_pending_germination_trains_from_the_next_step() -> None:
    kernels = FakeKernels(ready=False)
    policy = ScriptedPolicy(plan={4: [germinate_decision(kernels, "2", 4)]})
    r = rig(options(), policy=policy, kernels=kernels)
    r.step(6)
    kernels.ready.add(kernels.kernel_for("2").kernel_id)
    r.step(2)
    assert transitions(r.controller) == [
        (7, "2", "DORMANT", "GERMINATED"),
        (8, "2", "GERMINATED", "TRAINING"),
    ]


def test_policy_cull_and_fossilize_decisions_are_applied() -> None:
    kernels = FakeKernels()
    cull = decision(DecisionAction.CULL, "2", 8)
    fossilize = decision(DecisionAction.FOSSILIZE, "0", 20)
    plan = {
        4: [germinate_decision(kernels, "2", 4)],
        8: [cull],
        12: [germinate_decision(kernels, "0", 12)],
        20: [fossilize],
    }
    opts = options(sched=schedule(probation_steps=50), min_contribution=1000.0)
    r = rig(opts, policy=ScriptedPolicy(plan), kernels=kernels)
    r.step(20)
    assert [
        t for t in transitions(r.controller) if t[3] in ("CULLED", "DORMANT", "FOSSILIZED")
    ] == [
        (8, "2", "BLENDING", "CULLED"),
        (8, "2", "CULLED", "DORMANT"),
        (20, "0", "PROBATION", "FOSSILIZED"),
    ]
    by_target = {mark.target: mark for mark in r.controller.lifecycle}
    assert by_target[SeedStage.CULLED].reason == f"decision {cull.decision_id}: scripted cull"
    assert by_target[SeedStage.FOSSILIZED].reason == (
        f"decision {fossilize.decision_id}: scripted fossilize"
    )
    assert seed_group_slots(r.optimizer) == ["0"]
    assert r.controller.decisions == [plan[4][0], cull, plan[12][0], fossilize]


def test_without_a_policy_or_kernels_nothing_grows_but_boundaries_run() -> None:
    kernels = FakeKernels()
    r = rig(options(), policy=None, kernels=kernels)
    r.step(8)
    assert kernels.loaded_calls == []
    assert [point.step for point in r.controller.curve] == [4, 8]
    assert r.controller.lifecycle == []

    policy = ScriptedPolicy()
    r = rig(options(), policy=policy, kernels=None)
    r.step(8)
    assert policy.observations == []
    assert [point.step for point in r.controller.curve] == [4, 8]


def test_budget_left_counts_every_seed_and_never_goes_negative() -> None:
    r, _kernels = growing(max_added_params=600)
    r.step(8)
    assert r.controller.budget_left() == 600 - 544
    assert scripted(r).observations[-1].snapshot.budget_left_params == 56
    r, _kernels = growing(max_added_params=500)
    r.step(4)
    assert r.controller.budget_left() == 0


# Telemetry and boundaries ---------------------------------------------------------------------


def test_telemetry_is_switched_on_for_every_nth_step() -> None:
    r = rig(options(telemetry_every=3, interval=4), policy=ScriptedPolicy(), kernels=FakeKernels())
    flags: dict[int, list[bool]] = {}
    r.step(12, after=lambda s: flags.__setitem__(s, [x.collecting for x in r.model.seed_slots()]))
    # After step s the slots collect for step s + 1: steps 3, 6, 9 and 12 are observed.
    assert flags == {s: [(s + 1) % 3 == 0] * len(SLOTS) for s in range(1, 13)}
    assert all(not slot.idle for slot in r.model.seed_slots()) is flags[12][0]


class Recorder:
    """Records the training activations and gradient norms at a host module, per step."""

    def __init__(self, r: Rig, module_index: int) -> None:
        self.activations: dict[int, Tensor] = {}
        self.gradient_sq: dict[int, float] = {}
        self._rig = r
        r.model.host[module_index].register_forward_hook(self._hook)

    def _hook(self, _module: object, _inputs: object, output: Tensor) -> None:
        if not torch.is_grad_enabled():
            return
        step = self._rig.controller.step + 1
        self.activations[step] = output.detach().clone()
        output.register_hook(lambda g: self.gradient_sq.__setitem__(step, float(g.square().sum())))


def test_boundary_snapshot_carries_the_windows_statistics() -> None:
    r = rig(options(telemetry_every=2, interval=4), policy=ScriptedPolicy(), kernels=FakeKernels())
    recorder = Recorder(r, 0)
    r.step(8)
    first, second = (o.snapshot for o in scripted(r).observations)
    for snapshot, window, collected in (
        (first, range(1, 5), (2, 4)),
        (second, range(5, 9), (6, 8)),
    ):
        assert snapshot.run_id == "run-1"
        assert snapshot.epoch == 0
        assert snapshot.training_progress == pytest.approx(window[-1] / 100)
        assert snapshot.budget_left_params == 100_000
        losses = r.losses[window[0] - 1 : window[-1]]
        assert snapshot.train_loss == pytest.approx(sum(losses) / 4, rel=1e-6)
        slot = snapshot.slots[0]
        expected = math.sqrt(sum(recorder.gradient_sq[s] for s in collected) / len(collected))
        assert slot.gradient_norm == pytest.approx(expected, rel=1e-5)
    assert (first.step, second.step) == (4, 8)
    evaluation_4, evaluation_8 = r.evaluations
    assert (first.val_loss, first.val_accuracy) == (evaluation_4.loss, evaluation_4.accuracy)
    assert (second.val_loss, second.val_accuracy) == (evaluation_8.loss, evaluation_8.accuracy)
    assert first.loss_trend == 0.0
    assert second.loss_trend == pytest.approx(
        (evaluation_8.loss - evaluation_4.loss) / evaluation_4.loss
    )
    assert [(s.slot_id, s.param_count, s.seed_param_count) for s in second.slots] == [
        ("0", 144, 0),
        ("2", 272, 0),
        ("4", 68, 0),
    ]
    assert {(s.stage, s.alpha, s.contribution, s.steps_since_change) for s in second.slots} == {
        (SeedStage.DORMANT, 0.0, None, 8)
    }
    assert r.controller.curve == [
        CurvePoint(
            step=s.step,
            epoch=0,
            train_loss=s.train_loss,
            val_loss=s.val_loss,
            val_accuracy=s.val_accuracy,
            params=r.model.host_param_count(),
        )
        for s in (first, second)
    ]
    observation = scripted(r).observations[-1]
    assert observation.graph == r.model.graph()
    assert observation.max_seeds == 4
    assert set(observation.candidates) == set(SLOTS)


def test_activation_telemetry_covers_only_the_collected_training_steps() -> None:
    r = rig(options(telemetry_every=2, interval=4), policy=ScriptedPolicy(), kernels=FakeKernels())
    recorder = Recorder(r, 0)
    r.step(4)
    observed = torch.cat([recorder.activations[s].flatten().double() for s in (2, 4)])
    slot = scripted(r).observations[0].snapshot.slots[0]
    assert slot.activation_mean == pytest.approx(observed.mean().item(), rel=1e-4)
    assert slot.activation_std == pytest.approx(observed.std(correction=0).item(), rel=1e-4)


# The governor ---------------------------------------------------------------------------------


def test_a_non_finite_loss_rolls_back_and_culls_the_live_seed() -> None:
    r, kernels = growing()
    r.step(4)
    good_host = host_state(r)
    good_optimizer = host_optimizer_state(r)
    r.step(3)
    r.controller.after_step(NAN)

    assert r.controller.rollbacks == [
        Rollback(
            step=8, restored_step=4, reason="the training loss was not finite", culled_slot="2"
        )
    ]
    assert same_tensors(host_state(r), good_host)
    assert tensors_equal(host_optimizer_state(r), good_optimizer)
    slot = r.model.slot("2")
    assert (slot.stage, slot.seed) == (SeedStage.DORMANT, None)
    assert seed_group_slots(r.optimizer) == []
    # History is kept (the step count too); the restored seed is culled by the governor.
    assert r.controller.step == 8
    assert transitions(r.controller) == [
        (4, "2", "DORMANT", "GERMINATED"),
        (5, "2", "GERMINATED", "TRAINING"),
        (7, "2", "TRAINING", "BLENDING"),
        (8, "2", "GERMINATED", "CULLED"),
        (8, "2", "CULLED", "DORMANT"),
    ]
    assert r.controller.lifecycle[-2].reason == "governor: the training loss was not finite"
    # A rolled-back boundary neither evaluates, consults Tamiyo nor adds a curve point.
    assert boundaries(scripted(r)) == [4]
    assert [point.step for point in r.controller.curve] == [4]
    r.step(4)
    assert boundaries(scripted(r)) == [4, 12]
    kernel_id = kernels.kernel_for("2").kernel_id
    assert scripted(r).observations[-1].excluded == frozenset({("2", kernel_id)})


def test_a_loss_spike_rolls_back_without_a_seed_to_blame() -> None:
    r = rig(options(), policy=ScriptedPolicy(), kernels=FakeKernels())
    r.step(4)
    good_host = host_state(r)
    reference = r.controller.checkpoint()["previous_mean"]
    assert reference == pytest.approx(sum(r.losses) / 4, rel=1e-6)
    r.step(3)
    r.controller.after_step(torch.tensor(5.0 * reference))
    [rollback] = r.controller.rollbacks
    assert rollback.reason.startswith("loss spike: ")
    assert "exceeds 4x the previous mean" in rollback.reason
    assert (rollback.step, rollback.restored_step, rollback.culled_slot) == (8, 4, None)
    assert same_tensors(host_state(r), good_host)
    assert r.controller.lifecycle == []


def test_divergence_before_any_good_state_raises() -> None:
    r = rig(options(), policy=ScriptedPolicy(), kernels=FakeKernels())
    r.step(3)
    with pytest.raises(TrainingDivergedError, match=r"step 4: .*before any good state"):
        r.controller.after_step(NAN)


def test_too_many_rollbacks_in_a_row_raise() -> None:
    r = rig(options(max_consecutive_rollbacks=2), policy=ScriptedPolicy(), kernels=FakeKernels())
    r.step(4)
    for _ in range(2):
        r.step(3)
        r.controller.after_step(NAN)
    assert [rb.step for rb in r.controller.rollbacks] == [8, 12]
    r.step(3)
    with pytest.raises(TrainingDivergedError, match=r"step 16: .*after 2 rollbacks in a row"):
        r.controller.after_step(NAN)


def test_a_healthy_boundary_resets_the_rollback_count() -> None:
    r = rig(options(max_consecutive_rollbacks=2), policy=ScriptedPolicy(), kernels=FakeKernels())
    r.step(4)
    for healthy in (False, False, True, False, False):
        r.step(4 if healthy else 3)
        if not healthy:
            r.controller.after_step(NAN)
    assert [rb.step for rb in r.controller.rollbacks] == [8, 12, 20, 24]
    assert [rb.restored_step for rb in r.controller.rollbacks] == [4, 4, 16, 16]


def test_consecutive_rollbacks_restore_the_same_optimizer_state() -> None:
    r = rig(options(), policy=ScriptedPolicy(), kernels=FakeKernels())
    r.step(4)
    good = optimizer_tensors(r.optimizer)
    for _ in range(2):
        r.step(3)
        r.controller.after_step(NAN)
        assert tensors_equal(optimizer_tensors(r.optimizer), good)


def test_training_continues_after_the_parameters_diverge() -> None:
    r = rig(options(), policy=ScriptedPolicy(), kernels=FakeKernels())
    r.step(4)
    good_host = host_state(r)
    with torch.no_grad():
        r.model.host[0].weight[0, 0] = float("nan")
    r.step(4)
    assert [rb.step for rb in r.controller.rollbacks] == [8]
    assert same_tensors(host_state(r), good_host)
    r.step(4)
    assert boundaries(scripted(r)) == [4, 12]


def test_a_rollback_does_not_regrow_the_culled_kernel() -> None:
    kernels = FakeKernels(ready=False)
    policy = ScriptedPolicy(plan={4: [germinate_decision(kernels, "2", 4)]})
    r = rig(options(), policy=policy, kernels=kernels)
    r.step(4)
    kernels.ready.add(kernels.kernel_for("2").kernel_id)
    r.step(3)
    r.controller.after_step(NAN)
    assert r.controller.rollbacks[0].culled_slot == "2"
    # The restored state predates the seed; its cull is still recorded, in legal order.
    last_two = r.controller.lifecycle[-2:]
    assert [(m.source, m.target) for m in last_two] == [
        (SeedStage.BLENDING, SeedStage.CULLED),
        (SeedStage.CULLED, SeedStage.DORMANT),
    ]
    assert all(m.reason.startswith("governor: ") for m in last_two)
    r.step(1)
    assert r.model.slot("2").stage is SeedStage.DORMANT


# Checkpoints ----------------------------------------------------------------------------------


def busy_rig() -> tuple[Rig, dict[int, list[AdaptationDecision]], FakeKernels]:
    """A rig at step 14: a seed culled in slot 2, one TRAINING in slot 0, one pending in 4."""
    kernels = FakeKernels()
    kernels.ready.discard(kernels.kernel_for("4").kernel_id)
    plan = {
        4: [germinate_decision(kernels, "2", 4)],
        8: [decision(DecisionAction.CULL, "2", 8)],
        12: [germinate_decision(kernels, "0", 12), germinate_decision(kernels, "4", 12)],
    }
    r = rig(options(), policy=ScriptedPolicy(plan=dict(plan)), kernels=kernels)
    r.step(14)
    return r, plan, kernels


def test_checkpoint_is_plain_data_and_restores_everything() -> None:
    source, plan, _kernels = busy_rig()
    buffer = io.BytesIO()
    torch.save(source.controller.checkpoint(), buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)

    kernels = FakeKernels()
    kernels.ready.discard(kernels.kernel_for("4").kernel_id)
    policy = ScriptedPolicy(plan=dict(plan))
    target = rig(options(), policy=policy, kernels=kernels)
    target.controller.restore(saved)

    a, b = source.controller, target.controller
    assert same_tensors(state_of(target.model), state_of(source.model))
    assert [(s.stage, s.state.kernel_id) for s in target.model.seed_slots()] == [
        (s.stage, s.state.kernel_id) for s in source.model.seed_slots()
    ]
    assert target.model.slot("0").stage is SeedStage.TRAINING
    assert seed_group_slots(target.optimizer) == seed_group_slots(source.optimizer) == ["0"]
    assert target.optimizer.param_groups[-1]["params"] == target.model.slot("0").seed_parameters()
    assert tensors_equal(optimizer_tensors(target.optimizer), optimizer_tensors(source.optimizer))
    assert (b.step, b.epoch) == (a.step, a.epoch) == (14, 0)
    assert b.lifecycle == a.lifecycle
    assert b.decisions == a.decisions
    assert b.curve == a.curve
    assert b.rollbacks == a.rollbacks
    assert b.contributions == a.contributions
    assert b.seed_params == a.seed_params
    assert policy.loaded_state == [{"seen": 3}]
    checkpoint = b.checkpoint()
    assert checkpoint["pending"] == a.checkpoint()["pending"]
    assert len(checkpoint["pending"]) == 1
    assert checkpoint["excluded"] == [["2", kernels.kernel_for("2").kernel_id]]
    assert checkpoint["previous_mean"] == a.checkpoint()["previous_mean"]

    # Both go on alike: the same batches give the same parameters, and the pending kernel
    # grows in both once it loads.
    target.cursor = source.cursor
    for r in (source, target):
        assert r.kernels is not None
        r.kernels.ready.add(r.kernels.kernel_for("4").kernel_id)
        r.step(2)
    assert same_tensors(state_of(target.model), state_of(source.model))
    assert transitions(b) == transitions(a)
    assert target.model.slot("4").stage is not SeedStage.DORMANT


def test_restore_refuses_another_version() -> None:
    r = rig(options(), policy=ScriptedPolicy(), kernels=FakeKernels())
    checkpoint = r.controller.checkpoint()
    checkpoint["version"] = 999
    with pytest.raises(ValueError, match=r"not a version-\d+ controller checkpoint"):
        r.controller.restore(checkpoint)


def test_a_cloned_checkpoint_is_a_snapshot_and_a_plain_one_is_live() -> None:
    r = rig(options(), policy=ScriptedPolicy(), kernels=FakeKernels())
    r.step(1)
    clone = r.controller.checkpoint(clone=True)
    live = r.controller.checkpoint()
    before = state_of(r.model)
    r.step(1)
    assert same_tensors(clone["model"], before)  # type: ignore[arg-type]
    assert not same_tensors(live["model"], before)  # type: ignore[arg-type]
    assert same_tensors(live["model"], state_of(r.model))  # type: ignore[arg-type]
