"""Tezzeret compile costs, artifact sizes, and what the compile cache buys.

For each built-in blueprint on one target (CPU here, ``cuda`` on a GPU machine):

- compile seconds, cold (fresh process, empty inductor cache directory) and warm (fresh
  process, the inductor cache directory the cold compile left), and the bundle's member sizes;
- the number that justifies the design: time to the first compiled forward+backward in a fresh
  process with an empty inductor cache, without the bundle's compile cache and with it loaded
  first (load time included), as a ratio measured side by side in one run.

Every measurement runs in its own subprocess, so nothing warm leaks between them.

Rerun: ``python benchmarks/compile_cache.py --device cpu --out benchmarks/results/compile_cpu.json``
(``--device cuda`` on a GPU machine; ``--blueprints a,b`` for a subset).
"""

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

_CHILD_COMPILE = """
import json, sys, time
from esper.blueprints.library import builtin
from esper.contracts.kernel import KernelTarget
from esper.tezzeret.compiler import compile_kernel
ir = builtin(sys.argv[1]); target = KernelTarget.parse(sys.argv[2])
started = time.perf_counter()
compiled = compile_kernel(ir, target)
seconds = time.perf_counter() - started
open(sys.argv[3], "wb").write(compiled.data)
print(json.dumps({
    "seconds": seconds,
    "compile_cache_seconds": compiled.manifest.compile_cache_seconds,
    "bundle_bytes": len(compiled.data),
    "members": {m.name.value: m.size_bytes for m in compiled.manifest.members},
}))
"""

_CHILD_FIRST_STEP = """
import json, sys, time
started = time.perf_counter()
import torch
from esper.blueprints.builder import module_from_bundle
from esper.blueprints.bundle import read_bundle
from esper.blueprints.runtime import TORCH_DTYPES, example_input, target_device
from esper.contracts.bundle import BundleMemberName
imported = time.perf_counter()
bundle = read_bundle(open(sys.argv[1], "rb").read())
target = bundle.manifest.target
use_cache = sys.argv[2] == "with-cache"
load_seconds = 0.0
if use_cache:
    load_started = time.perf_counter()
    torch.compiler.load_cache_artifacts(bundle.get(BundleMemberName.COMPILE_CACHE))
    load_seconds = time.perf_counter() - load_started
device = target_device(target)
module = module_from_bundle(bundle).to(device=device, dtype=TORCH_DTYPES[target.dtype])
sample = example_input(bundle.ir(), target, max(2, min(target.batch_sizes[-1], 64)))
step_started = time.perf_counter()
compiled = torch.compile(module)
compiled(sample).float().sum().backward()
if device.type == "cuda":
    torch.cuda.synchronize()
done = time.perf_counter()
print(json.dumps({
    "first_step_seconds": done - step_started + load_seconds,
    "cache_load_seconds": load_seconds,
    "import_seconds": imported - started,
}))
"""

SIZES = {
    "features": "C=256",
    "image": "C=64,H=32,W=32",
    "sequence": "C=128,T=64",
}


def _child(code: str, args: list[str], cache_dir: str) -> dict[str, object]:
    environment = {
        **os.environ,
        "TORCHINDUCTOR_CACHE_DIR": cache_dir,
        "PYTHONPATH": os.pathsep.join(
            part for part in (str(ROOT / "src"), os.environ.get("PYTHONPATH", "")) if part
        ),
    }
    result = subprocess.run(
        [sys.executable, "-c", code, *args],
        capture_output=True,
        text=True,
        env=environment,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(f"benchmark child failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def _machine() -> dict[str, object]:
    import torch

    info: dict[str, object] = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu_count": os.cpu_count(),
    }
    cpu_model = ""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    info["cpu_model"] = cpu_model
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def _git_revision() -> str:
    result = subprocess.run(
        ["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=ROOT, check=False
    )
    return result.stdout.strip() or "unknown"


def _target(layout: str, device: str) -> str:
    if device == "cuda":
        import torch

        major, minor = torch.cuda.get_device_capability()
        return f"cuda@{major}.{minor}:fp32:{SIZES[layout]}:b=1,32"
    return f"cpu:fp32:{SIZES[layout]}:b=1,32"


def main() -> None:
    """Run the benchmark and write the JSON result."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--blueprints", default="", help="comma-separated subset")
    parser.add_argument("--out", type=Path, required=True)
    arguments = parser.parse_args()

    sys.path.insert(0, str(ROOT / "src"))
    from esper.blueprints.library import LIBRARY

    names = [name for name in arguments.blueprints.split(",") if name] or sorted(LIBRARY)
    rows: list[dict[str, object]] = []
    result: dict[str, object] = {
        "benchmark": "compile_cache",
        "command": shlex.join([sys.executable, *sys.argv]),
        "git_revision": _git_revision(),
        "recorded_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": _machine(),
        "device": arguments.device,
        "rows": rows,
    }
    arguments.out.parent.mkdir(parents=True, exist_ok=True)
    for name in names:
        target = _target(LIBRARY[name].input.layout.value, arguments.device)
        with tempfile.TemporaryDirectory(prefix="esper-bench-") as scratch:
            bundle_path = str(Path(scratch) / "bundle.zip")
            shared_cache = str(Path(scratch) / "inductor-shared")
            cold = _child(_CHILD_COMPILE, [name, target, bundle_path], shared_cache)
            warm = _child(_CHILD_COMPILE, [name, target, bundle_path + ".warm"], shared_cache)
            without = _child(
                _CHILD_FIRST_STEP, [bundle_path, "without-cache"], str(Path(scratch) / "a")
            )
            with_cache = _child(
                _CHILD_FIRST_STEP, [bundle_path, "with-cache"], str(Path(scratch) / "b")
            )
        row = {
            "blueprint": name,
            "target": target,
            "compile_seconds_cold": cold["seconds"],
            "compile_seconds_warm": warm["seconds"],
            "bundle_bytes": cold["bundle_bytes"],
            "members": cold["members"],
            "first_step_seconds_without_cache": without["first_step_seconds"],
            "first_step_seconds_with_cache": with_cache["first_step_seconds"],
            "cache_load_seconds": with_cache["cache_load_seconds"],
            "with_over_without": float(with_cache["first_step_seconds"])
            / float(without["first_step_seconds"]),
        }
        rows.append(row)
        print(
            f"{name:22s} cold {row['compile_seconds_cold']:7.1f}s warm "
            f"{row['compile_seconds_warm']:7.1f}s bundle {row['bundle_bytes'] / 1024:8.0f} KiB "
            f"first step {row['first_step_seconds_without_cache']:6.1f}s -> "
            f"{row['first_step_seconds_with_cache']:6.1f}s ({row['with_over_without']:.2f}x)",
            flush=True,
        )
        # Written after every row, so a run cut short keeps what it measured.
        arguments.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {arguments.out}")


if __name__ == "__main__":
    main()
