"""A run's events on Oona: what the announcer publishes, that it never blocks, and the hooks.

The bus is the real in-process one (the Redis bus is exercised by
tests/integration/run_remote). A real trainer and controller on the tiny MLP of the Tolaria
tests drive the hooks, so the events are checked against the controller's own history, and a
run with the epoch hook is compared with one without it: announcing changes nothing in training.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import pytest
import torch
from pydantic import ValidationError

from esper.contracts.events import (
    Event,
    RunFinished,
    RunProgress,
    SeedLifecycleEvent,
    Topic,
)
from esper.contracts.report import LifecycleMark, RunReport
from esper.contracts.seed import SEED_STAGES, SeedStage
from esper.oona import BusUnavailableError, InProcessBus
from esper.tolaria.announce import SOURCE, RunAnnouncer, announcing
from esper.tolaria.controller import (
    Evaluation,
    MorphogeneticController,
    TrainingDivergedError,
)
from esper.tolaria.job import JobHooks, merge_hooks
from esper.tolaria.optim import build_optimizer
from esper.tolaria.trainer import EpochInfo, StepInfo, Trainer, evaluate
from tests.unit.contracts.samples import run_report, seed_summary
from tests.unit.tolaria.support import (
    BATCH,
    CPU,
    FakeKernels,
    ScriptedPolicy,
    germinate_decision,
    make_model,
    make_split,
    options,
    same_tensors,
    state_of,
)

RUN_ID = "team-a.grow-1"
TOPICS = (Topic.RUN_PROGRESS, Topic.SEED_LIFECYCLE, Topic.ADAPTATION_DECIDED, Topic.RUN_FINISHED)


def _events(bus: InProcessBus) -> dict[Topic, list[Event]]:
    """Every event published so far, per topic, read by a fresh consumer group."""
    found: dict[Topic, list[Event]] = {topic: [] for topic in TOPICS}
    with bus.subscribe(TOPICS, "test-reader", "reader-0") as subscription:
        while deliveries := subscription.receive(max_count=1000, block_ms=0):
            for delivery in deliveries:
                found[delivery.topic].append(delivery.event)
            subscription.ack(*deliveries)
    return found


def _mark(step: int, source: SeedStage, target: SeedStage) -> LifecycleMark:
    return LifecycleMark(
        step=step,
        slot_id="blocks.0",
        source=source,
        target=target,
        kernel_id="k-" + "0" * 24,
        blueprint_name="bottleneck-mlp",
        reason="test",
    )


def _epoch(epoch: int = 1, train_loss: float | None = 0.5) -> EpochInfo:
    return EpochInfo(
        epoch=epoch,
        step=10 * epoch,
        train_loss=train_loss,
        val_loss=0.6,
        val_accuracy=0.75,
        params=1234,
        train_flops=1_000_000 * epoch,
    )


# The announcer on its own ---------------------------------------------------------------------


def test_each_hook_publishes_its_payload_with_the_run_as_trace() -> None:
    bus = InProcessBus()
    announcer = RunAnnouncer(bus, RUN_ID)
    decision = germinate_decision(FakeKernels(), "0", 4, run_id=RUN_ID)
    mark = _mark(4, SeedStage.DORMANT, SeedStage.GERMINATED)

    announcer.epoch(_epoch())
    announcer.decision(decision)
    announcer.lifecycle(mark)
    assert announcer.close() == 0

    events = _events(bus)
    assert [e.payload for e in events[Topic.RUN_PROGRESS]] == [
        RunProgress(run_id=RUN_ID, epoch=1, train_loss=0.5, val_accuracy=0.75, params=1234)
    ]
    assert [e.payload for e in events[Topic.ADAPTATION_DECIDED]] == [decision]
    assert [e.payload for e in events[Topic.SEED_LIFECYCLE]] == [
        SeedLifecycleEvent(
            run_id=RUN_ID,
            slot_id="blocks.0",
            source=SeedStage.DORMANT,
            target=SeedStage.GERMINATED,
            step=4,
            kernel_id=mark.kernel_id,
        )
    ]
    assert events[Topic.RUN_FINISHED] == []
    published = [event for topic in TOPICS for event in events[topic]]
    assert {(event.source, event.trace_id) for event in published} == {(SOURCE, RUN_ID)}
    assert len({event.id for event in published}) == 3
    assert announcer.published == 3


@pytest.mark.parametrize("loss", [None, math.nan, math.inf])
def test_an_epoch_without_a_finite_loss_is_not_announced(loss: float | None) -> None:
    bus = InProcessBus()
    announcer = RunAnnouncer(bus, RUN_ID)
    announcer.epoch(_epoch(train_loss=loss))
    announcer.close()
    assert _events(bus)[Topic.RUN_PROGRESS] == []


def test_finished_reports_the_grown_model_and_how_its_seeds_ended() -> None:
    culled = seed_summary().model_copy(update={"slot_id": "layer2.0", "final_stage": "CULLED"})
    report: RunReport = run_report().model_copy(update={"seeds": [seed_summary(), culled]})
    bus = InProcessBus()
    announcer = RunAnnouncer(bus, RUN_ID)
    announcer.finished(report)
    announcer.close()
    [event] = _events(bus)[Topic.RUN_FINISHED]
    assert event.payload == RunFinished(
        run_id=RUN_ID,
        succeeded=True,
        test_accuracy=report.grown.test_accuracy,
        params=report.grown.params,
        seeds_fossilized=1,
        seeds_culled=1,
    )


@pytest.mark.parametrize(
    "fields",
    [
        {"succeeded": True},
        {"succeeded": True, "test_accuracy": 0.9, "params": 10, "seeds_fossilized": 1},
        {
            "succeeded": True,
            "test_accuracy": 0.9,
            "params": 10,
            "seeds_fossilized": 1,
            "seeds_culled": 0,
            "error": "but it failed",
        },
        {"succeeded": False},
        {"succeeded": False, "error": "diverged", "test_accuracy": 0.5},
    ],
)
def test_run_finished_is_either_a_complete_result_or_an_error(fields: dict[str, object]) -> None:
    with pytest.raises(ValidationError, match=r"a (succeeded|failed) run gives"):
        RunFinished.model_validate({"run_id": RUN_ID, **fields})


def test_a_block_that_raises_announces_the_error_and_lets_it_through() -> None:
    bus = InProcessBus()
    with pytest.raises(TrainingDivergedError, match="loss is NaN"), announcing(bus, RUN_ID):
        raise TrainingDivergedError("step 40: loss is NaN")
    [event] = _events(bus)[Topic.RUN_FINISHED]
    assert event.payload == RunFinished(
        run_id=RUN_ID, succeeded=False, error="TrainingDivergedError: step 40: loss is NaN"
    )


def test_an_interrupt_is_announced_by_its_name() -> None:
    bus = InProcessBus()
    with pytest.raises(KeyboardInterrupt), announcing(bus, RUN_ID):
        raise KeyboardInterrupt
    [event] = _events(bus)[Topic.RUN_FINISHED]
    assert event.payload == RunFinished(run_id=RUN_ID, succeeded=False, error="KeyboardInterrupt")


def test_a_block_that_ends_normally_announces_nothing_itself_but_flushes() -> None:
    bus = InProcessBus()
    with announcing(bus, RUN_ID) as announcer:
        announcer.epoch(_epoch())
    assert announcer.unpublished == 0
    events = _events(bus)
    assert len(events[Topic.RUN_PROGRESS]) == 1
    assert events[Topic.RUN_FINISHED] == []


class _DownBus(InProcessBus):
    """An in-process bus whose backend never answers."""

    def __init__(self) -> None:
        super().__init__()
        self.attempts = 0

    def publish(self, event: Event) -> str:
        self.attempts += 1
        raise BusUnavailableError("redis at redis://nowhere:6379/0 failed XADD: refused")


def test_a_bus_that_is_down_never_blocks_the_caller_and_the_flush_is_bounded() -> None:
    bus = _DownBus()
    announcer = RunAnnouncer(bus, RUN_ID, flush_seconds=0.3)
    started = time.monotonic()
    for epoch in range(1, 201):
        announcer.epoch(_epoch(epoch))
    assert time.monotonic() - started < 1.0
    closing = time.monotonic()
    left = announcer.close()
    assert time.monotonic() - closing < 3.0
    assert left == 200
    assert announcer.unpublished == 200
    assert announcer.published == 0
    assert bus.attempts >= 1


# Hooks ----------------------------------------------------------------------------------------


def test_merged_hooks_call_both_in_order_and_keep_a_lone_one() -> None:
    calls: list[str] = []

    def record(name: str) -> Callable[..., None]:
        return lambda *_arguments: calls.append(name)

    first = JobHooks(phase=record("first.phase"), epoch=record("first.epoch"))
    second = JobHooks(epoch=record("second.epoch"), decision=record("second.decision"))
    merged = merge_hooks(first, second)
    assert merged.phase is first.phase
    assert merged.decision is second.decision
    assert merged.step is None
    assert merged.kernels is None
    assert merged.lifecycle is None
    assert merged.epoch is not None
    merged.epoch(_epoch())
    assert calls == ["first.epoch", "second.epoch"]


# Through a real trainer -----------------------------------------------------------------------


@dataclass
class _Run:
    controller: MorphogeneticController
    trainer: Trainer
    evaluations: list[Evaluation]
    epochs: list[EpochInfo]


EPOCHS = 5
TRAIN_SIZE = 64
"""Four steps an epoch: the decision boundaries (every 4 steps) fall on epoch ends."""


def _run(hooks: JobHooks, *, train_size: int = TRAIN_SIZE) -> _Run:
    """Train the tiny MLP for EPOCHS epochs; a scripted germination in slot 0 at step 8."""
    kernels = FakeKernels()
    policy = ScriptedPolicy(plan={8: [germinate_decision(kernels, "0", 8, run_id=RUN_ID)]})
    opts = options(interval=4, min_contribution=-1.0, total_steps=EPOCHS * 4)
    model = make_model()
    validation = make_split(64, seed=2)
    evaluations: list[Evaluation] = []

    def evaluate_validation() -> Evaluation:
        result = evaluate(model, validation, CPU)
        evaluations.append(result)
        return result

    controller = MorphogeneticController(
        model,
        build_optimizer(model.host.parameters(), opts.schedule),
        opts,
        evaluate_validation,
        policy=policy,
        kernels=kernels,
        listener=hooks.lifecycle,
        decision_listener=hooks.decision,
    )
    epochs: list[EpochInfo] = []

    def on_epoch(info: EpochInfo) -> None:
        epochs.append(info)
        if hooks.epoch is not None:
            hooks.epoch(info)

    trainer = Trainer(
        controller,
        make_split(train_size, seed=1),
        epochs=EPOCHS,
        batch_size=BATCH,
        seed=3,
        device=CPU,
        on_epoch=on_epoch if hooks.epoch is not None else None,
    )
    trainer.fit()
    return _Run(controller, trainer, evaluations, epochs)


def test_a_trained_run_announces_every_epoch_stage_change_and_decision() -> None:
    bus = InProcessBus()
    with announcing(bus, RUN_ID) as announcer:
        run = _run(announcer.hooks())
    events = _events(bus)
    controller = run.controller

    progress = [event.payload for event in events[Topic.RUN_PROGRESS]]
    assert [p.epoch for p in progress] == list(range(1, EPOCHS + 1))
    for point, info in zip(progress, run.epochs, strict=True):
        assert isinstance(point, RunProgress)
        assert point.run_id == RUN_ID
        assert point.val_accuracy == info.val_accuracy
        assert point.train_loss == info.train_loss
        assert point.params == info.params
    assert progress[-1].params == controller.model.param_count()
    assert progress[0].params < progress[-1].params  # the seed grew in the second epoch

    decisions = [event.payload for event in events[Topic.ADAPTATION_DECIDED]]
    assert decisions == controller.decisions
    assert len(decisions) == 1

    changes = [event.payload for event in events[Topic.SEED_LIFECYCLE]]
    assert [(c.step, c.slot_id, c.source, c.target, c.kernel_id) for c in changes] == [
        (m.step, m.slot_id, m.source, m.target, m.kernel_id) for m in controller.lifecycle
    ]
    stage = SeedStage.DORMANT
    for change in changes:
        assert isinstance(change, SeedLifecycleEvent)
        assert change.source is stage
        SEED_STAGES.check(change.source, change.target)
        stage = change.target
    assert stage is SeedStage.FOSSILIZED


def test_the_epoch_mean_loss_is_the_mean_of_the_epochs_step_losses() -> None:
    losses: list[float] = []
    recorded = _run_recording_losses(losses)
    assert len(losses) == EPOCHS * 4
    for info in recorded.epochs:
        window = losses[(info.epoch - 1) * 4 : info.epoch * 4]
        assert info.train_loss == pytest.approx(sum(window) / len(window), rel=1e-6)
        assert info.step == info.epoch * 4


def _run_recording_losses(losses: list[float]) -> _Run:
    original = MorphogeneticController.after_step

    def after_step(self: MorphogeneticController, loss: torch.Tensor) -> None:
        losses.append(loss.item())
        original(self, loss)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(MorphogeneticController, "after_step", after_step)
        return _run(JobHooks(epoch=lambda _info: None))


def test_announcing_changes_nothing_in_training() -> None:
    # Six steps an epoch: most epoch ends fall between decision boundaries, where the epoch-end
    # validation is a fresh evaluation (with telemetry kept out of it).
    steps = 6
    quiet = _run(JobHooks(), train_size=steps * BATCH)
    bus = InProcessBus()
    with announcing(bus, RUN_ID) as announcer:
        announced = _run(announcer.hooks(), train_size=steps * BATCH)
    # The curves agree point for point except in the FLOPs spent: an epoch's end validation
    # off a boundary is work the run did (counted with the controller's), the rest is equal.
    assert [p.model_copy(update={"train_flops": None}) for p in announced.controller.curve] == [
        p.model_copy(update={"train_flops": None}) for p in quiet.controller.curve
    ]
    extra = [
        a.train_flops - q.train_flops
        for a, q in zip(announced.controller.curve, quiet.controller.curve, strict=True)
        if a.train_flops is not None and q.train_flops is not None
    ]
    assert extra == sorted(extra)
    assert extra[-1] > 0
    assert announced.controller.lifecycle == quiet.controller.lifecycle
    assert announced.controller.decisions == quiet.controller.decisions
    assert same_tensors(state_of(announced.controller.model), state_of(quiet.controller.model))
    # One more evaluation at each epoch end off a boundary; those on one reuse its evaluation.
    between = sum(1 for epoch in range(1, EPOCHS + 1) if (epoch * steps) % 4 != 0)
    assert between == 3
    assert len(announced.evaluations) == len(quiet.evaluations) + between
    assert len(_events(bus)[Topic.RUN_PROGRESS]) == EPOCHS


def test_validation_at_a_boundary_reuses_the_boundarys_evaluation() -> None:
    run = _run(JobHooks(epoch=lambda _info: None))
    quiet = _run(JobHooks())
    # Every epoch ends on a boundary (4 steps an epoch, a boundary every 4): no extra pass.
    assert len(run.evaluations) == len(quiet.evaluations)
    final = run.controller.curve[-1]
    assert run.epochs[-1].val_accuracy == final.val_accuracy
    assert run.epochs[-1].val_loss == final.val_loss


def test_step_info_is_unchanged_by_the_epoch_hook() -> None:
    # The epoch hook is independent of the step hook: both fire, neither replaces the other.
    steps: list[StepInfo] = []
    kernels = FakeKernels()
    opts = options(interval=4, total_steps=8)
    model = make_model()
    controller = MorphogeneticController(
        model,
        build_optimizer(model.host.parameters(), opts.schedule),
        opts,
        lambda: evaluate(model, make_split(32, seed=2), CPU),
        kernels=kernels,
    )
    epochs: list[EpochInfo] = []
    Trainer(
        controller,
        make_split(TRAIN_SIZE, seed=1),
        epochs=2,
        batch_size=BATCH,
        seed=3,
        device=CPU,
        on_step=steps.append,
        progress_every=2,
        on_epoch=epochs.append,
    ).fit()
    assert [info.step for info in steps] == [2, 4, 6, 8]
    assert [(info.epoch, info.step) for info in epochs] == [(1, 4), (2, 8)]
