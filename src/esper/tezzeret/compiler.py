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

EXPORT_MAX_BATCH = 65536


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


def export_program(
    module: BlueprintModule, sample: torch.Tensor
) -> tuple[torch.export.ExportedProgram, bytes]:
    """Export a module in eval mode with a dynamic batch dimension.

    Args:
        module: The module.
        sample: An example input with batch size >= 2 (a batch of 1 would be specialised).

    Returns:
        The program and its ``torch.export.save`` bytes.
    """
    batch = torch.export.Dim("batch", min=1, max=EXPORT_MAX_BATCH)
    was_training = module.training
    module.eval()
    program = torch.export.export(module, (sample,), dynamic_shapes={"x": {0: batch}})
    module.train(was_training)
    buffer = io.BytesIO()
    torch.export.save(program, buffer)
    return program, buffer.getvalue()


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
    program, members[BundleMemberName.EXPORTED_PROGRAM] = export_program(module, sample)
    cache_seconds: float | None = None
    if chosen.compile_cache:
        cache_started = time.perf_counter()
        cache = compile_cache(module, sample)
        cache_seconds = time.perf_counter() - cache_started
        if cache is not None:
            members[BundleMemberName.COMPILE_CACHE] = cache
    if chosen.aoti:
        members[BundleMemberName.AOTI_PACKAGE] = aoti_package(program)
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
        },
        members,
    )
    return CompiledKernel(data=data, manifest=manifest)
