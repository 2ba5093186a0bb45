"""The embedded stack: Urza, the in-process bus and the local forge, inside one process.

``esper up`` serves it on a fixed port; ``esper run`` starts it on a free loopback port for the
duration of a run. Either way the forge's worker processes reach Urza over HTTP, exactly as
Kubernetes Jobs do in a cluster.
"""

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from esper.config import ForgeSettings, UrzaSettings
from esper.contracts.kernel import KernelTarget
from esper.forge.runner import RunnerOptions, UnitRunner
from esper.forge.scheduler import Forge, ForgeOptions
from esper.oona import Bus, InProcessBus
from esper.urza.client import UrzaClient
from esper.urza.service import build_service
from esper.urza.threaded import ThreadedServer

FORGE_JOIN_SECONDS = 30.0


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


@dataclass(frozen=True)
class EmbeddedStack:
    """A running embedded stack.

    Attributes:
        url: Urza's address.
        client: A client of it.
        forge: The forge.
    """

    url: str
    client: UrzaClient
    forge: Forge


@contextmanager
def embedded_stack(
    urza: UrzaSettings,
    forge: ForgeSettings,
    *,
    consumer: str,
    compile_cache: bool | None = None,
) -> Iterator[EmbeddedStack]:
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
    token = urza.token()
    client = UrzaClient(server.url, token=token)
    scheduler = build_forge(
        forge,
        url=server.url,
        token=token,
        consumer=consumer,
        bus=bus,
        targets=(),
        compile_cache=compile_cache,
    )
    thread = threading.Thread(target=scheduler.run, name="esper-forge", daemon=True)
    thread.start()
    try:
        yield EmbeddedStack(url=server.url, client=client, forge=scheduler)
    finally:
        scheduler.stop(wait=True, kill_workers=True)
        thread.join(FORGE_JOIN_SECONDS)
        client.close()
        server.stop()
        service.engine.dispose()
