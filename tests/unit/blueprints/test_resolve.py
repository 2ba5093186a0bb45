"""Resolving a run's blueprint references: library names and blueprint files."""

import json
from pathlib import Path

import pytest
import yaml

from esper.blueprints.library import LIBRARY, builtin
from esper.blueprints.resolve import BlueprintReferenceError, resolve_blueprints

ROOT = Path(__file__).resolve().parents[3]


def test_library_names_resolve_in_order_and_repeat_once() -> None:
    resolved = resolve_blueprints(["residual-mlp", "bottleneck-mlp", "residual-mlp"], Path("."))
    assert resolved == [builtin("residual-mlp"), builtin("bottleneck-mlp")]


def test_a_blueprint_manifest_file_resolves_to_its_ir() -> None:
    manifest = ROOT / "examples/blueprints/squeeze-excite.yaml"
    assert resolve_blueprints([str(manifest)], Path("/nonexistent")) == [builtin("squeeze-excite")]


def test_a_relative_path_starts_at_the_base_directory(tmp_path: Path) -> None:
    ir = builtin("low-rank-adapter").model_dump(mode="json", by_alias=True)
    (tmp_path / "mine.json").write_text(json.dumps(ir))
    assert resolve_blueprints(["mine.json"], tmp_path) == [builtin("low-rank-adapter")]


def test_an_unknown_name_lists_the_library() -> None:
    with pytest.raises(BlueprintReferenceError) as caught:
        resolve_blueprints(["no-such-blueprint"], Path("."))
    message = str(caught.value)
    assert "no-such-blueprint" in message
    assert all(name in message for name in LIBRARY)


def test_a_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(BlueprintReferenceError, match=r"blueprint file .*gone\.yaml does not"):
        resolve_blueprints(["gone.yaml"], tmp_path)


def test_invalid_yaml_is_named(tmp_path: Path) -> None:
    (tmp_path / "bad.yaml").write_text("nodes: [unclosed\n")
    with pytest.raises(BlueprintReferenceError, match="is not valid YAML"):
        resolve_blueprints(["bad.yaml"], tmp_path)


def test_an_invalid_ir_names_the_file_and_the_problem(tmp_path: Path) -> None:
    document = builtin("bottleneck-mlp").model_dump(mode="json", by_alias=True)
    document["nodes"][0]["op"] = "teleport"
    (tmp_path / "broken.yml").write_text(yaml.safe_dump(document))
    with pytest.raises(BlueprintReferenceError, match=r"broken\.yml: .*op"):
        resolve_blueprints(["broken.yml"], tmp_path)


def test_a_manifest_without_a_spec_is_invalid(tmp_path: Path) -> None:
    (tmp_path / "empty.yaml").write_text("kind: Blueprint\nspec: 3\n")
    with pytest.raises(BlueprintReferenceError, match=r"empty\.yaml"):
        resolve_blueprints(["empty.yaml"], tmp_path)
