"""The trainer: evaluation, autocast, checkpoints, and a resume that continues identically."""

import contextlib
import warnings
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.nn import functional

from esper.contracts.decisions import AdaptationDecision
from esper.contracts.seed import SeedStage
from esper.contracts.telemetry import TelemetrySnapshot
from esper.tamiyo.heuristic import HeuristicPolicy
from esper.tamiyo.policy import Observation
from esper.tolaria.controller import ControllerOptions
from esper.tolaria.trainer import (
    EVAL_BATCH,
    Split,
    StepInfo,
    Trainer,
    autocast_for,
    evaluate,
    load_checkpoint,
)
from tests.unit.tolaria.support import (
    BATCH,
    CPU,
    FakeKernels,
    Rig,
    make_host,
    make_split,
    optimizer_tensors,
    options,
    rig,
    same_tensors,
    stages,
    state_of,
    transitions,
)

# evaluate and autocast ------------------------------------------------------------------------


@pytest.mark.parametrize("training", [True, False])
def test_evaluate_runs_in_eval_mode_and_restores_the_mode(training: bool) -> None:
    model = nn.Sequential(make_host(), nn.Dropout(0.5))
    model.train(training)
    modes: list[bool] = []
    model.register_forward_hook(lambda module, _i, _o: modes.append(module.training))
    evaluate(model, make_split(8, seed=0), CPU)
    assert modes == [False]
    assert model.training is training
    assert all(module.training is training for module in model.modules())


def test_evaluate_returns_mean_loss_and_accuracy_over_every_batch() -> None:
    model = make_host()
    split = make_split(EVAL_BATCH + 76, seed=0)
    result = evaluate(model, split, CPU)
    with torch.no_grad():
        logits = model(split.features)
    expected_loss = functional.cross_entropy(logits, split.labels).item()
    expected_accuracy = (logits.argmax(dim=1) == split.labels).float().mean().item()
    assert result.loss == pytest.approx(expected_loss, rel=1e-5)
    assert result.accuracy == pytest.approx(expected_accuracy)
    assert 0.0 < result.accuracy < 1.0


def test_autocast_on_cpu_is_a_null_context() -> None:
    context = autocast_for(torch.device("cpu"))
    assert isinstance(context, contextlib.nullcontext)
    with context:
        assert not torch.is_autocast_enabled("cpu")


def test_autocast_on_cuda_is_bf16() -> None:
    with warnings.catch_warnings():
        # Without a GPU torch warns that it disables the context; its settings are what count.
        warnings.simplefilter("ignore")
        context = autocast_for(torch.device("cuda"))
    assert isinstance(context, torch.autocast)
    assert (context.device, context.fast_dtype) == ("cuda", torch.bfloat16)


def test_split_length_is_its_number_of_examples() -> None:
    assert len(Split(torch.zeros(5, 3), torch.zeros(5, dtype=torch.long))) == 5


# Sessions -------------------------------------------------------------------------------------


class RecordingHeuristic(HeuristicPolicy):
    """The heuristic policy, recording every snapshot it is shown."""

    def __init__(self, patience: int, threshold: float) -> None:
        super().__init__(patience, threshold)
        self.snapshots: list[TelemetrySnapshot] = []

    def decide(self, observation: Observation) -> list[AdaptationDecision]:
        self.snapshots.append(observation.snapshot)
        return super().decide(observation)


@dataclass
class Session:
    rig: Rig
    trainer: Trainer
    policy: RecordingHeuristic


def session(
    epochs: int,
    *,
    train_size: int = 64,
    checkpoint_path: Path | None = None,
    model_seed: int = 0,
    opts: ControllerOptions | None = None,
    **trainer_options: object,
) -> Session:
    opts = opts or options(interval=4, telemetry_every=2, max_seeds=2, min_contribution=-1.0)
    policy = RecordingHeuristic(opts.policy.plateau_patience, opts.policy.plateau_threshold)
    r = rig(opts, policy=policy, kernels=FakeKernels(), seed=model_seed)
    trainer = Trainer(
        r.controller,
        make_split(train_size, seed=1),
        epochs=epochs,
        batch_size=BATCH,
        seed=3,
        device=CPU,
        checkpoint_path=checkpoint_path,
        **trainer_options,  # type: ignore[arg-type]
    )
    return Session(r, trainer, policy)


def test_fit_trains_every_epoch_in_ceil_batches_and_reports_progress() -> None:
    seen: list[StepInfo] = []
    run = session(2, train_size=70, on_step=seen.append, progress_every=3)
    assert (run.trainer.steps_per_epoch, run.trainer.total_steps) == (5, 10)
    before = state_of(run.rig.model)
    run.trainer.fit()
    assert run.rig.controller.step == 10
    assert run.rig.controller.epoch == 1
    assert run.trainer.epochs_done == 2
    assert run.trainer.train_seconds > 0
    assert seen == [StepInfo(3, 10, 0), StepInfo(6, 10, 1), StepInfo(9, 10, 1)]
    assert not same_tensors(state_of(run.rig.model), before)
    # Training again does nothing: every epoch is done.
    run.trainer.fit()
    assert run.rig.controller.step == 10


def test_each_epoch_checkpoint_is_written_atomically(tmp_path: Path) -> None:
    path = tmp_path / "checkpoint.pt"
    run = session(2, checkpoint_path=path)
    run.trainer.fit()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt"]
    checkpoint = load_checkpoint(path)
    assert checkpoint["version"] == 2
    assert checkpoint["epochs_done"] == 2
    assert checkpoint["controller"]["step"] == 8
    assert torch.equal(checkpoint["cpu_rng"], torch.get_rng_state())
    assert checkpoint["train_seconds"] == run.trainer.train_seconds > 0
    assert same_tensors(checkpoint["controller"]["model"], state_of(run.rig.model))  # type: ignore[arg-type]


def test_load_checkpoint_without_a_file_raises(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no checkpoint at"):
        load_checkpoint(tmp_path / "missing.pt")
    (tmp_path / "directory.pt").mkdir()
    with pytest.raises(FileNotFoundError, match="no checkpoint at"):
        load_checkpoint(tmp_path / "directory.pt")


def test_load_checkpoint_refuses_something_else(tmp_path: Path) -> None:
    path = tmp_path / "list.pt"
    torch.save([1, 2, 3], path)
    with pytest.raises(ValueError, match="is not an Esper checkpoint"):
        load_checkpoint(path)


def test_restore_refuses_another_version() -> None:
    run = session(1)
    checkpoint = run.trainer.checkpoint()
    checkpoint["version"] = 99
    with pytest.raises(ValueError, match="not a version-2 trainer checkpoint"):
        run.trainer.restore(checkpoint)


def test_restore_sets_the_generators_and_the_epochs_done(tmp_path: Path) -> None:
    run = session(1, checkpoint_path=tmp_path / "c.pt")
    run.trainer.fit()
    saved = load_checkpoint(tmp_path / "c.pt")
    torch.manual_seed(12345)
    other = session(3, model_seed=9)
    other.trainer.restore(saved)
    assert other.trainer.epochs_done == 1
    assert other.trainer.train_seconds == saved["train_seconds"] == run.trainer.train_seconds
    assert torch.equal(torch.get_rng_state(), saved["cpu_rng"])
    assert other.rig.controller.step == 4


# Resume ---------------------------------------------------------------------------------------

EPOCHS = 9
INTERRUPTED_AT = 6


def test_resume_from_an_epoch_checkpoint_continues_identically(tmp_path: Path) -> None:
    path = tmp_path / "checkpoint.pt"
    whole = session(EPOCHS)
    whole.trainer.fit()

    first = session(INTERRUPTED_AT, checkpoint_path=path)
    first.trainer.fit()
    # Before the interruption a seed germinated and fossilized.
    grown = [m.target for m in first.rig.controller.lifecycle]
    assert SeedStage.GERMINATED in grown
    assert SeedStage.FOSSILIZED in grown
    assert SeedStage.FOSSILIZED.value in stages(first.rig.model).values()

    # A fresh process: another model initialisation, optimizer, controller and trainer.
    second = session(EPOCHS, checkpoint_path=path, model_seed=7)
    second.trainer.restore(load_checkpoint(path))
    assert stages(second.rig.model) == stages(first.rig.model)
    assert [s.state.kernel_id for s in second.rig.model.seed_slots()] == [
        s.state.kernel_id for s in first.rig.model.seed_slots()
    ]
    assert same_tensors(state_of(second.rig.model), state_of(first.rig.model))
    assert second.rig.controller.lifecycle == first.rig.controller.lifecycle
    second.trainer.fit()

    a, b = whole.rig, second.rig
    assert same_tensors(state_of(b.model), state_of(a.model))
    assert all(
        torch.equal(x, y)
        for x, y in zip(optimizer_tensors(b.optimizer), optimizer_tensors(a.optimizer), strict=True)
    )
    assert stages(b.model) == stages(a.model)
    assert [s.state for s in b.model.seed_slots()] == [s.state for s in a.model.seed_slots()]
    assert transitions(b.controller) == transitions(a.controller)
    assert b.controller.decisions == a.controller.decisions
    assert b.controller.curve == a.controller.curve
    assert b.controller.contributions == a.controller.contributions
    assert b.controller.step == a.controller.step == EPOCHS * 4
    # The FLOP count goes on from the checkpoint's: a resumed run costs what the whole did.
    assert second.trainer.flops.total == whole.trainer.flops.total > 0
    assert second.policy.snapshots == whole.policy.snapshots[INTERRUPTED_AT:]


def test_resume_between_decision_boundaries_continues_identically(tmp_path: Path) -> None:
    # Five steps an epoch and a boundary every four: the checkpoint at step 30 is mid-window.
    path = tmp_path / "checkpoint.pt"
    whole = session(EPOCHS, train_size=80)
    whole.trainer.fit()
    session(INTERRUPTED_AT, train_size=80, checkpoint_path=path).trainer.fit()
    second = session(EPOCHS, train_size=80, model_seed=7)
    second.trainer.restore(load_checkpoint(path))
    second.trainer.fit()
    assert second.rig.controller.curve == whole.rig.controller.curve
    assert second.policy.snapshots == whole.policy.snapshots[-len(second.policy.snapshots) :]
