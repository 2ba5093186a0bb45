"""A throwaway S3 server (MinIO) for tests.

MinIO is built from its Go module by ``scripts/build-minio.sh`` into a cache outside the clone;
``$ESPER_MINIO`` overrides the binary. The server runs single-drive in a temporary directory with
the web console disabled, and :class:`S3Server` creates :attr:`S3Server.default_bucket` on start.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, TypeAlias

import boto3
import botocore.config
import botocore.exceptions

from tests.servers._process import POLL_INTERVAL, BinaryNotFoundError, ServerError, ServerProcess

# boto3 generates client classes at runtime; there is no static type to name without stubs.
S3Client: TypeAlias = Any

MINIO_ENV = "ESPER_MINIO"
BUILD_SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "build-minio.sh"
_BUILD_HINT = (
    f"build it with {BUILD_SCRIPT.relative_to(BUILD_SCRIPT.parents[1])} (needs Go; a cold build "
    f"takes several minutes) or set {MINIO_ENV} to a minio server binary"
)


def find_minio() -> Path:
    """Locate the MinIO server binary (``$ESPER_MINIO``, then the build script's cache path).

    Returns:
        The binary's path.

    Raises:
        BinaryNotFoundError: MinIO has not been built.
    """
    override = os.environ.get(MINIO_ENV)
    if override:
        if not os.access(override, os.X_OK):
            raise BinaryNotFoundError(f"{MINIO_ENV}={override} is not an executable file")
        return Path(override)
    result = subprocess.run(
        ["bash", str(BUILD_SCRIPT), "--print-path"],
        capture_output=True,
        text=True,
        check=False,
        timeout=30,
    )
    if result.returncode != 0:
        raise BinaryNotFoundError(
            f"{BUILD_SCRIPT} --print-path failed ({result.returncode}): {result.stderr.strip()}"
        )
    path = Path(result.stdout.strip().splitlines()[-1])
    if not os.access(path, os.X_OK):
        raise BinaryNotFoundError(f"MinIO server binary not found at {path}: {_BUILD_HINT}")
    return path


@dataclass(frozen=True)
class S3Location:
    """Everything a client needs to reach one bucket.

    Attributes:
        endpoint_url: The S3 endpoint, e.g. ``http://127.0.0.1:40123``.
        access_key: Access key id.
        secret_key: Secret access key.
        region: Region name to sign requests for.
        bucket: The bucket name.
    """

    endpoint_url: str
    access_key: str
    secret_key: str
    region: str
    bucket: str

    def client(self) -> S3Client:
        """Return a new boto3 S3 client for this endpoint (close it when done)."""
        return make_client(self.endpoint_url, self.access_key, self.secret_key, self.region)


def make_client(
    endpoint_url: str,
    access_key: str,
    secret_key: str,
    region: str,
    *,
    retries: int = 3,
    timeout: float = 10.0,
) -> S3Client:
    """Return a boto3 S3 client with path-style addressing for an S3-compatible endpoint.

    Args:
        endpoint_url: The S3 endpoint.
        access_key: Access key id.
        secret_key: Secret access key.
        region: Region to sign requests for.
        retries: Total attempts per request (1 disables retries).
        timeout: Connect and read timeout in seconds.

    Returns:
        The client; call ``close()`` on it when done.
    """
    config = botocore.config.Config(
        s3={"addressing_style": "path"},
        signature_version="s3v4",
        retries={"total_max_attempts": retries, "mode": "standard"},
        connect_timeout=timeout,
        read_timeout=timeout,
    )
    return boto3.session.Session().client(
        "s3",
        endpoint_url=endpoint_url,
        aws_access_key_id=access_key,
        aws_secret_access_key=secret_key,
        region_name=region,
        config=config,
    )


class S3Server(ServerProcess):
    """A throwaway MinIO server on 127.0.0.1.

    Attributes:
        access_key: Root user (access key id).
        secret_key: Root password (secret access key).
        region: The server's region.
        default_bucket: A bucket that exists after every start.
    """

    name: ClassVar[str] = "minio"

    access_key = "esperadmin"
    secret_key = "esperadmin-secret"
    region = "us-east-1"
    default_bucket = "esper-artifacts"

    def __init__(
        self,
        *,
        binary: Path | None = None,
        startup_timeout: float = 60.0,
        shutdown_timeout: float = 30.0,
    ) -> None:
        """Find the binary; nothing is started yet.

        Args:
            binary: The MinIO binary; found by :func:`find_minio` when None.
            startup_timeout: Seconds a start may take.
            shutdown_timeout: Seconds a graceful stop may take.

        Raises:
            BinaryNotFoundError: MinIO has not been built.
        """
        super().__init__(startup_timeout=startup_timeout, shutdown_timeout=shutdown_timeout)
        self.binary = binary if binary is not None else find_minio()

    @property
    def data_dir(self) -> Path:
        """The MinIO drive directory."""
        return self.base_dir / "data"

    @property
    def endpoint_url(self) -> str:
        """The S3 endpoint URL."""
        if self.port is None:
            raise ServerError("minio: no port before the first start()")
        return f"http://127.0.0.1:{self.port}"

    def location(self, bucket: str | None = None) -> S3Location:
        """Return the connection details for ``bucket`` (the default bucket when None)."""
        return S3Location(
            endpoint_url=self.endpoint_url,
            access_key=self.access_key,
            secret_key=self.secret_key,
            region=self.region,
            bucket=bucket or self.default_bucket,
        )

    def client(self, *, retries: int = 3, timeout: float = 10.0) -> S3Client:
        """Return a new boto3 S3 client for this server (close it when done).

        Args:
            retries: Total attempts per request.
            timeout: Connect and read timeout in seconds.
        """
        return make_client(
            self.endpoint_url,
            self.access_key,
            self.secret_key,
            self.region,
            retries=retries,
            timeout=timeout,
        )

    @contextlib.contextmanager
    def open_client(self) -> Iterator[S3Client]:
        """Yield a client and close it afterwards."""
        client = self.client()
        try:
            yield client
        finally:
            client.close()

    def create_bucket(self, bucket: str) -> S3Location:
        """Create a bucket (if missing) and return its location."""
        with self.open_client() as client:
            _create_bucket(client, bucket)
        return self.location(bucket)

    def delete_bucket(self, bucket: str) -> None:
        """Delete a bucket with all its objects and pending multipart uploads (if it exists)."""
        with self.open_client() as client:
            try:
                for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
                    keys = [{"Key": obj["Key"]} for obj in page.get("Contents", [])]
                    if keys:
                        client.delete_objects(Bucket=bucket, Delete={"Objects": keys})
                uploads = client.list_multipart_uploads(Bucket=bucket).get("Uploads", [])
                for upload in uploads:
                    client.abort_multipart_upload(
                        Bucket=bucket, Key=upload["Key"], UploadId=upload["UploadId"]
                    )
                client.delete_bucket(Bucket=bucket)
            except client.exceptions.NoSuchBucket:
                return

    # -- ServerProcess hooks -------------------------------------------------------------------

    def _prepare(self) -> None:
        self.data_dir.mkdir()

    def _env(self) -> Mapping[str, str]:
        return {
            **super()._env(),
            "MINIO_ROOT_USER": self.access_key,
            "MINIO_ROOT_PASSWORD": self.secret_key,
            "MINIO_REGION": self.region,
            "MINIO_BROWSER": "off",
            "MINIO_UPDATE": "off",
        }

    def _command(self) -> list[str]:
        return [
            str(self.binary),
            "server",
            "--address",
            f"127.0.0.1:{self.port}",
            "--certs-dir",
            str(self.base_dir / "certs"),
            str(self.data_dir),
        ]

    def _probe(self) -> bool:
        url = f"{self.endpoint_url}/minio/health/ready"
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                return bool(response.status == 200)
        except urllib.error.HTTPError as exc:
            exc.close()
            return False
        except OSError:
            return False

    def _after_ready(self) -> None:
        # The health endpoint can answer before IAM is initialized; S3 calls then fail with
        # 503 "server not initialized". Retry the bucket creation within the startup timeout.
        deadline = time.monotonic() + self.startup_timeout
        client = self.client(retries=1, timeout=5.0)
        try:
            while True:
                try:
                    _create_bucket(client, self.default_bucket)
                    return
                except (
                    botocore.exceptions.ClientError,
                    botocore.exceptions.ConnectionError,
                ) as exc:
                    if time.monotonic() >= deadline:
                        raise ServerError(
                            f"minio: creating bucket {self.default_bucket!r} failed: {exc}; "
                            f"log {self.log_path}:\n{self.log_tail()}"
                        ) from exc
                time.sleep(POLL_INTERVAL)
        finally:
            client.close()


def _create_bucket(client: S3Client, bucket: str) -> None:
    try:
        client.create_bucket(Bucket=bucket)
    except client.exceptions.BucketAlreadyOwnedByYou:
        return
