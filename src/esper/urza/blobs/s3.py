"""A blob store on any S3 API (AWS S3, MinIO)."""

import base64

import boto3
from botocore.client import BaseClient
from botocore.config import Config
from botocore.exceptions import ClientError

from esper.urza.blobs.base import BlobNotFoundError, BlobStore, blob_key, verify

_NOT_FOUND_CODES = frozenset({"404", "NoSuchKey", "NotFound"})


class S3BlobStore(BlobStore):
    """Blobs as objects in one bucket.

    Args:
        bucket: The bucket (it must exist; the chart creates it).
        endpoint_url: The S3 endpoint (MinIO's URL); None for AWS.
        access_key_id: Access key.
        secret_access_key: Secret key.
        region: Region name.
        client: An existing boto3 S3 client to use instead of building one.
    """

    scheme = "s3"

    def __init__(
        self,
        bucket: str,
        *,
        endpoint_url: str | None = None,
        access_key_id: str | None = None,
        secret_access_key: str | None = None,
        region: str = "us-east-1",
        client: BaseClient | None = None,
    ) -> None:
        """Create the store (see the class docstring)."""
        self.bucket = bucket
        self._client = client or boto3.client(
            "s3",
            endpoint_url=endpoint_url,
            aws_access_key_id=access_key_id,
            aws_secret_access_key=secret_access_key,
            region_name=region,
            config=Config(
                signature_version="s3v4",
                s3={"addressing_style": "path"},
                retries={"max_attempts": 3, "mode": "standard"},
                connect_timeout=5,
                read_timeout=60,
            ),
        )

    def put(self, data: bytes, sha256: str) -> str:
        """Store bytes under their verified digest (see :meth:`BlobStore.put`).

        S3 itself re-checks the bytes: the request carries their SHA-256, so a transfer that
        corrupts them is refused by the server.
        """
        verify(data, sha256, "upload")
        if self.exists(sha256):
            return self.uri(sha256)
        self._client.put_object(
            Bucket=self.bucket,
            Key=blob_key(sha256),
            Body=data,
            ChecksumSHA256=_base64_digest(sha256),
            ContentType="application/octet-stream",
        )
        return self.uri(sha256)

    def get(self, sha256: str) -> bytes:
        """Return verified bytes (see :meth:`BlobStore.get`)."""
        try:
            response = self._client.get_object(Bucket=self.bucket, Key=blob_key(sha256))
        except ClientError as error:
            if _error_code(error) in _NOT_FOUND_CODES:
                raise BlobNotFoundError(f"no blob {sha256} in s3://{self.bucket}") from None
            raise
        data = response["Body"].read()
        verify(data, sha256, f"stored blob {self.uri(sha256)}")
        return data

    def exists(self, sha256: str) -> bool:
        """Tell whether the object exists (see :meth:`BlobStore.exists`)."""
        try:
            self._client.head_object(Bucket=self.bucket, Key=blob_key(sha256))
        except ClientError as error:
            if _error_code(error) in _NOT_FOUND_CODES:
                return False
            raise
        return True

    def delete(self, sha256: str) -> None:
        """Delete the object (see :meth:`BlobStore.delete`)."""
        self._client.delete_object(Bucket=self.bucket, Key=blob_key(sha256))

    def uri(self, sha256: str) -> str:
        """Return ``s3://bucket/key``."""
        return f"s3://{self.bucket}/{blob_key(sha256)}"

    def presigned_url(self, sha256: str, expires_in_seconds: int) -> str | None:
        """Return a presigned GET URL for the object."""
        url = self._client.generate_presigned_url(
            "get_object",
            Params={"Bucket": self.bucket, "Key": blob_key(sha256)},
            ExpiresIn=expires_in_seconds,
        )
        return str(url)

    def check(self) -> None:
        """Verify the bucket exists and is reachable (HEAD bucket).

        Raises:
            botocore.exceptions.ClientError: When it is not.
        """
        self._client.head_bucket(Bucket=self.bucket)


def _error_code(error: ClientError) -> str:
    return str(error.response.get("Error", {}).get("Code", ""))


def _base64_digest(sha256: str) -> str:
    return base64.b64encode(bytes.fromhex(sha256)).decode("ascii")
