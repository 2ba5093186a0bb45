"""Turn a contract's JSON Schema into a Kubernetes structural ``openAPIV3Schema``.

Pydantic emits JSON Schema 2020-12 with ``$ref``s, ``anyOf`` for optionals and unions, numeric
``exclusiveMinimum`` and ``const``. Kubernetes accepts an OpenAPI v3.0 subset and requires a
*structural* schema: every node typed, no references, no logical junctors that carry types.
The conversion rules:

- ``$ref`` and single-entry ``allOf`` are inlined;
- ``X | None`` becomes ``X`` with ``nullable: true``;
- a union of objects becomes one object with the union of their properties (the exact variant is
  checked by the contract when the operator reads the resource), and a property that two
  variants declare differently is a generation error;
- ``int | str`` becomes ``x-kubernetes-int-or-string``;
- ``const`` becomes a one-value ``enum``; numeric ``exclusiveMinimum``/``exclusiveMaximum``
  become the OpenAPI v3.0 boolean form;
- ``default``, ``title``, ``discriminator``, ``propertyNames`` and
  ``additionalProperties: false`` are dropped (the API server prunes unknown fields; the
  contract applies defaults and checks key patterns); a map with one key pattern
  (``patternProperties``) becomes a map of its value schema;
- a field marked ``x-kubernetes-preserve-unknown-fields`` is kept free-form.
"""

from collections.abc import Mapping
from typing import cast

from esper.contracts.types import PRESERVE_UNKNOWN_FIELDS

JsonObject = dict[str, object]
"""A JSON Schema node."""

_DROPPED_KEYS = frozenset(
    {"title", "default", "discriminator", "examples", "$defs", "propertyNames"}
)
_COPIED_KEYS = (
    "description",
    "format",
    "pattern",
    "minLength",
    "maxLength",
    "minimum",
    "maximum",
    "minItems",
    "maxItems",
    "minProperties",
    "maxProperties",
    "multipleOf",
    "enum",
)


class SchemaConversionError(ValueError):
    """Raised when a contract uses a construct a structural schema cannot express."""


def structural_schema(json_schema: Mapping[str, object]) -> JsonObject:
    """Convert a pydantic JSON Schema (with its ``$defs``) to a structural schema.

    Args:
        json_schema: Output of ``Model.model_json_schema(by_alias=True)``.

    Returns:
        The structural schema.

    Raises:
        SchemaConversionError: When a construct has no structural equivalent.
    """
    definitions = cast(Mapping[str, Mapping[str, object]], json_schema.get("$defs", {}))
    return _Converter(definitions).convert(json_schema, "")


class _Converter:
    def __init__(self, definitions: Mapping[str, Mapping[str, object]]) -> None:
        self._definitions = definitions

    def resolve(self, node: Mapping[str, object]) -> Mapping[str, object]:
        """Inline ``$ref`` and single-entry ``allOf``, keeping sibling keys such as description."""
        while True:
            if "$ref" in node:
                reference = cast(str, node["$ref"])
                name = reference.removeprefix("#/$defs/")
                siblings = {key: value for key, value in node.items() if key != "$ref"}
                node = {**self._definitions[name], **siblings}
            elif "allOf" in node and len(cast(list[object], node["allOf"])) == 1:
                inner = cast(list[Mapping[str, object]], node["allOf"])[0]
                siblings = {key: value for key, value in node.items() if key != "allOf"}
                node = {**inner, **siblings}
            else:
                return node

    def convert(self, raw: Mapping[str, object], path: str) -> JsonObject:
        node = self.resolve(raw)
        if node.get(PRESERVE_UNKNOWN_FIELDS) is True:
            result: JsonObject = {"type": "object", PRESERVE_UNKNOWN_FIELDS: True}
            if "description" in node:
                result["description"] = node["description"]
            return result
        for junctor in ("anyOf", "oneOf"):
            if junctor in node:
                return self._union(node, cast(list[Mapping[str, object]], node[junctor]), path)
        if "allOf" in node:
            raise SchemaConversionError(f"{path or '<root>'}: allOf with several parts")
        result = self._typed(node, path)
        unknown = set(node) - _DROPPED_KEYS - set(_COPIED_KEYS) - _HANDLED_KEYS
        if unknown:
            raise SchemaConversionError(f"{path or '<root>'}: unsupported keywords {unknown}")
        return result

    def _typed(self, node: Mapping[str, object], path: str) -> JsonObject:
        if "const" in node:
            node = {**node, "enum": [node["const"]]}
            if "type" not in node:
                node = {**node, "type": _json_type(node["const"], path)}
        schema_type = node.get("type")
        if not isinstance(schema_type, str):
            raise SchemaConversionError(f"{path or '<root>'}: schema has no single type: {node}")
        result: JsonObject = {"type": schema_type}
        for key in _COPIED_KEYS:
            if key in node:
                result[key] = node[key]
        for bound, plain in (("exclusiveMinimum", "minimum"), ("exclusiveMaximum", "maximum")):
            if bound in node:
                result[plain] = node[bound]
                result[bound] = True
        if schema_type == "object":
            self._object(node, result, path)
        elif schema_type == "array":
            if "prefixItems" in node:
                raise SchemaConversionError(f"{path}: tuples (prefixItems) are not structural")
            if "items" not in node:
                raise SchemaConversionError(f"{path}: array without items")
            items = cast(Mapping[str, object], node["items"])
            result["items"] = self.convert(items, f"{path}[]")
        return result

    def _object(self, node: Mapping[str, object], result: JsonObject, path: str) -> None:
        properties = cast(Mapping[str, Mapping[str, object]], node.get("properties", {}))
        extra = node.get("additionalProperties")
        patterned = cast(Mapping[str, Mapping[str, object]], node.get("patternProperties", {}))
        if patterned:
            # A map with constrained keys: the key pattern is the contract's to check, the value
            # schema becomes the map's value schema.
            if len(patterned) != 1 or isinstance(extra, Mapping):
                raise SchemaConversionError(f"{path}: several key patterns in one map")
            extra = next(iter(patterned.values()))
        if properties:
            result["properties"] = {
                name: self.convert(child, f"{path}.{name}") for name, child in properties.items()
            }
            if isinstance(extra, Mapping):
                raise SchemaConversionError(f"{path}: both properties and additionalProperties")
        elif isinstance(extra, Mapping):
            result["additionalProperties"] = self.convert(
                cast(Mapping[str, object], extra), f"{path}.*"
            )
        required = node.get("required")
        if required:
            result["required"] = list(cast(list[str], required))

    def _union(
        self, node: Mapping[str, object], options: list[Mapping[str, object]], path: str
    ) -> JsonObject:
        resolved = [self.resolve(option) for option in options]
        nullable = any(option.get("type") == "null" for option in resolved)
        concrete = [option for option in resolved if option.get("type") != "null"]
        siblings = {
            key: value for key, value in node.items() if key not in ("anyOf", "oneOf", "default")
        }
        if len(concrete) == 1:
            result = self.convert({**concrete[0], **siblings}, path)
        elif {option.get("type") for option in concrete} == {"integer", "string"}:
            result = {"x-kubernetes-int-or-string": True}
            if "description" in node:
                result["description"] = node["description"]
        elif all(option.get("type") == "object" for option in concrete):
            result = self._merge_objects(concrete, siblings, path)
        else:
            types = sorted(str(option.get("type")) for option in concrete)
            raise SchemaConversionError(
                f"{path or '<root>'}: a union of {types} has no structural form; mark the field "
                f"with {PRESERVE_UNKNOWN_FIELDS} if free-form content is intended"
            )
        if nullable:
            result["nullable"] = True
        return result

    def _merge_objects(
        self, variants: list[Mapping[str, object]], siblings: Mapping[str, object], path: str
    ) -> JsonObject:
        properties: JsonObject = {}
        required_sets: list[set[str]] = []
        for variant in variants:
            converted = self.convert(variant, path)
            for name, child in cast(JsonObject, converted.get("properties", {})).items():
                if name in properties and properties[name] != child:
                    raise SchemaConversionError(
                        f"{path}.{name}: declared differently by two variants of a union"
                    )
                properties[name] = child
            required_sets.append(set(cast(list[str], converted.get("required", []))))
        result: JsonObject = {"type": "object"}
        if "description" in siblings:
            result["description"] = siblings["description"]
        if properties:
            result["properties"] = properties
        required = set.intersection(*required_sets) if required_sets else set()
        if required:
            result["required"] = sorted(required)
        return result


_HANDLED_KEYS = frozenset(
    {
        "type",
        "properties",
        "additionalProperties",
        "required",
        "items",
        "const",
        "exclusiveMinimum",
        "exclusiveMaximum",
        "allOf",
        "patternProperties",
        PRESERVE_UNKNOWN_FIELDS,
    }
)


def _json_type(value: object, path: str) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    raise SchemaConversionError(f"{path}: const of unsupported type {type(value).__name__}")
