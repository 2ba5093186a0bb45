"""Fuzzed kernel bundles: truncated, corrupted, extended or oversized, never loaded.

A real compiled bundle (Tezzeret's output for a built-in blueprint) is damaged by hypothesis in
every way bytes can be damaged in transit or at rest. The property: ``read_bundle`` and the
kernel loader either raise :class:`BundleError` — the one error that tells the caller the kernel
must never be used — or return exactly the original content (a flip in a byte that no reader
uses, such as a timestamp, changes nothing that is loaded). No other exception escapes, and no
damaged weight, IR or manifest is ever returned.
"""

import hashlib

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from esper.blueprints import bundle as bundle_module
from esper.blueprints.bundle import BundleError, KernelBundle, read_bundle
from esper.contracts.bundle import FetchedBundle
from esper.kasmina import load_kernel
from tests.support.reliability import note_inputs
from tests.unit.tezzeret import bundles

pytestmark = pytest.mark.reliability("bundle-fuzz")

FUZZ = settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True
)


def original() -> bytes:
    return bundles.compiled().data


def same_content(loaded: KernelBundle) -> bool:
    reference = read_bundle(original())
    return loaded.manifest == reference.manifest and dict(loaded.members) == dict(reference.members)


def read_or_refuse(data: bytes) -> None:
    try:
        loaded = read_bundle(data)
    except BundleError:
        return
    assert same_content(loaded), "a damaged bundle was read with different content"


@FUZZ
@given(st.data())
def test_a_truncated_bundle_is_refused(data: st.DataObject) -> None:
    note_inputs()
    whole = original()
    cut = data.draw(st.integers(min_value=0, max_value=len(whole) - 1))
    with pytest.raises(BundleError):
        read_bundle(whole[:cut])


@FUZZ
@given(st.data())
def test_flipped_bytes_are_refused_or_change_nothing_loaded(data: st.DataObject) -> None:
    note_inputs()
    damaged = bytearray(original())
    positions = data.draw(
        st.lists(st.integers(0, len(damaged) - 1), min_size=1, max_size=8, unique=True)
    )
    for position in positions:
        damaged[position] ^= data.draw(st.integers(1, 255))
    read_or_refuse(bytes(damaged))


@FUZZ
@given(st.binary(min_size=1, max_size=4096), st.booleans())
def test_bytes_added_before_or_after_are_refused_or_change_nothing(
    extra: bytes, before: bool
) -> None:
    note_inputs()
    whole = original()
    read_or_refuse(extra + whole if before else whole + extra)


@FUZZ
@given(st.binary(max_size=8192))
def test_arbitrary_bytes_are_never_a_bundle(data: bytes) -> None:
    note_inputs()
    with pytest.raises(BundleError):
        read_bundle(data)


def test_a_member_larger_than_the_limit_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    note_inputs()
    # The real limit is 2 GiB; a smaller one shows the check without writing gigabytes.
    monkeypatch.setattr(bundle_module, "MAX_MEMBER_BYTES", 64)
    with pytest.raises(BundleError, match="compressed or too large"):
        read_bundle(original())


class _Source:
    def __init__(self, data: bytes) -> None:
        self.data = data

    def fetch_bundle(self, kernel_id: str) -> FetchedBundle:
        del kernel_id
        # The digest Urza recorded for the intact bundle, unsigned: these loads are asked to
        # skip the signature (tests/unit/kasmina/test_loader.py covers it), so that the digest
        # check is the one under test.
        return FetchedBundle(self.data, hashlib.sha256(original()).hexdigest(), None)


@FUZZ
@given(st.data())
def test_the_loader_never_builds_a_damaged_kernel(data: st.DataObject) -> None:
    note_inputs()
    damaged = bytearray(original())
    position = data.draw(st.integers(0, len(damaged) - 1))
    damaged[position] ^= data.draw(st.integers(1, 255))
    kernel_id = bundles.compiled().manifest.kernel_id
    with pytest.raises(BundleError, match="sha256 mismatch"):
        load_kernel(_Source(bytes(damaged)), kernel_id, keyring=None)
