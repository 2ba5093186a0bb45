"""The blob store interface shared by the local-directory and S3 implementations.

Blobs are content addressed: the key is derived from the SHA-256 of the bytes, an upload is
refused unless the bytes match the digest the uploader declared, and a download is verified
before any byte is returned. A mismatch is a :class:`BlobIntegrityError`, never bad bytes.
"""

import hashlib
import re
from abc import ABC, abstractmethod

_SHA256 = re.compile(r"^[0-9a-f]{64}$")


class BlobIntegrityError(RuntimeError):
    """Raised when bytes do not match the SHA-256 they are supposed to have."""


class BlobNotFoundError(KeyError):
    """Raised when no blob has the requested digest."""


def blob_key(sha256: str) -> str:
    """Return the storage key of a blob (``sha256/ab/abcdef...``).

    Args:
        sha256: The blob's digest, lower-case hex.

    Returns:
        The key; the two-character fan-out keeps directories and listings small.

    Raises:
        ValueError: When ``sha256`` is not 64 lower-case hex digits.
    """
    if not _SHA256.fullmatch(sha256):
        raise ValueError(f"not a sha256 hex digest: {sha256!r}")
    return f"sha256/{sha256[:2]}/{sha256}"


def verify(data: bytes, sha256: str, what: str) -> None:
    """Check bytes against their expected digest.

    Args:
        data: The bytes.
        sha256: The expected digest.
        what: What the bytes are, for the error message.

    Raises:
        BlobIntegrityError: When the digest differs.
    """
    actual = hashlib.sha256(data).hexdigest()
    if actual != sha256:
        raise BlobIntegrityError(
            f"{what}: sha256 mismatch (expected {sha256}, got {actual}); the bytes are refused"
        )


class BlobStore(ABC):
    """A content-addressed store of immutable byte blobs."""

    scheme: str
    """URI scheme of the store's blobs (``file`` or ``s3``)."""

    @abstractmethod
    def put(self, data: bytes, sha256: str) -> str:
        """Store bytes under their digest, after verifying it.

        Storing the same bytes twice is a no-op that returns the same URI.

        Args:
            data: The bytes.
            sha256: The digest the uploader declared.

        Returns:
            The blob's URI.

        Raises:
            BlobIntegrityError: When the bytes do not match ``sha256``.
        """

    @abstractmethod
    def get(self, sha256: str) -> bytes:
        """Return a blob's bytes, verified against the digest.

        Args:
            sha256: The digest.

        Returns:
            The bytes.

        Raises:
            BlobNotFoundError: When no such blob exists.
            BlobIntegrityError: When the stored bytes were corrupted.
        """

    @abstractmethod
    def exists(self, sha256: str) -> bool:
        """Tell whether a blob is stored.

        Args:
            sha256: The digest.

        Returns:
            True when it is.
        """

    @abstractmethod
    def delete(self, sha256: str) -> None:
        """Delete a blob; deleting a missing blob is not an error.

        Args:
            sha256: The digest.
        """

    @abstractmethod
    def uri(self, sha256: str) -> str:
        """Return the URI of a blob (whether or not it exists).

        Args:
            sha256: The digest.

        Returns:
            ``file:///...`` or ``s3://bucket/key``.
        """

    @abstractmethod
    def presigned_url(self, sha256: str, expires_in_seconds: int) -> str | None:
        """Return a time-limited direct download URL, when the store can make one.

        Args:
            sha256: The digest.
            expires_in_seconds: Validity of the URL.

        Returns:
            The URL, or None for stores without direct URLs (the local directory).
        """

    @abstractmethod
    def check(self) -> None:
        """Verify the store is usable (for readiness probes).

        Raises:
            OSError: Or a store-specific error, naming what is wrong.
        """
