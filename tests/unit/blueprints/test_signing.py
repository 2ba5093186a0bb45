"""Bundle signatures: signing, verification, key rings from settings, the local key."""

import hashlib
import hmac
import logging
import os
from pathlib import Path

import pytest
from pydantic import ValidationError

from esper.blueprints.bundle import BundleError
from esper.blueprints.signing import (
    MESSAGE_LABEL,
    Keyring,
    SignatureError,
    SigningKeyError,
    load_keyring,
    local_keyring,
    signed_message,
)
from esper.config import SigningSettings
from esper.contracts.kernel import ArtifactSignature

pytestmark = pytest.mark.reliability("signed-artifacts")

KERNEL = "k-" + "a" * 24
OTHER_KERNEL = "k-" + "b" * 24
DATA = b"PK\x03\x04 a bundle's bytes"
KEY_A = b"a" * 32
KEY_B = b"b" * 32


def ring(**keys: bytes) -> Keyring:
    return Keyring(keys, next(iter(keys)), "the test's ring")


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Signing settings come from the test alone; the local key lives in the test's home."""
    for name in list(os.environ):
        if name.startswith("ESPER_SIGNING_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("ESPER_HOME", str(tmp_path / "home"))


# Signing and verifying ------------------------------------------------------------------------


def test_the_signature_is_an_hmac_of_the_kernel_id_and_the_bundle_digest() -> None:
    signature = ring(one=KEY_A).sign(KERNEL, DATA)

    message = b"\n".join(
        (MESSAGE_LABEL, KERNEL.encode(), hashlib.sha256(DATA).hexdigest().encode())
    )
    assert message == signed_message(KERNEL, hashlib.sha256(DATA).hexdigest())
    assert signature == ArtifactSignature(
        key_id="one", hmac_sha256=hmac.new(KEY_A, message, hashlib.sha256).hexdigest()
    )


def test_a_signed_bundle_verifies() -> None:
    keys = ring(one=KEY_A)
    keys.verify(KERNEL, DATA, keys.sign(KERNEL, DATA))


@pytest.mark.parametrize("position", [0, len(DATA) // 2, len(DATA) - 1])
def test_a_tampered_byte_is_a_bad_signature(position: int) -> None:
    keys = ring(one=KEY_A)
    signature = keys.sign(KERNEL, DATA)
    tampered = bytearray(DATA)
    tampered[position] ^= 0x01

    with pytest.raises(SignatureError) as refused:
        keys.verify(KERNEL, bytes(tampered), signature)

    assert str(refused.value).startswith(f"kernel {KERNEL}: bad signature under key id 'one'")
    assert isinstance(refused.value, BundleError)  # callers that refuse bundles refuse it too


def test_extra_or_missing_bytes_are_a_bad_signature() -> None:
    keys = ring(one=KEY_A)
    signature = keys.sign(KERNEL, DATA)
    for data in (DATA + b"\x00", DATA[:-1], b""):
        with pytest.raises(SignatureError, match="bad signature"):
            keys.verify(KERNEL, data, signature)


def test_a_bundle_signed_for_another_kernel_is_a_bad_signature() -> None:
    keys = ring(one=KEY_A)
    with pytest.raises(SignatureError, match=f"kernel {OTHER_KERNEL}: bad signature"):
        keys.verify(OTHER_KERNEL, DATA, keys.sign(KERNEL, DATA))


def test_a_wrong_key_under_the_same_id_is_a_bad_signature() -> None:
    signature = ring(one=KEY_A).sign(KERNEL, DATA)
    with pytest.raises(SignatureError, match="bad signature under key id 'one'"):
        ring(one=KEY_B).verify(KERNEL, DATA, signature)


def test_a_missing_signature_is_refused_as_unsigned() -> None:
    with pytest.raises(SignatureError) as refused:
        ring(one=KEY_A).verify(KERNEL, DATA, None)
    assert str(refused.value).startswith(f"kernel {KERNEL}: the artifact is unsigned")


def test_an_unknown_key_id_is_named_with_the_ring_s_ids() -> None:
    signature = ring(retired=KEY_A).sign(KERNEL, DATA)
    with pytest.raises(SignatureError) as refused:
        ring(current=KEY_B, previous=KEY_B).verify(KERNEL, DATA, signature)
    assert str(refused.value) == (
        f"kernel {KERNEL}: signed with key id 'retired', which is not in this process's key "
        "ring (the test's ring: current, previous)"
    )


def test_rotation_signs_with_the_new_key_and_still_verifies_the_old_one() -> None:
    before = Keyring({"2026a": KEY_A}, "2026a", "before")
    during = Keyring({"2026a": KEY_A, "2026b": KEY_B}, "2026b", "during")
    after = Keyring({"2026b": KEY_B}, "2026b", "after")
    old = before.sign(KERNEL, DATA)
    new = during.sign(KERNEL, DATA)

    assert new.key_id == "2026b"
    during.verify(KERNEL, DATA, old)
    during.verify(KERNEL, DATA, new)
    after.verify(KERNEL, DATA, new)
    with pytest.raises(SignatureError, match="key id '2026a', which is not in"):
        after.verify(KERNEL, DATA, old)


def test_the_keys_never_appear_in_the_ring_s_repr() -> None:
    assert "aaaa" not in repr(ring(one=KEY_A))


@pytest.mark.parametrize(
    ("keys", "signing", "message"),
    [
        ({}, None, "no signing key"),
        ({"short": b"x" * 31}, None, "key 'short' has 31 bytes, at least 32"),
        ({"one": KEY_A}, "two", "ESPER_SIGNING_KEY_ID 'two' is not one of its keys \\(one\\)"),
    ],
)
def test_an_unusable_ring_is_refused(
    keys: dict[str, bytes], signing: str | None, message: str
) -> None:
    with pytest.raises(SigningKeyError, match=message):
        Keyring(keys, signing, "the test's ring")


def test_a_verify_only_ring_refuses_to_sign() -> None:
    with pytest.raises(SigningKeyError, match="set ESPER_SIGNING_KEY_ID"):
        Keyring({"one": KEY_A}, None, "verify only").sign(KERNEL, DATA)


# Key rings from settings ----------------------------------------------------------------------


def test_mode_off_gives_no_ring_and_says_so(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="esper.signing"):
        assert load_keyring(SigningSettings(mode="off", key=KEY_A.decode())) is None
    assert "neither signed nor verified" in caplog.text


def test_a_key_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ESPER_SIGNING_KEY", KEY_A.decode() + "\n")
    keys = load_keyring(SigningSettings())
    assert keys is not None
    assert keys.keys == {"default": KEY_A}
    assert keys.signing_key_id == "default"


def test_the_key_file_wins_over_the_environment_and_matches_its_env_form(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    path = tmp_path / "key"
    path.write_bytes(KEY_B + b"\n")
    monkeypatch.setenv("ESPER_SIGNING_KEY", KEY_A.decode())
    monkeypatch.setenv("ESPER_SIGNING_KEY_FILE", str(path))
    monkeypatch.setenv("ESPER_SIGNING_KEY_ID", "2026b")

    from_file = load_keyring(SigningSettings())
    from_env = load_keyring(SigningSettings(key=KEY_B.decode(), key_id="2026b"))

    assert from_file is not None
    assert from_env is not None
    assert from_file.keys == {"2026b": KEY_B}
    assert from_file.sign(KERNEL, DATA) == from_env.sign(KERNEL, DATA)


def test_a_key_directory_is_a_ring_named_by_file_names(tmp_path: Path) -> None:
    # As Kubernetes mounts a Secret: visible names are links into a hidden, timestamped dir.
    hidden = tmp_path / "..2026_11_26"
    hidden.mkdir()
    (hidden / "2026a").write_bytes(KEY_A)
    (hidden / "2026b").write_bytes(KEY_B + b"\n")
    (tmp_path / "..data").symlink_to(hidden.name)
    for name in ("2026a", "2026b"):
        (tmp_path / name).symlink_to(f"..data/{name}")

    keys = load_keyring(SigningSettings(key_dir=tmp_path, key_id="2026b"))
    verify_only = load_keyring(SigningSettings(key_dir=tmp_path))

    assert keys is not None
    assert verify_only is not None
    assert keys.keys == {"2026a": KEY_A, "2026b": KEY_B}
    assert keys.sign(KERNEL, DATA).key_id == "2026b"
    assert verify_only.signing_key_id is None
    verify_only.verify(KERNEL, DATA, keys.sign(KERNEL, DATA))


def test_an_empty_key_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "key"
    path.write_bytes(b" \n")
    with pytest.raises(SigningKeyError, match=f"ESPER_SIGNING_KEY_FILE {path}: {path} is empty"):
        load_keyring(SigningSettings(key_file=path))


def test_a_short_key_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "key"
    path.write_bytes(b"password")
    with pytest.raises(SigningKeyError, match="key 'default' has 8 bytes, at least 32"):
        load_keyring(SigningSettings(key_file=path))


def test_an_unreadable_key_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "key"
    path.write_bytes(KEY_A)
    settings = SigningSettings(key_file=path)
    path.unlink()
    path.mkdir()  # exists, but cannot be read as a key
    with pytest.raises(SigningKeyError, match=f"cannot read {path}"):
        load_keyring(settings)


def test_a_missing_key_file_or_directory_is_a_settings_error(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match=r"ESPER_SIGNING_KEY_FILE .* is not a file"):
        SigningSettings(key_file=tmp_path / "absent")
    with pytest.raises(ValidationError, match=r"ESPER_SIGNING_KEY_DIR .* is not a directory"):
        SigningSettings(key_dir=tmp_path / "absent")
    (tmp_path / "key").write_bytes(KEY_A)
    with pytest.raises(ValidationError, match="not both"):
        SigningSettings(key_file=tmp_path / "key", key_dir=tmp_path)


def test_a_key_directory_with_a_bad_name_or_no_key_is_refused(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(SigningKeyError, match="holds no key"):
        load_keyring(SigningSettings(key_dir=empty))
    odd = tmp_path / "odd"
    odd.mkdir()
    (odd / "key id with spaces").write_bytes(KEY_A)
    with pytest.raises(SigningKeyError, match="'key id with spaces' is not a valid key id"):
        load_keyring(SigningSettings(key_dir=odd))


def test_an_invalid_mode_or_key_id_is_a_settings_error() -> None:
    with pytest.raises(ValidationError):
        SigningSettings(mode="optional")  # type: ignore[arg-type]
    with pytest.raises(ValidationError):
        SigningSettings(key_id="../escape")


# The local key --------------------------------------------------------------------------------


def test_without_configuration_the_local_key_is_created_once_and_reused(tmp_path: Path) -> None:
    home = tmp_path / "home"

    first = load_keyring(SigningSettings())
    second = load_keyring(SigningSettings())

    path = home / "signing.key"
    assert path.stat().st_mode & 0o777 == 0o600
    assert first is not None
    assert second is not None
    assert first.keys == second.keys
    (key_id,) = first.keys
    assert key_id == "local-" + hashlib.sha256(first.keys[key_id]).hexdigest()[:12]
    assert first.signing_key_id == key_id
    assert [entry.name for entry in home.iterdir()] == ["signing.key"]  # no drafts left


def test_a_racing_process_s_local_key_wins(tmp_path: Path) -> None:
    (tmp_path / "signing.key").write_bytes(KEY_B + b"\n")
    assert local_keyring(tmp_path).keys == {
        "local-" + hashlib.sha256(KEY_B).hexdigest()[:12]: KEY_B
    }


def test_two_homes_have_different_key_ids(tmp_path: Path) -> None:
    one = local_keyring(tmp_path / "one")
    two = local_keyring(tmp_path / "two")
    with pytest.raises(SignatureError, match="which is not in this process's key ring"):
        two.verify(KERNEL, DATA, one.sign(KERNEL, DATA))
