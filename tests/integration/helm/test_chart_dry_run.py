"""The chart's rendered manifests pass the real API server's server-side dry-run.

``helm template`` with the default values, examples/values/kind.yaml and
examples/values/gpu-cluster.yaml, then ``kubectl apply --dry-run=server``: the API server
validates every object against its schema (built-in kinds and the chart's CRDs: kopf's peering,
applied from the chart's crds/ as `helm install` does) and runs admission, and persists nothing.
The worker namespaces (which the operator serves) are the test's namespace, which exists; the
ServiceMonitor (gpu-cluster) is left out because its CRD belongs to the Prometheus Operator,
which this control plane does not run (tests/unit/deploy/test_chart.py checks its rendering).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.servers.kube import ControlPlane
from tests.support.helm import CHART, REPO_ROOT, Helm, documents

pytestmark = pytest.mark.timeout(300)

VALUES = {
    "default": [],
    "kind": [REPO_ROOT / "examples" / "values" / "kind.yaml"],
    "gpu-cluster": [REPO_ROOT / "examples" / "values" / "gpu-cluster.yaml"],
}


@pytest.mark.parametrize("values", list(VALUES), ids=list(VALUES))
def test_rendered_chart_passes_server_side_dry_run(
    control_plane: ControlPlane, kube_namespace: str, tmp_path: Path, values: str
) -> None:
    control_plane.kubectl("apply", "--server-side", "-f", str(CHART / "crds"))
    rendered = Helm(tmp_path).template(
        "dryrun",
        kube_namespace,
        values=VALUES[values],
        settings=[
            f"workers.namespaces={{{kube_namespace}}}",
            "operator.serviceMonitor.enabled=false",
        ],
    )
    objects = documents(rendered)
    assert len(objects) >= 10
    result = control_plane.kubectl(
        "apply", "--dry-run=server", "-o", "name", "-f", "-", input=rendered, check=False
    )
    assert result.returncode == 0, result.stderr
    # The API server answered for every object: one line per object, none left out.
    applied = result.stdout.split()
    assert len(applied) == len(objects), (applied, [o["kind"] for o in objects])
    # Nothing was persisted.
    leftover = control_plane.kubectl(
        "get", "deployments,secrets,jobs", "-n", kube_namespace, "-l",
        "app.kubernetes.io/instance=dryrun", "-o", "name",
    ).stdout.strip()  # fmt: skip
    assert leftover == ""


def test_the_server_rejects_a_broken_render(
    control_plane: ControlPlane, kube_namespace: str, tmp_path: Path
) -> None:
    # The same path can fail: a Deployment with a negative replica count passes helm's schema
    # only because it is set after rendering; the API server's validation names the field.
    rendered = Helm(tmp_path).template(
        "dryrun", kube_namespace, settings=[f"workers.namespaces={{{kube_namespace}}}"]
    )
    broken = rendered.replace("replicas: 1\n", "replicas: -1\n", 1)
    assert broken != rendered
    result = control_plane.kubectl(
        "apply", "--dry-run=server", "-f", "-", input=broken, check=False
    )
    assert result.returncode != 0
    assert "spec.replicas" in result.stderr
