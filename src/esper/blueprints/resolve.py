"""Turn a run's blueprint references into blueprints: library names or blueprint files.

A file holds a ``BlueprintIR`` (YAML or JSON) or a ``Blueprint`` manifest (its ``spec.ir`` is
used). Relative paths are resolved against the directory of the config file that names them.
"""

from collections.abc import Sequence
from pathlib import Path

from pydantic import ValidationError

from esper.blueprints.library import LIBRARY
from esper.contracts._base import describe_validation_error
from esper.contracts.blueprint import BlueprintIR
from esper.yamlfile import YamlFileError, load_yaml_file

BLUEPRINT_FILE_SUFFIXES = (".yaml", ".yml", ".json")


class BlueprintReferenceError(ValueError):
    """Raised for a reference that names no library blueprint and no readable blueprint file."""


def resolve_blueprints(references: Sequence[str], base_dir: Path) -> list[BlueprintIR]:
    """Resolve references in order (a blueprint named twice is kept once).

    Args:
        references: Library names or file paths.
        base_dir: Directory relative paths start from.

    Returns:
        The blueprints.

    Raises:
        BlueprintReferenceError: Naming the reference and what is wrong with it.
    """
    resolved: dict[str, BlueprintIR] = {}
    for reference in references:
        ir = _resolve(reference, base_dir)
        resolved.setdefault(ir.canonical_hash(), ir)
    return list(resolved.values())


def _resolve(reference: str, base_dir: Path) -> BlueprintIR:
    if reference in LIBRARY:
        return LIBRARY[reference]
    if not reference.endswith(BLUEPRINT_FILE_SUFFIXES):
        raise BlueprintReferenceError(
            f"blueprint '{reference}' is not in the library ({', '.join(sorted(LIBRARY))}) "
            f"and is not a {'/'.join(BLUEPRINT_FILE_SUFFIXES)} file"
        )
    path = Path(reference)
    path = path if path.is_absolute() else base_dir / path
    try:
        document = load_yaml_file(path, "blueprint file")
    except YamlFileError as error:
        raise BlueprintReferenceError(str(error)) from None
    if isinstance(document, dict) and document.get("kind") == "Blueprint":
        spec = document.get("spec")
        document = spec.get("ir") if isinstance(spec, dict) else None
    try:
        return BlueprintIR.model_validate(document)
    except ValidationError as error:
        raise BlueprintReferenceError(
            f"blueprint file {path}: {describe_validation_error(error)}"
        ) from None
