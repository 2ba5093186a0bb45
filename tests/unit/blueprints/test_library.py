"""The built-in library: the issue's kinds, function-preserving at graft, trainable, exportable."""

import pytest
import torch
from torch import nn

from esper.blueprints.builder import BlueprintModule, build_module
from esper.blueprints.library import LIBRARY, builtin
from esper.blueprints.shapes import check_graftable
from esper.contracts import BlueprintIR, Init, Layout, Op
from esper.contracts.blueprint import Conv2dParams, ScaleParams

from .factories import BINDINGS_A, BINDINGS_B, ISSUE_KINDS, OUTPUT_LAYER_PARAMS, symbols_for

NAMES = sorted(LIBRARY)


def _input(ir: BlueprintIR, bindings: dict[str, int], batch: int, seed: int) -> torch.Tensor:
    dims = check_graftable(ir, bindings).input.dims
    return torch.randn(batch, *dims, generator=torch.Generator().manual_seed(seed))


def _randomise(module: nn.Module, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.copy_(0.3 * torch.randn(parameter.shape, generator=generator))


def _host(layout: Layout, channels: int) -> nn.Module:
    """A host layer whose activation the seed reads and adds to."""
    host = (
        nn.Conv2d(channels, channels, 3, padding=1)
        if layout is Layout.IMAGE
        else nn.Linear(channels, channels)
    )
    _randomise(host, 5)
    return host


# --- the catalogue ------------------------------------------------------------------------


def test_library_has_the_issues_eight_kinds() -> None:
    assert len(LIBRARY) >= 8
    for kind, (name, op) in ISSUE_KINDS.items():
        assert name in LIBRARY, kind
        assert op in {n.op for n in LIBRARY[name].nodes}, kind


def test_library_designs_match_their_kind() -> None:
    conv3 = [
        n.params
        for n in builtin("residual-conv3x3").nodes
        if isinstance(n.params, Conv2dParams) and n.params.kernel_size == 3
    ]
    assert conv3
    assert builtin("self-attention").input.layout is Layout.SEQUENCE
    assert builtin("residual-conv3x3").input.layout is Layout.IMAGE
    assert builtin("depthwise-separable").input.layout is Layout.IMAGE
    assert builtin("squeeze-excite").input.layout is Layout.IMAGE
    for name in ("residual-mlp", "low-rank-adapter", "bottleneck-mlp", "widening-branch"):
        assert builtin(name).input.layout is Layout.FEATURES
    # Bottleneck narrows below, widening widens above, the example slot width of 128.
    assert builtin("bottleneck-mlp").node("down").params.out_features < 128
    assert builtin("widening-branch").node("wide").params.out_features > 128


@pytest.mark.parametrize("name", NAMES)
def test_entry_is_valid_named_and_graftable(name: str) -> None:
    ir = LIBRARY[name]
    assert ir.name == name
    assert ir.description
    assert ir.tags
    assert ir.symbols() <= {"C", "H", "W", "T"}
    assert "C" in ir.symbols()
    assert BlueprintIR.model_validate_json(ir.to_json()) == ir
    for bindings in (BINDINGS_A, BINDINGS_B):
        report = check_graftable(ir, bindings)
        assert report.output == report.input


@pytest.mark.parametrize("name", NAMES)
def test_output_node_is_zero_initialised(name: str) -> None:
    out = LIBRARY[name].node(LIBRARY[name].output)
    if isinstance(out.params, ScaleParams):
        assert out.params.init_value == 0.0
    else:
        assert out.params.init is Init.ZEROS


def test_blueprints_are_distinct_designs() -> None:
    hashes = {ir.canonical_hash() for ir in LIBRARY.values()}
    assert len(hashes) == len(LIBRARY)


def test_builtin_returns_the_library_entry() -> None:
    for name in NAMES:
        assert builtin(name) is LIBRARY[name]


def test_builtin_unknown_name_lists_the_names() -> None:
    with pytest.raises(KeyError) as caught:
        builtin("resnet-50")
    message = str(caught.value)
    assert "no built-in blueprint 'resnet-50'" in message
    assert ", ".join(NAMES) in message


# --- function preservation at graft --------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("bindings", [BINDINGS_A, BINDINGS_B], ids=["bindings-a", "bindings-b"])
def test_contribution_is_exactly_zero_at_init(name: str, bindings: dict[str, int]) -> None:
    ir = LIBRARY[name]
    module = build_module(ir, symbols_for(ir, bindings))
    for train, seed in ((True, 1), (False, 2), (True, 3)):
        module.train(train)
        x = _input(ir, bindings, batch=3, seed=seed) * (10.0 if seed == 3 else 1.0)
        with torch.no_grad():
            out = module(x)
        assert out.shape == x.shape
        assert torch.count_nonzero(out) == 0, (name, train)


@pytest.mark.parametrize("name", NAMES)
def test_gradients_reach_the_output_layer_and_are_finite(name: str) -> None:
    ir = LIBRARY[name]
    bindings = symbols_for(ir, BINDINGS_A)
    seed = build_module(ir, bindings)
    host = _host(ir.input.layout, bindings["C"])
    x = _input(ir, BINDINGS_A, batch=4, seed=11)
    target = _input(ir, BINDINGS_A, batch=4, seed=12)

    activation = host(x)
    loss = ((activation + seed(activation) - target) ** 2).mean()
    loss.backward()

    grads = {key: p.grad for key, p in seed.named_parameters()}
    assert set(OUTPUT_LAYER_PARAMS[name]) <= set(grads)
    for key in OUTPUT_LAYER_PARAMS[name]:
        assert grads[key] is not None, key
        assert grads[key].abs().sum() > 0, key
    for key, grad in grads.items():
        assert grad is None or torch.isfinite(grad).all(), key
    assert all(torch.isfinite(p.grad).all() for p in host.parameters())

    # One step on those gradients opens the seed: it can learn.
    with torch.no_grad():
        for parameter in seed.parameters():
            if parameter.grad is not None:
                parameter.sub_(0.1 * parameter.grad)
        assert seed(activation).abs().sum() > 0


# --- torch.export with a dynamic batch -----------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_exports_with_a_dynamic_batch(name: str) -> None:
    ir = LIBRARY[name]
    module = build_module(ir, symbols_for(ir, BINDINGS_A))
    assert isinstance(module, BlueprintModule)
    _randomise(module, 3)  # non-zero weights, so the comparison means something
    module.eval()
    batch = torch.export.Dim("batch", min=1, max=1024)
    program = torch.export.export(
        module, (_input(ir, BINDINGS_A, batch=4, seed=0),), dynamic_shapes={"x": {0: batch}}
    )
    exported = program.module()
    for size in (1, 7):
        x = _input(ir, BINDINGS_A, batch=size, seed=size)
        with torch.no_grad():
            expected = module(x)
            got = exported(x)
        assert got.shape == x.shape
        assert expected.abs().sum() > 0
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


def test_attention_blueprint_has_heads_dividing_the_examples() -> None:
    attention = builtin("self-attention").node("attn").params
    assert BINDINGS_A["C"] % attention.num_heads == 0
    assert BINDINGS_B["C"] % attention.num_heads == 0
    assert Op.LAYER_NORM in {n.op for n in builtin("self-attention").nodes}
