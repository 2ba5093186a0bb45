"""A MorphogeneticRun through the real cluster path: training Job, Oona events, status, Events.

The training pod really runs `esper run` (the stand-in kubelet executes it with the spec mounted
from the operator's ConfigMap at /etc/esper/run/run.yaml), against the test's Urza, publishing
its events on the test's Redis; the operator mirrors them into the run's status and Events.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from tests.integration.kube_operator.conftest import OperatorFactory
from tests.integration.kube_operator.support import (
    finished_run,
    items,
    status_of,
    wait_for,
)
from tests.integration.phase1.support import RunningUrza
from tests.servers.kube import ControlPlane

pytestmark = pytest.mark.timeout(900)

TINY_RUN = Path(__file__).resolve().parents[2] / "e2e" / "configs" / "run-tiny.yaml"


def _manifest(name: str) -> str:
    spec = yaml.safe_load(TINY_RUN.read_text(encoding="utf-8"))
    spec["baseline"] = False  # the cluster run compares nothing; it grows
    return yaml.safe_dump(
        {
            "apiVersion": "esper.dev/v1alpha1",
            "kind": "MorphogeneticRun",
            "metadata": {"name": name},
            "spec": spec,
        }
    )


def test_run_trains_in_a_job_and_reports_through_its_status_and_events(
    control_plane: ControlPlane,
    worker_namespace: str,
    urza: RunningUrza,
    redis_url: str,
    start_operator: OperatorFactory,
) -> None:
    namespace = worker_namespace
    start_operator(BUS_URL=redis_url)
    control_plane.kubectl("apply", "-n", namespace, "-f", "-", input=_manifest("tiny"))

    run = wait_for(
        lambda: finished_run(control_plane, namespace, "tiny"),
        timeout=800,
        description="the run to succeed with its final results",
        interval=3.0,
    )
    assert isinstance(run, dict)
    status = status_of(run)
    assert status["epoch"] == 6
    accuracy = status["accuracy"]
    assert isinstance(accuracy, float)
    assert 0.0 < accuracy <= 1.0
    assert isinstance(status["testAccuracy"], float)
    params = status["params"]
    assert isinstance(params, int)
    assert params > 0

    # The tiny config grows one seed: its slot's stages were followed, and decisions recorded.
    slots = status["slots"]
    assert isinstance(slots, list)
    assert slots, status
    assert all(slot["stage"] in {"FOSSILIZED", "DORMANT", "PROBATION"} for slot in slots)
    adaptations = status["adaptations"]
    assert isinstance(adaptations, list)
    assert any(item["action"] == "germinate" for item in adaptations)

    # Each adaptation is also a Kubernetes Event on the run, and so is the end.
    events = items(
        control_plane,
        "events",
        "-n",
        namespace,
        "--field-selector",
        "involvedObject.kind=MorphogeneticRun,involvedObject.name=tiny",
    )
    reasons = {str(event.get("reason")) for event in events}
    assert "Germinate" in reasons
    assert "RunFinished" in reasons

    # The run owns its spec ConfigMap and its training Job; the Job ran `esper run`.
    jobs = items(control_plane, "jobs", "-n", namespace)
    assert len(jobs) == 1
    job = jobs[0]
    assert job["metadata"]["ownerReferences"][0]["kind"] == "MorphogeneticRun"  # type: ignore[index]
    container = job["spec"]["template"]["spec"]["containers"][0]  # type: ignore[index]
    assert container["args"][:2] == ["run", "/etc/esper/run/run.yaml"]
    assert f"{namespace}.tiny" in container["args"]
    assert status["jobName"] == job["metadata"]["name"]  # type: ignore[index]

    # The kernel the run grew was compiled into the cluster's Urza.
    kernels = urza.client().list_kernels().items
    assert any(kernel.phase.value == "Validated" for kernel in kernels)

    table = control_plane.kubectl("get", "morphogeneticruns", "-n", namespace).stdout
    assert re.search(r"NAME\s+PHASE\s+EPOCH\s+ACCURACY\s+SEEDS\s+AGE", table), table
    assert re.search(r"tiny\s+Succeeded\s+6\s+0\.\d+\s+\d+", table), table
