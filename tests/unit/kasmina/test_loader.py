"""Kernel loading: verification against the real compiled bundle, and the background loader."""

import copy
import logging
import threading
from collections.abc import Callable, Iterator

import pytest
import torch
from safetensors.torch import load as load_safetensors
from torch import nn

from esper.blueprints.bundle import BundleError, read_bundle
from esper.blueprints.signing import Keyring, SignatureError, SigningKeyError
from esper.contracts.bundle import BundleMemberName, FetchedBundle
from esper.contracts.seed import SeedStage
from esper.kasmina import KernelLoader, LoadedKernel, load_kernel, wrap
from tests.unit.tezzeret import bundles

RELEASE_TIMEOUT = 60.0
"""Bound on every wait between the test and the loader's thread (a hang fails, not blocks)."""

TEST_KEY = "loader-test-key-" + "0" * 32
TEST_KEYRING = Keyring({"test": TEST_KEY.encode()}, "test", "the test's key")
"""The key the sources sign with; the loaders get it through ``ESPER_SIGNING_*``."""


@pytest.fixture(autouse=True)
def signing_key(monkeypatch: pytest.MonkeyPatch) -> None:
    """Configure the sources' key as this process's signing key (the loaders' default)."""
    monkeypatch.setenv("ESPER_SIGNING_KEY", TEST_KEY)
    monkeypatch.setenv("ESPER_SIGNING_KEY_ID", "test")


class BundleSource:
    """A kernel source serving bundles from memory; records its calls and their threads."""

    def __init__(self, served: dict[str, bytes], *, sha: str | None = None) -> None:
        self.served = served
        self.sha = sha
        self.calls: list[str] = []
        self.threads: list[str] = []

    def fetch_bundle(self, kernel_id: str) -> FetchedBundle:
        self.calls.append(kernel_id)
        self.threads.append(threading.current_thread().name)
        data = self.served[kernel_id]
        return FetchedBundle(
            data, self.sha or bundles.sha256(data), TEST_KEYRING.sign(kernel_id, data)
        )


class GatedSource(BundleSource):
    """A source that blocks until the test opens its gate."""

    def __init__(self, served: dict[str, bytes]) -> None:
        super().__init__(served)
        self.gate = threading.Event()
        self.entered = threading.Event()

    def fetch_bundle(self, kernel_id: str) -> FetchedBundle:
        self.entered.set()
        assert self.gate.wait(RELEASE_TIMEOUT), "the test never opened the gate"
        return super().fetch_bundle(kernel_id)


class FlakySource(BundleSource):
    """Fails its first ``failures`` calls, then serves."""

    def __init__(self, served: dict[str, bytes], failures: int) -> None:
        super().__init__(served)
        self.failures = failures

    def fetch_bundle(self, kernel_id: str) -> FetchedBundle:
        if len(self.calls) < self.failures:
            self.calls.append(kernel_id)
            raise ConnectionError(f"Urza unreachable (call {len(self.calls)})")
        return super().fetch_bundle(kernel_id)


def kernel_id() -> str:
    return bundles.compiled().manifest.kernel_id


def served() -> dict[str, bytes]:
    return {kernel_id(): bundles.compiled().data}


def weights_of(data: bytes) -> dict[str, torch.Tensor]:
    return load_safetensors(read_bundle(data).members[BundleMemberName.WEIGHTS])


@pytest.fixture
def make_loader() -> Iterator[Callable[..., KernelLoader]]:
    """Loaders whose threads are shut down after the test."""
    loaders: list[KernelLoader] = []

    def make(source: BundleSource, **options: bool) -> KernelLoader:
        loader = KernelLoader(source, **options)
        loaders.append(loader)
        return loader

    yield make
    for loader in loaders:
        loader.close()


def host() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 16))


# load_kernel ----------------------------------------------------------------------------------


def test_load_kernel_builds_the_module_with_the_bundles_weights() -> None:
    # Weights moved off the deterministic initialisation: they can only come from the bundle.
    data = bundles.with_perturbed(bundles.UP)
    source = BundleSource({kernel_id(): data})

    kernel = load_kernel(source, kernel_id(), load_exported_program=False)

    assert source.calls == [kernel_id()]
    assert kernel.kernel_id == kernel_id()
    assert kernel.blueprint_name == bundles.BLUEPRINT
    assert kernel.ir == bundles.ir()
    assert kernel.bindings == {"C": 16}
    assert kernel.exported is None
    assert kernel.compile_cache_loaded is False
    assert kernel.load_seconds > 0
    expected = weights_of(data)
    state = kernel.module.state_dict()
    assert state.keys() == expected.keys()
    for name, tensor in expected.items():
        assert torch.equal(state[name], tensor), name
    assert not torch.equal(state[bundles.UP], bundles.weights()[bundles.UP])
    assert kernel.param_count() == sum(t.numel() for t in expected.values())


def test_load_kernel_skips_the_exported_program_by_default() -> None:
    assert load_kernel(BundleSource(served()), kernel_id()).exported is None


def test_load_kernel_loads_the_exported_program_on_request() -> None:
    kernel = load_kernel(BundleSource(served()), kernel_id(), load_exported_program=True)
    assert kernel.exported is not None
    weights = bundles.weights()
    for name, tensor in kernel.module.state_dict().items():
        assert torch.equal(tensor, weights[name])
    x = torch.randn(4, 16)
    torch.testing.assert_close(kernel.exported(x), kernel.module(x))


def test_fresh_module_is_an_independent_copy() -> None:
    kernel = load_kernel(BundleSource(served()), kernel_id(), load_exported_program=False)
    first, second = kernel.fresh_module(), kernel.fresh_module()
    for a, b, original in zip(
        first.parameters(), second.parameters(), kernel.module.parameters(), strict=True
    ):
        assert a is not b
        assert a is not original
        assert torch.equal(a, original)
    with torch.no_grad():
        next(first.parameters()).add_(1.0)
    assert not torch.equal(next(first.parameters()), next(kernel.module.parameters()))


def test_a_wrong_sha256_is_a_bundle_error() -> None:
    source = BundleSource(served(), sha="0" * 64)
    with pytest.raises(BundleError):
        load_kernel(source, kernel_id())


def test_a_tampered_bundle_is_a_bundle_error() -> None:
    data = bytearray(bundles.compiled().data)
    data[len(data) // 2] ^= 0xFF
    with pytest.raises(BundleError):
        load_kernel(BundleSource({kernel_id(): bytes(data)}), kernel_id())


def test_a_bundle_of_another_kernel_is_a_bundle_error() -> None:
    other = "k-" + "0" * 24
    source = BundleSource({other: bundles.compiled().data})
    with pytest.raises(BundleError, match=f"asked for kernel {other}, the bundle is kernel "):
        load_kernel(source, other)


@pytest.mark.parametrize("load_cache", [True, False])
def test_the_compile_cache_is_loaded_only_when_asked_and_present(load_cache: bool) -> None:
    with_cache = bundles.compiled(compile_cache=True)
    assert read_bundle(with_cache.data).get(BundleMemberName.COMPILE_CACHE)
    source = BundleSource({kernel_id(): with_cache.data})

    kernel = load_kernel(
        source, kernel_id(), load_exported_program=False, load_compile_cache=load_cache
    )

    assert kernel.compile_cache_loaded is load_cache


def test_asking_for_the_cache_of_a_bundle_without_one_loads_nothing() -> None:
    assert read_bundle(bundles.compiled().data).get(BundleMemberName.COMPILE_CACHE) is None
    kernel = load_kernel(
        BundleSource(served()), kernel_id(), load_exported_program=False, load_compile_cache=True
    )
    assert kernel.compile_cache_loaded is False


# KernelLoader ---------------------------------------------------------------------------------


def test_loader_loads_in_a_background_thread_and_never_blocks_ready(
    make_loader: Callable[..., KernelLoader],
) -> None:
    source = GatedSource(served())
    loader = make_loader(source, load_exported_program=False)

    future = loader.request(kernel_id())
    assert loader.ready(kernel_id()) is None
    assert loader.request(kernel_id()) is future
    assert not future.done()

    source.gate.set()
    kernel = loader.wait(kernel_id(), timeout=RELEASE_TIMEOUT)

    assert isinstance(kernel, LoadedKernel)
    assert kernel.exported is None
    assert loader.ready(kernel_id()) is kernel
    assert loader.wait(kernel_id()) is kernel
    assert source.calls == [kernel_id()]
    assert source.threads[0].startswith("esper-kernel-loader")
    assert source.threads[0] != threading.current_thread().name


def test_ready_for_a_kernel_never_requested_is_a_key_error(
    make_loader: Callable[..., KernelLoader],
) -> None:
    loader = make_loader(BundleSource(served()))
    with pytest.raises(KeyError):
        loader.ready(kernel_id())


def test_a_failed_load_is_raised_by_ready_then_forgotten(
    make_loader: Callable[..., KernelLoader],
) -> None:
    source = FlakySource(served(), failures=1)
    loader = make_loader(source, load_exported_program=False)
    future = loader.request(kernel_id())
    assert future.exception(timeout=RELEASE_TIMEOUT) is not None

    with pytest.raises(ConnectionError, match=r"Urza unreachable \(call 1\)"):
        loader.ready(kernel_id())
    with pytest.raises(KeyError):
        loader.ready(kernel_id())

    retry = loader.request(kernel_id())
    assert retry is not future
    assert retry.result(timeout=RELEASE_TIMEOUT).kernel_id == kernel_id()
    assert loader.ready(kernel_id()) is retry.result()
    assert source.calls == [kernel_id(), kernel_id()]


def test_a_bundle_error_is_raised_by_ready(make_loader: Callable[..., KernelLoader]) -> None:
    loader = make_loader(BundleSource(served(), sha="f" * 64))
    loader.request(kernel_id()).exception(timeout=RELEASE_TIMEOUT)
    with pytest.raises(BundleError):
        loader.ready(kernel_id())


def test_wait_after_a_failed_load_retries(make_loader: Callable[..., KernelLoader]) -> None:
    source = FlakySource(served(), failures=1)
    loader = make_loader(source, load_exported_program=False)
    with pytest.raises(ConnectionError):
        loader.wait(kernel_id(), timeout=RELEASE_TIMEOUT)
    assert loader.wait(kernel_id(), timeout=RELEASE_TIMEOUT).kernel_id == kernel_id()
    assert len(source.calls) == 2


def test_close_finishes_the_running_load_and_drops_queued_ones(
    make_loader: Callable[..., KernelLoader],
) -> None:
    other = "k-" + "1" * 24
    source = GatedSource({**served(), other: bundles.compiled().data})
    loader = make_loader(source, load_exported_program=False)
    running = loader.request(kernel_id())
    assert source.entered.wait(RELEASE_TIMEOUT)
    queued = loader.request(other)
    dropped = threading.Event()
    queued.add_done_callback(lambda _future: dropped.set())

    closer = threading.Thread(target=loader.close)
    closer.start()
    assert dropped.wait(RELEASE_TIMEOUT)
    assert closer.is_alive()  # close waits for the load in progress
    source.gate.set()
    closer.join(RELEASE_TIMEOUT)

    assert not closer.is_alive()
    assert queued.cancelled()
    assert running.result(timeout=0).kernel_id == kernel_id()
    assert source.calls == [kernel_id()]


# Germinating by kernel id ---------------------------------------------------------------------


def test_germinate_by_kernel_id_loads_through_the_models_source() -> None:
    source = BundleSource({kernel_id(): bundles.with_perturbed(bundles.UP)})
    model = wrap(host(), [nn.Linear], kernels=source)
    assert isinstance(model.kernels, KernelLoader)
    try:
        change = model.germinate("0", kernel_id(), step=7)
        model.germinate("2", kernel_id(), step=8)
    finally:
        model.kernels.close()

    assert (change.slot_id, change.target, change.step) == ("0", SeedStage.GERMINATED, 7)
    assert source.calls == [kernel_id()]  # loaded once, shared by both germinations
    first, second = model.slot("0"), model.slot("2")
    assert first.state.kernel_id == second.state.kernel_id == kernel_id()
    assert first.blueprint == bundles.ir()
    assert first.blueprint_name == bundles.BLUEPRINT
    assert first.seed is not None
    assert second.seed is not None
    expected = weights_of(source.served[kernel_id()])
    for name, tensor in first.seed.state_dict().items():
        assert torch.equal(tensor, expected[name]), name
    # Each slot owns its weights.
    assert not {id(p) for p in first.seed_parameters()} & {id(p) for p in second.seed_parameters()}


def test_germinate_with_a_loaded_kernel_needs_no_source() -> None:
    kernel = load_kernel(BundleSource(served()), kernel_id(), load_exported_program=False)
    model = wrap(host(), ["2"])
    assert model.kernels is None
    model.germinate("2", kernel)
    slot = model.slot("2")
    assert slot.stage is SeedStage.GERMINATED
    assert slot.seed is not None
    assert slot.seed is not kernel.module
    assert slot.state.germinated_step == 0


def test_germinate_by_kernel_id_without_a_source_is_an_error() -> None:
    model = wrap(host(), ["2"])
    with pytest.raises(ValueError, match=f"cannot load kernel {kernel_id()}: wrap\\(\\) was given"):
        model.germinate("2", kernel_id())
    assert model.slot("2").stage is SeedStage.DORMANT


def test_germinating_a_kernel_for_another_shape_is_refused() -> None:
    kernel = load_kernel(BundleSource(served()), kernel_id(), load_exported_program=False)
    model = wrap(nn.Sequential(nn.Linear(4, 8)), ["0"])
    with pytest.raises(ValueError, match=r"slot '0' has sizes \{'C': 8\}"):
        model.germinate("0", kernel)


def test_copies_of_a_model_leave_its_loader_behind() -> None:
    source = BundleSource(served())
    model = wrap(host(), [nn.Linear], kernels=source)
    loader = model.kernels
    assert loader is not None
    try:
        twin = copy.deepcopy(model)
        assert twin.kernels is None
        assert model.kernels is loader
    finally:
        loader.close()


def test_a_device_warms_the_seed_up_on_a_copy() -> None:
    kernel = load_kernel(BundleSource(served()), kernel_id(), device=torch.device("cpu"))
    weights = bundles.weights()
    for name, tensor in kernel.module.state_dict().items():
        assert torch.equal(tensor, weights[name])
    assert all(parameter.grad is None for parameter in kernel.module.parameters())


# Signatures -----------------------------------------------------------------------------------


class UnsignedSource(BundleSource):
    """Serves bundles without a signature, as Urza does for kernels uploaded unsigned."""

    def fetch_bundle(self, kernel_id: str) -> FetchedBundle:
        fetched = super().fetch_bundle(kernel_id)
        return FetchedBundle(fetched.data, fetched.sha256, None)


def test_an_unsigned_bundle_is_refused_naming_the_kernel() -> None:
    with pytest.raises(SignatureError) as refused:
        load_kernel(UnsignedSource(served()), kernel_id())
    assert str(refused.value).startswith(f"kernel {kernel_id()}: the artifact is unsigned")


def test_the_signature_is_checked_before_the_bundle_is_read() -> None:
    # Bytes that are not even an archive: reading them fails as not a bundle, so a
    # SignatureError shows that nothing parsed them first.
    garbage = b"not a zip archive at all"
    forged = FetchedBundle(garbage, bundles.sha256(garbage), TEST_KEYRING.sign(kernel_id(), b""))

    class Forged:
        def fetch_bundle(self, _kernel_id: str) -> FetchedBundle:
            return forged

    with pytest.raises(SignatureError, match=f"kernel {kernel_id()}: bad signature"):
        load_kernel(Forged(), kernel_id())
    with pytest.raises(BundleError, match="not a kernel bundle"):
        read_bundle(garbage)


def test_a_ring_without_the_signer_s_key_refuses_an_unknown_key_id(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("ESPER_SIGNING_KEY", "another-key-" + "1" * 32)
    monkeypatch.setenv("ESPER_SIGNING_KEY_ID", "rotated")
    with pytest.raises(SignatureError, match="signed with key id 'test', which is not in"):
        load_kernel(BundleSource(served()), kernel_id())


def test_an_explicit_ring_overrides_the_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ESPER_SIGNING_KEY", "another-key-" + "1" * 32)
    kernel = load_kernel(BundleSource(served()), kernel_id(), keyring=TEST_KEYRING)
    assert kernel.kernel_id == kernel_id()


def test_with_signatures_off_an_unsigned_bundle_loads_with_a_warning(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("ESPER_SIGNING_MODE", "off")
    with caplog.at_level(logging.WARNING):
        kernel = load_kernel(UnsignedSource(served()), kernel_id())
    assert kernel.kernel_id == kernel_id()
    assert f"kernel {kernel_id()}: loaded without checking its signature" in caplog.text


def test_a_bad_key_configuration_stops_the_loader_s_construction(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("ESPER_SIGNING_KEY", "too-short")
    with pytest.raises(SigningKeyError, match="at least 32"):
        KernelLoader(BundleSource(served()))


def test_the_background_loader_refuses_an_unsigned_bundle(
    make_loader: Callable[..., KernelLoader],
) -> None:
    loader = make_loader(UnsignedSource(served()))
    with pytest.raises(SignatureError, match="unsigned"):
        loader.wait(kernel_id(), timeout=RELEASE_TIMEOUT)
