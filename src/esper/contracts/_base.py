"""The base model every contract derives from.

All contracts share one wire convention: camelCase keys in JSON and YAML (the Kubernetes
convention, so a contract embedded in a CRD reads the same as one sent to Urza), snake_case
attributes in Python. Unknown keys are rejected, so a typo in a manifest is an error rather
than a silently ignored field.
"""

import inspect
import re

from pydantic import BaseModel, ConfigDict, ValidationError
from pydantic.alias_generators import to_camel

_ATTRIBUTE_LINE = re.compile(r"^(?P<name>[a-z_][a-z0-9_]*): (?P<text>.*)$")


def _docstring_parts(doc: str | None) -> tuple[str, dict[str, str]]:
    """Split a Google-style class docstring into its summary and its ``Attributes:`` entries."""
    text = inspect.cleandoc(doc or "")
    summary = text.split("\n\n", 1)[0].replace("\n", " ").strip()
    attributes: dict[str, str] = {}
    _, found, section = text.partition("Attributes:\n")
    if not found:
        return summary, attributes
    current: str | None = None
    for raw_line in section.splitlines():
        if raw_line and not raw_line.startswith(" "):
            break
        line = raw_line.strip()
        match = (
            _ATTRIBUTE_LINE.match(line)
            if raw_line.startswith("    ") and not raw_line.startswith("     ")
            else None
        )
        if match:
            current = match.group("name")
            attributes[current] = match.group("text")
        elif current is not None and line:
            attributes[current] += " " + line
    return summary, attributes


def _describe_schema(schema: dict[str, object], model: type[BaseModel]) -> None:
    """Give a model's JSON schema its docstring summary and per-field descriptions.

    Contracts document fields in the Google ``Attributes:`` section; copying those texts into
    the schema makes them visible in Urza's OpenAPI document and in ``kubectl explain``.
    """
    summary, attributes = _docstring_parts(model.__doc__)
    schema["description"] = summary
    properties = schema.get("properties")
    if not isinstance(properties, dict):
        return
    for name, field in model.model_fields.items():
        key = field.alias or name
        entry = properties.get(key)
        if isinstance(entry, dict) and name in attributes and "description" not in entry:
            entry["description"] = attributes[name]


class Contract(BaseModel):
    """Base class of every Esper contract.

    Contracts are immutable values: components exchange them, never mutate them. Use
    ``model_copy(update=...)`` to derive a changed value.
    """

    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        alias_generator=to_camel,
        validate_by_name=True,
        validate_by_alias=True,
        serialize_by_alias=True,
        str_strip_whitespace=False,
        use_enum_values=False,
        validate_default=True,
        json_schema_extra=_describe_schema,
    )

    def to_json(self) -> str:
        """Serialise to the wire form (camelCase JSON).

        Returns:
            The JSON text.
        """
        return self.model_dump_json(by_alias=True)


def describe_validation_error(error: ValidationError) -> str:
    """Condense a pydantic error into one line that names each failing field.

    Args:
        error: The validation error.

    Returns:
        ``field.path: message`` parts joined by ``; ``.
    """
    parts = []
    for detail in error.errors():
        location = ".".join(str(item) for item in detail["loc"])
        parts.append(f"{location}: {detail['msg']}" if location else detail["msg"])
    return "; ".join(parts)
