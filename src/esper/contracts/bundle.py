"""The manifest of a kernel artifact bundle (``manifest.json`` inside the bundle).

A bundle is one zip archive (stored, not compressed) per (blueprint, target):

- ``manifest.json`` — this contract;
- ``ir.json`` — the blueprint's canonical JSON;
- ``weights.safetensors`` — the initial weights and buffers (safetensors: no pickle);
- ``module.pt2`` — the ``torch.export`` program with a dynamic batch dimension;
- ``compile_cache.bin`` — ``torch.compiler.save_cache_artifacts()`` from compiling forward and
  backward on the target (optional);
- ``aoti.pt2`` — an AOTInductor package for inference (optional).

Every member's SHA-256 is listed here; the bundle's own SHA-256 is the kernel's integrity check
recorded by Urza.
"""

from dataclasses import dataclass
from enum import StrEnum
from typing import Literal

from pydantic import Field, model_validator

from esper.contracts._base import Contract
from esper.contracts.kernel import ArtifactSignature, KernelTarget
from esper.contracts.types import (
    Count,
    KernelId,
    NonNegativeFloat,
    Sha256Hex,
    ShortText,
)

BUNDLE_FORMAT = "esper.dev/kernel-bundle/v1"


class BundleMemberName(StrEnum):
    """The files a bundle may contain; nothing else is accepted."""

    MANIFEST = "manifest.json"
    IR = "ir.json"
    WEIGHTS = "weights.safetensors"
    EXPORTED_PROGRAM = "module.pt2"
    COMPILE_CACHE = "compile_cache.bin"
    AOTI_PACKAGE = "aoti.pt2"


REQUIRED_MEMBERS = frozenset(
    {BundleMemberName.IR, BundleMemberName.WEIGHTS, BundleMemberName.EXPORTED_PROGRAM}
)
"""Members every bundle has besides the manifest."""


class BundleMember(Contract):
    """One file of a bundle.

    Attributes:
        name: The file name.
        sha256: Its SHA-256.
        size_bytes: Its size.
    """

    name: BundleMemberName
    sha256: Sha256Hex
    size_bytes: Count


class KernelBundleManifest(Contract):
    """What a bundle holds and how it was made.

    Attributes:
        format: The bundle format version.
        kernel_id: The kernel.
        blueprint_hash: Its blueprint.
        target: Its target.
        torch_version: The torch version that compiled it.
        device_name: The device it was compiled on.
        compile_seconds: Wall time of export plus the forward+backward compile.
        compile_cache_seconds: Of which, the forward+backward ``torch.compile``.
        export_batch_min: Smallest batch the exported program accepts.
        export_batch_max: Largest batch the exported program accepts.
        members: The files other than the manifest.
    """

    format: Literal["esper.dev/kernel-bundle/v1"] = BUNDLE_FORMAT
    kernel_id: KernelId
    blueprint_hash: Sha256Hex
    target: KernelTarget
    torch_version: ShortText
    device_name: ShortText
    compile_seconds: NonNegativeFloat
    compile_cache_seconds: NonNegativeFloat | None = None
    export_batch_min: int = Field(default=1, ge=1)
    export_batch_max: int = Field(default=65535, ge=1)
    members: list[BundleMember] = Field(min_length=1, max_length=8)

    @model_validator(mode="after")
    def _members_complete(self) -> "KernelBundleManifest":
        names = [member.name for member in self.members]
        if len(names) != len(set(names)):
            raise ValueError("a bundle member is listed twice")
        if BundleMemberName.MANIFEST in names:
            raise ValueError("the manifest does not list itself")
        missing = sorted(name.value for name in REQUIRED_MEMBERS - set(names))
        if missing:
            raise ValueError(f"bundle lacks required member(s): {', '.join(missing)}")
        return self

    def member(self, name: BundleMemberName) -> BundleMember | None:
        """Return a member's entry, if the bundle has it.

        Args:
            name: The member.

        Returns:
            Its entry or None.
        """
        for member in self.members:
            if member.name is name:
                return member
        return None


@dataclass(frozen=True)
class FetchedBundle:
    """A bundle as a kernel source hands it to Kasmina's loader, with what vouches for it.

    Attributes:
        data: The bundle bytes (untrusted until checked).
        sha256: The SHA-256 its library recorded for them.
        signature: Tezzeret's signature its library recorded, or None for an unsigned bundle.
    """

    data: bytes
    sha256: str
    signature: ArtifactSignature | None
