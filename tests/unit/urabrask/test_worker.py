"""Urabrask's unit of work against a real Urza (embedded default, served over HTTP)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from esper.blueprints.bundle import BundleError
from esper.contracts.kernel import KernelPhase, KernelTarget, Verdict
from esper.contracts.urza_api import PhaseChange
from esper.urabrask import bench
from esper.urabrask.worker import validate_and_publish
from esper.urza.client import UrzaClient
from tests.integration.phase1.support import RunningUrza, embedded_settings, serving
from tests.unit.tezzeret import bundles


@pytest.fixture
def urza(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[RunningUrza]:
    monkeypatch.setattr(bench, "LATENCY_BUDGET_SECONDS", 0.0)
    with serving(embedded_settings(tmp_path)) as running:
        yield running


def _compiled(client: UrzaClient, data: bytes, target: KernelTarget | None = None) -> str:
    blueprint_hash = client.submit_blueprint(bundles.ir()).hash
    identifier = client.create_kernel(blueprint_hash, target or bundles.target()).id
    client.change_phase(identifier, PhaseChange(phase=KernelPhase.COMPILING))
    client.upload_artifact(identifier, data)
    client.change_phase(identifier, PhaseChange(phase=KernelPhase.COMPILED, compile_seconds=1.0))
    return identifier


def test_compiled_kernel_is_validated_with_its_report(urza: RunningUrza) -> None:
    client = urza.client()
    identifier = _compiled(client, bundles.compiled().data)

    kernel = validate_and_publish(client, identifier)

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

    kernel = validate_and_publish(client, identifier)

    assert kernel.phase is KernelPhase.VALIDATED


def test_kernel_not_compiled_is_returned_as_found(urza: RunningUrza) -> None:
    client = urza.client()
    blueprint_hash = client.submit_blueprint(bundles.ir()).hash
    pending = client.create_kernel(blueprint_hash, bundles.target())

    assert validate_and_publish(client, pending.id) == pending
    assert client.get_kernel(pending.id).phase is KernelPhase.PENDING


def test_bundle_of_another_kernel_is_refused_and_the_kernel_left_failed(
    urza: RunningUrza,
) -> None:
    client = urza.client()
    other_target = KernelTarget.parse("cpu:fp32:C=16:b=1,4,8")
    identifier = _compiled(client, bundles.compiled().data, other_target)

    with pytest.raises(BundleError, match="bundle is for kernel"):
        validate_and_publish(client, identifier)

    kernel = client.get_kernel(identifier)
    assert kernel.phase is KernelPhase.FAILED
    assert kernel.error is not None
    assert kernel.error.startswith(
        f"BundleError: bundle is for kernel {bundles.compiled().manifest.kernel_id}"
    )
    assert kernel.benchmark is None
