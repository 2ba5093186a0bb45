"""Signatures of kernel bundles: Tezzeret signs, Kasmina verifies before loading.

A signature is HMAC-SHA256, keyed by a secret that only Esper's own processes hold, over
:func:`signed_message`: a fixed label, the kernel id and the SHA-256 of the bundle bytes. The MAC
is over the digest rather than the bytes because the digest is already the bundle's identity
(Urza records it, the loader recomputes it from the bytes it holds), so signing it costs nothing
and is as strong as signing the bytes while SHA-256 is collision resistant. The kernel id is in
the message so that a bundle signed for one kernel is refused when served as another, before
its manifest is ever parsed. The signature travels beside the bundle, in Urza's kernel record
(:class:`esper.contracts.kernel.ArtifactSignature`), never inside it: checking it must not
require opening the archive it protects.

Keys come from :class:`esper.config.SigningSettings` (docs/security.md).
"""

import hashlib
import hmac
import logging
import os
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from esper.blueprints.bundle import BundleError
from esper.config import SigningSettings, esper_home
from esper.contracts.kernel import SIGNING_KEY_ID_PATTERN, ArtifactSignature

LOGGER = logging.getLogger("esper.signing")

MESSAGE_LABEL = b"esper.dev/kernel-bundle-signature/v1"
"""Domain separation: the key signs nothing else in this format."""

MIN_KEY_BYTES = 32
"""Shortest key accepted (HMAC-SHA256's block of security: 256 bits)."""

DEFAULT_KEY_ID = "default"
"""Id of a single key (``ESPER_SIGNING_KEY`` or ``_KEY_FILE``) when ``_KEY_ID`` names none."""

LOCAL_KEY_FILE = "signing.key"
"""The local key's file name under ``$ESPER_HOME``."""

_KEY_ID = re.compile(SIGNING_KEY_ID_PATTERN)


class SignatureError(BundleError):
    """A bundle's signature is missing, from an unknown key, or wrong: never load the kernel."""


class SigningKeyError(ValueError):
    """The configured signing keys cannot be used (unreadable, empty, too short, misnamed)."""


def signed_message(kernel_id: str, sha256: str) -> bytes:
    """Return the bytes a kernel's signature covers.

    Args:
        kernel_id: The kernel.
        sha256: The SHA-256 of its bundle bytes, lower-case hex.

    Returns:
        The label, the kernel id and the digest, one per line.
    """
    return b"\n".join((MESSAGE_LABEL, kernel_id.encode("ascii"), sha256.encode("ascii")))


@dataclass(frozen=True)
class Keyring:
    """The signing keys a process holds.

    Attributes:
        keys: Key id -> key bytes (never shown in a repr).
        signing_key_id: The key that signs, or None for a ring that only verifies.
        source: Where the keys came from, for messages.
    """

    keys: Mapping[str, bytes] = field(repr=False)
    signing_key_id: str | None
    source: str

    def __post_init__(self) -> None:
        """Check the ring: at least one key, each long enough, the signing key present."""
        if not self.keys:
            raise SigningKeyError(f"{self.source}: no signing key")
        for key_id, key in self.keys.items():
            if len(key) < MIN_KEY_BYTES:
                raise SigningKeyError(
                    f"{self.source}: key '{key_id}' has {len(key)} bytes, at least "
                    f"{MIN_KEY_BYTES} are required (for example `openssl rand -hex 32`)"
                )
        if self.signing_key_id is not None and self.signing_key_id not in self.keys:
            raise SigningKeyError(
                f"{self.source}: ESPER_SIGNING_KEY_ID '{self.signing_key_id}' is not one of "
                f"its keys ({', '.join(sorted(self.keys))})"
            )

    def sign(self, kernel_id: str, data: bytes) -> ArtifactSignature:
        """Sign a kernel's bundle with the signing key.

        Args:
            kernel_id: The kernel.
            data: Its bundle bytes.

        Returns:
            The signature to store beside the bundle.

        Raises:
            SigningKeyError: When the ring names no signing key.
        """
        if self.signing_key_id is None:
            raise SigningKeyError(f"{self.source}: set ESPER_SIGNING_KEY_ID to the key that signs")
        message = signed_message(kernel_id, hashlib.sha256(data).hexdigest())
        mac = hmac.new(self.keys[self.signing_key_id], message, hashlib.sha256).hexdigest()
        return ArtifactSignature(key_id=self.signing_key_id, hmac_sha256=mac)

    def verify(self, kernel_id: str, data: bytes, signature: ArtifactSignature | None) -> None:
        """Check a bundle's signature; only the bytes given are trusted, not a recorded digest.

        Args:
            kernel_id: The kernel the bundle is loaded as.
            data: The bundle bytes.
            signature: The signature its library recorded, if any.

        Raises:
            SignatureError: When the bundle is unsigned, signed with a key id this ring does
                not hold, or the MAC does not match.
        """
        if signature is None:
            raise SignatureError(
                f"kernel {kernel_id}: the artifact is unsigned and signatures are required "
                "(ESPER_SIGNING_MODE=required); recompile it with a signing key configured"
            )
        key = self.keys.get(signature.key_id)
        if key is None:
            raise SignatureError(
                f"kernel {kernel_id}: signed with key id '{signature.key_id}', which is not in "
                f"this process's key ring ({self.source}: {', '.join(sorted(self.keys))})"
            )
        message = signed_message(kernel_id, hashlib.sha256(data).hexdigest())
        expected = hmac.new(key, message, hashlib.sha256).hexdigest()
        if not hmac.compare_digest(expected, signature.hmac_sha256):
            raise SignatureError(
                f"kernel {kernel_id}: bad signature under key id '{signature.key_id}': the "
                "bundle is not the one Tezzeret signed for this kernel, or another key has "
                "that id"
            )


def load_keyring(settings: SigningSettings) -> Keyring | None:
    """Return the key ring the settings describe.

    Args:
        settings: The signing settings.

    Returns:
        The ring, or None when ``mode`` is ``off`` (nothing is signed or verified).

    Raises:
        SigningKeyError: When a key file or directory is unreadable, empty or misnamed, or a
            key is too short.
    """
    if settings.mode == "off":
        LOGGER.warning("ESPER_SIGNING_MODE=off: kernel bundles are neither signed nor verified")
        return None
    single_id = settings.key_id or DEFAULT_KEY_ID
    if settings.key_dir is not None:
        return Keyring(
            _read_key_dir(settings.key_dir),
            settings.key_id,
            f"ESPER_SIGNING_KEY_DIR {settings.key_dir}",
        )
    if settings.key_file is not None:
        source = f"ESPER_SIGNING_KEY_FILE {settings.key_file}"
        return Keyring({single_id: _read_key(settings.key_file, source)}, single_id, source)
    if settings.key is not None:
        key = settings.key.get_secret_value().strip().encode()
        return Keyring({single_id: key}, single_id, "ESPER_SIGNING_KEY")
    return local_keyring(esper_home())


def local_keyring(home: Path) -> Keyring:
    """Return the ring of the local key ``home/signing.key``, creating the key on first use.

    Every process that shares ``home`` (``esper up``, ``esper run``, the forge's workers) gets
    the same key, so kernels signed in one run verify in the next. Its key id is derived from
    the key, so a process with a different local key reports an unknown key id rather than a
    bad signature.

    Args:
        home: Esper's data directory.

    Returns:
        The ring (one key, which signs).
    """
    path = home / LOCAL_KEY_FILE
    if not path.exists():
        _create_key(path)
    key = _read_key(path, f"local signing key {path}")
    key_id = "local-" + hashlib.sha256(key).hexdigest()[:12]
    LOGGER.info("no signing key configured: using the local key %s (key id %s)", path, key_id)
    return Keyring({key_id: key}, key_id, f"local signing key {path}")


def _create_key(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    draft = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    descriptor = os.open(draft, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w", encoding="ascii") as handle:
        handle.write(secrets.token_hex(MIN_KEY_BYTES) + "\n")
    try:
        # A hard link never replaces an existing file: when processes race to create the key,
        # the first one wins and every other one reads it.
        os.link(draft, path)
        LOGGER.warning("created the local signing key %s", path)
    except FileExistsError:
        pass
    finally:
        draft.unlink()


def _read_key(path: Path, source: str) -> bytes:
    try:
        # Surrounding whitespace is not key material: a Secret written with `echo` or
        # `openssl rand -hex 32 > file` ends in a newline, and the env form must match it.
        key = path.read_bytes().strip()
    except OSError as error:
        raise SigningKeyError(f"{source}: cannot read {path}: {error.strerror}") from None
    if not key:
        raise SigningKeyError(f"{source}: {path} is empty")
    return key


def _read_key_dir(directory: Path) -> dict[str, bytes]:
    source = f"ESPER_SIGNING_KEY_DIR {directory}"
    try:
        entries = sorted(directory.iterdir())
    except OSError as error:
        raise SigningKeyError(f"{source}: cannot list it: {error.strerror}") from None
    keys: dict[str, bytes] = {}
    for entry in entries:
        # A mounted Secret also holds `..data` and timestamped directories (its atomic
        # updates); the keys are the visible names.
        if entry.name.startswith("."):
            continue
        if not _KEY_ID.match(entry.name):
            raise SigningKeyError(
                f"{source}: '{entry.name}' is not a valid key id ({SIGNING_KEY_ID_PATTERN})"
            )
        if not entry.is_file():
            raise SigningKeyError(f"{source}: '{entry.name}' is not a file")
        keys[entry.name] = _read_key(entry, source)
    if not keys:
        raise SigningKeyError(f"{source}: holds no key")
    return keys
