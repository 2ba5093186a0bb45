"""The bodies of the objects the operator creates: Jobs, KernelArtifacts, run ConfigMaps.

Pure functions from settings and resources to Kubernetes manifests (plain dicts, as the API
speaks them), so every field a cluster admin can tune is visible in one place.
"""

from dataclasses import dataclass

from esper.contracts.crd import GROUP, VERSION
from esper.contracts.kernel import DeviceKind, KernelTarget
from esper.contracts.run import MorphogeneticRunSpec
from esper_operator import names
from esper_operator.settings import GPU_RESOURCE, JsonObject, OperatorSettings

RUN_SPEC_DIRECTORY = "/etc/esper/run"
"""Where a training pod finds its run spec (a ConfigMap volume)."""

RUN_SPEC_FILE = "run.yaml"
"""The spec's file name inside that directory."""

RUN_OUTPUT_DIRECTORY = "/var/lib/esper/run"
"""The training pod's run directory (an emptyDir: the report and checkpoints)."""

SIGNING_KEYS_PATH = "/etc/esper/signing-keys"
"""Where Job pods mount the signing keys' Secret (``ESPER_SIGNING_KEY_DIR``)."""


@dataclass(frozen=True)
class Owner:
    """The resource an object belongs to (its ownerReference and garbage-collection parent).

    Attributes:
        api_version: ``esper.dev/v1alpha1``.
        kind: The owner's kind.
        name: The owner's name.
        uid: The owner's uid.
        namespace: The owner's namespace (owned objects live there too).
    """

    api_version: str
    kind: str
    name: str
    uid: str
    namespace: str

    def reference(self) -> JsonObject:
        """Return the ownerReference pointing at this owner.

        Returns:
            A controller reference that blocks the owner's deletion until the object is gone.
        """
        return {
            "apiVersion": self.api_version,
            "kind": self.kind,
            "name": self.name,
            "uid": self.uid,
            "controller": True,
            "blockOwnerDeletion": True,
        }


def esper_owner(kind: str, body: JsonObject) -> Owner:
    """Return the owner description of one of Esper's resources.

    Args:
        kind: Its kind.
        body: Its object (``metadata`` with name, uid and namespace).

    Returns:
        The owner.
    """
    metadata = _mapping(body, "metadata")
    return Owner(
        api_version=f"{GROUP}/{VERSION}",
        kind=kind,
        name=str(metadata["name"]),
        uid=str(metadata["uid"]),
        namespace=str(metadata["namespace"]),
    )


def _mapping(body: JsonObject, key: str) -> JsonObject:
    value = body.get(key)
    if not isinstance(value, dict):
        raise ValueError(f"object has no '{key}' mapping")
    return value


def _worker_env(settings: OperatorSettings) -> list[JsonObject]:
    env: list[JsonObject] = [
        {"name": "ESPER_URZA_URL", "value": settings.urza_url_for_workers()},
        {"name": "ESPER_WORKER_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "PYTHONUNBUFFERED", "value": "1"},
    ]
    if settings.worker_token_secret:
        env.append(
            {
                "name": "ESPER_URZA_TOKEN",
                "valueFrom": {
                    "secretKeyRef": {"name": settings.worker_token_secret, "key": "token"}
                },
            }
        )
    if settings.worker_signing_secret:
        env.append({"name": "ESPER_SIGNING_KEY_DIR", "value": SIGNING_KEYS_PATH})
        env.append({"name": "ESPER_SIGNING_KEY_ID", "value": settings.worker_signing_key_id})
    else:
        # Said, not implied: without the cluster's keys a pod would sign with a key of its own
        # that no other pod holds.
        env.append({"name": "ESPER_SIGNING_MODE", "value": "off"})
    return env


def _signing_volumes(settings: OperatorSettings) -> tuple[list[JsonObject], list[JsonObject]]:
    if not settings.worker_signing_secret:
        return [], []
    volume: JsonObject = {
        "name": "signing-keys",
        "secret": {"secretName": settings.worker_signing_secret, "defaultMode": 0o440},
    }
    mount: JsonObject = {"name": "signing-keys", "mountPath": SIGNING_KEYS_PATH, "readOnly": True}
    return [volume], [mount]


def _resources(base: JsonObject, gpus: int) -> JsonObject:
    resources: JsonObject = {key: dict(value) for key, value in _sections(base).items()}
    if gpus:
        for section in ("limits", "requests"):
            resources.setdefault(section, {})
            bucket = resources[section]
            if isinstance(bucket, dict):
                bucket[GPU_RESOURCE] = str(gpus)
    return resources


def _sections(base: JsonObject) -> dict[str, JsonObject]:
    sections: dict[str, JsonObject] = {}
    for key, value in base.items():
        if not isinstance(value, dict):
            raise ValueError(f"resources.{key} must be a mapping, not {value!r}")
        sections[key] = value
    return sections


def _job(
    *,
    name: str,
    owner: Owner,
    role: names.Role,
    args: list[str],
    settings: OperatorSettings,
    resources: JsonObject,
    gpus: int,
    annotations: dict[str, str],
    env: list[JsonObject] | None = None,
    volumes: list[JsonObject] | None = None,
    mounts: list[JsonObject] | None = None,
) -> JsonObject:
    labels = names.labels(role, owner.uid, gpu=gpus > 0)
    signing_volumes, signing_mounts = _signing_volumes(settings)
    pod_spec: JsonObject = {
        "restartPolicy": "Never",
        "serviceAccountName": settings.worker_service_account,
        # Workers talk to Urza, never to the Kubernetes API: no token in their pods.
        "automountServiceAccountToken": False,
        "securityContext": {"runAsNonRoot": True, "runAsUser": 1000, "runAsGroup": 1000},
        "containers": [
            {
                "name": role.value,
                "image": settings.image,
                "imagePullPolicy": settings.image_pull_policy,
                "command": ["esper"],
                "args": args,
                "env": _worker_env(settings) + (env or []),
                "resources": _resources(resources, gpus),
                "terminationMessagePolicy": "FallbackToLogsOnError",
                "securityContext": {
                    "allowPrivilegeEscalation": False,
                    "readOnlyRootFilesystem": True,
                    "capabilities": {"drop": ["ALL"]},
                },
                "volumeMounts": [
                    {"name": "tmp", "mountPath": "/tmp"},
                    *signing_mounts,
                    *(mounts or []),
                ],
            }
        ],
        "volumes": [{"name": "tmp", "emptyDir": {}}, *signing_volumes, *(volumes or [])],
    }
    if gpus:
        pod_spec["nodeSelector"] = dict(settings.gpu_node_selector)
        pod_spec["tolerations"] = [dict(item) for item in settings.gpu_tolerations]
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": name,
            "namespace": owner.namespace,
            "labels": labels,
            "annotations": annotations,
            "ownerReferences": [owner.reference()],
        },
        "spec": {
            "backoffLimit": settings.job_backoff_limit,
            "template": {"metadata": {"labels": labels}, "spec": pod_spec},
        },
    }


def gpu_count(target: KernelTarget) -> int:
    """Return how many GPUs a compile or benchmark Job of a target requests.

    Args:
        target: The kernel target.

    Returns:
        1 for a CUDA target, 0 for a CPU one.
    """
    return 1 if target.device is DeviceKind.CUDA else 0


def compile_job(
    owner: Owner,
    blueprint_hash: str,
    target: KernelTarget,
    settings: OperatorSettings,
) -> JsonObject:
    """Return the Tezzeret compile Job of a blueprint's kernel for one target.

    Args:
        owner: The ``Blueprint``.
        blueprint_hash: The blueprint's hash in Urza.
        target: The compile target (a CUDA target requests one GPU).
        settings: Image, resources and scheduling.

    Returns:
        The Job manifest.
    """
    short = target.short()
    args = ["tezzeret", "compile", "--blueprint", blueprint_hash, "--target", short]
    if not settings.compile_cache:
        args.append("--no-compile-cache")
    return _job(
        name=names.compile_job_name(owner.name, blueprint_hash, short),
        owner=owner,
        role=names.Role.COMPILE,
        args=args,
        settings=settings,
        resources=settings.compile_resources,
        gpus=gpu_count(target),
        annotations={
            names.BLUEPRINT_ANNOTATION: owner.name,
            names.BLUEPRINT_HASH_ANNOTATION: blueprint_hash,
        },
    )


def benchmark_job(
    owner: Owner,
    blueprint: str,
    blueprint_hash: str,
    kernel_id: str,
    target: KernelTarget,
    *,
    settings: OperatorSettings,
) -> JsonObject:
    """Return the Urabrask benchmark Job of a compiled kernel.

    Args:
        owner: The ``KernelArtifact``.
        blueprint: The ``Blueprint`` resource's name.
        blueprint_hash: The blueprint's hash.
        kernel_id: The kernel's id in Urza.
        target: Its target (a CUDA target requests one GPU).
        settings: Image, resources and scheduling.

    Returns:
        The Job manifest.
    """
    return _job(
        name=names.benchmark_job_name(blueprint, blueprint_hash, target.short()),
        owner=owner,
        role=names.Role.BENCHMARK,
        args=["urabrask", "bench", "--kernel", kernel_id],
        settings=settings,
        resources=settings.benchmark_resources,
        gpus=gpu_count(target),
        annotations={
            names.BLUEPRINT_ANNOTATION: blueprint,
            names.BLUEPRINT_HASH_ANNOTATION: blueprint_hash,
            names.KERNEL_ANNOTATION: kernel_id,
        },
    )


def kernel_artifact(
    owner: Owner, blueprint_hash: str, target: KernelTarget, kernel_id: str
) -> JsonObject:
    """Return the ``KernelArtifact`` of a blueprint's compiled kernel.

    Args:
        owner: The ``Blueprint``.
        blueprint_hash: The blueprint's hash.
        target: The kernel's target.
        kernel_id: Its id in Urza.

    Returns:
        The resource's manifest (its status is written separately).
    """
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "KernelArtifact",
        "metadata": {
            "name": names.kernel_artifact_name(owner.name, blueprint_hash, target.short()),
            "namespace": owner.namespace,
            "labels": {
                names.MANAGED_BY: names.OPERATOR_NAME,
                names.PART_OF: "esper",
                names.OWNER_UID: owner.uid,
            },
            "annotations": {names.KERNEL_ANNOTATION: kernel_id},
            "ownerReferences": [owner.reference()],
        },
        "spec": {
            "blueprintName": owner.name,
            "blueprintHash": blueprint_hash,
            "target": target.model_dump(mode="json", by_alias=True),
        },
    }


def run_spec_config_map(owner: Owner, spec: MorphogeneticRunSpec) -> JsonObject:
    """Return the ConfigMap that hands a run's spec to its training pod.

    Args:
        owner: The ``MorphogeneticRun``.
        spec: Its validated spec.

    Returns:
        The ConfigMap manifest (the spec as JSON, which is YAML too).
    """
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": names.run_spec_config_map_name(owner.name, owner.uid),
            "namespace": owner.namespace,
            "labels": {
                names.MANAGED_BY: names.OPERATOR_NAME,
                names.PART_OF: "esper",
                names.OWNER_UID: owner.uid,
            },
            "ownerReferences": [owner.reference()],
        },
        "data": {RUN_SPEC_FILE: spec.to_json() + "\n"},
    }


def training_job(
    owner: Owner, spec: MorphogeneticRunSpec, settings: OperatorSettings
) -> JsonObject:
    """Return the training Job of a ``MorphogeneticRun`` (``esper run`` against the cluster).

    Args:
        owner: The run.
        spec: Its spec (``device: cuda`` requests one GPU).
        settings: Image, resources, scheduling, Urza and Oona addresses.

    Returns:
        The Job manifest.
    """
    args = [
        "run",
        f"{RUN_SPEC_DIRECTORY}/{RUN_SPEC_FILE}",
        "--out",
        RUN_OUTPUT_DIRECTORY,
        "--run-id",
        names.run_id(owner.namespace, owner.name),
        "--urza",
        settings.urza_url_for_workers(),
    ]
    bus_url = settings.bus_url_for_workers()
    if bus_url is not None:
        args += ["--bus", bus_url]
    return _job(
        name=names.training_job_name(owner.name, owner.uid),
        owner=owner,
        role=names.Role.TRAINING,
        args=args,
        settings=settings,
        resources=settings.training_resources,
        gpus=1 if spec.device == "cuda" else 0,
        annotations={names.RUN_ANNOTATION: owner.name},
        # The training pod keeps its datasets and compile caches in its own writable home.
        env=[{"name": "ESPER_HOME", "value": "/var/lib/esper/home"}],
        volumes=[
            {
                "name": "spec",
                "configMap": {"name": names.run_spec_config_map_name(owner.name, owner.uid)},
            },
            {"name": "run", "emptyDir": {}},
            {"name": "home", "emptyDir": {}},
        ],
        mounts=[
            {"name": "spec", "mountPath": RUN_SPEC_DIRECTORY, "readOnly": True},
            {"name": "run", "mountPath": RUN_OUTPUT_DIRECTORY},
            {"name": "home", "mountPath": "/var/lib/esper/home"},
        ],
    )
