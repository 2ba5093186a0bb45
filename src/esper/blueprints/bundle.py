"""Write and read kernel artifact bundles (format: ``esper.contracts.bundle``).

Reading is defensive: only the allow-listed member names, sizes bounded by the archive itself,
every member verified against the manifest's SHA-256 before it is returned, and nothing is
ever unpickled here (weights are safetensors; the IR and manifest are JSON).
"""

import hashlib
import io
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass

from pydantic import ValidationError

from esper.contracts.blueprint import BlueprintIR
from esper.contracts.bundle import BundleMember, BundleMemberName, KernelBundleManifest

_FIXED_TIMESTAMP = (2020, 1, 1, 0, 0, 0)
_MALFORMED_ARCHIVE = (
    zipfile.BadZipFile,  # no archive, a broken directory, or a member failing its CRC-32
    NotImplementedError,  # a damaged header naming a zip version or compression zipfile lacks
    RuntimeError,  # a damaged flag marking a member encrypted
    EOFError,  # a member's data cut short
    UnicodeDecodeError,  # a damaged member name
)
"""What ``zipfile`` raises for a malformed archive (found by fuzzing: tests/unit/kasmina)."""
MAX_MEMBER_BYTES = 2 * 1024**3


class BundleError(ValueError):
    """Raised when a bundle is malformed or fails verification; it must not be used."""


@dataclass(frozen=True)
class KernelBundle:
    """A verified bundle's manifest and member bytes.

    Attributes:
        manifest: The manifest.
        members: Member name to verified bytes (without the manifest).
    """

    manifest: KernelBundleManifest
    members: Mapping[BundleMemberName, bytes]

    def ir(self) -> BlueprintIR:
        """Return the blueprint the bundle was compiled from.

        Returns:
            The IR (checked against the manifest's blueprint hash).

        Raises:
            BundleError: When the IR's hash differs from the manifest's.
        """
        ir = BlueprintIR.model_validate_json(self.members[BundleMemberName.IR])
        if ir.canonical_hash() != self.manifest.blueprint_hash:
            raise BundleError("the bundle's ir.json does not hash to its blueprintHash")
        return ir

    def get(self, name: BundleMemberName) -> bytes | None:
        """Return a member's bytes, if present.

        Args:
            name: The member.

        Returns:
            The bytes or None.
        """
        return self.members.get(name)


def write_bundle(
    manifest_fields: Mapping[str, object], members: Mapping[BundleMemberName, bytes]
) -> tuple[bytes, KernelBundleManifest]:
    """Pack members into a bundle with a manifest listing their digests.

    Args:
        manifest_fields: The manifest's fields other than ``members``.
        members: Member name to bytes (not the manifest).

    Returns:
        The bundle bytes and its manifest.
    """
    entries = [
        BundleMember(name=name, sha256=hashlib.sha256(data).hexdigest(), size_bytes=len(data))
        for name, data in sorted(members.items(), key=lambda item: item[0].value)
    ]
    manifest = KernelBundleManifest.model_validate({**manifest_fields, "members": entries})
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_STORED) as archive:
        _add(archive, BundleMemberName.MANIFEST.value, manifest.to_json().encode())
        for entry in entries:
            _add(archive, entry.name.value, members[entry.name])
    return buffer.getvalue(), manifest


def _add(archive: zipfile.ZipFile, name: str, data: bytes) -> None:
    info = zipfile.ZipInfo(name, date_time=_FIXED_TIMESTAMP)
    info.compress_type = zipfile.ZIP_STORED
    archive.writestr(info, data)


def read_bundle(data: bytes, expected_sha256: str | None = None) -> KernelBundle:
    """Open and verify a bundle.

    Args:
        data: The bundle bytes.
        expected_sha256: The digest Urza recorded; checked first when given.

    Returns:
        The verified bundle.

    Raises:
        BundleError: On a digest mismatch, an unknown or missing member, a member that does not
            match the manifest, or a malformed archive.
    """
    if expected_sha256 is not None:
        actual = hashlib.sha256(data).hexdigest()
        if actual != expected_sha256:
            raise BundleError(
                f"bundle sha256 mismatch (expected {expected_sha256}, got {actual}); refused"
            )
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except _MALFORMED_ARCHIVE as error:
        raise BundleError(f"not a kernel bundle: {error!r}") from None
    try:
        with archive:
            return _verified(archive)
    except _MALFORMED_ARCHIVE as error:
        raise BundleError(f"bundle archive is corrupt: {error!r}") from None


def _verified(archive: zipfile.ZipFile) -> KernelBundle:
    infos = {info.filename: info for info in archive.infolist()}
    allowed = {name.value for name in BundleMemberName}
    unknown = sorted(set(infos) - allowed)
    if unknown:
        raise BundleError(f"bundle has unexpected member(s): {', '.join(unknown)}")
    if BundleMemberName.MANIFEST.value not in infos:
        raise BundleError("bundle has no manifest.json")
    for info in infos.values():
        if info.compress_type != zipfile.ZIP_STORED or info.file_size > MAX_MEMBER_BYTES:
            raise BundleError(f"bundle member {info.filename} is compressed or too large")
    try:
        manifest = KernelBundleManifest.model_validate_json(
            archive.read(BundleMemberName.MANIFEST.value)
        )
    except ValidationError as error:
        raise BundleError(f"bundle manifest.json is invalid: {error}") from None
    listed = {member.name.value for member in manifest.members}
    if listed != set(infos) - {BundleMemberName.MANIFEST.value}:
        raise BundleError("bundle members differ from those its manifest lists")
    members: dict[BundleMemberName, bytes] = {}
    for entry in manifest.members:
        content = archive.read(entry.name.value)
        digest = hashlib.sha256(content).hexdigest()
        if digest != entry.sha256 or len(content) != entry.size_bytes:
            raise BundleError(f"bundle member {entry.name.value} does not match its manifest")
        members[entry.name] = content
    return KernelBundle(manifest=manifest, members=members)
