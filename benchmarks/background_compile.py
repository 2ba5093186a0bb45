"""Background compile: training throughput while the local forge compiles, against without.

A host (the zoo ``mlp``: 784 inputs, hidden 512, depth 4, batch 256, wrapped by ``esper.wrap``
with a slot after every block, all dormant) trains on CUDA with AdamW and bf16 autocast, as in
``graft_stall.py``. Beside it runs the stack ``esper run`` starts by default
(:func:`esper.embedded.embedded_stack`): Urza in a thread of this process (SQLite and a local
artifact directory in a temporary ``ESPER_HOME``), the in-process bus, and the local forge,
whose worker processes run ``python -m esper tezzeret compile`` and ``python -m esper urabrask
bench`` (validation and benchmark, on the same GPU) against Urza over HTTP. The run's kernels
are registered the way a run registers them (:func:`esper.tolaria.catalog.register_kernels`
for the model's slots: every feature blueprint at ``C=512`` on ``cuda@<capability>``), plus
the same blueprints at other widths (``--extra-widths``) so that the forge has work for the
whole measurement. The forge compiles with ``esper run``'s default (no compile cache) unless
``--compile-cache`` is given.

Conditions, interleaved: each repetition runs one block of training steps per condition, in a
fresh random order, so that drift of the machine affects all alike:

- ``idle``: the forge's worker processes and their children are suspended (SIGSTOP) for the
  block: nothing compiles or validates (Urza and the forge's threads stay, idle);
- ``idle_control``: the same again; ``idle_control`` over ``idle`` is the noise floor (A/A);
- ``forge``: the workers run (SIGCONT), compiling and validating kernels and calling Urza,
  whose requests are served by threads of the training process.

Suspending is what lets the two states alternate every few seconds without waiting for units
to finish; the forge itself is unchanged. Every block records the CPU seconds the forge's
processes used during it: near zero in the idle blocks (the proof that they were suspended),
well above zero in the forge blocks (the proof that the forge was working). Per condition the
figure is the block's training steps per second (CUDA synchronized at the block's ends); the
recorded ratio is the median over repetitions of the paired ratio (``forge`` over ``idle`` of
the same repetition) with a percentile-bootstrap 95% interval. Below 1 means the forge slows
training; ``(1 - ratio) * 100`` is the slowdown in percent (the design's target: throughput at
least 95% of the run without it, ``docs/architecture.md``). ``--concurrency`` takes several
values (the forge's worker processes at once; ``esper run``'s default is 1), each measured with
its own stack, kernels and caches.

The forge queues a kernel's validation behind the compile units already waiting, so with many
kernels registered the measured forge blocks hold compile units (CPU work) only.
``--phase validate`` first lets the forge compile every registered kernel while the host trains
unmeasured, then measures while it validates and benchmarks them (``urabrask bench``, on the
training GPU). Each block records which units were running when it started.

Rerun (device machine, from the repository root, with the packages of docs/benchmarks.md
"Where they ran" plus the server extra's fastapi, starlette, sqlalchemy, alembic, mako, uvicorn,
python-multipart, anyio and opentelemetry-api): ``python benchmarks/background_compile.py
--concurrency 1,4 --out benchmarks/results/background_compile_h100.json``, and the
validation phase: ``python benchmarks/background_compile.py --phase validate --concurrency 1
--extra-widths 256,384 --out benchmarks/results/background_compile_h100_validate.json``. A
quick check:
``python benchmarks/background_compile.py --concurrency 1 --repetitions 3 --block-seconds 1
--out /tmp/b.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import random
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import torch
from torch.nn import functional

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from _common import RESULTS_DIR, environment, format_table, write_result  # noqa: E402

import esper  # noqa: E402
from esper.blueprints.library import LIBRARY  # noqa: E402
from esper.config import ForgeSettings, UrzaSettings  # noqa: E402
from esper.contracts.kernel import DeviceKind  # noqa: E402
from esper.embedded import RunStack, embedded_stack  # noqa: E402
from esper.kasmina.wrap import MorphogeneticModel  # noqa: E402
from esper.tolaria.catalog import register_kernels  # noqa: E402
from esper.zoo.models import mlp  # noqa: E402

CONDITIONS = ("idle", "idle_control", "forge")
NUM_CLASSES = 10
INPUT_FEATURES = 784
BATCH_POOL = 8
WORKER_WAIT_SECONDS = 60.0
"""Longest wait for the forge's first worker process before measuring."""


# -- the forge's processes --------------------------------------------------------------------


def forge_processes() -> list[psutil.Process]:
    """Return the forge's worker processes (``python -m esper ...``) and all their children."""
    found: list[psutil.Process] = []
    for child in psutil.Process().children(recursive=False):
        try:
            command = child.cmdline()
            if command[1:3] != ["-m", "esper"]:
                continue
            found.append(child)
            found.extend(child.children(recursive=True))
        except (psutil.Error, IndexError):
            continue
    return found


def forge_units() -> list[str]:
    """Return the kind of every unit the forge has running (``compile`` or ``validate``)."""
    units: list[str] = []
    for child in psutil.Process().children(recursive=False):
        with contextlib.suppress(psutil.Error, IndexError):
            command = child.cmdline()
            if command[1:3] == ["-m", "esper"]:
                units.append("compile" if command[3] == "tezzeret" else "validate")
    return units


def _cpu_seconds(process: psutil.Process) -> float | None:
    try:
        times = process.cpu_times()
    except psutil.Error:
        return None
    return times.user + times.system + times.children_user + times.children_system


def cpu_snapshot() -> dict[tuple[int, float], float]:
    """Return the CPU seconds used so far by each forge process (keyed by pid and start time)."""
    snapshot: dict[tuple[int, float], float] = {}
    for process in forge_processes():
        seconds = _cpu_seconds(process)
        with contextlib.suppress(psutil.Error):
            if seconds is not None:
                snapshot[(process.pid, process.create_time())] = seconds
    return snapshot


def cpu_used(
    before: dict[tuple[int, float], float], after: dict[tuple[int, float], float]
) -> float:
    """Return the CPU seconds the forge's processes used between two snapshots.

    Processes that started in between count in full; those that ended in between lose their
    last interval (an underestimate, which only the forge blocks can suffer from).
    """
    return sum(seconds - before.get(key, 0.0) for key, seconds in after.items())


def _signal_all(suspend: bool, passes: int) -> None:
    for index in range(passes):
        for process in forge_processes():
            with contextlib.suppress(psutil.Error):
                if suspend:
                    process.suspend()
                else:
                    process.resume()
        if index + 1 < passes:
            # A worker the forge started while the previous pass ran is caught by the next.
            time.sleep(0.05)


def suspend_forge() -> None:
    """Stop (SIGSTOP) every forge process, three passes to catch workers started meanwhile."""
    _signal_all(True, passes=3)


def resume_forge() -> None:
    """Continue (SIGCONT) every forge process."""
    _signal_all(False, passes=2)


# -- training -----------------------------------------------------------------------------------


class Trainer:
    """The wrapped host, its optimizer and batches; runs timed blocks of training steps.

    Args:
        args: The command-line options.
        device: The CUDA device.
    """

    def __init__(self, args: argparse.Namespace, device: torch.device) -> None:
        """Build the model and its batches."""
        torch.manual_seed(0)
        generator = torch.Generator().manual_seed(1)
        self.device = device
        self.batches = [
            (
                torch.randn(args.batch, INPUT_FEATURES, generator=generator).to(device),
                torch.randint(0, NUM_CLASSES, (args.batch,), generator=generator).to(device),
            )
            for _ in range(BATCH_POOL)
        ]
        host = mlp((INPUT_FEATURES,), NUM_CLASSES, hidden=args.hidden, depth=args.depth)
        self.model = esper.wrap(host.to(device), ["blocks.?"], example_input=self.batches[0][0][:2])
        assert isinstance(self.model, MorphogeneticModel)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=1e-3)
        self.done = 0

    def steps(self, count: int) -> float:
        """Run training steps; return their seconds (the device synchronized at both ends)."""
        model, optimizer = self.model, self.optimizer
        model.train()
        torch.cuda.synchronize(self.device)
        started = time.perf_counter()
        for _ in range(count):
            features, labels = self.batches[self.done % BATCH_POOL]
            self.done += 1
            optimizer.zero_grad(set_to_none=True)
            with torch.autocast("cuda", dtype=torch.bfloat16):
                logits = model(features)
            loss = functional.cross_entropy(logits.float(), labels)
            loss.backward()
            optimizer.step()
        torch.cuda.synchronize(self.device)
        return time.perf_counter() - started


# -- statistics ---------------------------------------------------------------------------------


def bootstrap_median_ci(
    values: list[float], rng: random.Random, resamples: int = 2000
) -> tuple[float, float]:
    """Return a percentile-bootstrap 95% interval of the median."""
    count = len(values)
    medians = sorted(statistics.median(rng.choices(values, k=count)) for _ in range(resamples))
    return medians[int(0.025 * resamples)], medians[int(0.975 * resamples) - 1]


def summarize(blocks: list[dict[str, Any]]) -> dict[str, Any]:
    """Per condition: median steps/s; paired ratios to ``idle`` with bootstrap intervals."""
    rng = random.Random(12345)
    by: dict[str, list[dict[str, Any]]] = {name: [] for name in CONDITIONS}
    for block in blocks:
        by[block["condition"]].append(block)
    summary: dict[str, Any] = {}
    for name in CONDITIONS:
        rates = [block["steps_per_s"] for block in by[name]]
        cpu = [block["forge_cpu_seconds"] for block in by[name]]
        entry: dict[str, Any] = {
            "blocks": len(rates),
            "median_steps_per_s": statistics.median(rates),
            "min_steps_per_s": min(rates),
            "max_steps_per_s": max(rates),
            "forge_cpu_seconds_median": statistics.median(cpu),
            "forge_cpu_seconds_max": max(cpu),
            "forge_cores_median": statistics.median(
                block["forge_cpu_seconds"] / block["seconds"] for block in by[name]
            ),
        }
        if name != "idle":
            paired = [
                block["steps_per_s"] / reference["steps_per_s"]
                for block, reference in zip(by[name], by["idle"], strict=True)
            ]
            low, high = bootstrap_median_ci(paired, rng)
            entry.update(
                {
                    "reference": "idle",
                    "paired_ratio_median": statistics.median(paired),
                    "paired_ratio_ci95": [low, high],
                    "slowdown_percent": (1.0 - statistics.median(paired)) * 100.0,
                    "slowdown_percent_ci95": [(1.0 - high) * 100.0, (1.0 - low) * 100.0],
                    "paired_ratios": paired,
                }
            )
        summary[name] = entry
    return summary


# -- one configuration --------------------------------------------------------------------------


@contextlib.contextmanager
def stack_in(home: Path, concurrency: int, compile_cache: bool) -> Iterator[RunStack]:
    """Run ``esper run``'s embedded stack with its data (and compile caches) under ``home``."""
    saved = {
        key: os.environ.get(key)
        for key in ("ESPER_HOME", "TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR")
    }
    # The forge's workers inherit this environment: their compile caches start empty.
    os.environ["ESPER_HOME"] = str(home)
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(home / "inductor")
    os.environ["TRITON_CACHE_DIR"] = str(home / "triton")
    try:
        urza = UrzaSettings(
            database_url=f"sqlite:///{home / 'urza.sqlite'}", artifact_dir=home / "artifacts"
        )
        forge = ForgeSettings(concurrency=concurrency)
        with embedded_stack(
            urza, forge, consumer="background-compile", compile_cache=compile_cache
        ) as stack:
            yield stack
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def register(stack: RunStack, trainer: Trainer, widths: list[int]) -> list[str]:
    """Register the run's kernels, then the same blueprints at the extra widths."""
    major, minor = torch.cuda.get_device_capability(trainer.device)
    slots = [slot.descriptor for slot in trainer.model.seed_slots()]
    extra = [
        slots[0].model_copy(update={"channels": width, "shape": [width]})
        for width in widths
        if width != slots[0].channels
    ]
    kernel_ids: list[str] = []
    for group in (slots, extra):
        wanted = register_kernels(
            stack.client, list(LIBRARY.values()), group, DeviceKind.CUDA, f"{major}.{minor}"
        )
        kernel_ids.extend(kernel.kernel_id for kernel in wanted)
    return kernel_ids


def run_config(concurrency: int, args: argparse.Namespace, device: torch.device) -> dict:
    """Measure one forge concurrency; return its result entry."""
    trainer = Trainer(args, device)
    warmup_seconds = trainer.steps(args.warmup_steps)
    step_seconds = trainer.steps(50) / 50
    block = max(10, round(args.block_seconds / step_seconds))
    with (
        tempfile.TemporaryDirectory(prefix="esper-background-compile-") as scratch,
        stack_in(Path(scratch), concurrency, args.compile_cache) as stack,
    ):
        started = time.perf_counter()
        kernel_ids = register(stack, trainer, args.extra_widths)
        # Train (unmeasured) until the forge's first worker runs.
        while not forge_processes() and time.perf_counter() - started < WORKER_WAIT_SECONDS:
            trainer.steps(block // 4 or 1)
        first_worker_seconds = time.perf_counter() - started
        if args.phase == "validate":
            # Let the forge compile every kernel first (training, unmeasured), so that the
            # measured forge blocks hold the validation and benchmark units (on the GPU).
            while time.perf_counter() - started < args.prepare_seconds and any(
                stack.client.get_kernel(k).phase.value in ("Pending", "Compiling")
                for k in kernel_ids
            ):
                trainer.steps(block // 4 or 1)
        prepare_seconds = time.perf_counter() - started
        phases_at_start = Counter(stack.client.get_kernel(k).phase.value for k in kernel_ids)
        rng = random.Random(2024)
        blocks: list[dict[str, Any]] = []
        for repetition in range(args.repetitions):
            order = list(CONDITIONS)
            rng.shuffle(order)
            for condition in order:
                if condition == "forge":
                    resume_forge()
                else:
                    suspend_forge()
                running = forge_units()
                before = cpu_snapshot()
                seconds = trainer.steps(block)
                forge_seconds = cpu_used(before, cpu_snapshot())
                blocks.append(
                    {
                        "repetition": repetition,
                        "condition": condition,
                        "steps": block,
                        "seconds": seconds,
                        "steps_per_s": block / seconds,
                        "forge_cpu_seconds": forge_seconds,
                        "forge_units_at_start": running,
                        "forge_busy_at_end": stack.forge.forge.busy(),
                    }
                )
            print(_progress(repetition, blocks[-len(order) :]), flush=True)
        resume_forge()
        measured_seconds = time.perf_counter() - started - prepare_seconds
        phases = Counter(stack.client.get_kernel(k).phase.value for k in kernel_ids)
        outcomes = list(stack.forge.forge.outcomes)
    units = Counter(
        f"{outcome.unit.kind.value}:{'ok' if outcome.succeeded else 'failed'}"
        for outcome in outcomes
    )
    errors = [outcome.error for outcome in outcomes if outcome.error][:5]
    return {
        "concurrency": concurrency,
        "compile_cache": args.compile_cache,
        "phase": args.phase,
        "block_steps": block,
        "warmup_seconds": warmup_seconds,
        "calibration_step_ms": step_seconds * 1e3,
        "kernels_registered": len(kernel_ids),
        "seconds_to_first_worker": first_worker_seconds,
        "seconds_before_measuring": prepare_seconds,
        "kernel_phases_at_start": dict(phases_at_start),
        "measured_seconds": measured_seconds,
        "kernel_phases_at_end": dict(phases),
        "forge_units_finished": dict(units),
        "forge_unit_errors": errors,
        "conditions": summarize(blocks),
        "blocks": blocks,
    }


def _progress(repetition: int, blocks: list[dict[str, Any]]) -> str:
    parts = [
        f"{b['condition']} {b['steps_per_s']:.0f}/s cpu {b['forge_cpu_seconds']:.1f}s"
        for b in sorted(blocks, key=lambda b: CONDITIONS.index(b["condition"]))
    ]
    return f"rep {repetition}: " + "; ".join(parts)


def _row(entry: dict[str, Any]) -> list[object]:
    conditions = entry["conditions"]
    row: list[object] = [
        entry["concurrency"],
        f"{conditions['idle']['median_steps_per_s']:.1f}",
        f"{conditions['forge']['median_steps_per_s']:.1f}",
    ]
    for name in ("forge", "idle_control"):
        low, high = conditions[name]["paired_ratio_ci95"]
        row.append(f"{conditions[name]['paired_ratio_median']:.3f} [{low:.3f}, {high:.3f}]")
    row.extend(
        [
            f"{conditions['idle']['forge_cpu_seconds_max']:.2f}",
            f"{conditions['forge']['forge_cores_median']:.2f}",
            len(conditions["forge"]["paired_ratios"]),
            " ".join(f"{k}={v}" for k, v in sorted(entry["forge_units_finished"].items())),
        ]
    )
    return row


def main() -> None:
    """Run every concurrency, write the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concurrency", default="1", help="comma-separated forge workers")
    parser.add_argument("--repetitions", type=int, default=15)
    parser.add_argument("--block-seconds", type=float, default=2.0, help="seconds per block")
    parser.add_argument("--warmup-steps", type=int, default=200)
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument(
        "--extra-widths",
        default="256,384,640,768,1024",
        help="other slot widths the blueprints are registered for (work for the forge)",
    )
    parser.add_argument(
        "--compile-cache", action="store_true", help="the forge ships compile caches"
    )
    parser.add_argument(
        "--phase",
        choices=["compile", "validate"],
        default="compile",
        help="compile: measure from the start (the forge's queue holds compile units first); "
        "validate: first let the forge compile every kernel, then measure its validation units",
    )
    parser.add_argument(
        "--prepare-seconds", type=float, default=300.0, help="longest wait for --phase validate"
    )
    parser.add_argument("--label", default="", help="free text recorded with the result")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "background_compile.json")
    args = parser.parse_args()
    args.extra_widths = [int(w) for w in args.extra_widths.split(",") if w]
    if not torch.cuda.is_available():
        raise SystemExit("background_compile.py needs CUDA")
    device = torch.device("cuda")
    env = environment()
    concurrencies = [int(c) for c in args.concurrency.split(",") if c]
    parameters = {
        "host": f"esper.zoo mlp: input {INPUT_FEATURES}, hidden {args.hidden}, depth "
        f"{args.depth}, relu; esper.wrap slots blocks.? (dormant); AdamW(lr=1e-3); bf16 autocast",
        "batch": args.batch,
        "conditions": list(CONDITIONS),
        "concurrency": concurrencies,
        "repetitions": args.repetitions,
        "block_seconds": args.block_seconds,
        "warmup_steps": args.warmup_steps,
        "extra_widths": args.extra_widths,
        "compile_cache": args.compile_cache,
        "phase": args.phase,
        "forge_defaults": ForgeSettings().model_dump(),
        "label": args.label,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "gpu": torch.cuda.get_device_name(device),
        "cpu_count": os.cpu_count(),
    }
    configs: list[dict[str, Any]] = []
    rows: list[list[object]] = []
    for concurrency in concurrencies:
        print(f"forge concurrency {concurrency} ...", flush=True)
        entry = run_config(concurrency, args, device)
        configs.append(entry)
        rows.append(_row(entry))
        print(rows[-1], flush=True)
        write_result("background_compile", parameters, {"configs": configs}, out=args.out, env=env)
    headers = [
        "workers",
        "idle steps/s",
        "forge steps/s",
        "forge/idle [CI]",
        "A/A control [CI]",
        "idle-block forge CPU s max",
        "forge cores",
        "reps",
        "units finished",
    ]
    print(format_table(headers, rows))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
