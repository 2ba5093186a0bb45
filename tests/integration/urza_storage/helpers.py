"""Factories shared by Urza's storage tests: blueprints, targets, reports, bundles."""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, TypeVar

import pytest

from esper.contracts.blueprint import BlueprintIR
from esper.contracts.kernel import (
    BenchmarkReport,
    KernelArtifact,
    KernelPhase,
    KernelTarget,
    kernel_id,
)
from esper.contracts.urza_api import KernelCreate, PhaseChange
from esper.urza.repository import UrzaRepository

T = TypeVar("T")

MEASURED_AT = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)


def blueprint(
    width: int = 128,
    *,
    name: str = "residual-mlp",
    tags: tuple[str, ...] = ("mlp", "residual"),
    description: str = "A residual MLP block.",
) -> BlueprintIR:
    """A residual MLP block over a symbolic width C; ``width`` changes its identity."""
    return BlueprintIR.model_validate(
        {
            "name": name,
            "description": description,
            "tags": list(tags),
            "input": {"layout": "features", "shape": ["C"]},
            "nodes": [
                {"id": "up", "op": "linear", "inputs": ["input"], "params": {"outFeatures": width}},
                {"id": "act", "op": "gelu", "inputs": ["up"]},
                {
                    "id": "down",
                    "op": "linear",
                    "inputs": ["act"],
                    "params": {"outFeatures": "C", "init": "zeros"},
                },
                {"id": "sum", "op": "add", "inputs": ["input", "down"]},
            ],
            "output": "sum",
        }
    )


def cpu_target(channels: int = 64, **changes: Any) -> KernelTarget:
    """A CPU target binding C."""
    return KernelTarget.model_validate({"device": "cpu", "bindings": {"C": channels}, **changes})


def cuda_target(channels: int = 64) -> KernelTarget:
    """A CUDA (sm 9.0, bf16) target binding C."""
    return KernelTarget(
        device="cuda",
        compute_capability="9.0",
        dtype="bf16",
        bindings={"C": channels},
        batch_sizes=[1, 32],
    )


def bundle(label: str, size: int = 2048) -> tuple[bytes, str]:
    """Deterministic artifact bytes and their sha256."""
    seed = hashlib.sha256(label.encode()).digest()
    data = (seed * (size // len(seed) + 1))[:size]
    return data, hashlib.sha256(data).hexdigest()


def report(
    identifier: str,
    *,
    verdict: str = "Validated",
    p50_at_largest: float = 2.0,
    **changes: Any,
) -> BenchmarkReport:
    """A consistent benchmark report for ``identifier``."""
    data: dict[str, Any] = {
        "kernel_id": identifier,
        "device_name": "cpu",
        "torch_version": "2.11.0",
        "max_abs_error": 1e-6,
        "tolerance": 1e-4,
        "gradients_finite": True,
        "gradient_max_abs_error": 2e-6,
        "function_preserving": True,
        "latency": [
            {"batch_size": 1, "p50_ms": 0.1, "p95_ms": 0.2},
            {"batch_size": 256, "p50_ms": p50_at_largest, "p95_ms": p50_at_largest + 0.5},
        ],
        "peak_memory_bytes": 1 << 20,
        "params": 16_512,
        "flops_per_sample": 33_000,
        "verdict": verdict,
        "reasons": [] if verdict == "Validated" else ["slower than eager"],
        "tags": [],
        "measured_at": MEASURED_AT,
    }
    data.update(changes)
    return BenchmarkReport.model_validate(data)


def register(
    repo: UrzaRepository,
    target: KernelTarget | None = None,
    *,
    ir: BlueprintIR | None = None,
    tags: tuple[str, ...] = (),
) -> KernelArtifact:
    """Register a blueprint (if needed) and a Pending kernel for it."""
    record, _ = repo.put_blueprint(ir or blueprint())
    artifact, _ = repo.create_kernel(
        KernelCreate(blueprint_hash=record.hash, target=target or cpu_target(), tags=list(tags))
    )
    return artifact


def compiled(
    repo: UrzaRepository,
    target: KernelTarget | None = None,
    *,
    label: str = "bundle",
    ir: BlueprintIR | None = None,
    tags: tuple[str, ...] = (),
) -> KernelArtifact:
    """A kernel moved to Compiled with an uploaded bundle made from ``label``."""
    artifact = register(repo, target, ir=ir, tags=tags)
    repo.change_phase(artifact.id, PhaseChange(phase=KernelPhase.COMPILING))
    data, digest = bundle(label)
    repo.upload_artifact(artifact.id, data, digest)
    return repo.change_phase(
        artifact.id,
        PhaseChange(phase=KernelPhase.COMPILED, compile_seconds=3.5, torch_version="2.11.0"),
    )


def judged(
    repo: UrzaRepository,
    target: KernelTarget | None = None,
    *,
    verdict: str = "Validated",
    p50_at_largest: float = 2.0,
    label: str = "bundle",
    tags: tuple[str, ...] = (),
) -> KernelArtifact:
    """A kernel taken through compile and validation to ``verdict``."""
    artifact = compiled(repo, target, label=label, tags=tags)
    repo.change_phase(artifact.id, PhaseChange(phase=KernelPhase.VALIDATING))
    return repo.attach_report(
        artifact.id, report(artifact.id, verdict=verdict, p50_at_largest=p50_at_largest)
    )


def expected_kernel_id(ir: BlueprintIR, target: KernelTarget) -> str:
    """The id a kernel of ``ir`` on ``target`` gets."""
    return kernel_id(ir.canonical_hash(), target)


def run_bounded(call: Callable[[], T], seconds: float) -> T:
    """Run ``call`` in a daemon thread; fail the test if it has not finished in ``seconds``.

    Returns what the call returned and re-raises what it raised, so a test can assert the
    exception type; a call that hangs is reported as a hang instead of blocking the suite.
    """
    outcome: dict[str, Any] = {}

    def target() -> None:
        try:
            outcome["value"] = call()
        except BaseException as error:  # noqa: BLE001 - re-raised in the caller's thread below
            outcome["error"] = error

    worker = threading.Thread(target=target, daemon=True)
    worker.start()
    worker.join(seconds)
    if worker.is_alive():
        raise AssertionError(f"the call did not return within {seconds:.0f}s (it hangs)")
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


BACKENDS = pytest.mark.parametrize(
    "backend",
    [pytest.param("sqlite"), pytest.param("postgres", marks=pytest.mark.postgres)],
    indirect=True,
)
"""Runs a test on both metadata backends (the ``backend`` fixture, through ``storage``)."""

BLOB_STORES = pytest.mark.parametrize(
    "blob_kind",
    [pytest.param("local"), pytest.param("s3", marks=pytest.mark.s3)],
    indirect=True,
)
"""Runs a test on both blob stores (the ``blob_kind`` fixture, through ``blob_backend``)."""
