"""Compile a blueprint for a target into a kernel artifact bundle.

The bundle holds the ``torch.export`` program (dynamic batch dimension), the initial weights
(seeded from the blueprint hash, so deterministic), the compile cache produced by compiling the
forward and backward pass on the target, and optionally an AOTInductor package. Compilation is
slow (seconds to minutes) and therefore only ever runs in a worker process, never on a
training thread.
"""

import copy
import io
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from esper.blueprints.builder import BlueprintModule, build_module, weights_to_bytes
from esper.blueprints.bundle import write_bundle
from esper.blueprints.runtime import TORCH_DTYPES, device_name, example_input, target_device
from esper.blueprints.shapes import check_graftable
from esper.contracts.blueprint import BlueprintIR
from esper.contracts.bundle import BundleMemberName, KernelBundleManifest
from esper.contracts.kernel import KernelTarget, kernel_id

EXPORT_MAX_BATCH = 65535
"""Largest batch an exported program is asked to accept (CUDA's grid limit)."""


@dataclass(frozen=True)
class CompileOptions:
    """What to produce besides the exported program and weights.

    Attributes:
        compile_cache: Compile forward+backward with ``torch.compile`` and keep the cache.
        aoti: Also build an AOTInductor package for inference.
    """

    compile_cache: bool = True
    aoti: bool = False


@dataclass(frozen=True)
class CompiledKernel:
    """A compiled bundle.

    Attributes:
        data: The bundle bytes.
        manifest: Its manifest.
    """

    data: bytes
    manifest: KernelBundleManifest


@dataclass(frozen=True)
class ExportedKernel:
    """An exported program, its bytes and the batch sizes it accepts.

    Attributes:
        program: The program.
        data: Its ``torch.export.save`` bytes.
        batch_min: Smallest batch it accepts.
        batch_max: Largest batch it accepts.
    """

    program: torch.export.ExportedProgram
    data: bytes
    batch_min: int
    batch_max: int


def export_program(module: BlueprintModule, sample: torch.Tensor) -> ExportedKernel:
    """Export a module in eval mode with a dynamic batch dimension.

    The batch range asked for is 1 to 65535. Some device paths (cuDNN convolutions on CUDA)
    guard the batch at >= 2; the export then falls back to the range torch can prove, which is
    recorded so Urabrask knows which batch sizes the program takes.

    Args:
        module: The module.
        sample: An example input with batch size >= 2 (a batch of 1 would be specialised).

    Returns:
        The exported kernel.
    """
    was_training = module.training
    module.eval()
    try:
        batch = torch.export.Dim("batch", min=1, max=EXPORT_MAX_BATCH)
        program = torch.export.export(module, (sample,), dynamic_shapes={"x": {0: batch}})
    except torch._dynamo.exc.UserError:
        program = torch.export.export(
            module, (sample,), dynamic_shapes={"x": {0: torch.export.Dim.AUTO}}
        )
    finally:
        module.train(was_training)
    batch_min, batch_max = _batch_range(program)
    buffer = io.BytesIO()
    torch.export.save(program, buffer)
    return ExportedKernel(program, buffer.getvalue(), batch_min, batch_max)


def _batch_range(program: torch.export.ExportedProgram) -> tuple[int, int]:
    placeholder = next(
        node for node in program.graph.nodes if node.op == "placeholder" and node.name == "x"
    )
    size = placeholder.meta["val"].shape[0]
    if isinstance(size, int):
        return size, size
    value_range = program.range_constraints[size.node.expr]
    upper = value_range.upper
    maximum = EXPORT_MAX_BATCH if not upper.is_finite else min(int(upper), EXPORT_MAX_BATCH)
    return int(value_range.lower), maximum


def compile_cache(module: BlueprintModule, sample: torch.Tensor) -> bytes | None:
    """Compile forward and backward with ``torch.compile`` and return the cache artifacts.

    The module is copied so the caller's weights are untouched by the backward pass.

    Args:
        module: The module.
        sample: An example input.

    Returns:
        The bytes of ``torch.compiler.save_cache_artifacts()``, or None when torch produced
        none.
    """
    # Only this compilation's artifacts belong in this kernel's cache.
    torch._dynamo.reset()
    torch.compiler.save_cache_artifacts()
    compiled = torch.compile(copy.deepcopy(module))
    output = compiled(sample)
    output.float().sum().backward()
    artifacts = torch.compiler.save_cache_artifacts()
    return None if artifacts is None else artifacts[0]


def aoti_package(program: torch.export.ExportedProgram) -> bytes:
    """Build an AOTInductor package of an exported program (inference only).

    Args:
        program: The exported program.

    Returns:
        The package's bytes.
    """
    with tempfile.TemporaryDirectory(prefix="esper-aoti-") as directory:
        path = Path(directory) / "aoti.pt2"
        torch._inductor.aoti_compile_and_package(program, package_path=str(path))
        return path.read_bytes()


def compile_kernel(
    ir: BlueprintIR, target: KernelTarget, options: CompileOptions | None = None
) -> CompiledKernel:
    """Compile a blueprint for a target into a bundle.

    Args:
        ir: The blueprint.
        target: The target; it must bind every symbol and match this machine's device.
        options: What to produce besides the program and weights.

    Returns:
        The bundle and its manifest.

    Raises:
        TargetUnavailableError: When the target does not fit this machine.
        ShapeError: When the blueprint does not fit the target's bindings.
    """
    chosen = options or CompileOptions()
    check_graftable(ir, target.bindings)
    device = target_device(target)
    started = time.perf_counter()
    module = build_module(ir, target.bindings).to(device=device, dtype=TORCH_DTYPES[target.dtype])
    members: dict[BundleMemberName, bytes] = {
        BundleMemberName.IR: ir.to_json().encode(),
        BundleMemberName.WEIGHTS: weights_to_bytes(module),
    }
    sample = example_input(ir, target, max(2, min(target.batch_sizes[-1], 64)))
    exported = export_program(module, sample)
    members[BundleMemberName.EXPORTED_PROGRAM] = exported.data
    cache_seconds: float | None = None
    if chosen.compile_cache:
        cache_started = time.perf_counter()
        cache = compile_cache(module, sample)
        cache_seconds = time.perf_counter() - cache_started
        if cache is not None:
            members[BundleMemberName.COMPILE_CACHE] = cache
    if chosen.aoti:
        members[BundleMemberName.AOTI_PACKAGE] = aoti_package(exported.program)
    blueprint_hash = ir.canonical_hash()
    data, manifest = write_bundle(
        {
            "kernel_id": kernel_id(blueprint_hash, target),
            "blueprint_hash": blueprint_hash,
            "target": target,
            "torch_version": torch.__version__,
            "device_name": device_name(device),
            "compile_seconds": time.perf_counter() - started,
            "compile_cache_seconds": cache_seconds,
            "export_batch_min": exported.batch_min,
            "export_batch_max": exported.batch_max,
        },
        members,
    )
    return CompiledKernel(data=data, manifest=manifest)
