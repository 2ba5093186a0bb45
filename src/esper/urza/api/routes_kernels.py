"""``/v1/kernels``: register kernels, move their phases, upload and download artifacts."""

from typing import Annotated

from fastapi import APIRouter, Header, Path, Query, Request, Response, status
from starlette.concurrency import run_in_threadpool

from esper.contracts.events import Event, KernelPhaseChanged, Topic
from esper.contracts.kernel import (
    SIGNING_KEY_ID_PATTERN,
    ArtifactSignature,
    BenchmarkReport,
    KernelArtifact,
    KernelPhase,
)
from esper.contracts.urza_api import (
    MAX_PAGE_SIZE,
    ArtifactLink,
    CompileRecord,
    ErrorBody,
    KernelCreate,
    KernelPage,
    PhaseChange,
)
from esper.urza.api.deps import (
    KERNEL_ID_PATTERN,
    SHA256_PATTERN,
    TAG_PATTERN,
    ReadContext,
    UrzaContext,
    WriteContext,
)
from esper.urza.api.limits import LIMIT_RESPONSES
from esper.urza.repository import InvalidRequestError

SHA256_HEADER = "X-Artifact-Sha256"
"""Header carrying an artifact's SHA-256 (declared on upload, stated on download)."""

SIGNATURE_HEADER = "X-Artifact-Signature"
"""Header carrying Tezzeret's HMAC-SHA256 of an uploaded artifact (hex)."""

SIGNATURE_KEY_ID_HEADER = "X-Artifact-Signature-Key-Id"
"""Header naming the key that made that HMAC."""

ERRORS: dict[int | str, dict[str, object]] = {
    400: {"model": ErrorBody, "description": "Malformed request body (not JSON)."},
    401: {"model": ErrorBody, "description": "Missing or invalid bearer token."},
    404: {"model": ErrorBody, "description": "No such kernel or artifact."},
    409: {"model": ErrorBody, "description": "Illegal phase move or conflicting state."},
    422: {"model": ErrorBody, "description": "Invalid request; the message names the problem."},
    503: {"model": ErrorBody, "description": "The database or blob store is unavailable."},
} | LIMIT_RESPONSES

ARTIFACT_PATH = "/v1/kernels/{kernel_id}/artifact"
"""Route of artifact uploads: raw bytes under ``max_upload_bytes``, not the JSON body limit."""

KernelIdPath = Annotated[str, Path(pattern=KERNEL_ID_PATTERN, description="Kernel id.")]


class PayloadTooLargeError(ValueError):
    """Raised when an upload exceeds the configured limit."""


def _announce(urza: UrzaContext, kernel: KernelArtifact) -> None:
    if urza.publish is None:
        return
    urza.publish(
        Event(
            topic=Topic.KERNEL_PHASE_CHANGED,
            source="urza",
            payload=KernelPhaseChanged(
                kernel_id=kernel.id,
                blueprint_hash=kernel.blueprint_hash,
                target=kernel.target,
                phase=kernel.phase,
            ),
        )
    )


async def _read_limited(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLargeError(f"artifact of {declared} bytes exceeds the {limit}-byte limit")
    chunks: list[bytes] = []
    received = 0
    async for chunk in request.stream():
        received += len(chunk)
        if received > limit:
            raise PayloadTooLargeError(f"artifact exceeds the {limit}-byte limit")
        chunks.append(chunk)
    return b"".join(chunks)


router = APIRouter(prefix="/v1/kernels", tags=["kernels"], responses=ERRORS)
"""The kernels routes."""


@router.post(
    "",
    response_model=KernelArtifact,
    status_code=status.HTTP_201_CREATED,
    summary="Register a kernel in phase Pending (idempotent by blueprint and target).",
    responses={200: {"model": KernelArtifact, "description": "Already registered."}},
)
def create_kernel(request: KernelCreate, urza: WriteContext, response: Response) -> KernelArtifact:
    """Register a kernel in phase Pending (idempotent by blueprint and target)."""
    kernel, created = urza.repository.create_kernel(request)
    if created:
        _announce(urza, kernel)
    else:
        response.status_code = status.HTTP_200_OK
    return kernel


@router.get("", response_model=KernelPage, summary="List kernels (by id), with filters.")
def list_kernels(
    *,
    urza: ReadContext,
    blueprint: Annotated[str | None, Query(pattern=SHA256_PATTERN)] = None,
    target: Annotated[str | None, Query(max_length=256)] = None,
    phase: Annotated[KernelPhase | None, Query()] = None,
    device: Annotated[str | None, Query(pattern=r"^(cpu|cuda)$")] = None,
    tag: Annotated[str | None, Query(pattern=TAG_PATTERN)] = None,
    max_latency_ms: Annotated[float | None, Query(alias="maxLatencyMs", ge=0.0)] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE_SIZE)] = 50,
    cursor: Annotated[str | None, Query(pattern=KERNEL_ID_PATTERN)] = None,
) -> KernelPage:
    """List kernels (by id), with filters."""
    return urza.repository.list_kernels(
        blueprint_hash=blueprint,
        target=target,
        phase=phase,
        device=device,
        tag=tag,
        max_latency_ms=max_latency_ms,
        limit=limit,
        cursor=cursor,
    )


@router.get("/{kernel_id}", response_model=KernelArtifact, summary="Read a kernel.")
def get_kernel(kernel_id: KernelIdPath, urza: ReadContext) -> KernelArtifact:
    """Read a kernel."""
    return urza.repository.get_kernel(kernel_id)


@router.post(
    "/{kernel_id}/phase",
    response_model=KernelArtifact,
    summary="Move a kernel to a new phase (only along the phase table; 409 otherwise).",
)
def change_phase(
    kernel_id: KernelIdPath, change: PhaseChange, urza: WriteContext
) -> KernelArtifact:
    """Move a kernel to a new phase (only along the phase table; 409 otherwise)."""
    kernel = urza.repository.change_phase(kernel_id, change)
    _announce(urza, kernel)
    return kernel


@router.put(
    "/{kernel_id}/artifact",
    response_model=KernelArtifact,
    summary="Upload the artifact bundle of a Compiling kernel (raw bytes).",
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/octet-stream": {"schema": {"type": "string"}}},
        }
    },
)
async def upload_artifact(
    kernel_id: KernelIdPath,
    request: Request,
    urza: WriteContext,
    sha256: Annotated[str, Header(alias=SHA256_HEADER, pattern=SHA256_PATTERN)],
    *,
    signature: Annotated[str | None, Header(alias=SIGNATURE_HEADER, pattern=SHA256_PATTERN)] = None,
    signature_key_id: Annotated[
        str | None, Header(alias=SIGNATURE_KEY_ID_HEADER, pattern=SIGNING_KEY_ID_PATTERN)
    ] = None,
) -> KernelArtifact | Response:
    """Upload the artifact bundle of a Compiling kernel (raw bytes)."""
    if (signature is None) != (signature_key_id is None):
        raise InvalidRequestError(
            f"{SIGNATURE_HEADER} and {SIGNATURE_KEY_ID_HEADER} come together or not at all"
        )
    signed = (
        None
        if signature is None or signature_key_id is None
        else ArtifactSignature(key_id=signature_key_id, hmac_sha256=signature)
    )
    try:
        data = await _read_limited(request, urza.options.max_upload_bytes)
    except PayloadTooLargeError as error:
        return Response(
            ErrorBody(detail=str(error)).model_dump_json(),
            status_code=status.HTTP_413_CONTENT_TOO_LARGE,
            media_type="application/json",
        )
    if not data:
        raise InvalidRequestError("the artifact upload is empty")
    return await run_in_threadpool(urza.repository.upload_artifact, kernel_id, data, sha256, signed)


@router.get(
    "/{kernel_id}/artifact",
    summary="Download the verified artifact bundle.",
    response_class=Response,
    responses={
        200: {
            "content": {"application/octet-stream": {"schema": {"type": "string"}}},
            "description": f"The bundle; its digest is in the {SHA256_HEADER} header.",
        }
    },
)
def download_artifact(kernel_id: KernelIdPath, urza: ReadContext) -> Response:
    """Download the verified artifact bundle."""
    kernel, data = urza.repository.read_artifact(kernel_id)
    digest = kernel.sha256 or ""
    return Response(
        data,
        media_type="application/octet-stream",
        headers={SHA256_HEADER: digest, "ETag": f'"{digest}"'},
    )


@router.get(
    "/{kernel_id}/artifact-link",
    response_model=ArtifactLink,
    summary="A presigned download URL (S3 blob store only; 409 for the local store).",
)
def artifact_link(kernel_id: KernelIdPath, urza: ReadContext) -> ArtifactLink:
    """A presigned download URL (S3 blob store only; 409 for the local store)."""
    return urza.repository.artifact_link(kernel_id, urza.options.presign_seconds)


@router.post(
    "/{kernel_id}/report",
    response_model=KernelArtifact,
    summary="Attach Urabrask's report to a Validating kernel; it moves to the verdict.",
)
def attach_report(
    kernel_id: KernelIdPath, report: BenchmarkReport, urza: WriteContext
) -> KernelArtifact:
    """Attach Urabrask's report to a Validating kernel; it moves to the verdict."""
    kernel = urza.repository.attach_report(kernel_id, report)
    _announce(urza, kernel)
    return kernel


@router.post(
    "/{kernel_id}/compile-records",
    status_code=status.HTTP_201_CREATED,
    response_model=CompileRecord,
    summary="Record one compilation attempt.",
)
def add_compile_record(
    kernel_id: KernelIdPath, record: CompileRecord, urza: WriteContext
) -> CompileRecord:
    """Record one compilation attempt."""
    if record.kernel_id != kernel_id:
        raise InvalidRequestError(f"record is for kernel {record.kernel_id}, not {kernel_id}")
    urza.repository.add_compile_record(record)
    return record


@router.get(
    "/{kernel_id}/compile-records",
    response_model=list[CompileRecord],
    summary="A kernel's compilation attempts, oldest first.",
)
def compile_records(kernel_id: KernelIdPath, urza: ReadContext) -> list[CompileRecord]:
    """A kernel's compilation attempts, oldest first."""
    return urza.repository.compile_records(kernel_id)


@router.delete(
    "/{kernel_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="Delete a kernel and, when no other kernel shares it, its artifact.",
)
def delete_kernel(kernel_id: KernelIdPath, urza: WriteContext) -> Response:
    """Delete a kernel and, when no other kernel shares it, its artifact."""
    urza.repository.delete_kernel(kernel_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
