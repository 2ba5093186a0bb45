"""Running the operator: settings, logging, peering, liveness, metrics, then kopf's loop.

``python -m esper_operator`` (or ``esper operator``, which runs it) reads
``ESPER_OPERATOR_*`` settings, logs in with the pod's ServiceAccount (or ``KUBECONFIG``),
serves ``/healthz`` and ``/metrics``, and reconciles until SIGTERM.
"""

import asyncio
import json
import logging
import signal
import sys
from datetime import UTC, datetime

import kopf
from pydantic import ValidationError

from esper.contracts._base import describe_validation_error
from esper.oona import default_consumer_name, make_bus
from esper.urza.client import UrzaClient
from esper_operator import metrics
from esper_operator.blueprints import BlueprintReconciler
from esper_operator.handlers import Reconcilers, build_registry, configure
from esper_operator.jobs import GpuJobGate
from esper_operator.kube import Credentials, KubeApi, KubeConfigError, load_credentials
from esper_operator.run_events import RunEventConsumer
from esper_operator.runs import RunReconciler
from esper_operator.settings import OperatorSettings

LOGGER = logging.getLogger("esper_operator")


class JsonFormatter(logging.Formatter):
    """One JSON object per log line: time, level, logger, message, and the object it is about."""

    def format(self, record: logging.LogRecord) -> str:
        """Format one record.

        Args:
            record: The record.

        Returns:
            The JSON line.
        """
        entry: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        reference = getattr(record, "k8s_ref", None)
        if isinstance(reference, dict):
            entry["object"] = reference
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def configure_logging(log_format: str) -> None:
    """Send every log line to stderr, as JSON or plain text.

    Args:
        log_format: ``json`` or ``plain``.
    """
    handler = logging.StreamHandler(sys.stderr)
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
    # aiohttp's and kopf's per-request chatter hides the operator's own lines.
    logging.getLogger("aiohttp").setLevel(logging.WARNING)
    logging.getLogger("httpx").setLevel(logging.WARNING)


def _fail(message: str) -> int:
    sys.stderr.write(f"esper-operator: error: {message}\n")
    return 1


def connection_info(credentials: Credentials) -> kopf.ConnectionInfo:
    """Give kopf the credentials the operator's own client uses.

    kopf's built-in in-cluster login dials ``kubernetes.default.svc``, which needs cluster DNS;
    one set of credentials, found like client-go finds them, serves both clients.

    Args:
        credentials: From :func:`esper_operator.kube.load_credentials`.

    Returns:
        kopf's connection info.
    """
    certificate, key = credentials.cert if credentials.cert is not None else (None, None)
    return kopf.ConnectionInfo(
        server=credentials.server,
        ca_path=credentials.ca_file,
        insecure=credentials.verify is False,
        token=credentials.token,
        certificate_path=certificate,
        private_key_path=key,
    )


def main() -> int:
    """Run the operator until it is stopped.

    Returns:
        The exit status (0 after a clean stop, 1 for bad settings or credentials).
    """
    try:
        settings = OperatorSettings()
        settings.token()
    except (ValidationError, ValueError) as error:
        detail = (
            describe_validation_error(error) if isinstance(error, ValidationError) else str(error)
        )
        return _fail(f"invalid operator settings: {detail}")
    try:
        credentials = load_credentials()
    except (KubeConfigError, OSError) as error:
        return _fail(str(error))
    configure_logging(settings.log_format)
    api = KubeApi(credentials)
    urza = UrzaClient(settings.urza_url, token=settings.token())
    gate = GpuJobGate(api, settings.max_gpu_jobs, settings.namespaces)
    reconcilers = Reconcilers(
        blueprints=BlueprintReconciler(api, urza, settings, gate),
        runs=RunReconciler(api, settings, gate),
        settings=settings,
    )
    registry = build_registry(reconcilers)
    consumer: RunEventConsumer | None = None

    @kopf.on.login(registry=registry)
    def login(**_: object) -> kopf.ConnectionInfo:
        return connection_info(credentials)

    @kopf.on.startup(registry=registry)
    def startup(settings: kopf.OperatorSettings, **_: object) -> None:
        nonlocal consumer
        configure(settings, reconcilers.settings)
        metrics.serve(reconcilers.settings.metrics_port)
        if reconcilers.settings.bus_url:
            bus = make_bus(reconcilers.settings.bus_url)
            consumer = RunEventConsumer(bus, api, default_consumer_name("esper-operator"))
            consumer.start()
        LOGGER.info(
            "esper operator started: namespaces %s, peering '%s' priority %d, GPU Job cap %d",
            ",".join(reconcilers.settings.namespaces) or "(all)",
            reconcilers.settings.peering_name,
            reconcilers.settings.peering_priority,
            reconcilers.settings.max_gpu_jobs,
        )
        if not reconcilers.settings.worker_signing_secret:
            LOGGER.warning(
                "no ESPER_OPERATOR_WORKER_SIGNING_SECRET: Job pods neither sign nor verify "
                "kernel bundles (ESPER_SIGNING_MODE=off); docs/security.md"
            )

    @kopf.on.cleanup(registry=registry)
    def cleanup(**_: object) -> None:
        if consumer is not None:
            consumer.stop()
        urza.close()
        api.close()

    stop = asyncio.Event()

    async def operate() -> None:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        await kopf.operator(
            registry=registry,
            clusterwide=not settings.namespaces,
            namespaces=settings.namespaces,
            liveness_endpoint=f"http://0.0.0.0:{settings.health_port}/healthz",
            stop_flag=stop,
            # A named peering is mandatory: replicas never run unpeered side by side.
            peering_name=settings.peering_name,
            priority=settings.peering_priority,
        )

    asyncio.run(operate())
    return 0
