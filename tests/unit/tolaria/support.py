"""Shared pieces of the Tolaria tests: data, a wrapped MLP, kernels built from blueprints, fakes.

Everything is real torch on the CPU. Kernels are :class:`LoadedKernel` values built directly
from a built-in blueprint (no bundle, no Urza), and the candidate source and the scripted policy
stand in for the catalog and Tamiyo where a test needs exact control over what grows and when.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

import torch
from torch import Tensor, nn
from torch.nn import functional

from esper.blueprints.builder import build_module
from esper.blueprints.library import builtin
from esper.contracts.decisions import AdaptationDecision, DecisionAction
from esper.contracts.kernel import (
    BenchmarkReport,
    KernelArtifact,
    KernelPhase,
    KernelTarget,
    LatencyMeasurement,
    kernel_id,
)
from esper.contracts.run import AlphaSchedule, BudgetSpec, PolicySpec, ScheduleSpec
from esper.kasmina.loader import LoadedKernel
from esper.kasmina.wrap import MorphogeneticModel, wrap
from esper.tamiyo.policy import KernelCandidate, Observation, decision_id
from esper.tolaria.controller import ControllerOptions, Evaluation, MorphogeneticController
from esper.tolaria.optim import build_optimizer
from esper.tolaria.trainer import Split, evaluate

FEATURES = 8
CLASSES = 4
WIDTH = 16
BATCH = 16
BLUEPRINT = "bottleneck-mlp"
SLOTS = ("0", "2", "4")
"""Slot ids of the wrapped MLP: one after each Linear (targets by class)."""
SLOT_WIDTH = {"0": WIDTH, "2": WIDTH, "4": CLASSES}
MEASURED_AT = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)
CPU = torch.device("cpu")


# Data and host --------------------------------------------------------------------------------


def make_split(size: int, seed: int) -> Split:
    """A synthetic, learnable classification split: labels from a fixed random teacher."""
    generator = torch.Generator().manual_seed(seed)
    teacher = torch.randn(FEATURES, CLASSES, generator=torch.Generator().manual_seed(1234))
    features = torch.randn(size, FEATURES, generator=generator)
    labels = (features @ teacher).argmax(dim=1)
    return Split(features, labels)


def make_host(seed: int = 0) -> nn.Sequential:
    """Linear(8,16) ReLU Linear(16,16) ReLU Linear(16,4), initialised from ``seed``."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Linear(FEATURES, WIDTH),
        nn.ReLU(),
        nn.Linear(WIDTH, WIDTH),
        nn.ReLU(),
        nn.Linear(WIDTH, CLASSES),
    )


def make_model(seed: int = 0) -> MorphogeneticModel:
    """The MLP wrapped with a slot after every Linear."""
    return wrap(make_host(seed), targets=[nn.Linear])


# Kernels --------------------------------------------------------------------------------------


def target(width: int) -> KernelTarget:
    return KernelTarget(device="cpu", bindings={"C": width}, batch_sizes=[1, 32])


def loaded_kernel(width: int, blueprint: str = BLUEPRINT) -> LoadedKernel:
    """A kernel of a built-in blueprint for a slot of ``width`` features, built in-process."""
    ir = builtin(blueprint)
    bindings = {"C": width}
    return LoadedKernel(
        kernel_id=kernel_id(ir.canonical_hash(), target(width)),
        blueprint_name=blueprint,
        ir=ir,
        bindings=bindings,
        module=build_module(ir, bindings),
        exported=None,
        compile_cache_loaded=False,
        load_seconds=0.0,
    )


def validated_artifact(kernel: LoadedKernel, p50_ms: float = 0.5) -> KernelArtifact:
    """The Validated record of a kernel (its id agrees with its blueprint and target)."""
    width = kernel.bindings["C"]
    report = BenchmarkReport(
        kernel_id=kernel.kernel_id,
        device_name="cpu",
        torch_version="2.13.0",
        max_abs_error=0.0,
        tolerance=1e-4,
        gradients_finite=True,
        gradient_max_abs_error=0.0,
        function_preserving=True,
        latency=[
            LatencyMeasurement(batch_size=1, p50_ms=p50_ms / 2, p95_ms=p50_ms),
            LatencyMeasurement(batch_size=32, p50_ms=p50_ms, p95_ms=2 * p50_ms),
        ],
        peak_memory_bytes=1024,
        params=kernel.param_count(),
        flops_per_sample=2 * kernel.param_count(),
        verdict="Validated",
        measured_at=MEASURED_AT,
    )
    return KernelArtifact(
        id=kernel.kernel_id,
        blueprint_hash=kernel.ir.canonical_hash(),
        target=target(width),
        phase=KernelPhase.VALIDATED,
        artifact_uri=f"file:///kernels/{kernel.kernel_id}.tar",
        sha256="ab" * 32,
        size_bytes=4096,
        benchmark=report,
    )


class FakeKernels:
    """A CandidateSource: one kernel per slot; ``ready`` says which are loaded."""

    def __init__(self, slots: Mapping[str, int] = SLOT_WIDTH, *, ready: bool = True) -> None:
        by_width = {width: loaded_kernel(width) for width in sorted(set(slots.values()))}
        self.kernels = {kernel.kernel_id: kernel for kernel in by_width.values()}
        self.by_slot = {slot_id: by_width[width].kernel_id for slot_id, width in slots.items()}
        self.ready: set[str] = set(self.kernels) if ready else set()
        self.loaded_calls: list[str] = []

    def kernel_for(self, slot_id: str) -> LoadedKernel:
        return self.kernels[self.by_slot[slot_id]]

    def candidates(self) -> dict[str, list[KernelCandidate]]:
        result: dict[str, list[KernelCandidate]] = {}
        for slot_id, identifier in self.by_slot.items():
            if identifier in self.ready:
                kernel = self.kernels[identifier]
                candidate = KernelCandidate(
                    kernel=validated_artifact(kernel),
                    blueprint_name=kernel.blueprint_name,
                    params=kernel.param_count(),
                )
                result[slot_id] = [candidate]
        return result

    def loaded(self, identifier: str) -> LoadedKernel | None:
        self.loaded_calls.append(identifier)
        return self.kernels[identifier] if identifier in self.ready else None


def germinate_decision(
    kernels: FakeKernels, slot_id: str, step: int, run_id: str = "run-1"
) -> AdaptationDecision:
    kernel = kernels.kernel_for(slot_id)
    return AdaptationDecision(
        decision_id=decision_id(run_id, step, slot_id, DecisionAction.GERMINATE.value),
        run_id=run_id,
        step=step,
        action=DecisionAction.GERMINATE,
        slot_id=slot_id,
        kernel_id=kernel.kernel_id,
        blueprint_hash=kernel.ir.canonical_hash(),
        reason=f"scripted germination in {slot_id}",
    )


@dataclass
class ScriptedPolicy:
    """A Policy that returns planned decisions at given steps and records what it saw."""

    plan: dict[int, list[AdaptationDecision]] = field(default_factory=dict)
    observations: list[Observation] = field(default_factory=list)
    loaded_state: list[dict[str, float | int]] = field(default_factory=list)

    def decide(self, observation: Observation) -> list[AdaptationDecision]:
        self.observations.append(observation)
        return list(self.plan.get(observation.snapshot.step, []))

    def state_dict(self) -> dict[str, float | int]:
        return {"seen": len(self.observations)}

    def load_state_dict(self, state: Mapping[str, float | int]) -> None:
        self.loaded_state.append(dict(state))


# Controller -----------------------------------------------------------------------------------


def schedule(**changes: object) -> ScheduleSpec:
    values: dict[str, object] = {
        "epochs": 1,
        "learning_rate": 0.05,
        "optimizer": "adam",
        "seed_training_steps": 2,
        "blending_steps": 4,
        "probation_steps": 2,
        "alpha_schedule": AlphaSchedule.COSINE,
        "loss_spike_factor": 4.0,
    }
    values.update(changes)
    return ScheduleSpec.model_validate(values)


def options(
    *,
    sched: ScheduleSpec | None = None,
    interval: int = 4,
    min_contribution: float = -1.0,
    max_added_params: int = 100_000,
    max_seeds: int = 4,
    total_steps: int = 100,
    telemetry_every: int = 2,
    max_consecutive_rollbacks: int = 3,
    plateau_patience: int = 1,
    plateau_threshold: float = 0.5,
) -> ControllerOptions:
    return ControllerOptions(
        run_id="run-1",
        schedule=sched or schedule(),
        policy=PolicySpec(
            decision_interval_steps=interval,
            min_contribution=min_contribution,
            plateau_patience=plateau_patience,
            plateau_threshold=plateau_threshold,
        ),
        budget=BudgetSpec(max_added_params=max_added_params, max_seeds=max_seeds),
        total_steps=total_steps,
        telemetry_every=telemetry_every,
        max_consecutive_rollbacks=max_consecutive_rollbacks,
    )


@dataclass
class Rig:
    """A wrapped model, its optimizer and controller, the data, and a step driver."""

    model: MorphogeneticModel
    controller: MorphogeneticController
    train: Split
    validation: Split
    policy: object | None = None
    kernels: FakeKernels | None = None
    evaluations: list[Evaluation] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    cursor: int = 0

    @property
    def optimizer(self) -> torch.optim.Optimizer:
        return self.controller.optimizer

    def step(self, count: int = 1, after: Callable[[int], None] | None = None) -> None:
        """Run ``count`` real optimizer steps, each followed by ``after_step``."""
        for _ in range(count):
            start = (self.cursor * BATCH) % len(self.train)
            self.cursor += 1
            features = self.train.features[start : start + BATCH]
            labels = self.train.labels[start : start + BATCH]
            self.optimizer.zero_grad(set_to_none=True)
            loss = functional.cross_entropy(self.model(features), labels)
            loss.backward()
            self.optimizer.step()
            self.losses.append(loss.item())
            self.controller.after_step(loss)
            if after is not None:
                after(self.controller.step)


def rig(
    opts: ControllerOptions | None = None,
    *,
    policy: object | None = None,
    kernels: FakeKernels | None = None,
    listener: Callable[..., None] | None = None,
    seed: int = 0,
) -> Rig:
    opts = opts or options()
    model = make_model(seed)
    optimizer = build_optimizer(model.host.parameters(), opts.schedule)
    train = make_split(128, seed=1)
    validation = make_split(64, seed=2)
    evaluations: list[Evaluation] = []

    def evaluate_validation() -> Evaluation:
        result = evaluate(model, validation, CPU)
        evaluations.append(result)
        return result

    controller = MorphogeneticController(
        model,
        optimizer,
        opts,
        evaluate_validation,
        policy=policy,  # type: ignore[arg-type]
        kernels=kernels,
        listener=listener,
    )
    return Rig(model, controller, train, validation, policy, kernels, evaluations)


def state_of(module: nn.Module) -> dict[str, object]:
    """A detached copy of a module's state dict (tensors cloned, extra states copied)."""
    return copy.deepcopy(dict(module.state_dict()))


def stages(model: MorphogeneticModel) -> dict[str, str]:
    return {slot.slot_id: slot.stage.value for slot in model.seed_slots()}


def transitions(controller: MorphogeneticController) -> list[tuple[int, str, str, str]]:
    return [
        (mark.step, mark.slot_id, mark.source.value, mark.target.value)
        for mark in controller.lifecycle
    ]


def same_tensors(left: Mapping[str, object], right: Mapping[str, object]) -> bool:
    """Whether two state dicts hold the same keys and bit-identical tensors (extras compared)."""
    if left.keys() != right.keys():
        return False
    for key, value in left.items():
        other = right[key]
        if isinstance(value, Tensor):
            if not (isinstance(other, Tensor) and torch.equal(value, other)):
                return False
        elif value != other:
            return False
    return True


def optimizer_tensors(optimizer: torch.optim.Optimizer) -> list[Tensor]:
    """Every tensor of the optimizer's state, in param-group order."""
    tensors = []
    for group in optimizer.param_groups:
        for parameter in group["params"]:
            for value in optimizer.state.get(parameter, {}).values():
                if isinstance(value, Tensor):
                    tensors.append(value.detach().clone())
    return tensors


def boundaries(policy: ScriptedPolicy) -> Sequence[int]:
    """The steps at which the policy was consulted."""
    return [observation.snapshot.step for observation in policy.observations]
