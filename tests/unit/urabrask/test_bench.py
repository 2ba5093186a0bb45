"""Urabrask's checks on real compiled bundles: what is Validated, and why others are Rejected."""

from __future__ import annotations

import io
import os

import pytest
import torch
from torch import Tensor, nn

from esper.blueprints.builder import BlueprintModule, build_module
from esper.blueprints.bundle import KernelBundle, read_bundle
from esper.blueprints.exported import weights_only_loading
from esper.blueprints.shapes import check_graftable
from esper.contracts.kernel import BenchmarkReport, Verdict
from esper.tezzeret.compiler import export_program
from esper.urabrask import bench
from esper.urabrask.bench import benchmark_bundle
from tests.unit.tezzeret import bundles

VARIABLE = "TORCH_FORCE_WEIGHTS_ONLY_LOAD"


@pytest.fixture(autouse=True)
def _short_latency_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    """Latency is measured for a minimum number of iterations; the time budget adds nothing."""
    monkeypatch.setattr(bench, "LATENCY_BUDGET_SECONDS", 0.0)


def _bench(data: bytes) -> BenchmarkReport:
    bundle: KernelBundle = read_bundle(data, bundles.sha256(data))
    return benchmark_bundle(bundle, bundle.manifest.kernel_id)


def _exported(module: nn.Module) -> bytes:
    sample = torch.randn(4, 16, generator=torch.Generator().manual_seed(0))
    return export_program(module, sample).data  # type: ignore[arg-type]


class _Widening(nn.Module):
    """A program whose output has the wrong shape for a seed (32 features from 16)."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(16, 32)

    def forward(self, x: Tensor) -> Tensor:
        return self.linear(x)


class _Doubled(nn.Module):
    """The blueprint's layers (same parameter names) computing twice the right answer."""

    def __init__(self, module: BlueprintModule) -> None:
        super().__init__()
        self.layers = module.layers

    def forward(self, x: Tensor) -> Tensor:
        return 2 * self.layers["lora"](x)


def test_good_bundle_is_validated_with_a_consistent_report() -> None:
    data = bundles.compiled().data
    report = _bench(data)

    assert report.verdict is Verdict.VALIDATED, report.reasons
    assert report.reasons == []
    assert report.kernel_id == bundles.compiled().manifest.kernel_id
    assert report.function_preserving is True
    assert report.gradients_finite is True
    assert report.tolerance == 1e-4
    assert report.max_abs_error <= report.tolerance
    assert report.gradient_max_abs_error <= report.tolerance
    assert [item.batch_size for item in report.latency] == [1, 4]
    assert all(0 < item.p50_ms <= item.p95_ms for item in report.latency)
    shapes = check_graftable(bundles.ir(), bundles.target().bindings)
    assert report.params == shapes.params == 2 * 16 * 8
    assert report.flops_per_sample == shapes.flops == 2 * (16 * 8 + 8 * 16)
    assert report.peak_memory_bytes >= 0
    assert report.device_name.startswith("cpu")
    assert report.torch_version == torch.__version__
    assert report.tags == [
        "export-batch-min:1",
        "layout:features",
        "device:cpu",
        "dtype:fp32",
        "blueprint:mlp",
        "blueprint:low-rank",
    ]


def test_weights_only_loading_sets_and_restores_the_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(VARIABLE, raising=False)
    with weights_only_loading():
        assert os.environ[VARIABLE] == "1"
    assert VARIABLE not in os.environ

    monkeypatch.setenv(VARIABLE, "0")
    inside: list[str] = []

    def fail_inside() -> None:
        with weights_only_loading():
            inside.append(os.environ[VARIABLE])
            raise RuntimeError("inside")

    with pytest.raises(RuntimeError, match="inside"):
        fail_inside()
    assert inside == ["1"]
    assert os.environ[VARIABLE] == "0"


def test_exported_program_is_loaded_with_the_weights_only_unpickler(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    seen: list[str | None] = []
    real_load = torch.export.load

    def spy(source: io.BytesIO) -> torch.export.ExportedProgram:
        seen.append(os.environ.get(VARIABLE))
        return real_load(source)

    monkeypatch.delenv(VARIABLE, raising=False)
    monkeypatch.setattr(torch.export, "load", spy)
    bench.load_exported(bundles.bundle())
    assert seen == ["1"]
    assert VARIABLE not in os.environ


def test_weights_that_differ_from_the_initialisation_are_rejected() -> None:
    report = _bench(bundles.with_perturbed(bundles.DOWN))

    assert report.verdict is Verdict.REJECTED
    assert report.reasons == [
        f"bundle weight '{bundles.DOWN}' differs from the blueprint's initialisation"
    ]
    # The zero output factor still makes the contribution zero.
    assert report.function_preserving is True


def test_non_zero_contribution_at_graft_is_rejected() -> None:
    report = _bench(bundles.with_perturbed(bundles.UP))

    assert report.verdict is Verdict.REJECTED
    assert "the seed's contribution at graft is not zero: the host would change" in report.reasons
    assert report.function_preserving is False


def test_nan_at_graft_is_rejected() -> None:
    report = _bench(bundles.with_nan())

    assert report.verdict is Verdict.REJECTED
    assert "the kernel yields NaN or Inf at graft" in report.reasons
    assert report.gradients_finite is False
    assert report.function_preserving is False


def test_program_with_the_wrong_output_shape_is_rejected() -> None:
    report = _bench(bundles.with_program(_exported(_Widening())))

    assert report.verdict is Verdict.REJECTED
    assert "batch 1: output shape (1, 32) differs from the reference's (1, 16)" in report.reasons
    assert "batch 4: output shape (4, 32) differs from the reference's (4, 16)" in report.reasons


def test_program_that_disagrees_with_the_eager_reference_is_rejected() -> None:
    module = build_module(bundles.ir(), bundles.target().bindings)

    report = _bench(bundles.with_program(_exported(_Doubled(module))))

    assert report.verdict is Verdict.REJECTED
    assert report.max_abs_error > report.tolerance
    assert report.gradient_max_abs_error > report.tolerance
    assert any(
        reason.startswith("outputs differ from the eager reference") for reason in report.reasons
    )
    assert any(
        reason.startswith("gradients differ from the eager reference") for reason in report.reasons
    )
    # At graft the bundle's IR and weights are still the blueprint's.
    assert report.function_preserving is True
