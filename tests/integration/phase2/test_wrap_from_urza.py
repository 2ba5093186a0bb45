"""The Phase 2 criterion with real parts: ``esper.wrap(model, kernels=UrzaKernelSource(url))``.

Urza runs as in a cluster (PostgreSQL, the S3 server, a bearer token) and is served over HTTP by
:class:`esper.urza.threaded.ThreadedServer`, the server ``esper run`` embeds. A blueprint is
submitted, a kernel is registered for a small CPU target, compiled by Tezzeret's
``compile_and_publish`` (without the compile cache, which is much faster) and validated by
Urabrask's ``validate_and_publish``: the kernel is Validated. Then a plain ``nn.Sequential`` MLP,
wrapped with the Urza-backed kernel source, germinates that kernel by id and takes it through
TRAINING and BLENDING:

- at germination and while the seed trains the output is bit-identical to the unwrapped host's,
  and so are the host's gradients (the seed's input is detached);
- gradients reach the seed's parameters, and once its zero-initialised output factor has had an
  optimizer step, the blended output differs from the host's.

The refusals: a kernel that is not Validated (Pending, Compiled, Validating) is never grafted
(``KernelNotUsableError``), nor is one whose stored object was tampered with in the bucket
(Urza and its client check the SHA-256), nor a bundle whose member no longer matches its manifest
even though its outer digest was recomputed (the loader's own check, ``BundleError``). After each
refusal the slot is still dormant and the model still computes exactly the host's function.

The kernel is compiled once per module (a torch.export on 2 loaded cores takes tens of seconds),
on a database and a bucket of the session's throwaway servers made for this module.
"""

from __future__ import annotations

import hashlib
import io
import os
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import torch
from torch import Tensor, nn

import esper
from esper.blueprints.bundle import BundleError
from esper.blueprints.library import builtin
from esper.blueprints.signing import SignatureError, load_keyring
from esper.config import SigningSettings, UrzaSettings
from esper.contracts.bundle import BundleMemberName, FetchedBundle
from esper.contracts.kernel import KernelPhase, KernelTarget
from esper.contracts.seed import SeedStage
from esper.contracts.urza_api import PhaseChange
from esper.kasmina.wrap import MorphogeneticModel
from esper.tezzeret.compiler import CompileOptions
from esper.tezzeret.worker import compile_and_publish
from esper.urabrask.worker import validate_and_publish
from esper.urza.blobs.base import blob_key
from esper.urza.client import UrzaClient, UrzaError
from esper.urza.kernel_source import KernelNotUsableError, UrzaKernelSource
from esper.urza.service import UrzaService, build_service
from esper.urza.threaded import ThreadedServer
from tests.integration.phase1.support import TOKEN, cluster_settings
from tests.servers import PostgresServer, S3Location, S3Server, to_sqlalchemy_url

pytestmark = [pytest.mark.postgres, pytest.mark.s3, pytest.mark.timeout(600)]

BLUEPRINT = "low-rank-adapter"
"""The smallest built-in blueprint: ``x + up(down(x))`` with ``up`` zero-initialised."""
TARGET = KernelTarget.parse("cpu:fp32:C=32:b=1,8")
"""The slot's target: 32 features (the host's second Linear), batches of 1 and 8."""
SLOT = "2"
"""The slot after ``host[2]``, ``Linear(32, 32)``."""
SIGNING_KEY = "phase2-signing-key-" + "0" * 32
"""Tezzeret's key; ``esper.wrap``'s loader gets the same one from ``ESPER_SIGNING_*``."""
DATABASE = "m_phase2_wrap_from_urza"
BUCKET = "m-phase2-wrap-from-urza"


@dataclass
class Served:
    """Urza over HTTP on PostgreSQL + S3, and its Validated kernel."""

    url: str
    settings: UrzaSettings
    s3: S3Location
    client: UrzaClient
    blueprint_hash: str
    kernel_id: str

    def source(self) -> UrzaKernelSource:
        """A fresh Urza-backed kernel source, as a user passes it to ``esper.wrap``."""
        return UrzaKernelSource(self.url, token=TOKEN)


@pytest.fixture(scope="module")
def served(postgres_server: PostgresServer, s3_server: S3Server) -> Iterator[Served]:
    """Urza on a module database and bucket, with one kernel compiled and Validated."""
    with pytest.MonkeyPatch.context() as patch:
        for name in list(os.environ):  # settings come from here alone
            if name.startswith("ESPER_"):
                patch.delenv(name)
        # The cluster's signing key, as the chart gives it to compile Jobs and training pods.
        patch.setenv("ESPER_SIGNING_KEY", SIGNING_KEY)
        patch.setenv("ESPER_SIGNING_KEY_ID", "phase2")
        postgres_server.ensure_running()
        s3_server.ensure_running()
        dsn = postgres_server.create_database(DATABASE)
        s3 = s3_server.create_bucket(BUCKET)
        service: UrzaService | None = None
        server: ThreadedServer | None = None
        client: UrzaClient | None = None
        try:
            settings = cluster_settings(to_sqlalchemy_url(dsn), s3)
            service = build_service(settings)
            server = ThreadedServer(service.app)
            server.start()
            client = UrzaClient(server.url, token=TOKEN, timeout=60.0)
            keyring = load_keyring(SigningSettings())
            record = client.submit_blueprint(builtin(BLUEPRINT))
            registered = client.create_kernel(record.hash, TARGET)
            assert registered.phase is KernelPhase.PENDING
            compiled = compile_and_publish(
                client,
                record.hash,
                TARGET,
                worker="phase2-test",
                keyring=keyring,
                options=CompileOptions(compile_cache=False),
            )
            assert compiled.id == registered.id
            assert compiled.phase is KernelPhase.COMPILED, compiled.error
            validated = validate_and_publish(client, compiled.id, keyring=keyring)
            assert validated.phase is KernelPhase.VALIDATED, validated.benchmark
            yield Served(server.url, settings, s3, client, record.hash, validated.id)
        finally:
            if client is not None:
                client.close()
            if server is not None:
                server.stop()
            if service is not None:
                service.engine.dispose()
            postgres_server.ensure_running()
            postgres_server.drop_database(DATABASE)
            s3_server.ensure_running()
            s3_server.delete_bucket(BUCKET)


def _host() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 4)
    )


def _batch() -> tuple[Tensor, Tensor]:
    generator = torch.Generator().manual_seed(1)
    return torch.randn(8, 16, generator=generator), torch.randint(0, 4, (8,), generator=generator)


def _loss(model: nn.Module, features: Tensor, labels: Tensor) -> Tensor:
    return nn.functional.cross_entropy(model(features), labels)


def _host_grads(model: nn.Module) -> list[Tensor]:
    grads = []
    for parameter in model.parameters():
        assert parameter.grad is not None
        grads.append(parameter.grad.clone())
    return grads


def _assert_untouched(model: MorphogeneticModel, plain: nn.Module, features: Tensor) -> None:
    """The slot is empty and the wrapped model computes the plain host's function exactly."""
    slot = model.slot(SLOT)
    assert slot.stage is SeedStage.DORMANT
    assert slot.seed is None
    assert slot.state.kernel_id is None
    assert model.param_count() == model.host_param_count()
    with torch.no_grad():
        assert torch.equal(model(features), plain(features))


def test_wrapped_mlp_grows_the_validated_kernel_served_by_urza(served: Served) -> None:
    features, labels = _batch()
    plain = _host()  # the unwrapped twin: same weights, never wrapped
    source = served.source()
    model = esper.wrap(_host(), targets=[SLOT], kernels=source)
    try:
        assert [slot.slot_id for slot in model.seed_slots()] == [SLOT]
        assert model.slot(SLOT).descriptor.bindings() == dict(TARGET.bindings)
        with torch.no_grad():
            assert torch.equal(model(features), plain(features))

        change = model.germinate(SLOT, served.kernel_id, step=1)
    finally:
        source.close()

    slot = model.slot(SLOT)
    assert (change.source, change.target, change.kernel_id) == (
        SeedStage.DORMANT,
        SeedStage.GERMINATED,
        served.kernel_id,
    )
    assert slot.state.kernel_id == served.kernel_id
    assert slot.state.blueprint_hash == served.blueprint_hash
    assert slot.blueprint_name == BLUEPRINT
    kernel = served.client.get_kernel(served.kernel_id)
    assert kernel.benchmark is not None
    assert slot.seed_param_count() == kernel.benchmark.params > 0
    assert model.param_count() == model.host_param_count() + slot.seed_param_count()
    # The seed's output path starts at zero: that is what keeps the host's function.
    zero_init = [p for p in slot.seed_parameters() if not p.detach().any()]
    assert zero_init, "no zero-initialised seed parameter"
    with torch.no_grad():
        assert torch.equal(model(features), plain(features))

    # TRAINING: the output and the host's gradients are the plain host's, bit for bit, and the
    # task loss reaches the seed through the straight-through term.
    assert slot.advance(2).target is SeedStage.TRAINING
    plain_loss = _loss(plain, features, labels)
    plain_loss.backward()
    loss = _loss(model, features, labels)
    assert torch.equal(loss, plain_loss)
    loss.backward()
    for grown_grad, plain_grad in zip(_host_grads(model.host), _host_grads(plain), strict=True):
        assert torch.equal(grown_grad, plain_grad)
    seed_grads = [p.grad for p in slot.seed_parameters()]
    assert all(grad is not None for grad in seed_grads)
    assert any(bool(grad.abs().sum() > 0) for grad in seed_grads if grad is not None)
    assert all(p.grad is not None and bool(p.grad.any()) for p in zero_init)

    # BLENDING, half way: still the host's output while the output factor is zero...
    assert slot.advance(3).target is SeedStage.BLENDING
    slot.set_alpha(0.5)
    with torch.no_grad():
        assert torch.equal(model(features), plain(features))
    # ...and once the seed has taken an optimizer step, the model has grown a new function.
    optimizer = torch.optim.SGD(slot.seed_parameters(), lr=0.1)
    optimizer.zero_grad(set_to_none=True)
    model.host.zero_grad(set_to_none=True)
    _loss(model, features, labels).backward()
    assert all(p.grad is not None for p in model.host.parameters())
    assert all(p.grad is not None and bool(p.grad.any()) for p in zero_init)
    optimizer.step()
    assert all(bool(p.detach().any()) for p in zero_init)
    with torch.no_grad():
        grown = model(features)
        assert not torch.equal(grown, plain(features))
        assert torch.isfinite(grown).all()


@pytest.mark.parametrize(
    "phases",
    [
        pytest.param([], id="Pending"),
        pytest.param([KernelPhase.COMPILING, KernelPhase.COMPILED], id="Compiled"),
        pytest.param(
            [KernelPhase.COMPILING, KernelPhase.COMPILED, KernelPhase.VALIDATING], id="Validating"
        ),
    ],
)
def test_a_kernel_that_is_not_validated_is_refused(
    served: Served, phases: list[KernelPhase]
) -> None:
    # Another target of the same blueprint; past Compiling it carries a real, loadable bundle
    # (the Validated kernel's bytes), so only its phase stands in the way.
    target = KernelTarget.parse(f"cpu:fp32:C=32:b=1,{2 + len(phases)}")
    kernel = served.client.create_kernel(served.blueprint_hash, target)
    bundle = served.client.download_artifact(served.kernel_id)
    for phase in phases:
        seconds = 1.0 if phase is KernelPhase.COMPILED else None
        served.client.change_phase(kernel.id, PhaseChange(phase=phase, compile_seconds=seconds))
        if phase is KernelPhase.COMPILING:
            served.client.upload_artifact(kernel.id, bundle)
    assert served.client.get_kernel(kernel.id).phase is (
        phases[-1] if phases else KernelPhase.PENDING
    )
    features, _labels = _batch()
    plain = _host()
    source = served.source()
    model = esper.wrap(_host(), targets=[SLOT], kernels=source)
    try:
        with pytest.raises(KernelNotUsableError, match="only Validated kernels are grafted"):
            model.germinate(SLOT, kernel.id)
    finally:
        source.close()
    _assert_untouched(model, plain, features)


def _put_object(served: Served, key: str, data: bytes) -> None:
    client = served.s3.client()
    try:
        client.put_object(Bucket=served.s3.bucket, Key=key, Body=data)
    finally:
        client.close()


def test_a_tampered_artifact_in_the_bucket_is_refused_and_never_grafted(served: Served) -> None:
    kernel = served.client.get_kernel(served.kernel_id)
    assert kernel.sha256 is not None
    key = blob_key(kernel.sha256)
    original = served.client.download_artifact(served.kernel_id)
    tampered = bytearray(original)
    tampered[len(tampered) // 2] ^= 0xFF
    features, _labels = _batch()
    plain = _host()
    source = served.source()
    model = esper.wrap(_host(), targets=[SLOT], kernels=source)
    _put_object(served, key, bytes(tampered))
    try:
        with pytest.raises((UrzaError, BundleError)) as refused:
            model.germinate(SLOT, served.kernel_id)
    finally:
        _put_object(served, key, original)  # the module's other tests use this kernel
        source.close()
    # Urza verifies the stored object before serving it and answers 500 (stored data gone bad),
    # which its client reports after its retries; had the bytes reached the client, its own
    # check (UrzaIntegrityError) and then the loader's (BundleError) would refuse them.
    assert "sha256 mismatch" in str(refused.value)
    _assert_untouched(model, plain, features)
    assert served.client.download_artifact(served.kernel_id) == original


class _ForgingSource:
    """Serves a Validated kernel's bundle with one member altered and the outer digest recomputed
    to match, as a compromised store or a man in the middle would: Tezzeret's signature tells
    first, and with signatures off the manifest's member digests still do."""

    def __init__(self, inner: UrzaKernelSource) -> None:
        self._inner = inner

    def fetch_bundle(self, kernel_id: str) -> FetchedBundle:
        fetched = self._inner.fetch_bundle(kernel_id)
        data = fetched.data
        forged = io.BytesIO()
        with (
            zipfile.ZipFile(io.BytesIO(data)) as original,
            zipfile.ZipFile(forged, "w") as archive,
        ):
            for info in original.infolist():
                content = original.read(info)
                if info.filename == BundleMemberName.WEIGHTS.value:
                    content = content[:-1] + bytes([content[-1] ^ 0x01])
                archive.writestr(info, content)
        forged_bytes = forged.getvalue()
        return FetchedBundle(
            forged_bytes, hashlib.sha256(forged_bytes).hexdigest(), fetched.signature
        )


def test_a_forged_bundle_with_a_recomputed_digest_is_refused_by_its_signature(
    served: Served,
) -> None:
    features, _labels = _batch()
    plain = _host()
    source = served.source()
    model = esper.wrap(_host(), targets=[SLOT], kernels=_ForgingSource(source))
    try:
        with pytest.raises(SignatureError, match=f"kernel {served.kernel_id}: bad signature"):
            model.germinate(SLOT, served.kernel_id)
    finally:
        source.close()
    _assert_untouched(model, plain, features)


def test_with_signatures_off_the_manifest_still_refuses_a_forged_member(
    served: Served, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ESPER_SIGNING_MODE", "off")
    features, _labels = _batch()
    plain = _host()
    source = served.source()
    model = esper.wrap(_host(), targets=[SLOT], kernels=_ForgingSource(source))
    try:
        with pytest.raises(BundleError, match=r"member weights\.safetensors does not match"):
            model.germinate(SLOT, served.kernel_id)
    finally:
        source.close()
    _assert_untouched(model, plain, features)
