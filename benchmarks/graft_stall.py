"""Graft stall: every training step's time around a graft, precompiled kernel vs in-process compile.

A host (the zoo ``mlp``, wrapped with a slot after every block) trains on synthetic data; at
step ``--graft-step`` a seed grows in one slot, and training goes on. Every step is timed on the
host clock, with ``torch.cuda.synchronize()`` after each step on CUDA (for the measurement
only), and each step's time includes the step-boundary work that precedes it (polling the
loader, germinating, advancing the seed's stage). Modes:

- ``precompiled``: the design. The seed's kernel was compiled beforehand (outside the run, by
  ``esper.tezzeret.compiler.compile_kernel``, ``compile_cache=False``) into a real bundle. At
  the graft step the run asks ``esper.kasmina.loader.KernelLoader`` for it (download from a
  file-backed source, SHA-256 and member verification, module build and, by default, the
  exported program, all in the loader's background thread); every later step boundary polls
  ``ready()`` and, once it is ready, germinates the eager seed (``LoadedKernel.fresh_module``,
  ``SeedSlot.germinate``, a new AdamW param group), exactly what the controller does.
- ``precompiled-noexport``: the same with ``load_exported_program=False`` (the loader builds
  only the eager module; today's default), to show what loading the exported program costs
  the training thread.
- ``precompiled-noexport-warm``: the same, with the loader given the training device, as
  ``esper run``'s loader is: it moves the seed there and runs it forward and backward once off
  the training thread (``device=`` of ``KernelLoader``).
- ``compile``: the alternative the design rules out. At the graft step the seed is built from
  its blueprint on the training thread and ``torch.compile``d (inductor), and the compiled
  module is germinated; its first forward and backward (the first TRAINING step) pay the
  compilation. Each such run starts with empty inductor and Triton caches.

In every mode the seed is GERMINATED at the graft boundary (it computes nothing yet) and moves
to TRAINING at the next boundary (it then runs forward and backward every step), as the
controller's schedule does. Each run (mode x trial) is its own process, so nothing compiled
or loaded leaks between runs.

Reported per run: the median step before the graft request (the steady state), the window from
50 steps before the request to 50 steps after germination (covering the background load), its
median, maximum and max/median (the target: at most 1.5), the slowest steps, and as a control
the max/median of an equally long window of the same run well before the request (what timing
noise alone gives).

Rerun (device machine): ``python benchmarks/graft_stall.py --devices cuda,cpu --out
benchmarks/results/graft_stall_h100.json``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from _common import RESULTS_DIR, environment, format_table, write_result  # noqa: E402

MODES = ("precompiled", "precompiled-noexport", "precompiled-noexport-warm", "compile")
BLUEPRINT = "residual-mlp"
SLOT = "blocks.1"
NUM_CLASSES = 10
INPUT_FEATURES = 784
WINDOW_MARGIN = 50
"""Steps before the request and after germination that the window includes."""


# -- the parent: bundles, runs, summaries ----------------------------------------------------


def _target_text(device: str, hidden: int) -> str:
    import torch

    if device == "cuda":
        major, minor = torch.cuda.get_device_capability()
        return f"cuda@{major}.{minor}:fp32:C={hidden}"
    return f"cpu:fp32:C={hidden}"


def build_bundle(device: str, hidden: int, directory: Path) -> dict[str, Any]:
    """Compile the seed's kernel bundle for a device (in this process, before any run).

    Args:
        device: ``cpu`` or ``cuda``.
        hidden: The host's hidden width (the slot's channels).
        directory: Where the bundle file goes.

    Returns:
        Its path, SHA-256, kernel id, target and compile seconds.
    """
    from esper.blueprints.library import builtin
    from esper.contracts.kernel import KernelTarget
    from esper.tezzeret.compiler import CompileOptions, compile_kernel

    target = KernelTarget.parse(_target_text(device, hidden))
    started = time.perf_counter()
    compiled = compile_kernel(builtin(BLUEPRINT), target, CompileOptions(compile_cache=False))
    seconds = time.perf_counter() - started
    path = directory / f"bundle-{device}.zip"
    path.write_bytes(compiled.data)
    return {
        "path": str(path),
        "sha256": hashlib.sha256(compiled.data).hexdigest(),
        "kernel_id": compiled.manifest.kernel_id,
        "target": target.short(),
        "bundle_bytes": len(compiled.data),
        "compile_seconds": seconds,
        "members": [member.name.value for member in compiled.manifest.members],
    }


def run_child(
    device: str, mode: str, trial: int, bundle: dict[str, Any], args: argparse.Namespace
) -> dict[str, Any]:
    """Run one mode in a fresh process with empty compile caches; return its step times."""
    with tempfile.TemporaryDirectory(prefix="esper-graft-") as scratch:
        result_path = Path(scratch) / "result.json"
        env = {
            **os.environ,
            "TORCHINDUCTOR_CACHE_DIR": str(Path(scratch) / "inductor"),
            "TRITON_CACHE_DIR": str(Path(scratch) / "triton"),
            "PYTHONPATH": os.pathsep.join(
                part for part in (str(REPO / "src"), os.environ.get("PYTHONPATH", "")) if part
            ),
        }
        command = [
            sys.executable,
            str(Path(__file__).resolve()),
            "--child",
            json.dumps(
                {
                    "device": device,
                    "mode": mode,
                    "trial": trial,
                    "bundle": bundle,
                    "hidden": args.hidden,
                    "depth": args.depth,
                    "batch": args.batch,
                    "threads": args.threads,
                    "warmup_steps": args.warmup_steps,
                    "graft_step": args.graft_step[device],
                    "after_steps": args.after_steps,
                    "max_wait_seconds": args.max_wait_seconds,
                    "result": str(result_path),
                }
            ),
        ]
        completed = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
        if completed.returncode != 0:
            raise RuntimeError(
                f"graft run {device}/{mode}/{trial} failed:\n{completed.stderr[-4000:]}"
            )
        return json.loads(result_path.read_text())


def summarize_run(run: dict[str, Any]) -> dict[str, Any]:
    """Compute the window statistics of one run's step times."""
    times = run["step_seconds"]
    request = run["request_step"]
    germinated = run["germinated_step"]
    first = run["warmup_steps"]
    steady = times[first:request]
    start = max(first, request - WINDOW_MARGIN)
    end = min(len(times), germinated + WINDOW_MARGIN + 1)
    window = times[start:end]
    length = end - start
    # The control: as many steps as the window (or all there are) just before it, no graft.
    control_start = max(first, start - length)
    control = times[control_start:start]
    post = times[germinated + 10 :]
    window_median = statistics.median(window)
    order = sorted(range(start, end), key=lambda i: times[i], reverse=True)[:5]
    return {
        "device": run["device"],
        "mode": run["mode"],
        "trial": run["trial"],
        "request_step": request,
        "germinated_step": germinated,
        "steps_waiting_for_load": germinated - request,
        "load_seconds": run.get("load_seconds"),
        "steady_median_ms": statistics.median(steady) * 1e3,
        "window_steps": [start, end],
        "window_median_ms": window_median * 1e3,
        "window_max_ms": max(window) * 1e3,
        "max_over_median": max(window) / window_median,
        "steps_over_1_5x_median": sum(1 for t in window if t > 1.5 * window_median),
        "slowest_steps": [
            {"step": i, "from_graft_request": i - request, "ms": times[i] * 1e3} for i in order
        ],
        "germination_step_ms": times[germinated] * 1e3,
        "first_seed_step_ms": times[germinated + 1] * 1e3 if germinated + 1 < len(times) else None,
        "post_graft_median_ms": statistics.median(post) * 1e3 if post else None,
        "control_window_steps": [control_start, start],
        "control_max_over_median": (max(control) / statistics.median(control) if control else None),
        "meets_target_1_5x": max(window) / window_median <= 1.5,
        "stage_at_end": run["stage_at_end"],
        "seed_received_gradients": run["seed_received_gradients"],
    }


def main() -> None:
    """Build bundles, run every device, mode and trial, write the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--devices", default="cuda,cpu")
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--trials", type=int, default=2)
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--threads", type=int, default=8, help="torch intra-op threads")
    parser.add_argument("--warmup-steps", type=int, default=100, help="unreported first steps")
    parser.add_argument(
        "--graft-steps",
        default="cuda=1500,cpu=400",
        help="per device: the step at whose boundary the graft is requested",
    )
    parser.add_argument("--after-steps", type=int, default=300, help="steps after germination")
    parser.add_argument("--max-wait-seconds", type=float, default=120.0)
    parser.add_argument("--label", default="")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "graft_stall.json")
    args = parser.parse_args()
    if args.child is not None:
        child(json.loads(args.child))
        return
    args.graft_step = {
        pair.split("=")[0]: int(pair.split("=")[1]) for pair in args.graft_steps.split(",")
    }
    env = environment()
    devices = [d for d in args.devices.split(",") if d]
    modes = [m for m in args.modes.split(",") if m]

    import torch

    parameters: dict[str, Any] = {
        "host": f"esper.zoo mlp: input {INPUT_FEATURES}, hidden {args.hidden}, depth "
        f"{args.depth}, relu; slots blocks.?; AdamW(lr=1e-3); bf16 autocast on CUDA",
        "blueprint": BLUEPRINT,
        "slot": SLOT,
        "batch": args.batch,
        "threads": args.threads,
        "devices": devices,
        "modes": modes,
        "trials": args.trials,
        "warmup_steps": args.warmup_steps,
        "graft_step": args.graft_step,
        "after_steps": args.after_steps,
        "window_margin_steps": WINDOW_MARGIN,
        "label": args.label,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
    results: dict[str, Any] = {"bundles": {}, "runs": [], "raw": []}
    rows: list[list[object]] = []
    with tempfile.TemporaryDirectory(prefix="esper-graft-bundles-") as directory:
        for device in devices:
            bundle = build_bundle(device, args.hidden, Path(directory))
            results["bundles"][device] = {k: v for k, v in bundle.items() if k != "path"}
            print(f"{device}: bundle {bundle['kernel_id']} in {bundle['compile_seconds']:.1f}s")
            for trial in range(args.trials):
                for mode in modes:
                    raw = run_child(device, mode, trial, bundle, args)
                    summary = summarize_run(raw)
                    results["runs"].append(summary)
                    results["raw"].append(
                        {
                            "device": device,
                            "mode": mode,
                            "trial": trial,
                            "torch_threads": raw["torch_threads"],
                            "flush_denormal": raw["flush_denormal"],
                            "step_seconds": raw["step_seconds"],
                        }
                    )
                    row = [
                        device,
                        mode,
                        trial,
                        f"{summary['steady_median_ms']:.3f}",
                        f"{summary['window_median_ms']:.3f}",
                        f"{summary['window_max_ms']:.1f}",
                        f"{summary['max_over_median']:.2f}",
                        summary["slowest_steps"][0]["from_graft_request"],
                        summary["steps_waiting_for_load"],
                        (
                            "-"
                            if summary["control_max_over_median"] is None
                            else f"{summary['control_max_over_median']:.2f}"
                        ),
                    ]
                    rows.append(row)
                    print(row, flush=True)
                    write_result("graft_stall", parameters, results, out=args.out, env=env)
    headers = [
        "device",
        "mode",
        "trial",
        "steady ms",
        "window med ms",
        "window max ms",
        "max/med",
        "max at (steps from request)",
        "load steps",
        "control max/med",
    ]
    print(format_table(headers, rows))
    print(f"wrote {args.out}")


# -- the child: one training run -------------------------------------------------------------


class FileSource:
    """A kernel source that reads one bundle file (stands in for Urza).

    Args:
        kernel_id: The kernel it serves.
        path: The bundle file.
        sha256: The SHA-256 the library recorded.
    """

    def __init__(self, kernel_id: str, path: str, sha256: str) -> None:
        """Hold the bundle's location."""
        self.kernel_id = kernel_id
        self.path = path
        self.sha256 = sha256

    def fetch_bundle(self, kernel_id: str) -> tuple[bytes, str]:
        """Return the bundle's bytes and SHA-256."""
        if kernel_id != self.kernel_id:
            raise KeyError(kernel_id)
        return Path(self.path).read_bytes(), self.sha256


class Grafter:
    """The step-boundary work of one run: request, poll, germinate, advance.

    Args:
        spec: The run's settings.
        model: The wrapped model.
        optimizer: Its optimizer.
    """

    def __init__(self, spec: dict[str, Any], model: Any, optimizer: Any) -> None:
        """Prepare the loader (precompiled modes) or the blueprint (compile mode)."""
        import torch

        from esper.blueprints.library import builtin
        from esper.kasmina.loader import KernelLoader

        self.spec = spec
        self.model = model
        self.optimizer = optimizer
        self.slot = model.slot(SLOT)
        self.bundle = spec["bundle"]
        self.ir = builtin(BLUEPRINT)
        self.bindings = {"C": spec["hidden"]}
        self.loader: KernelLoader | None = None
        if spec["mode"].startswith("precompiled"):
            self.loader = KernelLoader(
                FileSource(self.bundle["kernel_id"], self.bundle["path"], self.bundle["sha256"]),
                load_exported_program=spec["mode"] == "precompiled",
                device=torch.device(spec["device"]) if spec["mode"].endswith("-warm") else None,
            )
        self.request_step: int | None = None
        self.germinated_step: int | None = None
        self.load_seconds: float | None = None
        self.deadline = 0.0

    def done(self, step: int) -> bool:
        """Whether the run has its steps after germination."""
        return self.germinated_step is not None and step > self.germinated_step + (
            self.spec["after_steps"]
        )

    def boundary(self, step: int) -> None:
        """Do what the controller does at the boundary before ``step``."""
        import torch

        from esper.blueprints.builder import build_module

        if self.germinated_step is not None and step == self.germinated_step + 1:
            self.slot.advance(step)  # GERMINATED -> TRAINING: the seed runs from this step on
        if step == self.spec["graft_step"]:
            self.request_step = step
            self.deadline = time.perf_counter() + self.spec["max_wait_seconds"]
            if self.loader is not None:
                self.loader.request(self.bundle["kernel_id"])
            else:
                seed = torch.compile(build_module(self.ir, self.bindings))
                self._germinate(seed, self.bundle["kernel_id"], step)
        waiting = self.request_step is not None and self.germinated_step is None
        if self.loader is not None and waiting:
            kernel = self.loader.ready(self.bundle["kernel_id"])
            if kernel is not None:
                self._germinate(kernel.fresh_module(), kernel.kernel_id, step)
                self.load_seconds = kernel.load_seconds
            elif time.perf_counter() > self.deadline:
                raise TimeoutError("the kernel did not load in time")

    def _germinate(self, seed: Any, kernel_id: str, step: int) -> None:
        from esper.tolaria.optim import add_seed_group

        self.slot.germinate(
            seed,
            kernel_id=kernel_id,
            ir=self.ir,
            bindings=self.bindings,
            blueprint_name=self.ir.name,
            step=step,
        )
        add_seed_group(self.optimizer, SLOT, self.slot.seed_parameters())
        self.germinated_step = step


def child(spec: dict[str, Any]) -> None:
    """Train, graft, record every step's time; write them as JSON."""
    import torch
    from torch.nn import functional

    import esper
    from esper.zoo.models import mlp

    torch.set_num_threads(spec["threads"])
    device = torch.device(spec["device"])
    # The host memorises its few synthetic batches; on a CPU the shrinking gradients and Adam
    # moments would turn denormal and slow every step more and more.
    flush_denormal = torch.set_flush_denormal(True) if device.type == "cpu" else False
    cuda = device.type == "cuda"
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(1)
    batches = [
        (
            torch.randn(spec["batch"], INPUT_FEATURES, generator=generator).to(device),
            torch.randint(0, NUM_CLASSES, (spec["batch"],), generator=generator).to(device),
        )
        for _ in range(8)
    ]
    host = mlp((INPUT_FEATURES,), NUM_CLASSES, hidden=spec["hidden"], depth=spec["depth"])
    model = esper.wrap(host.to(device), ["blocks.?"], example_input=batches[0][0][:2])
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    grafter = Grafter(spec, model, optimizer)
    times: list[float] = []
    step = 0
    model.train()
    while not grafter.done(step):
        started = time.perf_counter()
        grafter.boundary(step)
        features, labels = batches[step % len(batches)]
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda):
            logits = model(features)
        loss = functional.cross_entropy(logits.float(), labels)
        loss.backward()
        optimizer.step()
        if cuda:
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - started)
        step += 1
    if grafter.loader is not None:
        grafter.loader.close()
    Path(spec["result"]).write_text(
        json.dumps(
            {
                "device": spec["device"],
                "mode": spec["mode"],
                "trial": spec["trial"],
                "warmup_steps": spec["warmup_steps"],
                "request_step": grafter.request_step,
                "germinated_step": grafter.germinated_step,
                "load_seconds": grafter.load_seconds,
                "stage_at_end": grafter.slot.stage.value,
                "seed_received_gradients": all(
                    p.grad is not None for p in grafter.slot.seed_parameters()
                ),
                "torch_threads": torch.get_num_threads(),
                "flush_denormal": flush_denormal,
                "step_seconds": times,
            }
        )
    )


if __name__ == "__main__":
    main()
