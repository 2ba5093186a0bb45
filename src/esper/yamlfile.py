"""Read a YAML document from a file, with errors that name the file and the problem."""

from pathlib import Path

import yaml


class YamlFileError(ValueError):
    """Raised for a missing or unreadable YAML file; the message names it."""


def load_yaml_file(path: Path, what: str) -> object:
    """Parse one YAML document (safe loader: plain data only).

    Args:
        path: The file.
        what: What the file is, for messages (``config file``, ``blueprint file``).

    Returns:
        The document.

    Raises:
        YamlFileError: When the file does not exist or is not valid YAML.
    """
    if not path.is_file():
        raise YamlFileError(f"{what} {path} does not exist")
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as error:
        raise YamlFileError(f"{what} {path} is not valid YAML: {error}") from None
