"""Helpers of the Urza API tests: Urza in a thread (ThreadedServer), sample contracts, probes."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import httpx

from esper.config import UrzaSettings
from esper.contracts.blueprint import BlueprintIR
from esper.contracts.kernel import BenchmarkReport, KernelTarget
from esper.urza.client import UrzaClient
from esper.urza.service import UrzaService
from esper.urza.threaded import ThreadedServer

MEASURED_AT = datetime(2025, 6, 1, 12, 0, 0, tzinfo=UTC)


def wait_for(condition: Callable[[], bool], *, timeout: float, what: str) -> None:
    """Poll ``condition`` (bounded) until it holds; fail with ``what`` otherwise."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.02)


ThreadedUvicorn = ThreadedServer
"""A real uvicorn server serving an app on 127.0.0.1 from a background thread (socket bound up
front, port 0); ``start`` returns once uvicorn reports itself started."""


class RecordingTransport(httpx.BaseTransport):
    """A real HTTP transport that remembers the status of every response it carried."""

    def __init__(self) -> None:
        self._inner = httpx.HTTPTransport()
        self.statuses: list[tuple[str, str, int]] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = self._inner.handle_request(request)
        self.statuses.append((request.method, request.url.path, response.status_code))
        return response

    def close(self) -> None:
        self._inner.close()

    def last_status(self) -> int:
        return self.statuses[-1][2]


@dataclass
class RunningUrza:
    """A live Urza: its settings, service, address and helpers to talk to it."""

    backend: str
    settings: UrzaSettings
    service: UrzaService
    server: ThreadedUvicorn
    token: str | None
    extras: dict[str, Any] = field(default_factory=dict)
    _closers: list[Callable[[], None]] = field(default_factory=list)

    @property
    def url(self) -> str:
        return self.server.url

    def auth_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    def client(self, **options: Any) -> UrzaClient:
        """An UrzaClient over real HTTP (token set, no waits between retries by default)."""
        options.setdefault("token", self.token)
        options.setdefault("timeout", 10.0)
        options.setdefault("retries", 0)
        options.setdefault("sleep", lambda _seconds: None)
        client = UrzaClient(self.url, **options)
        self._closers.append(client.close)
        return client

    def recording_client(self, **options: Any) -> tuple[UrzaClient, RecordingTransport]:
        """An UrzaClient whose transport records response statuses."""
        transport = RecordingTransport()
        return self.client(transport=transport, **options), transport

    def http(self, *, authorised: bool = True) -> httpx.Client:
        """A raw httpx client, with the bearer token unless ``authorised`` is False."""
        client = httpx.Client(
            base_url=self.url, headers=self.auth_headers() if authorised else {}, timeout=10.0
        )
        self._closers.append(client.close)
        return client

    def close(self) -> None:
        for closer in reversed(self._closers):
            closer()
        self._closers.clear()


def blueprint(
    name: str = "residual-mlp",
    *,
    hidden: int = 64,
    tags: list[str] | None = None,
    description: str = "A residual MLP adapter.",
) -> BlueprintIR:
    """A valid residual MLP blueprint; ``hidden`` changes its identity, the rest does not."""
    return BlueprintIR.model_validate(
        {
            "name": name,
            "description": description,
            "tags": ["mlp", "residual"] if tags is None else tags,
            "input": {"layout": "features", "shape": ["C"]},
            "nodes": [
                {
                    "id": "up",
                    "op": "linear",
                    "inputs": ["input"],
                    "params": {"outFeatures": hidden},
                },
                {"id": "act", "op": "gelu", "inputs": ["up"]},
                {
                    "id": "down",
                    "op": "linear",
                    "inputs": ["act"],
                    "params": {"outFeatures": "C", "init": "zeros"},
                },
                {"id": "out", "op": "add", "inputs": ["input", "down"]},
            ],
            "output": "out",
        }
    )


def blueprint_document(**changes: Any) -> dict[str, Any]:
    """The wire form of :func:`blueprint`, for raw requests."""
    document = blueprint().model_dump(mode="json", by_alias=True)
    document.update(changes)
    return document


def cpu_target(channels: int = 64, batch_sizes: list[int] | None = None) -> KernelTarget:
    return KernelTarget(device="cpu", bindings={"C": channels}, batch_sizes=batch_sizes or [1, 32])


def cuda_target(channels: int = 64) -> KernelTarget:
    return KernelTarget(
        device="cuda",
        compute_capability="9.0",
        dtype="bf16",
        bindings={"C": channels},
        batch_sizes=[1, 32],
    )


def report(kernel_id: str, *, verdict: str = "Validated", p50_ms: float = 0.5) -> BenchmarkReport:
    """A consistent benchmark report whose p50 at the largest batch is ``p50_ms``."""
    return BenchmarkReport.model_validate(
        {
            "kernelId": kernel_id,
            "deviceName": "cpu",
            "torchVersion": "2.11.0",
            "maxAbsError": 1e-6,
            "tolerance": 1e-4,
            "gradientsFinite": True,
            "gradientMaxAbsError": 1e-6,
            "functionPreserving": True,
            "latency": [
                {"batchSize": 1, "p50Ms": p50_ms / 4, "p95Ms": p50_ms / 2},
                {"batchSize": 32, "p50Ms": p50_ms, "p95Ms": p50_ms * 1.5},
            ],
            "peakMemoryBytes": 1 << 20,
            "params": 8_256,
            "flopsPerSample": 16_000,
            "verdict": verdict,
            "reasons": [] if verdict == "Validated" else ["slower than eager"],
            "tags": ["fast-on-cpu"] if verdict == "Validated" else [],
            "measuredAt": MEASURED_AT.isoformat(),
        }
    )


def bundle(seed: str, size: int = 4096) -> bytes:
    """Deterministic artifact bytes of ``size`` bytes, distinct per ``seed``."""
    block = hashlib.sha256(seed.encode()).digest()
    return (block * (size // len(block) + 1))[:size]


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
