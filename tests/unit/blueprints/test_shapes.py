"""Shape inference, parameter and FLOP counts (esper.blueprints.shapes, no torch)."""

import subprocess
import sys

import pytest

from esper.blueprints.library import LIBRARY, builtin
from esper.blueprints.shapes import (
    NodeInfo,
    ShapeError,
    TensorShape,
    check_graftable,
    infer_shapes,
)
from esper.contracts import Layout, Node, Op
from esper.contracts.blueprint import VARIADIC_OPS, LinearParams, NoParams

from .factories import (
    ILLEGAL_LAYOUTS,
    IMAGE,
    MINIMAL_PARAMS,
    OP_CASES,
    SHAPES,
    OpCase,
    blueprint,
    node,
    single,
)

FEAT, IMG, SEQ = Layout.FEATURES, Layout.IMAGE, Layout.SEQUENCE


# --- every op on every legal layout -------------------------------------------------------


@pytest.mark.parametrize("case", OP_CASES, ids=lambda case: case.id)
def test_legal_op_shape_params_and_flops(case: OpCase) -> None:
    report = infer_shapes(case.ir)
    assert report.output == TensorShape(case.out_layout, case.shape)
    assert report.params == case.params
    assert report.flops == case.flops
    assert report.input == TensorShape(case.layout, SHAPES[case.layout])


def test_op_cases_cover_every_op_and_every_legal_layout() -> None:
    covered = {(op, case.layout) for case in OP_CASES for op in case.ops}
    assert {op for op, _ in covered} == set(Op)
    illegal = {(op, layout) for op, layout, _ in ILLEGAL_LAYOUTS}
    for op in set(Op) - VARIADIC_OPS:
        for layout in Layout:
            assert ((op, layout) in covered) != ((op, layout) in illegal), (op, layout)


@pytest.mark.parametrize(
    ("op", "layout", "expected"),
    ILLEGAL_LAYOUTS,
    ids=[f"{op.value}-{layout.value}" for op, layout, _ in ILLEGAL_LAYOUTS],
)
def test_illegal_layout_names_node_and_op(op: Op, layout: Layout, expected: str) -> None:
    ir = blueprint(
        layout,
        SHAPES[layout],
        [
            node("stem", "identity", "input"),
            node("bad", op.value, "stem", **MINIMAL_PARAMS.get(op, {})),
        ],
    )
    with pytest.raises(ShapeError) as caught:
        infer_shapes(ir)
    message = str(caught.value)
    assert message.startswith(f"node 'bad' ({op.value}): needs {expected} input")
    assert layout.value in message
    assert caught.value.node_id == "bad"
    assert isinstance(caught.value, ValueError)


# --- convolution arithmetic ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("size", "kernel", "stride", "padding", "expected"),
    [
        (5, 3, 1, 0, 3),
        (5, 3, 1, 1, 5),
        (5, 3, 2, 1, 3),
        (6, 3, 2, 1, 3),
        (7, 1, 2, 0, 4),
        (7, 5, 3, 2, 3),
        (3, 5, 1, 1, 1),
        (1, 1, 4, 0, 1),
        (10, 4, 4, 0, 2),
        (8, 11, 1, 10, 18),
    ],
)
def test_conv_output_size_follows_floor_formula(
    size: int, kernel: int, stride: int, padding: int, expected: int
) -> None:
    for op, params in (
        ("conv2d", {"out_channels": 2}),
        ("depthwise_conv2d", {}),
    ):
        ir = single(
            op,
            IMG,
            (2, size, size + 1),
            kernel_size=kernel,
            stride=stride,
            padding=padding,
            **params,
        )
        width = (size + 1 + 2 * padding - kernel) // stride + 1
        assert infer_shapes(ir).output.dims == (2, expected, width)


@pytest.mark.parametrize("kernel", [1, 2, 3, 4, 7, 11])
def test_same_padding_keeps_spatial_size_for_any_kernel(kernel: int) -> None:
    ir = single(Op.CONV2D, IMG, (3, 4, 9), out_channels=5, kernel_size=kernel)
    assert infer_shapes(ir).output.dims == (5, 4, 9)
    ir = single(Op.DEPTHWISE_CONV2D, IMG, (3, 4, 9), kernel_size=kernel, padding="same")
    assert infer_shapes(ir).output.dims == (3, 4, 9)


@pytest.mark.parametrize("op", ["conv2d", "depthwise_conv2d"])
def test_kernel_larger_than_padded_input_is_an_error(op: str) -> None:
    extra = {"out_channels": 2} if op == "conv2d" else {}
    ir = single(op, IMG, (2, 3, 8), kernel_size=5, padding=0, **extra)
    with pytest.raises(
        ShapeError, match=rf"node 'n' \({op}\): kernel 5 with padding 0 does not fit"
    ):
        infer_shapes(ir)


def test_input_channels_not_divisible_by_groups() -> None:
    ir = single(Op.CONV2D, IMG, (4, 5, 5), out_channels=6, kernel_size=1, groups=3)
    with pytest.raises(
        ShapeError, match=r"node 'n' \(conv2d\): input channels 4 are not divisible by groups 3"
    ):
        infer_shapes(ir)


def test_output_channels_not_divisible_by_groups() -> None:
    ir = single(Op.CONV2D, IMG, (4, 5, 5), out_channels=6, kernel_size=1, groups=4)
    with pytest.raises(
        ShapeError, match=r"node 'n' \(conv2d\): output channels 6 are not divisible by groups 4"
    ):
        infer_shapes(ir)


def test_grouped_conv_counts_weights_per_group() -> None:
    ir = single(Op.CONV2D, IMG, (8, 3, 3), out_channels=4, kernel_size=3, groups=4, bias=False)
    assert infer_shapes(ir).params == 4 * (8 // 4) * 9


def test_group_norm_channels_not_divisible() -> None:
    ir = single(Op.GROUP_NORM, IMG, (6, 2, 2), num_groups=4)
    with pytest.raises(
        ShapeError, match=r"node 'n' \(group_norm\): channels 6 are not divisible by 4 groups"
    ):
        infer_shapes(ir)


def test_attention_heads_must_divide_embedding() -> None:
    ir = single(Op.ATTENTION, SEQ, (5, 6), num_heads=4)
    with pytest.raises(
        ShapeError, match=r"node 'n' \(attention\): embedding size 6 is not divisible by 4 heads"
    ):
        infer_shapes(ir)


@pytest.mark.parametrize(("layout", "shape"), [(IMG, (3, 2, 2)), (FEAT, (3,))])
def test_squeeze_excite_reduction_leaving_no_hidden_unit(
    layout: Layout, shape: tuple[int, ...]
) -> None:
    ir = single(Op.SQUEEZE_EXCITE, layout, shape, reduction=4)
    with pytest.raises(
        ShapeError,
        match=r"node 'n' \(squeeze_excite\): reduction 4 leaves no hidden unit for 3 channels",
    ):
        infer_shapes(ir)
    # Exactly one hidden unit is fine.
    assert (
        infer_shapes(single(Op.SQUEEZE_EXCITE, layout, shape, reduction=3)).params == 2 * 3 + 1 + 3
    )


# --- combining ops --------------------------------------------------------------------------


def test_concat_sums_channels_per_layout() -> None:
    features = blueprint(
        FEAT,
        (6,),
        [
            node("a", "linear", "input", out_features=2),
            node("b", "linear", "input", out_features=3),
            node("c", "linear", "input", out_features=4),
            node("n", "concat", "a", "b", "c"),
        ],
    )
    assert infer_shapes(features).output == TensorShape(FEAT, (9,))
    image = blueprint(
        IMG,
        (4, 5, 7),
        [
            node("a", "conv2d", "input", out_channels=3, kernel_size=3),
            node("n", "concat", "input", "a"),
        ],
    )
    assert infer_shapes(image).output == TensorShape(IMG, (7, 5, 7))
    sequence = blueprint(
        SEQ,
        (3, 8),
        [node("a", "linear", "input", out_features=1), node("n", "concat", "a", "input")],
    )
    assert infer_shapes(sequence).output == TensorShape(SEQ, (3, 9))
    assert infer_shapes(sequence).nodes["n"] == NodeInfo(TensorShape(SEQ, (3, 9)), 0, 0)


def test_concat_of_maps_with_different_spatial_size_is_an_error() -> None:
    ir = blueprint(
        IMG,
        (4, 5, 7),
        [
            node("a", "conv2d", "input", out_channels=3, kernel_size=3, padding=0),
            node("n", "concat", "input", "a"),
        ],
    )
    with pytest.raises(
        ShapeError,
        match=r"node 'n' \(concat\): inputs differ outside the channel axis: "
        r"image\[4, 5, 7\] and image\[3, 3, 5\]",
    ):
        infer_shapes(ir)


@pytest.mark.parametrize("op", ["add", "mul", "concat"])
def test_combining_different_layouts_is_an_error(op: str) -> None:
    ir = blueprint(
        IMG,
        IMAGE,
        [node("pool", "global_avg_pool", "input"), node("n", op, "input", "pool")],
    )
    with pytest.raises(ShapeError, match=rf"node 'n' \({op}\): inputs have different layouts"):
        infer_shapes(ir)


@pytest.mark.parametrize("op", ["add", "mul"])
@pytest.mark.parametrize(
    ("layout", "shape", "branch"),
    [
        (FEAT, (6,), node("a", "linear", "input", out_features=5)),
        (SEQ, (3, 8), node("a", "linear", "input", out_features=4)),
        (IMG, (4, 5, 7), node("a", "conv2d", "input", out_channels=4, kernel_size=3, padding=0)),
        (IMG, (4, 5, 7), node("a", "conv2d", "input", out_channels=2, kernel_size=1)),
    ],
)
def test_add_and_mul_need_equal_shapes(
    op: str, layout: Layout, shape: tuple[int, ...], branch: dict[str, object]
) -> None:
    ir = blueprint(layout, shape, [branch, node("n", op, "input", "a")])
    with pytest.raises(ShapeError, match=rf"node 'n' \({op}\): inputs differ in shape"):
        infer_shapes(ir)


def test_global_avg_pool_turns_image_into_features() -> None:
    ir = blueprint(
        IMG,
        ("C", "H", "W"),
        [node("pool", "global_avg_pool", "input"), node("n", "linear", "pool", out_features=3)],
    )
    report = infer_shapes(ir, {"C": 4, "H": 2, "W": 3})
    assert report.nodes["pool"] == NodeInfo(TensorShape(FEAT, (4,)), 0, 24)
    assert report.output == TensorShape(FEAT, (3,))
    assert infer_shapes(ir).nodes["pool"].shape == TensorShape(FEAT, ("C",))


# --- partial (symbolic) inference ---------------------------------------------------------


def test_unbound_symbols_stay_symbolic_and_counts_are_none() -> None:
    ir = builtin("residual-conv3x3")
    report = infer_shapes(ir)
    assert report.input == TensorShape(IMG, ("C", "H", "W"))
    assert report.output == TensorShape(IMG, ("C", "H", "W"))
    assert all(info.shape.dims == ("C", "H", "W") for info in report.nodes.values())
    assert report.params is None
    assert report.flops is None
    assert not report.output.is_bound()
    assert report.output.numel() is None


def test_partly_bound_counts_params_but_not_flops() -> None:
    ir = builtin("residual-conv3x3")
    report = infer_shapes(ir, {"C": 4})
    assert report.output == TensorShape(IMG, (4, "H", "W"))
    assert report.params == (4 * 4 * 9 + 4) + 2 * 4 + (4 * 4 + 4)
    assert report.flops is None
    full = infer_shapes(ir, {"C": 4, "H": 3, "W": 2})
    assert full.params == report.params
    assert full.flops == sum(info.flops or 0 for info in full.nodes.values())
    assert full.output.is_bound()


def test_attention_params_do_not_need_sequence_length() -> None:
    report = infer_shapes(builtin("self-attention"), {"C": 8})
    assert report.output == TensorShape(SEQ, ("T", 8))
    assert report.nodes["attn"].params == 4 * 64 + 4 * 8
    assert report.nodes["attn"].flops is None
    assert report.flops is None


def test_strided_conv_of_a_symbol_is_unknown() -> None:
    ir = single(Op.CONV2D, IMG, ("C", "H", 9), out_channels="D", kernel_size=3, stride=2, padding=1)
    report = infer_shapes(ir)
    assert report.output == TensorShape(IMG, ("D", None, 5))
    assert report.params is None
    bound = infer_shapes(ir, {"C": 2, "D": 3, "H": 4})
    assert bound.output == TensorShape(IMG, (3, 2, 5))


def test_undecidable_checks_do_not_fail_while_unbound() -> None:
    # Each of these fails for some bindings and passes for others.
    cases = [
        single(Op.CONV2D, IMG, ("C", 5, 5), out_channels=8, kernel_size=1, groups=4),
        single(Op.GROUP_NORM, IMG, ("C", 5, 5), num_groups=3),
        single(Op.ATTENTION, SEQ, ("T", "C"), num_heads=4),
        single(Op.SQUEEZE_EXCITE, IMG, ("C", "H", "W"), reduction=16),
        single(Op.CONV2D, IMG, (2, "H", "W"), out_channels=2, kernel_size=5, padding=0),
        blueprint(
            FEAT,
            ("C",),
            [node("a", "linear", "input", out_features=4), node("n", "add", "input", "a")],
        ),
        # A strided map matches its input only when H == W == 1.
        blueprint(
            IMG,
            ("C", "H", "W"),
            [
                node("a", "conv2d", "input", out_channels=2, kernel_size=3, stride=2, padding=1),
                node("n", "concat", "input", "a"),
            ],
        ),
    ]
    for ir in cases:
        report = infer_shapes(ir)
        assert report.params is None or report.flops is None
    strided = cases[-1]
    assert infer_shapes(strided, {"C": 3, "H": 1, "W": 1}).output.dims == (5, 1, 1)
    with pytest.raises(ShapeError, match="differ outside the channel axis"):
        infer_shapes(strided, {"C": 3, "H": 4, "W": 4})


def test_depthwise_with_unbound_channels_has_no_counts() -> None:
    report = infer_shapes(single(Op.DEPTHWISE_CONV2D, IMG, ("C", 4, 4), kernel_size=3))
    assert report.output == TensorShape(IMG, ("C", 4, 4))
    assert report.params is None
    assert report.flops is None


def test_concat_channels_unknown_while_a_part_is_unbound() -> None:
    ir = blueprint(
        FEAT,
        ("C",),
        [node("a", "linear", "input", out_features=3), node("n", "concat", "input", "a")],
    )
    assert infer_shapes(ir).output == TensorShape(FEAT, (None,))
    assert infer_shapes(ir, {"C": 2}).output == TensorShape(FEAT, (5,))


def test_add_of_two_different_symbols_is_undecidable_while_unbound() -> None:
    """Two distinct symbols may be bound to the same size: only bindings can decide.

    BUG: shapes._same treats two different symbols as certainly different, so a blueprint that
    is valid for every target binding C == D is refused at the door (unbound inference).
    """
    ir = blueprint(
        FEAT,
        ("C",),
        [node("proj", "linear", "input", out_features="D"), node("n", "add", "input", "proj")],
    )
    assert infer_shapes(ir, {"C": 4, "D": 4}).output == TensorShape(FEAT, (4,))
    with pytest.raises(ShapeError, match="differ in shape"):
        infer_shapes(ir, {"C": 4, "D": 5})
    infer_shapes(ir)  # undecidable: must not raise


def test_binding_decides_a_deferred_check() -> None:
    ir = single(Op.ATTENTION, SEQ, ("T", "C"), num_heads=4)
    infer_shapes(ir, {"C": 8})
    with pytest.raises(ShapeError, match="not divisible by 4 heads"):
        infer_shapes(ir, {"C": 6})


def test_error_names_the_failing_node_deep_in_a_graph() -> None:
    ir = blueprint(
        SEQ,
        ("T", "C"),
        [
            node("norm", "layer_norm", "input"),
            node("proj", "linear", "norm", out_features=12),
            node("mix", "attention", "proj", num_heads=5),
            node("out", "linear", "mix", out_features="C"),
        ],
    )
    with pytest.raises(ShapeError) as caught:
        infer_shapes(ir, {"C": 8, "T": 4})
    assert caught.value.node_id == "mix"
    assert str(caught.value).startswith("node 'mix' (attention): ")


# --- check_graftable ----------------------------------------------------------------------


def test_graftable_requires_every_symbol_bound() -> None:
    ir = builtin("residual-conv3x3")
    with pytest.raises(ShapeError) as caught:
        check_graftable(ir, {"C": 4})
    assert caught.value.node_id == "proj"
    assert str(caught.value) == "node 'proj' (conv2d): symbol(s) H, W are not bound"
    with pytest.raises(ShapeError, match=r"node 'down' \(linear\): symbol\(s\) C are not bound"):
        check_graftable(builtin("residual-mlp"), {})


def test_graftable_output_must_equal_input() -> None:
    ir = blueprint(
        FEAT,
        ("C",),
        [
            node("hidden", "linear", "input", out_features="C"),
            node("head", "linear", "hidden", out_features=3),
        ],
    )
    with pytest.raises(ShapeError) as caught:
        check_graftable(ir, {"C": 4})
    assert caught.value.node_id == "head"
    message = str(caught.value)
    assert message.startswith(
        "node 'head' (linear): output features[3] differs from input features[4]"
    )


def test_graftable_rejects_a_strided_conv() -> None:
    ir = single(
        Op.CONV2D, IMG, ("C", "H", "W"), out_channels="C", kernel_size=3, stride=2, padding=1
    )
    with pytest.raises(
        ShapeError, match=r"output image\[4, 4, 4\] differs from input image\[4, 8, 8\]"
    ):
        check_graftable(ir, {"C": 4, "H": 8, "W": 8})


def test_graftable_rejects_a_layout_change() -> None:
    ir = blueprint(IMG, (4, 1, 1), [node("pool", "global_avg_pool", "input")])
    with pytest.raises(
        ShapeError, match=r"output features\[4\] differs from input image\[4, 1, 1\]"
    ):
        check_graftable(ir, {})


def test_graftable_shape_error_comes_from_the_faulty_node() -> None:
    ir = single(Op.ATTENTION, SEQ, ("T", "C"), num_heads=3)
    with pytest.raises(ShapeError) as caught:
        check_graftable(ir, {"T": 2, "C": 8})
    assert caught.value.node_id == "n"


def test_graftable_returns_a_fully_bound_report_and_ignores_extra_bindings() -> None:
    report = check_graftable(builtin("residual-mlp"), {"C": 128, "H": 3, "UNUSED": 9})
    assert report.input == report.output == TensorShape(FEAT, (128,))
    # up: 128*64+64, mid: 64*64+64, down: 64*128+128.
    assert report.params == 8256 + 4160 + 8320
    macs = 128 * 64 + 64 * 64 + 64 * 128
    assert report.flops == 2 * macs + 64 + 64 + 64  # two GELUs and one add of 64 features


# --- totals and small helpers ---------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(LIBRARY))
def test_totals_are_sums_over_nodes_in_topological_order(name: str) -> None:
    ir = LIBRARY[name]
    report = infer_shapes(ir, {"C": 8, "H": 4, "W": 4, "T": 5})
    assert list(report.nodes) == ir.topological_order()
    assert report.params == sum(info.params for info in report.nodes.values())
    assert report.flops == sum(info.flops for info in report.nodes.values())
    assert report.params > 0
    assert report.flops > 0


def test_tensor_shape_helpers() -> None:
    image = TensorShape(IMG, (3, 4, 5))
    sequence = TensorShape(SEQ, (7, 2))
    assert image.channels == 3
    assert sequence.channels == 2
    assert image.with_channels(9) == TensorShape(IMG, (9, 4, 5))
    assert sequence.with_channels("C") == TensorShape(SEQ, (7, "C"))
    assert image.numel() == 60
    assert TensorShape(IMG, (3, "H", 5)).numel() is None
    assert image.is_bound()
    assert not TensorShape(FEAT, (None,)).is_bound()


def test_mismatched_params_model_is_a_programming_error() -> None:
    # The contract never pairs an op with another op's params; bypassing it is a TypeError.
    bad = Node.model_construct(id="n", op=Op.LINEAR, inputs=["input"], params=NoParams())
    ir = single(Op.LINEAR, FEAT, out_features=2).model_copy(update={"nodes": [bad]})
    with pytest.raises(TypeError, match="node 'n': expected LinearParams, got NoParams"):
        infer_shapes(ir)
    assert isinstance(single(Op.LINEAR, FEAT, out_features=2).nodes[0].params, LinearParams)


def test_shapes_and_library_import_no_torch() -> None:
    code = (
        "import esper.blueprints.shapes, esper.blueprints.library, sys; "
        "assert 'torch' not in sys.modules, sorted(m for m in sys.modules if 'torch' in m)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
