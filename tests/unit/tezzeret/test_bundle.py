"""The kernel bundle format: write/read round trip, and every way a bundle is refused.

These bundles hold placeholder bytes for the program and weights (the format does not look
inside them), so no compilation is needed here.
"""

from __future__ import annotations

import hashlib
import io
import zipfile

import pytest

from esper.blueprints import bundle as bundle_module
from esper.blueprints.bundle import BundleError, KernelBundle, read_bundle, write_bundle
from esper.blueprints.library import builtin
from esper.contracts.bundle import BundleMemberName as Member
from esper.contracts.bundle import KernelBundleManifest
from esper.contracts.kernel import KernelTarget, kernel_id

IR = builtin("low-rank-adapter")
TARGET = KernelTarget.parse("cpu:fp32:C=16:b=1,4")
MEMBERS = {
    Member.IR: IR.to_json().encode(),
    Member.WEIGHTS: b"weights-placeholder" * 3,
    Member.EXPORTED_PROGRAM: b"program-placeholder" * 5,
}


def _fields(**changes: object) -> dict[str, object]:
    blueprint_hash = IR.canonical_hash()
    return {
        "kernel_id": kernel_id(blueprint_hash, TARGET),
        "blueprint_hash": blueprint_hash,
        "target": TARGET,
        "torch_version": "2.13.0",
        "device_name": "cpu x86_64",
        "compile_seconds": 1.5,
        **changes,
    }


def _write(members: dict[Member, bytes] | None = None) -> tuple[bytes, KernelBundleManifest]:
    return write_bundle(_fields(), members or MEMBERS)


def _zip(entries: list[tuple[str, bytes]], compression: int = zipfile.ZIP_STORED) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=compression) as archive:
        for name, content in entries:
            archive.writestr(name, content)
    return buffer.getvalue()


def _entries(data: bytes) -> list[tuple[str, bytes]]:
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        return [(info.filename, archive.read(info)) for info in archive.infolist()]


def test_round_trip_returns_the_manifest_and_members() -> None:
    data, manifest = _write()
    bundle = read_bundle(data, hashlib.sha256(data).hexdigest())
    assert isinstance(bundle, KernelBundle)
    assert bundle.manifest == manifest
    assert dict(bundle.members) == MEMBERS
    assert bundle.ir() == IR
    assert bundle.get(Member.WEIGHTS) == MEMBERS[Member.WEIGHTS]
    assert bundle.get(Member.COMPILE_CACHE) is None
    assert manifest.member(Member.AOTI_PACKAGE) is None
    for entry in manifest.members:
        assert entry.sha256 == hashlib.sha256(MEMBERS[entry.name]).hexdigest()
        assert entry.size_bytes == len(MEMBERS[entry.name])


def test_bundles_are_byte_for_byte_reproducible_and_stored_uncompressed() -> None:
    first, _ = _write()
    second, _ = _write(dict(reversed(list(MEMBERS.items()))))
    assert first == second
    with zipfile.ZipFile(io.BytesIO(first)) as archive:
        infos = archive.infolist()
    assert [info.filename for info in infos] == [
        "manifest.json",
        "ir.json",
        "module.pt2",
        "weights.safetensors",
    ]
    assert {info.compress_type for info in infos} == {zipfile.ZIP_STORED}
    assert {info.date_time for info in infos} == {(2020, 1, 1, 0, 0, 0)}


def test_optional_members_round_trip() -> None:
    members = {**MEMBERS, Member.COMPILE_CACHE: b"cache", Member.AOTI_PACKAGE: b"aoti"}
    data, manifest = _write(members)
    assert {entry.name for entry in manifest.members} == set(members)
    assert dict(read_bundle(data).members) == members


def test_digest_mismatch_is_refused_before_anything_is_read() -> None:
    data, _ = _write()
    with pytest.raises(BundleError, match=r"bundle sha256 mismatch.*refused"):
        read_bundle(data, "0" * 64)


def test_bytes_that_are_not_an_archive_are_refused() -> None:
    with pytest.raises(BundleError, match="not a kernel bundle"):
        read_bundle(b"definitely not a zip archive")


def test_unknown_member_is_refused() -> None:
    data, _ = _write()
    entries = [*_entries(data), ("../../etc/evil", b"x")]
    with pytest.raises(BundleError, match="unexpected member"):
        read_bundle(_zip(entries))


def test_missing_manifest_is_refused() -> None:
    data, _ = _write()
    entries = [item for item in _entries(data) if item[0] != "manifest.json"]
    with pytest.raises(BundleError, match=r"no manifest\.json"):
        read_bundle(_zip(entries))


def test_compressed_member_is_refused() -> None:
    data, _ = _write()
    with pytest.raises(BundleError, match="compressed or too large"):
        read_bundle(_zip(_entries(data), compression=zipfile.ZIP_DEFLATED))


def test_oversized_member_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    data, _ = _write()
    monkeypatch.setattr(bundle_module, "MAX_MEMBER_BYTES", 32)
    with pytest.raises(BundleError, match="compressed or too large"):
        read_bundle(data)


def test_member_present_but_not_listed_is_refused() -> None:
    data, _ = _write()
    entries = [*_entries(data), ("compile_cache.bin", b"unlisted cache")]
    with pytest.raises(BundleError, match="differ from those its manifest lists"):
        read_bundle(_zip(entries))


def test_member_listed_but_missing_is_refused() -> None:
    data, _ = _write()
    entries = [item for item in _entries(data) if item[0] != "weights.safetensors"]
    with pytest.raises(BundleError, match="differ from those its manifest lists"):
        read_bundle(_zip(entries))


@pytest.mark.parametrize(
    "replacement",
    [b"weights-placeholdeR" * 3, b"short"],
    ids=["same-size", "other-size"],
)
def test_member_that_does_not_match_its_digest_is_refused(replacement: bytes) -> None:
    data, _ = _write()
    entries = [
        (name, replacement if name == "weights.safetensors" else content)
        for name, content in _entries(data)
    ]
    with pytest.raises(BundleError, match=r"member weights\.safetensors does not match"):
        read_bundle(_zip(entries))


def test_ir_of_another_blueprint_is_refused() -> None:
    other = builtin("bottleneck-mlp").to_json().encode()
    data, _ = _write({**MEMBERS, Member.IR: other})
    bundle = read_bundle(data)
    with pytest.raises(BundleError, match="does not hash to its blueprintHash"):
        bundle.ir()


def test_bytes_corrupted_inside_the_archive_are_a_bundle_error() -> None:
    """A member's bytes flipped in place (no digest given): refused as a BundleError.

    Without an expected digest the archive's own CRC catches this first; the reader must still
    report it as a refused bundle, as its contract says, not leak zipfile's exception.
    """
    data, _ = _write()
    offset = data.index(MEMBERS[Member.WEIGHTS])
    corrupted = data[:offset] + b"W" + data[offset + 1 :]
    with pytest.raises(BundleError):
        read_bundle(corrupted)


@pytest.mark.parametrize(
    "manifest",
    [b"{not json", b'{"format": "esper.dev/kernel-bundle/v1"}'],
    ids=["not-json", "missing-fields"],
)
def test_malformed_manifest_is_a_bundle_error(manifest: bytes) -> None:
    data, _ = _write()
    entries = [
        (name, manifest if name == "manifest.json" else content) for name, content in _entries(data)
    ]
    with pytest.raises(BundleError):
        read_bundle(_zip(entries))
