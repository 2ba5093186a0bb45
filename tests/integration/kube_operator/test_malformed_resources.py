"""Malformed custom resources against the real API server, with the operator running (issue 10).

Two gates stand between a manifest and a Job. The API server checks the CRD's structural schema
(generated from ``esper.contracts``): types, required fields, enums, patterns, bounds, unknown
fields. It answers 422 Unprocessable Entity naming the field, and the object never exists, so
the operator never sees it. What the schema cannot express (cross-field rules, graph
consistency, free-form ``kwargs``, parameters that depend on the op) passes the API server and
is judged by the operator against the Pydantic contract: a Blueprint becomes ``Invalid`` and a
MorphogeneticRun ``Failed``, both with ``Valid=False`` reason ``InvalidSpec`` naming the
problem, and nothing is created for them. Hypothesis mutations of valid specs check that every
manifest lands in one of those two outcomes or is reconciled normally, never in a crash loop.

Real parts only: kube-apiserver and etcd, the Job controller, the scheduler, the stand-in
kubelet, Urza on PostgreSQL and the S3 server, and the operator as a process with its own
ServiceAccount.
"""

from __future__ import annotations

import copy
import json
import re
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from esper.contracts.crd import BlueprintResourceSpec
from esper.contracts.run import MorphogeneticRunSpec
from tests.integration.kube_operator.conftest import OperatorFactory
from tests.integration.kube_operator.support import (
    OperatorProcess,
    apply_manifest,
    blueprint_manifest,
    conditions_of,
    cpu_target,
    cuda_target,
    items,
    job_roles,
    jobs,
    kube_json,
    labels_of,
    log_messages,
    name_of,
    phase_of,
    status_of,
    uid_of,
    wait_for,
    wait_for_phase,
)
from tests.integration.phase1.support import RunningUrza
from tests.servers.kube import ControlPlane
from tests.support.reliability import note_inputs, note_served

pytestmark = [pytest.mark.timeout(900), pytest.mark.reliability("malformed-resources")]

Manifest = dict[str, object]
Mutation = Callable[[Manifest], None]

MANAGED_BY = "app.kubernetes.io/managed-by=esper-operator"
KOPF_CRASH = ("failed with an exception", "failed permanently")
"""What kopf logs when a handler raises something other than its temporary error."""
STATUS_LINE = re.compile(r'verb="(?:POST|PATCH|PUT)" url="[^"]*" status="(?P<code>\d{3})')
"""A request line of ``kubectl -v=6``: the method, the URL and the HTTP status."""


def run_manifest(name: str, **spec_overrides: object) -> Manifest:
    """Return a valid MorphogeneticRun: a small MLP on MNIST-1D, grown on the GPU.

    ``device: cuda`` keeps a valid run's training Job behind the GPU cap instead of training
    on this machine's two shared cores.

    Args:
        name: The resource's name.
        **spec_overrides: Top-level spec fields to replace.

    Returns:
        The manifest.
    """
    spec: dict[str, object] = {
        "host": {"zoo": "mlp", "kwargs": {"hidden": 32, "depth": 2}},
        "dataset": {"name": "mnist1d", "batchSize": 128, "validationFraction": 0.1},
        "budget": {"maxAddedParams": 20000, "maxSeeds": 1},
        "policy": {"kind": "heuristic", "decisionIntervalSteps": 10},
        "schedule": {"epochs": 1, "learningRate": 0.003, "optimizer": "adamw"},
        "injection": {"moduleTypes": ["MLPBlock"]},
        "device": "cuda",
        "seed": 0,
        **spec_overrides,
    }
    return {
        "apiVersion": "esper.dev/v1alpha1",
        "kind": "MorphogeneticRun",
        "metadata": {"name": name},
        "spec": spec,
    }


def _at(manifest: Manifest, path: str) -> dict[str, object]:
    """Return the mapping at a dotted path under the manifest (``spec.ir.nodes.1``)."""
    current: object = manifest
    for part in path.split("."):
        current = current[int(part)] if isinstance(current, list) else current[part]  # type: ignore[index]
    assert isinstance(current, dict), path
    return current


def _set(path: str, key: str, value: object) -> Mutation:
    def mutate(manifest: Manifest) -> None:
        _at(manifest, path)[key] = value

    return mutate


def _drop(path: str, key: str) -> Mutation:
    def mutate(manifest: Manifest) -> None:
        del _at(manifest, path)[key]

    return mutate


def kubectl_apply(
    plane: ControlPlane, namespace: str, manifest: Manifest, *validate: str
) -> tuple[int, str]:
    """``kubectl apply`` with request logging; return the HTTP status of the write and stderr.

    Args:
        plane: The control plane.
        namespace: The namespace.
        manifest: The object.
        *validate: Extra kubectl flags (``--validate=false``).

    Returns:
        The status code of the create (or patch) request, and kubectl's standard error.
    """
    note_inputs()
    result = plane.kubectl(
        "apply",
        "-v=6",
        *validate,
        "-n",
        namespace,
        "-f",
        "-",
        input=json.dumps(manifest),
        check=False,
    )
    codes = [int(match.group("code")) for match in STATUS_LINE.finditer(result.stderr)]
    note_served(len(codes))
    assert codes, result.stderr
    return codes[-1], result.stderr


# 1. What the API server refuses ---------------------------------------------------------------


@dataclass(frozen=True)
class SchemaCase:
    """A manifest the CRD schema refuses.

    Attributes:
        kind: ``blueprint`` or ``run``.
        mutate: What breaks the valid manifest.
        message: A regular expression the API server's message must match (with the field).
    """

    kind: str
    mutate: Mutation
    message: str


def _too_many_targets(manifest: Manifest) -> None:
    _at(manifest, "spec")["targets"] = [cpu_target(32)] * 17


SCHEMA_CASES: dict[str, SchemaCase] = {
    # Blueprints: patterns, bounds, enums, required fields, cardinalities.
    "bp-name-pattern": SchemaCase(
        "blueprint",
        _set("spec.ir", "name", "Not_A_Label"),
        r'spec\.ir\.name: Invalid value: "Not_A_Label": spec\.ir\.name in body should match',
    ),
    "bp-node-id-pattern": SchemaCase(
        "blueprint",
        _set("spec.ir.nodes.0", "id", "Down"),
        r'spec\.ir\.nodes\[0\]\.id: Invalid value: "Down": .*should match',
    ),
    "bp-no-nodes": SchemaCase(
        "blueprint",
        _set("spec.ir", "nodes", []),
        r"spec\.ir\.nodes: Invalid value: 0: .*should have at least 1 items",
    ),
    "bp-too-many-targets": SchemaCase(
        "blueprint",
        _too_many_targets,
        r"spec\.targets: Too many: 17: must have at most 16 items",
    ),
    "bp-missing-targets": SchemaCase(
        "blueprint", _drop("spec", "targets"), r"spec\.targets: Required value"
    ),
    "bp-batch-size-zero": SchemaCase(
        "blueprint",
        _set("spec.targets.0", "batchSizes", [0]),
        r"spec\.targets\[0\]\.batchSizes\[0\]: Invalid value: 0: .*greater than or equal to 1",
    ),
    "bp-binding-too-large": SchemaCase(
        "blueprint",
        _set("spec.targets.0", "bindings", {"C": 2_000_000}),
        r"spec\.targets\[0\]\.bindings\.C: Invalid value: 2000000: "
        r".*less than or equal to 1048576",
    ),
    "bp-dtype-enum": SchemaCase(
        "blueprint",
        _set("spec.targets.0", "dtype", "fp64"),
        r'spec\.targets\[0\]\.dtype: Unsupported value: "fp64"',
    ),
    "bp-capability-pattern": SchemaCase(
        "blueprint",
        _set("spec.targets.0", "computeCapability", "nine"),
        r'spec\.targets\[0\]\.computeCapability: Invalid value: "nine": .*should match',
    ),
    "bp-dropout-out-of-bounds": SchemaCase(
        "blueprint",
        _set("spec.ir.nodes.1", "params", {"p": 0.95}),
        r"spec\.ir\.nodes\[1\]\.params\.p: Invalid value: 0\.95: .*less than or equal to 0\.9",
    ),
    "bp-init-enum": SchemaCase(
        "blueprint",
        _set("spec.ir.nodes.2.params", "init", "ones"),
        r'spec\.ir\.nodes\[2\]\.params\.init: Unsupported value: "ones"',
    ),
    # Runs: types, bounds (inclusive and exclusive), enums, required sections.
    "run-epochs-string": SchemaCase(
        "run",
        _set("spec.schedule", "epochs", "ten"),
        r'spec\.schedule\.epochs: Invalid value: "string": .*must be of type integer',
    ),
    "run-learning-rate-zero": SchemaCase(
        "run",
        _set("spec.schedule", "learningRate", 0),
        r"spec\.schedule\.learningRate: Invalid value: 0: .*should be greater than 0",
    ),
    "run-validation-fraction-high": SchemaCase(
        "run",
        _set("spec.dataset", "validationFraction", 0.75),
        r"spec\.dataset\.validationFraction: Invalid value: 0\.75: "
        r".*less than or equal to 0\.5",
    ),
    "run-dataset-enum": SchemaCase(
        "run",
        _set("spec.dataset", "name", "cifar10"),
        r'spec\.dataset\.name: Unsupported value: "cifar10"',
    ),
    "run-zoo-pattern": SchemaCase(
        "run",
        _set("spec.host", "zoo", "MLP"),
        r'spec\.host\.zoo: Invalid value: "MLP": .*should match',
    ),
    "run-seed-negative": SchemaCase(
        "run",
        _set("spec", "seed", -1),
        r"spec\.seed: Invalid value: -1: .*greater than or equal to 0",
    ),
    "run-missing-injection": SchemaCase(
        "run", _drop("spec", "injection"), r"spec\.injection: Required value"
    ),
    "run-missing-epochs": SchemaCase(
        "run", _drop("spec.schedule", "epochs"), r"spec\.schedule\.epochs: Required value"
    ),
    "run-empty-blueprint-name": SchemaCase(
        "run",
        _set("spec", "blueprints", [""]),
        r'spec\.blueprints\[0\]: Invalid value: "": .*at least 1 chars long',
    ),
}


def _schema_manifest(case: str) -> Manifest:
    spec = SCHEMA_CASES[case]
    name = f"bad-{case}"
    manifest = blueprint_manifest(name) if spec.kind == "blueprint" else run_manifest(name)
    spec.mutate(manifest)
    return manifest


@pytest.mark.parametrize("case", sorted(SCHEMA_CASES))
def test_api_server_refuses_what_the_schema_rejects_with_422_naming_the_field(
    control_plane: ControlPlane, kube_namespace: str, case: str
) -> None:
    manifest = _schema_manifest(case)

    code, stderr = kubectl_apply(control_plane, kube_namespace, manifest)

    assert code == 422, stderr
    kind = str(manifest["kind"])
    assert f'The {kind} "{name_of(manifest)}" is invalid: ' in stderr, stderr
    assert re.search(SCHEMA_CASES[case].message, stderr), stderr
    # Never stored, so no operator could ever be handed it.
    assert not items(control_plane, "blueprints,morphogeneticruns", "-n", kube_namespace)


def test_unknown_fields_are_refused_or_pruned_never_passed_on(
    control_plane: ControlPlane, kube_namespace: str
) -> None:
    manifest = blueprint_manifest("unknown-field")
    _at(manifest, "spec.ir")["colour"] = "blue"
    _at(manifest, "spec.targets.0")["threads"] = 4

    # kubectl asks for strict field validation: the API server names each unknown field.
    code, stderr = kubectl_apply(control_plane, kube_namespace, manifest)
    assert code == 400, stderr
    assert 'unknown field "spec.ir.colour"' in stderr, stderr
    assert 'unknown field "spec.targets[0].threads"' in stderr, stderr
    assert not items(control_plane, "blueprints", "-n", kube_namespace)

    # Without it the structural schema prunes them: what is stored is the valid design.
    code, stderr = kubectl_apply(control_plane, kube_namespace, manifest, "--validate=false")
    assert code == 201, stderr
    stored = kube_json(control_plane, "blueprint", "unknown-field", "-n", kube_namespace)
    assert "colour" not in _at(stored, "spec.ir")
    assert "threads" not in _at(stored, "spec.targets.0")
    BlueprintResourceSpec.model_validate(stored["spec"])


# 2. What the operator marks Invalid / Failed --------------------------------------------------


def _node(node_id: str, op: str, inputs: list[str], **params: object) -> dict[str, object]:
    node: dict[str, object] = {"id": node_id, "op": op, "inputs": inputs}
    if params:
        node["params"] = params
    return node


def _operator_blueprint_cases() -> dict[str, tuple[Manifest, str]]:
    """Blueprints the schema accepts and the contract refuses, with the message expected."""
    linear = _node("down", "linear", ["input"], outFeatures=16)
    zeroed = _node("up", "linear", ["down"], outFeatures="C", init="zeros")
    cases: dict[str, tuple[list[dict[str, object]], str, str]] = {
        # The schema's params object is the union of every op's fields; the op picks one model.
        "params-for-the-wrong-op": (
            [linear, _node("act", "relu", ["down"], outFeatures=4), {**zeroed, "inputs": ["act"]}],
            "up",
            "node 'act' (relu): invalid params: outFeatures: Extra inputs are not permitted",
        ),
        "duplicate-node-id": (
            [linear, _node("down", "relu", ["input"]), zeroed],
            "up",
            "node 'down': duplicate node id",
        ),
        "unknown-input": (
            [linear, {**zeroed, "inputs": ["nowhere"]}],
            "up",
            "node 'up': input 'nowhere' is neither a node nor 'input'",
        ),
        "output-not-a-node": ([linear, zeroed], "missing", "output 'missing' is not a node"),
        "cycle": (
            [{**linear, "inputs": ["up"]}, zeroed],
            "up",
            "nodes 'down', 'up': the graph has a cycle through these nodes",
        ),
        "dangling-node": (
            [linear, zeroed, _node("extra", "relu", ["input"])],
            "up",
            "node 'extra': dangling, its value never reaches the output",
        ),
        "arity": (
            [linear, {**zeroed, "inputs": ["down", "input"]}],
            "up",
            "node 'up' (linear): takes exactly 1 input, got 2",
        ),
        "lower-case-symbol": (
            [linear, {**zeroed, "params": {"outFeatures": "c", "init": "zeros"}}],
            "up",
            "node 'up' (linear): invalid params: outFeatures",
        ),
        "same-padding-with-stride": (
            [
                _node("conv", "conv2d", ["input"], outChannels="C", kernelSize=3, stride=2),
            ],
            "conv",
            "padding 'same' requires stride 1",
        ),
    }
    manifests: dict[str, tuple[Manifest, str]] = {}
    for name, (nodes, output, message) in cases.items():
        manifests[name] = (blueprint_manifest(name, nodes=nodes, output=output), message)
    rank = blueprint_manifest("layout-rank")
    _at(rank, "spec.ir")["input"] = {"layout": "features", "shape": ["C", 4]}
    manifests["layout-rank"] = (rank, "layout 'features' has 1 non-batch dimension(s)")
    unsorted = blueprint_manifest("unsorted-batches", targets=[cpu_target(32)])
    _at(unsorted, "spec.targets.0")["batchSizes"] = [8, 1]
    manifests["unsorted-batches"] = (unsorted, "batchSizes must be ascending and unique")
    capability = blueprint_manifest(
        "cpu-with-capability", targets=[{**cpu_target(32), "computeCapability": "9.0"}]
    )
    manifests["cpu-with-capability"] = (capability, "a cpu target takes no computeCapability")
    return manifests


def _operator_run_cases() -> dict[str, tuple[Manifest, str]]:
    """Runs the schema accepts and the contract refuses, with the message expected."""
    both = {"zoo": "mlp", "factory": "mypkg.models:build"}
    cases: dict[str, tuple[dict[str, object], str]] = {
        "host-zoo-and-factory": ({"host": both}, "host names exactly one of zoo or factory"),
        "host-neither": ({"host": {"kwargs": {}}}, "host names exactly one of zoo or factory"),
        # kwargs is free-form in the CRD (scalars of several types); the contract checks it.
        "kwargs-bad-name": ({"host": {"zoo": "mlp", "kwargs": {"Hidden": 32}}}, "host.kwargs"),
        "kwargs-list-value": (
            {"host": {"zoo": "mlp", "kwargs": {"hidden": [32, 64]}}},
            "host.kwargs.hidden",
        ),
        "checkpoint-not-gnn": (
            {"policy": {"kind": "heuristic", "checkpoint": "policy.pt"}},
            "checkpoint applies to the gnn policy, not 'heuristic'",
        ),
        "injection-selects-nothing": (
            {"injection": {}},
            "injection selects no module: give moduleGlobs or moduleTypes",
        ),
    }
    return {
        name: (run_manifest(name, **overrides), message)
        for name, (overrides, message) in cases.items()
    }


def _crashes(replica: OperatorProcess) -> list[str]:
    return [
        message
        for message in log_messages(replica)
        if any(marker in message for marker in KOPF_CRASH)
    ]


def _healthy(replica: OperatorProcess) -> bool:
    with urllib.request.urlopen(f"http://127.0.0.1:{replica.port}/healthz", timeout=5) as reply:
        return bool(reply.status == 200)


def _owned_by(resource: dict[str, object], owner_uid: str) -> bool:
    metadata = resource.get("metadata")
    references = metadata.get("ownerReferences") if isinstance(metadata, dict) else None
    return isinstance(references, list) and any(
        isinstance(item, dict) and item.get("uid") == owner_uid for item in references
    )


def _invalid_condition(resource: dict[str, object]) -> dict[str, object]:
    valid = conditions_of(resource)["Valid"]
    assert valid["status"] == "False", valid
    assert valid["reason"] == "InvalidSpec", valid
    return valid


def test_operator_marks_specs_the_contract_refuses_and_keeps_serving_valid_ones(
    control_plane: ControlPlane,
    operator_namespace: str,
    urza: RunningUrza,
    start_operator: OperatorFactory,
) -> None:
    namespace = operator_namespace
    operator = start_operator()
    blueprint_cases = _operator_blueprint_cases()
    run_cases = _operator_run_cases()
    for manifest, _ in [*blueprint_cases.values(), *run_cases.values()]:
        code, stderr = kubectl_apply(control_plane, namespace, manifest)
        assert code == 201, stderr  # the schema cannot see these problems

    for name, (_, message) in blueprint_cases.items():
        invalid = wait_for_phase(control_plane, namespace, name, "Invalid", timeout=120)
        valid = _invalid_condition(invalid)
        assert message in str(valid["message"]), (name, valid)
        assert conditions_of(invalid)["Ready"]["status"] == "False"
        assert status_of(invalid)["observedGeneration"] == 1
        assert "blueprintHash" not in status_of(invalid)
    for name, (_, message) in run_cases.items():
        failed = wait_for_phase(
            control_plane, namespace, name, "Failed", timeout=120, kind="morphogeneticrun"
        )
        valid = _invalid_condition(failed)
        assert message in str(valid["message"]), (name, valid)
        complete = conditions_of(failed)["Complete"]
        assert (complete["status"], complete["reason"]) == ("False", "InvalidSpec"), complete
        assert message in str(complete["message"]), complete
        assert "jobName" not in status_of(failed)

    # Nothing was created or registered for any of them: no Job, pod, ConfigMap or artifact.
    assert not items(control_plane, "jobs,pods,kernelartifacts", "-n", namespace)
    assert not items(control_plane, "configmaps", "-n", namespace, "-l", MANAGED_BY)
    client = urza.client()
    assert client.list_blueprints().items == []
    assert client.list_kernels().items == []

    # The operator still serves: a valid Blueprint applied after them goes all the way.
    apply_manifest(control_plane, namespace, blueprint_manifest("after-the-bad-ones"))
    ready = wait_for_phase(control_plane, namespace, "after-the-bad-ones", "Ready", timeout=600)
    assert status_of(ready)["kernelCount"] == 1
    assert job_roles(control_plane, namespace, "after-the-bad-ones") == ["benchmark", "compile"]
    # ... and the bad ones stayed as they were, without a Job of their own.
    for name in blueprint_cases:
        assert job_roles(control_plane, namespace, name) == []
        assert phase_of(kube_json(control_plane, "blueprint", name, "-n", namespace)) == "Invalid"
    for name in run_cases:
        run = kube_json(control_plane, "morphogeneticrun", name, "-n", namespace)
        assert phase_of(run) == "Failed"
    assert not jobs(control_plane, namespace, "training")
    assert operator.is_running
    assert _healthy(operator)
    assert _crashes(operator) == []


def test_a_rejected_run_and_blueprint_are_judged_again_when_their_spec_is_corrected(
    control_plane: ControlPlane,
    operator_namespace: str,
    start_operator: OperatorFactory,
) -> None:
    """Found by this file: a run Failed for its spec ignored a corrected spec (now fixed)."""
    namespace = operator_namespace
    start_operator()
    bad_run = run_manifest("corrected-run", host={"zoo": "mlp", "factory": "pkg.models:build"})
    bad_blueprint = blueprint_manifest("corrected-bp", output="missing")
    for manifest in (bad_run, bad_blueprint):
        apply_manifest(control_plane, namespace, manifest)
    wait_for_phase(
        control_plane, namespace, "corrected-run", "Failed", timeout=120, kind="morphogeneticrun"
    )
    wait_for_phase(control_plane, namespace, "corrected-bp", "Invalid", timeout=120)

    apply_manifest(control_plane, namespace, run_manifest("corrected-run"))
    apply_manifest(control_plane, namespace, blueprint_manifest("corrected-bp"))

    # The run's training Job (a GPU one, on the stand-in GPU node) exists, from generation 2.
    def started() -> dict[str, object] | None:
        run = kube_json(control_plane, "morphogeneticrun", "corrected-run", "-n", namespace)
        return run if status_of(run).get("jobName") and phase_of(run) != "Failed" else None

    run = wait_for(started, timeout=120, description="the corrected run to start")
    assert isinstance(run, dict)
    status = status_of(run)
    assert status["observedGeneration"] == 2
    conditions = conditions_of(run)
    assert conditions["Valid"]["status"] == "True"
    assert "Complete" not in conditions
    assert [name_of(job) for job in jobs(control_plane, namespace, "training")] == [
        status["jobName"]
    ]
    # The run's Job goes with the run (the fixture waits for the namespace's pods to be gone).
    control_plane.kubectl(
        "delete", "morphogeneticrun", "corrected-run", "-n", namespace, "--timeout=90s", timeout=120
    )

    # The Blueprint is still Invalid until the operator has seen generation 2.
    ready = wait_for_phase(
        control_plane, namespace, "corrected-bp", "Ready", timeout=600, fail_on=("Failed",)
    )
    assert conditions_of(ready)["Valid"]["status"] == "True"
    assert status_of(ready)["observedGeneration"] == 2


# 3. Hypothesis: mutations of valid specs --------------------------------------------------------

LEAF_VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.sampled_from([0, 1, -1, 2, 3, 8, 64, 2_000_000, 2**31, 10**16]),
    st.integers(min_value=-5, max_value=100),
    st.floats(allow_nan=False, allow_infinity=False, width=32),
    st.sampled_from(
        ["", "C", "c", "input", "down", "up", "zeros", "same", "cpu", "cuda", "9.0", "fp16"]
    ),
    st.text(alphabet="aZ_-.:9 ", max_size=8),
    st.just([]),
    st.just({}),
    st.just(["input", "input"]),
)


def _paths(value: object, prefix: tuple[str | int, ...] = ()) -> list[tuple[str | int, ...]]:
    """Every place inside a spec (dict keys and list items), parents before children."""
    found: list[tuple[str | int, ...]] = [prefix] if prefix else []
    if isinstance(value, dict):
        for key, item in value.items():
            found.extend(_paths(item, (*prefix, key)))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found.extend(_paths(item, (*prefix, index)))
    return found


@dataclass(frozen=True)
class SpecMutation:
    """One change to a valid spec.

    Attributes:
        path: Where, from the spec down.
        action: ``replace``, ``delete`` or ``add`` (a new key ``extra`` under the path).
        value: The new value (``replace``, ``add``).
    """

    path: tuple[str | int, ...]
    action: str
    value: object

    def apply(self, spec: dict[str, object]) -> dict[str, object]:
        """Return a mutated deep copy of the spec.

        Args:
            spec: The valid spec.

        Returns:
            The mutated copy.
        """
        mutated = copy.deepcopy(spec)
        parent: object = mutated
        for part in self.path[:-1]:
            parent = parent[part]  # type: ignore[index]
        last = self.path[-1]
        target = parent[last]  # type: ignore[index]
        if self.action == "add" and isinstance(target, dict):
            target["extra"] = self.value
        elif self.action == "delete" and isinstance(parent, dict):
            del parent[last]
        elif self.action == "delete" and isinstance(parent, list):
            del parent[int(last)]
        else:
            parent[last] = self.value  # type: ignore[index]
        return mutated


PLAUSIBLE_WORDS = st.sampled_from(
    [
        *("input", "down", "act", "up", "C", "H", "zeros", "default", "relu", "add", "linear"),
        *("conv2d", "dropout", "features", "image", "9.0", "8.6", "cpu", "cuda", "fp16", "bf16"),
    ]
)
"""Strings the schema accepts in many places (ids, ops, symbols, enums), so that mutations
also reach the operator, not only the API server's schema."""


def _like(original: object) -> st.SearchStrategy[object]:
    """Values of the original's JSON type, so that the schema often lets the change through."""
    if isinstance(original, bool):
        return st.booleans()
    if isinstance(original, int):
        return st.integers(min_value=1, max_value=128)
    if isinstance(original, float):
        return st.floats(min_value=0.0, max_value=1.0)
    if isinstance(original, str):
        return PLAUSIBLE_WORDS
    if isinstance(original, list):
        return st.lists(PLAUSIBLE_WORDS, min_size=1, max_size=3)
    return LEAF_VALUES


@st.composite
def mutations(draw: st.DrawFn, spec: dict[str, object]) -> SpecMutation:
    """One mutation of a valid spec: replace any value, delete any entry, or add a key.

    A replacement is either an arbitrary JSON value (mostly refused by the schema) or a value of
    the original's type (mostly accepted, so the operator has to judge it).

    Args:
        draw: Hypothesis' draw.
        spec: The valid spec.

    Returns:
        The mutation.
    """
    path = draw(st.sampled_from(_paths(spec)))
    action = draw(st.sampled_from(["replace", "replace", "delete", "add"]))
    original: object = spec
    for part in path:
        original = original[part]  # type: ignore[index]
    value = draw(st.one_of(LEAF_VALUES, _like(original), _like(original)))
    return SpecMutation(path=path, action=action, value=value)


@dataclass
class Submitted:
    """A mutated manifest and what the API server answered."""

    name: str
    mutation: SpecMutation
    code: int
    stderr: str


def _submit_mutations(
    plane: ControlPlane, namespace: str, base: Manifest, examples: int
) -> list[Submitted]:
    """Apply ``examples`` Hypothesis mutations of ``base``; return every answer."""
    submitted: list[Submitted] = []
    spec = base["spec"]
    assert isinstance(spec, dict)
    prefix = name_of(base)

    # Function-scoped fixtures are shared by every example on purpose: one operator sees all.
    @settings(
        max_examples=examples,
        derandomize=True,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )
    @given(mutation=mutations(spec))
    def submit(mutation: SpecMutation) -> None:
        name = f"{prefix}-{len(submitted)}"
        manifest = {**base, "metadata": {"name": name}, "spec": mutation.apply(spec)}
        code, stderr = kubectl_apply(plane, namespace, manifest)
        submitted.append(Submitted(name, mutation, code, stderr))
        # Refused (400 for unknown fields under strict validation, 422 for the schema) or stored.
        assert code in (201, 400, 422), stderr
        if code == 422:
            # One field: `is invalid: spec...`; several: a `* spec...` line each.
            assert re.search(rf'"{name}" is invalid: (\n\* )?spec\.', stderr), stderr

    submit()
    return submitted


def _contract_error(
    model: type[BlueprintResourceSpec | MorphogeneticRunSpec], spec: object
) -> bool:
    try:
        model.model_validate(spec)
    except ValidationError:
        return True
    return False


def test_mutated_blueprints_are_refused_invalid_or_reconciled_never_crash(
    control_plane: ControlPlane,
    operator_namespace: str,
    start_operator: OperatorFactory,
) -> None:
    namespace = operator_namespace
    # A CUDA target's compile fails at once on this CPU-only machine: a valid mutation ends
    # Failed (JobFailed) after one pod, instead of compiling and benchmarking for minutes.
    operator = start_operator(JOB_BACKOFF_LIMIT="0", MAX_GPU_JOBS="2")
    base = blueprint_manifest("mut-bp", targets=[cuda_target(32)])
    submitted = _submit_mutations(control_plane, namespace, base, examples=25)
    stored = [entry for entry in submitted if entry.code == 201]
    assert any(entry.code != 201 for entry in submitted), "no mutation was refused"
    assert stored, "no mutation was stored"

    settled = {"Invalid", "Failed", "Ready"}

    def all_settled() -> bool:
        found = items(control_plane, "blueprints", "-n", namespace)
        return len(found) == len(stored) and all(phase_of(item) in settled for item in found)

    wait_for(all_settled, timeout=600, description="every stored Blueprint to settle", interval=3)

    every_job = jobs(control_plane, namespace)
    for entry in stored:
        resource = kube_json(control_plane, "blueprint", entry.name, "-n", namespace)
        phase = phase_of(resource)
        contract_refuses = _contract_error(BlueprintResourceSpec, resource["spec"])
        context = (entry.name, entry.mutation, status_of(resource))
        if phase == "Invalid":
            assert str(_invalid_condition(resource)["message"]), context
            assert job_roles(control_plane, namespace, entry.name) == [], context
            assert not [job for job in every_job if _owned_by(job, uid_of(resource))], context
        else:
            # Jobs ran only for specs the contract accepts; their failure is reported.
            assert not contract_refuses, context
            assert conditions_of(resource)["Valid"]["status"] == "True", context
            if phase == "Failed":
                assert conditions_of(resource)["Failed"]["reason"] == "JobFailed", context
        if contract_refuses:
            assert phase == "Invalid", context

    assert operator.is_running
    assert _healthy(operator)
    assert _crashes(operator) == []


def test_mutated_runs_are_refused_failed_or_reconciled_never_crash(
    control_plane: ControlPlane,
    operator_namespace: str,
    start_operator: OperatorFactory,
) -> None:
    namespace = operator_namespace
    operator = start_operator(JOB_BACKOFF_LIMIT="0", MAX_GPU_JOBS="1")
    submitted = _submit_mutations(control_plane, namespace, run_manifest("mut-run"), examples=25)
    stored = [entry for entry in submitted if entry.code == 201]
    assert any(entry.code != 201 for entry in submitted), "no mutation was refused"
    assert stored, "no mutation was stored"

    def all_judged() -> bool:
        found = items(control_plane, "morphogeneticruns", "-n", namespace)
        return len(found) == len(stored) and all(
            "Valid" in conditions_of(item) and phase_of(item) is not None for item in found
        )

    wait_for(all_judged, timeout=300, description="every stored run to be judged", interval=3)

    for entry in stored:
        resource = kube_json(control_plane, "morphogeneticrun", entry.name, "-n", namespace)
        contract_refuses = _contract_error(MorphogeneticRunSpec, resource["spec"])
        context = (entry.name, entry.mutation, status_of(resource))
        valid = conditions_of(resource)["Valid"]
        if contract_refuses:
            assert phase_of(resource) == "Failed", context
            assert valid["reason"] == "InvalidSpec", context
            assert str(valid["message"]), context
            owned = [
                item
                for item in items(control_plane, "jobs,configmaps", "-n", namespace)
                if _owned_by(item, uid_of(resource))
            ]
            assert owned == [], context
        else:
            assert valid["status"] == "True", context

    assert operator.is_running
    assert _healthy(operator)
    assert _crashes(operator) == []
    # Valid mutations started training Jobs; the runs go (and their Jobs with them) before the
    # fixture's teardown waits for the namespace's pods to be gone.
    control_plane.kubectl(
        "delete", "morphogeneticruns", "--all", "-n", namespace, "--timeout=90s", timeout=120
    )
    assert all(
        labels_of(job).get("esper.dev/role") == "training"
        for job in items(control_plane, "jobs", "-n", namespace)
    )
