"""The local forge: turns submitted blueprints into Validated kernels with no further action.

It reacts to Oona events (a blueprint submitted, a kernel Pending or Compiled) and, so that a
missed event is never fatal, sweeps Urza periodically for the same states. Each piece of work
runs as a worker process (:mod:`esper.forge.runner`) with bounded concurrency; one unit per
kernel runs at a time.

Blueprint submissions are expanded into kernels for the forge's default targets (each target's
bindings restricted to the symbols the blueprint uses); kernels that others register (a
training run asking for its slot's sizes) are picked up as they appear in Pending.
"""

import logging
import threading
from collections.abc import Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

from esper.blueprints.targets import target_for
from esper.contracts.events import BlueprintSubmitted, KernelPhaseChanged, Topic
from esper.contracts.kernel import KernelArtifact, KernelPhase, KernelTarget
from esper.contracts.urza_api import PhaseChange
from esper.forge.runner import UnitKind, UnitOutcome, UnitRunner, WorkUnit
from esper.oona import Bus, BusUnavailableError, Subscription
from esper.urza.client import UrzaClient, UrzaError

LOGGER = logging.getLogger("esper.forge")

FORGE_GROUP = "forge"
"""Oona consumer group of forges."""


@dataclass(frozen=True)
class ForgeOptions:
    """How the forge schedules.

    Attributes:
        targets: Targets every submitted blueprint is compiled for.
        concurrency: Worker processes at once.
        sweep_seconds: Seconds between reconciliation sweeps of Urza.
        consumer: This forge's consumer name in the Oona group.
    """

    targets: tuple[KernelTarget, ...]
    concurrency: int = 1
    sweep_seconds: float = 30.0
    consumer: str = "forge-0"


class Forge:
    """The local forge.

    Args:
        client: Urza's client.
        runner: Runs units in worker processes.
        options: Scheduling options.
        bus: Oona, for reacting to events as they happen; sweeps alone work without it.
    """

    def __init__(
        self,
        client: UrzaClient,
        runner: UnitRunner,
        options: ForgeOptions,
        bus: Bus | None = None,
    ) -> None:
        """Create the forge (see the class docstring)."""
        if options.concurrency < 1 or options.sweep_seconds <= 0:
            raise ValueError("concurrency must be >= 1 and sweep_seconds > 0")
        self._client = client
        self._runner = runner
        self._options = options
        self._bus = bus
        self._pool = ThreadPoolExecutor(
            max_workers=options.concurrency, thread_name_prefix="forge-unit"
        )
        self._lock = threading.Lock()
        self._in_flight: dict[str, Future[UnitOutcome]] = {}
        self._stop = threading.Event()
        self.outcomes: list[UnitOutcome] = []

    # Scheduling -------------------------------------------------------------------------------

    def submit(self, unit: WorkUnit) -> bool:
        """Schedule a unit unless one for the same kernel is already running or queued.

        Args:
            unit: The unit.

        Returns:
            True when it was scheduled now.
        """
        with self._lock:
            if self._stop.is_set() or unit.kernel_id in self._in_flight:
                return False
            future = self._pool.submit(self._runner.run, unit)
            self._in_flight[unit.kernel_id] = future
        future.add_done_callback(lambda done: self._finished(unit, done))
        return True

    def _finished(self, unit: WorkUnit, future: "Future[UnitOutcome]") -> None:
        with self._lock:
            self._in_flight.pop(unit.kernel_id, None)
        if future.cancelled():
            return
        error = future.exception()
        if error is not None:
            LOGGER.error("forge unit %s crashed: %s", unit.kernel_id, error)
            return
        outcome = future.result()
        self.outcomes.append(outcome)
        # Chain the pipeline without waiting for the next event or sweep.
        if outcome.succeeded and unit.kind is UnitKind.COMPILE and not self._stop.is_set():
            self._schedule_kernel(self._client.get_kernel(unit.kernel_id))

    def busy(self) -> bool:
        """Tell whether any unit is running or queued."""
        with self._lock:
            return bool(self._in_flight)

    def _schedule_kernel(self, kernel: KernelArtifact) -> None:
        if kernel.phase is KernelPhase.PENDING:
            self.submit(WorkUnit(UnitKind.COMPILE, kernel.id, kernel.blueprint_hash, kernel.target))
        elif kernel.phase is KernelPhase.COMPILED:
            self.submit(
                WorkUnit(UnitKind.VALIDATE, kernel.id, kernel.blueprint_hash, kernel.target)
            )

    def ensure_kernels(self, blueprint_hash: str) -> list[KernelArtifact]:
        """Register the blueprint's kernels for the default targets (idempotent).

        Args:
            blueprint_hash: The blueprint.

        Returns:
            The kernels, as Urza has them.
        """
        ir = self._client.get_blueprint(blueprint_hash).ir
        kernels = []
        for default in self._options.targets:
            target = target_for(ir, default)
            if target is not None:
                kernels.append(self._client.create_kernel(blueprint_hash, target))
        return kernels

    # Reconciliation ---------------------------------------------------------------------------

    def sweep(self) -> None:
        """Reconcile with Urza, so that a missed event is never fatal.

        Every blueprint gets its default kernels, every Pending or Compiled kernel a unit, and
        kernels left Compiling or Validating by a forge that died (no unit of ours holds them)
        are released for retry.
        """
        for blueprint_hash in self._all_blueprints():
            for kernel in self.ensure_kernels(blueprint_hash):
                self._schedule_kernel(kernel)
        for phase in (KernelPhase.PENDING, KernelPhase.COMPILED):
            for kernel in self._all_kernels(phase):
                self._schedule_kernel(kernel)
        for kernel in self._all_kernels(KernelPhase.COMPILING):
            with self._lock:
                orphaned = kernel.id not in self._in_flight
            if orphaned:
                self._client.change_phase(
                    kernel.id,
                    PhaseChange(
                        phase=KernelPhase.FAILED,
                        error="orphaned while Compiling: no worker holds it (forge restarted)",
                    ),
                )
                self.submit(
                    WorkUnit(UnitKind.COMPILE, kernel.id, kernel.blueprint_hash, kernel.target)
                )
        for kernel in self._all_kernels(KernelPhase.VALIDATING):
            with self._lock:
                orphaned = kernel.id not in self._in_flight
            if orphaned:
                self.submit(
                    WorkUnit(UnitKind.VALIDATE, kernel.id, kernel.blueprint_hash, kernel.target)
                )

    def _all_blueprints(self) -> Iterable[str]:
        cursor: str | None = None
        while True:
            page = self._client.list_blueprints(limit=200, cursor=cursor)
            yield from (record.hash for record in page.items)
            if page.next_cursor is None:
                return
            cursor = page.next_cursor

    def _all_kernels(self, phase: KernelPhase) -> Iterable[KernelArtifact]:
        cursor: str | None = None
        while True:
            page = self._client.list_kernels(phase=phase, limit=200, cursor=cursor)
            yield from page.items
            if page.next_cursor is None:
                return
            cursor = page.next_cursor

    # Events -----------------------------------------------------------------------------------

    def handle_events(self, subscription: Subscription, block_ms: int = 1000) -> int:
        """Receive one batch of events, act on them, and acknowledge them.

        Args:
            subscription: The forge's Oona subscription.
            block_ms: Longest wait for events.

        Returns:
            How many events were handled.
        """
        deliveries = subscription.receive(max_count=50, block_ms=block_ms)
        for delivery in deliveries:
            payload = delivery.event.payload
            if isinstance(payload, BlueprintSubmitted):
                for kernel in self.ensure_kernels(payload.blueprint_hash):
                    self._schedule_kernel(kernel)
            elif isinstance(payload, KernelPhaseChanged) and payload.phase in (
                KernelPhase.PENDING,
                KernelPhase.COMPILED,
            ):
                self._schedule_kernel(self._client.get_kernel(payload.kernel_id))
            subscription.ack(delivery)
        return len(deliveries)

    def run(self) -> None:
        """Run until :meth:`stop`: sweep at start and every ``sweep_seconds``, events between."""
        subscription = (
            self._bus.subscribe(
                [Topic.BLUEPRINT_SUBMITTED, Topic.KERNEL_PHASE_CHANGED],
                FORGE_GROUP,
                self._options.consumer,
            )
            if self._bus is not None
            else None
        )
        try:
            while not self._stop.is_set():
                self._sweep_logged()
                deadline = self._options.sweep_seconds
                waited = 0.0
                while waited < deadline and not self._stop.is_set():
                    if subscription is None:
                        self._stop.wait(min(1.0, deadline - waited))
                        waited += 1.0
                        continue
                    try:
                        self.handle_events(subscription, block_ms=1000)
                    except (UrzaError, BusUnavailableError) as error:
                        LOGGER.warning("forge event handling failed, will retry: %s", error)
                        self._stop.wait(1.0)
                    waited += 1.0
        finally:
            if subscription is not None:
                subscription.close()

    def _sweep_logged(self) -> None:
        try:
            self.sweep()
        except UrzaError as error:
            # Urza may be restarting; the next sweep tries again.
            LOGGER.warning("forge sweep failed, will retry: %s", error)

    def stop(self, wait: bool = True, kill_workers: bool = False) -> None:
        """Stop scheduling; with ``wait``, also wait for running units to finish.

        Args:
            wait: Wait for running units.
            kill_workers: Kill running workers instead of letting them finish (their kernels
                are resumed by the next sweep).
        """
        with self._lock:
            # Under the lock: no submit can slip in between this and the pool's shutdown.
            self._stop.set()
        if kill_workers:
            self._runner.stop()
        self._pool.shutdown(wait=wait, cancel_futures=True)
