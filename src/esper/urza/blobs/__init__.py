"""Content-addressed blob stores for kernel artifact bundles: a local directory and S3."""

from esper.urza.blobs.base import BlobIntegrityError, BlobNotFoundError, BlobStore, blob_key
from esper.urza.blobs.local import LocalBlobStore
from esper.urza.blobs.s3 import S3BlobStore

__all__ = [
    "BlobIntegrityError",
    "BlobNotFoundError",
    "BlobStore",
    "LocalBlobStore",
    "S3BlobStore",
    "blob_key",
]
