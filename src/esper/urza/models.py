"""SQLAlchemy 2.0 tables of Urza. The same schema runs on PostgreSQL and SQLite.

The contracts are stored as JSON documents (their wire form) next to the columns that are
filtered on, so a record round-trips exactly and queries stay indexable.
"""

from datetime import UTC, datetime

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    MetaData,
    String,
    Text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utc_now() -> datetime:
    """Return the current time in UTC (the only time zone Urza stores).

    Returns:
        An aware datetime.
    """
    return datetime.now(UTC)


class Base(DeclarativeBase):
    """Declarative base with deterministic constraint names (Alembic needs them)."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class BlueprintRow(Base):
    """A registered blueprint; its canonical hash is the primary key."""

    __tablename__ = "blueprints"

    hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(63), index=True)
    ir: Mapped[dict[str, object]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utc_now)


class BlueprintTagRow(Base):
    """One tag of a blueprint (a separate table so tag filters are portable and indexed)."""

    __tablename__ = "blueprint_tags"

    blueprint_hash: Mapped[str] = mapped_column(
        ForeignKey("blueprints.hash", ondelete="CASCADE"), primary_key=True
    )
    tag: Mapped[str] = mapped_column(String(63), primary_key=True, index=True)


class KernelRow(Base):
    """A kernel: one blueprint compiled for one target."""

    __tablename__ = "kernels"

    id: Mapped[str] = mapped_column(String(27), primary_key=True)
    blueprint_hash: Mapped[str] = mapped_column(
        ForeignKey("blueprints.hash", ondelete="RESTRICT"), index=True
    )
    target: Mapped[dict[str, object]] = mapped_column(JSON)
    target_short: Mapped[str] = mapped_column(Text, index=True)
    device: Mapped[str] = mapped_column(String(8), index=True)
    phase: Mapped[str] = mapped_column(String(16), index=True)
    artifact_uri: Mapped[str | None] = mapped_column(Text)
    sha256: Mapped[str | None] = mapped_column(String(64), index=True)
    size_bytes: Mapped[int | None] = mapped_column(BigInteger)
    # Tezzeret's HMAC of the bundle and its key id (Urza stores them, it never holds the key).
    signature_key_id: Mapped[str | None] = mapped_column(String(63))
    signature: Mapped[str | None] = mapped_column(String(64))
    compile_seconds: Mapped[float | None] = mapped_column(Float)
    torch_version: Mapped[str | None] = mapped_column(String(256))
    error: Mapped[str | None] = mapped_column(Text)
    latency_p50_ms: Mapped[float | None] = mapped_column(Float, index=True)
    # The current report and the tags are kept on the row too, so reading a page of kernels is
    # one query; benchmark_reports keeps the history and kernel_tags serves tag filters.
    benchmark: Mapped[dict[str, object] | None] = mapped_column(JSON)
    tags: Mapped[list[str]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utc_now)
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), default=utc_now, onupdate=utc_now
    )


class KernelTagRow(Base):
    """One tag of a kernel."""

    __tablename__ = "kernel_tags"

    kernel_id: Mapped[str] = mapped_column(
        ForeignKey("kernels.id", ondelete="CASCADE"), primary_key=True
    )
    tag: Mapped[str] = mapped_column(String(63), primary_key=True, index=True)


class BenchmarkReportRow(Base):
    """A benchmark report of a kernel; the newest one is the kernel's current report."""

    __tablename__ = "benchmark_reports"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    kernel_id: Mapped[str] = mapped_column(ForeignKey("kernels.id", ondelete="CASCADE"), index=True)
    verdict: Mapped[str] = mapped_column(String(16))
    report: Mapped[dict[str, object]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utc_now)


class CompileRecordRow(Base):
    """One compilation attempt of a kernel."""

    __tablename__ = "compile_records"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    kernel_id: Mapped[str] = mapped_column(ForeignKey("kernels.id", ondelete="CASCADE"), index=True)
    worker: Mapped[str] = mapped_column(String(256))
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    succeeded: Mapped[bool] = mapped_column(Boolean)
    error: Mapped[str | None] = mapped_column(Text)
    torch_version: Mapped[str] = mapped_column(String(256))
