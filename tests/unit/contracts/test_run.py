"""MorphogeneticRunSpec: the run configuration file and the MorphogeneticRun spec."""

import json
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
