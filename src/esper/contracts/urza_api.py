"""Request and response bodies of Urza's HTTP API (``/v1``).

The server validates requests with these models and the client parses responses with them, so
the two cannot drift apart; the OpenAPI document Urza serves is generated from them.
"""

from datetime import UTC, datetime

from pydantic import Field, field_validator

from esper.contracts._base import Contract
from esper.contracts.blueprint import BlueprintIR
from esper.contracts.kernel import KernelArtifact, KernelPhase, KernelTarget
from esper.contracts.types import (
    KernelId,
    LongText,
    NonNegativeFloat,
    Sha256Hex,
    ShortText,
    Tag,
)

MAX_PAGE_SIZE = 500
"""Largest page a list endpoint returns."""


class BlueprintRecord(Contract):
    """A blueprint as Urza stores it.

    Attributes:
        hash: The canonical hash, which is the blueprint's id.
        ir: The design as submitted (its name, description and tags as first submitted).
        created_at: When it was first registered.
    """

    hash: Sha256Hex
    ir: BlueprintIR
    created_at: datetime


class BlueprintPage(Contract):
    """One page of blueprints.

    Attributes:
        items: The blueprints, ordered by hash.
        next_cursor: Pass as ``cursor`` to get the next page; absent on the last page.
    """

    items: list[BlueprintRecord] = Field(max_length=MAX_PAGE_SIZE)
    next_cursor: ShortText | None = None


class KernelCreate(Contract):
    """Request to register a kernel (a blueprint on a target) in phase ``Pending``.

    Attributes:
        blueprint_hash: The blueprint, which must already be registered.
        target: The compile target; it must bind every symbol the blueprint uses.
        tags: Labels for search.
    """

    blueprint_hash: Sha256Hex
    target: KernelTarget
    tags: list[Tag] = Field(default_factory=list, max_length=32)


class PhaseChange(Contract):
    """Request to move a kernel to a new phase.

    Attributes:
        phase: The new phase; it must be a legal move from the current one.
        error: What went wrong (required when moving to ``Failed``).
        compile_seconds: Wall time of the compilation (when moving to ``Compiled``).
        torch_version: The torch version that compiled it (when moving to ``Compiled``).
    """

    phase: KernelPhase
    error: LongText | None = None
    compile_seconds: NonNegativeFloat | None = None
    torch_version: ShortText | None = None


class KernelPage(Contract):
    """One page of kernels.

    Attributes:
        items: The kernels, ordered by id.
        next_cursor: Pass as ``cursor`` to get the next page; absent on the last page.
    """

    items: list[KernelArtifact] = Field(max_length=MAX_PAGE_SIZE)
    next_cursor: ShortText | None = None


class CompileRecord(Contract):
    """One compilation attempt of a kernel, kept for diagnosis and statistics.

    Attributes:
        kernel_id: The kernel compiled.
        worker: Who compiled it (host/pod name).
        started_at: When the attempt started.
        finished_at: When it ended.
        succeeded: Whether it produced an artifact.
        error: Why it failed, when it did.
        torch_version: The torch version used.
    """

    kernel_id: KernelId
    worker: ShortText
    started_at: datetime
    finished_at: datetime
    succeeded: bool
    error: LongText | None = None
    torch_version: ShortText

    @field_validator("started_at", "finished_at")
    @classmethod
    def _in_utc(cls, moment: datetime) -> datetime:
        # Urza stores UTC only: SQLite drops offsets, and PostgreSQL cannot hand an instant
        # outside years 1-9999 back to Python, so such a time would poison every later read.
        if moment.tzinfo is None:
            return moment.replace(tzinfo=UTC)
        try:
            return moment.astimezone(UTC)
        except OverflowError:
            raise ValueError("is outside the years 1-9999 once converted to UTC") from None


class ArtifactLink(Contract):
    """A time-limited URL from which a kernel's bundle can be downloaded directly.

    Attributes:
        url: The presigned URL.
        sha256: The digest the downloaded bytes must have; verify before use.
        size_bytes: The bundle's size.
        expires_in_seconds: How long the URL stays valid.
    """

    url: LongText
    sha256: Sha256Hex
    size_bytes: int = Field(ge=0)
    expires_in_seconds: int = Field(ge=1, le=604800)


class ErrorBody(Contract):
    """The body of every error response.

    Attributes:
        detail: One line naming what is wrong.
        errors: Per-field problems, for validation errors.
    """

    detail: LongText
    errors: list[LongText] = Field(default_factory=list, max_length=64)
