"""Urabrask's checks: is a compiled kernel correct, safe to graft, and how fast is it?

A kernel is Validated only when all of these hold, and Rejected with the reasons otherwise:

- the bundle's weights equal the blueprint's deterministic initialisation;
- at graft the seed contributes exactly zero, with finite values (the host is unchanged);
- with perturbed weights, the exported program matches an eager reference built from the IR
  within the dtype's tolerance, with the right output shape and finite values;
- gradients through both agree within tolerance and are finite.

It then measures forward+backward latency (p50/p95) per batch size of the target, peak memory,
parameters and FLOPs. The exported program is loaded with torch's weights-only loader forced on,
so loading a bundle never runs pickled code.
"""

import resource
import statistics
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime

import torch
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

from esper.blueprints.builder import build_module, module_from_bundle
from esper.blueprints.bundle import KernelBundle
from esper.blueprints.exported import load_exported
from esper.blueprints.runtime import TORCH_DTYPES, device_name, example_input, target_device
from esper.contracts.blueprint import BlueprintIR
from esper.contracts.kernel import (
    BenchmarkReport,
    DType,
    KernelTarget,
    LatencyMeasurement,
    Verdict,
)

TOLERANCE: dict[DType, float] = {DType.FP32: 1e-4, DType.BF16: 5e-2, DType.FP16: 1e-2}
"""Largest absolute difference from the eager reference accepted per dtype."""

PERTURBATION_SCALE = 0.1
LATENCY_WARMUP = 3
LATENCY_MIN_ITERATIONS = 10
LATENCY_BUDGET_SECONDS = 0.5


def _perturbed_state(module: nn.Module, seed: int) -> dict[str, Tensor]:
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for name, tensor in module.state_dict().items():
        if tensor.is_floating_point() and not name.endswith(("running_mean", "running_var")):
            noise = torch.randn(tensor.shape, generator=generator) * PERTURBATION_SCALE
            state[name] = noise.to(device=tensor.device, dtype=tensor.dtype)
        else:
            state[name] = tensor.clone()
    return state


def _max_abs(left: Tensor, right: Tensor) -> float:
    return float((left.float() - right.float()).abs().max().item()) if left.numel() else 0.0


def _finite(tensor: Tensor) -> bool:
    return bool(torch.isfinite(tensor.float()).all().item())


def _latency(
    module: nn.Module, ir: BlueprintIR, target: KernelTarget, batch: int
) -> LatencyMeasurement:
    sample = example_input(ir, target, batch)
    device = sample.device
    timings: list[float] = []
    module.train()
    iterations = 0
    budget_end = time.perf_counter() + LATENCY_BUDGET_SECONDS
    while iterations < LATENCY_WARMUP + LATENCY_MIN_ITERATIONS or time.perf_counter() < budget_end:
        module.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        started = time.perf_counter()
        module(sample).float().sum().backward()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if iterations >= LATENCY_WARMUP:
            timings.append((time.perf_counter() - started) * 1000.0)
        iterations += 1
        if iterations >= 1000:
            break
    timings.sort()
    p95_index = min(len(timings) - 1, round(0.95 * (len(timings) - 1)))
    return LatencyMeasurement(
        batch_size=batch, p50_ms=statistics.median(timings), p95_ms=timings[p95_index]
    )


def _flops_per_sample(module: nn.Module, ir: BlueprintIR, target: KernelTarget) -> int:
    sample = example_input(ir, target, 1)
    module.eval()
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        module(sample)
    return int(counter.get_total_flops())


def _peak_memory_bytes(device: torch.device, rss_before_kib: int) -> int:
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    # CPU has no allocator statistics; the process's resident high-water mark growth during
    # the benchmark is the honest upper bound available.
    grown_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before_kib
    return max(0, grown_kib) * 1024


@dataclass
class _Findings:
    reasons: list[str] = field(default_factory=list)
    max_error: float = 0.0
    gradient_error: float = 0.0
    finite: bool = True
    function_preserving: bool = False


def _check_at_graft(
    bundle: KernelBundle, ir: BlueprintIR, target: KernelTarget, findings: _Findings
) -> None:
    device = target_device(target)
    dtype = TORCH_DTYPES[target.dtype]
    seed_module = module_from_bundle(bundle).to(device=device, dtype=dtype)
    reference = build_module(ir, target.bindings).to(device=device, dtype=dtype)
    seed_state = seed_module.state_dict()
    for name, tensor in reference.state_dict().items():
        if not torch.equal(tensor, seed_state[name]):
            findings.reasons.append(
                f"bundle weight '{name}' differs from the blueprint's initialisation"
            )
            break
    probe = example_input(ir, target, max(2, target.batch_sizes[0]))
    seed_module.eval()
    with torch.no_grad():
        at_graft = seed_module(probe)
    findings.finite = _finite(at_graft)
    findings.function_preserving = findings.finite and bool((at_graft == 0).all().item())
    if not findings.finite:
        findings.reasons.append("the kernel yields NaN or Inf at graft")
    elif not findings.function_preserving:
        findings.reasons.append(
            "the seed's contribution at graft is not zero: the host would change"
        )


def _compare_gradients(
    reference: nn.Module, exported: nn.Module, batch: int, findings: _Findings
) -> None:
    reference_grads = dict(reference.named_parameters())
    for name, parameter in exported.named_parameters():
        ours = parameter.grad
        theirs = reference_grads[name].grad if name in reference_grads else None
        if ours is None or theirs is None:
            continue
        if not (_finite(ours) and _finite(theirs)):
            findings.finite = False
            findings.reasons.append(f"batch {batch}: gradient of '{name}' is not finite")
            return
        findings.gradient_error = max(findings.gradient_error, _max_abs(ours, theirs))


def _check_against_reference(
    bundle: KernelBundle, ir: BlueprintIR, target: KernelTarget, findings: _Findings
) -> None:
    device = target_device(target)
    reference = build_module(ir, target.bindings).to(
        device=device, dtype=TORCH_DTYPES[target.dtype]
    )
    exported = load_exported(bundle).to(device)
    # At initialisation the output path is zero, which would make any comparison vacuous;
    # perturbed weights exercise every node.
    perturbed = _perturbed_state(reference, seed=1)
    reference.load_state_dict(perturbed)
    exported.load_state_dict(perturbed, strict=False)
    reference.eval()
    manifest = bundle.manifest
    in_range = [
        batch
        for batch in target.batch_sizes
        if manifest.export_batch_min <= batch <= manifest.export_batch_max
    ]
    if not in_range:
        findings.reasons.append(
            f"the exported program accepts batches {manifest.export_batch_min}.."
            f"{manifest.export_batch_max}, none of the target's {list(target.batch_sizes)}"
        )
    for batch in in_range:
        sample = example_input(ir, target, batch)
        expected = reference(sample)
        actual = exported(sample)
        if actual.shape != expected.shape:
            findings.reasons.append(
                f"batch {batch}: output shape {tuple(actual.shape)} differs from the "
                f"reference's {tuple(expected.shape)}"
            )
            continue
        if not (_finite(actual) and _finite(expected)):
            findings.finite = False
            findings.reasons.append(f"batch {batch}: outputs contain NaN or Inf")
            continue
        findings.max_error = max(findings.max_error, _max_abs(actual, expected))
        reference.zero_grad(set_to_none=True)
        exported.zero_grad(set_to_none=True)
        expected.float().square().mean().backward()
        actual.float().square().mean().backward()
        _compare_gradients(reference, exported, batch, findings)
    tolerance = TOLERANCE[target.dtype]
    if findings.max_error > tolerance:
        findings.reasons.append(
            f"outputs differ from the eager reference by {findings.max_error:.3g} > {tolerance}"
        )
    if findings.gradient_error > tolerance:
        findings.reasons.append(
            f"gradients differ from the eager reference by {findings.gradient_error:.3g} "
            f"> {tolerance}"
        )


def benchmark_bundle(bundle: KernelBundle, kernel_id: str) -> BenchmarkReport:
    """Validate and measure a kernel from its verified bundle.

    Args:
        bundle: The bundle (already verified against Urza's sha256).
        kernel_id: The kernel's id.

    Returns:
        The report, Validated or Rejected with reasons.
    """
    ir = bundle.ir()
    target = bundle.manifest.target
    device = target_device(target)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    findings = _Findings()
    _check_at_graft(bundle, ir, target, findings)
    _check_against_reference(bundle, ir, target, findings)
    module = module_from_bundle(bundle).to(device=device, dtype=TORCH_DTYPES[target.dtype])
    latency = [_latency(module, ir, target, batch) for batch in target.batch_sizes]
    params = sum(parameter.numel() for parameter in module.parameters())
    flops = _flops_per_sample(module, ir, target)
    verdict = Verdict.REJECTED if findings.reasons else Verdict.VALIDATED
    tags = [
        f"export-batch-min:{bundle.manifest.export_batch_min}",
        f"layout:{ir.input.layout.value}",
        f"device:{target.device.value}",
        f"dtype:{target.dtype.value}",
        *(f"blueprint:{tag}" for tag in ir.tags[:8]),
    ]
    return BenchmarkReport(
        kernel_id=kernel_id,
        device_name=device_name(device)[:256],
        torch_version=torch.__version__,
        max_abs_error=findings.max_error,
        tolerance=TOLERANCE[target.dtype],
        gradients_finite=findings.finite,
        gradient_max_abs_error=findings.gradient_error,
        function_preserving=findings.function_preserving,
        latency=latency,
        peak_memory_bytes=_peak_memory_bytes(device, rss_before),
        params=params,
        flops_per_sample=flops,
        verdict=verdict,
        reasons=findings.reasons,
        tags=tags,
        measured_at=datetime.now(UTC),
    )
