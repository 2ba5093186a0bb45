"""Fuzzed blueprints: mutated documents through the contract, shape inference and the builder.

Each built-in blueprint's JSON document is mutated by hypothesis — a field dropped, a value
replaced by another JSON value, an op renamed, a parameter or a node's input pointed elsewhere
— and the result goes through every stage a submitted blueprint meets before it is compiled:
``BlueprintIR`` validation, shape inference for a slot, and building the module. The property:
each stage either accepts, or refuses with its own declared error (pydantic's
``ValidationError``, ``ShapeError``), whose message names what is wrong; nothing else escapes
(no ``KeyError``, ``IndexError``, ``TypeError``, ``ZeroDivisionError`` or torch error from a
document the earlier stages let through), and a module that is built computes an output of
the slot's shape.
"""

import copy
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from esper.blueprints.builder import build_module
from esper.blueprints.library import LIBRARY
from esper.blueprints.shapes import ShapeError, check_graftable
from esper.contracts import BlueprintIR
from tests.support.reliability import note_inputs

pytestmark = pytest.mark.reliability("ir-fuzz")

FUZZ = settings(
    max_examples=400,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)

_JSON_VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**40), max_value=2**40),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.lists(st.integers(min_value=-4, max_value=64), max_size=4),
    st.just({}),
)
_OPS = st.sampled_from(
    ["linear", "conv2d", "relu", "add", "concat", "low_rank", "layer_norm", "attention", "nope"]
)


def _paths(document: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every path to a value inside a JSON document."""
    found = [prefix] if prefix else []
    if isinstance(document, dict):
        for key, value in document.items():
            found.extend(_paths(value, (*prefix, key)))
    elif isinstance(document, list):
        for index, value in enumerate(document):
            found.extend(_paths(value, (*prefix, index)))
    return found


def _set(document: Any, path: tuple[Any, ...], value: Any) -> None:
    for key in path[:-1]:
        document = document[key]
    document[path[-1]] = value


def _drop(document: Any, path: tuple[Any, ...]) -> None:
    for key in path[:-1]:
        document = document[key]
    del document[path[-1]]


@st.composite
def mutated_documents(draw: st.DrawFn) -> tuple[dict[str, Any], str]:
    name = draw(st.sampled_from(sorted(LIBRARY)))
    document = LIBRARY[name].model_dump(mode="json", by_alias=True)
    for _ in range(draw(st.integers(min_value=1, max_value=3))):
        paths = _paths(document)
        path = draw(st.sampled_from(paths))
        kind = draw(st.sampled_from(["replace", "drop", "op", "input"]))
        raw_nodes = document.get("nodes")
        nodes = [n for n in raw_nodes if isinstance(n, dict)] if isinstance(raw_nodes, list) else []
        if kind == "drop":
            _drop(document, path)
        elif kind == "op" and nodes:
            draw(st.sampled_from(nodes))["op"] = draw(_OPS)
        elif kind == "input" and nodes:
            names = ["input", *(str(n.get("id", "?")) for n in nodes), "missing"]
            node = draw(st.sampled_from(nodes))
            node["inputs"] = draw(st.lists(st.sampled_from(names), min_size=0, max_size=3))
        else:
            _set(document, path, draw(_JSON_VALUES))
    return document, name


def _bindings(ir: BlueprintIR) -> dict[str, int]:
    return dict.fromkeys(ir.symbols(), 8)


@FUZZ
@given(mutated_documents())
def test_every_stage_accepts_or_refuses_with_its_own_error(
    case: tuple[dict[str, Any], str],
) -> None:
    note_inputs()
    document, _name = case
    try:
        ir = BlueprintIR.model_validate(copy.deepcopy(document))
    except ValidationError as error:
        problems = error.errors()
    else:
        problems = []
    if problems:
        return
    bindings = _bindings(ir)
    try:
        report = check_graftable(ir, bindings)
    except ShapeError as error:
        message = str(error)
    else:
        message = ""
    if message:
        return
    module = build_module(ir, bindings)
    with torch.no_grad():
        out = module(torch.randn(2, *report.input.dims))
    assert tuple(out.shape) == (2, *report.output.dims)


def test_the_fuzzer_reaches_every_stage() -> None:
    # Guard against a fuzzer whose mutations are always refused by the contract: some mutated
    # documents must be refused and some must pass every check and be built. (The contract
    # already runs shape inference with its symbols free, so the slot's check refuses few.)
    outcomes = {"contract": 0, "shape": 0, "built": 0}

    @settings(max_examples=150, derandomize=True, database=None, deadline=None)
    @given(mutated_documents())
    def classify(case: tuple[dict[str, Any], str]) -> None:
        note_inputs()
        try:
            ir = BlueprintIR.model_validate(copy.deepcopy(case[0]))
        except ValidationError:
            outcomes["contract"] += 1
            return
        try:
            check_graftable(ir, _bindings(ir))
        except ShapeError:
            outcomes["shape"] += 1
            return
        outcomes["built"] += 1

    classify()
    assert outcomes["contract"] > 0
    assert outcomes["built"] > 0
