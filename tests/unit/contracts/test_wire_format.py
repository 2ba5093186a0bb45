"""The wire convention every contract shares: camelCase JSON, snake_case input, no extras."""

import importlib
import inspect
import json
import pkgutil
from typing import Any

import pytest
from pydantic import BaseModel, ValidationError
from pydantic.alias_generators import to_camel

import esper.contracts
from esper.contracts import Contract, describe_validation_error
from esper.contracts._base import _describe_schema, _docstring_parts

from .samples import SAMPLES

CONTRACTS = sorted(SAMPLES, key=lambda model: (model.__module__, model.__name__))
IDS = [model.__name__ for model in CONTRACTS]


def _contract_classes() -> set[type[Contract]]:
    """Every concrete contract defined in any module of the esper.contracts package."""
    found: set[type[Contract]] = set()
    for info in pkgutil.walk_packages(esper.contracts.__path__, "esper.contracts."):
        module = importlib.import_module(info.name)
        for _, value in inspect.getmembers(module, inspect.isclass):
            if (
                issubclass(value, Contract)
                and value is not Contract
                and value.__module__.startswith("esper.contracts")
            ):
                found.add(value)
    return found


def test_every_contract_has_a_sample() -> None:
    classes = _contract_classes()
    missing = sorted(model.__name__ for model in classes - set(SAMPLES))
    assert missing == [], f"add a sample to tests/unit/contracts/samples.py for {missing}"
    assert set(SAMPLES) <= classes


@pytest.mark.parametrize("model", CONTRACTS, ids=IDS)
def test_json_round_trip(model: type[Contract]) -> None:
    value = SAMPLES[model]()
    assert isinstance(value, model)
    text = value.to_json()
    again = model.model_validate_json(text)
    assert again == value
    assert again.to_json() == text


@pytest.mark.parametrize("model", CONTRACTS, ids=IDS)
def test_wire_keys_are_camel_case_aliases(model: type[Contract]) -> None:
    document = json.loads(SAMPLES[model]().to_json())
    assert isinstance(document, dict)
    expected = {field.alias or name for name, field in model.model_fields.items()}
    assert set(document) == expected
    for name, field in model.model_fields.items():
        assert field.alias == to_camel(name)
        assert "_" not in (field.alias or "")


@pytest.mark.parametrize("model", CONTRACTS, ids=IDS)
def test_snake_case_names_are_accepted_on_input(model: type[Contract]) -> None:
    value = SAMPLES[model]()
    snake = value.model_dump(by_alias=False)
    assert model.model_validate(snake) == value
    assert model.model_validate_json(value.model_dump_json(by_alias=False)) == value


@pytest.mark.parametrize("model", CONTRACTS, ids=IDS)
@pytest.mark.parametrize("key", ["bogus", "spec_version", "extraField"])
def test_unknown_fields_are_rejected(model: type[Contract], key: str) -> None:
    document = json.loads(SAMPLES[model]().to_json())
    document[key] = 1
    with pytest.raises(ValidationError) as caught:
        model.model_validate(document)
    assert key in str(caught.value)
    assert any(error["type"] == "extra_forbidden" for error in caught.value.errors())


def _nested_models(value: Contract) -> list[tuple[str, Contract]]:
    return [
        (name, getattr(value, name))
        for name in type(value).model_fields
        if isinstance(getattr(value, name), Contract)
    ]


NESTED = [model for model in CONTRACTS if _nested_models(SAMPLES[model]())]


@pytest.mark.parametrize("model", NESTED, ids=[model.__name__ for model in NESTED])
def test_unknown_fields_in_nested_contracts_are_rejected(model: type[Contract]) -> None:
    value = SAMPLES[model]()
    name, _ = _nested_models(value)[0]
    document = json.loads(value.to_json())
    alias = model.model_fields[name].alias or name
    document[alias]["sneaky"] = True
    with pytest.raises(ValidationError, match="sneaky"):
        model.model_validate(document)


@pytest.mark.parametrize("model", CONTRACTS, ids=IDS)
def test_contracts_are_immutable(model: type[Contract]) -> None:
    value = SAMPLES[model]()
    if not model.model_fields:
        with pytest.raises(ValidationError, match="frozen"):
            value.anything = 1  # type: ignore[attr-defined]
        return
    name = next(iter(model.model_fields))
    with pytest.raises(ValidationError, match="frozen"):
        setattr(value, name, getattr(value, name))


@pytest.mark.parametrize("model", CONTRACTS, ids=IDS)
def test_json_schema_carries_the_docstring_summary(model: type[Contract]) -> None:
    schema = model.model_json_schema(by_alias=True)
    summary = inspect.cleandoc(model.__doc__ or "").split("\n\n")[0].replace("\n", " ")
    assert schema["description"] == summary
    assert schema["description"]


def test_json_schema_field_descriptions_come_from_attributes() -> None:
    from esper.contracts import KernelTarget

    properties = KernelTarget.model_json_schema(by_alias=True)["properties"]
    # A continued (two-line) attribute description is joined into one sentence.
    assert properties["computeCapability"]["description"] == (
        'The CUDA compute capability (``"9.0"`` for H100/H200); required for CUDA and '
        "forbidden for CPU, since a CUDA kernel is only valid on its architecture."
    )
    assert properties["batchSizes"]["description"] == (
        "Batch sizes to validate and benchmark, ascending and unique."
    )


def test_docstring_parts_stop_at_the_end_of_the_attributes_section() -> None:
    doc = """Summary line
    continued.

    Attributes:
        alpha: First
            continued.
        beta: Second.

    Returns:
        gamma: not an attribute.
    """
    summary, attributes = _docstring_parts(doc)
    assert summary == "Summary line continued."
    assert attributes == {"alpha": "First continued.", "beta": "Second."}


def test_docstring_parts_without_docstring_or_attributes() -> None:
    assert _docstring_parts(None) == ("", {})
    assert _docstring_parts("Only a summary.") == ("Only a summary.", {})


def test_describe_schema_keeps_explicit_field_descriptions_and_tolerates_no_properties() -> None:
    class Documented(BaseModel):
        """Documented model.

        Attributes:
            size: From the docstring.
            label: Ignored, the field has its own.
        """

        size: int
        label: str

    schema: dict[str, Any] = {
        "properties": {"size": {"type": "integer"}, "label": {"description": "own"}}
    }
    _describe_schema(schema, Documented)
    assert schema["description"] == "Documented model."
    assert schema["properties"]["size"]["description"] == "From the docstring."
    assert schema["properties"]["label"]["description"] == "own"
    bare: dict[str, Any] = {}
    _describe_schema(bare, Documented)
    assert bare == {"description": "Documented model."}


def test_describe_validation_error_names_each_failing_field() -> None:
    from esper.contracts import LatencyMeasurement

    with pytest.raises(ValidationError) as caught:
        LatencyMeasurement.model_validate({"batchSize": 0, "p50Ms": -1, "p95Ms": 1})
    text = describe_validation_error(caught.value)
    assert text.count("; ") == 1
    assert text.startswith("batchSize: ")
    assert "p50Ms: " in text


def test_describe_validation_error_without_location() -> None:
    from esper.contracts import LatencyMeasurement

    with pytest.raises(ValidationError) as caught:
        LatencyMeasurement(batch_size=1, p50_ms=2.0, p95_ms=1.0)
    assert describe_validation_error(caught.value) == (
        "Value error, p95Ms (1.0) is below p50Ms (2.0)"
    )
