"""``/v1/blueprints``: register, read, list and delete blueprints."""

from typing import Annotated

from fastapi import APIRouter, Path, Query, Response, status

from esper.contracts.blueprint import BlueprintIR
from esper.contracts.events import BlueprintSubmitted, Event, Topic
from esper.contracts.urza_api import MAX_PAGE_SIZE, BlueprintPage, BlueprintRecord, ErrorBody
from esper.urza.api.deps import SHA256_PATTERN, TAG_PATTERN, ReadContext, WriteContext
from esper.urza.api.limits import LIMIT_RESPONSES

ERRORS: dict[int | str, dict[str, object]] = {
    400: {"model": ErrorBody, "description": "Malformed request body (not JSON)."},
    401: {"model": ErrorBody, "description": "Missing or invalid bearer token."},
    404: {"model": ErrorBody, "description": "No such blueprint."},
    409: {"model": ErrorBody, "description": "Conflicts with the stored state."},
    422: {"model": ErrorBody, "description": "Invalid request; the message names the problem."},
    503: {"model": ErrorBody, "description": "The database is unavailable."},
} | LIMIT_RESPONSES

HashPath = Annotated[str, Path(pattern=SHA256_PATTERN, description="Canonical blueprint hash.")]


router = APIRouter(prefix="/v1/blueprints", tags=["blueprints"], responses=ERRORS)
"""The blueprints routes."""


@router.post(
    "",
    response_model=BlueprintRecord,
    status_code=status.HTTP_201_CREATED,
    summary="Register a blueprint (idempotent: 201 when new, 200 with the same hash after).",
    responses={200: {"model": BlueprintRecord, "description": "Already registered."}},
)
def create_blueprint(ir: BlueprintIR, urza: WriteContext, response: Response) -> BlueprintRecord:
    """Register a blueprint (idempotent: 201 when new, 200 with the same hash after)."""
    record, created = urza.repository.put_blueprint(ir)
    if not created:
        response.status_code = status.HTTP_200_OK
    if urza.publish is not None:
        # Announced on every successful submission, not only the first: consumers are
        # idempotent, and a retried request must not lose the announcement.
        urza.publish(
            Event(
                topic=Topic.BLUEPRINT_SUBMITTED,
                source="urza",
                payload=BlueprintSubmitted(
                    blueprint_hash=record.hash, name=record.ir.name, targets=[]
                ),
            )
        )
    return record


@router.get("/{blueprint_hash}", response_model=BlueprintRecord, summary="Read a blueprint.")
def get_blueprint(blueprint_hash: HashPath, urza: ReadContext) -> BlueprintRecord:
    """Read a blueprint."""
    return urza.repository.get_blueprint(blueprint_hash)


@router.get("", response_model=BlueprintPage, summary="List blueprints (by hash).")
def list_blueprints(
    *,
    urza: ReadContext,
    name: Annotated[str | None, Query(max_length=63)] = None,
    tag: Annotated[str | None, Query(pattern=TAG_PATTERN)] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE_SIZE)] = 50,
    cursor: Annotated[str | None, Query(pattern=SHA256_PATTERN)] = None,
) -> BlueprintPage:
    """List blueprints (by hash)."""
    return urza.repository.list_blueprints(name=name, tag=tag, limit=limit, cursor=cursor)


@router.delete(
    "/{blueprint_hash}",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="Delete a blueprint (with cascade=true, also its kernels and artifacts).",
)
def delete_blueprint(
    blueprint_hash: HashPath,
    urza: WriteContext,
    cascade: Annotated[bool, Query()] = False,
) -> Response:
    """Delete a blueprint (with cascade=true, also its kernels and artifacts)."""
    urza.repository.delete_blueprint(blueprint_hash, cascade=cascade)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
