"""Settings of Esper's services, read from the environment (prefix ``ESPER_``).

The defaults are the embedded mode: everything under ``$ESPER_HOME`` (``~/.esper``), SQLite for
metadata, a local directory for artifacts, the in-process bus. A cluster sets PostgreSQL, S3 and
Redis through the same variables (the Helm chart's values do).
"""

import ipaddress
import platform
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from esper.contracts.kernel import SIGNING_KEY_ID_PATTERN


def esper_home() -> Path:
    """Return Esper's data directory (``$ESPER_HOME``, default ``~/.esper``).

    Returns:
        The directory (not created here).
    """
    return EsperSettings().home


class EsperSettings(BaseSettings):
    """Settings shared by every component.

    Attributes:
        home: Data directory of the embedded mode.
    """

    model_config = SettingsConfigDict(env_prefix="ESPER_", extra="ignore")

    home: Path = Field(default_factory=lambda: Path.home() / ".esper")


def _default_database_url() -> str:
    return f"sqlite:///{esper_home() / 'urza.sqlite'}"


def _default_artifact_dir() -> Path:
    return esper_home() / "artifacts"


class UrzaSettings(BaseSettings):
    """Settings of Urza, the artifact library (environment prefix ``ESPER_URZA_``).

    Attributes:
        database_url: SQLAlchemy URL; ``sqlite:///...`` (embedded) or
            ``postgresql+psycopg://...`` (cluster).
        auto_migrate: Apply migrations when the server starts (embedded); the chart turns it off
            and runs ``esper urza migrate`` in a Job per release revision instead.
        schema_wait_seconds: Without ``auto_migrate``, how long the server waits at start for
            its database to be reachable and at the head revision (a cluster's migration Job
            may still be running); 0 refuses at once.
        blob_store: ``local`` (a directory) or ``s3`` (any S3 API, MinIO in the chart).
        artifact_dir: Directory of the local blob store.
        s3_endpoint_url: Endpoint of the S3 API (empty for AWS itself).
        s3_bucket: Bucket holding artifacts.
        s3_region: Region name passed to the S3 client.
        s3_access_key_id: Access key.
        s3_secret_access_key: Secret key.
        auth_token: Bearer token required for writes.
        auth_token_file: File holding the token (a mounted Kubernetes secret); wins over
            ``auth_token``.
        allow_anonymous_writes: Accept writes without a token. Only allowed when no token is
            set; without a token and without this flag, the server refuses to listen on a
            non-loopback address.
        require_auth_for_reads: Demand the token for reads too.
        max_upload_bytes: Largest artifact bundle accepted (413 beyond it).
        max_json_bytes: Largest JSON request body accepted (413 beyond it, before parsing).
        rate_limit_per_second: Sustained requests per second per client address (a token
            bucket, in-process: each replica limits on its own); 0 turns rate limiting off.
            The default is generous so the embedded stack (``esper run``, ``esper up``: every
            worker on one loopback address) is never slowed; a cluster may lower it.
        rate_limit_burst: Requests a client may make at once after a quiet spell.
        rate_limit_reads: Count reads too, not only writes (health endpoints never count).
        presign_seconds: Validity of presigned download URLs.
        host: Address to listen on.
        port: Port to listen on.
        access_log: Log every request (uvicorn's access log).
    """

    model_config = SettingsConfigDict(env_prefix="ESPER_URZA_", extra="ignore")

    database_url: str = Field(default_factory=_default_database_url, min_length=1)
    auto_migrate: bool = True
    schema_wait_seconds: float = Field(default=0.0, ge=0, le=3600)
    blob_store: Literal["local", "s3"] = "local"
    artifact_dir: Path = Field(default_factory=_default_artifact_dir)
    s3_endpoint_url: str | None = None
    s3_bucket: str | None = None
    s3_region: str = "us-east-1"
    s3_access_key_id: SecretStr | None = None
    s3_secret_access_key: SecretStr | None = None
    auth_token: SecretStr | None = None
    auth_token_file: Path | None = None
    allow_anonymous_writes: bool = False
    require_auth_for_reads: bool = False
    max_upload_bytes: int = Field(default=512 * 1024 * 1024, ge=1)
    max_json_bytes: int = Field(default=1024 * 1024, ge=1024)
    rate_limit_per_second: float = Field(default=50.0, ge=0)
    rate_limit_burst: int = Field(default=200, ge=1)
    rate_limit_reads: bool = False
    presign_seconds: int = Field(default=900, ge=1, le=604800)
    host: str = "127.0.0.1"
    port: int = Field(default=8420, ge=1, le=65535)
    access_log: bool = False

    @model_validator(mode="after")
    def _check(self) -> "UrzaSettings":
        if self.blob_store == "s3" and not self.s3_bucket:
            raise ValueError("blob_store 's3' needs ESPER_URZA_S3_BUCKET")
        if self.auth_token_file is not None and not self.auth_token_file.is_file():
            raise ValueError(f"ESPER_URZA_AUTH_TOKEN_FILE {self.auth_token_file} is not a file")
        if self.allow_anonymous_writes and self.token() is not None:
            raise ValueError("allow_anonymous_writes contradicts a configured auth token")
        return self

    def token(self) -> str | None:
        """Return the configured write token, read from the token file when one is set.

        Returns:
            The token, or None when writes are not protected.

        Raises:
            ValueError: When the token file is empty.
        """
        if self.auth_token_file is not None:
            token = self.auth_token_file.read_text(encoding="utf-8").strip()
            if not token:
                raise ValueError(f"auth token file {self.auth_token_file} is empty")
            return token
        if self.auth_token is not None:
            return self.auth_token.get_secret_value()
        return None

    def writes_open(self) -> bool:
        """Tell whether writes are accepted without a token.

        Returns:
            True when no token is configured and either the flag allows it or the server only
            listens on loopback (the embedded mode, where only local processes reach it).
        """
        if self.token() is not None:
            return False
        return self.allow_anonymous_writes or _is_loopback(self.host)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class WorkerSettings(BaseSettings):
    """Settings of compile and benchmark workers and other Urza clients (prefix ``ESPER_``).

    Attributes:
        urza_url: Urza's address.
        urza_token: Bearer token for Urza's write endpoints.
        urza_token_file: File holding the token (a mounted secret); wins over ``urza_token``.
        worker_name: Name recorded with each compile attempt (host or pod name).
    """

    model_config = SettingsConfigDict(env_prefix="ESPER_", extra="ignore")

    urza_url: str = "http://127.0.0.1:8420"
    urza_token: SecretStr | None = None
    urza_token_file: Path | None = None
    worker_name: str = Field(default_factory=lambda: platform.node() or "worker", min_length=1)

    def token(self) -> str | None:
        """Return the Urza token, read from the token file when one is set.

        Returns:
            The token or None.
        """
        if self.urza_token_file is not None:
            return self.urza_token_file.read_text(encoding="utf-8").strip() or None
        return self.urza_token.get_secret_value() if self.urza_token is not None else None


class SigningSettings(BaseSettings):
    """Signing of kernel bundles (environment prefix ``ESPER_SIGNING_``).

    Tezzeret signs every bundle it uploads and Kasmina's loader checks the signature before it
    reads a byte of the bundle (docs/security.md). The key ring comes from, first match wins:
    ``key_dir`` (a mounted Kubernetes Secret: one file per key, named by its key id), then
    ``key_file`` (one key), then ``key`` (one key, from the environment). With none of them the
    local key ``$ESPER_HOME/signing.key`` is used, created on first use, so the embedded mode and
    every process sharing its ``ESPER_HOME`` (``esper up``, ``esper run``, the forge's workers)
    work with no setup.

    Attributes:
        mode: ``required`` signs and verifies; ``off`` neither signs nor verifies, and every
            unverified load is logged as a warning.
        key: One key (at least 32 bytes), named ``key_id`` (default ``default``).
        key_file: File holding one key, named ``key_id`` (default ``default``); wins over
            ``key``.
        key_dir: Directory of keys, one file per key, named by its id (a mounted Secret);
            wins over ``key_file`` and ``key``.
        key_id: The key that signs (with ``key_dir``, one of its file names). Verification
            accepts every key of the ring, so rotating is: add the new key everywhere, switch
            ``key_id``, and drop the old key once no kernel signed with it is needed.
    """

    model_config = SettingsConfigDict(env_prefix="ESPER_SIGNING_", extra="ignore")

    mode: Literal["required", "off"] = "required"
    key: SecretStr | None = None
    key_file: Path | None = None
    key_dir: Path | None = None
    key_id: str | None = Field(default=None, pattern=SIGNING_KEY_ID_PATTERN)

    @model_validator(mode="after")
    def _check(self) -> "SigningSettings":
        if self.key_file is not None and self.key_dir is not None:
            raise ValueError("set ESPER_SIGNING_KEY_FILE or ESPER_SIGNING_KEY_DIR, not both")
        if self.key_file is not None and not self.key_file.is_file():
            raise ValueError(f"ESPER_SIGNING_KEY_FILE {self.key_file} is not a file")
        if self.key_dir is not None and not self.key_dir.is_dir():
            raise ValueError(f"ESPER_SIGNING_KEY_DIR {self.key_dir} is not a directory")
        return self


class ForgeSettings(BaseSettings):
    """Settings of the local forge (environment prefix ``ESPER_FORGE_``).

    Attributes:
        targets: Default targets, short forms separated by ``;`` (each submitted blueprint is
            compiled for every target that binds its symbols).
        concurrency: Worker processes at once.
        sweep_seconds: Seconds between reconciliation sweeps.
        timeout_seconds: Longest a worker may run.
        max_attempts: Attempts per unit.
        backoff_seconds: Wait before the first retry (doubled each time).
        bus_url: Oona: ``memory://`` (sweeps only, or shared in-process with ``esper up``) or
            ``redis://...``.
        compile_cache: Ship each kernel's compile cache (a forward+backward ``torch.compile``
            per kernel; off makes compiling much faster).
    """

    model_config = SettingsConfigDict(env_prefix="ESPER_FORGE_", extra="ignore")

    targets: str = "cpu:fp32:C=64,H=16,T=32,W=16:b=1,32"
    concurrency: int = Field(default=1, ge=1, le=64)
    sweep_seconds: float = Field(default=30.0, gt=0)
    timeout_seconds: float = Field(default=1800.0, gt=0)
    max_attempts: int = Field(default=3, ge=1, le=20)
    backoff_seconds: float = Field(default=5.0, ge=0)
    bus_url: str = "memory://"
    compile_cache: bool = True

    def target_list(self) -> list[str]:
        """Return the target short forms.

        Returns:
            The non-empty entries of ``targets``.
        """
        return [item.strip() for item in self.targets.split(";") if item.strip()]
