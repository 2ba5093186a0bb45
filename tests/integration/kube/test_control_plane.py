"""The test cluster's seams, with real parts: Job controller, scheduler, garbage collector, RBAC,
the CRDs' schemas and printer columns, and the stand-in kubelet that runs Pods as processes.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import pytest
import yaml

from tests.servers._process import wait_until
from tests.servers.kube import ControlPlane, KubectlError
from tests.support.kubelet import CPU_NODE, GPU_NODE, StandInKubelet, expand

REPO_ROOT = Path(__file__).resolve().parents[3]
BLUEPRINT_MANIFEST = REPO_ROOT / "examples" / "manifests" / "blueprint-residual-mlp.yaml"
RUN_SPEC = REPO_ROOT / "examples" / "run-mnist1d.yaml"
GPU_TOLERATION = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}

JsonObject = dict[str, object]


def job_manifest(
    name: str,
    command: Sequence[str],
    *,
    backoff_limit: int = 0,
    parallelism: int = 1,
    container: Mapping[str, object] | None = None,
    pod_spec: Mapping[str, object] | None = None,
) -> JsonObject:
    """A batch/v1 Job running ``command`` once per completion (restartPolicy Never)."""
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name},
        "spec": {
            "backoffLimit": backoff_limit,
            "parallelism": parallelism,
            "completions": parallelism,
            "template": {
                "spec": {
                    "restartPolicy": "Never",
                    "terminationGracePeriodSeconds": 5,
                    "containers": [
                        {"name": "main", "image": "esper-test", "command": list(command)}
                        | dict(container or {})
                    ],
                }
                | dict(pod_spec or {})
            },
        },
    }


def apply(
    plane: ControlPlane, namespace: str, *objects: Mapping[str, object], validate: bool = True
) -> None:
    """``kubectl apply`` objects into a namespace (``validate=False``: no client-side checks)."""
    items = {"apiVersion": "v1", "kind": "List", "items": list(objects)}
    flags = [] if validate else ["--validate=false"]
    plane.kubectl("apply", "-n", namespace, *flags, "-f", "-", input=json.dumps(items))


def get_json(plane: ControlPlane, namespace: str, *what: str) -> JsonObject:
    """``kubectl get -o json``."""
    result: JsonObject = json.loads(
        plane.kubectl("get", "-n", namespace, *what, "-o", "json").stdout
    )
    return result


def job_pods(plane: ControlPlane, namespace: str, job: str) -> list[JsonObject]:
    """The Job's Pods (by the job-name label the Job controller sets)."""
    pods = get_json(plane, namespace, "pods", "-l", f"job-name={job}")["items"]
    assert isinstance(pods, list)
    return pods


def wait_for_job(
    plane: ControlPlane, namespace: str, job: str, condition: str, timeout: float = 120
) -> None:
    """Wait for a Job condition (Complete or Failed); on timeout show the Pods' state."""
    result = plane.kubectl(
        "wait",
        "-n",
        namespace,
        f"--for=condition={condition}",
        f"job/{job}",
        f"--timeout={timeout:.0f}s",
        check=False,
        timeout=timeout + 30,
    )
    if result.returncode != 0:
        pods = plane.kubectl("get", "-n", namespace, "pods", "-o", "wide", check=False).stdout
        job_yaml = plane.kubectl("get", "-n", namespace, "job", job, "-o", "yaml").stdout
        pytest.fail(f"job {job} not {condition}: {result.stderr}\n{pods}\n{job_yaml}")


def terminated(pod: JsonObject) -> JsonObject:
    """The first container's ``state.terminated``."""
    status = pod["status"]
    assert isinstance(status, dict)
    state: JsonObject = status["containerStatuses"][0]["state"]
    assert "terminated" in state, state
    result: JsonObject = state["terminated"]
    return result


def node_of(pod: JsonObject) -> str | None:
    """The Node a Pod is bound to (None while unscheduled)."""
    spec = pod["spec"]
    assert isinstance(spec, dict)
    node: str | None = spec.get("nodeName")
    return node


def test_job_runs_to_completion(
    control_plane: ControlPlane, kubelet: StandInKubelet, kube_namespace: str
) -> None:
    apply(control_plane, kube_namespace, job_manifest("hello", ["python", "-c", "print('hi')"]))
    wait_for_job(control_plane, kube_namespace, "hello", "Complete")

    (pod,) = job_pods(control_plane, kube_namespace, "hello")
    assert pod["status"]["phase"] == "Succeeded"
    state = terminated(pod)
    assert state["exitCode"] == 0
    assert state["reason"] == "Completed"
    assert node_of(pod) in (CPU_NODE.name, GPU_NODE.name)
    name = pod["metadata"]["name"]
    assert kubelet.log_text(kube_namespace, name) == "hi\n"


def test_failing_job_reports_exit_code_and_output(
    control_plane: ControlPlane, kubelet: StandInKubelet, kube_namespace: str
) -> None:
    code = "import sys; print('noise ' * 2000); print('compile step exploded'); sys.exit(3)"
    apply(
        control_plane,
        kube_namespace,
        job_manifest("boom", ["python", "-c", code], backoff_limit=1),
    )
    wait_for_job(control_plane, kube_namespace, "boom", "Failed", timeout=180)

    job = get_json(control_plane, kube_namespace, "job", "boom")
    reasons = [c["reason"] for c in job["status"]["conditions"]]
    assert "BackoffLimitExceeded" in reasons
    pods = job_pods(control_plane, kube_namespace, "boom")
    assert len(pods) == 2  # the first try and one retry (backoffLimit 1)
    for pod in pods:
        assert pod["status"]["phase"] == "Failed"
        state = terminated(pod)
        assert state["exitCode"] == 3
        assert state["reason"] == "Error"
        message = str(state["message"])
        assert message.endswith("compile step exploded")
        assert len(message.encode()) <= 2048  # the tail, as a kubelet reports it


def test_gpu_jobs_land_on_the_gpu_node_only_with_the_toleration(
    control_plane: ControlPlane, kubelet: StandInKubelet, kube_namespace: str
) -> None:
    gpu_limits = {"resources": {"limits": {"nvidia.com/gpu": 1}}}
    apply(
        control_plane,
        kube_namespace,
        job_manifest(
            "gpu",
            ["python", "-c", "print('on a gpu node')"],
            container=gpu_limits,
            pod_spec={
                "tolerations": [GPU_TOLERATION],
                "nodeSelector": {"esper.dev/accelerator": "true"},
            },
        ),
        job_manifest("cpu", ["python", "-c", "print('anywhere')"], parallelism=4),
        job_manifest("untolerated", ["python", "-c", "print('never')"], container=gpu_limits),
    )
    wait_for_job(control_plane, kube_namespace, "gpu", "Complete")
    wait_for_job(control_plane, kube_namespace, "cpu", "Complete")

    (gpu_pod,) = job_pods(control_plane, kube_namespace, "gpu")
    assert node_of(gpu_pod) == GPU_NODE.name
    cpu_pods = job_pods(control_plane, kube_namespace, "cpu")
    assert len(cpu_pods) == 4
    assert {node_of(pod) for pod in cpu_pods} == {CPU_NODE.name}

    # A GPU request without the toleration fits nowhere: the scheduler marks it unschedulable.
    def unschedulable() -> bool:
        pods = job_pods(control_plane, kube_namespace, "untolerated")
        conditions = pods[0]["status"].get("conditions", []) if pods else []
        return any(
            c["type"] == "PodScheduled" and c["reason"] == "Unschedulable" for c in conditions
        )

    wait_until(unschedulable, timeout=60, description="an Unschedulable condition", interval=0.5)
    (pending,) = job_pods(control_plane, kube_namespace, "untolerated")
    assert node_of(pending) is None
    assert pending["status"]["phase"] == "Pending"


def test_garbage_collector_deletes_dependents(
    control_plane: ControlPlane, kubelet: StandInKubelet, kube_namespace: str
) -> None:
    # A running Job's Pod: deleting the Job in the background lets the GC delete the Pod, and the
    # kubelet kills its process and removes the Pod object.
    code = "import os, time; print(os.getpid(), flush=True); time.sleep(600)"
    apply(control_plane, kube_namespace, job_manifest("sleeper", ["python", "-c", code]))
    control_plane.kubectl(
        "wait", "-n", kube_namespace, "--for=jsonpath={.status.phase}=Running", "pod",
        "-l", "job-name=sleeper", "--timeout=90s", timeout=120,
    )  # fmt: skip
    (pod,) = job_pods(control_plane, kube_namespace, "sleeper")
    name = str(pod["metadata"]["name"])
    wait_until(
        lambda: kubelet.log_text(kube_namespace, name).strip().isdigit(),
        timeout=30,
        description="the sleeper to print its pid",
    )
    pid = int(kubelet.log_text(kube_namespace, name))
    os.kill(pid, 0)  # alive

    control_plane.kubectl("delete", "-n", kube_namespace, "job", "sleeper", "--cascade=background")
    wait_until(
        lambda: not job_pods(control_plane, kube_namespace, "sleeper"),
        timeout=60,
        description="the garbage collector to delete the Job's pod",
        interval=0.5,
    )
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)

    # Owner references from a custom resource work the same way.
    blueprint = yaml.safe_load(BLUEPRINT_MANIFEST.read_text())
    apply(control_plane, kube_namespace, blueprint)
    blueprint_name = blueprint["metadata"]["name"]
    uid = get_json(control_plane, kube_namespace, "blueprint", blueprint_name)["metadata"]["uid"]
    owned = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": "owned-by-blueprint",
            "ownerReferences": [
                {
                    "apiVersion": "esper.dev/v1alpha1",
                    "kind": "Blueprint",
                    "name": blueprint_name,
                    "uid": uid,
                }
            ],
        },
        "data": {"note": "deleted with its blueprint"},
    }
    apply(control_plane, kube_namespace, owned)
    control_plane.kubectl("delete", "-n", kube_namespace, "blueprint", blueprint_name)

    def configmap_gone() -> bool:
        result = control_plane.kubectl(
            "get", "-n", kube_namespace, "configmap", "owned-by-blueprint", check=False
        )
        return result.returncode != 0 and "NotFound" in result.stderr

    wait_until(
        configmap_gone, timeout=60, description="the GC to delete the ConfigMap", interval=0.5
    )


def test_volumes_and_env_reach_the_process(
    control_plane: ControlPlane, kubelet: StandInKubelet, kube_namespace: str
) -> None:
    host_file_existed = Path("/etc/esper/run/run.yaml").exists()
    config_map = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "run-config"},
        "data": {"run.yaml": "epochs: 3\n", "other.txt": "not mounted"},
    }
    secret = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "credentials"},
        "stringData": {"token": "s3cr3t-token"},
    }
    code = (
        "import os, sys\n"
        "print('config=' + open('/etc/esper/run/run.yaml').read().strip())\n"
        "print('listing=' + ','.join(sorted(os.listdir('/etc/esper/run'))))\n"
        "print('token=' + os.environ['ESPER_TOKEN'])\n"
        "print('greeting=' + os.environ['GREETING'])\n"
        "print('arg=' + sys.argv[1])\n"
        "print('node=' + os.environ['NODE_NAME'])\n"
        "print('sa-token=' + str(os.path.getsize("
        "'/var/run/secrets/kubernetes.io/serviceaccount/token') > 0))\n"
    )
    job = job_manifest(
        "reader",
        ["python", "-c", code],
        container={
            "args": ["$(POD_NAMESPACE)", "$$(NOT_EXPANDED)"],
            "env": [
                {
                    "name": "ESPER_TOKEN",
                    "valueFrom": {"secretKeyRef": {"name": "credentials", "key": "token"}},
                },
                {
                    "name": "POD_NAMESPACE",
                    "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}},
                },
                {"name": "NODE_NAME", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
                {"name": "GREETING", "value": "hello-$(POD_NAMESPACE)"},
            ],
            "volumeMounts": [{"name": "run", "mountPath": "/etc/esper/run"}],
        },
        pod_spec={
            "volumes": [
                {
                    "name": "run",
                    "configMap": {
                        "name": "run-config",
                        "items": [{"key": "run.yaml", "path": "run.yaml"}],
                    },
                }
            ]
        },
    )
    apply(control_plane, kube_namespace, config_map, secret, job)
    wait_for_job(control_plane, kube_namespace, "reader", "Complete")

    (pod,) = job_pods(control_plane, kube_namespace, "reader")
    lines = str(terminated(pod)["message"]).splitlines()
    assert lines == [
        "config=epochs: 3",
        "listing=run.yaml",
        "token=s3cr3t-token",
        f"greeting=hello-{kube_namespace}",
        f"arg={kube_namespace}",
        f"node={node_of(pod)}",
        "sa-token=True",
    ]
    # The mount was private to the pod's mount namespace.
    assert Path("/etc/esper/run/run.yaml").exists() == host_file_existed


def test_custom_resources_have_printer_columns_and_schemas(
    control_plane: ControlPlane, kube_namespace: str
) -> None:
    blueprint = yaml.safe_load(BLUEPRINT_MANIFEST.read_text())
    kernel = {
        "apiVersion": "esper.dev/v1alpha1",
        "kind": "KernelArtifact",
        "metadata": {"name": "residual-mlp-128-cpu"},
        "spec": {
            "blueprintName": blueprint["metadata"]["name"],
            "blueprintHash": "0" * 64,
            "target": {"device": "cpu"},
        },
    }
    run = {
        "apiVersion": "esper.dev/v1alpha1",
        "kind": "MorphogeneticRun",
        "metadata": {"name": "mnist1d"},
        "spec": yaml.safe_load(RUN_SPEC.read_text()),
    }
    apply(control_plane, kube_namespace, blueprint, kernel, run)
    try:
        output = control_plane.kubectl(
            "get", "-n", kube_namespace, "blueprints,kernelartifacts,morphogeneticruns"
        ).stdout
        headers = [line.split() for line in output.splitlines() if line.startswith("NAME")]
        assert headers == [
            ["NAME", "PHASE", "KERNELS", "AGE"],
            ["NAME", "BLUEPRINT", "TARGET", "PHASE", "LATENCY", "AGE"],
            ["NAME", "PHASE", "EPOCH", "ACCURACY", "SEEDS", "AGE"],
        ]
        assert "blueprint.esper.dev/residual-mlp-128" in output

        invalid = yaml.safe_load(BLUEPRINT_MANIFEST.read_text())
        invalid["metadata"]["name"] = "invalid"
        invalid["spec"]["targets"][0]["batchSizes"] = "lots"
        # Without kubectl's own checks, so the API server's structural schema is what rejects it.
        with pytest.raises(KubectlError) as caught:
            apply(control_plane, kube_namespace, invalid, validate=False)
        message = caught.value.stderr
        assert 'The Blueprint "invalid" is invalid' in message
        assert "spec.targets[0].batchSizes in body must be of type array" in message
        result = control_plane.kubectl(
            "get", "-n", kube_namespace, "blueprint", "invalid", check=False
        )
        assert result.returncode != 0
    finally:
        # Gone before the test ends, not whenever the namespace controller gets to them: a later
        # test's operator serves the whole cluster and would adopt them (finalizer, Urza rows).
        control_plane.kubectl(
            "delete", "-n", kube_namespace, "blueprints,kernelartifacts,morphogeneticruns",
            "--all", "--wait=true", "--timeout=60s", timeout=90,
        )  # fmt: skip


def test_rbac_is_enforced(control_plane: ControlPlane, kube_namespace: str) -> None:
    ns = kube_namespace
    control_plane.kubectl("create", "serviceaccount", "worker", "-n", ns)
    who = f"system:serviceaccount:{ns}:worker"
    denied = control_plane.kubectl(
        "auth", "can-i", "create", "jobs", "-n", ns, "--as", who, check=False
    )
    assert denied.stdout.strip() == "no"
    worker_config = control_plane.service_account_kubeconfig(ns, "worker")
    forbidden = control_plane.kubectl(
        "get", "jobs", "-n", ns, kubeconfig=worker_config, check=False
    )
    assert forbidden.returncode != 0
    assert "Forbidden" in forbidden.stderr

    control_plane.kubectl(
        "create", "role", "job-writer", "-n", ns, "--verb=create,get,list", "--resource=jobs"
    )
    control_plane.kubectl(
        "create", "rolebinding", "worker-jobs", "-n", ns, "--role=job-writer",
        f"--serviceaccount={ns}:worker",
    )  # fmt: skip

    def allowed() -> bool:
        result = control_plane.kubectl(
            "auth", "can-i", "create", "jobs", "-n", ns, "--as", who, check=False
        )
        return result.stdout.strip() == "yes"

    wait_until(allowed, timeout=30, description="RBAC to allow the binding", interval=0.2)
    listed = control_plane.kubectl("get", "jobs", "-n", ns, kubeconfig=worker_config)
    assert listed.returncode == 0
    still_denied = control_plane.kubectl(
        "auth", "can-i", "delete", "jobs", "-n", ns, "--as", who, check=False
    )
    assert still_denied.stdout.strip() == "no"


def test_restart_policy_on_failure_and_unsupported_specs(
    control_plane: ControlPlane, kubelet: StandInKubelet, kube_namespace: str
) -> None:
    # Fails on the first run, succeeds on the second: the container restarts in place (same
    # working directory), as restartPolicy OnFailure does in a kubelet.
    code = (
        "import os, sys\n"
        "seen = os.path.exists('tried')\n"
        "open('tried', 'w').close()\n"
        "print('second run' if seen else 'first run')\n"
        "sys.exit(0 if seen else 1)\n"
    )
    flaky = job_manifest("flaky", ["python", "-c", code], backoff_limit=2)
    flaky["spec"]["template"]["spec"]["restartPolicy"] = "OnFailure"
    with_init = job_manifest(
        "with-init",
        ["python", "-c", "print('main')"],
        pod_spec={"initContainers": [{"name": "init", "image": "esper-test", "command": ["true"]}]},
    )
    apply(control_plane, kube_namespace, flaky, with_init)
    wait_for_job(control_plane, kube_namespace, "flaky", "Complete")
    wait_for_job(control_plane, kube_namespace, "with-init", "Failed")

    (pod,) = job_pods(control_plane, kube_namespace, "flaky")
    status = pod["status"]["containerStatuses"][0]
    assert status["restartCount"] == 1
    assert status["lastState"]["terminated"]["exitCode"] == 1
    assert terminated(pod)["message"] == "second run"
    assert kubelet.log_text(kube_namespace, pod["metadata"]["name"]) == "first run\nsecond run\n"

    (refused,) = job_pods(control_plane, kube_namespace, "with-init")
    assert refused["status"]["phase"] == "Failed"
    assert refused["status"]["reason"] == "UnsupportedPodSpec"
    assert "init containers" in refused["status"]["message"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("$(A)", "a"),
        ("___$(B)___", "___b___"),
        ("$(A)-$(A)$(B)", "a-ab"),
        ("$$(B)_$(A)", "$(B)_a"),
        ("$$$(A)", "$a"),
        ("$$", "$"),
        ("$", "$"),
        ("$A", "$A"),
        ("$(UNDEFINED)", "$(UNDEFINED)"),
        ("$(A", "$(A"),
        ("$()", "$()"),
        ("no references", "no references"),
    ],
)
def test_dollar_expansion_matches_kubernetes(text: str, expected: str) -> None:
    assert expand(text, {"A": "a", "B": "b"}) == expected


def test_control_plane_is_healthy_and_started_quickly(control_plane: ControlPlane) -> None:
    assert control_plane.startup_seconds is not None
    assert control_plane.startup_seconds < 60  # typically ~10 s on 2 busy cores
    assert control_plane.kubectl("get", "--raw", "/readyz").stdout.strip() == "ok"
    version = json.loads(control_plane.kubectl("version", "-o", "json").stdout)
    assert version["serverVersion"]["gitVersion"] == "v1.37.2"
    assert control_plane.env() == {"KUBECONFIG": str(control_plane.kubeconfig)}


def test_cluster_survives_an_api_server_restart(
    control_plane: ControlPlane, kubelet: StandInKubelet, kube_namespace: str
) -> None:
    port = control_plane.apiserver.port
    control_plane.apiserver.restart()
    assert control_plane.apiserver.port == port  # kubeconfigs stay valid
    apply(control_plane, kube_namespace, job_manifest("after", ["python", "-c", "print('ok')"]))
    wait_for_job(control_plane, kube_namespace, "after", "Complete")
    kubelet.raise_errors()


def test_stand_in_kubelet_is_test_only() -> None:
    offenders = [
        str(path.relative_to(REPO_ROOT))
        for top in ("src", "operator")
        for path in (REPO_ROOT / top).rglob("*.py")
        if "tests.support" in path.read_text(encoding="utf-8")
    ]
    assert offenders == []
