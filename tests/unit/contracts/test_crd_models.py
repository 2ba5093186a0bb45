"""Spec and status contracts of the three custom resources."""

import json
from typing import Any

import pytest
from pydantic import ValidationError

from esper.contracts import (
    CUSTOM_RESOURCES,
    BlueprintPhase,
    BlueprintResourceSpec,
    BlueprintResourceStatus,
    Condition,
    ConditionStatus,
    KernelArtifactResourceSpec,
    KernelArtifactResourceStatus,
    KernelPhase,
    KernelRef,
    MorphogeneticRunResourceStatus,
    MorphogeneticRunSpec,
    RunPhase,
)
from esper.contracts.crd import CATEGORY, GROUP, VERSION, AdaptationRecord, PrinterColumn

from .samples import (
    adaptation_record,
    blueprint_document,
    blueprint_resource_spec,
    condition,
    cpu_target,
    kernel_artifact_resource_status,
    kernel_ref,
    run_resource_status,
)

STATUS_MODELS = [
    BlueprintResourceStatus,
    KernelArtifactResourceStatus,
    MorphogeneticRunResourceStatus,
]


def test_api_group_version_and_category() -> None:
    assert (GROUP, VERSION, CATEGORY) == ("esper.dev", "v1alpha1", "esper")


def test_the_three_resources() -> None:
    described = {
        resource.kind: (resource.plural, resource.singular, resource.short_names)
        for resource in CUSTOM_RESOURCES
    }
    assert described == {
        "Blueprint": ("blueprints", "blueprint", ("bp",)),
        "KernelArtifact": ("kernelartifacts", "kernelartifact", ("ka", "kernel")),
        "MorphogeneticRun": ("morphogeneticruns", "morphogeneticrun", ("mrun",)),
    }
    models = {
        resource.kind: (resource.spec_model, resource.status_model) for resource in CUSTOM_RESOURCES
    }
    assert models == {
        "Blueprint": (BlueprintResourceSpec, BlueprintResourceStatus),
        "KernelArtifact": (KernelArtifactResourceSpec, KernelArtifactResourceStatus),
        "MorphogeneticRun": (MorphogeneticRunSpec, MorphogeneticRunResourceStatus),
    }


@pytest.mark.parametrize("model", STATUS_MODELS, ids=lambda model: model.__name__)
def test_a_status_starts_empty_and_pending(model: type[Any]) -> None:
    status = model()
    assert status.phase == "Pending"
    assert status.conditions == []
    assert status.observed_generation == 0
    assert model.model_validate_json(status.to_json()) == status
    assert model.model_validate({}) == status


def test_phase_enums() -> None:
    assert [phase.value for phase in BlueprintPhase] == [
        "Pending",
        "Invalid",
        "Compiling",
        "Ready",
        "Failed",
    ]
    assert [phase.value for phase in RunPhase] == ["Pending", "Running", "Succeeded", "Failed"]
    assert [status.value for status in ConditionStatus] == ["True", "False", "Unknown"]


@pytest.mark.parametrize("condition_type", ["Ready", "Valid", "Compiled", "A", "X1y2"])
def test_condition_types_are_camel_case(condition_type: str) -> None:
    document = condition().model_dump(by_alias=False) | {"type": condition_type}
    assert Condition.model_validate(document).type == condition_type


@pytest.mark.parametrize("condition_type", ["ready", "Not-Ready", "", "Has Space", "R" * 65])
def test_bad_condition_types(condition_type: str) -> None:
    document = condition().model_dump(by_alias=False) | {"type": condition_type}
    with pytest.raises(ValidationError, match="type"):
        Condition.model_validate(document)


@pytest.mark.parametrize("reason", ["KernelsValidated", "A", "Job_Failed", "a,b:c_d"])
def test_condition_reasons(reason: str) -> None:
    document = condition().model_dump(by_alias=False) | {"reason": reason}
    assert Condition.model_validate(document).reason == reason


@pytest.mark.parametrize(
    "reason", ["", "Two Words", "Trailing,", "1Leading", "dash-ed", "R" * 1025]
)
def test_bad_condition_reasons(reason: str) -> None:
    document = condition().model_dump(by_alias=False) | {"reason": reason}
    with pytest.raises(ValidationError, match="reason"):
        Condition.model_validate(document)


@pytest.mark.parametrize(
    ("field", "value"),
    [("status", "true"), ("observed_generation", -1), ("message", "m" * 4097)],
)
def test_condition_bounds(field: str, value: Any) -> None:
    document = condition().model_dump(by_alias=False) | {field: value}
    with pytest.raises(ValidationError, match=field):
        Condition.model_validate(document)


def test_condition_needs_a_transition_time() -> None:
    document = json.loads(condition().to_json())
    assert document["lastTransitionTime"].startswith("2025-01-02T03:04:05")
    del document["lastTransitionTime"]
    with pytest.raises(ValidationError, match="lastTransitionTime"):
        Condition.model_validate(document)


def test_blueprint_spec_needs_targets() -> None:
    ir = blueprint_document()
    with pytest.raises(ValidationError, match="targets"):
        BlueprintResourceSpec.model_validate({"ir": ir, "targets": []})
    with pytest.raises(ValidationError, match="targets"):
        BlueprintResourceSpec.model_validate({"ir": ir, "targets": [cpu_target()] * 17})
    spec = BlueprintResourceSpec.model_validate(
        {"ir": ir, "targets": [{"device": "cpu", "bindings": {"C": 64}}]}
    )
    assert spec.targets == [cpu_target()]


def test_blueprint_spec_rejects_an_invalid_ir_naming_the_node() -> None:
    ir = blueprint_document()
    ir["nodes"][0]["params"]["outFeatures"] = -1
    with pytest.raises(ValidationError, match=r"node 'up' \(linear\): invalid params"):
        BlueprintResourceSpec.model_validate({"ir": ir, "targets": [{"device": "cpu"}]})


def test_blueprint_spec_round_trip() -> None:
    spec = blueprint_resource_spec()
    assert BlueprintResourceSpec.model_validate_json(spec.to_json()) == spec


@pytest.mark.parametrize("name", ["Upper", "-lead", "trail-", "a" * 64, "dots.in.name", ""])
def test_resource_names_are_dns_labels(name: str) -> None:
    with pytest.raises(ValidationError, match="name"):
        KernelRef.model_validate(kernel_ref().model_dump(by_alias=False) | {"name": name})
    with pytest.raises(ValidationError, match="blueprint_name"):
        KernelArtifactResourceSpec(
            blueprint_name=name, blueprint_hash="0" * 64, target=cpu_target()
        )


def test_kernel_ref_phase_is_a_kernel_phase() -> None:
    assert kernel_ref().phase is KernelPhase.VALIDATED
    with pytest.raises(ValidationError, match="phase"):
        KernelRef.model_validate(kernel_ref().model_dump(by_alias=False) | {"phase": "Ready"})


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("latency_p50_ms", -1.0),
        ("verdict", "Maybe"),
        ("job_name", "Job_1"),
        ("sha256", "xyz"),
        ("kernel_id", "kernel-1"),
        ("conditions", [condition()] * 17),
    ],
)
def test_kernel_artifact_status_bounds(field: str, value: Any) -> None:
    document = kernel_artifact_resource_status().model_dump(by_alias=False) | {field: value}
    with pytest.raises(ValidationError, match=field):
        KernelArtifactResourceStatus.model_validate(document)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("accuracy", 1.2),
        ("seeds", -1),
        ("seeds", 513),
        ("epoch", -1),
        ("params", -1),
        ("adaptations", [adaptation_record()] * 51),
        ("phase", "Paused"),
    ],
)
def test_run_status_bounds(field: str, value: Any) -> None:
    document = run_resource_status().model_dump(by_alias=False) | {field: value}
    with pytest.raises(ValidationError, match=field):
        MorphogeneticRunResourceStatus.model_validate(document)


@pytest.mark.parametrize(
    ("field", "value"), [("kernel_count", 1025), ("kernel_count", -1), ("blueprint_hash", "abc")]
)
def test_blueprint_status_bounds(field: str, value: Any) -> None:
    with pytest.raises(ValidationError, match=field):
        BlueprintResourceStatus.model_validate({field: value})


def test_adaptation_record_reason_is_short() -> None:
    document = adaptation_record().model_dump(by_alias=False)
    with pytest.raises(ValidationError, match="reason"):
        AdaptationRecord.model_validate(document | {"reason": "r" * 257})
    with pytest.raises(ValidationError, match="action"):
        AdaptationRecord.model_validate(document | {"action": "prune"})


@pytest.mark.parametrize("column_type", ["string", "integer", "number", "boolean", "date"])
def test_printer_column_types(column_type: str) -> None:
    column = PrinterColumn(name="X", type=column_type, json_path=".status.x")
    assert column.description == ""
    assert json.loads(column.to_json())["jsonPath"] == ".status.x"


def test_printer_column_rejects_other_types() -> None:
    with pytest.raises(ValidationError, match="type"):
        PrinterColumn(name="X", type="float", json_path=".status.x")
