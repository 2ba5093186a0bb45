"""The run's kernel catalog: which kernels can grow in which slot, kept fresh off the loop.

At the start of a run, :func:`register_kernels` asks Urza for one kernel per (blueprint, slot
target) that fits; the forge (or the operator's Jobs) compiles and validates them. A
:class:`KernelCatalog` thread then polls Urza for those kernels and, as each becomes Validated,
has the kernel loader download and build it. The training thread only reads the catalog's
current view, which holds kernels that are Validated *and* loaded, so a germination never waits.
"""

import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from esper.blueprints.targets import target_for
from esper.contracts.blueprint import BlueprintIR
from esper.contracts.kernel import DeviceKind, DType, KernelArtifact, KernelPhase, KernelTarget
from esper.contracts.seed import SlotDescriptor
from esper.kasmina.loader import KernelLoader, LoadedKernel
from esper.tamiyo.policy import KernelCandidate
from esper.urza.client import UrzaClient, UrzaError, UrzaUnavailableError

LOGGER = logging.getLogger("esper.tolaria")

KERNEL_BATCH_SIZES = (1, 32)
"""Batch sizes a run's kernels are validated and benchmarked at (export is batch-dynamic)."""

FINAL_PHASES = frozenset({KernelPhase.VALIDATED, KernelPhase.REJECTED, KernelPhase.FAILED})


def slot_target(
    descriptor: SlotDescriptor, device: DeviceKind, compute_capability: str | None
) -> KernelTarget:
    """Return the kernel target of a slot: its sizes, on the run's device, in float32.

    Args:
        descriptor: The slot.
        device: CPU or CUDA.
        compute_capability: The GPU's capability (CUDA only).

    Returns:
        The target, binding every symbol the slot's layout defines.
    """
    return KernelTarget(
        device=device,
        compute_capability=compute_capability,
        dtype=DType.FP32,
        bindings=descriptor.bindings(),
        batch_sizes=list(KERNEL_BATCH_SIZES),
    )


@dataclass(frozen=True)
class WantedKernel:
    """A kernel the run registered.

    Attributes:
        kernel_id: The kernel.
        blueprint_name: Its blueprint's name.
        slot_ids: The slots it fits.
    """

    kernel_id: str
    blueprint_name: str
    slot_ids: tuple[str, ...]


def register_kernels(
    client: UrzaClient,
    blueprints: Sequence[BlueprintIR],
    slots: Sequence[SlotDescriptor],
    device: DeviceKind,
    compute_capability: str | None,
) -> list[WantedKernel]:
    """Submit the blueprints and register a kernel for every slot each one fits.

    Idempotent: Urza identifies blueprints by hash and kernels by (blueprint, target), so a
    second run with the same slots reuses kernels already compiled.

    Args:
        client: Urza.
        blueprints: The run's blueprints.
        slots: The model's slots.
        device: The run's device kind.
        compute_capability: The GPU's capability (CUDA only).

    Returns:
        The kernels, each with the slots it serves (blueprints fitting no slot are left out).
    """
    wanted: dict[str, WantedKernel] = {}
    for ir in blueprints:
        blueprint_hash = client.submit_blueprint(ir).hash
        for slot in slots:
            if ir.input.layout != slot.layout or not _input_fits(ir, slot):
                continue
            target = target_for(ir, slot_target(slot, device, compute_capability))
            if target is None:
                continue
            kernel = client.create_kernel(blueprint_hash, target)
            previous = wanted.get(kernel.id)
            slot_ids = (*previous.slot_ids, slot.slot_id) if previous else (slot.slot_id,)
            wanted[kernel.id] = WantedKernel(kernel.id, ir.name, slot_ids)
    return list(wanted.values())


def _input_fits(ir: BlueprintIR, slot: SlotDescriptor) -> bool:
    """Tell whether a blueprint's literal input sizes are the slot's (symbols bind later)."""
    return all(
        isinstance(dim, str) or dim == size
        for dim, size in zip(ir.input.shape, slot.shape, strict=True)
    )


class KernelCatalog:
    """Tracks the run's kernels in a background thread (see the module docstring).

    Args:
        client: Urza.
        loader: Loads Validated kernels.
        wanted: The run's kernels.
        poll_seconds: Seconds between polls of kernels not yet final.
    """

    def __init__(
        self,
        client: UrzaClient,
        loader: KernelLoader,
        wanted: Sequence[WantedKernel],
        poll_seconds: float = 1.0,
    ) -> None:
        """Create the catalog; :meth:`start` begins polling."""
        self._client = client
        self._loader = loader
        self._wanted = {kernel.kernel_id: kernel for kernel in wanted}
        self._poll_seconds = poll_seconds
        self._lock = threading.Lock()
        self._artifacts: dict[str, KernelArtifact] = {}
        self._loaded: dict[str, LoadedKernel] = {}
        self._unusable: dict[str, str] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="esper-catalog", daemon=True)

    def start(self) -> None:
        """Start polling."""
        self._thread.start()

    def stop(self) -> None:
        """Stop polling and the loader."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        self._loader.close()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.poll()
            if self.settled():
                return
            self._stop.wait(self._poll_seconds)

    def poll(self) -> None:
        """Refresh the kernels that are not final yet, and collect finished loads."""
        for kernel_id in list(self._wanted):
            with self._lock:
                done = kernel_id in self._loaded or kernel_id in self._unusable
            if done:
                continue
            try:
                artifact = self._client.get_kernel(kernel_id)
            except UrzaError as error:
                # Urza may be restarting; the next poll tries again.
                LOGGER.warning("catalog: cannot read kernel %s: %s", kernel_id, error)
                continue
            with self._lock:
                self._artifacts[kernel_id] = artifact
            if artifact.phase in (KernelPhase.REJECTED, KernelPhase.FAILED):
                self._mark_unusable(kernel_id, f"{artifact.phase.value}: {artifact.error or ''}")
            elif artifact.phase is KernelPhase.VALIDATED:
                self._collect(kernel_id)

    def _collect(self, kernel_id: str) -> None:
        self._loader.request(kernel_id)
        try:
            loaded = self._loader.ready(kernel_id)
        except UrzaUnavailableError as error:
            # An outage is not a verdict on the kernel: the failed load is forgotten by the
            # loader, and the next poll requests it again.
            LOGGER.warning("catalog: kernel %s download failed, will retry: %s", kernel_id, error)
            return
        except (ValueError, RuntimeError, OSError) as error:
            # A bundle that fails verification or cannot be built is never grafted; the run
            # goes on with the other kernels.
            self._mark_unusable(kernel_id, f"load failed: {error}")
            return
        if loaded is not None:
            with self._lock:
                self._loaded[kernel_id] = loaded

    def _mark_unusable(self, kernel_id: str, reason: str) -> None:
        LOGGER.warning("catalog: kernel %s cannot be grown: %s", kernel_id, reason)
        with self._lock:
            self._unusable[kernel_id] = reason

    def settled(self) -> bool:
        """Tell whether every kernel is loaded or known unusable."""
        with self._lock:
            return all(k in self._loaded or k in self._unusable for k in self._wanted)

    def wait_settled(
        self, timeout: float, progress: Callable[[Mapping[str, str]], None] | None = None
    ) -> None:
        """Block until :meth:`settled` (before training starts, never inside the loop).

        Args:
            timeout: Longest wait in seconds.
            progress: Called about once a second with each kernel's status.

        Raises:
            TimeoutError: When kernels are still being prepared after ``timeout``; the message
                lists them with their phases.
        """
        deadline = time.monotonic() + timeout
        while not self.settled():
            if progress is not None:
                progress(self.status())
            if time.monotonic() > deadline:
                pending = {k: v for k, v in self.status().items() if v not in ("loaded",)}
                raise TimeoutError(
                    f"kernels not ready after {timeout:.0f} s: "
                    + ", ".join(f"{k} ({v})" for k, v in sorted(pending.items()))
                )
            if not self._thread.is_alive():
                self.poll()
            time.sleep(0.25)

    def status(self) -> dict[str, str]:
        """Return each kernel's status: ``loaded``, ``unusable: ...`` or its Urza phase."""
        with self._lock:
            result = {}
            for kernel_id in self._wanted:
                if kernel_id in self._loaded:
                    result[kernel_id] = "loaded"
                elif kernel_id in self._unusable:
                    result[kernel_id] = f"unusable: {self._unusable[kernel_id]}"
                elif kernel_id in self._artifacts:
                    result[kernel_id] = self._artifacts[kernel_id].phase.value
                else:
                    result[kernel_id] = "unknown"
            return result

    def blueprint_name(self, kernel_id: str) -> str:
        """Return the blueprint name of one of the run's kernels."""
        return self._wanted[kernel_id].blueprint_name

    def loaded(self, kernel_id: str) -> LoadedKernel | None:
        """Return a kernel if it is loaded (never blocks)."""
        with self._lock:
            return self._loaded.get(kernel_id)

    def candidates(self) -> dict[str, list[KernelCandidate]]:
        """Return the loaded kernels per slot id (never blocks)."""
        with self._lock:
            result: dict[str, list[KernelCandidate]] = {}
            for kernel_id, loaded in self._loaded.items():
                candidate = KernelCandidate(
                    kernel=self._artifacts[kernel_id],
                    blueprint_name=loaded.blueprint_name,
                    params=loaded.param_count(),
                )
                for slot_id in self._wanted[kernel_id].slot_ids:
                    result.setdefault(slot_id, []).append(candidate)
            return result
