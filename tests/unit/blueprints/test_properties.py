"""Property test: random feature DAGs agree between shape inference and the built module."""

from typing import Any

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from esper.blueprints.builder import build_module
from esper.blueprints.shapes import check_graftable
from esper.contracts import BlueprintIR

PROPERTY = settings(
    max_examples=30,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)

_OPS = ("linear", "low_rank", "relu", "gelu", "tanh", "layer_norm", "add")


@st.composite
def feature_dags(draw: st.DrawFn) -> tuple[BlueprintIR, dict[str, int]]:
    """A chain of feature ops with skip-connection adds, ending in a zero-init linear to C."""
    channels = draw(st.integers(min_value=1, max_value=6))
    widths: dict[str, int] = {"input": channels}
    nodes: list[dict[str, Any]] = []
    previous = "input"
    for index in range(draw(st.integers(min_value=0, max_value=6))):
        node_id = f"n{index}"
        op = draw(st.sampled_from(_OPS))
        width = widths[previous]
        inputs = [previous]
        params: dict[str, Any] = {}
        if op == "add":
            partners = sorted(k for k, w in widths.items() if w == width and k != previous)
            if not partners:
                op = "relu"
            else:
                inputs.append(draw(st.sampled_from(partners)))
                if draw(st.booleans()):
                    inputs.reverse()
        if op in ("linear", "low_rank"):
            out = draw(st.one_of(st.just("C"), st.integers(min_value=1, max_value=8)))
            width = channels if out == "C" else out
            params["outFeatures"] = out
            if op == "low_rank":
                params["rank"] = draw(st.integers(min_value=1, max_value=4))
                params["init"] = draw(st.sampled_from(["default", "zeros"]))
            else:
                params["bias"] = draw(st.booleans())
        nodes.append({"id": node_id, "op": op, "inputs": inputs, "params": params})
        widths[node_id] = width
        previous = node_id
    nodes.append(
        {
            "id": "out",
            "op": "linear",
            "inputs": [previous],
            "params": {"outFeatures": "C", "init": "zeros", "bias": draw(st.booleans())},
        }
    )
    ir = BlueprintIR.model_validate(
        {
            "name": "random",
            "input": {"layout": "features", "shape": ["C"]},
            "nodes": nodes,
            "output": "out",
        }
    )
    return ir, {"C": channels}


@PROPERTY
@given(case=feature_dags(), batch=st.integers(min_value=1, max_value=4))
def test_inference_matches_the_built_module(
    case: tuple[BlueprintIR, dict[str, int]], batch: int
) -> None:
    ir, bindings = case
    report = check_graftable(ir, bindings)
    module = build_module(ir, bindings)
    assert sum(p.numel() for p in module.parameters()) == report.params
    assert report.flops is not None

    seen: dict[str, tuple[int, ...]] = {}
    for node_id, layer in module.layers.items():
        layer.register_forward_hook(
            lambda _m, _i, out, node_id=node_id: seen.__setitem__(node_id, tuple(out.shape))
        )
    x = torch.randn(batch, *report.input.dims, generator=torch.Generator().manual_seed(batch))
    for train in (True, False):
        module.train(train)
        with torch.no_grad():
            out = module(x)
        assert tuple(out.shape) == (batch, *report.output.dims)
        assert torch.count_nonzero(out) == 0
    for node_id, shape in seen.items():
        assert shape == (batch, *report.nodes[node_id].shape.dims), node_id
