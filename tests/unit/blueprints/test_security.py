"""Issue item 5: an IR names only allow-listed ops and typed params, never code or import paths."""

import inspect
from typing import Any

import pytest
from pydantic import ValidationError

from esper.blueprints import builder, shapes
from esper.contracts import BlueprintIR, Op
from esper.contracts.blueprint import PARAMS_BY_OP

ALLOWED = {
    "linear",
    "low_rank",
    "conv2d",
    "depthwise_conv2d",
    "batch_norm",
    "layer_norm",
    "group_norm",
    "relu",
    "gelu",
    "silu",
    "tanh",
    "sigmoid",
    "dropout",
    "add",
    "mul",
    "concat",
    "squeeze_excite",
    "attention",
    "scale",
    "global_avg_pool",
    "identity",
}


def _document(node: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {
        "name": "hostile",
        "input": {"layout": "features", "shape": ["C"]},
        "nodes": [{"id": "evil", "inputs": ["input"], **node}],
        "output": "evil",
        **extra,
    }


def test_the_allow_list_is_closed() -> None:
    # Growing the allow-list is a reviewed change: this test must be updated with it.
    assert {op.value for op in Op} == ALLOWED
    assert set(PARAMS_BY_OP) == set(Op)
    assert set(builder._BUILDERS) | builder._COMBINERS == set(Op)


HOSTILE_OPS = [
    "eval",
    "exec",
    "torch.nn.Linear",
    "nn.Linear",
    "Linear",
    "LINEAR",
    "linear ",
    "os:system",
    "builtins.eval",
    "esper.blueprints.builder:LowRank",
    "__import__('os').system('id')",
    "subprocess.run",
    "",
]


@pytest.mark.parametrize("op", HOSTILE_OPS)
def test_a_non_allow_listed_op_is_rejected(op: str) -> None:
    with pytest.raises(ValidationError) as caught:
        BlueprintIR.model_validate(_document({"op": op, "params": {"outFeatures": 4}}))
    message = str(caught.value)
    assert "nodes.0" in message
    assert op in message  # the offending value is shown
    assert "linear" in message  # and the allow-list
    assert "squeeze_excite" in message


@pytest.mark.parametrize("op", [42, None, {"module": "torch.nn", "name": "Linear"}, ["linear"]])
def test_an_op_that_is_not_a_name_is_rejected(op: object) -> None:
    with pytest.raises(ValidationError, match=r"nodes\.0"):
        BlueprintIR.model_validate(_document({"op": op}))


def test_an_unknown_op_error_names_the_node() -> None:
    """The contract's rule: an invalid IR is rejected with a message that names the node.

    GAP: for an unknown op the message locates it by position (``nodes.0.op``) only.
    """
    with pytest.raises(ValidationError, match="node 'evil'"):
        BlueprintIR.model_validate(_document({"op": "torch.nn.Linear"}))


@pytest.mark.parametrize(
    ("op", "params", "extra"),
    [
        ("linear", {"outFeatures": 4, "module": "torch.nn.Linear"}, "module"),
        ("linear", {"outFeatures": 4, "__class__": "os.system"}, "__class__"),
        ("linear", {"outFeatures": 4, "initFn": "torch.nn.init.ones_"}, "initFn"),
        ("relu", {"inplace": True}, "inplace"),
        ("relu", {"code": "import os"}, "code"),
        ("attention", {"numHeads": 1, "kernel": "flash"}, "kernel"),
        ("conv2d", {"outChannels": 4, "kernelSize": 3, "padding_mode": "circular"}, "padding_mode"),
        ("scale", {"initValue": 0.0, "forward": "lambda x: x"}, "forward"),
    ],
)
def test_extra_keys_in_params_are_rejected(op: str, params: dict[str, Any], extra: str) -> None:
    with pytest.raises(ValidationError) as caught:
        BlueprintIR.model_validate(_document({"op": op, "params": params}))
    message = str(caught.value)
    assert f"node 'evil' ({op}): invalid params: {extra}: Extra inputs are not permitted" in message


@pytest.mark.parametrize(
    "params", ["import os", ["outFeatures", 4], 7, {"outFeatures": "__import__('os')"}]
)
def test_params_must_be_the_ops_typed_model(params: object) -> None:
    with pytest.raises(ValidationError, match="node 'evil' \\(linear\\): invalid params"):
        BlueprintIR.model_validate(_document({"op": "linear", "params": params}))


def test_extra_keys_on_nodes_and_blueprints_are_rejected() -> None:
    with pytest.raises(ValidationError, match="Extra inputs are not permitted"):
        BlueprintIR.model_validate(_document({"op": "relu", "callable": "os.system"}))
    with pytest.raises(ValidationError, match="Extra inputs are not permitted"):
        BlueprintIR.model_validate(_document({"op": "relu"}, imports=["os"]))


def test_symbols_cannot_carry_code() -> None:
    with pytest.raises(ValidationError):
        BlueprintIR.model_validate(
            {
                "name": "hostile",
                "input": {"layout": "features", "shape": ["__import__('os')"]},
                "nodes": [{"id": "r", "op": "relu", "inputs": ["input"]}],
                "output": "r",
            }
        )


def test_builder_and_shapes_resolve_no_names_from_the_ir() -> None:
    # Every op maps to a fixed module in the builder's table: no dynamic import or evaluation.
    for module in (builder, shapes):
        source = inspect.getsource(module)
        forbidden_calls = (
            "importlib",
            "__import__",
            "eval(",
            "exec(",
            "getattr(torch",
            "import pickle",
            "torch.load(",
        )
        for forbidden in forbidden_calls:
            assert forbidden not in source, (module.__name__, forbidden)
