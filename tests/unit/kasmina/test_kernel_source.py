"""UrzaKernelSource against a real Urza (embedded default, served over HTTP in this process)."""

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from torch import nn

from esper.blueprints.signing import Keyring
from esper.contracts.kernel import KernelPhase
from esper.contracts.seed import SeedStage
from esper.contracts.urza_api import PhaseChange
from esper.kasmina import load_kernel, wrap
from esper.urza.client import UrzaClient, UrzaError, UrzaNotFoundError
from esper.urza.kernel_source import KernelNotUsableError, UrzaKernelSource
from tests.integration.phase1.support import RunningUrza, embedded_settings, serving
from tests.integration.urza_api.support import report
from tests.unit.tezzeret import bundles

BEFORE_VERDICT = [KernelPhase.COMPILING, KernelPhase.COMPILED, KernelPhase.VALIDATING]
MOVES_BEFORE = {
    KernelPhase.PENDING: 0,
    KernelPhase.COMPILING: 1,
    KernelPhase.COMPILED: 2,
    KernelPhase.VALIDATING: 3,
    KernelPhase.VALIDATED: 3,
    KernelPhase.REJECTED: 3,
}
"""How many of the moves before Urabrask's verdict each phase needs."""

TEST_KEY = "kernel-source-test-key-" + "0" * 32
TEST_KEYRING = Keyring({"test": TEST_KEY.encode()}, "test", "the test's key")
"""The key the uploads are signed with; loaders get it through ``ESPER_SIGNING_*``."""


@pytest.fixture(autouse=True)
def signing_key(monkeypatch: pytest.MonkeyPatch) -> None:
    """Configure the uploads' key as this process's signing key (the loaders' default)."""
    monkeypatch.setenv("ESPER_SIGNING_KEY", TEST_KEY)
    monkeypatch.setenv("ESPER_SIGNING_KEY_ID", "test")


@pytest.fixture
def urza(tmp_path: Path) -> Iterator[RunningUrza]:
    with serving(embedded_settings(tmp_path)) as running:
        yield running


def _kernel_in(client: UrzaClient, phase: KernelPhase) -> str:
    """Register the compiled bundle's kernel and move it to ``phase`` through the API."""
    blueprint_hash = client.submit_blueprint(bundles.ir()).hash
    identifier = client.create_kernel(blueprint_hash, bundles.target()).id
    assert identifier == bundles.compiled().manifest.kernel_id
    for step in BEFORE_VERDICT[: MOVES_BEFORE[phase]]:
        if step is KernelPhase.COMPILED:
            data = bundles.compiled().data
            client.upload_artifact(identifier, data, TEST_KEYRING.sign(identifier, data))
            client.change_phase(identifier, PhaseChange(phase=step, compile_seconds=1.0))
        else:
            client.change_phase(identifier, PhaseChange(phase=step))
    if phase is KernelPhase.VALIDATED:
        client.attach_report(identifier, report(identifier))
    elif phase is KernelPhase.REJECTED:
        client.attach_report(identifier, report(identifier, verdict="Rejected"))
    assert client.get_kernel(identifier).phase is phase
    return identifier


def test_a_validated_kernel_is_served_with_its_sha256_and_signature(urza: RunningUrza) -> None:
    identifier = _kernel_in(urza.client(), KernelPhase.VALIDATED)
    source = UrzaKernelSource(urza.client())

    fetched = source.fetch_bundle(identifier)

    assert fetched.data == bundles.compiled().data
    assert fetched.sha256 == bundles.sha256(fetched.data)
    assert fetched.signature == TEST_KEYRING.sign(identifier, fetched.data)
    kernel = load_kernel(source, identifier, load_exported_program=False)
    assert kernel.kernel_id == identifier
    assert kernel.blueprint_name == bundles.BLUEPRINT


@pytest.mark.parametrize(
    "phase",
    [
        KernelPhase.PENDING,
        KernelPhase.COMPILING,
        KernelPhase.COMPILED,
        KernelPhase.VALIDATING,
        KernelPhase.REJECTED,
    ],
)
def test_a_kernel_that_is_not_validated_is_refused(urza: RunningUrza, phase: KernelPhase) -> None:
    client = urza.client()
    identifier = _kernel_in(client, phase)
    source = UrzaKernelSource(client)

    with pytest.raises(KernelNotUsableError) as caught:
        source.fetch_bundle(identifier)

    assert str(caught.value) == (
        f"kernel {identifier} is {phase.value}; only Validated kernels are grafted"
    )
    assert isinstance(caught.value, UrzaError)


def test_an_unknown_kernel_is_not_found(urza: RunningUrza) -> None:
    source = UrzaKernelSource(urza.client())
    with pytest.raises(UrzaNotFoundError):
        source.fetch_bundle("k-" + "0" * 24)


def test_a_model_wrapped_with_an_urza_url_germinates_a_validated_kernel(
    urza: RunningUrza,
) -> None:
    identifier = _kernel_in(urza.client(), KernelPhase.VALIDATED)
    source = UrzaKernelSource(urza.url, token=urza.token)
    torch.manual_seed(0)
    model = wrap(nn.Sequential(nn.Linear(4, 16), nn.ReLU()), ["0"], kernels=source)
    assert model.kernels is not None
    try:
        model.germinate("0", identifier)
    finally:
        model.kernels.close()
        source.close()

    slot = model.slot("0")
    assert slot.stage is SeedStage.GERMINATED
    assert slot.state.kernel_id == identifier
    assert slot.blueprint_name == bundles.BLUEPRINT


def test_a_closed_source_makes_no_request(urza: RunningUrza) -> None:
    source = UrzaKernelSource(urza.url)
    source.close()
    with pytest.raises(RuntimeError, match="closed"):
        source.fetch_bundle("k-" + "0" * 24)
