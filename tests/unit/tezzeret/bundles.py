"""Kernels compiled once per test session, and bundles derived from them.

torch.export of even a tiny blueprint takes tens of seconds on a loaded 2-core machine, so the
Phase 1 tests share these compilations. Import this module as ``tests.unit.tezzeret.bundles``
everywhere so that the cache below is one per session.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Callable, Mapping

import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors
from torch import Tensor

from esper.blueprints.bundle import KernelBundle, read_bundle, write_bundle
from esper.blueprints.library import builtin
from esper.contracts.blueprint import BlueprintIR
from esper.contracts.bundle import BundleMemberName, KernelBundleManifest
from esper.contracts.kernel import KernelTarget
from esper.tezzeret.compiler import CompiledKernel, CompileOptions, compile_kernel

BLUEPRINT = "low-rank-adapter"
"""The smallest built-in blueprint: one low-rank node, ``up`` zero-initialised."""

TARGET = "cpu:fp32:C=16:b=1,4"
"""A tiny CPU target: 16 channels, batches 1 and 4."""

DOWN = "layers.lora.down.weight"
"""The low-rank adapter's input factor (random at init)."""

UP = "layers.lora.up.weight"
"""Its output factor (zero at init, which makes the seed function-preserving)."""


def ir() -> BlueprintIR:
    return builtin(BLUEPRINT)


def target() -> KernelTarget:
    return KernelTarget.parse(TARGET)


@functools.cache
def compiled(compile_cache: bool = False) -> CompiledKernel:
    """The low-rank adapter compiled for :data:`TARGET` (once per session and option)."""
    return compile_kernel(ir(), target(), CompileOptions(compile_cache=compile_cache))


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def bundle() -> KernelBundle:
    """The verified bundle of :func:`compiled`."""
    data = compiled().data
    return read_bundle(data, sha256(data))


def weights() -> dict[str, Tensor]:
    """The compiled bundle's initial weights."""
    return load_safetensors(bundle().members[BundleMemberName.WEIGHTS])


def manifest_fields(manifest: KernelBundleManifest) -> dict[str, object]:
    """A manifest's fields other than its members (to write a derived bundle)."""
    return manifest.model_dump(exclude={"members"})


def rebundle(
    members: Mapping[BundleMemberName, bytes] | None = None,
    *,
    drop: tuple[BundleMemberName, ...] = (),
    **manifest_changes: object,
) -> bytes:
    """The compiled bundle with members replaced (or dropped) and manifest fields changed."""
    original = bundle()
    new_members = {name: data for name, data in original.members.items() if name not in drop}
    new_members.update(members or {})
    fields = {**manifest_fields(original.manifest), **manifest_changes}
    data, _ = write_bundle(fields, new_members)
    return data


def with_weights(change: Callable[[dict[str, Tensor]], None]) -> bytes:
    """The compiled bundle whose weights went through ``change`` (in place)."""
    state = {name: tensor.clone() for name, tensor in weights().items()}
    change(state)
    return rebundle({BundleMemberName.WEIGHTS: save_safetensors(state)})


def with_nan(name: str = DOWN) -> bytes:
    """The compiled bundle with NaN in one weight (a kernel that produces NaN)."""

    def inject(state: dict[str, Tensor]) -> None:
        state[name][0, 0] = float("nan")

    return with_weights(inject)


def with_perturbed(name: str, scale: float = 0.5) -> bytes:
    """The compiled bundle with one weight moved away from the deterministic initialisation."""

    def perturb(state: dict[str, Tensor]) -> None:
        generator = torch.Generator().manual_seed(7)
        state[name] += scale * torch.randn(state[name].shape, generator=generator)

    return with_weights(perturb)


def with_program(program: bytes) -> bytes:
    """The compiled bundle carrying another exported program."""
    return rebundle({BundleMemberName.EXPORTED_PROGRAM: program})
