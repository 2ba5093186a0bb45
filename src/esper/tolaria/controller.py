"""The morphogenetic controller: what a training loop calls so that its model can grow.

A loop calls :meth:`MorphogeneticController.after_step` after each optimizer step (Tolaria's
trainer does; so can anyone's own loop). The controller then, without any host sync:

- applies germinations whose kernels are ready, at this step boundary;
- moves seeds through their lifecycle on the schedule (TRAINING for ``seed_training_steps``,
  BLENDING with the alpha ramp over ``blending_steps``, PROBATION for ``probation_steps``);
- switches per-slot telemetry on for every ``telemetry_every``-th step.

Every ``decision_interval_steps`` it holds a decision boundary: the governor judges the loss
window (rolling back to the last good state on a non-finite loss or a spike, and culling the seed
likely to blame), the validation split is evaluated, seeds at the end of probation get their
counterfactual verdict (fossilize or cull), telemetry is read in one transfer, Tamiyo decides,
and the state is snapshotted as the new last good state.
"""

import copy
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Protocol, TypedDict

import torch
from torch.optim import Optimizer

from esper.contracts._base import Contract
from esper.contracts.decisions import AdaptationDecision, DecisionAction
from esper.contracts.report import CurvePoint, LifecycleMark, Rollback
from esper.contracts.run import BudgetSpec, PolicySpec, ScheduleSpec
from esper.contracts.seed import LIVE_STAGES, SeedStage
from esper.contracts.telemetry import SlotTelemetry, TelemetrySnapshot
from esper.kasmina.loader import LoadedKernel
from esper.kasmina.schedules import alpha_at
from esper.kasmina.slot import SeedSlot, StageChange
from esper.kasmina.telemetry import reading_from
from esper.kasmina.wrap import MorphogeneticModel
from esper.tamiyo.policy import KernelCandidate, Observation, Policy
from esper.tolaria.governor import LossMonitor, LossWindow
from esper.tolaria.optim import add_seed_group, remove_seed_group, seed_group_slots

CHECKPOINT_VERSION = 2


@dataclass(frozen=True)
class Evaluation:
    """A model's loss and accuracy on a split.

    Attributes:
        loss: Mean loss.
        accuracy: Accuracy in ``[0, 1]``.
    """

    loss: float
    accuracy: float


class CandidateSource(Protocol):
    """Which kernels are ready to grow (the run's :class:`~esper.tolaria.catalog.KernelCatalog`)."""

    def candidates(self) -> dict[str, list[KernelCandidate]]:
        """Return loaded kernels per slot id (never blocks)."""
        ...

    def loaded(self, kernel_id: str) -> LoadedKernel | None:
        """Return a kernel if loaded (never blocks)."""
        ...


@dataclass(frozen=True)
class ControllerOptions:
    """How the controller runs.

    Attributes:
        run_id: The run.
        schedule: Lifecycle timing and the governor's spike factor.
        policy: Decision interval and the probation threshold.
        budget: Growth budget.
        total_steps: Planned training steps (for the progress Tamiyo sees).
        telemetry_every: Collect telemetry on every n-th step; when the decision interval is
            shorter than that, on a quarter of the interval instead.
        max_consecutive_rollbacks: Rollbacks in a row before training is declared diverged.
    """

    run_id: str
    schedule: ScheduleSpec
    policy: PolicySpec
    budget: BudgetSpec
    total_steps: int
    telemetry_every: int = 25
    max_consecutive_rollbacks: int = 3


def seed_key(slot_id: str, germinated_step: int) -> str:
    """Return the key of one seed's life: its slot and germination step.

    Args:
        slot_id: The slot.
        germinated_step: When the seed germinated.

    Returns:
        ``slot@step``.
    """
    return f"{slot_id}@{germinated_step}"


class ControllerCheckpoint(TypedDict):
    """A controller checkpoint: plain data and tensors (``torch.load(weights_only=True)`` safe)."""

    version: int
    step: int
    epoch: int
    model: dict[str, object]
    optimizer: dict[str, object]
    seed_groups: list[str]
    policy: dict[str, float | int] | None
    pending: list[dict[str, object]]
    excluded: list[list[str]]
    previous_mean: float | None
    loss_window: LossWindow
    telemetry: list[torch.Tensor]
    collecting: bool
    history: dict[str, object]


class TrainingDivergedError(RuntimeError):
    """Raised when rolling back does not stop the loss from diverging."""


Listener = Callable[[LifecycleMark], None]
DecisionListener = Callable[[AdaptationDecision], None]


class MorphogeneticController:
    """Grows a wrapped model during training (see the module docstring).

    Args:
        model: The wrapped model.
        optimizer: Its optimizer (seed groups are added and removed here).
        options: Timing and budget.
        evaluate: Evaluates the model on the validation split (mode switching included).
        policy: Tamiyo's policy; None never grows (lifecycles still run).
        kernels: Ready kernels; None never grows.
        listener: Called with every stage change.
        decision_listener: Called with every decision of the policy, as it is applied.
    """

    def __init__(
        self,
        model: MorphogeneticModel,
        optimizer: Optimizer,
        options: ControllerOptions,
        evaluate: Callable[[], Evaluation],
        *,
        policy: Policy | None = None,
        kernels: CandidateSource | None = None,
        listener: Listener | None = None,
        decision_listener: DecisionListener | None = None,
    ) -> None:
        """Create the controller at step 0."""
        self.model = model
        self.optimizer = optimizer
        self.options = options
        self._evaluate = evaluate
        self._policy = policy
        self._kernels = kernels
        self._listener = listener
        self._decision_listener = decision_listener
        device = model.seed_slots()[0].alpha.device
        self._monitor = LossMonitor(device, options.schedule.loss_spike_factor)
        self.step = 0
        self.epoch = 0
        self.lifecycle: list[LifecycleMark] = []
        self.decisions: list[AdaptationDecision] = []
        self.rollbacks: list[Rollback] = []
        self.curve: list[CurvePoint] = []
        self.contributions: dict[str, float] = {}
        self.seed_params: dict[str, int] = {}
        self._pending: dict[str, AdaptationDecision] = {}
        self._excluded: set[tuple[str, str]] = set()
        self._consecutive_rollbacks = 0
        self._last_good: ControllerCheckpoint | None = None
        self._last_train_loss = 0.0
        self._collecting = False
        interval = options.policy.decision_interval_steps
        every = options.telemetry_every
        # A window shorter than the sampling period would see no sample: sample it four times.
        self._telemetry_every = every if every <= interval else max(1, interval // 4)

    # The per-step path ------------------------------------------------------------------------

    def boundary_due(self) -> bool:
        """Return whether the next :meth:`after_step` holds a decision boundary."""
        return (self.step + 1) % self.options.policy.decision_interval_steps == 0

    def after_step(self, loss: torch.Tensor) -> None:
        """Account for one finished optimizer step.

        Args:
            loss: The step's loss (stays on the device).
        """
        boundary = self.boundary_due()
        self.step += 1
        self._monitor.record(loss)
        for slot in self.model.seed_slots():
            if slot.stage in LIVE_STAGES:
                self._advance_on_schedule(slot)
        if self._pending:
            self._apply_pending()
        if boundary:
            self.boundary()
        collect = (self.step + 1) % self._telemetry_every == 0
        if collect != self._collecting:
            self._collecting = collect
            for slot in self.model.seed_slots():
                slot.collecting = collect

    def _advance_on_schedule(self, slot: SeedSlot) -> None:
        schedule = self.options.schedule
        in_stage = self.step - slot.state.stage_entered_step
        stage = slot.stage
        if stage is SeedStage.GERMINATED:
            self._record(slot.advance(self.step), "schedule: germinated seeds train next step")
        elif stage is SeedStage.TRAINING and in_stage >= schedule.seed_training_steps:
            self._record(
                slot.advance(self.step),
                f"schedule: {schedule.seed_training_steps} steps of isolated training done",
            )
        elif stage is SeedStage.BLENDING:
            progress = in_stage / schedule.blending_steps
            if progress >= 1.0:
                self._record(
                    slot.advance(self.step),
                    f"schedule: {schedule.blending_steps} blending steps done",
                )
            else:
                slot.set_alpha(alpha_at(schedule.alpha_schedule, progress))

    def _apply_pending(self) -> None:
        for slot_id, decision in list(self._pending.items()):
            kernel = None if self._kernels is None else self._kernels.loaded(decision.kernel_id)
            if kernel is not None:
                del self._pending[slot_id]
                self._germinate(decision, kernel)

    # Decision boundaries ----------------------------------------------------------------------

    def boundary(self) -> None:
        """Hold a decision boundary now (called by :meth:`after_step` on the interval)."""
        train_loss, problem = self._monitor.judge()
        if problem is not None:
            self._rollback(problem)
            return
        self._consecutive_rollbacks = 0
        self._last_train_loss = train_loss
        with self._telemetry_paused():
            evaluation = self._evaluate()
            self._probation_verdicts(evaluation)
        snapshot = self._snapshot(train_loss, evaluation)
        # One germination at a time: while one waits for its kernel, the policy is not asked.
        if self._policy is not None and self._kernels is not None and not self._pending:
            observation = Observation(
                snapshot=snapshot,
                graph=self.model.graph(),
                candidates=self._kernels.candidates(),
                max_seeds=self.options.budget.max_seeds,
                excluded=frozenset(self._excluded),
            )
            for decision in self._policy.decide(observation):
                self._apply_decision(decision)
        self.curve.append(
            CurvePoint(
                step=self.step,
                epoch=self.epoch,
                train_loss=max(0.0, train_loss),
                val_loss=evaluation.loss,
                val_accuracy=evaluation.accuracy,
                params=self.model.param_count(),
            )
        )
        self._last_good = self.checkpoint(clone=True)

    def validation(self) -> Evaluation:
        """Return the model's validation loss and accuracy now.

        The evaluation of a boundary held at this very step is reused; otherwise the split is
        evaluated, with telemetry kept out of it (an evaluation is not a training step).

        Returns:
            Loss and accuracy.
        """
        if self.curve and self.curve[-1].step == self.step:
            point = self.curve[-1]
            return Evaluation(loss=point.val_loss, accuracy=point.val_accuracy)
        with self._telemetry_paused():
            return self._evaluate()

    @contextmanager
    def _telemetry_paused(self) -> Iterator[None]:
        # Validation and counterfactual passes are not training steps: keep them out of the
        # window's telemetry.
        slots = self.model.seed_slots()
        for slot in slots:
            slot.collecting = False
        try:
            yield
        finally:
            for slot in slots:
                slot.collecting = self._collecting

    def _probation_verdicts(self, evaluation: Evaluation) -> None:
        for slot in self.model.seed_slots():
            in_stage = self.step - slot.state.stage_entered_step
            if slot.stage is not SeedStage.PROBATION:
                continue
            if in_stage < self.options.schedule.probation_steps:
                continue
            with self.model.without_seed(slot.slot_id):
                without = self._evaluate()
            contribution = without.loss - evaluation.loss
            slot.record_contribution(contribution)
            germinated = slot.state.germinated_step or 0
            self.contributions[seed_key(slot.slot_id, germinated)] = contribution
            threshold = self.options.policy.min_contribution
            verdict = (
                f"probation: validation loss {evaluation.loss:.4f} with the seed, "
                f"{without.loss:.4f} without (contribution {contribution:+.4f}, "
                f"threshold {threshold:+.4f})"
            )
            if contribution > threshold:
                self._record(slot.fossilize(self.step), verdict)
            else:
                self._cull(slot, verdict)

    def _snapshot(self, train_loss: float, evaluation: Evaluation) -> TelemetrySnapshot:
        slots = self.model.seed_slots()
        raw = torch.stack([slot.statistics.raw() for slot in slots]).cpu().tolist()
        entries = []
        for slot, sums in zip(slots, raw, strict=True):
            reading = reading_from(sums)
            slot.statistics.reset()
            host_module = self.model.host.get_submodule(slot.descriptor.module_path)
            entries.append(
                SlotTelemetry(
                    slot_id=slot.slot_id,
                    activation_mean=reading.activation_mean,
                    activation_std=reading.activation_std,
                    gradient_norm=reading.gradient_norm,
                    dead_fraction=reading.dead_fraction,
                    param_count=sum(p.numel() for p in host_module.parameters()),
                    seed_param_count=slot.seed_param_count(),
                    stage=slot.stage,
                    alpha=slot.state.alpha,
                    contribution=slot.state.contribution,
                    steps_since_change=self.step - slot.state.stage_entered_step,
                )
            )
        return TelemetrySnapshot(
            run_id=self.options.run_id,
            step=self.step,
            epoch=self.epoch,
            train_loss=max(0.0, train_loss),
            val_loss=evaluation.loss,
            val_accuracy=evaluation.accuracy,
            loss_trend=self._loss_trend(evaluation.loss),
            training_progress=min(1.0, self.step / max(1, self.options.total_steps)),
            budget_left_params=self.budget_left(),
            slots=entries,
        )

    def _loss_trend(self, val_loss: float) -> float:
        if not self.curve or self.curve[-1].val_loss == 0:
            return 0.0
        return (val_loss - self.curve[-1].val_loss) / self.curve[-1].val_loss

    def budget_left(self) -> int:
        """Return the parameters seeds may still add under the run's budget."""
        used = sum(slot.seed_param_count() for slot in self.model.seed_slots())
        return max(0, self.options.budget.max_added_params - used)

    # Applying decisions -----------------------------------------------------------------------

    def _apply_decision(self, decision: AdaptationDecision) -> None:
        self.decisions.append(decision)
        if self._decision_listener is not None:
            self._decision_listener(decision)
        slot = self.model.slot(decision.slot_id)
        if decision.action is DecisionAction.CULL:
            self._cull(slot, f"decision {decision.decision_id}: {decision.reason}")
        elif decision.action is DecisionAction.FOSSILIZE:
            self._record(
                slot.fossilize(self.step), f"decision {decision.decision_id}: {decision.reason}"
            )
        else:
            kernel = None if self._kernels is None else self._kernels.loaded(decision.kernel_id)
            if kernel is None:
                self._pending[decision.slot_id] = decision
            else:
                self._germinate(decision, kernel)

    def _germinate(self, decision: AdaptationDecision, kernel: LoadedKernel) -> None:
        slot = self.model.slot(decision.slot_id)
        change = slot.germinate(
            kernel.fresh_module(),
            kernel_id=kernel.kernel_id,
            ir=kernel.ir,
            bindings=kernel.bindings,
            blueprint_name=kernel.blueprint_name,
            step=self.step,
        )
        add_seed_group(self.optimizer, slot.slot_id, slot.seed_parameters())
        self.seed_params[seed_key(slot.slot_id, self.step)] = slot.seed_param_count()
        self._record(change, f"decision {decision.decision_id}: {decision.reason}")

    def _cull(self, slot: SeedSlot, reason: str) -> None:
        kernel_id = slot.state.kernel_id
        if kernel_id is not None:
            self._excluded.add((slot.slot_id, kernel_id))
        blueprint_name = slot.blueprint_name
        if slot.slot_id in seed_group_slots(self.optimizer):
            remove_seed_group(self.optimizer, slot.slot_id)
        culled, dormant, _removed = slot.cull(self.step)
        self._record(culled, reason, blueprint_name)
        self._record(dormant, "culled slots are emptied", blueprint_name)

    def _record(self, change: StageChange, reason: str, blueprint_name: str | None = None) -> None:
        name = blueprint_name or self.model.slot(change.slot_id).blueprint_name
        mark = LifecycleMark(
            step=change.step,
            slot_id=change.slot_id,
            source=change.source,
            target=change.target,
            kernel_id=change.kernel_id,
            blueprint_name=name,
            reason=reason[:256],
        )
        self.lifecycle.append(mark)
        if self._listener is not None:
            self._listener(mark)

    # The governor -----------------------------------------------------------------------------

    def _rollback(self, problem: str) -> None:
        self._consecutive_rollbacks += 1
        if self._last_good is None:
            raise TrainingDivergedError(
                f"step {self.step}: {problem}, before any good state was recorded"
            )
        if self._consecutive_rollbacks > self.options.max_consecutive_rollbacks:
            raise TrainingDivergedError(
                f"step {self.step}: {problem}, after {self.options.max_consecutive_rollbacks} "
                "rollbacks in a row"
            )
        live = [slot for slot in self.model.seed_slots() if slot.stage in LIVE_STAGES]
        offender = max(live, key=lambda s: s.state.stage_entered_step) if live else None
        before = None if offender is None else (offender.stage, offender.blueprint_name)
        offender_kernel = offender.state.kernel_id if offender is not None else None
        restored_step = self._last_good["step"]
        self.restore(self._last_good, keep_history=True)
        for slot in self.model.seed_slots():
            # The diverged window's statistics (possibly NaN) must not reach the next snapshot.
            slot.statistics.reset()
        culled = None
        if offender is not None and offender_kernel is not None and before is not None:
            self._excluded.add((offender.slot_id, offender_kernel))
            # The restored state may still hold the germination that grew the offender.
            self._pending = {
                slot_id: decision
                for slot_id, decision in self._pending.items()
                if (slot_id, decision.kernel_id) not in self._excluded
            }
            culled = offender.slot_id
            reason = f"governor: {problem}"
            if offender.stage in LIVE_STAGES and offender.state.kernel_id == offender_kernel:
                self._cull(offender, reason)
            elif offender.stage is SeedStage.DORMANT:
                # Restoring the older state already removed the seed: record its cull so the
                # lifecycle history stays complete.
                stage, name = before
                for source, target in (
                    (stage, SeedStage.CULLED),
                    (SeedStage.CULLED, SeedStage.DORMANT),
                ):
                    change = StageChange(
                        offender.slot_id, source, target, self.step, offender_kernel
                    )
                    self._record(change, reason, name)
        self.rollbacks.append(
            Rollback(
                step=self.step,
                restored_step=restored_step,
                reason=problem[:256],
                culled_slot=culled,
            )
        )

    # Checkpoints ------------------------------------------------------------------------------

    def checkpoint(self, clone: bool = False) -> ControllerCheckpoint:
        """Return the model, optimizer and controller state (plain data and tensors).

        Args:
            clone: Copy every tensor (an in-memory snapshot that later steps cannot change).

        Returns:
            The checkpoint; :meth:`restore` reads it back. ``torch.save`` can write it and
            ``torch.load(weights_only=True)`` read it.
        """
        model_state: dict[str, object] = dict(self.model.state_dict())
        optimizer_state: dict[str, object] = dict(self.optimizer.state_dict())
        if clone:
            # deepcopy clones tensors too, so later in-place steps cannot reach the snapshot.
            model_state = copy.deepcopy(model_state)
            optimizer_state = copy.deepcopy(optimizer_state)
        return {
            "version": CHECKPOINT_VERSION,
            "step": self.step,
            "epoch": self.epoch,
            "model": model_state,
            "optimizer": optimizer_state,
            "seed_groups": seed_group_slots(self.optimizer),
            "policy": None if self._policy is None else dict(self._policy.state_dict()),
            "pending": [d.model_dump(mode="json", by_alias=True) for d in self._pending.values()],
            "excluded": sorted([list(pair) for pair in self._excluded]),
            "previous_mean": self._monitor.previous_mean,
            "loss_window": self._monitor.window(),
            "telemetry": [slot.statistics.raw() for slot in self.model.seed_slots()],
            "collecting": self._collecting,
            "history": {
                "lifecycle": [m.model_dump(mode="json", by_alias=True) for m in self.lifecycle],
                "decisions": [d.model_dump(mode="json", by_alias=True) for d in self.decisions],
                "rollbacks": [r.model_dump(mode="json", by_alias=True) for r in self.rollbacks],
                "curve": [p.model_dump(mode="json", by_alias=True) for p in self.curve],
                "contributions": dict(self.contributions),
                "seedParams": dict(self.seed_params),
            },
        }

    def restore(self, state: ControllerCheckpoint, keep_history: bool = False) -> None:
        """Restore a checkpoint: the grown morphology, optimizer groups and state, lifecycle.

        Args:
            state: What :meth:`checkpoint` returned.
            keep_history: Keep this controller's step count and history (a rollback) instead of
                the checkpoint's (a resume).

        Raises:
            ValueError: When the checkpoint is not of this version.
        """
        if state.get("version") != CHECKPOINT_VERSION:
            raise ValueError(f"not a version-{CHECKPOINT_VERSION} controller checkpoint")
        self.model.load_state_dict(state["model"])
        for slot_id in seed_group_slots(self.optimizer):
            remove_seed_group(self.optimizer, slot_id)
        for slot_id in state["seed_groups"]:
            add_seed_group(self.optimizer, slot_id, self.model.slot(slot_id).seed_parameters())
        # Optimizer.load_state_dict keeps the given state tensors (no copy when device and dtype
        # match): a copy keeps later steps from changing the snapshot (the last good state).
        self.optimizer.load_state_dict(copy.deepcopy(state["optimizer"]))
        if self._policy is not None and state["policy"] is not None:
            self._policy.load_state_dict(state["policy"])
        pending = [AdaptationDecision.model_validate(item) for item in state["pending"]]
        self._pending = {decision.slot_id: decision for decision in pending}
        self._excluded = {(str(pair[0]), str(pair[1])) for pair in state["excluded"]}
        self._monitor.previous_mean = state["previous_mean"]
        self._monitor.load_window(state["loss_window"])
        slots = self.model.seed_slots()
        for slot, sums in zip(slots, state["telemetry"], strict=True):
            slot.statistics.sums.copy_(sums)
        self._collecting = state["collecting"]
        for slot in slots:
            slot.collecting = self._collecting
        if keep_history:
            return
        self.step = state["step"]
        self.epoch = state["epoch"]
        history = _History.model_validate(state["history"])
        self.lifecycle = history.lifecycle
        self.decisions = history.decisions
        self.rollbacks = history.rollbacks
        self.curve = history.curve
        self.contributions = history.contributions
        self.seed_params = history.seed_params


class _History(Contract):
    """The controller's history as stored in a checkpoint (validated on restore)."""

    lifecycle: list[LifecycleMark]
    decisions: list[AdaptationDecision]
    rollbacks: list[Rollback]
    curve: list[CurvePoint]
    contributions: dict[str, float]
    seed_params: dict[str, int]
