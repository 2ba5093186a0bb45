"""Urza's HTTP API (FastAPI), versioned under ``/v1``.

Writes need ``Authorization: Bearer <token>`` unless the server runs open on loopback; reads
optionally too. Every error answers with :class:`~esper.contracts.urza_api.ErrorBody`: one line
that names the problem. A database outage answers 503 and heals by itself when the database
returns (connections are pinged before use).
"""

import logging
from collections.abc import Sequence

from botocore.exceptions import BotoCoreError, ClientError
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from pydantic import ValidationError
from sqlalchemy.exc import DataError, DBAPIError, IntegrityError, OperationalError

from esper import __version__
from esper.contracts.lifecycle import IllegalTransitionError
from esper.contracts.urza_api import ErrorBody
from esper.urza.api.deps import AuthError, EventPublisher, UrzaContext
from esper.urza.api.limits import JsonBodyLimitMiddleware, RateLimitMiddleware, TokenBuckets
from esper.urza.api.metrics import UrzaMetrics
from esper.urza.api.options import ApiOptions
from esper.urza.api.routes_blueprints import router as blueprint_router
from esper.urza.api.routes_kernels import ARTIFACT_PATH
from esper.urza.api.routes_kernels import router as kernel_router
from esper.urza.blobs import BlobIntegrityError, BlobNotFoundError
from esper.urza.repository import (
    ConflictError,
    InvalidRequestError,
    NotFoundError,
    UrzaRepository,
)

LOGGER = logging.getLogger("esper.urza")


def _error(status: int, detail: str, errors: list[str] | None = None) -> JSONResponse:
    body = ErrorBody(detail=detail[:4096], errors=[item[:4096] for item in (errors or [])[:64]])
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return JSONResponse(body.model_dump(mode="json"), status_code=status, headers=headers)


def _install_error_handlers(app: FastAPI) -> None:
    async def request_validation(_: Request, error: RequestValidationError) -> Response:
        return _validation_response(error.errors())

    async def contract_validation(_: Request, error: ValidationError) -> Response:
        return _validation_response(error.errors())

    async def not_found(_: Request, error: Exception) -> Response:
        return _error(404, str(error.args[0]) if error.args else "not found")

    async def conflict(_: Request, error: Exception) -> Response:
        return _error(409, str(error))

    async def invalid(_: Request, error: Exception) -> Response:
        return _error(422, str(error))

    async def integrity(_: Request, error: Exception) -> Response:
        # Uploads are verified before they are stored, so this is stored data gone bad.
        LOGGER.error("artifact integrity failure: %s", error)
        return _error(500, str(error))

    async def missing_blob(_: Request, error: Exception) -> Response:
        # The kernel's row names a blob the store no longer has: stored data lost.
        LOGGER.error("artifact missing from the blob store: %s", error)
        return _error(500, f"stored artifact missing: {error.args[0] if error.args else error}")

    async def unauthorised(_: Request, error: Exception) -> Response:
        return _error(401, str(error))

    async def database_down(_: Request, error: Exception) -> Response:
        LOGGER.warning("database unavailable: %s", error)
        return _error(503, "Urza's database is unavailable; retry later")

    async def stored_conflict(_: Request, error: Exception) -> Response:
        LOGGER.info("request conflicts with stored data: %s", error)
        return _error(409, "the request conflicts with stored data")

    async def does_not_fit(_: Request, error: Exception) -> Response:
        LOGGER.info("value does not fit its column: %s", error)
        return _error(422, "a value does not fit its database column")

    async def blobs_down(_: Request, error: Exception) -> Response:
        LOGGER.warning("blob store unavailable: %s", error)
        return _error(503, "Urza's artifact store is unavailable; retry later")

    app.add_exception_handler(RequestValidationError, request_validation)
    app.add_exception_handler(ValidationError, contract_validation)
    app.add_exception_handler(NotFoundError, not_found)
    app.add_exception_handler(ConflictError, conflict)
    app.add_exception_handler(IllegalTransitionError, conflict)
    app.add_exception_handler(InvalidRequestError, invalid)
    app.add_exception_handler(BlobIntegrityError, integrity)
    app.add_exception_handler(BlobNotFoundError, missing_blob)
    app.add_exception_handler(AuthError, unauthorised)
    app.add_exception_handler(OperationalError, database_down)
    app.add_exception_handler(DBAPIError, database_down)
    # More specific than DBAPIError: these are the request's fault, not an outage.
    app.add_exception_handler(IntegrityError, stored_conflict)
    app.add_exception_handler(DataError, does_not_fit)
    app.add_exception_handler(BotoCoreError, blobs_down)
    app.add_exception_handler(ClientError, blobs_down)


def _validation_response(details: Sequence[object]) -> Response:
    problems = [_format_problem(item) for item in details]
    return _error(422, "; ".join(problems) or "invalid request", problems)


def _format_problem(item: object) -> str:
    if not isinstance(item, dict):
        return str(item)
    location = ".".join(str(part) for part in item.get("loc", ()) if part != "body")
    message = str(item.get("msg", "invalid")).removeprefix("Value error, ")
    return f"{location}: {message}" if location else message


def create_app(
    repository: UrzaRepository,
    options: ApiOptions,
    publish: EventPublisher | None = None,
) -> FastAPI:
    """Build Urza's FastAPI application.

    Args:
        repository: The repository the routes use.
        options: Authentication and limits.
        publish: Announces ``blueprint.submitted`` and ``kernel.phase_changed`` events.

    Returns:
        The application.
    """
    app = FastAPI(
        title="Urza",
        summary="Esper's artifact library: blueprints, compiled kernels, benchmark reports.",
        version=__version__,
        openapi_url="/openapi.json",
    )
    app.state.urza = UrzaContext(repository=repository, options=options, publish=publish)
    # The last middleware added runs first: metrics see every answer, the rate limit refuses
    # before a body is read, and the body limit refuses before anything parses.
    app.add_middleware(
        JsonBodyLimitMiddleware,
        limit=options.max_json_bytes,
        exempt=frozenset({("PUT", ARTIFACT_PATH)}),
    )
    if options.rate_limit is not None:
        app.add_middleware(RateLimitMiddleware, buckets=TokenBuckets(options.rate_limit))
    metrics = UrzaMetrics()
    metrics.install(app)
    _install_error_handlers(app)
    app.include_router(blueprint_router)
    app.include_router(kernel_router)
    if not any(
        getattr(route, "path", None) == ARTIFACT_PATH and "PUT" in getattr(route, "methods", ())
        for route in kernel_router.routes
    ):
        raise RuntimeError(f"no route PUT {ARTIFACT_PATH} to exempt from the JSON body limit")

    @app.get("/healthz", tags=["health"], summary="Liveness: the process answers.")
    def healthz() -> dict[str, str]:
        """Liveness: the process answers."""
        return {"status": "ok"}

    @app.get(
        "/readyz",
        tags=["health"],
        summary="Readiness: the database and the blob store answer.",
        responses={503: {"model": ErrorBody}},
    )
    def readyz() -> Response:
        """Readiness: the database and the blob store answer."""
        problems: list[str] = []
        try:
            repository.ping()
        except (OperationalError, DBAPIError) as error:
            problems.append(f"database: {type(error).__name__}")
        try:
            repository.blobs.check()
        except (OSError, BotoCoreError, ClientError) as error:
            problems.append(f"blob store: {error}")
        if problems:
            return _error(503, "not ready: " + "; ".join(problems), problems)
        return JSONResponse({"status": "ready"})

    @app.get(
        "/metrics",
        tags=["health"],
        summary="Prometheus metrics.",
        response_class=PlainTextResponse,
    )
    def prometheus() -> Response:
        """Prometheus metrics."""
        return metrics.response()

    return app
