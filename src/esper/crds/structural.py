"""Check a CRD ``openAPIV3Schema`` against Kubernetes' structural-schema rules.

The generator refuses to write a CRD whose schema breaks these rules, so a contract change that
cannot be expressed structurally fails at generation time, not at ``kubectl apply``. The rules
follow apiextensions.k8s.io/v1 ("Specifying a structural schema"):

1. every node has a non-empty ``type``, unless it is ``x-kubernetes-int-or-string`` or
   ``x-kubernetes-preserve-unknown-fields``;
2. no ``$ref``, ``definitions``, ``id``, ``$schema``, ``patternProperties``, ``dependencies``,
   ``additionalItems``; no ``uniqueItems: true``; no ``additionalProperties: false``;
   ``properties`` and ``additionalProperties`` are mutually exclusive;
3. no keyword outside the OpenAPI v3.0 subset Kubernetes accepts, and no logical junctors
   (``allOf``/``anyOf``/``oneOf``/``not``) — Esper's generator never needs them;
4. ``exclusiveMinimum``/``exclusiveMaximum`` are booleans; ``nullable`` is a boolean;
5. ``x-kubernetes-preserve-unknown-fields`` appears only at paths the caller allows.
"""

from collections.abc import Collection, Mapping
from typing import cast

_ALLOWED_KEYS = frozenset(
    {
        "description",
        "type",
        "format",
        "title",
        "maximum",
        "exclusiveMaximum",
        "minimum",
        "exclusiveMinimum",
        "maxLength",
        "minLength",
        "pattern",
        "maxItems",
        "minItems",
        "multipleOf",
        "enum",
        "maxProperties",
        "minProperties",
        "required",
        "items",
        "properties",
        "additionalProperties",
        "nullable",
        "example",
        "externalDocs",
        "x-kubernetes-preserve-unknown-fields",
        "x-kubernetes-int-or-string",
        "x-kubernetes-embedded-resource",
        "x-kubernetes-list-type",
        "x-kubernetes-list-map-keys",
        "x-kubernetes-map-type",
        "x-kubernetes-validations",
    }
)
_TYPES = frozenset({"object", "array", "string", "integer", "number", "boolean"})


def structural_violations(
    schema: Mapping[str, object], preserve_unknown_paths: Collection[str] = ()
) -> list[str]:
    """List every way a schema breaks the structural rules.

    Args:
        schema: An ``openAPIV3Schema``.
        preserve_unknown_paths: Dotted paths (``.spec.host.kwargs``) where free-form content is
            intended.

    Returns:
        One message per violation, naming its path; empty when the schema is structural.
    """
    problems: list[str] = []
    _check(schema, "", set(preserve_unknown_paths), problems)
    return problems


def _check(node: Mapping[str, object], path: str, preserve: set[str], problems: list[str]) -> None:
    where = path or "<root>"
    problems.extend(
        f"{where}: keyword '{key}' is not allowed in a structural schema"
        for key in node
        if key not in _ALLOWED_KEYS
    )
    free_form = node.get("x-kubernetes-preserve-unknown-fields") is True
    int_or_string = node.get("x-kubernetes-int-or-string") is True
    if free_form and path not in preserve:
        problems.append(f"{where}: x-kubernetes-preserve-unknown-fields where it is not intended")
    schema_type = node.get("type")
    if schema_type is None and not (free_form or int_or_string):
        problems.append(f"{where}: no type")
    elif schema_type is not None and schema_type not in _TYPES:
        problems.append(f"{where}: unknown type {schema_type!r}")
    if node.get("additionalProperties") is False:
        problems.append(f"{where}: additionalProperties: false is forbidden")
    if "properties" in node and "additionalProperties" in node:
        problems.append(f"{where}: properties and additionalProperties are mutually exclusive")
    problems.extend(
        f"{where}: {key} must be a boolean"
        for key in ("exclusiveMinimum", "exclusiveMaximum", "nullable")
        if key in node and not isinstance(node[key], bool)
    )
    if schema_type == "array" and "items" not in node:
        problems.append(f"{where}: array without items")
    for name, child in cast(Mapping[str, Mapping[str, object]], node.get("properties", {})).items():
        _check(child, f"{path}.{name}", preserve, problems)
    additional = node.get("additionalProperties")
    if isinstance(additional, Mapping):
        _check(cast(Mapping[str, object], additional), f"{path}.*", preserve, problems)
    items = node.get("items")
    if isinstance(items, Mapping):
        _check(cast(Mapping[str, object], items), f"{path}[]", preserve, problems)
