"""Dormant overhead: a host's training step against the same host wrapped by ``esper.wrap``.

Every slot stays dormant. Variants of one host, identical initial weights, each with its own
AdamW optimizer (except ``hooks_detached``), cycling through the same 8 synthetic batches:

- ``original``: the host itself;
- ``control``: an unwrapped copy of the host (original against control is the measurement's
  own noise floor: two identical models);
- ``hooks``: ``esper.wrap(copy)`` with a slot after every block (``blocks.?``), no controller;
- ``hooks_detached``: the very same instance and optimizer as ``hooks``, with its slot hooks
  taken off the host modules for its blocks (``hooks`` over ``hooks_detached`` is the cost of
  the hooks alone, free of any difference between instances). Eager mode only: dynamo does not
  guard on a module's hooks (``torch._dynamo.config.skip_nnmodule_hook_guards`` is on by
  default), so a graph compiled without them would afterwards also serve the hooked variants;
- ``controller``: another wrapped copy plus a ``MorphogeneticController`` whose ``after_step``
  runs after every optimizer step, as in Tolaria's trainer: the device-side loss watch,
  lifecycle checks, and per-slot telemetry switched on every 25th step (the controller's
  default; ``--telemetry-every``). The decision interval
  is 1,000,000 steps, so no decision boundary (validation, snapshot) falls inside the
  measurement; the telemetry steps do, exactly one per period (blocks are multiples of it);
- ``controller_no_telemetry``: the same with telemetry never switched on (separates the
  controller's per-step cost from the telemetry's).

A step is ``zero_grad``, forward, cross-entropy, backward and ``optimizer.step`` (plus
``after_step`` for the controller variants), with bf16 autocast on CUDA as the trainer does.
The variants run interleaved: each repetition runs one block of steps of every variant, in a
fresh random order, so drift of the machine affects all alike. Per variant, the recorded
figure is the median over repetitions of the block's time per step; the overhead is the median
over repetitions of the paired ratio (variant block / original block of the same repetition)
with a percentile-bootstrap 95% interval of that median. On CPU, denormal floats are flushed
(training on few synthetic batches drives gradients toward zero).

``dispatch_costs`` also measures, on eight tiny blocks where compute is negligible, the
host-side cost of one dormant slot per forward and per training step, and of one
``after_step`` call: the constant that the end-to-end ratios cannot resolve below about 1%.

With ``--modes compile`` every variant is ``torch.compile``d (inductor, default mode); the
dynamo counters (graphs, graph breaks, frames compiled) are recorded for each variant's
warm-up and for the timed steps, where nothing may compile any more.

Parameters are checked, not assumed: the wrapped model's parameters are the host's own (same
count, same storage pointers, no slot parameters), and its output before training equals the
original's bit for bit.

Rerun (on the device machine; see docs/benchmarks.md):
``python benchmarks/dormant_overhead.py --device cpu --threads 8 --seconds 30
--min-repetitions 10 --warmup-steps 20 --out benchmarks/results/dormant_overhead_cpu.json`` and
``python benchmarks/dormant_overhead.py --device cuda --modes compile --seconds 15 --out
benchmarks/results/dormant_overhead_h100_compile.json``.
"""

from __future__ import annotations

import argparse
import copy
import gc
import platform
import random
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from _common import RESULTS_DIR, environment, format_table, write_result

import esper
from esper.contracts.run import BudgetSpec, PolicyKind, PolicySpec, ScheduleSpec
from esper.kasmina.wrap import MorphogeneticModel, SlotHook
from esper.tolaria.controller import (
    ControllerOptions,
    Evaluation,
    MorphogeneticController,
)
from esper.zoo.models import mlp, transformer

WRAPPED = ("hooks", "controller", "controller_no_telemetry")
"""Variants with a wrapped model of their own."""
VARIANTS = ("original", "control", "hooks", "hooks_detached", *WRAPPED[1:])
BATCH_POOL = 8
"""Distinct synthetic batches each variant cycles through."""
TELEMETRY_EVERY = ControllerOptions.__dataclass_fields__["telemetry_every"].default
"""The controller variant's telemetry period: the controller's own default unless
``--telemetry-every`` says otherwise (blocks are multiples of it)."""
NO_TELEMETRY = 10**9
"""``telemetry_every`` of the controller variant without telemetry: never within a run."""
NUM_CLASSES = 10


# -- hosts --------------------------------------------------------------------------------------


class BasicBlock(nn.Module):
    """A ResNet basic block: two 3x3 convolutions with batch norm and an identity shortcut.

    Args:
        in_channels: Input channels.
        out_channels: Output channels.
        stride: Stride of the first convolution (2 halves the resolution).
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        """Create the layers."""
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )

    def forward(self, x: Tensor) -> Tensor:
        """Apply the block."""
        hidden = functional.relu(self.bn1(self.conv1(x)))
        return functional.relu(self.bn2(self.conv2(hidden)) + self.shortcut(x))


class SmallResNet(nn.Module):
    """A CIFAR-style ResNet: stem, three stages of two basic blocks (16/32/64 channels), head.

    The blocks sit in ``blocks`` (``blocks.0`` ... ``blocks.5``) like the zoo models, so
    ``blocks.?`` puts a slot after every block.
    """

    def __init__(self, widths: tuple[int, ...] = (16, 32, 64), per_stage: int = 2) -> None:
        """Create the layers."""
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, widths[0], 3, 1, 1, bias=False), nn.BatchNorm2d(widths[0]), nn.ReLU()
        )
        blocks: list[nn.Module] = []
        channels = widths[0]
        for stage, width in enumerate(widths):
            for index in range(per_stage):
                stride = 2 if stage > 0 and index == 0 else 1
                blocks.append(BasicBlock(channels, width, stride))
                channels = width
        self.blocks = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(channels, NUM_CLASSES)

    def forward(self, x: Tensor) -> Tensor:
        """Return the logits."""
        return self.head(self.pool(self.blocks(self.stem(x))).flatten(1))


HOSTS: dict[str, tuple[str, Callable[[], nn.Module], tuple[int, ...]]] = {
    "resnet": (
        "SmallResNet (in this script): stem + 6 basic blocks, 16/32/64 channels, 3x32x32 input",
        SmallResNet,
        (3, 32, 32),
    ),
    "mlp": (
        "esper.zoo mlp: input 784, hidden 512, depth 4, relu",
        lambda: mlp((784,), NUM_CLASSES, hidden=512, depth=4),
        (784,),
    ),
    "transformer": (
        "esper.zoo transformer: 3x32x32 image, patch 4 (64 tokens), dim 64, depth 4, 4 heads",
        lambda: transformer((3, 32, 32), NUM_CLASSES, dim=64, depth=4, heads=4, patch=4),
        (3, 32, 32),
    ),
}
TARGETS = ["blocks.?"]
"""Every host keeps its blocks in ``blocks``: a slot after each block."""


Batches = list[tuple[Tensor, Tensor]]


# -- one variant --------------------------------------------------------------------------------


class Variant:
    """A model, its optimizer and (for ``controller``) its controller, with a step function.

    Args:
        name: The variant's name.
        model: The model (wrapped or not).
        device: Where it trains.
        compile_model: Whether to ``torch.compile`` it.
        amp: Whether to use bf16 autocast (CUDA).
        telemetry_every: With a controller: collect telemetry every n-th step (None: no
            controller).
        share: Another variant whose model, optimizer and compiled runner this one uses.
        detach_hooks: Take the model's slot hooks off the host for this variant's steps (with
            ``share``: the same instance with and without its hooks).
    """

    def __init__(
        self,
        name: str,
        model: nn.Module,
        device: torch.device,
        *,
        compile_model: bool,
        amp: bool,
        telemetry_every: int | None,
        share: Variant | None = None,
        detach_hooks: bool = False,
    ) -> None:
        """Build the optimizer and controller."""
        self.name = name
        self.model = model
        self.detach_hooks = detach_hooks
        self.optimizer = (
            share.optimizer if share else torch.optim.AdamW(model.parameters(), lr=1e-3)
        )
        self.runner: Callable[..., Tensor] = (
            share.runner if share else torch.compile(model) if compile_model else model
        )
        self.device = device
        self.amp = amp
        self.controller: MorphogeneticController | None = None
        self.done = 0
        if telemetry_every is not None:
            assert isinstance(model, MorphogeneticModel)
            self.controller = MorphogeneticController(
                model,
                self.optimizer,
                ControllerOptions(
                    run_id="dormant-overhead",
                    schedule=ScheduleSpec(epochs=1, learning_rate=1e-3),
                    policy=PolicySpec(kind=PolicyKind.NONE, decision_interval_steps=1_000_000),
                    budget=BudgetSpec(max_added_params=0, max_seeds=0),
                    total_steps=1_000_000,
                    telemetry_every=telemetry_every,
                ),
                # Never called: no decision boundary falls inside the measurement.
                evaluate=lambda: Evaluation(loss=0.0, accuracy=0.0),
            )

    def steps(self, count: int, batches: Batches) -> None:
        """Run training steps.

        Args:
            count: Steps to run.
            batches: The batches, used in turn.
        """
        stashed: list[tuple[nn.Module, dict[int, Any]]] = []
        if self.detach_hooks:
            for module in self.model.modules():
                if any(isinstance(hook, SlotHook) for hook in module._forward_hooks.values()):
                    stashed.append((module, dict(module._forward_hooks)))
                    module._forward_hooks.clear()
        try:
            self._steps(count, batches)
        finally:
            for module, hooks in stashed:
                module._forward_hooks.update(hooks)

    def _steps(self, count: int, batches: Batches) -> None:
        model, optimizer, controller, runner = (
            self.model,
            self.optimizer,
            self.controller,
            self.runner,
        )
        model.train()
        for _ in range(count):
            features, labels = batches[self.done % len(batches)]
            self.done += 1
            optimizer.zero_grad(set_to_none=True)
            if self.amp:
                with torch.autocast("cuda", dtype=torch.bfloat16):
                    logits = runner(features)
            else:
                logits = runner(features)
            loss = functional.cross_entropy(logits.float(), labels)
            loss.backward()
            optimizer.step()
            if controller is not None:
                controller.after_step(loss)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _dynamo_counters() -> dict[str, dict[str, int]]:
    from torch._dynamo.utils import counters

    return {
        group: {str(k): int(v) for k, v in values.items()} for group, values in counters.items()
    }


def _counter_delta(
    before: dict[str, dict[str, int]], after: dict[str, dict[str, int]]
) -> dict[str, dict[str, int]]:
    delta: dict[str, dict[str, int]] = {}
    for group, values in after.items():
        for key, value in values.items():
            change = value - before.get(group, {}).get(key, 0)
            if change:
                delta.setdefault(group, {})[key] = change
    return delta


def _compile_summary(delta: dict[str, dict[str, int]]) -> dict[str, int]:
    stats = delta.get("stats", {})
    return {
        "unique_graphs": stats.get("unique_graphs", 0),
        "graph_breaks": sum(delta.get("graph_break", {}).values()),
        "frames_compiled": delta.get("frames", {}).get("ok", 0),
        "recompiles": sum(delta.get("recompiles", {}).values()),
    }


# -- statistics ---------------------------------------------------------------------------------


def bootstrap_median_ci(
    values: list[float], rng: random.Random, resamples: int = 2000
) -> tuple[float, float]:
    """Return a percentile-bootstrap 95% interval of the median.

    Args:
        values: The samples.
        rng: The random generator.
        resamples: Bootstrap resamples.

    Returns:
        ``(low, high)``.
    """
    count = len(values)
    medians = sorted(statistics.median(rng.choices(values, k=count)) for _ in range(resamples))
    return medians[int(0.025 * resamples)], medians[int(0.975 * resamples) - 1]


# -- one configuration ----------------------------------------------------------------------------


def _check_parameters(original: nn.Module, wrapped: MorphogeneticModel) -> dict[str, Any]:
    host_params = list(wrapped.host.parameters())
    wrapped_params = list(wrapped.parameters())
    original_count = sum(p.numel() for p in original.parameters())
    wrapped_count = sum(p.numel() for p in wrapped_params)
    slot_params = sum(p.numel() for slot in wrapped.seed_slots() for p in slot.parameters())
    extra_buffers = [
        (name, b.numel()) for name, b in wrapped.named_buffers() if name.startswith("slots.")
    ]
    result = {
        "original_param_count": original_count,
        "wrapped_param_count": wrapped_count,
        "wrapped_param_tensors": len(wrapped_params),
        "host_param_tensors": len(host_params),
        "slot_param_count": slot_params,
        "same_storage_as_host": [p.data_ptr() for p in wrapped_params]
        == [p.data_ptr() for p in host_params],
        "slot_buffers": len(extra_buffers),
        "slot_buffer_values": sum(n for _, n in extra_buffers),
    }
    result["no_duplicated_parameters"] = bool(
        result["same_storage_as_host"]
        and wrapped_count == original_count
        and len(wrapped_params) == len(host_params)
        and slot_params == 0
    )
    if not result["no_duplicated_parameters"]:
        raise AssertionError(f"the wrapped model duplicates or adds parameters: {result}")
    return result


def _build_models(
    build: Callable[[], nn.Module], features: Tensor, device: torch.device
) -> tuple[dict[str, nn.Module], dict[str, Any], dict[str, bool]]:
    """Build the four variants' models and check the wrapped ones against the host."""
    original = build().to(device)
    models: dict[str, nn.Module] = {"original": original, "control": copy.deepcopy(original)}
    for name in WRAPPED:
        models[name] = esper.wrap(copy.deepcopy(original), TARGETS, example_input=features[:2])
    hooks_model = models["hooks"]
    assert isinstance(hooks_model, MorphogeneticModel)
    parameters = _check_parameters(original, hooks_model)
    parameters["slots"] = [s.slot_id for s in hooks_model.seed_slots()]
    # One no-grad forward of every variant: the wrapped output must equal the host's exactly.
    with torch.no_grad():
        reference = original(features)
        identical = {name: bool(torch.equal(m(features), reference)) for name, m in models.items()}
    if not all(identical.values()):
        raise AssertionError(f"a dormant wrapped model changed the output: {identical}")
    return models, parameters, identical


def _warm_up(
    variants: list[Variant], steps: int, batches: Batches, compiled: bool
) -> tuple[dict[str, float], dict[str, Any]]:
    """Run every variant's warm-up; return its seconds and (compiled) its dynamo counters.

    The warm-up compiles (compile mode) and fills caches; with at least 20 steps the controller
    variant passes through both telemetry states.
    """
    seconds: dict[str, float] = {}
    compile_info: dict[str, Any] = {}
    for variant in variants:
        before = _dynamo_counters()
        _sync(variant.device)
        started = time.perf_counter()
        variant.steps(steps, batches)
        _sync(variant.device)
        seconds[variant.name] = time.perf_counter() - started
        if compiled:
            delta = _counter_delta(before, _dynamo_counters())
            compile_info[variant.name] = {"summary": _compile_summary(delta), "counters": delta}
    return seconds, compile_info


def _measure(
    variants: list[Variant], block: int, repetitions: int, batches: Batches
) -> dict[str, list[float]]:
    """Run interleaved blocks (a fresh random order per repetition); return seconds per step.

    A random order, rather than a rotation, keeps any effect of a block's position or of the
    block before it (warm caches after the same instance, for ``hooks_detached``) from
    favouring one variant.
    """
    gc.collect()
    rng = random.Random(2024)
    times: dict[str, list[float]] = {v.name: [] for v in variants}
    for _ in range(repetitions):
        order = list(variants)
        rng.shuffle(order)
        for variant in order:
            _sync(variant.device)
            started = time.perf_counter()
            variant.steps(block, batches)
            _sync(variant.device)
            times[variant.name].append((time.perf_counter() - started) / block)
    return times


def _summarize(times: dict[str, list[float]]) -> dict[str, Any]:
    """Per variant: medians, and the paired ratio to the original with its bootstrap CI.

    ``hooks_over_detached`` compares the hooks variant with its own instance without hooks.
    """
    rng = random.Random(12345)
    summary: dict[str, Any] = {}
    comparisons = [(name, name, "original") for name in times]
    if "hooks_detached" in times:
        comparisons.append(("hooks_over_detached", "hooks", "hooks_detached"))
    for label, name, reference_name in comparisons:
        values, base = times[name], times[reference_name]
        paired = [value / reference for value, reference in zip(values, base, strict=True)]
        low, high = bootstrap_median_ci(paired, rng)
        summary[label] = {
            "reference": reference_name,
            "median_step_ms": statistics.median(values) * 1e3,
            "min_step_ms": min(values) * 1e3,
            "max_step_ms": max(values) * 1e3,
            "ratio_of_medians": statistics.median(values) / statistics.median(base),
            "paired_ratio_median": statistics.median(paired),
            "paired_ratio_ci95": [low, high],
            "overhead_percent": (statistics.median(paired) - 1.0) * 100.0,
            "overhead_percent_ci95": [(low - 1.0) * 100.0, (high - 1.0) * 100.0],
        }
    return summary


def run_config(
    host_name: str,
    batch: int,
    mode: str,
    device: torch.device,
    args: argparse.Namespace,
) -> dict[str, Any]:
    """Measure one host, batch size and mode; return its result entry."""
    description, build, input_shape = HOSTS[host_name]
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(1)
    batches = [
        (
            torch.randn(batch, *input_shape, generator=generator).to(device),
            torch.randint(0, NUM_CLASSES, (batch,), generator=generator).to(device),
        )
        for _ in range(BATCH_POOL)
    ]
    models, parameters, identical = _build_models(build, batches[0][0], device)
    amp = device.type == "cuda" and not args.no_amp
    built: dict[str, Variant] = {}
    for name in VARIANTS:
        detached = name == "hooks_detached"
        if detached and mode == "compile":
            continue  # see the module docstring: dynamo would reuse the hookless graph
        built[name] = Variant(
            name,
            models["hooks" if detached else name],
            device,
            compile_model=mode == "compile",
            amp=amp,
            telemetry_every=(
                args.telemetry_every
                if name == "controller"
                else NO_TELEMETRY if name == "controller_no_telemetry" else None
            ),
            share=built["hooks"] if detached else None,
            detach_hooks=detached,
        )
    variants = list(built.values())
    warmup_seconds, compile_info = _warm_up(variants, args.warmup_steps, batches, mode == "compile")
    # Calibrate the block length (a multiple of the telemetry period) from the host's pace.
    probe_steps = 2 * args.telemetry_every
    _sync(device)
    started = time.perf_counter()
    variants[0].steps(probe_steps, batches)
    _sync(device)
    step_seconds = (time.perf_counter() - started) / probe_steps
    block = max(
        args.telemetry_every,
        round(args.block_seconds / step_seconds / args.telemetry_every) * args.telemetry_every,
    )
    repetitions = int(args.seconds / (block * step_seconds * len(variants)))
    repetitions = max(args.min_repetitions, min(args.max_repetitions, repetitions))

    timed_before = _dynamo_counters()
    measured_started = time.perf_counter()
    times = _measure(variants, block, repetitions, batches)
    measured_seconds = time.perf_counter() - measured_started
    timed_delta = _counter_delta(timed_before, _dynamo_counters())
    entry: dict[str, Any] = {
        "host": host_name,
        "host_description": description,
        "batch": batch,
        "mode": mode,
        "device": str(device),
        "amp_bf16": amp,
        "parameters_check": parameters,
        "outputs_identical_before_training": identical,
        "warmup_steps": args.warmup_steps,
        "warmup_seconds": warmup_seconds,
        "block_steps": block,
        "repetitions": repetitions,
        "measured_seconds": measured_seconds,
        "variants": _summarize(times),
        "block_step_seconds": times,
    }
    if mode == "compile":
        entry["compile_warmup"] = compile_info
        entry["compile_during_timing"] = {
            "summary": _compile_summary(timed_delta),
            "counters": timed_delta,
        }
    torch._dynamo.reset()
    return entry


class _Blocks(nn.Module):
    """Eight tiny linear blocks: a host whose compute is negligible beside its dispatch."""

    def __init__(self) -> None:
        """Create the blocks."""
        super().__init__()
        self.blocks = nn.Sequential(*(nn.Linear(8, 8) for _ in range(8)))

    def forward(self, x: Tensor) -> Tensor:
        """Apply the blocks."""
        return self.blocks(x)


def dispatch_costs(device: torch.device, repetitions: int = 30, calls: int = 2000) -> dict:
    """Measure the host-side cost of a dormant slot and of ``after_step``, in microseconds.

    A dormant slot adds only Python work to the forward pass (the module's hook path and the
    hook's idle check) and nothing to the backward pass, so its cost per step is this constant
    per slot, whatever the batch. Measured on eight tiny linear blocks, wrapped against
    unwrapped, interleaved: a no-grad forward, and a whole AdamW training step. And
    ``MorphogeneticController.after_step`` on its own with a device scalar loss (telemetry
    toggling every 10th call included, no forward pass, so the telemetry's own tensor work is
    not in it).

    Args:
        device: Where the tensors live.
        repetitions: Interleaved blocks per measurement.
        calls: Calls per block.

    Returns:
        ``per_slot_forward_us``, ``after_step_us`` and the raw block medians.
    """
    torch.manual_seed(0)
    original = _Blocks().to(device)
    x = torch.randn(2, 8, device=device)
    wrapped = esper.wrap(copy.deepcopy(original), TARGETS, example_input=x)
    y = torch.randint(0, 8, (2,), device=device)
    optimizers = {
        "original": torch.optim.AdamW(original.parameters(), lr=1e-3),
        "wrapped": torch.optim.AdamW(wrapped.parameters(), lr=1e-3),
    }

    def train(name: str, model: nn.Module, count: int) -> None:
        optimizer = optimizers[name]
        for _ in range(count):
            optimizer.zero_grad(set_to_none=True)
            functional.cross_entropy(model(x), y).backward()
            optimizer.step()

    step: dict[str, list[float]] = {"original": [], "wrapped": []}
    pairs = (("original", original), ("wrapped", wrapped))
    for name, model in pairs:
        train(name, model, calls // 10)
    for _ in range(repetitions):
        for name, model in pairs:
            _sync(device)
            started = time.perf_counter()
            train(name, model, calls // 10)
            _sync(device)
            step[name].append((time.perf_counter() - started) / (calls // 10))
    forward: dict[str, list[float]] = {"original": [], "wrapped": []}
    with torch.no_grad():
        for model in (original, wrapped):
            for _ in range(calls):
                model(x)
        for _ in range(repetitions):
            for name, model in (("original", original), ("wrapped", wrapped)):
                _sync(device)
                started = time.perf_counter()
                for _ in range(calls):
                    model(x)
                _sync(device)
                forward[name].append((time.perf_counter() - started) / calls)
    controller = Variant(
        "controller", wrapped, device, compile_model=False, amp=False, telemetry_every=10
    ).controller
    assert controller is not None
    loss = torch.ones((), device=device)
    after: list[float] = []
    for _ in range(repetitions):
        _sync(device)
        started = time.perf_counter()
        for _ in range(calls):
            controller.after_step(loss)
        _sync(device)
        after.append((time.perf_counter() - started) / calls)
    slots = len(wrapped.seed_slots())
    delta = statistics.median(forward["wrapped"]) - statistics.median(forward["original"])
    step_delta = statistics.median(step["wrapped"]) - statistics.median(step["original"])
    return {
        "device": str(device),
        "slots": slots,
        "forward_us": {k: statistics.median(v) * 1e6 for k, v in forward.items()},
        "per_slot_forward_us": delta / slots * 1e6,
        "train_step_us": {k: statistics.median(v) * 1e6 for k, v in step.items()},
        "per_slot_train_step_us": step_delta / slots * 1e6,
        "after_step_us": statistics.median(after) * 1e6,
        "repetitions": repetitions,
        "calls_per_block": calls,
    }


def _torch_info(device: torch.device) -> dict[str, Any]:
    info: dict[str, Any] = {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "num_threads": torch.get_num_threads(),
        "num_interop_threads": torch.get_num_interop_threads(),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda
        info["capability"] = ".".join(map(str, torch.cuda.get_device_capability(device)))
    return info


def _row(entry: dict[str, Any]) -> list[object]:
    """Return the printed table's row of one configuration."""
    variants = entry["variants"]
    row: list[object] = [
        entry["mode"],
        entry["host"],
        entry["batch"],
        f"{variants['original']['median_step_ms']:.3f}",
    ]
    for name in (*VARIANTS[1:], "hooks_over_detached"):
        if name not in variants:
            row.append("-")
            continue
        low, high = variants[name]["overhead_percent_ci95"]
        row.append(f"{variants[name]['overhead_percent']:+.2f} [{low:+.2f},{high:+.2f}]")
    row.append(entry["repetitions"])
    if entry["mode"] == "compile":
        timing = entry["compile_during_timing"]["summary"]
        wrapped = {
            key: sum(info["summary"][key] for info in entry["compile_warmup"].values())
            for key in ("unique_graphs", "graph_breaks")
        }
        row.append(
            f"{wrapped['unique_graphs']}g/{wrapped['graph_breaks']}b; "
            f"timed {timing['frames_compiled']}f"
        )
    else:
        row.append("-")
    return row


def main() -> None:
    """Run the benchmark and write its JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--modes", default="eager", help="comma-separated: eager, compile")
    parser.add_argument("--hosts", default="resnet,mlp,transformer")
    parser.add_argument("--batches", default="256,16")
    parser.add_argument("--threads", type=int, default=8, help="torch intra-op threads")
    parser.add_argument("--seconds", type=float, default=30.0, help="timed seconds per config")
    parser.add_argument("--block-seconds", type=float, default=0.1, help="seconds per block")
    parser.add_argument("--warmup-steps", type=int, default=30)
    parser.add_argument("--min-repetitions", type=int, default=15)
    parser.add_argument("--max-repetitions", type=int, default=400)
    parser.add_argument("--no-amp", action="store_true", help="no bf16 autocast on CUDA")
    parser.add_argument("--label", default="", help="free text recorded with the result")
    parser.add_argument(
        "--telemetry-every",
        type=int,
        default=TELEMETRY_EVERY,
        help="telemetry period of the controller variant (default: the controller's)",
    )
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "dormant_overhead.json")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    # Training on a small synthetic set drives gradients and Adam's moments toward zero; on a
    # CPU, denormal floats would then slow every step more and more, drowning the overhead.
    flush_denormal = torch.set_flush_denormal(True) if args.device == "cpu" else False
    device = torch.device(args.device)
    env = environment()
    modes = [m for m in args.modes.split(",") if m]
    hosts = [h for h in args.hosts.split(",") if h]
    batches = [int(b) for b in args.batches.split(",") if b]
    parameters = {
        "device": args.device,
        "modes": modes,
        "hosts": {name: HOSTS[name][0] for name in hosts},
        "targets": TARGETS,
        "batches": batches,
        "threads": args.threads,
        "seconds_per_config": args.seconds,
        "block_seconds": args.block_seconds,
        "warmup_steps": args.warmup_steps,
        "optimizer": "AdamW(lr=1e-3), defaults otherwise",
        "telemetry_every": args.telemetry_every,
        "decision_interval_steps": 1_000_000,
        "batch_pool": BATCH_POOL,
        "flush_denormal": flush_denormal,
        "label": args.label,
        "torch_info": _torch_info(device),
    }
    configs: list[dict[str, Any]] = []
    rows: list[list[object]] = []
    costs = {
        name: dispatch_costs(torch.device(name)) for name in dict.fromkeys(["cpu", args.device])
    }
    for name, cost in costs.items():
        print(
            f"{name}: a dormant slot costs {cost['per_slot_forward_us']:.2f} us per forward, "
            f"{cost['per_slot_train_step_us']:.2f} us per training step; "
            f"after_step {cost['after_step_us']:.1f} us",
            flush=True,
        )
    results: dict[str, Any] = {"dispatch_costs": costs, "configs": configs}
    for mode in modes:
        for host in hosts:
            for batch in batches:
                print(f"{mode} {host} batch {batch} ...", flush=True)
                entry = run_config(host, batch, mode, device, args)
                configs.append(entry)
                row = _row(entry)
                rows.append(row)
                print(rows[-1], flush=True)
                # Written after every configuration, so a run cut short keeps what it measured.
                write_result("dormant_overhead", parameters, results, out=args.out, env=env)
    headers = [
        "mode",
        "host",
        "batch",
        "orig ms",
        "control % [CI]",
        "hooks % [CI]",
        "hooks detached % [CI]",
        "controller % [CI]",
        "ctl no telemetry % [CI]",
        "hooks vs same instance detached % [CI]",
        "reps",
        "compile: graphs/breaks in warm-up; frames compiled while timed",
    ]
    print(format_table(headers, rows))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
