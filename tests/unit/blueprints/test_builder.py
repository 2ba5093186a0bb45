"""The IR -> torch builder: every op builds and agrees with shape inference; deterministic init."""

import pytest
import torch
from torch import nn

from esper.blueprints import builder
from esper.blueprints.builder import BlueprintModule, build_module, seed_from_hash
from esper.blueprints.library import LIBRARY
from esper.blueprints.shapes import ShapeError, check_graftable, infer_shapes
from esper.contracts import BlueprintIR, Layout, Node, Op
from esper.contracts.blueprint import NoParams

from .factories import (
    BINDINGS_A,
    OP_CASES,
    OUTPUT_LAYER_PARAMS,
    OpCase,
    blueprint,
    node,
    single,
    symbols_for,
)

FEAT, IMG, SEQ = Layout.FEATURES, Layout.IMAGE, Layout.SEQUENCE
BATCH = 2


def _inputs(ir: BlueprintIR, bindings: dict[str, int], batch: int = BATCH) -> torch.Tensor:
    dims = infer_shapes(ir, bindings).input.dims
    generator = torch.Generator().manual_seed(1234)
    return torch.randn(batch, *dims, generator=generator)


def _param_count(module: nn.Module) -> int:
    return sum(parameter.numel() for parameter in module.parameters())


@pytest.fixture
def any_shape_allowed(monkeypatch: pytest.MonkeyPatch) -> None:
    """Let BlueprintModule build IRs whose output differs from their input (single ops)."""
    monkeypatch.setattr(builder, "check_graftable", infer_shapes)


# --- every op builds, runs, and agrees with shapes.py --------------------------------------


@pytest.mark.usefixtures("any_shape_allowed")
@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel lengths")
@pytest.mark.parametrize("case", OP_CASES, ids=lambda case: case.id)
def test_every_op_builds_runs_and_matches_inference(case: OpCase) -> None:
    module = build_module(case.ir, {})
    report = infer_shapes(case.ir)
    assert _param_count(module) == report.params == case.params
    seen: dict[str, tuple[int, ...]] = {}
    for node_id, layer in module.layers.items():
        layer.register_forward_hook(
            lambda _m, _i, out, node_id=node_id: seen.__setitem__(node_id, tuple(out.shape))
        )
    x = _inputs(case.ir, {})
    for train in (True, False):
        module.train(train)
        with torch.no_grad():
            out = module(x)
        assert tuple(out.shape) == (BATCH, *case.shape)
        assert torch.isfinite(out).all()
    # Every intermediate layer's output, too.
    assert set(seen) == {n.id for n in case.ir.nodes if n.op not in builder._COMBINERS}
    for node_id, shape in seen.items():
        assert shape == (BATCH, *report.nodes[node_id].shape.dims), node_id


@pytest.mark.parametrize("name", sorted(LIBRARY))
@pytest.mark.parametrize("bindings", [BINDINGS_A, {"C": 16, "H": 2, "W": 3, "T": 1}])
def test_library_param_counts_match_inference(name: str, bindings: dict[str, int]) -> None:
    ir = LIBRARY[name]
    module = build_module(ir, symbols_for(ir, bindings))
    assert _param_count(module) == check_graftable(ir, bindings).params


def test_built_module_runs_the_graph_in_topological_order() -> None:
    ir = LIBRARY["residual-mlp"]
    module = build_module(ir, {"C": 4})
    assert module.order == tuple(ir.topological_order())
    assert module.output_id == "down"
    assert module.blueprint_hash == ir.canonical_hash()
    assert set(module.layers) == {"up", "act1", "mid", "act2", "down"}
    assert isinstance(module, BlueprintModule)
    assert module.training


def test_concat_uses_the_channel_axis_of_each_layout() -> None:
    # Values, not just shapes: the input comes out first and unchanged.
    cases = [
        (FEAT, (3,), 1),
        (IMG, (2, 3, 4), 1),
        (SEQ, (5, 2), 2),
    ]
    for layout, shape, axis in cases:
        ir = blueprint(
            layout, shape, [node("a", "sigmoid", "input"), node("n", "concat", "input", "a")]
        )
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(builder, "check_graftable", infer_shapes)
            module = build_module(ir, {})
        x = _inputs(ir, {})
        out = module(x)
        first, second = torch.split(out, shape[axis - 1], dim=axis)
        assert torch.equal(first, x)
        assert torch.allclose(second, torch.sigmoid(x))


def test_add_and_mul_combine_all_inputs() -> None:
    ir = blueprint(
        FEAT,
        (4,),
        [
            node("a", "tanh", "input"),
            node("m", "mul", "input", "a", "a"),
            node("n", "add", "m", "input", "a"),
        ],
    )
    x = _inputs(ir, {})
    out = build_module(ir, {})(x)
    assert torch.allclose(out, x * torch.tanh(x) ** 2 + x + torch.tanh(x))


def test_scale_starts_at_its_init_value() -> None:
    ir = single(Op.SCALE, FEAT, (3,), init_value=-2.5)
    x = _inputs(ir, {})
    assert torch.allclose(build_module(ir, {})(x), -2.5 * x)


def test_builder_refuses_an_ungraftable_or_unbound_blueprint() -> None:
    with pytest.raises(ShapeError, match="differs from input"):
        build_module(single(Op.LINEAR, FEAT, (4,), out_features=3), {})
    with pytest.raises(ShapeError, match=r"symbol\(s\) C are not bound"):
        build_module(LIBRARY["bottleneck-mlp"], {})


@pytest.mark.usefixtures("any_shape_allowed")
def test_builder_names_an_unbound_dimension() -> None:
    ir = single(Op.LINEAR, FEAT, ("C",), out_features=3)
    with pytest.raises(ValueError, match="node 'n': input features is not bound to a size"):
        build_module(ir, {})


@pytest.mark.parametrize(
    ("op", "expected"),
    [
        (Op.LINEAR, "LinearParams"),
        (Op.LOW_RANK, "LowRankParams"),
        (Op.CONV2D, "convolution params"),
        (Op.BATCH_NORM, "NormParams"),
        (Op.DROPOUT, "DropoutParams"),
        (Op.SQUEEZE_EXCITE, "SqueezeExciteParams"),
        (Op.ATTENTION, "AttentionParams"),
        (Op.SCALE, "ScaleParams"),
    ],
)
def test_node_with_another_ops_params_is_a_programming_error(op: Op, expected: str) -> None:
    bad = Node.model_construct(id="n", op=op, inputs=["input"], params=NoParams())
    shape = infer_shapes(single(Op.IDENTITY, SEQ, (4, 8))).output
    with pytest.raises(TypeError, match=f"node 'n': expected {expected}"):
        builder._build_node(bad, shape, {})


def test_combining_ops_have_no_layer_builder() -> None:
    add = Node(id="n", op=Op.ADD, inputs=["input", "input"])
    shape = infer_shapes(single(Op.IDENTITY, FEAT, (4,))).output
    with pytest.raises(ValueError, match="node 'n': op 'add' has no torch builder"):
        builder._build_node(add, shape, {})


# --- deterministic, hash-seeded initialisation ---------------------------------------------


def _state(module: nn.Module) -> dict[str, torch.Tensor]:
    return {key: value.clone() for key, value in module.state_dict().items()}


@pytest.mark.parametrize("name", sorted(LIBRARY))
def test_build_is_deterministic(name: str) -> None:
    ir = LIBRARY[name]
    bindings = symbols_for(ir, BINDINGS_A)
    first = _state(build_module(ir, bindings))
    torch.rand(7)  # the caller's stream moving on must not matter
    second = _state(build_module(ir, bindings))
    assert first.keys() == second.keys()
    for key in first:
        assert torch.equal(first[key], second[key]), key


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel lengths")
def test_build_is_deterministic_for_every_op() -> None:
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(builder, "check_graftable", infer_shapes)
        for case in OP_CASES:
            first = _state(build_module(case.ir, {}))
            second = _state(build_module(case.ir, {}))
            assert all(torch.equal(first[key], second[key]) for key in first), case.id


def test_build_leaves_the_global_rng_untouched() -> None:
    torch.manual_seed(99)
    before = torch.random.get_rng_state()
    for ir in LIBRARY.values():
        build_module(ir, symbols_for(ir, BINDINGS_A))
    assert torch.equal(torch.random.get_rng_state(), before)
    drawn = torch.rand(5)
    torch.manual_seed(99)
    assert torch.equal(torch.rand(5), drawn)


def test_build_seeds_no_accelerator_generator(monkeypatch: pytest.MonkeyPatch) -> None:
    """build_module promises to leave every global RNG untouched, not only the CPU one.

    BUG: it calls torch.manual_seed, which also runs torch.cuda.manual_seed_all (applied
    lazily on CPU-only hosts); fork_rng(devices=[]) restores only the CPU generator, so on a GPU
    host every build resets the caller's CUDA RNG to the blueprint's seed.
    """
    calls: list[int] = []
    monkeypatch.setattr(torch.cuda, "manual_seed_all", calls.append)
    build_module(LIBRARY["bottleneck-mlp"], {"C": 4})
    assert calls == []


def test_seed_comes_from_the_blueprint_hash() -> None:
    for ir in LIBRARY.values():
        seed = seed_from_hash(ir.canonical_hash())
        assert seed == int(ir.canonical_hash()[:15], 16)
        assert 0 <= seed < 2**60
    assert seed_from_hash("f" * 64) == 2**60 - 1
    seeds = {seed_from_hash(ir.canonical_hash()) for ir in LIBRARY.values()}
    assert len(seeds) == len(LIBRARY)


def test_different_blueprints_start_from_different_weights() -> None:
    base = LIBRARY["bottleneck-mlp"]
    nodes = [n.model_dump() for n in base.nodes]
    nodes[0]["params"]["bias"] = False  # changes the design, not the shape of 'down'.weight
    variant = BlueprintIR.model_validate({**base.model_dump(), "nodes": nodes})
    assert variant.canonical_hash() != base.canonical_hash()
    first = build_module(base, {"C": 8}).layers["down"].weight
    second = build_module(variant, {"C": 8}).layers["down"].weight
    assert first.shape == second.shape
    assert not torch.equal(first, second)


def test_metadata_does_not_change_the_initial_weights() -> None:
    base = LIBRARY["widening-branch"]
    renamed = base.model_copy(update={"name": "other", "description": "x", "tags": ["y"]})
    first = _state(build_module(base, {"C": 6}))
    second = _state(build_module(renamed, {"C": 6}))
    assert all(torch.equal(first[key], second[key]) for key in first)


@pytest.mark.parametrize("name", sorted(LIBRARY))
def test_zeros_init_zeroes_exactly_the_output_layer(name: str) -> None:
    ir = LIBRARY[name]
    module = build_module(ir, symbols_for(ir, BINDINGS_A))
    zero = {key for key, value in module.named_parameters() if not value.any()}
    # Norm biases and attention's input-projection bias start at zero by torch's own default.
    default_zero = {
        key
        for key in dict(module.named_parameters())
        if key.endswith("in_proj_bias")
        or (
            key.endswith(".bias")
            and isinstance(
                module.get_submodule(key[:-5]), nn.modules.batchnorm._NormBase | nn.LayerNorm
            )
        )
    }
    assert zero == OUTPUT_LAYER_PARAMS[name] | default_zero


def test_zeros_init_applies_to_the_marked_layer_only() -> None:
    ir = blueprint(
        FEAT,
        ("C",),
        [
            node("a", "linear", "input", out_features=5, init="zeros"),
            node("b", "linear", "a", out_features="C"),
            node("c", "low_rank", "b", rank=2, out_features="C", init="default"),
        ],
    )
    module = build_module(ir, {"C": 3})
    zero = {key for key, value in module.named_parameters() if not value.any()}
    assert zero == {"layers.a.weight", "layers.a.bias"}


@pytest.mark.usefixtures("any_shape_allowed")
def test_zeros_init_on_conv_depthwise_and_attention() -> None:
    cases = {
        "conv": single(Op.CONV2D, IMG, (2, 3, 3), out_channels=2, kernel_size=3, init="zeros"),
        "depthwise": single(Op.DEPTHWISE_CONV2D, IMG, (2, 3, 3), kernel_size=3, init="zeros"),
        "attention": single(Op.ATTENTION, SEQ, (3, 4), num_heads=2, init="zeros"),
        "low_rank": single(Op.LOW_RANK, FEAT, (4,), rank=2, out_features=4),
    }
    expected = {
        "conv": {"layers.n.weight", "layers.n.bias"},
        "depthwise": {"layers.n.weight", "layers.n.bias"},
        "attention": {
            "layers.n.attention.out_proj.weight",
            "layers.n.attention.out_proj.bias",
            "layers.n.attention.in_proj_bias",
        },
        "low_rank": {"layers.n.up.weight"},
    }
    for key, ir in cases.items():
        module = build_module(ir, {})
        zero = {name for name, value in module.named_parameters() if not value.any()}
        assert zero == expected[key], key


@pytest.mark.parametrize("name", sorted(LIBRARY))
def test_default_init_output_layer_is_not_zero(name: str) -> None:
    ir = LIBRARY[name]
    if name == "squeeze-excite":
        raw = ir.model_dump()
        raw["nodes"][1]["params"] = {"init_value": 1.0}
    else:
        raw = ir.model_dump()
        out = next(n for n in raw["nodes"] if n["id"] == ir.output)
        out["params"]["init"] = "default"
    opened = BlueprintIR.model_validate(raw)
    module = build_module(opened, symbols_for(opened, BINDINGS_A))
    params = dict(module.named_parameters())
    assert all(params[key].any() for key in OUTPUT_LAYER_PARAMS[name] if "bias" not in key)
    assert module(_inputs(opened, BINDINGS_A)).abs().sum() > 0
