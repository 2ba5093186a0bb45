"""Tezzeret's compiler: the bundle it produces, deterministic weights, a dynamic batch."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load as load_safetensors

from esper.blueprints.builder import build_module, weights_to_bytes
from esper.blueprints.bundle import read_bundle
from esper.blueprints.exported import load_exported
from esper.blueprints.library import builtin
from esper.blueprints.runtime import TargetUnavailableError
from esper.blueprints.shapes import ShapeError
from esper.contracts.bundle import BundleMemberName
from esper.contracts.kernel import KernelTarget, kernel_id
from esper.tezzeret.compiler import EXPORT_MAX_BATCH, CompileOptions, compile_kernel
from tests.unit.tezzeret import bundles

REQUIRED = {BundleMemberName.IR, BundleMemberName.WEIGHTS, BundleMemberName.EXPORTED_PROGRAM}


def test_bundle_manifest_lists_the_program_weights_and_ir() -> None:
    compiled = bundles.compiled()
    manifest = compiled.manifest
    ir = bundles.ir()
    assert {member.name for member in manifest.members} == REQUIRED
    assert manifest.kernel_id == kernel_id(ir.canonical_hash(), bundles.target())
    assert manifest.blueprint_hash == ir.canonical_hash()
    assert manifest.target == bundles.target()
    assert manifest.torch_version == torch.__version__
    assert manifest.device_name.startswith("cpu")
    assert manifest.compile_seconds > 0
    assert manifest.compile_cache_seconds is None
    assert (manifest.export_batch_min, manifest.export_batch_max) == (1, EXPORT_MAX_BATCH)


def test_every_member_verifies_against_the_manifest() -> None:
    compiled = bundles.compiled()
    bundle = read_bundle(compiled.data, bundles.sha256(compiled.data))
    assert bundle.manifest == compiled.manifest
    for entry in compiled.manifest.members:
        content = bundle.members[entry.name]
        assert bundles.sha256(content) == entry.sha256
        assert len(content) == entry.size_bytes
    assert bundle.ir() == bundles.ir()


def test_weights_are_the_deterministic_initialisation() -> None:
    stored = bundles.bundle().members[BundleMemberName.WEIGHTS]
    torch.manual_seed(12345)  # the global RNG does not matter: init is seeded from the hash
    rebuilt = build_module(bundles.ir(), bundles.target().bindings)
    assert weights_to_bytes(rebuilt) == stored
    state = load_safetensors(stored)
    assert set(state) == {bundles.DOWN, bundles.UP}
    assert torch.count_nonzero(state[bundles.DOWN]) > 0
    assert torch.count_nonzero(state[bundles.UP]) == 0


def test_exported_program_has_a_dynamic_batch_dimension() -> None:
    program = load_exported(bundles.bundle())
    reference = build_module(bundles.ir(), bundles.target().bindings)
    generator = torch.Generator().manual_seed(3)
    perturbed = {
        name: torch.randn(tensor.shape, generator=generator)
        for name, tensor in reference.state_dict().items()
    }
    reference.load_state_dict(perturbed)
    program.load_state_dict(perturbed)
    for batch in (1, 5):
        sample = torch.randn(batch, 16, generator=generator)
        output = program(sample)
        assert output.shape == (batch, 16)
        torch.testing.assert_close(output, reference(sample))


def test_compile_cache_is_shipped_when_enabled() -> None:
    compiled = bundles.compiled(compile_cache=True)
    names = {member.name for member in compiled.manifest.members}
    assert names == REQUIRED | {BundleMemberName.COMPILE_CACHE}
    assert compiled.manifest.compile_cache_seconds is not None
    assert 0 < compiled.manifest.compile_cache_seconds <= compiled.manifest.compile_seconds
    bundle = read_bundle(compiled.data, bundles.sha256(compiled.data))
    cache = bundle.get(BundleMemberName.COMPILE_CACHE)
    assert cache
    # What torch saved is what torch loads.
    assert torch.compiler.load_cache_artifacts(cache) is not None
    # The program and weights do not depend on the option.
    plain = bundles.bundle()
    for name in (BundleMemberName.WEIGHTS, BundleMemberName.IR):
        assert bundle.members[name] == plain.members[name]


def test_unbound_target_is_refused() -> None:
    unbound = KernelTarget.parse("cpu:fp32:H=16:b=1,4")
    with pytest.raises(ShapeError, match="symbol\\(s\\) C are not bound"):
        compile_kernel(bundles.ir(), unbound, CompileOptions(compile_cache=False))


def test_target_whose_sizes_break_the_blueprint_is_refused() -> None:
    broken = KernelTarget.parse("cpu:fp32:C=18,T=8:b=1,4")
    with pytest.raises(ShapeError, match=r"node 'attn'.*not divisible by 4 heads"):
        compile_kernel(builtin("self-attention"), broken, CompileOptions(compile_cache=False))


def test_cuda_target_this_machine_cannot_run_is_refused() -> None:
    # Compute capability 1.0: no GPU this torch supports has it, so this holds with or without
    # a GPU (no CUDA at all, or the wrong architecture).
    cuda = KernelTarget.parse("cuda@1.0:fp32:C=16:b=1,4")
    with pytest.raises(TargetUnavailableError, match=r"cuda@1\.0:fp32:C=16"):
        compile_kernel(bundles.ir(), cuda, CompileOptions(compile_cache=False))
