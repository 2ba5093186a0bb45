"""The generated CustomResourceDefinitions: structural, named right, and current on disk."""

import copy
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Literal

import pytest
import yaml
from pydantic import BaseModel, Field

from esper.contracts import CUSTOM_RESOURCES, Contract, CustomResource
from esper.contracts.crd import PrinterColumn
from esper.contracts.types import PRESERVE_UNKNOWN_FIELDS
from esper.crds import generate
from esper.crds.generate import (
    DEFAULT_DIRECTORIES,
    HEADER,
    StructuralSchemaError,
    check_directories,
    definition,
    file_name,
    open_api_schema,
    render,
    rendered_files,
    write,
)
from esper.crds.schema import SchemaConversionError, structural_schema
from esper.crds.structural import structural_violations

from .contracts.samples import (
    blueprint_resource_spec,
    blueprint_resource_status,
    kernel_artifact_resource_spec,
    kernel_artifact_resource_status,
    run_resource_status,
    run_spec,
)

REPO = Path(__file__).resolve().parents[2]
RESOURCES = {resource.kind: resource for resource in CUSTOM_RESOURCES}
KINDS = sorted(RESOURCES)
FREE_FORM = {"MorphogeneticRun": {".spec.host.kwargs"}}

# ---------------------------------------------------------------- an independent structural check

# Keywords Kubernetes forbids in a structural schema, or that Esper's schemas must never carry.
FORBIDDEN = {
    "$ref",
    "$defs",
    "definitions",
    "anyOf",
    "oneOf",
    "allOf",
    "not",
    "const",
    "prefixItems",
    "patternProperties",
    "dependencies",
    "additionalItems",
    "$schema",
    "id",
    "discriminator",
    "propertyNames",
}
TYPES = {"object", "array", "string", "integer", "number", "boolean"}


def walk(node: Mapping[str, Any], path: str = "") -> Iterator[tuple[str, Mapping[str, Any]]]:
    """Every schema node with its path (``.a.b``, ``[]`` for items, ``.*`` for map values)."""
    yield path, node
    for name, child in node.get("properties", {}).items():
        yield from walk(child, f"{path}.{name}")
    if isinstance(node.get("additionalProperties"), Mapping):
        yield from walk(node["additionalProperties"], f"{path}.*")
    if isinstance(node.get("items"), Mapping):
        yield from walk(node["items"], f"{path}[]")


def independent_violations(schema: Mapping[str, Any], free_form: set[str]) -> list[str]:
    problems = []
    for path, node in walk(schema):
        where = path or "<root>"
        special = node.get("x-kubernetes-int-or-string") is True or (
            node.get(PRESERVE_UNKNOWN_FIELDS) is True
        )
        if node.get("type") not in TYPES and not special:
            problems.append(f"{where}: untyped")
        problems.extend(f"{where}: {key}" for key in FORBIDDEN & set(node))
        if node.get("additionalProperties") is False:
            problems.append(f"{where}: additionalProperties false")
        if "properties" in node and "additionalProperties" in node:
            problems.append(f"{where}: properties with additionalProperties")
        for key in ("exclusiveMinimum", "exclusiveMaximum", "nullable"):
            if key in node and not isinstance(node[key], bool):
                problems.append(f"{where}: {key} not a boolean")
        if node.get(PRESERVE_UNKNOWN_FIELDS) is True and path not in free_form:
            problems.append(f"{where}: free-form")
        if node.get("type") == "array" and not isinstance(node.get("items"), Mapping):
            problems.append(f"{where}: array without items")
    return problems


def test_the_independent_check_finds_what_it_looks_for() -> None:
    bad = {
        "type": "object",
        "properties": {
            "a": {"description": "untyped"},
            "b": {"type": "integer", "exclusiveMinimum": 0},
            "c": {"anyOf": [{"type": "string"}, {"type": "integer"}]},
            "d": {"type": "object", "properties": {}, "additionalProperties": False},
            "e": {"type": "object", PRESERVE_UNKNOWN_FIELDS: True},
            "f": {"type": "array"},
        },
    }
    assert len(independent_violations(bad, set())) == 8


@pytest.fixture(scope="module")
def schemas() -> dict[str, dict[str, Any]]:
    return {kind: open_api_schema(RESOURCES[kind]) for kind in KINDS}


@pytest.mark.parametrize("kind", KINDS)
def test_generated_schemas_are_structural(kind: str, schemas: dict[str, Any]) -> None:
    schema = schemas[kind]
    assert independent_violations(schema, FREE_FORM.get(kind, set())) == []
    assert structural_violations(schema, FREE_FORM.get(kind, set())) == []


@pytest.mark.parametrize("kind", KINDS)
def test_committed_schemas_are_structural(kind: str) -> None:
    for directory in DEFAULT_DIRECTORIES:
        document = yaml.safe_load((REPO / directory / file_name(RESOURCES[kind])).read_text())
        schema = document["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
        assert independent_violations(schema, FREE_FORM.get(kind, set())) == []


@pytest.mark.parametrize("kind", KINDS)
def test_free_form_only_where_intended(kind: str, schemas: dict[str, Any]) -> None:
    free = {path for path, node in walk(schemas[kind]) if node.get(PRESERVE_UNKNOWN_FIELDS)}
    assert free == FREE_FORM.get(kind, set())
    assert set(generate.PRESERVE_UNKNOWN_PATHS) == set(FREE_FORM)


def test_exclusive_bounds_are_booleans_next_to_a_bound(schemas: dict[str, Any]) -> None:
    found = []
    for kind in KINDS:
        for path, node in walk(schemas[kind]):
            if "exclusiveMinimum" in node:
                assert node["exclusiveMinimum"] is True
                assert "minimum" in node
                found.append(f"{kind}{path}")
    assert "MorphogeneticRun.spec.schedule.learningRate" in found
    assert "MorphogeneticRun.spec.dataset.validationFraction" in found
    assert "Blueprint.spec.ir.nodes[].params.eps" in found


def test_optional_fields_are_nullable_and_dims_are_int_or_string(schemas: dict[str, Any]) -> None:
    nodes = dict(walk(schemas["Blueprint"]))
    assert nodes[".spec.targets[].computeCapability"]["nullable"] is True
    assert nodes[".spec.targets[].computeCapability"]["type"] == "string"
    assert nodes[".spec.ir.input.shape[]"]["x-kubernetes-int-or-string"] is True
    assert nodes[".spec.ir.nodes[].params.padding"]["x-kubernetes-int-or-string"] is True
    assert nodes[".spec.targets[].bindings"]["additionalProperties"]["type"] == "integer"
    # The params union is one object carrying every op's fields, none required.
    params = nodes[".spec.ir.nodes[].params"]
    assert {"outFeatures", "kernelSize", "numHeads", "p", "reduction"} <= set(params["properties"])
    assert "required" not in params


# ---------------------------------------------------------------- esper.crds.structural


@pytest.mark.parametrize(
    ("schema", "expected"),
    [
        ({"type": "object", "properties": {"a": {}}}, ".a: no type"),
        ({"type": "null"}, "<root>: unknown type 'null'"),
        ({"type": "object", "properties": {"a": {"$ref": "#/x"}}}, ".a: keyword '$ref'"),
        (
            {"type": "object", "properties": {"a": {"type": "string", "anyOf": []}}},
            ".a: keyword 'anyOf'",
        ),
        ({"type": "string", "not": {}}, "<root>: keyword 'not'"),
        ({"type": "string", "const": "x"}, "<root>: keyword 'const'"),
        ({"type": "object", "definitions": {}}, "<root>: keyword 'definitions'"),
        ({"type": "object", "patternProperties": {}}, "<root>: keyword 'patternProperties'"),
        (
            {"type": "array", "items": {"type": "string"}, "prefixItems": []},
            "keyword 'prefixItems'",
        ),
        (
            {
                "type": "object",
                "properties": {"m": {"type": "object", "additionalProperties": False}},
            },
            ".m: additionalProperties: false is forbidden",
        ),
        (
            {
                "type": "object",
                "properties": {"a": {"type": "string"}},
                "additionalProperties": {"type": "string"},
            },
            "<root>: properties and additionalProperties are mutually exclusive",
        ),
        (
            {"type": "object", "properties": {"n": {"type": "number", "exclusiveMinimum": 0}}},
            ".n: exclusiveMinimum must be a boolean",
        ),
        ({"type": "number", "exclusiveMaximum": 1}, "<root>: exclusiveMaximum must be a boolean"),
        ({"type": "string", "nullable": "yes"}, "<root>: nullable must be a boolean"),
        ({"type": "array"}, "<root>: array without items"),
        (
            {"type": "array", "items": {"type": "object", "properties": {"x": {}}}},
            "[].x: no type",
        ),
        (
            {"type": "object", "additionalProperties": {"format": "int32"}},
            ".*: no type",
        ),
        (
            {
                "type": "object",
                "properties": {"free": {"type": "object", PRESERVE_UNKNOWN_FIELDS: True}},
            },
            ".free: x-kubernetes-preserve-unknown-fields where it is not intended",
        ),
    ],
    ids=lambda value: value if isinstance(value, str) else None,
)
def test_structural_violations_name_the_path(schema: dict[str, Any], expected: str) -> None:
    problems = structural_violations(schema)
    assert any(expected in problem for problem in problems), problems


def test_structural_violations_accept_a_good_schema() -> None:
    schema = {
        "type": "object",
        "properties": {
            "free": {"type": "object", PRESERVE_UNKNOWN_FIELDS: True},
            "dim": {"x-kubernetes-int-or-string": True},
            "any": {PRESERVE_UNKNOWN_FIELDS: True},
            "rate": {"type": "number", "minimum": 0, "exclusiveMinimum": True, "nullable": True},
            "list": {"type": "array", "items": {"type": "string"}},
            "map": {"type": "object", "additionalProperties": {"type": "integer"}},
        },
    }
    assert structural_violations(schema, {".free", ".any"}) == []
    assert len(structural_violations(schema)) == 2


# ---------------------------------------------------------------- esper.crds.schema


def convert_model(model: type[BaseModel]) -> dict[str, Any]:
    return structural_schema(model.model_json_schema(by_alias=True))


class Maybe(BaseModel):
    count: int | None = None
    label: str | None = Field(default=None, description="A label.")


class Dims(BaseModel):
    dim: int | str
    optional_dim: int | str | None = None


class Left(BaseModel):
    shared: int
    left: str


class Right(BaseModel):
    shared: int
    right: bool


class Merged(BaseModel):
    either: Left | Right
    maybe: Left | Right | None = None


class IntShared(BaseModel):
    shared: int


class StrShared(BaseModel):
    shared: str


class Conflicting(BaseModel):
    either: IntShared | StrShared


class Pair(BaseModel):
    pair: tuple[int, str]


class Mixed(BaseModel):
    value: float | str


class Described(BaseModel):
    """Described model."""

    inner: Left = Field(description="The inner model.")
    kind: Literal["only"] = "only"
    rate: float = Field(gt=0.0, lt=1.0)
    free: dict[str, object] = Field(json_schema_extra={PRESERVE_UNKNOWN_FIELDS: True})


def test_optional_becomes_nullable() -> None:
    properties = convert_model(Maybe)["properties"]
    assert properties["count"] == {"type": "integer", "nullable": True}
    assert properties["label"] == {"type": "string", "description": "A label.", "nullable": True}


def test_int_or_str_becomes_int_or_string() -> None:
    properties = convert_model(Dims)["properties"]
    assert properties["dim"] == {"x-kubernetes-int-or-string": True}
    assert properties["optional_dim"] == {"x-kubernetes-int-or-string": True, "nullable": True}


def test_a_union_of_objects_is_merged() -> None:
    schema = convert_model(Merged)
    either = schema["properties"]["either"]
    assert either["type"] == "object"
    assert set(either["properties"]) == {"shared", "left", "right"}
    assert either["required"] == ["shared"]
    assert schema["properties"]["maybe"]["nullable"] is True
    assert schema["required"] == ["either"]


def test_a_conflicting_union_of_objects_is_an_error() -> None:
    with pytest.raises(SchemaConversionError, match=r"\.either\.shared: declared differently"):
        convert_model(Conflicting)


def test_a_tuple_is_an_error() -> None:
    with pytest.raises(SchemaConversionError, match=r"\.pair: tuples \(prefixItems\)"):
        convert_model(Pair)


def test_a_union_of_scalars_is_an_error_with_a_hint() -> None:
    with pytest.raises(
        SchemaConversionError, match=r"\.value: a union of \['number', 'string'\]"
    ) as caught:
        convert_model(Mixed)
    assert PRESERVE_UNKNOWN_FIELDS in str(caught.value)


def test_refs_consts_bounds_and_free_form_fields() -> None:
    schema = convert_model(Described)
    assert schema["description"] == "Described model."
    properties = schema["properties"]
    assert properties["inner"]["description"] == "The inner model."
    assert properties["inner"]["properties"]["left"] == {"type": "string"}
    assert properties["kind"] == {"type": "string", "enum": ["only"]}
    assert properties["rate"] == {
        "type": "number",
        "minimum": 0.0,
        "exclusiveMinimum": True,
        "maximum": 1.0,
        "exclusiveMaximum": True,
    }
    assert properties["free"] == {"type": "object", PRESERVE_UNKNOWN_FIELDS: True}
    assert "title" not in schema
    assert "default" not in properties["kind"]


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ({"const": "x"}, {"type": "string", "enum": ["x"]}),
        ({"const": 3}, {"type": "integer", "enum": [3]}),
        ({"const": 1.5}, {"type": "number", "enum": [1.5]}),
        ({"const": True}, {"type": "boolean", "enum": [True]}),
        (
            {"allOf": [{"type": "string"}], "description": "d"},
            {"type": "string", "description": "d"},
        ),
        (
            {"type": "object", "patternProperties": {"^[A-Z]+$": {"type": "integer"}}},
            {"type": "object", "additionalProperties": {"type": "integer"}},
        ),
        (
            {
                "type": "object",
                "properties": {"a": {"type": "string"}},
                "additionalProperties": False,
            },
            {"type": "object", "properties": {"a": {"type": "string"}}},
        ),
        (
            {"oneOf": [{"type": "integer"}, {"type": "null"}], "default": None, "title": "T"},
            {"type": "integer", "nullable": True},
        ),
        (
            {"type": "string", "format": "date-time", "examples": ["x"], "propertyNames": {}},
            {"type": "string", "format": "date-time"},
        ),
        (
            {"$ref": "#/$defs/Thing", "description": "outer"},
            {"type": "string", "description": "outer", "maxLength": 3},
        ),
        (
            {"anyOf": [{"type": "integer"}, {"type": "string"}], "description": "dim"},
            {"x-kubernetes-int-or-string": True, "description": "dim"},
        ),
        (
            {"anyOf": [{"type": "object"}, {"type": "object"}, {"type": "null"}]},
            {"type": "object", "nullable": True},
        ),
        (
            {"description": "free", PRESERVE_UNKNOWN_FIELDS: True},
            {"type": "object", PRESERVE_UNKNOWN_FIELDS: True, "description": "free"},
        ),
    ],
)
def test_conversion_rules(raw: dict[str, Any], expected: dict[str, Any]) -> None:
    document = raw | {
        "$defs": {"Thing": {"type": "string", "maxLength": 3, "description": "inner"}}
    }
    assert structural_schema(document) == expected


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"const": [1]}, "const of unsupported type list"),
        ({"allOf": [{"type": "string"}, {"maxLength": 3}]}, "<root>: allOf with several parts"),
        ({"type": ["string", "null"]}, "<root>: schema has no single type"),
        ({"description": "no type"}, "<root>: schema has no single type"),
        ({"type": "string", "not": {"const": "x"}}, "<root>: unsupported keywords {'not'}"),
        ({"type": "array"}, ": array without items"),
        (
            {
                "type": "object",
                "patternProperties": {"a": {"type": "string"}, "b": {"type": "string"}},
            },
            "several key patterns in one map",
        ),
        (
            {
                "type": "object",
                "patternProperties": {"a": {"type": "string"}},
                "additionalProperties": {"type": "string"},
            },
            "several key patterns in one map",
        ),
        (
            {
                "type": "object",
                "properties": {"a": {"type": "string"}},
                "additionalProperties": {"type": "string"},
            },
            "both properties and additionalProperties",
        ),
        (
            {"anyOf": [{"type": "string"}, {"type": "boolean"}]},
            "<root>: a union of ['boolean', 'string'] has no structural form",
        ),
    ],
)
def test_conversion_errors(raw: dict[str, Any], message: str) -> None:
    with pytest.raises(SchemaConversionError) as caught:
        structural_schema(raw)
    assert message in str(caught.value)


# ---------------------------------------------------------------- names and printer columns

EXPECTED_COLUMNS = {
    "Blueprint": ["PHASE", "KERNELS", "AGE"],
    "KernelArtifact": ["BLUEPRINT", "TARGET", "PHASE", "LATENCY", "AGE"],
    "MorphogeneticRun": ["PHASE", "EPOCH", "ACCURACY", "SEEDS", "AGE"],
}
EXPECTED_NAMES = {
    "Blueprint": ("blueprints", "blueprint", ["bp"]),
    "KernelArtifact": ("kernelartifacts", "kernelartifact", ["ka", "kernel"]),
    "MorphogeneticRun": ("morphogeneticruns", "morphogeneticrun", ["mrun"]),
}
COLUMN_TYPES = {"string": "string", "integer": "integer", "number": "number"}


@pytest.mark.parametrize("kind", KINDS)
def test_crd_names_group_and_version(kind: str) -> None:
    crd = definition(RESOURCES[kind])
    plural, singular, short_names = EXPECTED_NAMES[kind]
    assert crd["apiVersion"] == "apiextensions.k8s.io/v1"
    assert crd["kind"] == "CustomResourceDefinition"
    assert crd["metadata"]["name"] == f"{plural}.esper.dev"
    assert file_name(RESOURCES[kind]) == f"{plural}.esper.dev.yaml"
    spec = crd["spec"]
    assert (spec["group"], spec["scope"]) == ("esper.dev", "Namespaced")
    assert spec["names"] == {
        "kind": kind,
        "listKind": f"{kind}List",
        "plural": plural,
        "singular": singular,
        "shortNames": short_names,
        "categories": ["esper"],
    }
    [version] = spec["versions"]
    assert (version["name"], version["served"], version["storage"]) == ("v1alpha1", True, True)
    assert version["subresources"] == {"status": {}}
    schema = version["schema"]["openAPIV3Schema"]
    assert schema["required"] == ["spec"]
    assert set(schema["properties"]) == {"apiVersion", "kind", "metadata", "spec", "status"}
    assert schema["description"].startswith(f"{kind} is an Esper {singular}. ")


@pytest.mark.parametrize("kind", KINDS)
def test_printer_columns(kind: str) -> None:
    columns = definition(RESOURCES[kind])["spec"]["versions"][0]["additionalPrinterColumns"]
    assert [column["name"] for column in columns] == EXPECTED_COLUMNS[kind]
    assert columns[-1] == {"name": "AGE", "type": "date", "jsonPath": ".metadata.creationTimestamp"}


def test_latency_column_has_a_description() -> None:
    columns = definition(RESOURCES["KernelArtifact"])["spec"]["versions"][0][
        "additionalPrinterColumns"
    ]
    latency = next(column for column in columns if column["name"] == "LATENCY")
    assert latency["jsonPath"] == ".status.latencyP50Ms"
    assert latency["type"] == "number"
    assert "latency" in latency["description"].lower()
    assert all("description" not in column for column in columns if column["name"] != "LATENCY")


def resolve(schema: Mapping[str, Any], json_path: str) -> Mapping[str, Any]:
    node = schema
    for part in json_path.lstrip(".").split("."):
        properties = node.get("properties")
        assert properties is not None, f"{json_path}: '{part}' has no properties"
        assert part in properties, f"{json_path}: no '{part}'"
        node = properties[part]
    return node


@pytest.mark.parametrize(
    ("kind", "column"),
    [(kind, column) for kind in KINDS for column in RESOURCES[kind].printer_columns],
    ids=lambda value: value if isinstance(value, str) else value.name,
)
def test_printer_column_paths_resolve(
    kind: str, column: PrinterColumn, schemas: dict[str, Any]
) -> None:
    if column.json_path.startswith(".metadata."):
        # ObjectMeta is Kubernetes' own; the schema only declares metadata as an object.
        assert schemas[kind]["properties"]["metadata"] == {"type": "object"}
        assert column.json_path == ".metadata.creationTimestamp"
        return
    target = resolve(schemas[kind], column.json_path)
    assert target["type"] == COLUMN_TYPES[column.type]


def test_resolve_fails_on_a_missing_property(schemas: dict[str, Any]) -> None:
    with pytest.raises(AssertionError, match="no 'nothing'"):
        resolve(schemas["Blueprint"], ".status.nothing")


# ---------------------------------------------------------------- generation and drift


def test_committed_files_are_current() -> None:
    assert check_directories([REPO / directory for directory in DEFAULT_DIRECTORIES]) == []
    assert [str(directory) for directory in DEFAULT_DIRECTORIES] == ["crds", "helm/esper/crds"]


def test_rendering_is_deterministic_and_parses_back() -> None:
    files = rendered_files()
    assert files == rendered_files()
    assert sorted(files) == sorted(file_name(resource) for resource in CUSTOM_RESOURCES)
    for resource in CUSTOM_RESOURCES:
        text = render(resource)
        assert text.startswith(HEADER)
        assert yaml.safe_load(text) == definition(resource)


def test_write_then_check(tmp_path: Path) -> None:
    directories = [tmp_path / "crds", tmp_path / "helm" / "esper" / "crds"]
    written = write(directories)
    assert sorted(written) == sorted(
        directory / name for directory in directories for name in rendered_files()
    )
    assert check_directories(directories) == []
    for path in written:
        assert path.read_text(encoding="utf-8") == rendered_files()[path.name]


def test_check_reports_missing_differing_and_stale_files(tmp_path: Path) -> None:
    write([tmp_path])
    names = sorted(rendered_files())
    (tmp_path / names[0]).unlink()
    edited = tmp_path / names[1]
    edited.write_text(edited.read_text() + "# hand edit\n")
    stale = tmp_path / "oldthings.esper.dev.yaml"
    stale.write_text("kind: CustomResourceDefinition\n")
    (tmp_path / "notes.yaml").write_text("unrelated\n")
    drift = {(item.path, item.problem) for item in check_directories([tmp_path])}
    assert drift == {
        (tmp_path / names[0], "missing"),
        (edited, "differs"),
        (stale, "not generated"),
    }


def test_check_of_a_missing_directory_reports_every_file(tmp_path: Path) -> None:
    drift = check_directories([tmp_path / "absent"])
    assert sorted(item.path.name for item in drift) == sorted(rendered_files())
    assert {item.problem for item in drift} == {"missing"}


def test_write_removes_stale_generated_files_only(tmp_path: Path) -> None:
    stale = tmp_path / "oldthings.esper.dev.yaml"
    stale.write_text("old\n")
    other = tmp_path / "README.md"
    other.write_text("keep\n")
    write([tmp_path])
    assert not stale.exists()
    assert other.read_text() == "keep\n"
    assert check_directories([tmp_path]) == []
    # Writing again over current files keeps them and changes nothing.
    before = {path.name: path.read_text() for path in tmp_path.iterdir()}
    write([tmp_path])
    assert {path.name: path.read_text() for path in tmp_path.iterdir()} == before


class FreeSpec(Contract):
    data: dict[str, int] = Field(
        default_factory=dict, json_schema_extra={PRESERVE_UNKNOWN_FIELDS: True}
    )


class EmptyStatus(Contract):
    phase: str = "Pending"


def test_a_non_structural_schema_is_refused() -> None:
    resource = CustomResource(
        kind="Thing",
        plural="things",
        singular="thing",
        short_names=(),
        spec_model=FreeSpec,
        status_model=EmptyStatus,
        printer_columns=(),
    )
    with pytest.raises(
        StructuralSchemaError, match=r"Thing: schema is not structural: \.spec\.data"
    ):
        open_api_schema(resource)


def test_a_spec_model_without_docstring_gets_a_plain_description(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    resource = CustomResource(
        kind="MorphogeneticRun",
        plural="things",
        singular="thing",
        short_names=("t",),
        spec_model=FreeSpec,
        status_model=EmptyStatus,
        printer_columns=(),
    )
    monkeypatch.setitem(generate.PRESERVE_UNKNOWN_PATHS, "MorphogeneticRun", (".spec.data",))
    schema = open_api_schema(resource)
    assert schema["description"] == "MorphogeneticRun is an Esper thing. "
    assert schema["properties"]["spec"]["properties"]["data"][PRESERVE_UNKNOWN_FIELDS] is True


def test_a_failing_generation_writes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    broken = CustomResource(
        kind="Thing",
        plural="things",
        singular="thing",
        short_names=(),
        spec_model=FreeSpec,
        status_model=EmptyStatus,
        printer_columns=(),
    )
    monkeypatch.setattr(generate, "CUSTOM_RESOURCES", (*CUSTOM_RESOURCES, broken))
    with pytest.raises(StructuralSchemaError):
        write([tmp_path / "out"])
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------- manifests against the schema


def conformance(value: Any, schema: Mapping[str, Any], path: str = "") -> list[str]:
    """Where ``value`` breaks ``schema``: unknown properties, wrong types, missing keys."""
    where = path or "<root>"
    if value is None:
        return [] if schema.get("nullable") else [f"{where}: null"]
    if schema.get("x-kubernetes-int-or-string"):
        ok = isinstance(value, int | str) and not isinstance(value, bool)
        return [] if ok else [f"{where}: not int-or-string"]
    if schema.get(PRESERVE_UNKNOWN_FIELDS):
        return [] if isinstance(value, dict) else [f"{where}: not an object"]
    kind = schema["type"]
    checks = {
        "object": lambda item: isinstance(item, dict),
        "array": lambda item: isinstance(item, list),
        "string": lambda item: isinstance(item, str),
        "integer": lambda item: isinstance(item, int) and not isinstance(item, bool),
        "number": lambda item: isinstance(item, int | float) and not isinstance(item, bool),
        "boolean": lambda item: isinstance(item, bool),
    }
    if not checks[kind](value):
        return [f"{where}: not {kind}"]
    problems = []
    if "enum" in schema and value not in schema["enum"]:
        problems.append(f"{where}: not in enum")
    if kind == "string" and "pattern" in schema and not re.search(schema["pattern"], value):
        problems.append(f"{where}: does not match {schema['pattern']}")
    if kind == "array":
        for index, item in enumerate(value):
            problems += conformance(item, schema["items"], f"{path}[{index}]")
    if kind == "object":
        problems += _object_conformance(value, schema, path)
    return problems


def _object_conformance(value: dict[str, Any], schema: Mapping[str, Any], path: str) -> list[str]:
    required = schema.get("required", [])
    problems = [f"{path or '<root>'}: lacks {key}" for key in required if key not in value]
    properties = schema.get("properties")
    for key, item in value.items():
        if properties is not None:
            if key not in properties:
                problems.append(f"{path}.{key}: not in the schema")
            else:
                problems += conformance(item, properties[key], f"{path}.{key}")
        elif "additionalProperties" in schema:
            problems += conformance(item, schema["additionalProperties"], f"{path}.{key}")
        elif path != ".metadata":  # ObjectMeta is Kubernetes' own
            problems.append(f"{path}.{key}: object without declared properties")
    return problems


def manifest(kind: str, spec: Contract, status: Contract, **dump: Any) -> dict[str, Any]:
    return {
        "apiVersion": "esper.dev/v1alpha1",
        "kind": kind,
        "metadata": {"name": "sample", "namespace": "default"},
        "spec": spec.model_dump(mode="json", by_alias=True, **dump),
        "status": status.model_dump(mode="json", by_alias=True, **dump),
    }


MANIFESTS = {
    "Blueprint": lambda: (blueprint_resource_spec(), blueprint_resource_status()),
    "KernelArtifact": lambda: (kernel_artifact_resource_spec(), kernel_artifact_resource_status()),
    "MorphogeneticRun": lambda: (run_spec(), run_resource_status()),
}


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("dump", [{}, {"exclude_none": True}, {"exclude_defaults": True}], ids=str)
def test_sample_manifests_validate_against_the_schema(
    kind: str, dump: dict[str, Any], schemas: dict[str, Any]
) -> None:
    spec, status = MANIFESTS[kind]()
    document = manifest(kind, spec, status, **dump)
    assert conformance(document, schemas[kind]) == []
    # And the manifest reads back into the contracts.
    assert RESOURCES[kind].spec_model.model_validate(document["spec"]) == spec
    assert RESOURCES[kind].status_model.model_validate(document["status"]) == status


def test_blueprint_manifest_keys_all_appear_in_the_schema(schemas: dict[str, Any]) -> None:
    def keys(value: Any, path: str = "") -> set[str]:
        if isinstance(value, dict):
            found = set()
            for key, item in value.items():
                found |= {f"{path}.{key}"} | keys(item, f"{path}.{key}")
            return found
        if isinstance(value, list):
            return set().union(*(keys(item, f"{path}[]") for item in value))
        return set()

    spec = blueprint_resource_spec().model_dump(mode="json", by_alias=True)
    used = {path for path in keys(spec, ".spec") if ".bindings." not in path}
    declared = {path for path, _ in walk(schemas["Blueprint"])}
    assert used
    assert used <= declared


def test_conformance_catches_problems(schemas: dict[str, Any]) -> None:
    spec, status = MANIFESTS["Blueprint"]()
    document = manifest("Blueprint", spec, status)
    broken = copy.deepcopy(document)
    broken["spec"]["ir"]["bogus"] = 1
    broken["status"]["phase"] = "Sleeping"
    broken["spec"]["ir"]["input"]["shape"] = [True]
    broken["status"]["kernelCount"] = "one"
    broken["spec"]["ir"]["name"] = None
    del broken["spec"]["targets"]
    assert len(conformance(broken, schemas["Blueprint"])) == 6
