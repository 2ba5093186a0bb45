"""Fixtures of the operator's unit tests: a clean environment, settings, contract values."""

import os
from pathlib import Path

import pytest
import yaml

from esper.contracts.kernel import KernelTarget
from esper.contracts.run import MorphogeneticRunSpec
from esper_operator.settings import OperatorSettings

from .factories import CPU_TARGET, CUDA_TARGET

REPO = Path(__file__).resolve().parents[3]
RUN_TINY = REPO / "tests" / "e2e" / "configs" / "run-tiny.yaml"


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep the caller's operator settings and cluster credentials out of every test."""
    for key in list(os.environ):
        if key.startswith("ESPER_OPERATOR_"):
            monkeypatch.delenv(key)
    for key in ("KUBECONFIG", "KUBERNETES_SERVICE_HOST", "KUBERNETES_SERVICE_PORT"):
        monkeypatch.delenv(key, raising=False)


@pytest.fixture
def settings() -> OperatorSettings:
    """Settings as a chart would give them, with GPU scheduling and a worker token."""
    return OperatorSettings(
        namespaces=["esper"],
        urza_url="http://urza.esper:8420",
        worker_urza_url="http://urza.workers:8420",
        bus_url="redis://oona:6379/0",
        image="registry.example/esper-worker:1.0",
        image_pull_policy="Always",
        worker_service_account="esper-worker",
        gpu_node_selector={"nvidia.com/gpu.present": "true"},
        gpu_tolerations=[{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
        compile_resources={"requests": {"cpu": "2"}, "limits": {"memory": "4Gi"}},
        benchmark_resources={"requests": {"cpu": "1"}},
        training_resources={"limits": {"memory": "8Gi"}},
        peering_priority=1,
    )


@pytest.fixture
def bare_settings() -> OperatorSettings:
    """Default settings (no bus, no worker token, no resources)."""
    return OperatorSettings(peering_priority=1)


@pytest.fixture
def cpu_target() -> KernelTarget:
    return KernelTarget.parse(CPU_TARGET)


@pytest.fixture
def cuda_target() -> KernelTarget:
    return KernelTarget.parse(CUDA_TARGET)


@pytest.fixture
def run_spec() -> MorphogeneticRunSpec:
    """The e2e test's tiny run (``device: cpu``)."""
    return MorphogeneticRunSpec.model_validate(yaml.safe_load(RUN_TINY.read_text("utf-8")))
