"""Deterministic names and labels of the objects the operator creates.

A name is derived only from what the object is for (the owning resource, the blueprint hash,
the target), never from time or chance, so a restarted operator that repeats a step finds the
object it created before (409 AlreadyExists) instead of creating a duplicate.
"""

import hashlib
import re
from enum import StrEnum

from esper.contracts.crd import GROUP
from esper_operator import OPERATOR_NAME

MAX_LABEL_NAME = 63
"""Job names become pod labels, so they must fit a label value (63 characters)."""

MANAGED_BY = "app.kubernetes.io/managed-by"
PART_OF = "app.kubernetes.io/part-of"
ROLE = f"{GROUP}/role"
GPU = f"{GROUP}/gpu"
OWNER_UID = f"{GROUP}/owner-uid"
BLUEPRINT_ANNOTATION = f"{GROUP}/blueprint"
RUN_ANNOTATION = f"{GROUP}/run"
KERNEL_ANNOTATION = f"{GROUP}/kernel-id"
BLUEPRINT_HASH_ANNOTATION = f"{GROUP}/blueprint-hash"
DESIGNS_ANNOTATION = f"{GROUP}/blueprint-hashes"
"""On a Blueprint: every design hash it registered in Urza, comma-separated, oldest first."""

MANAGED_SELECTOR = f"{MANAGED_BY}={OPERATOR_NAME}"
"""Label selector of everything the operator created."""


class Role(StrEnum):
    """What a Job does."""

    COMPILE = "compile"
    BENCHMARK = "benchmark"
    TRAINING = "training"


def _slug(text: str, length: int) -> str:
    slug = re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-")
    return slug[:length].rstrip("-") or "x"


def _digest(*parts: str) -> str:
    return hashlib.sha256("\x1f".join(parts).encode("utf-8")).hexdigest()[:10]


def _name(prefix: str, readable: str, *identity: str) -> str:
    digest = _digest(*identity)
    room = MAX_LABEL_NAME - len(prefix) - len(digest) - 2
    return f"{prefix}-{_slug(readable, room)}-{digest}"


def kernel_artifact_name(blueprint: str, blueprint_hash: str, target: str) -> str:
    """Return the ``KernelArtifact`` name of a blueprint's kernel for one target.

    Args:
        blueprint: The ``Blueprint`` resource's name.
        blueprint_hash: The blueprint's canonical hash (a new spec gives new names).
        target: The target's short form.

    Returns:
        A DNS-1123 label.
    """
    return _name("ka", blueprint, blueprint, blueprint_hash, target)


def compile_job_name(blueprint: str, blueprint_hash: str, target: str) -> str:
    """Return the compile Job's name of a blueprint's kernel for one target.

    Args:
        blueprint: The ``Blueprint`` resource's name.
        blueprint_hash: The blueprint's canonical hash.
        target: The target's short form.

    Returns:
        A DNS-1123 label of at most 63 characters.
    """
    return _name("compile", blueprint, blueprint, blueprint_hash, target)


def benchmark_job_name(blueprint: str, blueprint_hash: str, target: str) -> str:
    """Return the benchmark Job's name of a blueprint's kernel for one target.

    Args:
        blueprint: The ``Blueprint`` resource's name.
        blueprint_hash: The blueprint's canonical hash.
        target: The target's short form.

    Returns:
        A DNS-1123 label of at most 63 characters.
    """
    return _name("bench", blueprint, blueprint, blueprint_hash, target)


def training_job_name(run: str, uid: str) -> str:
    """Return the training Job's name of a ``MorphogeneticRun``.

    Args:
        run: The run's name.
        uid: The run's uid (a run deleted and applied again is a new run).

    Returns:
        A DNS-1123 label of at most 63 characters.
    """
    return _name("train", run, run, uid)


def run_spec_config_map_name(run: str, uid: str) -> str:
    """Return the name of the ConfigMap holding a run's spec.

    Args:
        run: The run's name.
        uid: The run's uid.

    Returns:
        A DNS-1123 label.
    """
    return _name("run-spec", run, run, uid)


def run_id(namespace: str, name: str) -> str:
    """Return the id a training run publishes its events under.

    Args:
        namespace: The run's namespace.
        name: The run's name.

    Returns:
        ``namespace.name`` (both DNS labels, so the id is unambiguous).
    """
    return f"{namespace}.{name}"


def labels(role: Role, owner_uid: str, *, gpu: bool) -> dict[str, str]:
    """Return the labels of a Job the operator creates.

    Args:
        role: What the Job does.
        owner_uid: The uid of the resource it works for.
        gpu: Whether it requests GPUs (counted against the GPU Job cap).

    Returns:
        The labels.
    """
    return {
        MANAGED_BY: OPERATOR_NAME,
        PART_OF: "esper",
        ROLE: role.value,
        GPU: "true" if gpu else "false",
        OWNER_UID: owner_uid,
    }
