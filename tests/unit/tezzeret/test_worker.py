"""Tezzeret's unit of work against a real Urza (embedded default, served over HTTP).

The compiler itself is covered by test_compiler.py; here ``compile_kernel`` hands back the
session's shared compilation so the phase handling is tested without compiling again.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from esper.blueprints.runtime import TargetUnavailableError
from esper.blueprints.signing import Keyring, SigningKeyError
from esper.contracts.blueprint import BlueprintIR
from esper.contracts.kernel import KernelPhase, KernelTarget
from esper.contracts.urza_api import PhaseChange
from esper.tezzeret import worker
from esper.tezzeret.compiler import CompiledKernel, CompileOptions
from esper.tezzeret.worker import compile_and_publish
from esper.urza.client import UrzaClient
from tests.integration.phase1.support import RunningUrza, embedded_settings, serving
from tests.unit.tezzeret import bundles

KEYRING = Keyring({"unit": b"u" * 32}, "unit", "the test's key")
"""The workers' signing key."""


@pytest.fixture
def urza(tmp_path: Path) -> Iterator[RunningUrza]:
    with serving(embedded_settings(tmp_path)) as running:
        yield running


@pytest.fixture
def compilations(monkeypatch: pytest.MonkeyPatch) -> list[CompileOptions | None]:
    """Make compile_kernel return the shared compilation; record each call's options."""
    calls: list[CompileOptions | None] = []

    def shared(
        ir: BlueprintIR, target: KernelTarget, options: CompileOptions | None = None
    ) -> CompiledKernel:
        assert ir == bundles.ir()
        assert target == bundles.target()
        calls.append(options)
        return bundles.compiled()

    monkeypatch.setattr(worker, "compile_kernel", shared)
    return calls


def _blueprint(client: UrzaClient) -> str:
    return client.submit_blueprint(bundles.ir()).hash


def test_compiles_and_uploads_a_kernel_it_registers(
    urza: RunningUrza, compilations: list[CompileOptions | None]
) -> None:
    client = urza.client()
    blueprint_hash = _blueprint(client)
    options = CompileOptions(compile_cache=False)

    kernel = compile_and_publish(
        client,
        blueprint_hash,
        bundles.target(),
        worker="unit-worker",
        keyring=KEYRING,
        options=options,
    )

    assert compilations == [options]
    assert kernel.phase is KernelPhase.COMPILED
    data = bundles.compiled().data
    assert kernel.sha256 == bundles.sha256(data)
    assert kernel.size_bytes == len(data)
    assert kernel.signature == KEYRING.sign(kernel.id, data)
    KEYRING.verify(kernel.id, data, kernel.signature)
    assert kernel.compile_seconds == bundles.compiled().manifest.compile_seconds
    assert kernel.torch_version == torch.__version__
    assert client.download_artifact(kernel.id) == data
    assert urza.events.phases(kernel.id) == [
        KernelPhase.PENDING,
        KernelPhase.COMPILING,
        KernelPhase.COMPILED,
    ]
    records = client.compile_records(kernel.id)
    assert [(item.worker, item.succeeded, item.error) for item in records] == [
        ("unit-worker", True, None)
    ]


def test_kernel_past_compilation_is_returned_as_found(
    urza: RunningUrza, compilations: list[CompileOptions | None]
) -> None:
    client = urza.client()
    blueprint_hash = _blueprint(client)
    first = compile_and_publish(
        client, blueprint_hash, bundles.target(), worker="w", keyring=KEYRING
    )

    again = compile_and_publish(
        client, blueprint_hash, bundles.target(), worker="w", keyring=KEYRING
    )

    assert len(compilations) == 1
    assert again == first
    assert len(client.compile_records(first.id)) == 1


def test_failed_kernel_is_compiled_again_from_pending(
    urza: RunningUrza, compilations: list[CompileOptions | None]
) -> None:
    client = urza.client()
    blueprint_hash = _blueprint(client)
    kernel = client.create_kernel(blueprint_hash, bundles.target())
    client.change_phase(kernel.id, PhaseChange(phase=KernelPhase.FAILED, error="worker died"))

    compiled = compile_and_publish(
        client, blueprint_hash, bundles.target(), worker="w", keyring=KEYRING
    )

    assert compiled.phase is KernelPhase.COMPILED
    assert compiled.error is None
    assert len(compilations) == 1
    assert urza.events.phases(kernel.id) == [
        KernelPhase.PENDING,
        KernelPhase.FAILED,
        KernelPhase.PENDING,
        KernelPhase.COMPILING,
        KernelPhase.COMPILED,
    ]


def test_compile_error_is_recorded_and_the_kernel_left_failed(urza: RunningUrza) -> None:
    client = urza.client()
    blueprint_hash = _blueprint(client)
    cuda = KernelTarget.parse("cuda@1.0:fp32:C=16:b=1,4")

    with pytest.raises(TargetUnavailableError):
        compile_and_publish(client, blueprint_hash, cuda, worker="cpu-box", keyring=KEYRING)

    kernel = client.list_kernels(blueprint_hash=blueprint_hash).items[0]
    assert kernel.target == cuda
    assert kernel.phase is KernelPhase.FAILED
    assert kernel.error is not None
    assert kernel.error.startswith("TargetUnavailableError: target cuda@1.0:fp32:C=16")
    assert kernel.sha256 is None
    records = client.compile_records(kernel.id)
    assert [(item.worker, item.succeeded, item.error) for item in records] == [
        ("cpu-box", False, kernel.error)
    ]


def test_an_unsigned_upload_is_explicit_and_recorded_without_signature(
    urza: RunningUrza, compilations: list[CompileOptions | None]
) -> None:
    client = urza.client()
    kernel = compile_and_publish(
        client, _blueprint(client), bundles.target(), worker="w", keyring=None
    )

    assert kernel.phase is KernelPhase.COMPILED
    assert kernel.signature is None


def test_a_ring_without_a_signing_key_is_refused_before_anything(
    urza: RunningUrza, compilations: list[CompileOptions | None]
) -> None:
    client = urza.client()
    blueprint_hash = _blueprint(client)
    verify_only = Keyring({"old": b"o" * 32}, None, "a verify-only ring")

    with pytest.raises(SigningKeyError, match="set ESPER_SIGNING_KEY_ID"):
        compile_and_publish(
            client, blueprint_hash, bundles.target(), worker="w", keyring=verify_only
        )

    assert compilations == []
    assert client.list_kernels(blueprint_hash=blueprint_hash).items == []
