"""Conversions between Urza's rows and the contracts it serves.

The repository speaks contracts, never rows; these are the only places that know both.
"""

from datetime import UTC, datetime

from esper.contracts.blueprint import BlueprintIR
from esper.contracts.kernel import KernelArtifact
from esper.contracts.urza_api import BlueprintRecord
from esper.urza.models import BlueprintRow, KernelRow, utc_now


def as_utc(moment: datetime) -> datetime:
    """The same moment, timezone-aware in UTC, whichever backend read it."""
    # SQLite returns naive datetimes (stored as UTC); PostgreSQL returns the session's zone.
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def apply_artifact(row: KernelRow, artifact: KernelArtifact) -> None:
    """Write a kernel's state into its row (the benchmark's p50 kept as an indexed column)."""
    row.phase = artifact.phase.value
    row.artifact_uri = artifact.artifact_uri
    row.sha256 = artifact.sha256
    row.size_bytes = artifact.size_bytes
    row.compile_seconds = artifact.compile_seconds
    row.torch_version = artifact.torch_version
    row.error = artifact.error
    if artifact.benchmark is not None:
        row.benchmark = artifact.benchmark.model_dump(mode="json", by_alias=True)
        row.latency_p50_ms = artifact.benchmark.p50_ms_at_largest_batch()
    else:
        row.benchmark = None
        row.latency_p50_ms = None
    row.updated_at = utc_now()


def blueprint_record(row: BlueprintRow) -> BlueprintRecord:
    """The contract of a blueprint row."""
    return BlueprintRecord(
        hash=row.hash, ir=BlueprintIR.model_validate(row.ir), created_at=as_utc(row.created_at)
    )


def kernel_artifact(row: KernelRow) -> KernelArtifact:
    """The contract of a kernel row (its tags included)."""
    return KernelArtifact.model_validate(
        {
            "id": row.id,
            "blueprintHash": row.blueprint_hash,
            "target": row.target,
            "phase": row.phase,
            "artifactUri": row.artifact_uri,
            "sha256": row.sha256,
            "sizeBytes": row.size_bytes,
            "signature": (
                None
                if row.signature is None
                else {"keyId": row.signature_key_id, "hmacSha256": row.signature}
            ),
            "compileSeconds": row.compile_seconds,
            "torchVersion": row.torch_version,
            "error": row.error,
            "benchmark": row.benchmark,
            "tags": row.tags,
        }
    )
