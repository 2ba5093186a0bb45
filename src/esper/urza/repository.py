"""Urza's repository: every read and write of blueprints, kernels and reports.

Each public method is one transaction, so a failure leaves nothing partial behind. The HTTP
API, the local forge and tests all go through this class; it speaks contracts, never rows.
"""

from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import Select, delete, func, select, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from esper.blueprints.shapes import ShapeError, check_graftable, infer_shapes
from esper.contracts.blueprint import BlueprintIR
from esper.contracts.kernel import (
    KERNEL_PHASES,
    PHASES_WITH_ARTIFACT,
    ArtifactSignature,
    BenchmarkReport,
    KernelArtifact,
    KernelPhase,
    kernel_id,
)
from esper.contracts.urza_api import (
    MAX_PAGE_SIZE,
    ArtifactLink,
    BlueprintPage,
    BlueprintRecord,
    CompileRecord,
    KernelCreate,
    KernelPage,
    PhaseChange,
)
from esper.urza.blobs import BlobIntegrityError, BlobStore
from esper.urza.conversions import apply_artifact, as_utc, blueprint_record, kernel_artifact
from esper.urza.models import (
    BenchmarkReportRow,
    BlueprintRow,
    BlueprintTagRow,
    CompileRecordRow,
    KernelRow,
    KernelTagRow,
    utc_now,
)


class NotFoundError(LookupError):
    """Raised when a blueprint or kernel does not exist."""


class ConflictError(RuntimeError):
    """Raised when a request is valid but conflicts with the stored state."""


class InvalidRequestError(ValueError):
    """Raised when a request is well-formed but cannot be satisfied as asked."""


class UrzaRepository:
    """Transactional access to Urza's metadata and blobs.

    Args:
        sessions: Session factory bound to Urza's database.
        blobs: The artifact blob store.
    """

    def __init__(self, sessions: sessionmaker, blobs: BlobStore) -> None:
        """Create the repository (see the class docstring)."""
        self._sessions = sessions
        self.blobs = blobs

    @contextmanager
    def _transaction(self) -> Iterator[Session]:
        with self._sessions.begin() as session:
            yield session

    def ping(self) -> None:
        """Run a trivial query, raising the driver's error when the database is unreachable."""
        with self._sessions() as session:
            session.execute(text("SELECT 1"))

    # Blueprints -------------------------------------------------------------------------------

    def put_blueprint(self, ir: BlueprintIR) -> tuple[BlueprintRecord, bool]:
        """Register a blueprint, idempotently by its canonical hash.

        Args:
            ir: The validated design.

        Returns:
            The stored record and whether it was created now (False: it already existed, and
            the first submission's name, description and tags are kept).
        """
        try:
            # Shapes are checked as far as the unbound symbols allow; a target's bindings
            # complete the check when a kernel is registered.
            infer_shapes(ir)
        except ShapeError as error:
            raise InvalidRequestError(f"blueprint '{ir.name}': {error}") from None
        blueprint_hash = ir.canonical_hash()
        existing = self._find_blueprint(blueprint_hash)
        if existing is not None:
            return existing, False
        try:
            with self._transaction() as session:
                row = BlueprintRow(
                    hash=blueprint_hash,
                    name=ir.name,
                    ir=ir.model_dump(mode="json", by_alias=True),
                    created_at=utc_now(),
                )
                session.add(row)
                session.flush()
                session.add_all(
                    BlueprintTagRow(blueprint_hash=blueprint_hash, tag=tag)
                    for tag in sorted(set(ir.tags))
                )
                record = blueprint_record(row)
        except IntegrityError:
            # A concurrent submission of the same design won the insert race.
            concurrent = self._find_blueprint(blueprint_hash)
            if concurrent is None:
                raise
            return concurrent, False
        return record, True

    def _find_blueprint(self, blueprint_hash: str) -> BlueprintRecord | None:
        with self._sessions() as session:
            row = session.get(BlueprintRow, blueprint_hash)
            return None if row is None else blueprint_record(row)

    def get_blueprint(self, blueprint_hash: str) -> BlueprintRecord:
        """Return a blueprint.

        Args:
            blueprint_hash: Its canonical hash.

        Returns:
            The record.

        Raises:
            NotFoundError: When it is not registered.
        """
        record = self._find_blueprint(blueprint_hash)
        if record is None:
            raise NotFoundError(f"blueprint {blueprint_hash} is not registered")
        return record

    def list_blueprints(
        self,
        *,
        name: str | None = None,
        tag: str | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> BlueprintPage:
        """List blueprints ordered by hash, optionally filtered.

        Args:
            name: Only blueprints with this name.
            tag: Only blueprints with this tag.
            limit: Page size (1 to 500).
            cursor: ``nextCursor`` of the previous page.

        Returns:
            One page.
        """
        _check_limit(limit)
        query = select(BlueprintRow).order_by(BlueprintRow.hash).limit(limit + 1)
        if name is not None:
            query = query.where(BlueprintRow.name == name)
        if tag is not None:
            query = query.where(
                BlueprintRow.hash.in_(
                    select(BlueprintTagRow.blueprint_hash).where(BlueprintTagRow.tag == tag)
                )
            )
        if cursor is not None:
            query = query.where(BlueprintRow.hash > cursor)
        with self._sessions() as session:
            rows = list(session.scalars(query))
            items = [blueprint_record(row) for row in rows[:limit]]
        next_cursor = items[-1].hash if len(rows) > limit else None
        return BlueprintPage(items=items, next_cursor=next_cursor)

    def delete_blueprint(self, blueprint_hash: str, *, cascade: bool = False) -> None:
        """Delete a blueprint, and with ``cascade`` its kernels and their blobs.

        Args:
            blueprint_hash: The blueprint.
            cascade: Also delete its kernels; without it, a blueprint with kernels is a conflict.

        Raises:
            NotFoundError: When it is not registered.
            ConflictError: When it has kernels and ``cascade`` is False.
        """
        with self._transaction() as session:
            # FOR UPDATE: a concurrent delete of the same blueprint waits for this one and then
            # finds it gone (NotFoundError, a 404), instead of deleting zero rows unnoticed.
            row = session.get(BlueprintRow, blueprint_hash, with_for_update=True)
            if row is None:
                raise NotFoundError(f"blueprint {blueprint_hash} is not registered")
            kernel_ids = list(
                session.scalars(
                    select(KernelRow.id).where(KernelRow.blueprint_hash == blueprint_hash)
                )
            )
            if kernel_ids and not cascade:
                raise ConflictError(
                    f"blueprint {blueprint_hash} has {len(kernel_ids)} kernel(s); delete them "
                    "first or pass cascade=true"
                )
            digests = self._delete_kernel_rows(session, kernel_ids)
            session.delete(row)
        self._delete_unreferenced_blobs(digests)

    # Kernels ----------------------------------------------------------------------------------

    def create_kernel(self, request: KernelCreate) -> tuple[KernelArtifact, bool]:
        """Register a kernel in phase Pending, idempotently by (blueprint, target).

        Args:
            request: The blueprint and target.

        Returns:
            The kernel and whether it was created now.

        Raises:
            InvalidRequestError: When the blueprint is not registered or the target leaves one
                of its symbols unbound.
        """
        blueprint = self._find_blueprint(request.blueprint_hash)
        if blueprint is None:
            raise InvalidRequestError(f"blueprint {request.blueprint_hash} is not registered")
        unbound = sorted(blueprint.ir.symbols() - set(request.target.bindings))
        if unbound:
            raise InvalidRequestError(
                f"target '{request.target.short()}' does not bind symbol(s) {', '.join(unbound)} "
                f"of blueprint '{blueprint.ir.name}'"
            )
        try:
            check_graftable(blueprint.ir, request.target.bindings)
        except ShapeError as error:
            raise InvalidRequestError(
                f"blueprint '{blueprint.ir.name}' on target '{request.target.short()}': {error}"
            ) from None
        artifact = KernelArtifact(
            id=kernel_id(request.blueprint_hash, request.target),
            blueprint_hash=request.blueprint_hash,
            target=request.target,
            phase=KernelPhase.PENDING,
            tags=sorted(set(request.tags)),
        )
        existing = self._find_kernel(artifact.id)
        if existing is not None:
            return existing, False
        try:
            with self._transaction() as session:
                now = utc_now()
                session.add(
                    KernelRow(
                        id=artifact.id,
                        blueprint_hash=artifact.blueprint_hash,
                        target=artifact.target.model_dump(mode="json", by_alias=True),
                        target_short=artifact.target.short(),
                        device=artifact.target.device.value,
                        phase=artifact.phase.value,
                        tags=list(artifact.tags),
                        created_at=now,
                        updated_at=now,
                    )
                )
                session.flush()
                session.add_all(
                    KernelTagRow(kernel_id=artifact.id, tag=tag) for tag in artifact.tags
                )
        except IntegrityError:
            concurrent = self._find_kernel(artifact.id)
            if concurrent is None:
                raise
            return concurrent, False
        return artifact, True

    def _find_kernel(self, identifier: str) -> KernelArtifact | None:
        with self._sessions() as session:
            row = session.get(KernelRow, identifier)
            return None if row is None else kernel_artifact(row)

    def get_kernel(self, identifier: str) -> KernelArtifact:
        """Return a kernel.

        Args:
            identifier: The kernel id.

        Returns:
            The kernel.

        Raises:
            NotFoundError: When it does not exist.
        """
        artifact = self._find_kernel(identifier)
        if artifact is None:
            raise NotFoundError(f"kernel {identifier} does not exist")
        return artifact

    def list_kernels(
        self,
        *,
        blueprint_hash: str | None = None,
        target: str | None = None,
        phase: KernelPhase | None = None,
        device: str | None = None,
        tag: str | None = None,
        max_latency_ms: float | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> KernelPage:
        """List kernels ordered by id, optionally filtered.

        Args:
            blueprint_hash: Only kernels of this blueprint.
            target: Only kernels for this target (short form, as ``KernelTarget.short``).
            phase: Only kernels in this phase.
            device: Only kernels for this device kind (``cpu``/``cuda``).
            tag: Only kernels with this tag.
            max_latency_ms: Only benchmarked kernels whose p50 latency at the largest batch is
                at most this.
            limit: Page size (1 to 500).
            cursor: ``nextCursor`` of the previous page.

        Returns:
            One page.
        """
        _check_limit(limit)
        query: Select[tuple[KernelRow]] = select(KernelRow).order_by(KernelRow.id).limit(limit + 1)
        if blueprint_hash is not None:
            query = query.where(KernelRow.blueprint_hash == blueprint_hash)
        if target is not None:
            query = query.where(KernelRow.target_short == target)
        if phase is not None:
            query = query.where(KernelRow.phase == phase.value)
        if device is not None:
            query = query.where(KernelRow.device == device)
        if tag is not None:
            query = query.where(
                KernelRow.id.in_(select(KernelTagRow.kernel_id).where(KernelTagRow.tag == tag))
            )
        if max_latency_ms is not None:
            query = query.where(KernelRow.latency_p50_ms <= max_latency_ms)
        if cursor is not None:
            query = query.where(KernelRow.id > cursor)
        with self._sessions() as session:
            rows = list(session.scalars(query))
            items = [kernel_artifact(row) for row in rows[:limit]]
        next_cursor = items[-1].id if len(rows) > limit else None
        return KernelPage(items=items, next_cursor=next_cursor)

    def upload_artifact(
        self,
        identifier: str,
        data: bytes,
        sha256: str,
        signature: ArtifactSignature | None = None,
    ) -> KernelArtifact:
        """Store a kernel's artifact bundle; the kernel must be Compiling.

        The bytes are verified against ``sha256`` before anything is stored. Uploading the
        same bundle again is harmless; a different bundle replaces the reference, and its
        signature (or its absence) replaces the old one. Urza does not check the signature:
        it holds no key, Kasmina checks it before loading.

        Args:
            identifier: The kernel id.
            data: The bundle.
            sha256: The digest the uploader declared.
            signature: Tezzeret's signature of the bundle, if it signed.

        Returns:
            The kernel with its artifact fields set (still Compiling).

        Raises:
            NotFoundError: When the kernel does not exist.
            ConflictError: When the kernel is not Compiling.
            InvalidRequestError: When the bytes do not match ``sha256``.
        """
        current = self.get_kernel(identifier)
        if current.phase is not KernelPhase.COMPILING:
            raise ConflictError(
                f"kernel {identifier} is {current.phase.value}; artifacts are uploaded while "
                "Compiling"
            )
        try:
            uri = self.blobs.put(data, sha256)
        except BlobIntegrityError as error:
            raise InvalidRequestError(
                f"upload of kernel {identifier}: {error}; nothing was stored"
            ) from None
        with self._transaction() as session:
            row = _locked_kernel(session, identifier)
            if row.phase != KernelPhase.COMPILING.value:
                raise ConflictError(f"kernel {identifier} left Compiling during the upload")
            row.artifact_uri = uri
            row.sha256 = sha256
            row.size_bytes = len(data)
            row.signature_key_id = None if signature is None else signature.key_id
            row.signature = None if signature is None else signature.hmac_sha256
            row.updated_at = utc_now()
            return kernel_artifact(row)

    def change_phase(self, identifier: str, change: PhaseChange) -> KernelArtifact:
        """Move a kernel to a new phase along the contract's state machine.

        Args:
            identifier: The kernel id.
            change: The new phase and the fields that come with it.

        Returns:
            The updated kernel.

        Raises:
            NotFoundError: When the kernel does not exist.
            IllegalTransitionError: When the move is not in the phase table.
            ConflictError: When the move is legal but the kernel is not ready for it (no
                artifact yet, or a verdict phase set without a report).
        """
        if change.phase in (KernelPhase.VALIDATED, KernelPhase.REJECTED):
            raise ConflictError(
                f"a kernel becomes {change.phase.value} by attaching its benchmark report"
            )
        with self._transaction() as session:
            row = _locked_kernel(session, identifier)
            current = kernel_artifact(row)
            # The table decides first: an illegal move is illegal whatever else is missing.
            KERNEL_PHASES.check(current.phase, change.phase)
            updates: dict[str, object] = {}
            if change.error is not None:
                updates["error"] = change.error
            if change.compile_seconds is not None:
                updates["compile_seconds"] = change.compile_seconds
            if change.torch_version is not None:
                updates["torch_version"] = change.torch_version
            if change.phase is KernelPhase.PENDING:
                # A retry starts clean: the failed attempt's artifact and error are dropped.
                updates.update(artifact_uri=None, sha256=None, size_bytes=None, error=None)
            if change.phase in PHASES_WITH_ARTIFACT and current.sha256 is None:
                raise ConflictError(
                    f"kernel {identifier} has no artifact; upload it before moving to "
                    f"{change.phase.value}"
                )
            moved = current.moved_to(change.phase, **updates)
            apply_artifact(row, moved)
            return moved

    def attach_report(self, identifier: str, report: BenchmarkReport) -> KernelArtifact:
        """Attach Urabrask's report; the kernel moves to the report's verdict.

        Args:
            identifier: The kernel id; it must be Validating.
            report: The report.

        Returns:
            The kernel, now Validated or Rejected.

        Raises:
            NotFoundError: When the kernel does not exist.
            InvalidRequestError: When the report is for another kernel.
            IllegalTransitionError: When the kernel is not Validating.
        """
        if report.kernel_id != identifier:
            raise InvalidRequestError(f"report is for kernel {report.kernel_id}, not {identifier}")
        with self._transaction() as session:
            row = _locked_kernel(session, identifier)
            current = kernel_artifact(row)
            moved = current.moved_to(KernelPhase(report.verdict.value), benchmark=report)
            apply_artifact(row, moved)
            session.add(
                BenchmarkReportRow(
                    kernel_id=identifier,
                    verdict=report.verdict.value,
                    report=report.model_dump(mode="json", by_alias=True),
                    created_at=utc_now(),
                )
            )
            return moved

    def add_compile_record(self, record: CompileRecord) -> None:
        """Store one compilation attempt.

        Args:
            record: The attempt.

        Raises:
            NotFoundError: When its kernel does not exist.
        """
        with self._transaction() as session:
            if session.get(KernelRow, record.kernel_id) is None:
                raise NotFoundError(f"kernel {record.kernel_id} does not exist")
            session.add(
                CompileRecordRow(
                    kernel_id=record.kernel_id,
                    worker=record.worker,
                    started_at=as_utc(record.started_at),
                    finished_at=as_utc(record.finished_at),
                    succeeded=record.succeeded,
                    error=record.error,
                    torch_version=record.torch_version,
                )
            )

    def compile_records(self, identifier: str) -> list[CompileRecord]:
        """Return a kernel's compilation attempts, oldest first.

        Args:
            identifier: The kernel id.

        Returns:
            The attempts.

        Raises:
            NotFoundError: When the kernel does not exist.
        """
        self.get_kernel(identifier)
        with self._sessions() as session:
            rows = session.scalars(
                select(CompileRecordRow)
                .where(CompileRecordRow.kernel_id == identifier)
                .order_by(CompileRecordRow.id)
            )
            return [
                CompileRecord(
                    kernel_id=row.kernel_id,
                    worker=row.worker,
                    started_at=as_utc(row.started_at),
                    finished_at=as_utc(row.finished_at),
                    succeeded=row.succeeded,
                    error=row.error,
                    torch_version=row.torch_version,
                )
                for row in rows
            ]

    def read_artifact(self, identifier: str) -> tuple[KernelArtifact, bytes]:
        """Return a kernel and its verified artifact bytes.

        Args:
            identifier: The kernel id.

        Returns:
            The kernel and the bytes.

        Raises:
            NotFoundError: When the kernel or its artifact does not exist.
            BlobIntegrityError: When the stored bytes are corrupt.
        """
        artifact = self.get_kernel(identifier)
        if artifact.sha256 is None:
            raise NotFoundError(f"kernel {identifier} has no artifact yet")
        return artifact, self.blobs.get(artifact.sha256)

    def artifact_link(self, identifier: str, expires_in_seconds: int) -> ArtifactLink:
        """Return a presigned download URL of a kernel's artifact.

        Args:
            identifier: The kernel id.
            expires_in_seconds: Validity of the URL.

        Returns:
            The link with the digest to verify.

        Raises:
            NotFoundError: When the kernel or its artifact does not exist.
            ConflictError: When the blob store cannot make URLs (the local directory).
        """
        artifact = self.get_kernel(identifier)
        if artifact.sha256 is None or artifact.size_bytes is None:
            raise NotFoundError(f"kernel {identifier} has no artifact yet")
        url = self.blobs.presigned_url(artifact.sha256, expires_in_seconds)
        if url is None:
            raise ConflictError(
                f"the '{self.blobs.scheme}' blob store has no direct URLs; download "
                f"/v1/kernels/{identifier}/artifact instead"
            )
        return ArtifactLink(
            url=url,
            sha256=artifact.sha256,
            size_bytes=artifact.size_bytes,
            expires_in_seconds=expires_in_seconds,
        )

    def delete_kernel(self, identifier: str) -> None:
        """Delete a kernel, its reports and records, and its blob when no other kernel uses it.

        Args:
            identifier: The kernel id.

        Raises:
            NotFoundError: When it does not exist.
        """
        with self._transaction() as session:
            if session.get(KernelRow, identifier) is None:
                raise NotFoundError(f"kernel {identifier} does not exist")
            digests = self._delete_kernel_rows(session, [identifier])
        self._delete_unreferenced_blobs(digests)

    def _delete_kernel_rows(self, session: Session, identifiers: list[str]) -> set[str]:
        if not identifiers:
            return set()
        digests = {
            digest
            for digest in session.scalars(
                select(KernelRow.sha256).where(KernelRow.id.in_(identifiers))
            )
            if digest is not None
        }
        for table in (KernelTagRow, BenchmarkReportRow, CompileRecordRow):
            session.execute(delete(table).where(table.kernel_id.in_(identifiers)))
        session.execute(delete(KernelRow).where(KernelRow.id.in_(identifiers)))
        return digests

    def _delete_unreferenced_blobs(self, digests: set[str]) -> None:
        # Blobs are deleted after the rows' transaction commits: a crash in between leaves an
        # orphan blob (harmless, content addressed), never a row pointing at a missing blob.
        for digest in sorted(digests):
            with self._sessions() as session:
                users = session.scalar(
                    select(func.count()).select_from(KernelRow).where(KernelRow.sha256 == digest)
                )
            if not users:
                self.blobs.delete(digest)


def _check_limit(limit: int) -> None:
    if not 1 <= limit <= MAX_PAGE_SIZE:
        raise InvalidRequestError(f"limit must be between 1 and {MAX_PAGE_SIZE}, got {limit}")


def _locked_kernel(session: Session, identifier: str) -> KernelRow:
    # FOR UPDATE serialises concurrent phase moves on PostgreSQL; SQLite serialises writers.
    row = session.scalars(
        select(KernelRow).where(KernelRow.id == identifier).with_for_update()
    ).one_or_none()
    if row is None:
        raise NotFoundError(f"kernel {identifier} does not exist")
    return row
