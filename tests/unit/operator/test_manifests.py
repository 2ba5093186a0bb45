"""Manifests of the Jobs, KernelArtifacts and ConfigMaps the operator creates."""

import copy
import json

import pytest
import yaml

from esper.contracts.crd import KernelArtifactResourceSpec
from esper.contracts.kernel import KernelTarget
from esper.contracts.run import MorphogeneticRunSpec
from esper_operator import OPERATOR_NAME, manifests, names
from esper_operator.settings import GPU_RESOURCE, OperatorSettings
from tests.support.reliability import note_inputs

from .factories import BLUEPRINT_HASH, CPU_TARGET, is_dns_label, make_owner

KERNEL_ID = "k-" + "0123456789abcdef01234567"


def container(job: dict) -> dict:
    (only,) = job["spec"]["template"]["spec"]["containers"]
    return only


def pod(job: dict) -> dict:
    return job["spec"]["template"]["spec"]


def env_names(job: dict) -> list[str]:
    return [item["name"] for item in container(job)["env"]]


def all_jobs(
    settings: OperatorSettings, target: KernelTarget, run_spec: MorphogeneticRunSpec
) -> list[dict]:
    return [
        manifests.compile_job(make_owner(), BLUEPRINT_HASH, target, settings),
        manifests.benchmark_job(
            make_owner("KernelArtifact", "ka-1", "uid-2"),
            "residual-mlp",
            BLUEPRINT_HASH,
            KERNEL_ID,
            target,
            settings=settings,
        ),
        manifests.training_job(make_owner("MorphogeneticRun", "tiny", "uid-3"), run_spec, settings),
    ]


# Owners -----------------------------------------------------------------------------------------


def test_owner_reference_is_a_blocking_controller_reference() -> None:
    assert make_owner().reference() == {
        "apiVersion": "esper.dev/v1alpha1",
        "kind": "Blueprint",
        "name": "residual-mlp",
        "uid": "uid-1",
        "controller": True,
        "blockOwnerDeletion": True,
    }


def test_esper_owner_reads_the_metadata() -> None:
    body = {"metadata": {"name": "bp", "uid": "u-9", "namespace": "team", "generation": 3}}
    assert manifests.esper_owner("Blueprint", body) == manifests.Owner(
        api_version="esper.dev/v1alpha1", kind="Blueprint", name="bp", uid="u-9", namespace="team"
    )


@pytest.mark.parametrize("body", [{}, {"metadata": "nope"}])
def test_esper_owner_needs_metadata(body: dict) -> None:
    with pytest.raises(ValueError, match="no 'metadata' mapping"):
        manifests.esper_owner("Blueprint", body)


# Compile Jobs -----------------------------------------------------------------------------------


def test_cpu_compile_job(settings: OperatorSettings, cpu_target: KernelTarget) -> None:
    job = manifests.compile_job(make_owner(), BLUEPRINT_HASH, cpu_target, settings)
    assert job["apiVersion"] == "batch/v1"
    assert job["kind"] == "Job"
    metadata = job["metadata"]
    assert metadata["name"] == names.compile_job_name("residual-mlp", BLUEPRINT_HASH, CPU_TARGET)
    assert is_dns_label(metadata["name"])
    assert metadata["namespace"] == "esper"
    assert metadata["labels"] == names.labels(names.Role.COMPILE, "uid-1", gpu=False)
    assert metadata["annotations"] == {
        names.BLUEPRINT_ANNOTATION: "residual-mlp",
        names.BLUEPRINT_HASH_ANNOTATION: BLUEPRINT_HASH,
    }
    assert metadata["ownerReferences"] == [make_owner().reference()]
    assert job["spec"]["backoffLimit"] == settings.job_backoff_limit
    assert job["spec"]["template"]["metadata"]["labels"] == metadata["labels"]
    main = container(job)
    assert main["name"] == "compile"
    assert main["image"] == "registry.example/esper-worker:1.0"
    assert main["imagePullPolicy"] == "Always"
    assert main["command"] == ["esper"]
    assert main["args"] == [
        "tezzeret",
        "compile",
        "--blueprint",
        BLUEPRINT_HASH,
        "--target",
        "cpu:fp32:C=64",
    ]
    assert main["resources"] == {"requests": {"cpu": "2"}, "limits": {"memory": "4Gi"}}
    assert "nodeSelector" not in pod(job)
    assert "tolerations" not in pod(job)


def test_cuda_compile_job_requests_a_gpu_on_gpu_nodes(
    settings: OperatorSettings, cuda_target: KernelTarget
) -> None:
    before = copy.deepcopy(settings.compile_resources)
    job = manifests.compile_job(make_owner(), BLUEPRINT_HASH, cuda_target, settings)
    assert container(job)["resources"] == {
        "requests": {"cpu": "2", GPU_RESOURCE: "1"},
        "limits": {"memory": "4Gi", GPU_RESOURCE: "1"},
    }
    assert pod(job)["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert pod(job)["tolerations"] == [
        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
    ]
    assert job["metadata"]["labels"][names.GPU] == "true"
    assert container(job)["args"][-1] == "cuda@9.0:fp16:C=64"
    # The settings' own mappings are copied, never changed.
    assert settings.compile_resources == before
    assert pod(job)["nodeSelector"] is not settings.gpu_node_selector


def test_a_gpu_job_without_configured_resources_gets_the_gpu_alone(
    bare_settings: OperatorSettings, cuda_target: KernelTarget
) -> None:
    job = manifests.compile_job(make_owner(), BLUEPRINT_HASH, cuda_target, bare_settings)
    assert container(job)["resources"] == {
        "limits": {GPU_RESOURCE: "1"},
        "requests": {GPU_RESOURCE: "1"},
    }
    assert pod(job)["nodeSelector"] == {}
    assert pod(job)["tolerations"] == []


def test_compile_cache_off_adds_the_flag(cpu_target: KernelTarget) -> None:
    with_cache = OperatorSettings(peering_priority=1)
    without = OperatorSettings(peering_priority=1, compile_cache=False)
    assert (
        "--no-compile-cache"
        not in container(
            manifests.compile_job(make_owner(), BLUEPRINT_HASH, cpu_target, with_cache)
        )["args"]
    )
    assert container(manifests.compile_job(make_owner(), BLUEPRINT_HASH, cpu_target, without))[
        "args"
    ][-1] == ("--no-compile-cache")


def test_compile_job_names_follow_the_target(
    settings: OperatorSettings, cpu_target: KernelTarget, cuda_target: KernelTarget
) -> None:
    first = manifests.compile_job(make_owner(), BLUEPRINT_HASH, cpu_target, settings)
    again = manifests.compile_job(make_owner(), BLUEPRINT_HASH, cpu_target, settings)
    other = manifests.compile_job(make_owner(), BLUEPRINT_HASH, cuda_target, settings)
    assert first == again
    assert first["metadata"]["name"] != other["metadata"]["name"]


def test_resources_must_be_mappings(settings: OperatorSettings, cpu_target: KernelTarget) -> None:
    broken = settings.model_copy(update={"compile_resources": {"requests": "2 cpus"}})
    with pytest.raises(ValueError, match=r"resources\.requests must be a mapping"):
        manifests.compile_job(make_owner(), BLUEPRINT_HASH, cpu_target, broken)


@pytest.mark.parametrize(
    ("short", "gpus"), [("cpu:fp32:C=64", 0), ("cuda@9.0:fp16:C=64", 1), ("cuda@8.0:bf16", 1)]
)
def test_gpu_count(short: str, gpus: int) -> None:
    assert manifests.gpu_count(KernelTarget.parse(short)) == gpus


# Benchmark Jobs ---------------------------------------------------------------------------------


@pytest.mark.parametrize("target_name", ["cpu_target", "cuda_target"])
def test_benchmark_job(
    settings: OperatorSettings, target_name: str, request: pytest.FixtureRequest
) -> None:
    target: KernelTarget = request.getfixturevalue(target_name)
    owner = make_owner("KernelArtifact", "ka-residual-mlp-abc", "uid-ka")
    job = manifests.benchmark_job(
        owner, "residual-mlp", BLUEPRINT_HASH, KERNEL_ID, target, settings=settings
    )
    cuda = target_name == "cuda_target"
    assert job["metadata"]["name"] == names.benchmark_job_name(
        "residual-mlp", BLUEPRINT_HASH, target.short()
    )
    assert job["metadata"]["ownerReferences"] == [owner.reference()]
    assert job["metadata"]["labels"][names.OWNER_UID] == "uid-ka"
    assert job["metadata"]["labels"][names.ROLE] == "benchmark"
    assert job["metadata"]["labels"][names.GPU] == ("true" if cuda else "false")
    assert job["metadata"]["annotations"] == {
        names.BLUEPRINT_ANNOTATION: "residual-mlp",
        names.BLUEPRINT_HASH_ANNOTATION: BLUEPRINT_HASH,
        names.KERNEL_ANNOTATION: KERNEL_ID,
    }
    assert container(job)["args"] == ["urabrask", "bench", "--kernel", KERNEL_ID]
    resources = container(job)["resources"]
    assert resources["requests"]["cpu"] == "1"
    assert (GPU_RESOURCE in resources["requests"]) is cuda
    assert ("nodeSelector" in pod(job)) is cuda
    assert ("tolerations" in pod(job)) is cuda


# KernelArtifacts --------------------------------------------------------------------------------


def test_kernel_artifact(cuda_target: KernelTarget) -> None:
    owner = make_owner()
    made = manifests.kernel_artifact(owner, BLUEPRINT_HASH, cuda_target, KERNEL_ID)
    assert made["apiVersion"] == "esper.dev/v1alpha1"
    assert made["kind"] == "KernelArtifact"
    assert made["metadata"]["name"] == names.kernel_artifact_name(
        "residual-mlp", BLUEPRINT_HASH, "cuda@9.0:fp16:C=64"
    )
    assert made["metadata"]["namespace"] == "esper"
    assert made["metadata"]["labels"] == {
        names.MANAGED_BY: OPERATOR_NAME,
        names.PART_OF: "esper",
        names.OWNER_UID: "uid-1",
    }
    assert made["metadata"]["annotations"] == {names.KERNEL_ANNOTATION: KERNEL_ID}
    assert made["metadata"]["ownerReferences"] == [owner.reference()]
    spec = KernelArtifactResourceSpec.model_validate(made["spec"])
    assert spec.target == cuda_target
    assert spec.blueprint_name == "residual-mlp"
    assert spec.blueprint_hash == BLUEPRINT_HASH
    json.dumps(made)  # plain JSON, as the API speaks it


# Runs -------------------------------------------------------------------------------------------


def test_run_spec_config_map_round_trips(run_spec: MorphogeneticRunSpec) -> None:
    owner = make_owner("MorphogeneticRun", "tiny", "uid-run")
    made = manifests.run_spec_config_map(owner, run_spec)
    assert made["apiVersion"] == "v1"
    assert made["kind"] == "ConfigMap"
    assert made["metadata"]["name"] == names.run_spec_config_map_name("tiny", "uid-run")
    assert made["metadata"]["ownerReferences"] == [owner.reference()]
    assert made["metadata"]["labels"][names.OWNER_UID] == "uid-run"
    text = made["data"][manifests.RUN_SPEC_FILE]
    assert MorphogeneticRunSpec.model_validate_json(text) == run_spec
    assert MorphogeneticRunSpec.model_validate(yaml.safe_load(text)) == run_spec


def test_training_job(settings: OperatorSettings, run_spec: MorphogeneticRunSpec) -> None:
    owner = make_owner("MorphogeneticRun", "tiny", "uid-run")
    job = manifests.training_job(owner, run_spec, settings)
    assert job["metadata"]["name"] == names.training_job_name("tiny", "uid-run")
    assert job["metadata"]["annotations"] == {names.RUN_ANNOTATION: "tiny"}
    assert job["metadata"]["labels"][names.ROLE] == "training"
    assert job["metadata"]["labels"][names.GPU] == "false"
    assert job["metadata"]["ownerReferences"] == [owner.reference()]
    main = container(job)
    assert main["command"] == ["esper"]
    assert main["args"] == [
        "run",
        "/etc/esper/run/run.yaml",
        "--out",
        "/var/lib/esper/run",
        "--run-id",
        "esper.tiny",
        "--urza",
        "http://urza.workers:8420",
        "--bus",
        "redis://oona:6379/0",
    ]
    assert main["resources"] == {"limits": {"memory": "8Gi"}}
    assert {"name": "ESPER_HOME", "value": "/var/lib/esper/home"} in main["env"]
    volumes = {item["name"]: item for item in pod(job)["volumes"]}
    assert volumes["spec"]["configMap"]["name"] == names.run_spec_config_map_name("tiny", "uid-run")
    mounts = {item["name"]: item for item in main["volumeMounts"]}
    assert mounts["spec"] == {"name": "spec", "mountPath": "/etc/esper/run", "readOnly": True}
    assert mounts["run"]["mountPath"] == "/var/lib/esper/run"
    assert mounts["home"]["mountPath"] == "/var/lib/esper/home"
    assert mounts["tmp"]["mountPath"] == "/tmp"
    assert set(mounts) == set(volumes)
    assert "nodeSelector" not in pod(job)


def test_training_job_without_a_bus(
    bare_settings: OperatorSettings, run_spec: MorphogeneticRunSpec
) -> None:
    job = manifests.training_job(make_owner("MorphogeneticRun", "tiny"), run_spec, bare_settings)
    args = container(job)["args"]
    assert "--bus" not in args
    assert args[-2:] == ["--urza", bare_settings.urza_url]


def test_worker_bus_url_wins_for_training(run_spec: MorphogeneticRunSpec) -> None:
    made = OperatorSettings(
        peering_priority=1, bus_url="redis://inside:6379", worker_bus_url="redis://pods:6379"
    )
    args = container(manifests.training_job(make_owner(), run_spec, made))["args"]
    assert args[-2:] == ["--bus", "redis://pods:6379"]


@pytest.mark.parametrize(("device", "gpu"), [("cuda", True), ("cpu", False), ("auto", False)])
def test_training_job_requests_a_gpu_for_cuda_runs(
    settings: OperatorSettings, run_spec: MorphogeneticRunSpec, device: str, gpu: bool
) -> None:
    spec = run_spec.model_copy(update={"device": device})
    job = manifests.training_job(make_owner("MorphogeneticRun", "tiny"), spec, settings)
    assert job["metadata"]["labels"][names.GPU] == ("true" if gpu else "false")
    assert (GPU_RESOURCE in container(job)["resources"].get("limits", {})) is gpu
    assert ("nodeSelector" in pod(job)) is gpu
    assert ("tolerations" in pod(job)) is gpu


# What every Job shares --------------------------------------------------------------------------


def test_no_token_env_without_a_worker_token_secret(
    settings: OperatorSettings, cuda_target: KernelTarget, run_spec: MorphogeneticRunSpec
) -> None:
    for job in all_jobs(settings, cuda_target, run_spec):
        assert "ESPER_URZA_TOKEN" not in env_names(job)
        env = {item["name"]: item for item in container(job)["env"]}
        assert env["ESPER_URZA_URL"]["value"] == "http://urza.workers:8420"
        assert env["ESPER_WORKER_NAME"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}
        assert env["PYTHONUNBUFFERED"]["value"] == "1"


def test_the_worker_token_comes_from_the_secret(
    settings: OperatorSettings, cpu_target: KernelTarget, run_spec: MorphogeneticRunSpec
) -> None:
    with_secret = settings.model_copy(update={"worker_token_secret": "esper-worker-token"})
    for job in all_jobs(with_secret, cpu_target, run_spec):
        (token,) = [item for item in container(job)["env"] if item["name"] == "ESPER_URZA_TOKEN"]
        assert token == {
            "name": "ESPER_URZA_TOKEN",
            "valueFrom": {"secretKeyRef": {"name": "esper-worker-token", "key": "token"}},
        }
        assert "value" not in token


def test_the_signing_keys_are_mounted_from_their_secret(
    settings: OperatorSettings, cpu_target: KernelTarget, run_spec: MorphogeneticRunSpec
) -> None:
    signing = settings.model_copy(
        update={"worker_signing_secret": "esper-signing-keys", "worker_signing_key_id": "k2"}
    )
    for job in all_jobs(signing, cpu_target, run_spec):
        env = {item["name"]: item for item in container(job)["env"]}
        assert env["ESPER_SIGNING_KEY_DIR"]["value"] == manifests.SIGNING_KEYS_PATH
        assert env["ESPER_SIGNING_KEY_ID"]["value"] == "k2"
        assert "ESPER_SIGNING_MODE" not in env
        assert {
            "name": "signing-keys",
            "mountPath": manifests.SIGNING_KEYS_PATH,
            "readOnly": True,
        } in container(job)["volumeMounts"]
        assert {
            "name": "signing-keys",
            "secret": {"secretName": "esper-signing-keys", "defaultMode": 0o440},
        } in pod(job)["volumes"]


def test_without_a_signing_secret_jobs_say_signatures_are_off(
    settings: OperatorSettings, cpu_target: KernelTarget, run_spec: MorphogeneticRunSpec
) -> None:
    for job in all_jobs(settings, cpu_target, run_spec):
        env = {item["name"]: item for item in container(job)["env"]}
        assert env["ESPER_SIGNING_MODE"]["value"] == "off"
        assert "ESPER_SIGNING_KEY_DIR" not in env
        assert all(volume["name"] != "signing-keys" for volume in pod(job)["volumes"])


def test_a_signing_secret_needs_its_key_id() -> None:
    with pytest.raises(ValueError, match="come together"):
        OperatorSettings(worker_signing_secret="esper-signing-keys")


@pytest.mark.reliability("non-root")
def test_every_job_runs_locked_down(
    settings: OperatorSettings, cuda_target: KernelTarget, run_spec: MorphogeneticRunSpec
) -> None:
    for job in all_jobs(settings, cuda_target, run_spec):
        note_inputs()
        spec = pod(job)
        assert spec["restartPolicy"] == "Never"
        assert spec["automountServiceAccountToken"] is False
        assert spec["serviceAccountName"] == "esper-worker"
        assert spec["securityContext"]["runAsNonRoot"] is True
        assert spec["securityContext"]["runAsUser"] != 0
        security = container(job)["securityContext"]
        assert security["readOnlyRootFilesystem"] is True
        assert security["allowPrivilegeEscalation"] is False
        assert security["capabilities"] == {"drop": ["ALL"]}
        assert container(job)["terminationMessagePolicy"] == "FallbackToLogsOnError"
        assert {"name": "tmp", "emptyDir": {}} in spec["volumes"]
        assert is_dns_label(job["metadata"]["name"])
        json.dumps(job)


def test_long_names_give_valid_job_names(
    settings: OperatorSettings, cuda_target: KernelTarget, run_spec: MorphogeneticRunSpec
) -> None:
    owner = make_owner(name="a." + "very-long-blueprint-name" * 10)
    jobs = [
        manifests.compile_job(owner, BLUEPRINT_HASH, cuda_target, settings),
        manifests.benchmark_job(
            owner, owner.name, BLUEPRINT_HASH, KERNEL_ID, cuda_target, settings=settings
        ),
        manifests.training_job(owner, run_spec, settings),
    ]
    for job in jobs:
        assert is_dns_label(job["metadata"]["name"])
