"""BlueprintIR: structural validation, canonical form and identity."""

import copy
import hashlib
import json
import random
from types import SimpleNamespace
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from esper.contracts import INPUT_REF, BlueprintIR, Node, Op, TensorSpec
from esper.contracts.blueprint import (
    CANONICAL_SCHEMA,
    MAX_NODES,
    PARAMS_BY_OP,
    VARIADIC_OPS,
    Conv2dParams,
    LinearParams,
    NoParams,
    NormParams,
    SqueezeExciteParams,
)

from .samples import FAST, blueprint_document

# The smallest valid params of each op (defaults omitted).
MINIMAL_PARAMS: dict[Op, dict[str, Any]] = {
    Op.LINEAR: {"outFeatures": 16},
    Op.LOW_RANK: {"rank": 4, "outFeatures": 16},
    Op.CONV2D: {"outChannels": 16, "kernelSize": 3},
    Op.DEPTHWISE_CONV2D: {"kernelSize": 3},
    Op.BATCH_NORM: {},
    Op.LAYER_NORM: {},
    Op.GROUP_NORM: {"numGroups": 4},
    Op.RELU: {},
    Op.GELU: {},
    Op.SILU: {},
    Op.TANH: {},
    Op.SIGMOID: {},
    Op.DROPOUT: {"p": 0.1},
    Op.ADD: {},
    Op.MUL: {},
    Op.CONCAT: {},
    Op.SQUEEZE_EXCITE: {},
    Op.ATTENTION: {"numHeads": 2},
    Op.SCALE: {},
    Op.GLOBAL_AVG_POOL: {},
    Op.IDENTITY: {},
}
UNARY_OPS = [op for op in Op if op not in VARIADIC_OPS]
ACTIVATIONS = [Op.RELU, Op.GELU, Op.SILU, Op.TANH, Op.SIGMOID]


def chain(*nodes: dict[str, Any], output: str | None = None, **top: Any) -> dict[str, Any]:
    """A blueprint document around ``nodes`` (the last one is the output by default)."""
    document: dict[str, Any] = {
        "name": "case",
        "input": {"layout": "features", "shape": ["C"]},
        "nodes": list(nodes),
        "output": output if output is not None else nodes[-1]["id"],
    }
    document.update(top)
    return document


def node(node_id: str, op: str, *inputs: str, **params: Any) -> dict[str, Any]:
    item: dict[str, Any] = {"id": node_id, "op": op, "inputs": list(inputs)}
    if params:
        item["params"] = params
    return item


def rejected(document: dict[str, Any]) -> str:
    with pytest.raises(ValidationError) as caught:
        BlueprintIR.model_validate(document)
    return str(caught.value)


# ---------------------------------------------------------------- structural validation


def test_the_sample_is_valid_and_its_accessors_work() -> None:
    bp = BlueprintIR.model_validate(blueprint_document())
    assert bp.node("down").params == LinearParams(out_features="C", init="zeros")
    assert bp.topological_order() == ["up", "act", "drop", "down", "sum"]
    assert bp.symbols() == frozenset({"C"})
    with pytest.raises(KeyError, match="no node 'ghost'"):
        bp.node("ghost")


def test_topological_order_breaks_ties_by_id() -> None:
    bp = BlueprintIR.model_validate(
        chain(
            node("zeta", "relu", "input"),
            node("alpha", "gelu", "input"),
            node("mid", "tanh", "alpha"),
            node("out", "concat", "zeta", "mid", "input"),
        )
    )
    assert bp.topological_order() == ["alpha", "mid", "zeta", "out"]


def test_symbols_collect_input_and_output_sizes() -> None:
    bp = BlueprintIR.model_validate(
        {
            "name": "s",
            "input": {"layout": "image", "shape": ["C", "H", 8]},
            "nodes": [
                node("a", "conv2d", "input", outChannels="K", kernelSize=3),
                node("b", "low_rank", "a", rank=2, outFeatures="D"),
                node("c", "linear", "b", outFeatures=4),
            ],
            "output": "c",
        }
    )
    assert bp.symbols() == frozenset({"C", "H", "K", "D"})


STRUCTURAL_ERRORS: list[tuple[str, dict[str, Any], list[str]]] = [
    (
        "duplicate-id",
        chain(node("a", "relu", "input"), node("a", "gelu", "input")),
        ["node 'a': duplicate node id"],
    ),
    (
        "unresolved-input",
        chain(node("a", "relu", "input"), node("b", "add", "a", "ghost")),
        ["node 'b'", "input 'ghost' is neither a node nor 'input'"],
    ),
    (
        "cycle",
        chain(node("a", "add", "input", "b"), node("b", "relu", "a")),
        ["nodes 'a', 'b'", "cycle"],
    ),
    ("self-loop", chain(node("a", "add", "input", "a")), ["nodes 'a'", "cycle"]),
    (
        "dangling",
        chain(node("spare", "relu", "input"), node("out", "gelu", "input"), output="out"),
        ["node 'spare': dangling"],
    ),
    (
        "output-not-a-node",
        chain(node("a", "relu", "input"), output="nowhere"),
        ["output 'nowhere' is not a node"],
    ),
    (
        "output-is-the-input",
        chain(node("a", "relu", "input"), output="input"),
        ["output 'input' is not a node"],
    ),
    (
        "add-with-one-input",
        chain(node("a", "relu", "input"), node("sum", "add", "a")),
        ["node 'sum' (add): needs at least 2 inputs, got 1"],
    ),
    (
        "linear-with-two-inputs",
        chain(node("a", "relu", "input"), node("proj", "linear", "a", "input", outFeatures=8)),
        ["node 'proj' (linear): takes exactly 1 input, got 2"],
    ),
    (
        "linear-negative-out-features",
        chain(node("proj", "linear", "input", outFeatures=-1)),
        ["node 'proj' (linear): invalid params", "outFeatures"],
    ),
    (
        "linear-lowercase-symbol",
        chain(node("proj", "linear", "input", outFeatures="c")),
        ["node 'proj' (linear): invalid params", "outFeatures"],
    ),
    (
        "linear-missing-out-features",
        chain(node("proj", "linear", "input")),
        ["node 'proj' (linear): invalid params", "outFeatures: Field required"],
    ),
    (
        "conv-kernel-size-zero",
        chain(node("conv", "conv2d", "input", outChannels=8, kernelSize=0)),
        ["node 'conv' (conv2d): invalid params", "kernelSize"],
    ),
    (
        "conv-padding-too-large",
        chain(node("conv", "conv2d", "input", outChannels=8, kernelSize=3, padding=11)),
        ["node 'conv' (conv2d)", "padding must be 'same' or an integer in [0, 10], got 11"],
    ),
    (
        "conv-same-padding-stride-2",
        chain(node("conv", "conv2d", "input", outChannels=8, kernelSize=3, stride=2)),
        ["node 'conv' (conv2d)", "padding 'same' requires stride 1"],
    ),
    (
        "depthwise-same-padding-stride-2",
        chain(node("dw", "depthwise_conv2d", "input", kernelSize=3, stride=2, padding="same")),
        ["node 'dw' (depthwise_conv2d)", "padding 'same' requires stride 1"],
    ),
    (
        "depthwise-negative-padding",
        chain(node("dw", "depthwise_conv2d", "input", kernelSize=3, padding=-1)),
        ["node 'dw' (depthwise_conv2d)", "padding must be 'same' or an integer in [0, 10]"],
    ),
    (
        "dropout-p-too-high",
        chain(node("drop", "dropout", "input", p=0.95)),
        ["node 'drop' (dropout): invalid params", "p: "],
    ),
    (
        "group-norm-missing-groups",
        chain(node("gn", "group_norm", "input")),
        ["node 'gn' (group_norm): invalid params", "numGroups"],
    ),
    (
        "norm-zero-eps",
        chain(node("ln", "layer_norm", "input", eps=0)),
        ["node 'ln' (layer_norm): invalid params", "eps"],
    ),
    (
        "attention-zero-heads",
        chain(node("attn", "attention", "input", numHeads=0)),
        ["node 'attn' (attention): invalid params", "numHeads"],
    ),
    (
        "params-of-another-op",
        chain(node("act", "relu", "input", outFeatures=4)),
        ["node 'act' (relu): invalid params", "outFeatures: Extra inputs are not permitted"],
    ),
    (
        "conv-params-on-linear",
        chain(node("proj", "linear", "input", outFeatures=4, kernelSize=3)),
        ["node 'proj' (linear): invalid params", "kernelSize"],
    ),
    (
        "reserved-id",
        chain(node("input", "relu", "input")),
        ["node id 'input' is reserved"],
    ),
    (
        "image-layout-with-one-dim",
        chain(node("a", "relu", "input"), input={"layout": "image", "shape": ["C"]}),
        ["layout 'image' has 3 non-batch dimension(s)", "has 1"],
    ),
    (
        "features-layout-with-two-dims",
        chain(node("a", "relu", "input"), input={"layout": "features", "shape": ["T", "C"]}),
        ["layout 'features' has 1 non-batch dimension(s)"],
    ),
    (
        "sequence-layout-with-three-dims",
        chain(node("a", "relu", "input"), input={"layout": "sequence", "shape": [1, 2, 3]}),
        ["layout 'sequence' has 2 non-batch dimension(s)"],
    ),
    ("no-nodes", chain(node("a", "relu", "input")) | {"nodes": []}, ["nodes"]),
    ("op-not-allowed", chain(node("a", "softmax", "input")), ["op"]),
    ("bad-node-id", chain(node("Bad", "relu", "input")), ["id"]),
    ("no-inputs", chain(node("a", "relu")), ["inputs"]),
]


@pytest.mark.parametrize(
    ("document", "expected"),
    [pytest.param(doc, expected, id=case) for case, doc, expected in STRUCTURAL_ERRORS],
)
def test_structural_errors_name_the_node_and_the_problem(
    document: dict[str, Any], expected: list[str]
) -> None:
    message = rejected(document)
    for part in expected:
        assert part in message


def test_too_many_nodes_are_rejected() -> None:
    nodes = [node("n0", "relu", "input")]
    nodes += [node(f"n{i}", "relu", f"n{i - 1}") for i in range(1, MAX_NODES + 1)]
    assert "nodes" in rejected(chain(*nodes))
    assert BlueprintIR.model_validate(chain(*nodes[:MAX_NODES]))


@pytest.mark.parametrize("op", sorted(VARIADIC_OPS), ids=str)
def test_variadic_ops_need_two_inputs(op: Op) -> None:
    assert f"node 'v' ({op.value}): needs at least 2 inputs, got 1" in rejected(
        chain(node("v", op.value, "input"))
    )
    assert BlueprintIR.model_validate(chain(node("v", op.value, "input", "input")))


@pytest.mark.parametrize("op", UNARY_OPS, ids=str)
@pytest.mark.parametrize("count", [1, 2, 3])
def test_unary_ops_take_exactly_one_input(op: Op, count: int) -> None:
    document = chain(node("u", op.value, *["input"] * count, **MINIMAL_PARAMS[op]))
    if count == 1:
        assert BlueprintIR.model_validate(document).node("u").op is op
    else:
        assert f"node 'u' ({op.value}): takes exactly 1 input, got {count}" in rejected(document)


@pytest.mark.parametrize("op", list(Op), ids=str)
def test_every_op_parses_its_own_params_model(op: Op) -> None:
    parsed = Node.model_validate(
        {"id": "n", "op": op.value, "inputs": ["input", "input"], "params": MINIMAL_PARAMS[op]}
        if op in VARIADIC_OPS
        else {"id": "n", "op": op.value, "inputs": ["input"], "params": MINIMAL_PARAMS[op]}
    )
    assert type(parsed.params) is PARAMS_BY_OP[op]


@pytest.mark.parametrize("op", [op for op in Op if MINIMAL_PARAMS[op]], ids=str)
def test_ops_with_required_params_reject_missing_params(op: Op) -> None:
    inputs = ["input", "input"] if op in VARIADIC_OPS else ["input"]
    for params in (None, {}):
        with pytest.raises(ValidationError, match=f"node 'n' \\({op.value}\\): invalid params"):
            Node.model_validate({"id": "n", "op": op.value, "inputs": inputs, "params": params})


def test_params_may_be_given_as_a_model_of_the_right_kind() -> None:
    params = Conv2dParams(out_channels=8, kernel_size=3)
    assert Node(id="c", op="conv2d", inputs=["input"], params=params).params is params
    # A model with the same fields is re-read for the op (layer_norm and batch_norm share one).
    assert Node(id="n", op="group_norm", inputs=["input"], params={"numGroups": 2}).params


def test_params_model_of_another_op_with_non_default_values_is_rejected() -> None:
    with pytest.raises(ValidationError, match=r"node 'act' \(relu\): invalid params"):
        Node(id="act", op="relu", inputs=["input"], params=NormParams(eps=1e-3))
    with pytest.raises(ValidationError, match=r"node 'proj' \(linear\): invalid params"):
        Node(id="proj", op="linear", inputs=["input"], params=SqueezeExciteParams(reduction=8))


@pytest.mark.parametrize(
    "params",
    [
        pytest.param(NormParams(eps=1e-5), id="norm-default-spelled-out"),
        pytest.param(SqueezeExciteParams(), id="squeeze-excite-defaults"),
    ],
)
def test_params_model_of_another_op_is_rejected_even_with_default_values(params: Any) -> None:
    # BUG (src/esper/contracts/blueprint.py, Node._parse_params_for_op): a params *model* of the
    # wrong kind is dumped with exclude_defaults=True and re-read as the op's model, so one whose
    # values are all defaults silently becomes NoParams() for a relu node, while the same params
    # written as a dict ({"eps": 1e-05}) are rejected.
    with pytest.raises(ValidationError, match=r"node 'act' \(relu\)"):
        Node(id="act", op="relu", inputs=["input"], params=params)


def test_params_that_bypass_the_op_dispatch_are_still_checked() -> None:
    # Reading attributes (not a dict) skips the op dispatch; the after-validator still catches a
    # params model that does not belong to the op.
    source = SimpleNamespace(
        id="act", op="relu", inputs=["input"], params=LinearParams(out_features=4)
    )
    with pytest.raises(ValidationError, match=r"node 'act' \(relu\): params must be NoParams"):
        Node.model_validate(source, from_attributes=True)


def test_output_that_ignores_the_input_is_rejected() -> None:
    # Through validated nodes this cannot happen: every node has an input, and in a DAG whose
    # nodes all reach the output some source node reads 'input'. The graph check still guards
    # it, so exercise it on a value built without validation.
    orphan = Node.model_construct(id="const", op=Op.IDENTITY, inputs=[], params=NoParams())
    bp = BlueprintIR.model_construct(
        name="x", input=TensorSpec(layout="features", shape=[4]), nodes=[orphan], output="const"
    )
    with pytest.raises(ValueError, match="the output does not depend on the blueprint's input"):
        bp._check_graph()


def test_a_graph_disconnected_from_the_input_fails_on_dangling_or_cycle() -> None:
    # The output only feeds on itself; the node that reads the input is dangling.
    message = rejected(
        chain(node("reader", "relu", "input"), node("loop", "add", "loop", "loop"), output="loop")
    )
    assert "cycle" in message
    assert "'loop'" in message


@pytest.mark.parametrize(
    "shape", [[0], [1_048_577], ["c"], ["TOO_LONG_SYMBOL_NAME"], [], [1, 2, 3, 4]], ids=repr
)
def test_tensor_spec_rejects_bad_dims(shape: list[Any]) -> None:
    with pytest.raises(ValidationError):
        TensorSpec(layout="features", shape=shape)


@pytest.mark.parametrize(
    ("layout", "shape"),
    [("features", ["C"]), ("image", ["C", 32, "W"]), ("sequence", ["T", 64])],
)
def test_tensor_spec_accepts_matching_ranks(layout: str, shape: list[Any]) -> None:
    assert TensorSpec(layout=layout, shape=shape).shape == shape


# ---------------------------------------------------------------- canonical form and identity

GOLDEN_DOCUMENT: dict[str, Any] = {
    "name": "mbconv-golden",
    "description": "golden",
    "tags": ["conv"],
    "input": {"layout": "image", "shape": ["C", "H", "W"]},
    "nodes": [
        node("dw", "depthwise_conv2d", "input", kernelSize=3),
        node("pw", "conv2d", "dw", outChannels=64, kernelSize=1),
        node("bn", "batch_norm", "pw"),
        node("act", "silu", "bn"),
        node("se", "squeeze_excite", "act", reduction=8),
        node("proj", "conv2d", "se", outChannels="C", kernelSize=1, bias=False, init="zeros"),
        node("gate", "scale", "proj"),
        node("out", "add", "input", "gate"),
    ],
    "output": "out",
}

# Changing either constant changes the identity of every stored blueprint: Urza, CRD status and
# kernel ids are keyed by this hash, so a different canonical form across releases would orphan
# every blueprint and kernel already recorded. Only change it together with CANONICAL_SCHEMA
# and a migration.
GOLDEN_CANONICAL_JSON = (
    '{"input":{"layout":"image","shape":["C","H","W"]},"nodes":['
    '{"id":"act","inputs":["bn"],"op":"silu"},'
    '{"id":"bn","inputs":["pw"],"op":"batch_norm","params":{}},'
    '{"id":"dw","inputs":["input"],"op":"depthwise_conv2d","params":{"kernelSize":3}},'
    '{"id":"gate","inputs":["proj"],"op":"scale","params":{}},'
    '{"id":"out","inputs":["input","gate"],"op":"add"},'
    '{"id":"proj","inputs":["se"],"op":"conv2d",'
    '"params":{"bias":false,"init":"zeros","kernelSize":1,"outChannels":"C"}},'
    '{"id":"pw","inputs":["dw"],"op":"conv2d","params":{"kernelSize":1,"outChannels":64}},'
    '{"id":"se","inputs":["act"],"op":"squeeze_excite","params":{"reduction":8}}],'
    '"output":"out","schema":"esper.dev/blueprint-ir/v1"}'
)
GOLDEN_SHA256 = "731f317e0da69b0a72d38ddc9fe627bf657f2e167e9d56bf24b76bf9e800dee9"


def test_golden_canonical_form_and_hash() -> None:
    bp = BlueprintIR.model_validate(GOLDEN_DOCUMENT)
    assert bp.canonical_json() == GOLDEN_CANONICAL_JSON
    assert bp.canonical_hash() == GOLDEN_SHA256
    assert hashlib.sha256(GOLDEN_CANONICAL_JSON.encode()).hexdigest() == GOLDEN_SHA256
    assert CANONICAL_SCHEMA in GOLDEN_CANONICAL_JSON


def test_canonical_json_is_compact_sorted_and_excludes_metadata() -> None:
    bp = BlueprintIR.model_validate(blueprint_document())
    text = bp.canonical_json()
    assert " " not in text
    document = json.loads(text)
    assert list(document) == sorted(document)
    assert set(document) == {"schema", "input", "nodes", "output"}
    assert [item["id"] for item in document["nodes"]] == sorted(n.id for n in bp.nodes)
    for removed in ("residual-mlp", "A residual MLP block.", "mlp"):
        assert removed not in text
    assert len(bp.canonical_hash()) == 64
    assert bp.canonical_hash() == hashlib.sha256(text.encode()).hexdigest()


def shuffled_keys(value: Any, rng: random.Random) -> Any:
    """A copy of ``value`` with the keys of every dictionary in a random order."""
    if isinstance(value, dict):
        items = list(value.items())
        rng.shuffle(items)
        return {key: shuffled_keys(item, rng) for key, item in items}
    if isinstance(value, list):
        return [shuffled_keys(item, rng) for item in value]
    return value


DIMS = st.one_of(st.integers(1, 4096), st.sampled_from(["C", "H", "D", "K_2"]))
IDS = st.from_regex(r"[a-z][a-z0-9_]{0,6}", fullmatch=True).filter(lambda text: text != INPUT_REF)


@st.composite
def unary_params(draw: st.DrawFn, op: Op) -> dict[str, Any]:
    """Params of a unary op, with defaults omitted and non-defaults sometimes given."""
    maybe = st.booleans()
    params: dict[str, Any] = {}
    if op is Op.LINEAR:
        params["outFeatures"] = draw(DIMS)
        if draw(maybe):
            params["bias"] = False
        if draw(maybe):
            params["init"] = "zeros"
    elif op is Op.LOW_RANK:
        params = {"rank": draw(st.integers(1, 64)), "outFeatures": draw(DIMS)}
    elif op is Op.CONV2D:
        params = {"outChannels": draw(DIMS), "kernelSize": draw(st.integers(1, 11))}
        if draw(maybe):
            params.update(stride=draw(st.integers(2, 4)), padding=draw(st.integers(0, 10)))
    elif op is Op.DROPOUT:
        params["p"] = draw(st.floats(0.0, 0.9))
    elif op is Op.LAYER_NORM and draw(maybe):
        params["eps"] = draw(st.sampled_from([1e-6, 1e-3, 0.05]))
    elif op is Op.SCALE and draw(maybe):
        params["initValue"] = draw(st.floats(0.5, 10.0))
    return params


PARAM_OPS = [Op.LINEAR, Op.LOW_RANK, Op.CONV2D, Op.DROPOUT, Op.LAYER_NORM, Op.SCALE]


@st.composite
def blueprint_documents(draw: st.DrawFn) -> dict[str, Any]:
    """Valid blueprint documents: every node feeds the next, so none dangles."""
    count = draw(st.integers(1, 7))
    ids = draw(st.lists(IDS, min_size=count, max_size=count, unique=True))
    nodes = []
    for index, node_id in enumerate(ids):
        previous = INPUT_REF if index == 0 else ids[index - 1]
        if draw(st.integers(0, 3)) == 0:
            op = draw(st.sampled_from(sorted(VARIADIC_OPS)))
            extra = draw(
                st.lists(st.sampled_from([INPUT_REF, *ids[:index]]), min_size=1, max_size=2)
            )
            item = node(node_id, op.value, previous, *extra)
        else:
            op = draw(st.sampled_from(ACTIVATIONS + PARAM_OPS))
            item = node(node_id, op.value, previous, **draw(unary_params(op)))
        if "params" not in item and draw(st.booleans()):
            item["params"] = {}
        nodes.append(item)
    return {
        "name": draw(st.from_regex(r"[a-z][a-z0-9-]{0,10}[a-z0-9]", fullmatch=True)),
        "description": draw(st.text(max_size=20)),
        "tags": draw(st.lists(st.sampled_from(["mlp", "conv", "fast"]), max_size=3)),
        "input": {"layout": "features", "shape": [draw(DIMS)]},
        "nodes": nodes,
        "output": ids[-1],
    }


@FAST
@given(document=blueprint_documents(), rng=st.randoms(use_true_random=False))
def test_hash_is_stable_under_key_and_node_reordering(
    document: dict[str, Any], rng: random.Random
) -> None:
    expected = BlueprintIR.model_validate(document).canonical_hash()
    reordered = shuffled_keys(document, rng)
    rng.shuffle(reordered["nodes"])
    again = BlueprintIR.model_validate(reordered)
    assert again.canonical_hash() == expected
    assert again.canonical_json() == BlueprintIR.model_validate(document).canonical_json()


@FAST
@given(document=blueprint_documents())
def test_hash_survives_a_json_round_trip(document: dict[str, Any]) -> None:
    bp = BlueprintIR.model_validate(document)
    again = BlueprintIR.model_validate_json(bp.to_json())
    assert again == bp
    assert again.canonical_hash() == bp.canonical_hash()
    assert BlueprintIR.model_validate_json(json.dumps(document)).canonical_hash() == (
        bp.canonical_hash()
    )


@FAST
@given(document=blueprint_documents())
def test_hash_ignores_defaults_spelled_out(document: dict[str, Any]) -> None:
    bp = BlueprintIR.model_validate(document)
    # model_dump spells out every default of every node and params model.
    explicit = BlueprintIR.model_validate(bp.model_dump(mode="json"))
    assert explicit.canonical_hash() == bp.canonical_hash()


@pytest.mark.parametrize("op", list(Op), ids=str)
def test_each_ops_defaults_spelled_out_keep_the_hash(op: Op) -> None:
    inputs = ["input", "input"] if op in VARIADIC_OPS else ["input"]
    minimal = chain(node("n", op.value, *inputs, **MINIMAL_PARAMS[op]))
    full_params = PARAMS_BY_OP[op].model_validate(MINIMAL_PARAMS[op]).model_dump(mode="json")
    explicit = chain({"id": "n", "op": op.value, "inputs": inputs, "params": full_params})
    documents = [minimal, explicit]
    if not MINIMAL_PARAMS[op]:
        documents.append(chain({"id": "n", "op": op.value, "inputs": inputs, "params": {}}))
    defaults = {
        field.alias for field in PARAMS_BY_OP[op].model_fields.values() if not field.is_required()
    }
    assert set(full_params) == set(MINIMAL_PARAMS[op]) | defaults
    hashes = {BlueprintIR.model_validate(doc).canonical_hash() for doc in documents}
    assert len(hashes) == 1


@FAST
@given(
    document=blueprint_documents(),
    name=st.from_regex(r"[a-z][a-z0-9-]{0,20}[a-z0-9]", fullmatch=True),
    description=st.text(max_size=100),
    tags=st.lists(st.from_regex(r"[a-z0-9][a-z0-9._:-]{0,10}", fullmatch=True), max_size=5),
)
def test_metadata_does_not_affect_the_hash(
    document: dict[str, Any], name: str, description: str, tags: list[str]
) -> None:
    renamed = copy.deepcopy(document) | {"name": name, "description": description, "tags": tags}
    assert BlueprintIR.model_validate(renamed).canonical_hash() == (
        BlueprintIR.model_validate(document).canonical_hash()
    )


@FAST
@given(document=blueprint_documents(), dim=DIMS, data=st.data())
def test_computational_changes_change_the_hash(
    document: dict[str, Any], dim: Any, data: st.DataObject
) -> None:
    original = BlueprintIR.model_validate(document).canonical_hash()
    mutation = data.draw(st.sampled_from(["input-dim", "append-node", "swap-activation"]))
    changed = copy.deepcopy(document)
    if mutation == "input-dim":
        if changed["input"]["shape"] == [dim]:
            dim = "ZZ"
        changed["input"]["shape"] = [dim]
    elif mutation == "append-node":
        changed["nodes"].append(node("zz_tail", "tanh", changed["output"]))
        changed["output"] = "zz_tail"
    else:
        candidates = [item for item in changed["nodes"] if item["op"] in ACTIVATIONS]
        if candidates:
            target = data.draw(st.sampled_from(candidates))
            target["op"] = next(op for op in ACTIVATIONS if op != target["op"]).value
        else:
            changed["nodes"].append(node("zz_tail", "relu", changed["output"]))
            changed["output"] = "zz_tail"
    assert BlueprintIR.model_validate(changed).canonical_hash() != original


def _edit(path: list[Any], value: Any) -> dict[str, Any]:
    document = copy.deepcopy(blueprint_document())
    cursor: Any = document
    for key in path[:-1]:
        cursor = cursor[key]
    cursor[path[-1]] = value
    return document


@pytest.mark.parametrize(
    "changed",
    [
        pytest.param(_edit(["input", "shape"], [64]), id="input-shape"),
        pytest.param(_edit(["nodes", 0, "params", "outFeatures"], 256), id="out-features"),
        pytest.param(_edit(["nodes", 0, "params", "bias"], False), id="bias"),
        pytest.param(_edit(["nodes", 0, "params", "init"], "zeros"), id="init"),
        pytest.param(_edit(["nodes", 1, "op"], "relu"), id="op"),
        pytest.param(_edit(["nodes", 2, "params", "p"], 0.2), id="dropout-p"),
        pytest.param(_edit(["nodes", 3, "params", "init"], "default"), id="init-back-to-default"),
        pytest.param(_edit(["nodes", 4, "inputs"], ["down", "input"]), id="input-order"),
        pytest.param(_edit(["nodes", 4, "op"], "mul"), id="combine-op"),
        pytest.param(
            _edit(["output"], "down") | {"nodes": blueprint_document()["nodes"][:4]}, id="output"
        ),
    ],
)
def test_each_computational_field_is_part_of_the_identity(changed: dict[str, Any]) -> None:
    original = BlueprintIR.model_validate(blueprint_document())
    assert BlueprintIR.model_validate(changed).canonical_hash() != original.canonical_hash()


def test_renaming_the_output_node_changes_the_canonical_form() -> None:
    document = blueprint_document()
    document["nodes"][-1]["id"] = "total"
    document["output"] = "total"
    assert BlueprintIR.model_validate(document).canonical_json() != (
        BlueprintIR.model_validate(blueprint_document()).canonical_json()
    )
