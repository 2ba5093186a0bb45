"""Job outcomes, failure reasons and the GPU Job cap (against a small fake KubeApi)."""

import threading

import pytest

from esper_operator import names
from esper_operator.jobs import JOB_NAME_LABEL, GpuJobGate, JobState, failure_reason, job_state
from esper_operator.kube import KubeApi

GPU_SELECTOR = f"{names.MANAGED_SELECTOR},{names.GPU}=true"


class FakeApi:
    """Answers ``list`` from a fixed table of collections; records every call."""

    def __init__(self, collections: dict[str, list[dict]] | None = None) -> None:
        self.collections = collections or {}
        self.calls: list[tuple[str, str | None]] = []

    def list(self, path: str, label_selector: str | None = None) -> list[dict]:
        self.calls.append((path, label_selector))
        return [dict(item) for item in self.collections.get(path, [])]

    def create(self, path: str, body: dict) -> bool:
        # Every Job also shows in the cluster-wide listing the gate counts from.
        names = [item["metadata"]["name"] for item in self.collections.get(path, [])]
        if body["metadata"]["name"] in names:
            return False
        for collection in (path, "/apis/batch/v1/jobs"):
            self.collections.setdefault(collection, []).append(body)
        return True


def as_api(fake: FakeApi) -> KubeApi:
    return fake  # type: ignore[return-value]


def job(*conditions: tuple[str, str], name: str = "compile-bp-1") -> dict:
    return {
        "metadata": {"name": name},
        "status": {
            "conditions": [
                {"type": kind, "status": status, "reason": "BackoffLimitExceeded"}
                for kind, status in conditions
            ]
        },
    }


def failed_job(name: str = "compile-bp-1", message: str = "Job has reached the backoff") -> dict:
    return {
        "metadata": {"name": name},
        "status": {
            "conditions": [
                {
                    "type": "Failed",
                    "status": "True",
                    "reason": "BackoffLimitExceeded",
                    "message": message,
                },
            ]
        },
    }


def pod(name: str, created: str, *states: dict) -> dict:
    return {
        "metadata": {"name": name, "creationTimestamp": created},
        "status": {"containerStatuses": [{"name": "compile", "state": state} for state in states]},
    }


def terminated(exit_code: int, reason: str | None = "Error", message: str | None = None) -> dict:
    detail: dict[str, object] = {"exitCode": exit_code}
    if reason is not None:
        detail["reason"] = reason
    if message is not None:
        detail["message"] = message
    return {"terminated": detail}


PODS = "/api/v1/namespaces/esper/pods"

# job_state -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (None, JobState.MISSING),
        ({}, JobState.ACTIVE),
        ({"status": {}}, JobState.ACTIVE),
        ({"status": {"active": 1}}, JobState.ACTIVE),
        ({"status": "garbage"}, JobState.ACTIVE),
        ({"status": {"conditions": "garbage"}}, JobState.ACTIVE),
        ({"status": {"conditions": ["garbage", 3]}}, JobState.ACTIVE),
        (job(("Complete", "True")), JobState.SUCCEEDED),
        (job(("Failed", "True")), JobState.FAILED),
        (job(("Complete", "False")), JobState.ACTIVE),
        (job(("Failed", "False"), ("Complete", "True")), JobState.SUCCEEDED),
        (job(("Suspended", "True")), JobState.ACTIVE),
        (job(("FailureTarget", "True"), ("Failed", "True")), JobState.FAILED),
        (job(("SuccessCriteriaMet", "True"), ("Complete", "True")), JobState.SUCCEEDED),
    ],
)
def test_job_state(body: dict | None, expected: JobState) -> None:
    assert job_state(body) is expected


# failure_reason ------------------------------------------------------------------------------


def test_failure_reason_names_the_condition_and_the_last_pod() -> None:
    fake = FakeApi(
        {
            PODS: [
                pod("compile-bp-1-new", "2025-01-01T10:05:00Z", terminated(2, "Error", "  boom\n")),
                pod("compile-bp-1-old", "2025-01-01T10:00:00Z", terminated(1, "Error", "first")),
            ]
        }
    )
    reason = failure_reason(as_api(fake), "esper", failed_job())
    assert reason == (
        "BackoffLimitExceeded: Job has reached the backoff; "
        "pod compile-bp-1-new exited 2 (Error): boom"
    )
    assert fake.calls == [(PODS, f"{JOB_NAME_LABEL}=compile-bp-1")]


def test_failure_reason_uses_the_newest_pod_whatever_the_list_order() -> None:
    fake = FakeApi(
        {
            PODS: [
                pod("p-new", "2025-01-01T10:05:00Z", terminated(137, "OOMKilled")),
                pod("p-old", "2025-01-01T10:00:00Z", terminated(1, "Error", "old")),
            ]
        }
    )
    fake.collections[PODS].reverse()
    reason = failure_reason(as_api(fake), "esper", failed_job())
    assert reason.endswith("pod p-new exited 137 (OOMKilled)")


def test_failure_reason_skips_pods_that_did_not_terminate() -> None:
    fake = FakeApi(
        {
            PODS: [
                pod("p-old", "2025-01-01T10:00:00Z", terminated(3, None, "bad target")),
                pod("p-new", "2025-01-01T10:05:00Z", {"waiting": {"reason": "ImagePullBackOff"}}),
            ]
        }
    )
    reason = failure_reason(as_api(fake), "esper", failed_job())
    assert reason.endswith("pod p-old exited 3 (Error): bad target")


def test_failure_reason_keeps_the_tail_of_a_long_message() -> None:
    message = "x" * 5000 + "THE END"
    fake = FakeApi({PODS: [pod("p", "2025-01-01T10:00:00Z", terminated(1, "Error", message))]})
    reason = failure_reason(as_api(fake), "esper", failed_job())
    assert reason.endswith("THE END")
    assert len(reason) < 2200


def test_failure_reason_without_pods_is_the_condition() -> None:
    reason = failure_reason(as_api(FakeApi()), "esper", failed_job(message="deadline"))
    assert reason == "BackoffLimitExceeded: deadline"


def test_failure_reason_without_anything_names_the_job() -> None:
    reason = failure_reason(as_api(FakeApi()), "esper", {"metadata": {"name": "train-x-1"}})
    assert reason == "Job train-x-1 failed"


def test_failure_reason_of_a_condition_without_reason() -> None:
    condition = {"type": "Failed", "status": "True"}
    body = {"metadata": {"name": "j"}, "status": {"conditions": [condition]}}
    assert failure_reason(as_api(FakeApi()), "esper", body) == "Failed"


# GpuJobGate ----------------------------------------------------------------------------------


def gpu_jobs(active: int, succeeded: int = 0, failed: int = 0) -> list[dict]:
    return (
        [job(name=f"a{index}") for index in range(active)]
        + [job(("Complete", "True"), name=f"s{index}") for index in range(succeeded)]
        + [job(("Failed", "True"), name=f"f{index}") for index in range(failed)]
    )


def test_the_gate_counts_only_unfinished_gpu_jobs_of_the_whole_cluster() -> None:
    fake = FakeApi({"/apis/batch/v1/jobs": gpu_jobs(active=2, succeeded=3, failed=1)})
    gate = GpuJobGate(as_api(fake), limit=3, namespaces=[])
    assert gate.active() == 2
    assert gate.has_room()
    assert fake.calls[0] == ("/apis/batch/v1/jobs", GPU_SELECTOR)


def test_the_gate_is_full_at_the_limit() -> None:
    fake = FakeApi({"/apis/batch/v1/jobs": gpu_jobs(active=3, succeeded=5)})
    assert not GpuJobGate(as_api(fake), limit=3, namespaces=[]).has_room()
    fake.collections["/apis/batch/v1/jobs"] = gpu_jobs(active=4)
    assert not GpuJobGate(as_api(fake), limit=3, namespaces=[]).has_room()


def test_the_gate_sums_the_served_namespaces() -> None:
    fake = FakeApi(
        {
            "/apis/batch/v1/namespaces/team-a/jobs": gpu_jobs(active=1),
            "/apis/batch/v1/namespaces/team-b/jobs": gpu_jobs(active=1, failed=2),
            "/apis/batch/v1/jobs": gpu_jobs(active=10),  # not served: never asked
        }
    )
    gate = GpuJobGate(as_api(fake), limit=2, namespaces=["team-a", "team-b"])
    assert gate.active() == 2
    assert [path for path, _ in fake.calls] == [
        "/apis/batch/v1/namespaces/team-a/jobs",
        "/apis/batch/v1/namespaces/team-b/jobs",
    ]
    assert {selector for _, selector in fake.calls} == {GPU_SELECTOR}
    assert not gate.has_room()


def test_the_gate_has_room_when_nothing_runs() -> None:
    assert GpuJobGate(as_api(FakeApi()), limit=1, namespaces=["esper"]).has_room()


def test_start_creates_cpu_jobs_without_counting() -> None:
    fake = FakeApi()
    gate = GpuJobGate(as_api(fake), limit=1, namespaces=[])
    for index in range(3):
        assert gate.start("esper", job(name=f"cpu-{index}"), gpu=False)
    assert fake.calls == []
    assert len(fake.collections["/apis/batch/v1/namespaces/esper/jobs"]) == 3


def test_start_serialises_check_and_create() -> None:
    """Many threads starting GPU Jobs at once never exceed the cap."""
    fake = FakeApi({"/apis/batch/v1/jobs": []})
    gate = GpuJobGate(as_api(fake), limit=3, namespaces=[])
    started: list[int] = []

    def take(index: int) -> None:
        if gate.start("esper", job(name=f"j{index}"), gpu=True):
            started.append(index)

    threads = [threading.Thread(target=take, args=(index,)) for index in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(started) == 3
