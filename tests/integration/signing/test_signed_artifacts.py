"""Signed artifacts across the real parts: Tezzeret signs, Urza stores, Kasmina verifies.

Tezzeret compiles a built-in blueprint for real and uploads it, signed, to a live Urza (the
embedded default: SQLite and a local blob store, over HTTP); Urabrask validates it; Kasmina's
loader, through the Urza-backed source, checks the signature and builds the seed. Then the store
is attacked the ways a signature must survive: bytes changed in the blob store, a forged bundle
that passes every digest check because the record was rewritten to match it, a stripped
signature, and keys rotated.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Iterator

import pytest
from sqlalchemy import update

from esper.blueprints.bundle import read_bundle, write_bundle
from esper.blueprints.library import builtin
from esper.blueprints.signing import Keyring, SignatureError, load_keyring
from esper.config import SigningSettings
from esper.contracts.bundle import BundleMemberName
from esper.contracts.kernel import KernelPhase, KernelTarget
from esper.kasmina.loader import load_kernel
from esper.tezzeret.compiler import CompileOptions
from esper.tezzeret.worker import compile_and_publish
from esper.urabrask.worker import validate_and_publish
from esper.urza.client import UrzaError
from esper.urza.kernel_source import UrzaKernelSource
from esper.urza.models import KernelRow
from tests.integration.phase1.support import (
    RunningUrza,
    embedded_settings,
    local_blob_path,
    serving,
)

pytestmark = [pytest.mark.timeout(600), pytest.mark.reliability("signed-artifacts")]

TARGET = KernelTarget.parse("cpu:fp32:C=32:b=1,8")
OLD_KEY = b"tezzeret-old-key-" + b"1" * 32
NEW_KEY = b"tezzeret-new-key-" + b"2" * 32


@dataclasses.dataclass
class Signed:
    """A live Urza holding one Validated kernel, compiled and signed by Tezzeret."""

    urza: RunningUrza
    kernel_id: str
    signing: Keyring


@pytest.fixture(scope="module")
def signed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Signed]:
    """Compile, sign, upload and validate one kernel; the key comes from a key directory."""
    root = tmp_path_factory.mktemp("signed-artifacts")
    keys = root / "keys"
    keys.mkdir()
    (keys / "old").write_bytes(OLD_KEY + b"\n")
    (keys / "new").write_bytes(NEW_KEY + b"\n")
    # Tezzeret's settings as a cluster gives them: a mounted Secret directory and the key id.
    signing = load_keyring(SigningSettings(key_dir=keys, key_id="old"))
    assert signing is not None
    with serving(embedded_settings(root)) as urza:
        client = urza.client(timeout=60.0)
        blueprint = client.submit_blueprint(builtin("low-rank-adapter")).hash
        compiled = compile_and_publish(
            client,
            blueprint,
            TARGET,
            worker="signing-test",
            keyring=signing,
            options=CompileOptions(compile_cache=False),
        )
        assert compiled.phase is KernelPhase.COMPILED, compiled.error
        validated = validate_and_publish(client, compiled.id, keyring=signing)
        assert validated.phase is KernelPhase.VALIDATED, validated.benchmark
        yield Signed(urza, validated.id, signing)


def _source(signed: Signed) -> UrzaKernelSource:
    return UrzaKernelSource(signed.urza.client())


def _set_row(signed: Signed, **values: object) -> None:
    """Rewrite the kernel's row in Urza's database, as someone who owns the database can."""
    with signed.urza.service.engine.begin() as connection:
        connection.execute(
            update(KernelRow).where(KernelRow.id == signed.kernel_id).values(**values)
        )


def test_a_signed_kernel_is_verified_and_loaded(signed: Signed) -> None:
    kernel = signed.urza.client().get_kernel(signed.kernel_id)
    assert kernel.signature is not None
    assert kernel.signature.key_id == "old"

    # The training process's ring: the same Secret, mounted without a signing key id.
    loaded = load_kernel(
        _source(signed),
        signed.kernel_id,
        keyring=Keyring(dict(signed.signing.keys), None, "the training pod's ring"),
    )

    assert loaded.kernel_id == signed.kernel_id
    assert loaded.blueprint_name == "low-rank-adapter"


def test_a_ring_from_the_environment_verifies_it(
    signed: Signed, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ESPER_SIGNING_KEY", OLD_KEY.decode())
    monkeypatch.setenv("ESPER_SIGNING_KEY_ID", "old")
    monkeypatch.delenv("ESPER_SIGNING_KEY_DIR", raising=False)
    monkeypatch.delenv("ESPER_SIGNING_KEY_FILE", raising=False)
    monkeypatch.delenv("ESPER_SIGNING_MODE", raising=False)

    loaded = load_kernel(_source(signed), signed.kernel_id)  # keys from ESPER_SIGNING_*

    assert loaded.kernel_id == signed.kernel_id


def test_bytes_changed_in_the_blob_store_never_reach_the_loader(signed: Signed) -> None:
    kernel = signed.urza.client().get_kernel(signed.kernel_id)
    assert kernel.artifact_uri is not None
    path = local_blob_path(kernel.artifact_uri)
    original = path.read_bytes()
    tampered = bytearray(original)
    tampered[len(tampered) // 2] ^= 0xFF
    path.write_bytes(bytes(tampered))
    try:
        with pytest.raises(UrzaError, match="sha256 mismatch"):
            load_kernel(_source(signed), signed.kernel_id, keyring=signed.signing)
    finally:
        path.write_bytes(original)


def test_a_forged_bundle_that_passes_every_digest_is_refused_by_its_signature(
    signed: Signed,
) -> None:
    # Whoever owns Urza's store and database can swap in a bundle of their own and rewrite the
    # record to match it: every digest then agrees, and only the key they lack can tell.
    client = signed.urza.client()
    kernel = client.get_kernel(signed.kernel_id)
    original = client.download_artifact(signed.kernel_id)
    bundle = read_bundle(original)
    members = dict(bundle.members)
    weights = members[BundleMemberName.WEIGHTS]
    members[BundleMemberName.WEIGHTS] = weights[:-1] + bytes([weights[-1] ^ 0x01])
    fields = bundle.manifest.model_dump(by_alias=False, exclude={"members"})
    forged, _manifest = write_bundle(fields, members)
    forged_sha = hashlib.sha256(forged).hexdigest()
    assert read_bundle(forged, expected_sha256=forged_sha).manifest.kernel_id == signed.kernel_id
    uri = signed.urza.service.repository.blobs.put(forged, forged_sha)
    _set_row(signed, sha256=forged_sha, artifact_uri=uri, size_bytes=len(forged))
    try:
        with pytest.raises(SignatureError) as refused:
            load_kernel(_source(signed), signed.kernel_id, keyring=signed.signing)
    finally:
        _set_row(
            signed,
            sha256=kernel.sha256,
            artifact_uri=kernel.artifact_uri,
            size_bytes=kernel.size_bytes,
        )
    assert str(refused.value).startswith(
        f"kernel {signed.kernel_id}: bad signature under key id 'old'"
    )


def test_a_stripped_signature_is_refused_as_unsigned(signed: Signed) -> None:
    kernel = signed.urza.client().get_kernel(signed.kernel_id)
    assert kernel.signature is not None
    _set_row(signed, signature=None, signature_key_id=None)
    try:
        with pytest.raises(SignatureError, match=f"kernel {signed.kernel_id}: the artifact is "):
            load_kernel(_source(signed), signed.kernel_id, keyring=signed.signing)
    finally:
        _set_row(
            signed,
            signature=kernel.signature.hmac_sha256,
            signature_key_id=kernel.signature.key_id,
        )


def test_after_rotation_old_kernels_verify_until_their_key_is_dropped(signed: Signed) -> None:
    both = Keyring({"old": OLD_KEY, "new": NEW_KEY}, "new", "both keys")
    assert load_kernel(_source(signed), signed.kernel_id, keyring=both).kernel_id

    only_new = Keyring({"new": NEW_KEY}, "new", "the new key alone")
    with pytest.raises(SignatureError, match="signed with key id 'old', which is not in"):
        load_kernel(_source(signed), signed.kernel_id, keyring=only_new)

    # Another key under the old id (a mixed-up Secret) is a bad signature, not a load.
    impostor = Keyring({"old": NEW_KEY}, None, "a wrong key named old")
    with pytest.raises(SignatureError, match="bad signature under key id 'old'"):
        load_kernel(_source(signed), signed.kernel_id, keyring=impostor)
