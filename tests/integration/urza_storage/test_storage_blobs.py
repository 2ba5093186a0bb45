"""Blob stores on the S3 server (MinIO) and in a local directory, alone and under the
repository."""

from __future__ import annotations

import hashlib
import shutil
from collections.abc import Iterator
from pathlib import Path

import botocore.exceptions
import httpx
import pytest

from esper.contracts.kernel import KernelPhase
from esper.contracts.urza_api import PhaseChange
from esper.urza.blobs import (
    BlobIntegrityError,
    BlobNotFoundError,
    LocalBlobStore,
    S3BlobStore,
    blob_key,
)
from esper.urza.database import make_engine, session_factory
from esper.urza.repository import ConflictError, NotFoundError, UrzaRepository

from .conftest import BlobBackend
from .helpers import BLOB_STORES, bundle, compiled, register

pytestmark = [BLOB_STORES, pytest.mark.timeout(120)]


@pytest.fixture
def blob_repository(
    blob_backend: BlobBackend, migrated_sqlite: Path, scratch: Path
) -> Iterator[UrzaRepository]:
    """A repository on a migrated SQLite file over the parametrized blob store."""
    path = scratch / "urza.sqlite"
    shutil.copyfile(migrated_sqlite, path)
    engine = make_engine(f"sqlite:///{path}")
    yield UrzaRepository(session_factory(engine), blob_backend.store)
    engine.dispose()


def test_put_get_round_trip(blob_backend: BlobBackend) -> None:
    store = blob_backend.store
    data, digest = bundle("round trip", size=3 * 1024 * 1024 + 17)

    uri = store.put(data, digest)

    assert store.get(digest) == data
    assert store.exists(digest)
    assert uri == store.uri(digest)
    assert uri.endswith(blob_key(digest))
    if blob_backend.kind == "s3":
        assert uri == f"s3://{blob_backend.location.bucket}/sha256/{digest[:2]}/{digest}"
    else:
        assert uri == (blob_backend.root / "sha256" / digest[:2] / digest).as_uri()
    assert blob_backend.raw_read(digest) == data
    assert blob_backend.raw_names() == [blob_key(digest)]


def test_empty_blob_round_trips(blob_backend: BlobBackend) -> None:
    digest = hashlib.sha256(b"").hexdigest()
    blob_backend.store.put(b"", digest)
    assert blob_backend.store.get(digest) == b""


def test_put_refuses_bytes_that_do_not_match_the_declared_sha256(
    blob_backend: BlobBackend,
) -> None:
    store = blob_backend.store
    data, digest = bundle("payload")
    _, declared = bundle("other payload")

    with pytest.raises(BlobIntegrityError, match="sha256 mismatch") as caught:
        store.put(data, declared)

    assert declared in str(caught.value)
    assert digest in str(caught.value)
    assert not store.exists(declared)
    assert not store.exists(digest)
    assert blob_backend.raw_names() == []


def test_put_twice_is_a_no_op_with_the_same_uri(blob_backend: BlobBackend) -> None:
    store = blob_backend.store
    data, digest = bundle("twice")
    first = store.put(data, digest)
    version = blob_backend.raw_version(digest)

    second = store.put(data, digest)

    assert second == first
    assert blob_backend.raw_version(digest) == version
    assert blob_backend.raw_names() == [blob_key(digest)]
    assert store.get(digest) == data


def test_get_missing_blob_is_not_found(blob_backend: BlobBackend) -> None:
    _, digest = bundle("never stored")
    with pytest.raises(BlobNotFoundError, match=digest):
        blob_backend.store.get(digest)
    assert not blob_backend.store.exists(digest)


def test_delete_removes_and_tolerates_missing(blob_backend: BlobBackend) -> None:
    store = blob_backend.store
    kept, kept_digest = bundle("kept")
    gone, gone_digest = bundle("gone")
    store.put(kept, kept_digest)
    store.put(gone, gone_digest)

    store.delete(gone_digest)
    store.delete(gone_digest)

    assert not store.exists(gone_digest)
    assert store.exists(kept_digest)
    assert store.get(kept_digest) == kept
    with pytest.raises(BlobNotFoundError):
        store.get(gone_digest)
    assert blob_backend.raw_names() == [blob_key(kept_digest)]


BAD_DIGESTS = ["ABC", "g" * 64, "A" * 64, "../" * 21 + "x", "", "a" * 63, "a" * 65]


def test_malformed_digests_are_refused_before_touching_storage(
    blob_backend: BlobBackend,
) -> None:
    store = blob_backend.store
    for bad in BAD_DIGESTS:
        for method in (store.get, store.exists, store.delete):
            with pytest.raises(ValueError, match="not a sha256 hex digest"):
                method(bad)
        # put checks the bytes against the digest first, so a malformed one never matches.
        with pytest.raises(BlobIntegrityError):
            store.put(b"x", bad)
    assert blob_backend.raw_names() == []


def test_presigned_url(blob_backend: BlobBackend) -> None:
    store = blob_backend.store
    data, digest = bundle("presigned", size=100_000)
    store.put(data, digest)

    url = store.presigned_url(digest, 60)

    if blob_backend.kind == "local":
        assert url is None
        return
    assert url is not None
    assert url.startswith(blob_backend.location.endpoint_url)
    response = httpx.get(url, timeout=10)
    assert response.status_code == 200
    assert response.content == data
    assert hashlib.sha256(response.content).hexdigest() == digest
    # The signature covers the key: another key with the same signature is refused.
    _, other = bundle("not stored")
    tampered = url.replace(digest, other)
    assert httpx.get(tampered, timeout=10).status_code == 403


def test_check_passes_on_a_usable_store(blob_backend: BlobBackend) -> None:
    blob_backend.store.check()


def test_check_fails_when_the_bucket_or_directory_is_missing(
    blob_backend: BlobBackend, tmp_path: Path
) -> None:
    if blob_backend.kind == "local":
        root = tmp_path / "vanishing"
        store = LocalBlobStore(root)
        store.check()
        root.rmdir()
        with pytest.raises(FileNotFoundError, match=str(root)):
            store.check()
        return
    location = blob_backend.location
    store = S3BlobStore(
        "esper-no-such-bucket",
        endpoint_url=location.endpoint_url,
        access_key_id=location.access_key,
        secret_access_key=location.secret_key,
        region=location.region,
    )
    with pytest.raises(botocore.exceptions.ClientError, match=r"404|NoSuchBucket|Not Found"):
        store.check()
    # Reading from a missing bucket is an infrastructure error, not a missing blob.
    _, digest = bundle("x")
    with pytest.raises(botocore.exceptions.ClientError) as caught:
        store.get(digest)
    assert not isinstance(caught.value, BlobNotFoundError)


def test_s3_with_wrong_credentials_fails_check(blob_backend: BlobBackend) -> None:
    if blob_backend.kind == "local":
        LocalBlobStore(blob_backend.root).check()
        return
    location = blob_backend.location
    store = S3BlobStore(
        location.bucket,
        endpoint_url=location.endpoint_url,
        access_key_id=location.access_key,
        secret_access_key="wrong-secret",
        region=location.region,
    )
    with pytest.raises(botocore.exceptions.ClientError, match=r"403|Forbidden"):
        store.check()
    data, digest = bundle("x")
    with pytest.raises(botocore.exceptions.ClientError):
        store.put(data, digest)


# Faults: corrupted blobs -------------------------------------------------------------------


@pytest.mark.parametrize("corruption", ["flipped byte", "truncated", "replaced"])
def test_corrupted_blob_is_refused(blob_backend: BlobBackend, corruption: str) -> None:
    store = blob_backend.store
    data, digest = bundle("victim", size=4096)
    store.put(data, digest)
    damaged = {
        "flipped byte": data[:100] + bytes([data[100] ^ 0x01]) + data[101:],
        "truncated": data[:-1],
        "replaced": b"not the artifact",
    }[corruption]
    blob_backend.overwrite(digest, damaged)
    assert blob_backend.raw_read(digest) == damaged

    returned: list[bytes] = []
    with pytest.raises(BlobIntegrityError, match="sha256 mismatch") as caught:
        returned.append(store.get(digest))

    assert returned == []
    assert digest in str(caught.value)
    assert hashlib.sha256(damaged).hexdigest() in str(caught.value)


def test_read_artifact_refuses_a_corrupted_blob(
    blob_backend: BlobBackend, blob_repository: UrzaRepository
) -> None:
    kernel = compiled(blob_repository, label="corrupt me")
    assert kernel.sha256 is not None
    data, _ = bundle("corrupt me")
    assert blob_repository.read_artifact(kernel.id)[1] == data

    blob_backend.overwrite(kernel.sha256, data[::-1])

    with pytest.raises(BlobIntegrityError, match=kernel.sha256):
        blob_repository.read_artifact(kernel.id)
    # The record itself is intact; only the bytes are refused.
    assert blob_repository.get_kernel(kernel.id) == kernel


def test_repository_upload_and_read_through_the_store(
    blob_backend: BlobBackend, blob_repository: UrzaRepository
) -> None:
    kernel = register(blob_repository)
    blob_repository.change_phase(kernel.id, PhaseChange(phase=KernelPhase.COMPILING))
    data, digest = bundle("through the repository", size=50_000)

    uploaded = blob_repository.upload_artifact(kernel.id, data, digest)

    assert uploaded.artifact_uri == blob_backend.store.uri(digest)
    assert uploaded.artifact_uri.startswith(f"{blob_backend.store.scheme}://")
    assert blob_repository.read_artifact(kernel.id) == (uploaded, data)
    assert blob_backend.raw_names() == [blob_key(digest)]


def test_artifact_link(blob_backend: BlobBackend, blob_repository: UrzaRepository) -> None:
    kernel = compiled(blob_repository, label="linked")
    data, digest = bundle("linked")

    if blob_backend.kind == "local":
        with pytest.raises(ConflictError, match="no direct URLs"):
            blob_repository.artifact_link(kernel.id, 120)
        return
    link = blob_repository.artifact_link(kernel.id, 120)
    assert link.sha256 == digest
    assert link.size_bytes == len(data)
    assert link.expires_in_seconds == 120
    response = httpx.get(link.url, timeout=10)
    assert response.status_code == 200
    assert response.content == data


def test_artifact_link_without_artifact_is_not_found(
    blob_backend: BlobBackend, blob_repository: UrzaRepository
) -> None:
    del blob_backend
    kernel = register(blob_repository)
    with pytest.raises(NotFoundError, match="has no artifact yet"):
        blob_repository.artifact_link(kernel.id, 60)
