"""examples/blueprints/*.yaml: one Blueprint manifest per built-in, identical to the library."""

from pathlib import Path

import pytest
import yaml

from esper.blueprints.library import LIBRARY
from esper.blueprints.shapes import check_graftable
from esper.contracts import BlueprintResourceSpec, KernelTarget

EXAMPLES = Path(__file__).resolve().parents[3] / "examples" / "blueprints"
MANIFESTS = sorted(EXAMPLES.glob("*.yaml"))


def _load(path: Path) -> dict[str, object]:
    document = yaml.safe_load(path.read_text(encoding="utf-8"))
    assert isinstance(document, dict)
    return document


def test_one_manifest_per_library_blueprint() -> None:
    assert {path.stem for path in MANIFESTS} == set(LIBRARY)
    assert len(MANIFESTS) == len(LIBRARY)


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda path: path.stem)
def test_manifest_ir_equals_the_library_ir(path: Path) -> None:
    document = _load(path)
    assert document["apiVersion"] == "esper.dev/v1alpha1"
    assert document["kind"] == "Blueprint"
    assert document["metadata"] == {"name": path.stem}
    spec = BlueprintResourceSpec.model_validate(document["spec"])
    library = LIBRARY[path.stem]
    assert spec.ir.canonical_hash() == library.canonical_hash()
    assert spec.ir.canonical_json() == library.canonical_json()
    assert spec.ir == library  # metadata too: name, description, tags


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda path: path.stem)
def test_manifest_targets_bind_every_symbol_and_graft(path: Path) -> None:
    document = _load(path)
    spec = document["spec"]
    assert isinstance(spec, dict)
    ir = LIBRARY[path.stem]
    assert spec["targets"]
    for raw in spec["targets"]:
        target = KernelTarget.model_validate(raw)
        assert ir.symbols() <= set(target.bindings), target.short()
        report = check_graftable(ir, target.bindings)
        assert report.params is not None
        assert report.params > 0
        assert KernelTarget.parse(target.short()) == target
