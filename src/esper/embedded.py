"""The stacks a run works with: Urza and the local forge (and, embedded, the in-process bus).

Embedded (the default): ``esper up`` serves Urza on a fixed port; ``esper run`` starts it on a
free loopback port for the duration of a run, on SQLite and a local artifact directory, with the
in-process bus and a forge that serves everything this Urza holds.

Remote Urza (``esper run --urza URL``, a training Job in a cluster): Urza is the cluster's, and
the run keeps a local forge for the kernels its slots need, so the ones Urza already has
Validated (compiled by the cluster's Jobs, or by an earlier run) are reused and the missing ones
are compiled in the run's own pod, off the training thread. That Urza is shared, so this forge
is confined to the run's kernels: it neither sweeps Urza nor repairs kernels others hold, and
kernels its workers held when the run stopped go back to Pending for whoever comes next.

Either way the forge's worker processes reach Urza over HTTP, exactly as Kubernetes Jobs do.
"""

import logging
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from enum import StrEnum

from esper.config import ForgeSettings, UrzaSettings
from esper.contracts.kernel import KernelArtifact, KernelPhase, KernelTarget
from esper.contracts.urza_api import PhaseChange
from esper.forge.runner import RunnerOptions, UnitKind, UnitRunner, WorkUnit
from esper.forge.scheduler import Forge, ForgeOptions
from esper.oona import Bus, InProcessBus
from esper.urza.client import UrzaClient, UrzaConflictError, UrzaUnavailableError
from esper.urza.service import build_service
from esper.urza.threaded import ThreadedServer

LOGGER = logging.getLogger("esper.forge")

FORGE_JOIN_SECONDS = 30.0

READY_TIMEOUT_SECONDS = 10.0
"""Per-request timeout of the check that a remote Urza answers."""

READY_RETRIES = 3
"""Retries of that check (with the client's backoff: about two seconds in all)."""

_HELD_PHASES = frozenset({KernelPhase.COMPILING, KernelPhase.VALIDATING})


def build_forge(
    settings: ForgeSettings,
    *,
    url: str,
    token: str | None,
    consumer: str,
    bus: Bus | None,
    targets: tuple[KernelTarget, ...],
    compile_cache: bool | None = None,
) -> Forge:
    """Build a forge whose workers talk to Urza at ``url``.

    Args:
        settings: Concurrency, timeouts, retries.
        url: Urza's address (given to the worker processes too).
        token: Urza's write token, if any.
        consumer: The forge's consumer name on the bus.
        bus: Oona, for reacting to events (sweeps alone work without it).
        targets: Targets every submitted blueprint is compiled for (empty: only kernels others
            register are compiled).
        compile_cache: Override of ``settings.compile_cache``.

    Returns:
        The forge (not running yet).
    """
    client = UrzaClient(url, token=token)
    environment = {"ESPER_URZA_URL": url}
    if token is not None:
        environment["ESPER_URZA_TOKEN"] = token
    runner = UnitRunner(
        client,
        RunnerOptions(
            timeout_seconds=settings.timeout_seconds,
            max_attempts=settings.max_attempts,
            backoff_seconds=settings.backoff_seconds,
            extra_env=environment,
            compile_cache=settings.compile_cache if compile_cache is None else compile_cache,
        ),
    )
    options = ForgeOptions(
        targets=targets,
        concurrency=settings.concurrency,
        sweep_seconds=settings.sweep_seconds,
        consumer=consumer,
    )
    return Forge(client, runner, options, bus=bus)


class ForgeScope(StrEnum):
    """Which of Urza's kernels a :class:`LocalForge` works on."""

    ALL = "all"
    """Every kernel Urza holds, found by sweeps and bus events (Urza is the stack's own)."""
    RUN = "run"
    """Only the kernels handed to :meth:`LocalForge.prepare` (Urza is shared)."""


class LocalForge:
    """A forge working beside a run, in this process's threads and its worker processes.

    Args:
        forge: The forge.
        client: A client of the forge's Urza.
        scope: Which kernels it works on.
    """

    def __init__(self, forge: Forge, client: UrzaClient, scope: ForgeScope) -> None:
        """Wrap the forge; :meth:`start` sets it going."""
        self.forge = forge
        self.scope = scope
        self._client = client
        self._thread: threading.Thread | None = None
        self._kernel_ids: list[str] = []

    def start(self) -> None:
        """Start sweeping and reacting to events (``ALL``); ``RUN`` waits for :meth:`prepare`."""
        if self.scope is ForgeScope.ALL:
            self._thread = threading.Thread(target=self.forge.run, name="esper-forge", daemon=True)
            self._thread.start()

    def prepare(self, kernel_ids: Sequence[str]) -> None:
        """Start work on the run's kernels that need it.

        With ``RUN``, a Pending kernel gets a compile unit (which chains validation) and a
        Compiled one a validation unit; the others are left alone (Validated ones are reused;
        kernels Compiling or Validating belong to whoever moved them there). With ``ALL`` the
        forge finds the kernels by itself, so this does nothing.

        Args:
            kernel_ids: The run's kernels, registered in Urza.
        """
        if self.scope is ForgeScope.ALL:
            return
        for kernel_id in kernel_ids:
            self._kernel_ids.append(kernel_id)
            unit = _unit_for(self._client.get_kernel(kernel_id))
            if unit is not None:
                self.forge.submit(unit)

    def stop(self) -> None:
        """Stop the forge and kill its workers; with ``RUN``, release what they held."""
        self.forge.stop(wait=True, kill_workers=True)
        if self._thread is not None:
            self._thread.join(FORGE_JOIN_SECONDS)
        if self.scope is ForgeScope.RUN:
            self._release_interrupted()

    def _release_interrupted(self) -> None:
        # A unit killed by the stop left its kernel Compiling or Validating; on a shared Urza no
        # sweep of ours will come back for it, so it returns to Pending (through Failed, which
        # records why) and the next run or compile Job starts it afresh. A unit that finished
        # (or gave up, leaving the kernel Failed) is not touched.
        interrupted = {
            outcome.unit.kernel_id for outcome in self.forge.outcomes if not outcome.succeeded
        }
        for kernel_id in self._kernel_ids:
            if kernel_id not in interrupted:
                continue
            try:
                self._release(kernel_id)
            except UrzaConflictError as error:
                # It moved on meanwhile (another worker finished it): nothing to release.
                LOGGER.info("kernel %s left as it is: %s", kernel_id, error)
            except UrzaUnavailableError as error:
                # Clean-up must not hide why the run stopped; the kernel stays as it is.
                LOGGER.error("kernel %s could not be released: %s", kernel_id, error)

    def _release(self, kernel_id: str) -> None:
        kernel = self._client.get_kernel(kernel_id)
        if kernel.phase not in _HELD_PHASES:
            return
        reason = f"released: the run stopped while its forge was {kernel.phase.value}"
        self._client.change_phase(kernel_id, PhaseChange(phase=KernelPhase.FAILED, error=reason))
        self._client.change_phase(kernel_id, PhaseChange(phase=KernelPhase.PENDING))
        LOGGER.warning("kernel %s returned to Pending: %s", kernel_id, reason)


def _unit_for(kernel: KernelArtifact) -> WorkUnit | None:
    if kernel.phase is KernelPhase.PENDING:
        return WorkUnit(UnitKind.COMPILE, kernel.id, kernel.blueprint_hash, kernel.target)
    if kernel.phase is KernelPhase.COMPILED:
        return WorkUnit(UnitKind.VALIDATE, kernel.id, kernel.blueprint_hash, kernel.target)
    return None


@dataclass(frozen=True)
class RunStack:
    """Urza and the local forge, as a run uses them.

    Attributes:
        url: Urza's address.
        client: A client of it.
        forge: The local forge.
    """

    url: str
    client: UrzaClient
    forge: LocalForge

    def prepare(self, kernel_ids: Sequence[str]) -> None:
        """Have the forge start on the run's kernels (see :meth:`LocalForge.prepare`).

        Args:
            kernel_ids: The run's kernels, registered in Urza.
        """
        self.forge.prepare(kernel_ids)


@contextmanager
def _forge_beside(
    forge: ForgeSettings,
    *,
    url: str,
    token: str | None,
    consumer: str,
    bus: Bus | None,
    scope: ForgeScope,
    compile_cache: bool | None,
) -> Iterator[RunStack]:
    """Run a local forge against Urza at ``url`` for the block's duration."""
    client = UrzaClient(url, token=token)
    local = LocalForge(
        build_forge(
            forge,
            url=url,
            token=token,
            consumer=consumer,
            bus=bus,
            targets=(),
            compile_cache=compile_cache,
        ),
        client,
        scope,
    )
    local.start()
    try:
        yield RunStack(url=url, client=client, forge=local)
    finally:
        local.stop()
        client.close()


@contextmanager
def embedded_stack(
    urza: UrzaSettings,
    forge: ForgeSettings,
    *,
    consumer: str,
    compile_cache: bool | None = None,
) -> Iterator[RunStack]:
    """Run Urza (on a free loopback port), the bus and the forge for the block's duration.

    The forge compiles only the kernels that are registered (a run registers its own, sized
    for its slots), not the forge's default targets.

    Args:
        urza: Urza's settings (database, blob store); host and port are ignored.
        forge: The forge's settings.
        consumer: The forge's consumer name.
        compile_cache: Override of ``forge.compile_cache``.

    Yields:
        The running stack.
    """
    bus = InProcessBus()
    service = build_service(urza, publish=bus.publish)
    server = ThreadedServer(service.app)
    server.start()
    try:
        with _forge_beside(
            forge,
            url=server.url,
            token=urza.token(),
            consumer=consumer,
            bus=bus,
            scope=ForgeScope.ALL,
            compile_cache=compile_cache,
        ) as stack:
            yield stack
    finally:
        server.stop()
        service.engine.dispose()


def check_urza(url: str, token: str | None) -> None:
    """Make sure Urza at ``url`` answers and is ready (bounded: a few seconds).

    Args:
        url: Urza's address.
        token: Its token, if any.

    Raises:
        UrzaUnavailableError: It did not answer, or said it is not ready.
        UrzaError: It answered ``/readyz`` with another error (not an Urza, say).
    """
    with UrzaClient(
        url, token=token, timeout=READY_TIMEOUT_SECONDS, retries=READY_RETRIES
    ) as client:
        if not client.ready():
            raise UrzaUnavailableError(
                f"{url} is unreachable or not ready (GET /readyz did not answer 200)"
            )


@contextmanager
def remote_urza_stack(
    url: str,
    token: str | None,
    forge: ForgeSettings,
    *,
    consumer: str,
    compile_cache: bool | None = None,
) -> Iterator[RunStack]:
    """Use a running Urza, with a local forge confined to the run's kernels.

    Args:
        url: Urza's address.
        token: Its write token, if any.
        forge: The forge's settings.
        consumer: The forge's name (recorded with its compile attempts).
        compile_cache: Override of ``forge.compile_cache``.

    Yields:
        The stack; hand the run's kernels to :meth:`RunStack.prepare`.

    Raises:
        UrzaUnavailableError: Urza did not answer or is not ready (nothing was started).
        UrzaError: Urza answered its readiness check with another error.
    """
    check_urza(url, token)
    with _forge_beside(
        forge,
        url=url,
        token=token,
        consumer=consumer,
        bus=None,
        scope=ForgeScope.RUN,
        compile_cache=compile_cache,
    ) as stack:
        yield stack
