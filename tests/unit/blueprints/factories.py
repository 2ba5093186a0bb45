"""Small blueprint IRs shared by the blueprints tests.

``OP_CASES`` holds one tiny IR per legal (op, layout) combination with the shape, parameter
count and FLOPs worked out by hand; the shape tests check inference against those numbers and
the builder tests check the built torch module against inference. ``ILLEGAL_LAYOUTS`` lists
every (op, layout) pair an op must refuse.
"""

from dataclasses import dataclass, replace
from typing import Any

from esper.contracts import BlueprintIR, Layout, Op

# Bound example shapes per layout (non-batch dims).
FEATURES = (6,)
IMAGE = (4, 5, 7)
SEQUENCE = (3, 8)
SHAPES: dict[Layout, tuple[int, ...]] = {
    Layout.FEATURES: FEATURES,
    Layout.IMAGE: IMAGE,
    Layout.SEQUENCE: SEQUENCE,
}

# Two small binding sets that every library blueprint accepts (C divisible by 4 heads and by
# the squeeze-excite reduction of 4).
BINDINGS_A = {"C": 8, "H": 5, "W": 4, "T": 6}
BINDINGS_B = {"C": 12, "H": 3, "W": 6, "T": 3}


def node(node_id: str, op: str, *inputs: str, **params: Any) -> dict[str, Any]:
    """Return a node document (params in snake_case or camelCase)."""
    document: dict[str, Any] = {"id": node_id, "op": op, "inputs": list(inputs)}
    if params:
        document["params"] = params
    return document


def blueprint(
    layout: Layout | str,
    shape: tuple[int | str, ...] | list[int | str],
    nodes: list[dict[str, Any]],
    output: str | None = None,
    name: str = "t",
) -> BlueprintIR:
    """Return a validated blueprint; the output defaults to the last node."""
    return BlueprintIR.model_validate(
        {
            "name": name,
            "input": {"layout": str(layout), "shape": list(shape)},
            "nodes": nodes,
            "output": output if output is not None else nodes[-1]["id"],
        }
    )


def single(op: Op | str, layout: Layout, shape: tuple[int | str, ...] | None = None, **params: Any):
    """Return ``input -> n -> output`` for one op."""
    return blueprint(layout, shape or SHAPES[layout], [node("n", str(op), "input", **params)])


def symbols_for(ir: BlueprintIR, bindings: dict[str, int]) -> dict[str, int]:
    """Return the subset of ``bindings`` that ``ir`` uses."""
    return {key: value for key, value in bindings.items() if key in ir.symbols()}


@dataclass(frozen=True)
class OpCase:
    """One legal IR with its hand-computed output shape and costs."""

    id: str
    ops: frozenset[Op]
    layout: Layout
    ir: BlueprintIR
    shape: tuple[int, ...]
    out_layout: Layout
    params: int
    flops: int


def _case(
    case_id: str,
    ir: BlueprintIR,
    shape: tuple[int, ...],
    params: int,
    flops: int,
) -> OpCase:
    return OpCase(
        id=case_id,
        ops=frozenset(item.op for item in ir.nodes),
        layout=ir.input.layout,
        ir=ir,
        shape=shape,
        out_layout=ir.input.layout,
        params=params,
        flops=flops,
    )


FEAT, IMG, SEQ = Layout.FEATURES, Layout.IMAGE, Layout.SEQUENCE
_NUMEL = {FEAT: 6, IMG: 4 * 5 * 7, SEQ: 3 * 8}

_ELEMENTWISE = [Op.RELU, Op.GELU, Op.SILU, Op.TANH, Op.SIGMOID]

OP_CASES: list[OpCase] = [
    # Dense layers: features and sequences (per-position).
    _case("linear-features", single(Op.LINEAR, FEAT, out_features=10), (10,), 6 * 10 + 10, 2 * 60),
    _case(
        "linear-features-nobias",
        single(Op.LINEAR, FEAT, out_features=10, bias=False),
        (10,),
        60,
        120,
    ),
    _case("linear-sequence", single(Op.LINEAR, SEQ, out_features=10), (3, 10), 90, 2 * 80 * 3),
    _case(
        "low_rank-features",
        single(Op.LOW_RANK, FEAT, rank=2, out_features=10),
        (10,),
        6 * 2 + 2 * 10,
        2 * 32,
    ),
    _case(
        "low_rank-sequence",
        single(Op.LOW_RANK, SEQ, rank=2, out_features=5),
        (3, 5),
        8 * 2 + 2 * 5,
        2 * 26 * 3,
    ),
    # Convolutions: images only.
    _case(
        "conv2d-same",
        single(Op.CONV2D, IMG, out_channels=6, kernel_size=3),
        (6, 5, 7),
        6 * 4 * 9 + 6,
        2 * 216 * 35,
    ),
    _case(
        "conv2d-even-kernel-same",
        single(Op.CONV2D, IMG, out_channels=2, kernel_size=2, bias=False),
        (2, 5, 7),
        2 * 4 * 4,
        2 * 32 * 35,
    ),
    _case(
        "conv2d-stride2-pad1",
        single(Op.CONV2D, IMG, out_channels=6, kernel_size=3, stride=2, padding=1),
        (6, 3, 4),
        222,
        2 * 216 * 12,
    ),
    _case(
        "conv2d-pad0",
        single(Op.CONV2D, IMG, out_channels=3, kernel_size=3, padding=0),
        (3, 3, 5),
        3 * 4 * 9 + 3,
        2 * 108 * 15,
    ),
    _case(
        "conv2d-groups",
        single(Op.CONV2D, IMG, out_channels=6, kernel_size=1, groups=2),
        (6, 5, 7),
        6 * 2 + 6,
        2 * 12 * 35,
    ),
    _case(
        "depthwise-same",
        single(Op.DEPTHWISE_CONV2D, IMG, kernel_size=3),
        (4, 5, 7),
        4 * 9 + 4,
        2 * 36 * 35,
    ),
    _case(
        "depthwise-stride3-pad0",
        single(Op.DEPTHWISE_CONV2D, IMG, kernel_size=2, stride=3, padding=0, bias=False),
        (4, 2, 2),
        4 * 4,
        2 * 16 * 4,
    ),
    # Norms.
    _case("batch_norm-features", single(Op.BATCH_NORM, FEAT), FEATURES, 12, 4 * 6),
    _case("batch_norm-image", single(Op.BATCH_NORM, IMG), IMAGE, 8, 4 * 140),
    _case("layer_norm-features", single(Op.LAYER_NORM, FEAT, eps=1e-3), FEATURES, 12, 4 * 6),
    _case("layer_norm-sequence", single(Op.LAYER_NORM, SEQ), SEQUENCE, 16, 4 * 24),
    _case("group_norm-image", single(Op.GROUP_NORM, IMG, num_groups=2), IMAGE, 8, 4 * 140),
    # Gating and attention.
    _case(
        "squeeze_excite-image",
        single(Op.SQUEEZE_EXCITE, IMG, reduction=2),
        IMAGE,
        2 * 4 * 2 + 2 + 4,
        2 * (2 * 4 * 2) + 2 * 140,
    ),
    _case(
        "squeeze_excite-features",
        single(Op.SQUEEZE_EXCITE, FEAT, reduction=3),
        FEATURES,
        2 * 6 * 2 + 2 + 6,
        2 * (2 * 6 * 2) + 2 * 6,
    ),
    _case(
        "attention-sequence",
        single(Op.ATTENTION, SEQ, num_heads=2),
        SEQUENCE,
        4 * 8 * 8 + 4 * 8,
        2 * (4 * 8 * 8) * 3 + 4 * 3 * 3 * 8,
    ),
    replace(
        _case("global_avg_pool-image", single(Op.GLOBAL_AVG_POOL, IMG), (4,), 0, 140),
        out_layout=FEAT,
    ),
    # Combinations.
    _case(
        "concat-features",
        blueprint(
            FEAT,
            FEATURES,
            [
                node("a", "linear", "input", out_features=3),
                node("b", "linear", "input", out_features=5),
                node("n", "concat", "a", "b", "input"),
            ],
        ),
        (3 + 5 + 6,),
        (6 * 3 + 3) + (6 * 5 + 5),
        2 * 18 + 2 * 30,
    ),
    _case(
        "concat-image",
        blueprint(
            IMG,
            IMAGE,
            [
                node("a", "conv2d", "input", out_channels=2, kernel_size=1, bias=False),
                node("n", "concat", "a", "input"),
            ],
        ),
        (6, 5, 7),
        8,
        2 * 8 * 35,
    ),
    _case(
        "concat-sequence",
        blueprint(
            SEQ,
            SEQUENCE,
            [
                node("a", "linear", "input", out_features=2, bias=False),
                node("n", "concat", "input", "a"),
            ],
        ),
        (3, 10),
        16,
        2 * 16 * 3,
    ),
    _case(
        "add-features-three-inputs",
        blueprint(
            FEAT, FEATURES, [node("a", "relu", "input"), node("n", "add", "input", "a", "a")]
        ),
        FEATURES,
        0,
        6 + 2 * 6,
    ),
    _case(
        "mul-image",
        blueprint(IMG, IMAGE, [node("a", "sigmoid", "input"), node("n", "mul", "input", "a")]),
        IMAGE,
        0,
        140 + 140,
    ),
    _case(
        "add-sequence",
        blueprint(SEQ, SEQUENCE, [node("a", "tanh", "input"), node("n", "add", "a", "input")]),
        SEQUENCE,
        0,
        24 + 24,
    ),
]

# Element-wise ops keep the shape on every layout; dropout and identity cost no FLOPs, scale
# has one parameter.
for _layout in (FEAT, IMG, SEQ):
    _numel = _NUMEL[_layout]
    _shape = SHAPES[_layout]
    for _op in _ELEMENTWISE:
        OP_CASES.append(
            _case(f"{_op.value}-{_layout.value}", single(_op, _layout), _shape, 0, _numel)
        )
    OP_CASES.append(
        _case(f"dropout-{_layout.value}", single(Op.DROPOUT, _layout, p=0.5), _shape, 0, 0)
    )
    OP_CASES.append(_case(f"identity-{_layout.value}", single(Op.IDENTITY, _layout), _shape, 0, 0))
    OP_CASES.append(
        _case(
            f"scale-{_layout.value}", single(Op.SCALE, _layout, init_value=0.5), _shape, 1, _numel
        )
    )

# Minimal valid params per op, for the layout checks.
MINIMAL_PARAMS: dict[Op, dict[str, Any]] = {
    Op.LINEAR: {"out_features": 4},
    Op.LOW_RANK: {"rank": 2, "out_features": 4},
    Op.CONV2D: {"out_channels": 4, "kernel_size": 1},
    Op.DEPTHWISE_CONV2D: {"kernel_size": 1},
    Op.GROUP_NORM: {"num_groups": 1},
    Op.DROPOUT: {"p": 0.1},
    Op.SQUEEZE_EXCITE: {"reduction": 2},
    Op.ATTENTION: {"num_heads": 1},
}

ILLEGAL_LAYOUTS: list[tuple[Op, Layout, str]] = [
    (Op.LINEAR, IMG, "features or sequence"),
    (Op.LOW_RANK, IMG, "features or sequence"),
    (Op.CONV2D, FEAT, "image"),
    (Op.CONV2D, SEQ, "image"),
    (Op.DEPTHWISE_CONV2D, FEAT, "image"),
    (Op.DEPTHWISE_CONV2D, SEQ, "image"),
    (Op.BATCH_NORM, SEQ, "features or image"),
    (Op.LAYER_NORM, IMG, "features or sequence"),
    (Op.GROUP_NORM, FEAT, "image"),
    (Op.GROUP_NORM, SEQ, "image"),
    (Op.SQUEEZE_EXCITE, SEQ, "image or features"),
    (Op.ATTENTION, FEAT, "sequence"),
    (Op.ATTENTION, IMG, "sequence"),
    (Op.GLOBAL_AVG_POOL, FEAT, "image"),
    (Op.GLOBAL_AVG_POOL, SEQ, "image"),
]
"""Every (op, layout) an op refuses, with the layouts its error names."""

# The issue's kinds of built-in blueprint, with the library name and an op that defines each.
ISSUE_KINDS: dict[str, tuple[str, Op]] = {
    "residual MLP adapter": ("residual-mlp", Op.ADD),
    "low-rank adapter": ("low-rank-adapter", Op.LOW_RANK),
    "bottleneck MLP": ("bottleneck-mlp", Op.LINEAR),
    "residual 3x3 conv adapter": ("residual-conv3x3", Op.CONV2D),
    "depthwise-separable conv": ("depthwise-separable", Op.DEPTHWISE_CONV2D),
    "squeeze-excite": ("squeeze-excite", Op.SQUEEZE_EXCITE),
    "self-attention block": ("self-attention", Op.ATTENTION),
    "widening branch": ("widening-branch", Op.LINEAR),
}

# Parameters of each library blueprint's output layer (what must start at zero and learn).
OUTPUT_LAYER_PARAMS: dict[str, frozenset[str]] = {
    "residual-mlp": frozenset({"layers.down.weight", "layers.down.bias"}),
    "low-rank-adapter": frozenset({"layers.lora.up.weight"}),
    "bottleneck-mlp": frozenset({"layers.up.weight", "layers.up.bias"}),
    "widening-branch": frozenset({"layers.out.weight", "layers.out.bias"}),
    "residual-conv3x3": frozenset({"layers.proj.weight", "layers.proj.bias"}),
    "depthwise-separable": frozenset({"layers.pw.weight", "layers.pw.bias"}),
    "squeeze-excite": frozenset({"layers.gate.scale"}),
    "self-attention": frozenset(
        {"layers.attn.attention.out_proj.weight", "layers.attn.attention.out_proj.bias"}
    ),
}
