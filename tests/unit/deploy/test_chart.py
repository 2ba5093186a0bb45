"""The Helm chart (helm/esper) through the real `helm template` and `helm lint` (no cluster).

Renders are parsed into plain dicts and checked for what the chart promises: its values schema
refuses typos and bad types, the operator gets least privilege and its settings from values
(fed here into the operator's own settings and Job builder), every pod is hardened, and the
secrets, addresses, NetworkPolicies, ServiceMonitor and NOTES follow the values.
"""

import base64
import json
import os
import re
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

import esper
from esper.config import UrzaSettings
from esper.contracts.kernel import KernelTarget
from esper_operator import manifests, names
from esper_operator.settings import GPU_RESOURCE, OperatorSettings
from tests.support.helm import Helm as HelmCommand
from tests.support.reliability import note_inputs

pytestmark = pytest.mark.timeout(120)

REPO = Path(__file__).resolve().parents[3]
CHART = REPO / "helm" / "esper"
RELEASE = "esper"
NAMESPACE = "esper-system"
VALUES_FILES = {
    "default": None,
    "kind": REPO / "examples" / "values" / "kind.yaml",
    "gpu-cluster": REPO / "examples" / "values" / "gpu-cluster.yaml",
}
WORKLOADS = ("Deployment", "StatefulSet", "Job")
SCHEMA_ERROR = "values don't meet the specifications of the schema"
NVIDIA_TOLERATION = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
BLUEPRINT_HASH = "ab" * 32

Manifest = dict[str, object]


# Navigating parsed YAML -------------------------------------------------------------------------


def mapping(value: object) -> Manifest:
    assert isinstance(value, dict), f"expected a mapping, got {value!r}"
    return value


def sequence(value: object) -> list[object]:
    assert isinstance(value, list), f"expected a list, got {value!r}"
    return value


def at(value: object, *path: str) -> object:
    for key in path:
        value = mapping(value)[key]
    return value


def items(value: object) -> list[Manifest]:
    return [mapping(item) for item in sequence(value)]


def read_yaml(path: Path) -> Manifest:
    return mapping(yaml.safe_load(path.read_text(encoding="utf-8")))


def chart_values(name: str) -> Manifest:
    """The values file of a named set (the chart's own values.yaml for `default`)."""
    path = VALUES_FILES[name]
    return read_yaml(path if path is not None else CHART / "values.yaml")


APP_VERSION = str(read_yaml(CHART / "Chart.yaml")["appVersion"])


# Running helm -----------------------------------------------------------------------------------


class Helm:
    """helm on this chart without a cluster (run by tests.support.helm with its own home)."""

    def __init__(self, command: HelmCommand) -> None:
        self.command = command

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        return self.command.run(*args, check=False, timeout=60)

    def template(self, *args: str, chart: Path = CHART) -> list[Manifest]:
        result = self.run("template", RELEASE, str(chart), "--namespace", NAMESPACE, *args)
        assert result.returncode == 0, result.stderr
        return [mapping(doc) for doc in yaml.safe_load_all(result.stdout) if doc is not None]

    def refusal(self, *args: str) -> str:
        result = self.run("template", RELEASE, str(CHART), "--namespace", NAMESPACE, *args)
        assert result.returncode != 0, f"helm template {' '.join(args)} was not refused"
        return result.stderr


def values_args(name: str) -> list[str]:
    path = VALUES_FILES[name]
    return ["--values", str(path)] if path is not None else []


@pytest.fixture(scope="module")
def helm(tmp_path_factory: pytest.TempPathFactory) -> Helm:
    """helm, built (or found in the cache) by scripts/build-go-tools.sh."""
    return Helm(HelmCommand(tmp_path_factory.mktemp("helm-home")))


@pytest.fixture(scope="module")
def renders(helm: Helm) -> dict[str, list[Manifest]]:
    """The chart rendered with its defaults and with each example values file."""
    return {name: helm.template(*values_args(name)) for name in VALUES_FILES}


# Finding objects --------------------------------------------------------------------------------


def of_kind(docs: list[Manifest], kind: str) -> list[Manifest]:
    return [doc for doc in docs if doc["kind"] == kind]


def name_of(doc: Manifest) -> str:
    return str(at(doc, "metadata", "name"))


def named(docs: list[Manifest], kind: str, name: str) -> Manifest:
    (only,) = [doc for doc in of_kind(docs, kind) if name_of(doc) == name]
    return only


def workloads(docs: list[Manifest]) -> list[Manifest]:
    return [doc for doc in docs if doc["kind"] in WORKLOADS]


def pod_spec(workload: Manifest) -> Manifest:
    return mapping(at(workload, "spec", "template", "spec"))


def containers(pod: Manifest) -> list[Manifest]:
    return items(pod["containers"]) + items(pod.get("initContainers", []))


def env_values(container: Manifest) -> dict[str, str]:
    """A container's plain `value` entries (valueFrom entries are secrets)."""
    env = items(container.get("env", []))
    return {str(item["name"]): str(item["value"]) for item in env if "value" in item}


def operator_env(docs: list[Manifest]) -> dict[str, str]:
    (container,) = containers(pod_spec(named(docs, "Deployment", f"{RELEASE}-operator")))
    return env_values(container)


def secret_text(secret: Manifest, key: str) -> str:
    return base64.b64decode(str(at(secret, "data", key))).decode("utf-8")


def secret_volumes(workload: Manifest) -> list[str]:
    volumes = items(pod_spec(workload).get("volumes", []))
    return [str(at(volume, "secret", "secretName")) for volume in volumes if "secret" in volume]


def labels_of_pods(docs: list[Manifest]) -> list[Manifest]:
    return [mapping(at(doc, "spec", "template", "metadata", "labels")) for doc in workloads(docs)]


def is_subset(small: Manifest, large: Manifest) -> bool:
    return all(large.get(key) == value for key, value in small.items())


# The values schema ------------------------------------------------------------------------------


@pytest.mark.parametrize("values", list(VALUES_FILES))
def test_lint_strict_passes(helm: Helm, values: str) -> None:
    result = helm.run("lint", "--strict", str(CHART), *values_args(values))
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(
    ("flag", "setting", "message"),
    [
        ("--set", "operater.replicas=2", "at '': additional properties 'operater' not allowed"),
        (
            "--set",
            "workers.gpu.nodeSelectr.a=b",
            "at '/workers/gpu': additional properties 'nodeSelectr' not allowed",
        ),
        ("--set-string", "operator.replicas=two", "at '/operator/replicas': got string"),
        ("--set", "operator.maxGpuJobs=0", "at '/operator/maxGpuJobs': minimum: got 0, want 1"),
        ("--set", "urza.port=70000", "at '/urza/port': maximum"),
        ("--set", "images.pullPolicy=Sometimes", "at '/images/pullPolicy': value must be one of"),
        ("--set", "operator.logFormat=xml", "at '/operator/logFormat': value must be one of"),
    ],
)
def test_schema_refuses_bad_values_naming_the_key(
    helm: Helm, flag: str, setting: str, message: str
) -> None:
    stderr = helm.refusal(flag, setting)
    assert SCHEMA_ERROR in stderr
    assert message in stderr


def test_lint_refuses_a_typo(helm: Helm) -> None:
    result = helm.run("lint", "--strict", str(CHART), "--set", "operater.replicas=2")
    assert result.returncode != 0
    assert "additional properties 'operater' not allowed" in result.stdout + result.stderr


def test_gpu_node_labels_must_be_strings(helm: Helm) -> None:
    # Unquoted `true` would reach the operator as a JSON boolean, which its settings refuse.
    stderr = helm.refusal("--set", "workers.gpu.nodeSelector.gpu=true")
    assert "at '/workers/gpu/nodeSelector/gpu': got boolean, want string" in stderr
    docs = helm.template("--set-string", "workers.gpu.nodeSelector.gpu=true")
    selector = operator_env(docs)["ESPER_OPERATOR_GPU_NODE_SELECTOR"]
    assert json.loads(selector) == {"nvidia.com/gpu.present": "true", "gpu": "true"}


def schema_node(schema: Manifest, node: Manifest) -> Manifest:
    ref = node.get("$ref")
    if ref is None:
        return node
    return mapping(at(schema, *str(ref).removeprefix("#/").split("/")))


FREE_FORM = {
    "resources",
    "nodeSelector",
    "affinity",
    "labels",
    "podSecurityContext",
    "containerSecurityContext",
}


def closure_gaps(schema: Manifest, node: Manifest, values: Manifest, path: str) -> list[str]:
    """Paths of values.yaml objects whose schema does not list every key and refuse others."""
    node = schema_node(schema, node)
    properties = mapping(node.get("properties", {}))
    gaps = [f"{path}.{key}" for key in values if key not in properties]
    if node.get("additionalProperties") is not False:
        gaps.append(f"{path} is open")
    for key, value in values.items():
        if isinstance(value, dict) and key not in FREE_FORM and key in properties:
            gaps += closure_gaps(schema, mapping(properties[key]), value, f"{path}.{key}")
    return gaps


def test_schema_closes_every_object_the_chart_defines() -> None:
    schema = read_yaml(CHART / "values.schema.json")
    assert schema["$schema"] == "http://json-schema.org/draft-07/schema#"
    assert closure_gaps(schema, schema, chart_values("default"), "values") == []


# Versions, images, CRDs -------------------------------------------------------------------------


def test_chart_versions_are_the_package_version() -> None:
    chart = read_yaml(CHART / "Chart.yaml")
    assert (chart["version"], chart["appVersion"]) == (esper.__version__, esper.__version__)


def test_images_default_to_the_app_version(renders: dict[str, list[Manifest]]) -> None:
    docs = renders["default"]
    images = mapping(chart_values("default")["images"])
    control = f"{at(images, 'control', 'repository')}:{APP_VERSION}"
    own = [
        named(docs, "Deployment", f"{RELEASE}-operator"),
        named(docs, "Deployment", f"{RELEASE}-urza"),
        named(docs, "Job", f"{RELEASE}-urza-migrate-1"),
    ]
    assert [str(c["image"]) for doc in own for c in containers(pod_spec(doc))] == [control] * 3
    worker = f"{at(images, 'worker', 'repository')}:{APP_VERSION}"
    assert operator_env(docs)["ESPER_OPERATOR_IMAGE"] == worker


def test_crds_are_the_generated_ones_and_kopf_peerings() -> None:
    generated = sorted(path.name for path in (REPO / "crds").glob("*.esper.dev.yaml"))
    in_chart = sorted(path.name for path in (CHART / "crds").glob("*.esper.dev.yaml"))
    assert in_chart == generated
    for name in generated:
        assert (CHART / "crds" / name).read_bytes() == (REPO / "crds" / name).read_bytes(), name
    peering = (REPO / "operator" / "deploy" / "peering.yaml").read_bytes()
    assert (CHART / "crds" / "kopf.dev-peerings.yaml").read_bytes() == peering


# RBAC and API tokens ----------------------------------------------------------------------------


def test_cluster_role_is_the_tested_rbac(renders: dict[str, list[Manifest]]) -> None:
    tested = yaml.safe_load_all((REPO / "operator" / "deploy" / "rbac.yaml").read_text("utf-8"))
    (reference,) = [mapping(doc) for doc in tested if mapping(doc)["kind"] == "ClusterRole"]
    (role,) = of_kind(renders["default"], "ClusterRole")
    assert role["rules"] == reference["rules"]


@pytest.mark.parametrize("values", list(VALUES_FILES))
def test_no_wildcard_permissions(renders: dict[str, list[Manifest]], values: str) -> None:
    roles = of_kind(renders[values], "ClusterRole") + of_kind(renders[values], "Role")
    assert roles
    for role in roles:
        for rule in items(role["rules"]):
            for field in ("verbs", "resources", "apiGroups"):
                assert "*" not in sequence(rule[field]), (name_of(role), rule)


@pytest.mark.parametrize("values", list(VALUES_FILES))
def test_only_the_operator_is_bound_to_a_role(
    renders: dict[str, list[Manifest]], values: str
) -> None:
    docs = renders[values]
    bindings = of_kind(docs, "ClusterRoleBinding") + of_kind(docs, "RoleBinding")
    subjects = [subject for binding in bindings for subject in items(binding["subjects"])]
    assert subjects == [
        {"kind": "ServiceAccount", "name": f"{RELEASE}-operator", "namespace": NAMESPACE}
    ]


@pytest.mark.parametrize("values", list(VALUES_FILES))
def test_worker_service_accounts_mount_no_token(
    renders: dict[str, list[Manifest]], values: str
) -> None:
    worker = str(at(chart_values("default"), "workers", "serviceAccountName"))
    accounts = [doc for doc in of_kind(renders[values], "ServiceAccount") if name_of(doc) == worker]
    assert accounts
    assert all(account["automountServiceAccountToken"] is False for account in accounts)


@pytest.mark.parametrize("values", list(VALUES_FILES))
def test_only_the_operator_pods_get_an_api_token(
    renders: dict[str, list[Manifest]], values: str
) -> None:
    for workload in workloads(renders[values]):
        pod = pod_spec(workload)
        if name_of(workload) == f"{RELEASE}-operator":
            assert pod["serviceAccountName"] == f"{RELEASE}-operator"
            assert pod.get("automountServiceAccountToken", True) is True
        else:
            assert pod.get("automountServiceAccountToken") is False, name_of(workload)


# Hardened pods ----------------------------------------------------------------------------------


def image_is_pinned(image: str) -> bool:
    if "@sha256:" in image:
        return True
    last = image.rsplit("/", 1)[-1]
    return ":" in last and last.rsplit(":", 1)[1] not in {"", "latest"}


def resources_are_bounded(container: Manifest) -> bool:
    resources = mapping(container.get("resources", {}))
    sections = [mapping(resources.get(section, {})) for section in ("requests", "limits")]
    return all("cpu" in section and "memory" in section for section in sections)


def hardening_gaps(pod: Manifest) -> list[str]:
    """What a pod's containers lack of the hardening every Esper pod must have."""
    gaps: list[str] = []
    pod_context = mapping(pod.get("securityContext", {}))
    for container in containers(pod):
        context = {**pod_context, **mapping(container.get("securityContext", {}))}
        checks = {
            "runAsNonRoot": context.get("runAsNonRoot") is True,
            "runAsUser": isinstance(context.get("runAsUser"), int) and context["runAsUser"] > 0,
            "allowPrivilegeEscalation": context.get("allowPrivilegeEscalation") is False,
            "readOnlyRootFilesystem": context.get("readOnlyRootFilesystem") is True,
            "capabilities": at(context, "capabilities", "drop") == ["ALL"],
            "resources": resources_are_bounded(container),
            "command": bool(container.get("command")),
            "image": image_is_pinned(str(container["image"])),
        }
        gaps += [f"{container['name']}: {check}" for check, ok in checks.items() if not ok]
    return gaps


@pytest.mark.parametrize("values", list(VALUES_FILES))
@pytest.mark.reliability("non-root")
def test_every_pod_is_hardened(renders: dict[str, list[Manifest]], values: str) -> None:
    docs = workloads(renders[values])
    note_inputs(len(docs))
    assert docs
    gaps = {name_of(doc): hardening_gaps(pod_spec(doc)) for doc in docs}
    assert {name: gap for name, gap in gaps.items() if gap} == {}


# The operator's settings and the Jobs it creates from them --------------------------------------


SettingsOf = Callable[[list[Manifest]], OperatorSettings]

CUDA_TARGET = KernelTarget.parse("cuda@9.0:fp32:C=64:b=1,32")
CPU_TARGET = KernelTarget.parse("cpu:fp32:C=64:b=1,32")
GPU_SCHEDULING = {
    "default": ({"nvidia.com/gpu.present": "true"}, [NVIDIA_TOLERATION]),
    "kind": ({"esper.dev/accelerator": "true"}, []),
    "gpu-cluster": ({"nvidia.com/gpu.present": "true"}, [NVIDIA_TOLERATION]),
}


@pytest.fixture
def settings_of(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> SettingsOf:
    """Reads a render's operator environment into the operator's own settings."""
    token = tmp_path / "token"
    token.write_text("token\n", encoding="utf-8")

    def settings(docs: list[Manifest]) -> OperatorSettings:
        for key in list(os.environ):
            if key.startswith("ESPER_OPERATOR_"):
                monkeypatch.delenv(key)
        for key, value in operator_env(docs).items():
            monkeypatch.setenv(key, value)
        # The chart's token file is a mounted Secret; any existing file stands in for it.
        monkeypatch.setenv("ESPER_OPERATOR_URZA_TOKEN_FILE", str(token))
        return OperatorSettings()

    return settings


def worker_namespaces(values: str) -> list[str]:
    workers = mapping(chart_values(values).get("workers", {}))
    return [str(item) for item in sequence(workers.get("namespaces") or [NAMESPACE])]


def worker_image(values: str) -> str:
    worker = mapping(mapping(chart_values(values).get("images", {})).get("worker", {}))
    return f"ghcr.io/esper-dev/esper-worker:{worker.get('tag') or APP_VERSION}"


def compile_job(settings: OperatorSettings, target: KernelTarget, namespace: str) -> Manifest:
    owner = manifests.Owner(
        api_version="esper.dev/v1alpha1",
        kind="Blueprint",
        name="residual-mlp",
        uid="uid-1",
        namespace=namespace,
    )
    return manifests.compile_job(owner, BLUEPRINT_HASH, target, settings)


@pytest.mark.parametrize(
    ("values", "max_gpu_jobs", "namespaces"),
    [
        ("default", 8, [NAMESPACE]),
        ("kind", 8, [NAMESPACE]),
        ("gpu-cluster", 16, ["ml-team-a", "ml-team-b"]),
    ],
)
def test_the_operator_reads_its_settings_from_the_values(
    renders: dict[str, list[Manifest]],
    settings_of: SettingsOf,
    values: str,
    max_gpu_jobs: int,
    namespaces: list[str],
) -> None:
    settings = settings_of(renders[values])
    assert settings.max_gpu_jobs == max_gpu_jobs
    assert settings.namespaces == namespaces
    assert settings.worker_service_account == "esper-worker"
    assert settings.worker_token_secret == "esper-worker-token"
    assert settings.peering_name == f"{RELEASE}-operator"
    assert settings.token() == "token"


def peering_objects(docs: list[Manifest]) -> list[tuple[str, str, str]]:
    kopf = [doc for doc in docs if doc["apiVersion"] == "kopf.dev/v1"]
    metadata = [(str(doc["kind"]), mapping(doc["metadata"])) for doc in kopf]
    return sorted(
        (kind, str(meta["name"]), str(meta.get("namespace", ""))) for kind, meta in metadata
    )


@pytest.mark.parametrize("values", list(VALUES_FILES))
def test_the_peering_objects_are_where_kopf_looks(
    renders: dict[str, list[Manifest]], settings_of: SettingsOf, values: str
) -> None:
    # The operator serves a list of namespaces (the worker namespaces), so kopf peers through a
    # KopfPeering in each; a missing one would leave every replica active.
    settings = settings_of(renders[values])
    assert settings.namespaces == worker_namespaces(values)
    expected = [("KopfPeering", settings.peering_name, ns) for ns in settings.namespaces]
    assert peering_objects(renders[values]) == sorted(expected)


@pytest.mark.parametrize("values", list(VALUES_FILES))
def test_cuda_jobs_request_a_gpu_on_the_gpu_nodes(
    renders: dict[str, list[Manifest]], settings_of: SettingsOf, values: str
) -> None:
    settings = settings_of(renders[values])
    pod = pod_spec(compile_job(settings, CUDA_TARGET, worker_namespaces(values)[0]))
    (container,) = containers(pod)
    wanted = mapping(at(chart_values(values), "workers", "compile", "resources"))
    assert container["resources"] == {
        "requests": {**mapping(wanted["requests"]), GPU_RESOURCE: "1"},
        "limits": {**mapping(wanted["limits"]), GPU_RESOURCE: "1"},
    }
    node_selector, tolerations = GPU_SCHEDULING[values]
    assert (pod["nodeSelector"], pod["tolerations"]) == (node_selector, tolerations)
    assert container["image"] == worker_image(values)
    assert hardening_gaps(pod) == []


@pytest.mark.parametrize("values", list(VALUES_FILES))
def test_cpu_jobs_request_no_gpu(
    renders: dict[str, list[Manifest]], settings_of: SettingsOf, values: str
) -> None:
    settings = settings_of(renders[values])
    pod = pod_spec(compile_job(settings, CPU_TARGET, worker_namespaces(values)[0]))
    (container,) = containers(pod)
    assert container["resources"] == at(chart_values(values), "workers", "compile", "resources")
    assert "nodeSelector" not in pod
    assert "tolerations" not in pod


# Addresses --------------------------------------------------------------------------------------


def test_default_addresses_are_the_release_services(renders: dict[str, list[Manifest]]) -> None:
    env = operator_env(renders["default"])
    assert env["ESPER_OPERATOR_URZA_URL"] == f"http://{RELEASE}-urza.{NAMESPACE}.svc:8420"
    assert env["ESPER_OPERATOR_BUS_URL"] == f"redis://{RELEASE}-redis.{NAMESPACE}.svc:6379/0"


def test_urza_url_overrides_the_release_service(helm: Helm) -> None:
    url = "http://urza.shared.svc:8420"
    docs = helm.template("--set", f"urza.url={url}")
    assert operator_env(docs)["ESPER_OPERATOR_URZA_URL"] == url
    elsewhere = helm.template("--set", "urza.enabled=false", "--set", f"urza.url={url}")
    assert operator_env(elsewhere)["ESPER_OPERATOR_URZA_URL"] == url
    assert [name_of(doc) for doc in workloads(elsewhere) if "urza" in name_of(doc)] == []


def urza_settings(
    docs: list[Manifest], monkeypatch: pytest.MonkeyPatch, token: Path
) -> UrzaSettings:
    """What Urza's container makes of its plain environment (secrets left out)."""
    container, *_ = containers(pod_spec(named(docs, "Deployment", f"{RELEASE}-urza")))
    for key in list(os.environ):
        if key.startswith("ESPER_URZA_"):
            monkeypatch.delenv(key)
    for key, value in env_values(container).items():
        monkeypatch.setenv(key, value)
    # The chart's token file is a mounted Secret; any existing file stands in for it.
    monkeypatch.setenv("ESPER_URZA_AUTH_TOKEN_FILE", str(token))
    return UrzaSettings()


def test_urza_limits_come_from_the_values(
    helm: Helm, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    token = tmp_path / "token"
    token.write_text("token\n", encoding="utf-8")
    defaults = urza_settings(helm.template(), monkeypatch, token)
    assert (defaults.max_json_bytes, defaults.max_upload_bytes) == (1048576, 536870912)
    assert (defaults.rate_limit_per_second, defaults.rate_limit_burst) == (50.0, 200)
    assert defaults.rate_limit_reads is False
    tuned = helm.template(
        "--set", "urza.maxJsonBytes=4096", "--set-json", "urza.rateLimit.perSecond=2.5",
        "--set", "urza.rateLimit.burst=9", "--set", "urza.rateLimit.reads=true",
    )  # fmt: skip
    settings = urza_settings(tuned, monkeypatch, token)
    assert (settings.max_json_bytes, settings.rate_limit_per_second) == (4096, 2.5)
    assert (settings.rate_limit_burst, settings.rate_limit_reads) == (9, True)
    off = urza_settings(helm.template("--set", "urza.rateLimit.perSecond=0"), monkeypatch, token)
    assert off.rate_limit_per_second == 0


def test_gpu_cluster_uses_external_services(renders: dict[str, list[Manifest]]) -> None:
    docs = renders["gpu-cluster"]
    redis_url = at(chart_values("gpu-cluster"), "externalRedis", "url")
    assert operator_env(docs)["ESPER_OPERATOR_BUS_URL"] == redis_url
    assert of_kind(docs, "StatefulSet") == []


def test_no_bus_without_redis(helm: Helm) -> None:
    docs = helm.template("--set", "redis.enabled=false")
    assert "ESPER_OPERATOR_BUS_URL" not in operator_env(docs)
    assert [name_of(doc) for doc in docs if "redis" in name_of(doc)] == []


def test_urza_waits_for_the_revision_s_migration(renders: dict[str, list[Manifest]]) -> None:
    docs = renders["default"]
    (urza,) = containers(pod_spec(named(docs, "Deployment", f"{RELEASE}-urza")))
    assert env_values(urza)["ESPER_URZA_AUTO_MIGRATE"] == "false"
    (migrate,) = containers(pod_spec(named(docs, "Job", f"{RELEASE}-urza-migrate-1")))
    assert sequence(migrate["command"])[:3] == ["esper", "urza", "migrate"]


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        (
            ["postgresql.enabled=false"],
            "postgresql.enabled=false needs externalDatabase.url or"
            " externalDatabase.existingSecret",
        ),
        (["minio.enabled=false"], "minio.enabled=false needs externalS3.bucket"),
        (
            ["minio.enabled=false", "externalS3.bucket=artifacts"],
            "minio.enabled=false needs externalS3.accessKeyId and externalS3.secretAccessKey",
        ),
        (["urza.enabled=false"], "urza.enabled=false needs urza.url"),
        (
            ["redis.enabled=false", "externalRedis.url=http://redis:6379"],
            "externalRedis.url must be a redis:// or rediss:// URL",
        ),
    ],
)
def test_incomplete_external_services_are_refused(
    helm: Helm, settings: list[str], message: str
) -> None:
    args = [arg for setting in settings for arg in ("--set", setting)]
    assert message in helm.refusal(*args)


def test_external_services_from_values(helm: Helm) -> None:
    database = "postgresql+psycopg://esper:pw@db.internal:5432/esper"
    docs = helm.template(
        *("--set", "postgresql.enabled=false", "--set", f"externalDatabase.url={database}"),
        *("--set", "minio.enabled=false", "--set", "externalS3.bucket=artifacts"),
        *("--set", "externalS3.accessKeyId=id", "--set", "externalS3.secretAccessKey=key"),
        *("--set", "redis.enabled=false", "--set", "externalRedis.url=rediss://redis:6380/1"),
    )
    assert secret_text(named(docs, "Secret", f"{RELEASE}-database"), "url") == database
    s3 = named(docs, "Secret", f"{RELEASE}-s3")
    assert (secret_text(s3, "accessKeyId"), secret_text(s3, "secretAccessKey")) == ("id", "key")
    assert operator_env(docs)["ESPER_OPERATOR_BUS_URL"] == "rediss://redis:6380/1"
    assert of_kind(docs, "StatefulSet") == []


# Secrets ----------------------------------------------------------------------------------------


def urza_token(docs: list[Manifest]) -> str:
    return secret_text(named(docs, "Secret", f"{RELEASE}-urza-token"), "token")


def worker_tokens(docs: list[Manifest]) -> dict[str, str]:
    secrets = [doc for doc in of_kind(docs, "Secret") if name_of(doc) == "esper-worker-token"]
    return {str(at(doc, "metadata", "namespace")): secret_text(doc, "token") for doc in secrets}


def test_a_generated_token_is_new_per_install_and_shared(helm: Helm) -> None:
    first, second = helm.template(), helm.template()
    assert urza_token(first) != urza_token(second)
    for docs in (first, second):
        token = urza_token(docs)
        assert len(token) == 40
        assert token.isalnum()
        assert worker_tokens(docs) == {NAMESPACE: token}


def test_a_given_token_reaches_every_worker_namespace(helm: Helm) -> None:
    docs = helm.template(
        "--set", "auth.token=abc", "--set", "workers.namespaces={team-a,team-b,team-a}"
    )
    assert urza_token(docs) == "abc"
    assert worker_tokens(docs) == {"team-a": "abc", "team-b": "abc"}
    accounts = [doc for doc in of_kind(docs, "ServiceAccount") if name_of(doc) == "esper-worker"]
    assert sorted(str(at(doc, "metadata", "namespace")) for doc in accounts) == [
        "team-a",
        "team-b",
    ]


def test_an_existing_token_secret_is_mounted_not_rendered(helm: Helm) -> None:
    docs = helm.template("--set", "auth.existingSecret=shared-token")
    assert [doc for doc in of_kind(docs, "Secret") if "token" in mapping(doc["data"])] == []
    for deployment in of_kind(docs, "Deployment"):
        assert "shared-token" in secret_volumes(deployment), name_of(deployment)


def signing_keys(docs: list[Manifest]) -> dict[str, dict[str, str]]:
    secrets = [doc for doc in of_kind(docs, "Secret") if name_of(doc) == "esper-signing-keys"]
    return {
        str(at(doc, "metadata", "namespace")): {
            str(key): secret_text(doc, str(key)) for key in mapping(doc["data"])
        }
        for doc in secrets
    }


def test_a_generated_signing_key_is_kept_in_the_release_and_shared(helm: Helm) -> None:
    docs = helm.template("--set", "workers.namespaces={team-a,team-b}")
    key = secret_text(named(docs, "Secret", f"{RELEASE}-signing"), "k1")
    assert len(key) >= 32
    assert signing_keys(docs) == {"team-a": {"k1": key}, "team-b": {"k1": key}}
    env = operator_env(docs)
    assert env["ESPER_OPERATOR_WORKER_SIGNING_SECRET"] == "esper-signing-keys"
    assert env["ESPER_OPERATOR_WORKER_SIGNING_KEY_ID"] == "k1"


def test_an_existing_signing_secret_is_named_not_rendered(helm: Helm) -> None:
    docs = helm.template(
        "--set", "signing.existingSecret=team-keys", "--set", "signing.keyId=2026b"
    )
    assert signing_keys(docs) == {}
    assert [doc for doc in of_kind(docs, "Secret") if name_of(doc).endswith("-signing")] == []
    env = operator_env(docs)
    assert env["ESPER_OPERATOR_WORKER_SIGNING_SECRET"] == "team-keys"
    assert env["ESPER_OPERATOR_WORKER_SIGNING_KEY_ID"] == "2026b"


# NetworkPolicies and the ServiceMonitor ---------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "components"),
    [
        ([], set()),
        (["--set", "networkPolicies.enabled=true"], {"urza", "postgresql", "redis", "minio"}),
        (values_args("gpu-cluster"), {"urza"}),
        (
            [
                *("--set", "networkPolicies.enabled=true", "--set", "redis.enabled=false"),
                *("--set", "minio.enabled=false", "--set", "externalS3.existingSecret=s3"),
                *("--set", "externalS3.bucket=artifacts"),
            ],
            {"urza", "postgresql"},
        ),
    ],
)
def test_network_policies_cover_the_enabled_components(
    helm: Helm, args: list[str], components: set[str]
) -> None:
    policies = of_kind(helm.template(*args), "NetworkPolicy")
    assert {name_of(policy) for policy in policies} == {
        f"{RELEASE}-{component}" for component in components
    }


def worker_pod_labels() -> list[Manifest]:
    return [dict(names.labels(role, "uid-1", gpu=False)) for role in names.Role]


def peer_selects_pods(peer: Manifest, pods: list[Manifest]) -> bool:
    selector = mapping(at(peer, "podSelector", "matchLabels"))
    if "namespaceSelector" in peer:
        (expression,) = items(at(peer, "namespaceSelector", "matchExpressions"))
        assert expression["values"] == [NAMESPACE]
        pods = worker_pod_labels()
    return any(is_subset(selector, labels) for labels in pods)


def test_network_policies_select_pods_that_exist(helm: Helm) -> None:
    docs = helm.template("--set", "networkPolicies.enabled=true")
    pods = labels_of_pods(docs)
    for policy in of_kind(docs, "NetworkPolicy"):
        selector = mapping(at(policy, "spec", "podSelector", "matchLabels"))
        assert any(is_subset(selector, labels) for labels in pods), name_of(policy)
        for rule in items(at(policy, "spec", "ingress")):
            for peer in items(rule["from"]):
                assert peer_selects_pods(peer, pods), (name_of(policy), peer)


def test_service_monitor_only_when_enabled(helm: Helm, renders: dict[str, list[Manifest]]) -> None:
    assert of_kind(renders["default"], "ServiceMonitor") == []
    (monitor,) = of_kind(renders["gpu-cluster"], "ServiceMonitor")
    assert mapping(at(monitor, "metadata", "labels"))["release"] == "prometheus"
    (endpoint,) = items(at(monitor, "spec", "endpoints"))
    assert (endpoint["port"], endpoint["path"]) == ("metrics", "/metrics")
    service = named(renders["gpu-cluster"], "Service", f"{RELEASE}-operator-metrics")
    selector = mapping(at(monitor, "spec", "selector", "matchLabels"))
    assert is_subset(selector, mapping(at(service, "metadata", "labels")))
    (enabled,) = of_kind(
        helm.template("--set", "operator.serviceMonitor.enabled=true"), "ServiceMonitor"
    )
    assert name_of(enabled) == f"{RELEASE}-operator"


# NOTES ------------------------------------------------------------------------------------------

NOTES_PROBE = """\
apiVersion: v1
kind: ConfigMap
metadata:
  name: notes-probe
data:
  notes: {{ include (printf "%s/templates/NOTES.txt" .Chart.Name) . | toJson }}
"""


@pytest.fixture(scope="module")
def notes_chart(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the chart that renders its NOTES.txt into a ConfigMap.

    helm prints NOTES only on install, and `helm install --dry-run=client` still asks a cluster
    for its version (helm v3.22), so the notes are rendered as an ordinary template instead.
    """
    chart = tmp_path_factory.mktemp("notes") / "esper"
    shutil.copytree(CHART, chart)
    (chart / "templates" / "notes-probe.yaml").write_text(NOTES_PROBE, encoding="utf-8")
    return chart


def render_notes(helm: Helm, chart: Path, *args: str) -> str:
    docs = helm.template("--show-only", "templates/notes-probe.yaml", *args, chart=chart)
    (probe,) = docs
    return str(at(probe, "data", "notes"))


@pytest.mark.parametrize("values", list(VALUES_FILES))
def test_notes_name_the_examples_and_namespaces(helm: Helm, notes_chart: Path, values: str) -> None:
    notes = render_notes(helm, notes_chart, *values_args(values))
    assert f"namespace {NAMESPACE}" in notes
    namespaces = worker_namespaces(values)
    assert ", ".join(namespaces) in notes
    assert f"kubectl -n {namespaces[0]} apply -f examples/blueprints/residual-mlp.yaml" in notes
    mentioned = re.findall(r"examples/[\w./-]+\.yaml", notes)
    assert "examples/runs/mnist1d-quick.yaml" in mentioned
    assert [path for path in mentioned if not (REPO / path).is_file()] == []
