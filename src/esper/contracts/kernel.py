"""Kernel contracts: compile targets, compiled artifacts, their phases and benchmark reports.

A kernel is one blueprint compiled for one :class:`KernelTarget`. Its identity is the pair
(blueprint hash, canonical target), condensed by :func:`kernel_id`; the sha256 of its artifact
bundle is its integrity check.
"""

import hashlib
import json
import re
from datetime import datetime
from enum import StrEnum
from typing import Literal

from pydantic import Field, model_validator

from esper.contracts._base import Contract
from esper.contracts.lifecycle import TransitionTable
from esper.contracts.types import (
    Count,
    KernelId,
    LongText,
    NonNegativeFloat,
    Sha256Hex,
    ShortText,
    Size,
    Symbol,
    Tag,
)

KERNEL_ID_PREFIX = "k-"

SIGNING_KEY_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$"
"""A signing key's id: the characters a Kubernetes Secret allows in a key name (a key ring is
mounted from a Secret, one file per key, named by its id)."""


class DeviceKind(StrEnum):
    """Where a kernel runs."""

    CPU = "cpu"
    CUDA = "cuda"


class DType(StrEnum):
    """Floating-point precision a kernel is compiled and validated for."""

    FP32 = "fp32"
    BF16 = "bf16"
    FP16 = "fp16"


DEFAULT_BATCH_SIZES: tuple[int, ...] = (1, 32, 256)
"""Batch sizes a target is benchmarked at when a short form names none."""

_SHORT_FORM = re.compile(
    r"^(?P<device>cpu|cuda)(@(?P<cc>\d{1,2}\.\d))?:(?P<dtype>fp32|bf16|fp16)"
    r"(:(?P<bindings>[A-Z][A-Z0-9_]{0,15}=\d+(,[A-Z][A-Z0-9_]{0,15}=\d+)*))?"
    r"(:b=(?P<batches>\d+(,\d+)*))?$"
)


class KernelTarget(Contract):
    """The hardware, precision and sizes a blueprint is compiled for.

    Attributes:
        device: CPU or CUDA.
        compute_capability: The CUDA compute capability (``"9.0"`` for H100/H200); required for
            CUDA and forbidden for CPU, since a CUDA kernel is only valid on its architecture.
        dtype: Precision.
        bindings: Sizes for the blueprint's dimension symbols (``{"C": 256}``).
        batch_sizes: Batch sizes to validate and benchmark, ascending and unique.
    """

    device: DeviceKind
    compute_capability: str | None = Field(default=None, pattern=r"^\d{1,2}\.\d$")
    dtype: DType = DType.FP32
    bindings: dict[Symbol, Size] = Field(default_factory=dict, max_length=16)
    batch_sizes: list[Size] = Field(
        default_factory=lambda: list(DEFAULT_BATCH_SIZES), min_length=1, max_length=16
    )

    @model_validator(mode="after")
    def _check(self) -> "KernelTarget":
        if self.device is DeviceKind.CUDA and self.compute_capability is None:
            raise ValueError("a cuda target needs computeCapability (for example '9.0')")
        if self.device is DeviceKind.CPU and self.compute_capability is not None:
            raise ValueError("a cpu target takes no computeCapability")
        if list(self.batch_sizes) != sorted(set(self.batch_sizes)):
            raise ValueError(
                f"batchSizes must be ascending and unique, got {list(self.batch_sizes)}"
            )
        return self

    def canonical_json(self) -> str:
        """Return the canonical JSON form (sorted keys, compact, all fields present).

        Returns:
            The JSON text that, with the blueprint hash, identifies a kernel.
        """
        return json.dumps(
            self.model_dump(mode="json", by_alias=True),
            sort_keys=True,
            separators=(",", ":"),
        )

    def short(self) -> str:
        """Return the short string form used on the command line.

        The form is ``DEVICE[@CC]:DTYPE[:SYM=N,...][:b=B1,B2,...]``, for example
        ``cpu:fp32:C=256`` or ``cuda@9.0:bf16:C=256,H=8:b=1,32``. The batch part is omitted when
        it equals the default.

        Returns:
            The short form; :meth:`parse` reads it back to an equal target.
        """
        text = self.device.value
        if self.compute_capability is not None:
            text += f"@{self.compute_capability}"
        text += f":{self.dtype.value}"
        if self.bindings:
            text += ":" + ",".join(f"{key}={self.bindings[key]}" for key in sorted(self.bindings))
        if tuple(self.batch_sizes) != DEFAULT_BATCH_SIZES:
            text += ":b=" + ",".join(str(size) for size in self.batch_sizes)
        return text

    @classmethod
    def parse(cls, text: str) -> "KernelTarget":
        """Parse the short string form (see :meth:`short`).

        Args:
            text: For example ``cpu:fp32:C=256``.

        Returns:
            The target.

        Raises:
            ValueError: When the text is not a valid short form; the message shows the grammar.
        """
        match = _SHORT_FORM.match(text.strip())
        if match is None:
            raise ValueError(
                f"invalid kernel target '{text}': expected DEVICE[@CC]:DTYPE[:SYM=N,...][:b=N,...]"
                ", for example 'cpu:fp32:C=256' or 'cuda@9.0:bf16:C=256:b=1,32'"
            )
        bindings: dict[str, int] = {}
        if match.group("bindings"):
            for pair in match.group("bindings").split(","):
                key, value = pair.split("=")
                if key in bindings:
                    raise ValueError(f"invalid kernel target '{text}': symbol {key} bound twice")
                bindings[key] = int(value)
        batches = match.group("batches")
        return cls(
            device=DeviceKind(match.group("device")),
            compute_capability=match.group("cc"),
            dtype=DType(match.group("dtype")),
            bindings=bindings,
            batch_sizes=(
                [int(size) for size in batches.split(",")] if batches else list(DEFAULT_BATCH_SIZES)
            ),
        )


def kernel_id(blueprint_hash: str, target: KernelTarget) -> str:
    """Return the deterministic id of the kernel for a blueprint on a target.

    Args:
        blueprint_hash: The blueprint's canonical hash.
        target: The compile target.

    Returns:
        ``k-`` followed by the first 24 hex digits of SHA-256 over the hash and the canonical
        target; short enough for Kubernetes names, long enough never to collide in practice.
    """
    digest = hashlib.sha256(f"{blueprint_hash}|{target.canonical_json()}".encode()).hexdigest()
    return KERNEL_ID_PREFIX + digest[:24]


class KernelPhase(StrEnum):
    """Where a kernel is in its life: compiled by Tezzeret, then judged by Urabrask."""

    PENDING = "Pending"
    COMPILING = "Compiling"
    COMPILED = "Compiled"
    VALIDATING = "Validating"
    VALIDATED = "Validated"
    REJECTED = "Rejected"
    FAILED = "Failed"
    SUPERSEDED = "Superseded"


KERNEL_PHASES: TransitionTable[KernelPhase] = TransitionTable(
    "KernelPhase",
    {
        KernelPhase.PENDING: frozenset({KernelPhase.COMPILING, KernelPhase.FAILED}),
        KernelPhase.COMPILING: frozenset({KernelPhase.COMPILED, KernelPhase.FAILED}),
        KernelPhase.COMPILED: frozenset(
            {KernelPhase.VALIDATING, KernelPhase.FAILED, KernelPhase.SUPERSEDED}
        ),
        KernelPhase.VALIDATING: frozenset(
            {KernelPhase.VALIDATED, KernelPhase.REJECTED, KernelPhase.FAILED}
        ),
        KernelPhase.VALIDATED: frozenset({KernelPhase.SUPERSEDED}),
        KernelPhase.REJECTED: frozenset(),
        # A failure is an infrastructure problem (a dead worker, an OOM), not a verdict on the
        # design, so it may be retried from the start.
        KernelPhase.FAILED: frozenset({KernelPhase.PENDING}),
        KernelPhase.SUPERSEDED: frozenset(),
    },
)
"""The legal phase moves of a kernel."""

PHASES_WITH_ARTIFACT = frozenset(
    {
        KernelPhase.COMPILED,
        KernelPhase.VALIDATING,
        KernelPhase.VALIDATED,
        KernelPhase.REJECTED,
        KernelPhase.SUPERSEDED,
    }
)
"""Phases in which the kernel's artifact bundle exists."""


class Verdict(StrEnum):
    """Urabrask's judgement of a kernel."""

    VALIDATED = "Validated"
    REJECTED = "Rejected"


class LatencyMeasurement(Contract):
    """Latency of one forward (+ backward) call at one batch size.

    Attributes:
        batch_size: The batch size measured.
        p50_ms: Median latency in milliseconds.
        p95_ms: 95th-percentile latency in milliseconds.
    """

    batch_size: Size
    p50_ms: NonNegativeFloat
    p95_ms: NonNegativeFloat

    @model_validator(mode="after")
    def _ordered(self) -> "LatencyMeasurement":
        if self.p95_ms < self.p50_ms:
            raise ValueError(f"p95Ms ({self.p95_ms}) is below p50Ms ({self.p50_ms})")
        return self


class BenchmarkReport(Contract):
    """What Urabrask measured about a kernel, and its verdict.

    Attributes:
        kernel_id: The kernel measured.
        device_name: The device it ran on (for example ``NVIDIA H100 80GB HBM3``).
        torch_version: The torch version used.
        max_abs_error: Largest absolute difference from the eager reference.
        tolerance: The tolerance applied for the target's dtype.
        gradients_finite: Whether every gradient was finite.
        gradient_max_abs_error: Largest absolute gradient difference from the reference.
        function_preserving: Whether the blueprint contributed exactly zero at graft.
        latency: Latency per batch size of the target.
        peak_memory_bytes: Peak memory during the measurement.
        params: Parameter count.
        flops_per_sample: Forward FLOPs per sample.
        verdict: Validated or Rejected.
        reasons: Why a kernel was rejected (at least one when rejected).
        tags: Labels derived from the measurement.
        measured_at: When the measurement finished.
    """

    kernel_id: KernelId
    device_name: ShortText
    torch_version: ShortText
    max_abs_error: NonNegativeFloat
    tolerance: NonNegativeFloat
    gradients_finite: bool
    gradient_max_abs_error: NonNegativeFloat
    function_preserving: bool
    latency: list[LatencyMeasurement] = Field(min_length=1, max_length=16)
    peak_memory_bytes: Count
    params: Count
    flops_per_sample: Count
    verdict: Verdict
    reasons: list[LongText] = Field(default_factory=list, max_length=32)
    tags: list[Tag] = Field(default_factory=list, max_length=32)
    measured_at: datetime

    @model_validator(mode="after")
    def _verdict_consistent(self) -> "BenchmarkReport":
        if self.verdict is Verdict.REJECTED and not self.reasons:
            raise ValueError("a Rejected report must give at least one reason")
        if self.verdict is Verdict.VALIDATED:
            problems = []
            if self.reasons:
                problems.append("it lists rejection reasons")
            if self.max_abs_error > self.tolerance:
                problems.append(
                    f"maxAbsError {self.max_abs_error} exceeds tolerance {self.tolerance}"
                )
            if not self.gradients_finite:
                problems.append("its gradients are not finite")
            if not self.function_preserving:
                problems.append("it is not function-preserving")
            if problems:
                raise ValueError("a Validated report is inconsistent: " + "; ".join(problems))
        batch_sizes = [item.batch_size for item in self.latency]
        if batch_sizes != sorted(set(batch_sizes)):
            raise ValueError(f"latency batch sizes must be ascending and unique: {batch_sizes}")
        return self

    def p50_ms_at_largest_batch(self) -> float:
        """Return the median latency at the largest measured batch size.

        Returns:
            Milliseconds.
        """
        return self.latency[-1].p50_ms


class ArtifactSignature(Contract):
    """Tezzeret's HMAC-SHA256 of a kernel's bundle, which Kasmina checks before loading it.

    The MAC covers the kernel id and the SHA-256 of the bundle bytes
    (:func:`esper.blueprints.signing.signed_message`), so a signed bundle cannot be passed off as
    another kernel. Urza stores it but never holds the key: a compromised library or blob store
    cannot sign.

    Attributes:
        key_id: Which key of the key ring made it (keys rotate; old ids stay verifiable).
        hmac_sha256: The MAC, 64 lower-case hex digits.
    """

    key_id: str = Field(pattern=SIGNING_KEY_ID_PATTERN)
    hmac_sha256: Sha256Hex


class KernelArtifact(Contract):
    """A compiled kernel as Urza records it.

    Attributes:
        id: Deterministic id from :func:`kernel_id`.
        blueprint_hash: The blueprint compiled.
        target: The compile target.
        phase: Where the kernel is in its life.
        artifact_uri: Where the bundle is stored (``s3://bucket/key`` or ``file://...``).
        sha256: SHA-256 of the bundle.
        size_bytes: Size of the bundle.
        signature: Tezzeret's signature of the bundle; absent for a bundle uploaded unsigned.
        compile_seconds: Wall time of the compilation.
        torch_version: The torch version that compiled it.
        error: What went wrong, for a Failed kernel.
        benchmark: Urabrask's report, once validated or rejected.
        tags: Labels for search.
    """

    id: KernelId
    blueprint_hash: Sha256Hex
    target: KernelTarget
    phase: KernelPhase
    artifact_uri: ShortText | None = None
    sha256: Sha256Hex | None = None
    size_bytes: Count | None = None
    signature: ArtifactSignature | None = None
    compile_seconds: NonNegativeFloat | None = None
    torch_version: ShortText | None = None
    error: LongText | None = None
    benchmark: BenchmarkReport | None = None
    tags: list[Tag] = Field(default_factory=list, max_length=32)

    @model_validator(mode="after")
    def _phase_consistent(self) -> "KernelArtifact":
        expected_id = kernel_id(self.blueprint_hash, self.target)
        if self.id != expected_id:
            raise ValueError(
                f"id '{self.id}' does not match blueprint and target (expected '{expected_id}')"
            )
        if self.phase in PHASES_WITH_ARTIFACT:
            missing = [
                name
                for name, value in (
                    ("artifactUri", self.artifact_uri),
                    ("sha256", self.sha256),
                    ("sizeBytes", self.size_bytes),
                )
                if value is None
            ]
            if missing:
                raise ValueError(f"a {self.phase.value} kernel needs {', '.join(missing)}")
        if self.signature is not None and self.sha256 is None:
            raise ValueError("a signature without the sha256 it signs")
        if self.phase is KernelPhase.FAILED and not self.error:
            raise ValueError("a Failed kernel must record its error")
        if self.phase in (KernelPhase.VALIDATED, KernelPhase.REJECTED):
            if self.benchmark is None:
                raise ValueError(f"a {self.phase.value} kernel needs its benchmark report")
            if self.benchmark.verdict.value != self.phase.value:
                raise ValueError(
                    f"phase {self.phase.value} disagrees with the report's verdict "
                    f"{self.benchmark.verdict.value}"
                )
        if self.benchmark is not None and self.benchmark.kernel_id != self.id:
            raise ValueError(f"benchmark report is for kernel '{self.benchmark.kernel_id}'")
        return self

    def moved_to(self, phase: KernelPhase, **changes: object) -> "KernelArtifact":
        """Return a copy in a new phase, after checking the move is legal.

        Args:
            phase: The new phase.
            **changes: Other fields to change with it (for example ``error=...``).

        Returns:
            The new, validated artifact record.

        Raises:
            IllegalTransitionError: When the phase table forbids the move.
            pydantic.ValidationError: When the result is inconsistent.
        """
        KERNEL_PHASES.check(self.phase, phase)
        data = self.model_dump(by_alias=False)
        data.update(changes)
        data["phase"] = phase
        return KernelArtifact.model_validate(data)


ArtifactScheme = Literal["s3", "file"]
"""URI schemes of the two blob stores."""

__all__ = [
    "DEFAULT_BATCH_SIZES",
    "KERNEL_PHASES",
    "PHASES_WITH_ARTIFACT",
    "SIGNING_KEY_ID_PATTERN",
    "ArtifactScheme",
    "ArtifactSignature",
    "BenchmarkReport",
    "DType",
    "DeviceKind",
    "KernelArtifact",
    "KernelPhase",
    "KernelTarget",
    "LatencyMeasurement",
    "Verdict",
    "kernel_id",
]
