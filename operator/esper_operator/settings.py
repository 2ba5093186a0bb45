"""The operator's settings, read from the environment (prefix ``ESPER_OPERATOR_``).

The Helm chart's values become these variables. Structured values (node selectors, tolerations,
resources) are JSON, as Kubernetes writes them.
"""

import secrets
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from esper.contracts.kernel import SIGNING_KEY_ID_PATTERN
from esper.contracts.types import IDENTIFIER_PATTERN

JsonObject = dict[str, object]
"""A JSON object, as the Kubernetes API speaks it (manifests, resources, tolerations)."""

GPU_RESOURCE = "nvidia.com/gpu"
"""The extended resource the NVIDIA device plugin advertises."""


def _random_priority() -> int:
    # Each replica draws its own peering priority, so exactly one (the highest) is active and
    # the others stand by; kopf freezes *every* replica when two share a priority.
    return secrets.randbelow(2**31 - 1) + 1


class OperatorSettings(BaseSettings):
    """Settings of the Esper operator.

    Attributes:
        namespaces: Namespaces to serve; empty serves the whole cluster.
        urza_url: Urza's address, as the operator reaches it.
        urza_token: Bearer token for Urza's write endpoints (deletes by finalizers).
        urza_token_file: File holding that token (a mounted secret); wins over ``urza_token``.
        worker_urza_url: Urza's address as Job pods reach it (default: ``urza_url``).
        worker_token_secret: Secret (in the resource's namespace) whose key ``token`` the Job
            pods get as ``ESPER_URZA_TOKEN``; none gives the pods no token.
        worker_signing_secret: Secret (in the resource's namespace) holding the kernel signing
            keys, one key per id; Job pods mount it read-only as ``ESPER_SIGNING_KEY_DIR``, so
            compile Jobs sign and training Jobs verify (docs/security.md). None gives the pods
            no key: signatures are then off in Job pods (``ESPER_SIGNING_MODE=off``), which the
            operator logs at start.
        worker_signing_key_id: The key of that Secret compile Jobs sign with.
        bus_url: Oona (``redis://...``) where training runs publish their events; the operator
            reads them into ``MorphogeneticRun.status``. Empty: runs report only their phase.
        worker_bus_url: Oona's address as training pods reach it (default: ``bus_url``).
        image: Image of compile, benchmark and training Jobs.
        image_pull_policy: Their pull policy.
        worker_service_account: ServiceAccount of the Job pods.
        gpu_node_selector: Node selector of Jobs that request GPUs (JSON object).
        gpu_tolerations: Tolerations of those Jobs (JSON list).
        compile_resources: Resources of compile Jobs (JSON; a CUDA target adds the GPU).
        benchmark_resources: Resources of benchmark Jobs.
        training_resources: Resources of training Jobs.
        compile_cache: Ship each kernel's compile cache (``esper tezzeret compile``).
        max_gpu_jobs: Most GPU Jobs at once; further ones wait in the operator's queue.
        job_backoff_limit: Retries of a failed Job's pod (Kubernetes backs off exponentially);
            beyond it the resource is marked Failed with the pod's reason.
        queue_retry_seconds: How soon a queued Job is retried.
        resync_seconds: Safety-net resync of resources that are not finished.
        peering_name: kopf peering object shared by the replicas.
        peering_priority: This replica's priority (default: random, so one replica is active).
        peering_lifetime_seconds: How long a silent replica's record counts as alive.
        health_port: Port of the liveness endpoint (``/healthz``).
        metrics_port: Port of the Prometheus metrics endpoint (``/metrics``).
        log_format: ``json`` (structured, one object per line) or ``plain``.
        workers: Threads running the (blocking) reconcile handlers.
    """

    model_config = SettingsConfigDict(env_prefix="ESPER_OPERATOR_", extra="ignore")

    namespaces: Annotated[list[str], NoDecode] = Field(default_factory=list)
    urza_url: str = Field(default="http://esper-urza:8420", min_length=1)
    urza_token: SecretStr | None = None
    urza_token_file: Path | None = None
    worker_urza_url: str | None = None
    worker_token_secret: str | None = None
    worker_signing_secret: str | None = None
    worker_signing_key_id: str | None = Field(default=None, pattern=SIGNING_KEY_ID_PATTERN)
    bus_url: str | None = None
    worker_bus_url: str | None = None
    image: str = Field(default="ghcr.io/esper-dev/esper-worker:latest", min_length=1)
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] = "IfNotPresent"
    worker_service_account: str = Field(default="default", min_length=1)
    gpu_node_selector: dict[str, str] = Field(default_factory=dict)
    gpu_tolerations: list[JsonObject] = Field(default_factory=list)
    compile_resources: JsonObject = Field(default_factory=dict)
    benchmark_resources: JsonObject = Field(default_factory=dict)
    training_resources: JsonObject = Field(default_factory=dict)
    compile_cache: bool = True
    max_gpu_jobs: int = Field(default=8, ge=1, le=10_000)
    job_backoff_limit: int = Field(default=2, ge=0, le=20)
    queue_retry_seconds: float = Field(default=10.0, gt=0)
    resync_seconds: float = Field(default=60.0, gt=0)
    peering_name: str = Field(default="esper-operator", pattern=IDENTIFIER_PATTERN)
    peering_priority: int = Field(default_factory=_random_priority, ge=0)
    peering_lifetime_seconds: int = Field(default=30, ge=5, le=3600)
    health_port: int = Field(default=8080, ge=1, le=65535)
    metrics_port: int = Field(default=9090, ge=1, le=65535)
    log_format: Literal["json", "plain"] = "json"
    workers: int = Field(default=16, ge=1, le=256)

    @field_validator("namespaces", mode="before")
    @classmethod
    def _split_namespaces(cls, value: object) -> object:
        # A comma-separated list is what a person types in an environment variable.
        if isinstance(value, str):
            return [item.strip() for item in value.split(",") if item.strip()]
        return value

    @model_validator(mode="after")
    def _check(self) -> "OperatorSettings":
        if self.urza_token_file is not None and not self.urza_token_file.is_file():
            raise ValueError(f"ESPER_OPERATOR_URZA_TOKEN_FILE {self.urza_token_file} is not a file")
        if (self.worker_signing_secret is None) != (self.worker_signing_key_id is None):
            raise ValueError(
                "ESPER_OPERATOR_WORKER_SIGNING_SECRET and ESPER_OPERATOR_WORKER_SIGNING_KEY_ID "
                "come together"
            )
        if self.bus_url is not None and not self.bus_url.startswith(("redis://", "rediss://")):
            raise ValueError(
                f"ESPER_OPERATOR_BUS_URL must be a redis:// URL (Oona), not '{self.bus_url}'"
            )
        return self

    def token(self) -> str | None:
        """Return the operator's Urza token, read from the token file when one is set.

        Returns:
            The token, or None.

        Raises:
            ValueError: When the token file is empty.
        """
        if self.urza_token_file is not None:
            token = self.urza_token_file.read_text(encoding="utf-8").strip()
            if not token:
                raise ValueError(f"Urza token file {self.urza_token_file} is empty")
            return token
        return self.urza_token.get_secret_value() if self.urza_token is not None else None

    def urza_url_for_workers(self) -> str:
        """Return Urza's address as Job pods reach it.

        Returns:
            ``worker_urza_url`` or, when unset, ``urza_url``.
        """
        return self.worker_urza_url or self.urza_url

    def bus_url_for_workers(self) -> str | None:
        """Return Oona's address as training pods reach it.

        Returns:
            ``worker_bus_url`` or, when unset, ``bus_url``.
        """
        return self.worker_bus_url or self.bus_url
