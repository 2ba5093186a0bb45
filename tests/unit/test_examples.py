"""The shipped example documents are valid contracts."""

from pathlib import Path

import yaml

from esper.contracts import BlueprintResourceSpec, MorphogeneticRunSpec

ROOT = Path(__file__).resolve().parents[2]


def test_blueprint_manifest_spec_is_a_valid_contract() -> None:
    manifest = yaml.safe_load((ROOT / "examples/manifests/blueprint-residual-mlp.yaml").read_text())
    assert manifest["apiVersion"] == "esper.dev/v1alpha1"
    assert manifest["kind"] == "Blueprint"
    spec = BlueprintResourceSpec.model_validate(manifest["spec"])
    assert spec.ir.symbols() == frozenset({"C"})
    assert spec.targets[0].short() == "cpu:fp32:C=128"


def test_run_example_is_a_valid_run_spec() -> None:
    document = yaml.safe_load((ROOT / "examples/run-mnist1d.yaml").read_text())
    spec = MorphogeneticRunSpec.model_validate(document)
    assert spec.host.zoo == "mlp"
    assert spec.budget.max_added_params == 20000
    assert spec.injection.module_types == ["MLPBlock"]
    assert spec.blueprints == ["residual-mlp", "bottleneck-mlp"]
    assert spec.wait_for_kernels
    assert spec.baseline
