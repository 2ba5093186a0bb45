"""A blob store in a local directory (the embedded default)."""

import os
import tempfile
from pathlib import Path

from esper.urza.blobs.base import BlobNotFoundError, BlobStore, blob_key, verify


class LocalBlobStore(BlobStore):
    """Blobs as files under one directory, written atomically (temp file, then rename).

    Args:
        root: The directory; created when missing.
    """

    scheme = "file"

    def __init__(self, root: Path) -> None:
        """Create the store (see the class docstring)."""
        self.root = root.expanduser().resolve()
        self.root.mkdir(parents=True, exist_ok=True)

    def _path(self, sha256: str) -> Path:
        return self.root / blob_key(sha256)

    def put(self, data: bytes, sha256: str) -> str:
        """Store bytes under their verified digest (see :meth:`BlobStore.put`)."""
        verify(data, sha256, "upload")
        path = self._path(sha256)
        if path.is_file():
            return self.uri(sha256)
        path.parent.mkdir(parents=True, exist_ok=True)
        # A reader must never see a half-written blob: write aside, then rename atomically.
        descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=".upload-")
        try:
            with os.fdopen(descriptor, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            Path(temporary).replace(path)
        except BaseException:
            # A failed write (disk full, interrupted) must not leave its temp file behind.
            Path(temporary).unlink(missing_ok=True)
            raise
        return self.uri(sha256)

    def get(self, sha256: str) -> bytes:
        """Return verified bytes (see :meth:`BlobStore.get`)."""
        path = self._path(sha256)
        if not path.is_file():
            raise BlobNotFoundError(f"no blob {sha256} in {self.root}")
        data = path.read_bytes()
        verify(data, sha256, f"stored blob {path}")
        return data

    def exists(self, sha256: str) -> bool:
        """Tell whether the blob's file exists (see :meth:`BlobStore.exists`)."""
        return self._path(sha256).is_file()

    def delete(self, sha256: str) -> None:
        """Remove the blob's file (see :meth:`BlobStore.delete`)."""
        self._path(sha256).unlink(missing_ok=True)

    def uri(self, sha256: str) -> str:
        """Return ``file://`` + the blob's absolute path."""
        return self._path(sha256).as_uri()

    def presigned_url(self, sha256: str, expires_in_seconds: int) -> str | None:
        """Return None: a local directory has no direct download URLs."""
        del sha256, expires_in_seconds
        return None

    def check(self) -> None:
        """Verify the directory exists and is writable.

        Raises:
            OSError: When it is not.
        """
        if not self.root.is_dir():
            raise FileNotFoundError(f"artifact directory {self.root} does not exist")
        if not os.access(self.root, os.W_OK):
            raise PermissionError(f"artifact directory {self.root} is not writable")
