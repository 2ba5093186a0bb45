"""One ``esper run``: data, host, wrap, kernels, training with growth, the baseline, the report.

:func:`run_job` is given a reachable Urza (the embedded one started by ``esper run``, or the
cluster's) and does everything else; it never starts services itself.
"""

import copy
import platform
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeVar, cast

import torch
from torch import nn

from esper.contracts.blueprint import BlueprintIR
from esper.contracts.decisions import AdaptationDecision
from esper.contracts.kernel import DeviceKind
from esper.contracts.report import LifecycleMark, ModelResult, RunReport, SeedSummary
from esper.contracts.run import MorphogeneticRunSpec, PolicyKind
from esper.contracts.seed import SeedStage
from esper.data import DatasetSplits, load_dataset
from esper.kasmina.loader import KernelLoader
from esper.kasmina.wrap import MorphogeneticModel, wrap
from esper.tamiyo.checkpoints import packaged_checkpoint
from esper.tamiyo.heuristic import HeuristicPolicy
from esper.tamiyo.policy import Policy
from esper.tamiyo.random_policy import RandomPolicy
from esper.tolaria.catalog import KernelCatalog, register_kernels
from esper.tolaria.controller import ControllerOptions, MorphogeneticController, seed_key
from esper.tolaria.flops import inference_flops_per_sample
from esper.tolaria.optim import build_optimizer
from esper.tolaria.report import ReportFiles, write_report
from esper.tolaria.trainer import (
    EpochInfo,
    Split,
    StepInfo,
    Trainer,
    evaluate,
    load_checkpoint,
)
from esper.urza.client import UrzaClient
from esper.urza.kernel_source import UrzaKernelSource
from esper.zoo import build_host

CHECKPOINT_FILE = "checkpoint.pt"
BASELINE_CHECKPOINT_FILE = "baseline-checkpoint.pt"
SPEC_FILE = "spec.json"
KERNEL_WAIT_SECONDS = 900.0
INFERENCE_FLOPS_BATCH = 64


class UnsupportedPolicyError(ValueError):
    """Raised for a policy that cannot run (a missing or unreadable network)."""


@dataclass(frozen=True)
class JobHooks:
    """Callbacks for progress displays and announcements (all optional).

    They run on the training thread: each must return at once (a bus is reached through
    :class:`~esper.oona.BackgroundPublisher`, never directly).

    Attributes:
        phase: A new phase of the job starts (``preparing kernels``, ``training``...).
        kernels: Kernel statuses while waiting for them.
        step: Training progress, with each slot's stage.
        lifecycle: A seed changed stage.
        epoch: An epoch of the grown model ended (its checkpoint is written).
        decision: The controller took a decision (before applying it).
    """

    phase: Callable[[str], None] | None = None
    kernels: Callable[[Mapping[str, str]], None] | None = None
    step: Callable[[StepInfo, Mapping[str, SeedStage]], None] | None = None
    lifecycle: Callable[[LifecycleMark], None] | None = None
    epoch: Callable[[EpochInfo], None] | None = None
    decision: Callable[[AdaptationDecision], None] | None = None


_Hook = TypeVar("_Hook", bound=Callable[..., None])


def _both(first: _Hook | None, second: _Hook | None) -> _Hook | None:
    if first is None:
        return second
    if second is None:
        return first

    def call_both(*arguments: object) -> None:
        first(*arguments)
        second(*arguments)

    return cast(_Hook, call_both)


def merge_hooks(first: JobHooks, second: JobHooks) -> JobHooks:
    """Return hooks that call ``first``'s callbacks and then ``second``'s.

    Args:
        first: Called first (a display, say).
        second: Called second (an announcer, say).

    Returns:
        The merged hooks.
    """
    return JobHooks(
        phase=_both(first.phase, second.phase),
        kernels=_both(first.kernels, second.kernels),
        step=_both(first.step, second.step),
        lifecycle=_both(first.lifecycle, second.lifecycle),
        epoch=_both(first.epoch, second.epoch),
        decision=_both(first.decision, second.decision),
    )


def resolve_device(choice: str) -> torch.device:
    """Return the training device for a spec's ``device`` field.

    Args:
        choice: ``cpu``, ``cuda`` or ``auto``.

    Returns:
        The device.

    Raises:
        ValueError: When ``cuda`` is asked for and unavailable.
    """
    if choice == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was requested but CUDA is not available here")
    if choice == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(choice)


def policy_checkpoint(spec: MorphogeneticRunSpec) -> Path:
    """Return the network a ``gnn`` run uses: ``policy.checkpoint``, or the packaged one.

    Args:
        spec: The run.

    Returns:
        The checkpoint's path.
    """
    if spec.policy.checkpoint is None:
        return packaged_checkpoint()
    return Path(spec.policy.checkpoint)


def check_policy(spec: MorphogeneticRunSpec) -> None:
    """Refuse a policy that cannot run, before any work starts.

    Args:
        spec: The run.

    Raises:
        UnsupportedPolicyError: For ``gnn`` with a checkpoint that is missing or not a Tamiyo
            network.
    """
    if spec.policy.kind is not PolicyKind.GNN:
        return
    try:
        path = policy_checkpoint(spec)
    except FileNotFoundError as error:
        raise UnsupportedPolicyError(str(error)) from None
    if not path.is_file():
        raise UnsupportedPolicyError(f"policy.checkpoint {path} is not a file")
    # Loading imports torch_geometric (seconds), so only a gnn run pays for it; a bad file is
    # refused here rather than at the first decision boundary.
    from esper.tamiyo import gnn  # noqa: PLC0415

    try:
        gnn.load(path)
    except ValueError as error:
        raise UnsupportedPolicyError(f"policy.checkpoint: {error}") from None


def _policy(spec: MorphogeneticRunSpec, override: Policy | None) -> Policy | None:
    """Build the run's controller policy (None for ``policy: none``), unless one is given."""
    if override is not None:
        return override
    settings = spec.policy
    if settings.kind is PolicyKind.HEURISTIC:
        return HeuristicPolicy(settings.plateau_patience, settings.plateau_threshold)
    if settings.kind is PolicyKind.RANDOM:
        return RandomPolicy(settings.plateau_patience, settings.plateau_threshold, seed=spec.seed)
    if settings.kind is PolicyKind.GNN:
        from esper.tamiyo.gnn_policy import GnnPolicy  # noqa: PLC0415 - as in check_policy

        return GnnPolicy.from_checkpoint(policy_checkpoint(spec))
    return None


def _splits(data: DatasetSplits, device: torch.device) -> tuple[Split, Split, Split]:
    def to_split(dataset: torch.utils.data.TensorDataset) -> Split:
        features, labels = dataset.tensors
        return Split(features.to(device), labels.to(device))

    return to_split(data.train), to_split(data.validation), to_split(data.test)


@dataclass
class _Session:
    model: MorphogeneticModel
    controller: MorphogeneticController
    trainer: Trainer


def _session(
    spec: MorphogeneticRunSpec,
    run_id: str,
    model: MorphogeneticModel,
    splits: tuple[Split, Split, Split],
    device: torch.device,
    *,
    grow: bool,
    catalog: KernelCatalog | None,
    checkpoint_path: Path,
    hooks: JobHooks,
    policy: Policy | None = None,
) -> _Session:
    train, validation, _test = splits
    optimizer = build_optimizer(model.host.parameters(), spec.schedule)
    policy = _policy(spec, policy) if grow else None
    steps_per_epoch = -(-len(train) // spec.dataset.batch_size)
    controller = MorphogeneticController(
        model,
        optimizer,
        ControllerOptions(
            run_id=run_id,
            schedule=spec.schedule,
            policy=spec.policy,
            budget=spec.budget,
            total_steps=steps_per_epoch * spec.schedule.epochs,
        ),
        lambda: evaluate(model, validation, device),
        policy=policy,
        kernels=catalog if grow else None,
        listener=hooks.lifecycle if grow else None,
        decision_listener=hooks.decision if grow else None,
    )
    step_hook = hooks.step

    def on_step(info: StepInfo) -> None:
        if step_hook is not None:
            step_hook(info, {slot.slot_id: slot.stage for slot in model.seed_slots()})

    trainer = Trainer(
        controller,
        train,
        epochs=spec.schedule.epochs,
        batch_size=spec.dataset.batch_size,
        seed=spec.seed,
        device=device,
        checkpoint_path=checkpoint_path,
        on_step=on_step if grow else None,
        # A run that does not grow still reports its epochs.
        on_epoch=hooks.epoch,
    )
    return _Session(model, controller, trainer)


def _result(session: _Session, test: Split, device: torch.device) -> ModelResult:
    final = evaluate(session.model, test, device)
    sample = test.features[:INFERENCE_FLOPS_BATCH]
    return ModelResult(
        test_accuracy=final.accuracy,
        test_loss=final.loss,
        params=session.model.param_count(),
        train_seconds=session.trainer.train_seconds,
        steps=session.controller.step,
        curve=session.controller.curve,
        train_flops=session.trainer.flops.total,
        inference_flops=inference_flops_per_sample(session.model, sample, len(sample)),
    )


def _seed_summaries(session: _Session) -> list[SeedSummary]:
    controller = session.controller
    summaries: list[SeedSummary] = []
    opened: dict[str, LifecycleMark] = {}
    for mark in controller.lifecycle:
        if mark.target is SeedStage.GERMINATED:
            opened[mark.slot_id] = mark
        elif mark.target in (SeedStage.FOSSILIZED, SeedStage.CULLED) and mark.slot_id in opened:
            summaries.append(_summary(session, opened.pop(mark.slot_id), mark))
    summaries.extend(_summary(session, start, None) for start in opened.values())
    return sorted(summaries, key=lambda summary: (summary.germinated_step, summary.slot_id))


def _summary(session: _Session, start: LifecycleMark, end: LifecycleMark | None) -> SeedSummary:
    controller = session.controller
    key = seed_key(start.slot_id, start.step)
    return SeedSummary(
        slot_id=start.slot_id,
        kernel_id=start.kernel_id or "",
        blueprint_hash=_hash_of(session, start.kernel_id or ""),
        blueprint_name=start.blueprint_name or "",
        final_stage=end.target if end is not None else session.model.slot(start.slot_id).stage,
        germinated_step=start.step,
        ended_step=None if end is None else end.step,
        params=controller.seed_params[key],
        contribution=controller.contributions.get(key),
    )


def _hash_of(session: _Session, kernel_id: str) -> str:
    for decision in session.controller.decisions:
        if decision.kernel_id == kernel_id and decision.blueprint_hash is not None:
            return decision.blueprint_hash
    raise ValueError(f"no decision names kernel {kernel_id}")


def run_job(
    spec: MorphogeneticRunSpec,
    *,
    run_id: str,
    run_dir: Path,
    client: UrzaClient,
    blueprints: Sequence[BlueprintIR],
    cache_dir: Path,
    resume: bool = False,
    hooks: JobHooks | None = None,
    prepare: Callable[[Sequence[str]], None] | None = None,
    policy: Policy | None = None,
) -> tuple[RunReport, ReportFiles]:
    """Run a whole job and write its report.

    Args:
        spec: The run.
        run_id: Its id.
        run_dir: Where checkpoints and the report go.
        client: A reachable Urza.
        blueprints: The blueprints the run may grow.
        cache_dir: Where generated datasets are cached.
        resume: Continue from the run directory's checkpoints.
        hooks: Progress callbacks.
        prepare: Called with the ids of the run's kernels once they are registered, before
            they are polled (a forge that serves only this run starts compiling those
            missing).
        policy: The policy to grow with instead of the one ``spec.policy.kind`` names (Simic's
            rollouts, which record every action); ``spec.policy`` still sets the timing, and
            ``kind: none`` still never grows.

    Returns:
        The report and where it was written.
    """
    hooks = hooks or JobHooks()
    check_policy(spec)
    started_at = datetime.now(UTC)
    device = resolve_device(spec.device)
    run_dir.mkdir(parents=True, exist_ok=True)
    _note(hooks, f"loading {spec.dataset.name.value}")
    data = load_dataset(spec.dataset, spec.seed, cache_dir)
    splits = _splits(data, device)
    torch.manual_seed(spec.seed)
    host = build_host(spec.host, data.input_shape, data.num_classes)
    baseline_host: nn.Module = copy.deepcopy(host)
    example = splits[0].features[:2].cpu()
    model = wrap(host, spec.injection, example_input=example).to(device)
    kind = DeviceKind.CUDA if device.type == "cuda" else DeviceKind.CPU
    capability = None
    if device.type == "cuda":
        major, minor = torch.cuda.get_device_capability(device)
        capability = f"{major}.{minor}"
    _note(hooks, "registering kernels")
    slots = [slot.descriptor for slot in model.seed_slots()]
    wanted = register_kernels(client, blueprints, slots, kind, capability)
    if prepare is not None:
        prepare([kernel.kernel_id for kernel in wanted])
    loader = KernelLoader(UrzaKernelSource(client), device=device)
    catalog = KernelCatalog(client, loader, wanted)
    catalog.start()
    try:
        if spec.wait_for_kernels and wanted:
            _note(hooks, "preparing kernels")
            catalog.wait_settled(KERNEL_WAIT_SECONDS, hooks.kernels)
        grown = _session(
            spec,
            run_id,
            model,
            splits,
            device,
            grow=spec.policy.kind is not PolicyKind.NONE,
            catalog=catalog,
            checkpoint_path=run_dir / CHECKPOINT_FILE,
            hooks=hooks,
            policy=policy,
        )
        if resume and (run_dir / CHECKPOINT_FILE).is_file():
            # No checkpoint yet: the run stopped before its first epoch ended; start over.
            grown.trainer.restore(load_checkpoint(run_dir / CHECKPOINT_FILE))
        _note(hooks, "training")
        grown.trainer.fit()
    finally:
        catalog.stop()
    grown_result = _result(grown, splits[2], device)
    baseline_result = None
    if spec.baseline:
        _note(hooks, "training the baseline (same host and seed, no growth)")
        baseline_result = _baseline(
            spec, run_id, baseline_host, splits, device=device, run_dir=run_dir, resume=resume
        )
    report = RunReport(
        run_id=run_id,
        spec=spec,
        started_at=started_at,
        finished_at=datetime.now(UTC),
        device=_device_label(device),
        torch_version=torch.__version__,
        grown=grown_result,
        baseline=baseline_result,
        lifecycle=grown.controller.lifecycle,
        decisions=grown.controller.decisions,
        seeds=_seed_summaries(grown),
        rollbacks=grown.controller.rollbacks,
    )
    return report, write_report(report, run_dir)


def _baseline(
    spec: MorphogeneticRunSpec,
    run_id: str,
    host: nn.Module,
    splits: tuple[Split, Split, Split],
    *,
    device: torch.device,
    run_dir: Path,
    resume: bool,
) -> ModelResult:
    # Same initial weights (a copy taken before growth) and the same data order; wrapped but
    # never grown, which is bit-identical to the plain host and evaluated on the same cadence.
    model = wrap(host, spec.injection, example_input=splits[0].features[:2].cpu()).to(device)
    checkpoint = run_dir / BASELINE_CHECKPOINT_FILE
    session = _session(
        spec,
        f"{run_id}-baseline"[:128],
        model,
        splits,
        device,
        grow=False,
        catalog=None,
        checkpoint_path=checkpoint,
        hooks=JobHooks(),
    )
    if resume and checkpoint.is_file():
        session.trainer.restore(load_checkpoint(checkpoint))
    session.trainer.fit()
    return _result(session, splits[2], device)


def _device_label(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.machine()}, {torch.get_num_threads()} threads)"


def _note(hooks: JobHooks, phase: str) -> None:
    if hooks.phase is not None:
        hooks.phase(phase)
