"""Kernel loading off the training thread.

Kasmina knows kernels only through :class:`KernelSource`: something that returns a kernel's
bundle bytes with the SHA-256 and the signature its library recorded. Tolaria wires in an
Urza-backed source (:class:`esper.urza.kernel_source.UrzaKernelSource`); tests and offline users
can pass any object with the same method.

:class:`KernelLoader` downloads, verifies (Tezzeret's signature over the bytes, before anything
reads them; then SHA-256 of the bundle and every member against the manifest) and builds the
seed module in a background thread; the trainer polls it at step boundaries and germinates once
a kernel is ready, so no training step waits for I/O.
"""

import copy
import logging
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Literal, Protocol

import torch
from torch import nn

from esper.blueprints.builder import module_from_bundle
from esper.blueprints.bundle import BundleError, read_bundle
from esper.blueprints.exported import load_exported
from esper.blueprints.signing import Keyring, load_keyring
from esper.config import SigningSettings
from esper.contracts.blueprint import BlueprintIR
from esper.contracts.bundle import BundleMemberName, FetchedBundle

LOGGER = logging.getLogger("esper.kasmina")

FROM_SETTINGS: Literal["settings"] = "settings"
"""Take the verification keys from :class:`esper.config.SigningSettings` (``ESPER_SIGNING_*``)."""

KeyringChoice = Keyring | None | Literal["settings"]
"""A key ring, None to load without verifying (``ESPER_SIGNING_MODE=off``), or ``"settings"``."""


class KernelSource(Protocol):
    """Where kernel bundles come from."""

    def fetch_bundle(self, kernel_id: str) -> FetchedBundle:
        """Return a kernel's bundle bytes with the SHA-256 and signature its library recorded.

        Args:
            kernel_id: The kernel.

        Returns:
            The bundle as fetched (untrusted until the loader has checked it).
        """
        ...


def resolve_keyring(keyring: KeyringChoice) -> Keyring | None:
    """Return the key ring to verify with.

    Args:
        keyring: A ring, None (no verification), or ``"settings"`` to read
            ``ESPER_SIGNING_*`` (:func:`esper.blueprints.signing.load_keyring`).

    Returns:
        The ring, or None when verification is off.

    Raises:
        SigningKeyError: When the configured keys cannot be used.
        pydantic.ValidationError: When the signing settings are invalid.
    """
    if isinstance(keyring, str):
        return load_keyring(SigningSettings())
    return keyring


def check_signature(keyring: Keyring | None, kernel_id: str, fetched: FetchedBundle) -> None:
    """Check a fetched bundle's signature before anything reads the bundle.

    Args:
        keyring: The verification keys; None only logs that the bundle goes unverified.
        kernel_id: The kernel the bundle is loaded as.
        fetched: The bundle as fetched.

    Raises:
        SignatureError: When the bundle is unsigned, signed with an unknown key id, or the
            signature does not match.
    """
    if keyring is None:
        LOGGER.warning(
            "kernel %s: loaded without checking its signature (ESPER_SIGNING_MODE=off)",
            kernel_id,
        )
        return
    keyring.verify(kernel_id, fetched.data, fetched.signature)


@dataclass(frozen=True)
class LoadedKernel:
    """A verified kernel, ready to germinate.

    Attributes:
        kernel_id: The kernel.
        blueprint_name: Its blueprint's name.
        ir: Its blueprint.
        bindings: The target's symbol bindings.
        module: The seed module (eager, CPU), with the bundle's weights.
        exported: The bundle's exported program, when loaded.
        compile_cache_loaded: Whether the bundle's compile cache was loaded into this process.
        load_seconds: Wall time of download, verification and build.
    """

    kernel_id: str
    blueprint_name: str
    ir: BlueprintIR
    bindings: dict[str, int]
    module: nn.Module
    exported: nn.Module | None
    compile_cache_loaded: bool
    load_seconds: float

    def fresh_module(self) -> nn.Module:
        """Return a copy of the seed module (each germination owns its own weights)."""
        return copy.deepcopy(self.module)

    def param_count(self) -> int:
        """Return the seed's parameters."""
        return sum(p.numel() for p in self.module.parameters())


def load_kernel(
    source: KernelSource,
    kernel_id: str,
    *,
    load_exported_program: bool = False,
    load_compile_cache: bool = False,
    device: torch.device | None = None,
    keyring: KeyringChoice = FROM_SETTINGS,
) -> LoadedKernel:
    """Download, verify and build one kernel.

    Args:
        source: Where the bundle comes from.
        kernel_id: The kernel.
        load_exported_program: Also load the bundle's ``torch.export`` program (weights-only
            loading forced), for callers that deploy it. Off by default: training runs the eager
            seed, and deserialising the program holds the GIL for about a second, which stalls
            the training thread (benchmarks/graft_stall.py).
        load_compile_cache: Load the bundle's ``torch.compile`` cache into this process, so a
            later ``torch.compile`` of the seed on the same target starts warm. Off by default:
            the cache format is torch's own serialisation, which is only as trustworthy as the
            library that stored it.
        device: Where the seed will run. The module is moved there and run forward and
            backward once on a copy, so first-use costs (CUDA's lazy kernel loading, allocator
            growth) are paid here, off the training thread.
        keyring: The keys Tezzeret's signature is checked with (see :func:`resolve_keyring`);
            by default those of ``ESPER_SIGNING_*``.

    Returns:
        The loaded kernel.

    Raises:
        SignatureError: When the signature is missing, from an unknown key or wrong; raised
            before the bundle is opened.
        BundleError: When the bundle fails verification, is for another kernel, or does not fit
            its blueprint. The kernel must then never be used.
    """
    started = time.perf_counter()
    verifying = resolve_keyring(keyring)
    fetched = source.fetch_bundle(kernel_id)
    check_signature(verifying, kernel_id, fetched)
    bundle = read_bundle(fetched.data, expected_sha256=fetched.sha256)
    if bundle.manifest.kernel_id != kernel_id:
        raise BundleError(
            f"asked for kernel {kernel_id}, the bundle is kernel {bundle.manifest.kernel_id}"
        )
    ir = bundle.ir()
    module = module_from_bundle(bundle)
    if device is not None:
        module = module.to(device)
        _warm_up(module, ir, dict(bundle.manifest.target.bindings), device)
    exported = load_exported(bundle) if load_exported_program else None
    cache = bundle.get(BundleMemberName.COMPILE_CACHE)
    cache_loaded = False
    if load_compile_cache and cache is not None:
        torch.compiler.load_cache_artifacts(cache)
        cache_loaded = True
    return LoadedKernel(
        kernel_id=kernel_id,
        blueprint_name=ir.name,
        ir=ir,
        bindings=dict(bundle.manifest.target.bindings),
        module=module,
        exported=exported,
        compile_cache_loaded=cache_loaded,
        load_seconds=time.perf_counter() - started,
    )


def _warm_up(
    module: nn.Module, ir: BlueprintIR, bindings: dict[str, int], device: torch.device
) -> None:
    # A copy, so that batch-norm statistics and gradients of the real module stay untouched.
    probe = copy.deepcopy(module).train()
    dims = [bindings[dim] if isinstance(dim, str) else dim for dim in ir.input.shape]
    sample = torch.randn(2, *dims, device=device, requires_grad=True)
    probe(sample).sum().backward()
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class KernelLoader:
    """Loads kernels in a background thread; the training thread only polls.

    Each kernel is loaded once; later requests share the result.

    Args:
        source: Where bundles come from.
        load_exported_program: See :func:`load_kernel`.
        load_compile_cache: See :func:`load_kernel`.
        device: See :func:`load_kernel`.
        keyring: See :func:`load_kernel`; settings are read here, once, so a bad key
            configuration stops the caller before training starts.
    """

    def __init__(
        self,
        source: KernelSource,
        *,
        load_exported_program: bool = False,
        load_compile_cache: bool = False,
        device: torch.device | None = None,
        keyring: KeyringChoice = FROM_SETTINGS,
    ) -> None:
        """Resolve the verification keys and start the loader's thread pool (one thread)."""
        self._keyring = resolve_keyring(keyring)
        self._source = source
        self._load_exported = load_exported_program
        self._load_cache = load_compile_cache
        self._device = device
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="esper-kernel-loader")
        self._futures: dict[str, Future[LoadedKernel]] = {}
        self._lock = threading.Lock()

    def request(self, kernel_id: str) -> "Future[LoadedKernel]":
        """Start loading a kernel unless it is loading or loaded already.

        Args:
            kernel_id: The kernel.

        Returns:
            Its future.
        """
        with self._lock:
            future = self._futures.get(kernel_id)
            if future is None or _failed(future):
                future = self._pool.submit(
                    load_kernel,
                    self._source,
                    kernel_id,
                    load_exported_program=self._load_exported,
                    load_compile_cache=self._load_cache,
                    device=self._device,
                    keyring=self._keyring,
                )
                self._futures[kernel_id] = future
            return future

    def ready(self, kernel_id: str) -> LoadedKernel | None:
        """Return the kernel if it has finished loading (never blocks).

        Args:
            kernel_id: The kernel (requested earlier).

        Returns:
            The loaded kernel, or None while it is still loading.

        Raises:
            KeyError: When it was never requested.
            Exception: The load's own error, when it failed (a failed load is forgotten, so a
                later request retries).
        """
        with self._lock:
            future = self._futures[kernel_id]
        if not future.done():
            return None
        error = future.exception()
        if error is not None:
            self._forget(kernel_id, future)
            raise error
        return future.result()

    def wait(self, kernel_id: str, timeout: float | None = None) -> LoadedKernel:
        """Request a kernel and block until it is loaded (for use outside a training loop).

        Args:
            kernel_id: The kernel.
            timeout: Longest wait in seconds.

        Returns:
            The loaded kernel.

        Raises:
            Exception: The load's own error (the failed load is forgotten, as by :meth:`ready`).
        """
        future = self.request(kernel_id)
        try:
            return future.result(timeout=timeout)
        except Exception:
            if future.done():
                self._forget(kernel_id, future)
            raise

    def _forget(self, kernel_id: str, future: "Future[LoadedKernel]") -> None:
        with self._lock:
            if self._futures.get(kernel_id) is future:
                del self._futures[kernel_id]

    def close(self) -> None:
        """Stop the thread pool (loads in progress finish; queued ones are dropped)."""
        self._pool.shutdown(wait=True, cancel_futures=True)


def _failed(future: "Future[LoadedKernel]") -> bool:
    """Tell whether a load ended in an error (a later request then loads again)."""
    return future.done() and (future.cancelled() or future.exception() is not None)
