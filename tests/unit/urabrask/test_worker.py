"""Urabrask's unit of work against a real Urza (embedded default, served over HTTP)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from esper.blueprints.bundle import BundleError
from esper.blueprints.signing import Keyring, SignatureError
from esper.contracts.kernel import KernelPhase, KernelTarget, Verdict
from esper.contracts.urza_api import PhaseChange
from esper.urabrask import bench
from esper.urabrask.worker import validate_and_publish
from esper.urza.client import UrzaClient
from tests.integration.phase1.support import RunningUrza, embedded_settings, serving
from tests.unit.tezzeret import bundles

KEYRING = Keyring({"unit": b"u" * 32}, "unit", "the test's key")
"""Tezzeret's key, which the benchmark worker checks bundles with."""


@pytest.fixture
def urza(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[RunningUrza]:
    monkeypatch.setattr(bench, "LATENCY_BUDGET_SECONDS", 0.0)
    with serving(embedded_settings(tmp_path)) as running:
        yield running


def _compiled(
    client: UrzaClient, data: bytes, target: KernelTarget | None = None, *, signed: bool = True
) -> str:
    blueprint_hash = client.submit_blueprint(bundles.ir()).hash
    identifier = client.create_kernel(blueprint_hash, target or bundles.target()).id
    client.change_phase(identifier, PhaseChange(phase=KernelPhase.COMPILING))
    client.upload_artifact(identifier, data, KEYRING.sign(identifier, data) if signed else None)
    client.change_phase(identifier, PhaseChange(phase=KernelPhase.COMPILED, compile_seconds=1.0))
    return identifier


def test_compiled_kernel_is_validated_with_its_report(urza: RunningUrza) -> None:
    client = urza.client()
    identifier = _compiled(client, bundles.compiled().data)

    kernel = validate_and_publish(client, identifier, keyring=KEYRING)

    assert kernel.phase is KernelPhase.VALIDATED
    assert kernel.benchmark is not None
    assert kernel.benchmark.verdict is Verdict.VALIDATED
    assert client.get_kernel(identifier) == kernel
    assert urza.events.phases(identifier)[-3:] == [
        KernelPhase.COMPILED,
        KernelPhase.VALIDATING,
        KernelPhase.VALIDATED,
    ]


def test_kernel_left_validating_is_validated(urza: RunningUrza) -> None:
    """A worker that died while Validating left the kernel there; the next one resumes."""
    client = urza.client()
    identifier = _compiled(client, bundles.compiled().data)
    client.change_phase(identifier, PhaseChange(phase=KernelPhase.VALIDATING))

    kernel = validate_and_publish(client, identifier, keyring=KEYRING)

    assert kernel.phase is KernelPhase.VALIDATED


def test_kernel_not_compiled_is_returned_as_found(urza: RunningUrza) -> None:
    client = urza.client()
    blueprint_hash = client.submit_blueprint(bundles.ir()).hash
    pending = client.create_kernel(blueprint_hash, bundles.target())

    assert validate_and_publish(client, pending.id, keyring=KEYRING) == pending
    assert client.get_kernel(pending.id).phase is KernelPhase.PENDING


def test_bundle_of_another_kernel_is_refused_and_the_kernel_left_failed(
    urza: RunningUrza,
) -> None:
    client = urza.client()
    other_target = KernelTarget.parse("cpu:fp32:C=16:b=1,4,8")
    identifier = _compiled(client, bundles.compiled().data, other_target)

    with pytest.raises(BundleError, match="bundle is for kernel"):
        validate_and_publish(client, identifier, keyring=KEYRING)

    kernel = client.get_kernel(identifier)
    assert kernel.phase is KernelPhase.FAILED
    assert kernel.error is not None
    assert kernel.error.startswith(
        f"BundleError: bundle is for kernel {bundles.compiled().manifest.kernel_id}"
    )
    assert kernel.benchmark is None


def test_an_unsigned_bundle_is_refused_before_it_is_read_and_the_kernel_left_failed(
    urza: RunningUrza,
) -> None:
    client = urza.client()
    identifier = _compiled(client, bundles.compiled().data, signed=False)

    with pytest.raises(SignatureError, match=f"kernel {identifier}: the artifact is unsigned"):
        validate_and_publish(client, identifier, keyring=KEYRING)

    kernel = client.get_kernel(identifier)
    assert kernel.phase is KernelPhase.FAILED
    assert kernel.error is not None
    assert kernel.error.startswith(f"SignatureError: kernel {identifier}: the artifact is unsigned")
    assert kernel.benchmark is None


def test_a_bundle_signed_with_another_key_is_refused(urza: RunningUrza) -> None:
    client = urza.client()
    identifier = _compiled(client, bundles.compiled().data)
    impostor = Keyring({"unit": b"x" * 32}, "unit", "another key named unit")

    with pytest.raises(SignatureError, match="bad signature under key id 'unit'"):
        validate_and_publish(client, identifier, keyring=impostor)

    assert client.get_kernel(identifier).phase is KernelPhase.FAILED


def test_with_signatures_off_an_unsigned_bundle_is_validated(urza: RunningUrza) -> None:
    client = urza.client()
    identifier = _compiled(client, bundles.compiled().data, signed=False)

    kernel = validate_and_publish(client, identifier, keyring=None)

    assert kernel.phase is KernelPhase.VALIDATED
