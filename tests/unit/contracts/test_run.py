"""MorphogeneticRunSpec: the run configuration file and the MorphogeneticRun spec."""

import json
import math
import textwrap
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from esper.contracts import MorphogeneticRunSpec
from esper.contracts.run import (
    AlphaSchedule,
    DatasetName,
    HostSpec,
    InjectionSpec,
    PolicyKind,
    PolicySpec,
    ScheduleSpec,
)

from .samples import run_spec_document

RUN_YAML = textwrap.dedent("""\
    # esper run examples/fashion-mnist.yaml
    host:
      factory: my_project.models:build_cnn
      kwargs:
        width: 32
        dropout: 0.25
        batch_norm: true
        activation: relu
    dataset:
      name: fashion-mnist
      batchSize: 128
      validationFraction: 0.1
      trainSubset: 10000
    budget:
      maxAddedParams: 150000
      maxSeeds: 3
    policy:
      kind: heuristic
      decisionIntervalSteps: 200
    schedule:
      epochs: 10
      learningRate: 3.0e-4
      optimizer: adamw
      weightDecay: 0.01
      seedTrainingSteps: 300
      blendingSteps: 400
      probationSteps: 500
      alphaSchedule: sigmoid
    injection:
      moduleGlobs: ["features.*", "classifier.0"]
      moduleTypes: [Conv2d, Linear]
    device: auto
    seed: 42
    """)


def test_a_yaml_config_as_a_user_writes_it() -> None:
    document = yaml.safe_load(RUN_YAML)
    spec = MorphogeneticRunSpec.model_validate(document)
    assert spec.host.factory == "my_project.models:build_cnn"
    assert spec.host.zoo is None
    assert spec.host.kwargs == {
        "width": 32,
        "dropout": 0.25,
        "batch_norm": True,
        "activation": "relu",
    }
    assert spec.dataset.name is DatasetName.FASHION_MNIST
    assert spec.dataset.train_subset == 10000
    assert spec.budget.max_added_params == 150_000
    assert spec.policy.kind is PolicyKind.HEURISTIC
    assert spec.schedule.learning_rate == pytest.approx(3e-4)
    assert spec.schedule.alpha_schedule is AlphaSchedule.SIGMOID
    assert spec.injection.module_types == ["Conv2d", "Linear"]
    assert (spec.device, spec.seed) == ("auto", 42)
    # JSON and YAML round trips give the same value back.
    assert MorphogeneticRunSpec.model_validate_json(spec.to_json()) == spec
    dumped = yaml.safe_dump(spec.model_dump(mode="json"))
    assert MorphogeneticRunSpec.model_validate(yaml.safe_load(dumped)) == spec
    # The wire form keeps the user's camelCase keys.
    assert set(json.loads(spec.to_json())["schedule"]) >= {"learningRate", "alphaSchedule"}


def test_kwarg_value_types_survive_the_round_trip() -> None:
    spec = MorphogeneticRunSpec.model_validate(yaml.safe_load(RUN_YAML))
    again = MorphogeneticRunSpec.model_validate_json(spec.to_json())
    kinds = {key: type(value) for key, value in again.host.kwargs.items()}
    assert kinds == {"width": int, "dropout": float, "batch_norm": bool, "activation": str}


def test_a_minimal_config_gets_defaults() -> None:
    spec = MorphogeneticRunSpec.model_validate(
        {
            "host": {"zoo": "mlp"},
            "dataset": {"name": "digits"},
            "budget": {"maxAddedParams": 0},
            "schedule": {"epochs": 1, "learningRate": 0.1},
            "injection": {"moduleTypes": ["Linear"]},
        }
    )
    assert spec.policy == PolicySpec()
    assert spec.policy.kind is PolicyKind.HEURISTIC
    assert (spec.device, spec.seed) == ("auto", 0)
    assert spec.dataset.batch_size == 128
    assert spec.schedule.optimizer == "adamw"
    assert spec.budget.max_seeds == 4


def test_a_yaml_typo_is_an_error() -> None:
    document = yaml.safe_load(RUN_YAML.replace("learningRate", "learningrate"))
    with pytest.raises(ValidationError) as caught:
        MorphogeneticRunSpec.model_validate(document)
    assert "learningrate" in str(caught.value)


@pytest.mark.parametrize(
    "host",
    [{}, {"kwargs": {"a": 1}}, {"zoo": "mlp", "factory": "pkg.mod:make"}],
    ids=["empty", "kwargs-only", "both"],
)
def test_host_names_exactly_one_source(host: dict[str, Any]) -> None:
    with pytest.raises(ValidationError, match="host names exactly one of zoo or factory"):
        HostSpec.model_validate(host)


@pytest.mark.parametrize(
    "factory", ["pkg.mod:make", "a:b", "my_models.nets:build_v2", "_p._q:_f", "Pkg.Mod:Make"]
)
def test_factory_import_paths(factory: str) -> None:
    assert HostSpec(factory=factory).factory == factory


@pytest.mark.parametrize(
    "factory",
    [
        "pkg.mod",
        "pkg.mod:",
        ":make",
        "pkg..mod:make",
        "pkg.mod:make.sub",
        "1pkg:make",
        "pkg-mod:make",
        "pkg.mod:make()",
        "pkg.mod: make",
        "pkg/mod:make",
    ],
)
def test_bad_factory_import_paths(factory: str) -> None:
    with pytest.raises(ValidationError, match="factory"):
        HostSpec(factory=factory)


@pytest.mark.parametrize("zoo", ["Resnet", "-mlp", "", "a" * 64, "res net"])
def test_bad_zoo_names(zoo: str) -> None:
    with pytest.raises(ValidationError, match="zoo"):
        HostSpec(zoo=zoo)


@pytest.mark.parametrize(
    "kwargs",
    [{"Width": 1}, {"with-dash": 1}, {"values": [1, 2]}, {"nested": {"a": 1}}, {"none": None}],
    ids=["upper", "dash", "list", "dict", "none"],
)
def test_bad_kwargs(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValidationError, match="kwargs"):
        HostSpec(zoo="mlp", kwargs=kwargs)


def test_injection_needs_globs_or_types() -> None:
    with pytest.raises(ValidationError, match="injection selects no module: give moduleGlobs"):
        InjectionSpec()
    with pytest.raises(ValidationError, match="injection selects no module"):
        InjectionSpec(module_globs=[], module_types=[])
    assert InjectionSpec(module_globs=["layer*"]).module_types == []
    assert InjectionSpec(module_types=["Linear"]).module_globs == []


@pytest.mark.parametrize(
    "changes",
    [{"module_globs": [""]}, {"module_types": ["nn.Linear"]}, {"module_types": ["1Linear"]}],
    ids=str,
)
def test_bad_injection_entries(changes: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        InjectionSpec.model_validate({"module_types": ["Linear"]} | changes)


@pytest.mark.parametrize(
    "kind", [kind for kind in PolicyKind if kind is not PolicyKind.GNN], ids=str
)
def test_checkpoint_only_for_gnn(kind: PolicyKind) -> None:
    with pytest.raises(ValidationError) as caught:
        PolicySpec(kind=kind, checkpoint="policy.pt")
    assert f"checkpoint applies to the gnn policy, not '{kind.value}'" in str(caught.value)
    assert PolicySpec(kind=kind).checkpoint is None


def test_gnn_may_name_a_checkpoint() -> None:
    assert PolicySpec(kind="gnn", checkpoint="policy.pt").checkpoint == "policy.pt"
    assert PolicySpec(kind="gnn").checkpoint is None


@pytest.mark.parametrize(
    ("path", "value"),
    [
        (("dataset", "name"), "imagenet"),
        (("dataset", "batchSize"), 0),
        (("dataset", "validationFraction"), 0.0),
        (("dataset", "validationFraction"), 0.6),
        (("dataset", "trainSubset"), 0),
        (("budget", "maxAddedParams"), -1),
        (("budget", "maxSeeds"), 513),
        (("policy", "decisionIntervalSteps"), 0),
        (("schedule", "epochs"), 0),
        (("schedule", "learningRate"), 0.0),
        (("schedule", "optimizer"), "lbfgs"),
        (("schedule", "weightDecay"), 1.5),
        (("schedule", "alphaSchedule"), "step"),
        (("schedule", "blendingSteps"), 0),
        (("policy", "plateauPatience"), 0),
        (("policy", "plateauPatience"), 10_001),
        (("policy", "plateauThreshold"), -0.01),
        (("policy", "plateauThreshold"), 1.01),
        (("policy", "minContribution"), -1.01),
        (("policy", "minContribution"), 1000.5),
        (("schedule", "lossSpikeFactor"), 1.0),
        (("schedule", "lossSpikeFactor"), 0.5),
        (("schedule", "lossSpikeFactor"), 1e6 + 1),
        (("blueprints",), [""]),
        (("blueprints",), ["b" * 257]),
        (("blueprints",), [f"bp-{index}" for index in range(65)]),
        (("blueprints",), "residual-mlp"),
        (("waitForKernels",), "sometimes"),
        (("baseline",), [True]),
        (("device",), "tpu"),
        (("seed",), -1),
        (("seed",), 2**31),
    ],
    ids=lambda value: ".".join(value) if isinstance(value, tuple) else repr(value),
)
def test_run_spec_bounds(path: tuple[str, ...], value: Any) -> None:
    document = run_spec_document()
    cursor = document
    for key in path[:-1]:
        cursor = cursor[key]
    cursor[path[-1]] = value
    with pytest.raises(ValidationError, match=path[-1]):
        MorphogeneticRunSpec.model_validate(document)


@pytest.mark.parametrize("missing", ["host", "dataset", "budget", "schedule", "injection"])
def test_run_spec_required_sections(missing: str) -> None:
    document = run_spec_document()
    del document[missing]
    with pytest.raises(ValidationError, match=f"{missing}\n  Field required"):
        MorphogeneticRunSpec.model_validate(document)


def test_boundary_values_are_accepted() -> None:
    document = run_spec_document()
    document["dataset"]["validationFraction"] = 0.5
    document["seed"] = 2**31 - 1
    document["budget"]["maxSeeds"] = 0
    spec = MorphogeneticRunSpec.model_validate(document)
    assert (spec.dataset.validation_fraction, spec.seed, spec.budget.max_seeds) == (
        0.5,
        2**31 - 1,
        0,
    )


MINIMAL_DOCUMENT: dict[str, Any] = {
    "host": {"zoo": "mlp"},
    "dataset": {"name": "digits"},
    "budget": {"maxAddedParams": 0},
    "schedule": {"epochs": 1, "learningRate": 0.1},
    "injection": {"moduleTypes": ["Linear"]},
}


def test_new_run_fields_default_to_the_old_behaviour() -> None:
    spec = MorphogeneticRunSpec.model_validate(MINIMAL_DOCUMENT)
    assert spec.blueprints == []
    assert spec.wait_for_kernels is False
    assert spec.baseline is False
    assert (spec.policy.plateau_patience, spec.policy.plateau_threshold) == (2, 0.01)
    assert spec.policy.min_contribution == 0.0
    assert spec.schedule.loss_spike_factor == 4.0
    document = json.loads(spec.to_json())
    assert (document["blueprints"], document["waitForKernels"], document["baseline"]) == (
        [],
        False,
        False,
    )


def test_new_run_fields_are_camel_case_on_the_wire() -> None:
    document = run_spec_document()
    spec = MorphogeneticRunSpec.model_validate(document)
    assert spec.blueprints == ["residual-mlp", "blueprints/bottleneck.yaml"]
    assert (spec.wait_for_kernels, spec.baseline) == (True, True)
    assert (spec.policy.plateau_patience, spec.policy.plateau_threshold) == (3, 0.02)
    assert spec.policy.min_contribution == 0.001
    assert spec.schedule.loss_spike_factor == 3.0
    wire = json.loads(spec.to_json())
    assert {"blueprints", "waitForKernels", "baseline"} <= set(wire)
    assert {"plateauPatience", "plateauThreshold", "minContribution"} <= set(wire["policy"])
    assert "lossSpikeFactor" in wire["schedule"]
    assert not any("_" in key for key in [*wire, *wire["policy"], *wire["schedule"]])
    assert MorphogeneticRunSpec.model_validate(wire) == spec


def test_new_run_fields_accept_snake_case_input() -> None:
    spec = MorphogeneticRunSpec.model_validate(
        MINIMAL_DOCUMENT | {"blueprints": ["residual-mlp"], "wait_for_kernels": True}
    )
    assert spec.wait_for_kernels is True
    policy = PolicySpec(plateau_patience=5, plateau_threshold=0.0, min_contribution=-0.5)
    assert (policy.plateau_patience, policy.plateau_threshold, policy.min_contribution) == (
        5,
        0.0,
        -0.5,
    )


@pytest.mark.parametrize(
    "key", ["waitforkernels", "wait-for-kernels", "blueprint", "Baseline"], ids=str
)
def test_misspelt_new_run_fields_are_errors(key: str) -> None:
    with pytest.raises(ValidationError, match=key):
        MorphogeneticRunSpec.model_validate(MINIMAL_DOCUMENT | {key: True})


@pytest.mark.parametrize(
    "changes",
    [
        {"plateau_patience": 1},
        {"plateau_patience": 10_000},
        {"plateau_threshold": 0.0},
        {"plateau_threshold": 1.0},
        {"min_contribution": -1.0},
        {"min_contribution": 1000.0},
    ],
    ids=str,
)
def test_policy_boundary_values_are_accepted(changes: dict[str, Any]) -> None:
    policy = PolicySpec.model_validate(changes)
    for name, value in changes.items():
        assert getattr(policy, name) == value


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("plateau_patience", 0),
        ("plateau_patience", 10_001),
        ("plateau_threshold", -1e-9),
        ("plateau_threshold", 1.5),
        ("plateau_threshold", math.nan),
        ("min_contribution", -1.5),
        ("min_contribution", 1001.0),
        ("min_contribution", math.nan),
        ("min_contribution", math.inf),
    ],
)
def test_policy_bounds(field: str, value: Any) -> None:
    with pytest.raises(ValidationError, match=field):
        PolicySpec.model_validate({field: value})


@pytest.mark.parametrize("factor", [1.0 + 1e-9, 2.0, 1e6])
def test_loss_spike_factor_boundaries_are_accepted(factor: float) -> None:
    schedule = ScheduleSpec(epochs=1, learning_rate=0.1, loss_spike_factor=factor)
    assert schedule.loss_spike_factor == factor


@pytest.mark.parametrize("factor", [1.0, 0.0, -2.0, 1e6 * 1.000001, math.nan, math.inf])
def test_loss_spike_factor_bounds(factor: float) -> None:
    with pytest.raises(ValidationError, match="loss_spike_factor"):
        ScheduleSpec(epochs=1, learning_rate=0.1, loss_spike_factor=factor)


def test_blueprint_references_keep_their_order_and_may_be_paths() -> None:
    refs = ["bottleneck-mlp", "./local/se.yaml", "residual-mlp"]
    spec = MorphogeneticRunSpec.model_validate(MINIMAL_DOCUMENT | {"blueprints": refs})
    assert spec.blueprints == refs
    many = [f"bp-{index}" for index in range(64)]
    assert MorphogeneticRunSpec.model_validate(MINIMAL_DOCUMENT | {"blueprints": many}).blueprints
