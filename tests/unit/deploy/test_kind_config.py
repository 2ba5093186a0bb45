"""kind-config.yaml as kind reads it: deploy-check decodes it into kind's own v1alpha4 types.

deploy-check is built from sigs.k8s.io/kind (tools/deploy-check), so an unknown field, a wrong
apiVersion or a bad node fails here as it would in ``kind create cluster``.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parents[3]
KIND_CONFIG = REPO_ROOT / "kind-config.yaml"
KIND_VALUES = REPO_ROOT / "examples" / "values" / "kind.yaml"
CHART_VALUES = REPO_ROOT / "helm" / "esper" / "values.yaml"
GPU_LABEL = ("esper.dev/accelerator", "true")

pytestmark = pytest.mark.timeout(600)


def _check(deploy_check: Path, path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(deploy_check), "kind-config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def _summary(deploy_check: Path, path: Path) -> dict[str, Any]:
    result = _check(deploy_check, path)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    return json.loads(result.stdout)


def _gpu_workers(summary: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        node
        for node in summary["nodes"]
        if node["role"] == "worker" and node["labels"].get(GPU_LABEL[0]) == GPU_LABEL[1]
    ]


@pytest.fixture(scope="module")
def repo_summary(deploy_check: Path) -> dict[str, Any]:
    return _summary(deploy_check, KIND_CONFIG)


def test_repo_kind_config_has_one_control_plane_and_a_gpu_labelled_worker(
    repo_summary: dict[str, Any],
) -> None:
    roles = [node["role"] for node in repo_summary["nodes"]]
    assert roles.count("control-plane") == 1
    assert _gpu_workers(repo_summary), repo_summary
    # The CI workflow and the docs create the cluster with --name esper; the file agrees.
    assert repo_summary["name"] == "esper"


def _gpu_node_selector(values_file: Path) -> dict[str, Any]:
    return yaml.safe_load(values_file.read_text())["workers"]["gpu"]["nodeSelector"]


def test_gpu_label_is_the_kind_values_gpu_node_selector(repo_summary: dict[str, Any]) -> None:
    # Helm merges a values file into the chart's defaults key by key; null deletes a key.
    merged = _gpu_node_selector(CHART_VALUES) | _gpu_node_selector(KIND_VALUES)
    selector = {key: value for key, value in merged.items() if value is not None}
    assert selector == {GPU_LABEL[0]: GPU_LABEL[1]}
    # Every pair of the selector must be on one worker, or GPU Jobs never schedule in kind.
    assert any(
        selector.items() <= worker["labels"].items() for worker in _gpu_workers(repo_summary)
    )


def test_defaults_are_applied_as_kind_applies_them(deploy_check: Path, tmp_path: Path) -> None:
    config = tmp_path / "minimal.yaml"
    config.write_text("kind: Cluster\napiVersion: kind.x-k8s.io/v1alpha4\n")
    summary = _summary(deploy_check, config)
    assert summary == {"name": "kind", "nodes": [{"role": "control-plane", "labels": {}}]}


HEADER = "kind: Cluster\napiVersion: kind.x-k8s.io/v1alpha4\n"


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        pytest.param(
            HEADER + "nodes:\n  - role: control-plane\n    gpus: 1\n",
            "field gpus not found in type v1alpha4.Node",
            id="unknown-field",
        ),
        pytest.param(
            "kind: Cluster\napiVersion: kind.x-k8s.io/v1alpha3\n",
            'unknown apiVersion "kind.x-k8s.io/v1alpha3"',
            id="wrong-api-version",
        ),
        pytest.param(
            "kind: Node\napiVersion: kind.x-k8s.io/v1alpha4\n",
            'unknown kind "Node"',
            id="wrong-kind",
        ),
        pytest.param(
            HEADER + "nodes:\n  - role: control-plane\n  - role: master\n",
            'nodes[1]: invalid role "master"',
            id="invalid-role",
        ),
        pytest.param(
            HEADER + "nodes:\n  - role: worker\n",
            "must have at least one control-plane node",
            id="no-control-plane",
        ),
        pytest.param(
            HEADER
            + "nodes:\n  - role: control-plane\n    labels:\n      esper.dev/gpu node: 'true'\n",
            'nodes[0]: label "esper.dev/gpu node": key name must be alphanumerics',
            id="invalid-label-key",
        ),
        pytest.param(
            HEADER + "nodes:\n  - role: control-plane\n    labels:\n      Esper_Dev/gpu: 'true'\n",
            'label "Esper_Dev/gpu": key prefix must be a DNS subdomain',
            id="invalid-label-prefix",
        ),
        pytest.param(
            HEADER + "nodes:\n  - role: control-plane\n    labels:\n      esper.dev/gpu: 'yes!'\n",
            'label "esper.dev/gpu": invalid value "yes!"',
            id="invalid-label-value",
        ),
        pytest.param(
            HEADER
            + "nodes:\n  - role: control-plane\n  - role: worker\n    labels:\n"
            + "      node-role.kubernetes.io/worker: ''\n",
            'label "node-role.kubernetes.io/worker": the kubelet refuses labels',
            id="label-the-kubelet-refuses",
        ),
        pytest.param(
            HEADER
            + "nodes:\n  - role: control-plane\n    extraPortMappings:\n"
            + "      - {containerPort: 80, hostPort: 8080}\n"
            + "      - {containerPort: 81, hostPort: 8080, listenAddress: 127.0.0.1}\n",
            "host port 8080/TCP is mapped twice",
            id="port-mapped-twice",
        ),
        pytest.param(
            HEADER + "nodes:\n  - role: control-plane\n    extraPortMappings:\n"
            "      - {containerPort: 70000}\n",
            "extraPortMappings[0].containerPort: invalid port number 70000",
            id="port-out-of-range",
        ),
        pytest.param(
            HEADER + "networking:\n  podSubnet: 10.244.0.0/16,fd00:10:244::/56\n",
            "networking.podSubnet: only one CIDR allowed for single-stack networking",
            id="dual-subnet-single-stack",
        ),
        pytest.param(
            HEADER + "---\n" + HEADER,
            "more than one YAML document",
            id="two-documents",
        ),
    ],
)
def test_invalid_config_fails_with_one_line_naming_the_problem(
    deploy_check: Path, tmp_path: Path, text: str, problem: str
) -> None:
    config = tmp_path / "kind-config.yaml"
    config.write_text(text)
    result = _check(deploy_check, config)
    assert result.returncode == 1, result.stdout
    assert result.stdout == ""
    assert result.stderr.startswith(f"deploy-check: {config}: "), result.stderr
    assert result.stderr.count("\n") == 1, result.stderr
    assert problem in result.stderr
