"""Assemble Urza from its settings: database, blob store, repository and HTTP app."""

from dataclasses import dataclass

from fastapi import FastAPI
from sqlalchemy import Engine

from esper.config import UrzaSettings
from esper.urza.api.app import EventPublisher, create_app
from esper.urza.api.limits import RateLimit
from esper.urza.api.options import ApiOptions
from esper.urza.blobs import BlobStore, LocalBlobStore, S3BlobStore
from esper.urza.database import (
    make_engine,
    migrate,
    session_factory,
    wait_for_current_schema,
)
from esper.urza.repository import UrzaRepository


@dataclass(frozen=True)
class UrzaService:
    """A ready-to-serve Urza.

    Attributes:
        engine: The database engine.
        repository: The repository over it and the blob store.
        app: The HTTP application.
    """

    engine: Engine
    repository: UrzaRepository
    app: FastAPI


def make_blob_store(settings: UrzaSettings) -> BlobStore:
    """Build the blob store the settings choose.

    Args:
        settings: Urza's settings.

    Returns:
        The local-directory or S3 store.
    """
    if settings.blob_store == "s3":
        if settings.s3_bucket is None:
            raise ValueError("blob_store 's3' needs ESPER_URZA_S3_BUCKET")
        return S3BlobStore(
            settings.s3_bucket,
            endpoint_url=settings.s3_endpoint_url,
            access_key_id=(
                settings.s3_access_key_id.get_secret_value() if settings.s3_access_key_id else None
            ),
            secret_access_key=(
                settings.s3_secret_access_key.get_secret_value()
                if settings.s3_secret_access_key
                else None
            ),
            region=settings.s3_region,
        )
    return LocalBlobStore(settings.artifact_dir)


def build_service(settings: UrzaSettings, publish: EventPublisher | None = None) -> UrzaService:
    """Connect to the database and blob store and build the app.

    With ``auto_migrate`` the schema is brought to head first; otherwise a database that is not
    at head (after waiting ``schema_wait_seconds`` for it) is refused, naming the command that
    fixes it.

    Args:
        settings: Urza's settings.
        publish: Announces events on Oona, when a bus is wired in.

    Returns:
        The service.

    Raises:
        DatabaseNotReadyError: When ``auto_migrate`` is off and the database is still
            unreachable or behind after ``schema_wait_seconds``.
        ValueError: When the settings leave writes neither protected nor allowed open.
    """
    token = settings.token()
    options = ApiOptions(
        token=token,
        writes_open=token is None and settings.writes_open(),
        require_auth_for_reads=settings.require_auth_for_reads,
        max_upload_bytes=settings.max_upload_bytes,
        presign_seconds=settings.presign_seconds,
        max_json_bytes=settings.max_json_bytes,
        rate_limit=(
            RateLimit(
                per_second=settings.rate_limit_per_second,
                burst=settings.rate_limit_burst,
                reads=settings.rate_limit_reads,
            )
            if settings.rate_limit_per_second > 0
            else None
        ),
    )
    engine = make_engine(settings.database_url)
    if settings.auto_migrate:
        migrate(engine)
    else:
        wait_for_current_schema(engine, timeout=settings.schema_wait_seconds)
    repository = UrzaRepository(session_factory(engine), make_blob_store(settings))
    return UrzaService(
        engine=engine, repository=repository, app=create_app(repository, options, publish)
    )
