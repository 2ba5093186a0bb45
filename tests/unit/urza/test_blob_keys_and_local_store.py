"""Blob keys and the local-directory blob store's atomic writes."""

from __future__ import annotations

import errno
import hashlib
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from esper.urza.blobs import BlobIntegrityError, BlobNotFoundError, LocalBlobStore, blob_key
from esper.urza.blobs.base import verify

DIGEST = hashlib.sha256(b"payload").hexdigest()


def _files(root: Path) -> list[str]:
    return sorted(str(path.relative_to(root)) for path in root.rglob("*") if path.is_file())


def test_blob_key_fans_out_by_the_first_two_hex_digits() -> None:
    assert blob_key(DIGEST) == f"sha256/{DIGEST[:2]}/{DIGEST}"
    assert blob_key("0" * 64) == "sha256/00/" + "0" * 64


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "0" * 63,
        "0" * 65,
        DIGEST.upper(),
        "g" * 64,
        "../" + DIGEST[3:],
        DIGEST[:-1] + "/",
        " " + DIGEST[1:],
        DIGEST + "\n",
        "sha256:" + DIGEST[7:],
    ],
)
def test_blob_key_refuses_anything_but_64_lower_case_hex_digits(bad: str) -> None:
    with pytest.raises(ValueError, match="not a sha256 hex digest"):
        blob_key(bad)


def test_verify_names_both_digests() -> None:
    verify(b"payload", DIGEST, "upload")
    with pytest.raises(BlobIntegrityError, match="upload: sha256 mismatch") as caught:
        verify(b"other", DIGEST, "upload")
    assert DIGEST in str(caught.value)
    assert hashlib.sha256(b"other").hexdigest() in str(caught.value)


def test_blob_not_found_is_a_key_error() -> None:
    assert issubclass(BlobNotFoundError, KeyError)


def test_local_store_creates_its_root_and_resolves_it(tmp_path: Path) -> None:
    root = tmp_path / "a" / ".." / "artifacts" / "nested"
    store = LocalBlobStore(root)
    assert store.root == (tmp_path / "artifacts" / "nested").resolve()
    assert store.root.is_dir()
    assert store.uri(DIGEST) == (store.root / blob_key(DIGEST)).as_uri()
    assert store.uri(DIGEST).startswith("file:///")
    assert store.scheme == "file"


def test_local_store_expands_the_home_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    store = LocalBlobStore(Path("~/esper-artifacts"))
    assert store.root == (tmp_path / "esper-artifacts").resolve()


def test_local_writes_leave_no_temporary_files(tmp_path: Path) -> None:
    store = LocalBlobStore(tmp_path / "blobs")
    digests = []
    for index in range(20):
        data = f"blob {index}".encode() * (index + 1)
        digest = hashlib.sha256(data).hexdigest()
        store.put(data, digest)
        store.put(data, digest)
        digests.append(digest)

    assert _files(store.root) == sorted(blob_key(digest) for digest in digests)
    assert not [name for name in _files(store.root) if ".upload-" in name]


def test_local_write_lands_by_rename_never_in_place(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The final path appears only through the atomic rename of a fully written, synced file.
    store = LocalBlobStore(tmp_path / "blobs")
    final = store.root / blob_key(DIGEST)
    seen: list[tuple[bool, bytes]] = []
    real_replace = Path.replace

    def spying_replace(self: Path, target: Path) -> Path:
        seen.append((Path(target).exists(), self.read_bytes()))
        assert self.parent == final.parent
        assert self.name.startswith(".upload-")
        return real_replace(self, target)

    monkeypatch.setattr(Path, "replace", spying_replace)

    store.put(b"payload", DIGEST)

    assert seen == [(False, b"payload")]
    assert final.read_bytes() == b"payload"


def test_failed_local_write_leaves_no_temporary_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A full disk (ENOSPC) during the write must not leave a half-written temporary file.
    store = LocalBlobStore(tmp_path / "blobs")

    def no_space(_descriptor: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", no_space)

    with pytest.raises(OSError, match="No space left"):
        store.put(b"payload", DIGEST)

    monkeypatch.undo()
    assert not store.exists(DIGEST)
    assert _files(store.root) == []


def test_concurrent_local_puts_of_one_blob(tmp_path: Path) -> None:
    store = LocalBlobStore(tmp_path / "blobs")
    data = b"shared" * 10_000
    digest = hashlib.sha256(data).hexdigest()
    barrier = threading.Barrier(8)

    def put() -> str:
        barrier.wait(timeout=30)
        return store.put(data, digest)

    with ThreadPoolExecutor(max_workers=8) as pool:
        uris = [future.result(timeout=30) for future in [pool.submit(put) for _ in range(8)]]

    assert set(uris) == {store.uri(digest)}
    assert store.get(digest) == data
    assert _files(store.root) == [blob_key(digest)]


def test_local_check_reports_a_missing_directory(tmp_path: Path) -> None:
    store = LocalBlobStore(tmp_path / "gone")
    store.check()
    store.root.rmdir()
    with pytest.raises(FileNotFoundError, match="does not exist"):
        store.check()


def test_local_check_reports_an_unwritable_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = LocalBlobStore(tmp_path / "readonly")
    # Root ignores permission bits, so the access check itself is what the test controls.
    monkeypatch.setattr(os, "access", lambda _path, _mode: False)
    with pytest.raises(PermissionError, match="is not writable"):
        store.check()


def test_local_presigned_url_is_none(tmp_path: Path) -> None:
    assert LocalBlobStore(tmp_path).presigned_url(DIGEST, 60) is None
