"""A MorphogeneticRun whose spec the contract refuses, then corrects (against a fake KubeApi)."""

import copy

import yaml

from esper.contracts.crd import RunPhase
from esper_operator.jobs import GpuJobGate
from esper_operator.kube import KubeApi
from esper_operator.runs import RunReconciler
from esper_operator.settings import OperatorSettings

from .conftest import RUN_TINY

RUN_PATH = "/apis/esper.dev/v1alpha1/namespaces/esper/morphogeneticruns/tiny"


class FakeApi:
    """One run; every create is recorded and status merge patches land on the run."""

    def __init__(self, run: dict) -> None:
        self.objects: dict[str, dict] = {RUN_PATH: run}
        self.created: list[tuple[str, dict]] = []

    def get(self, path: str) -> dict | None:
        found = self.objects.get(path)
        return copy.deepcopy(found) if found is not None else None

    def list(self, path: str, label_selector: str | None = None) -> list[dict]:
        del path, label_selector
        return []

    def create(self, path: str, body: dict) -> bool:
        self.created.append((path, body))
        self.objects[f"{path}/{body['metadata']['name']}"] = body
        return True

    def merge_patch(self, path: str, patch: dict) -> dict:
        assert path == RUN_PATH + "/status"
        run = self.objects[RUN_PATH]
        run["status"] = {**run.get("status", {}), **patch["status"]}
        return run


def _run(spec: dict, generation: int) -> dict:
    return {
        "apiVersion": "esper.dev/v1alpha1",
        "kind": "MorphogeneticRun",
        "metadata": {
            "name": "tiny",
            "namespace": "esper",
            "uid": "uid-1",
            "generation": generation,
        },
        "spec": spec,
    }


def _reconciler(api: FakeApi, settings: OperatorSettings) -> RunReconciler:
    kube: KubeApi = api  # type: ignore[assignment]
    return RunReconciler(kube, settings, GpuJobGate(kube, 1, ["esper"]))


def _conditions(api: FakeApi) -> dict[str, dict]:
    return {item["type"]: item for item in api.objects[RUN_PATH]["status"]["conditions"]}


def test_a_rejected_spec_creates_nothing_and_a_corrected_one_starts_the_run(
    bare_settings: OperatorSettings,
) -> None:
    valid = yaml.safe_load(RUN_TINY.read_text("utf-8"))
    api = FakeApi(_run({**valid, "host": {"zoo": "mlp", "factory": "pkg.models:build"}}, 1))
    reconciler = _reconciler(api, bare_settings)

    assert reconciler.reconcile("esper", "tiny") is RunPhase.FAILED
    assert api.created == []
    valid_condition = _conditions(api)["Valid"]
    assert (valid_condition["status"], valid_condition["reason"]) == ("False", "InvalidSpec")
    assert "host names exactly one of zoo or factory" in valid_condition["message"]
    # A pass with the same spec changes nothing: Failed is terminal for that generation.
    assert reconciler.reconcile("esper", "tiny") is RunPhase.FAILED
    assert api.created == []

    # The user applies a corrected spec: it is judged again, and the run starts.
    api.objects[RUN_PATH]["spec"] = valid
    api.objects[RUN_PATH]["metadata"]["generation"] = 2
    assert reconciler.reconcile("esper", "tiny") is RunPhase.RUNNING
    kinds = sorted(body["kind"] for _, body in api.created)
    assert kinds == ["ConfigMap", "Job"]
    status = api.objects[RUN_PATH]["status"]
    assert (status["phase"], status["observedGeneration"]) == ("Running", 2)
    conditions = _conditions(api)
    assert (conditions["Valid"]["status"], conditions["Valid"]["reason"]) == (
        "True",
        "SpecAccepted",
    )
    assert "Complete" not in conditions
    assert "SpecChanged" not in conditions


def test_a_run_that_failed_in_its_job_is_not_restarted_by_a_spec_change(
    bare_settings: OperatorSettings,
) -> None:
    valid = yaml.safe_load(RUN_TINY.read_text("utf-8"))
    run = _run(valid, 2)
    run["status"] = {
        "phase": "Failed",
        "observedGeneration": 1,
        "conditions": [
            {
                "type": "Valid",
                "status": "True",
                "reason": "SpecAccepted",
                "lastTransitionTime": "2026-01-01T00:00:00Z",
            },
            {
                "type": "Complete",
                "status": "False",
                "reason": "JobFailed",
                "lastTransitionTime": "2026-01-01T00:00:00Z",
            },
        ],
    }
    api = FakeApi(run)

    assert _reconciler(api, bare_settings).reconcile("esper", "tiny") is RunPhase.FAILED
    assert api.created == []
    assert api.objects[RUN_PATH]["status"]["observedGeneration"] == 1
