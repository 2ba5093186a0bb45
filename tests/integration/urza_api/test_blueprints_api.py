"""Blueprints through the client, over real HTTP, on both storage backends."""

from __future__ import annotations

import pytest

from esper.contracts.blueprint import BlueprintIR
from esper.urza.client import UrzaNotFoundError, UrzaRequestError

from .support import RunningUrza, blueprint, blueprint_document, cpu_target

pytestmark = pytest.mark.timeout(120)


def test_submit_is_idempotent_by_canonical_hash(urza: RunningUrza) -> None:
    client, transport = urza.recording_client()
    first = blueprint("residual-mlp", tags=["mlp"])

    created = client.submit_blueprint(first)
    assert transport.last_status() == 201
    assert created.hash == first.canonical_hash()
    assert created.ir == first

    # Same computation, other metadata: the same blueprint, and the first metadata is kept.
    renamed = blueprint("another-name", tags=["other"], description="said differently")
    again = client.submit_blueprint(renamed)
    assert transport.last_status() == 200
    assert again.hash == created.hash
    assert again.ir.name == "residual-mlp"
    assert again.created_at == created.created_at

    fetched = client.get_blueprint(created.hash)
    assert fetched == created
    page = client.list_blueprints()
    assert [record.hash for record in page.items] == [created.hash]
    assert page.next_cursor is None


def _break_input(document: dict) -> None:
    document["nodes"][2]["inputs"] = ["ghost"]


def _break_params(document: dict) -> None:
    document["nodes"][0]["params"] = {"outFeatures": 0}


def _break_cycle(document: dict) -> None:
    document["nodes"][0]["inputs"] = ["down"]


def _break_arity(document: dict) -> None:
    document["nodes"][3]["inputs"] = ["down"]


def _break_duplicate(document: dict) -> None:
    document["nodes"][1]["id"] = "up"


def _break_op(document: dict) -> None:
    document["nodes"][1]["op"] = "eval"


def _break_shapes(document: dict) -> None:
    document["input"]["shape"] = [32]
    document["nodes"][2]["params"] = {"outFeatures": 16, "init": "zeros"}


INVALID_IRS = [
    pytest.param(_break_input, ["node 'down'", "input 'ghost'"], id="unknown-input"),
    pytest.param(
        _break_params, ["node 'up'", "linear", "invalid params", "outFeatures"], id="params"
    ),
    pytest.param(_break_cycle, ["'down'", "'up'", "cycle"], id="cycle"),
    pytest.param(_break_arity, ["node 'out'", "add", "at least 2 inputs"], id="arity"),
    pytest.param(_break_duplicate, ["node 'up'", "duplicate node id"], id="duplicate"),
    pytest.param(
        _break_shapes, ["node 'out'", "add", "features[32] and features[16]"], id="shapes"
    ),
    # The allow-list is the first thing a user gets wrong; the message must name the node.
    pytest.param(_break_op, ["node 'act'", "'eval'"], id="unknown-op"),
]


def test_invalid_ir_is_refused_and_nothing_is_stored(urza: RunningUrza) -> None:
    document = blueprint_document()
    _break_input(document)
    response = urza.http().post("/v1/blueprints", json=document)
    assert response.status_code == 422, response.text
    assert "node 'down': input 'ghost' is neither a node nor 'input'" in response.json()["detail"]
    assert urza.client().list_blueprints().items == []


@pytest.mark.parametrize(("mutate", "fragments"), INVALID_IRS)
def test_invalid_ir_message_names_the_node_and_the_problem(
    local_urza: RunningUrza, mutate, fragments: list[str]
) -> None:
    urza = local_urza
    document = blueprint_document()
    mutate(document)
    response = urza.http().post("/v1/blueprints", json=document)

    assert response.status_code == 422, response.text
    body = response.json()
    assert isinstance(body["detail"], str)
    assert body["detail"].strip()
    for fragment in fragments:
        assert fragment in body["detail"], body["detail"]
    assert urza.client().list_blueprints().items == []


def test_client_raises_request_error_for_an_invalid_ir(local_urza: RunningUrza) -> None:
    urza = local_urza
    valid = blueprint()
    # model_copy skips validation, so the client sends an IR the server must refuse.
    dangling = valid.model_copy(update={"output": "nowhere"})
    client = urza.client()
    with pytest.raises(UrzaRequestError, match="output 'nowhere' is not a node") as caught:
        client.submit_blueprint(dangling)
    assert caught.value.status == 422
    assert client.list_blueprints().items == []


def test_list_filters_and_pagination(urza: RunningUrza) -> None:
    client = urza.client()
    alphas = [client.submit_blueprint(blueprint("alpha", hidden=h, tags=["a"])) for h in (8, 16)]
    betas = [
        client.submit_blueprint(blueprint("beta", hidden=h, tags=["b", "shared"]))
        for h in (24, 32, 40)
    ]
    everything = sorted(record.hash for record in alphas + betas)

    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        page = client.list_blueprints(limit=2, cursor=cursor)
        assert len(page.items) <= 2
        seen.extend(record.hash for record in page.items)
        pages += 1
        cursor = page.next_cursor
        if cursor is None:
            break
    assert seen == everything
    assert pages == 3

    by_name = client.list_blueprints(name="alpha")
    assert sorted(r.hash for r in by_name.items) == sorted(r.hash for r in alphas)
    by_tag = client.list_blueprints(tag="shared")
    assert sorted(r.hash for r in by_tag.items) == sorted(r.hash for r in betas)
    both = client.list_blueprints(name="beta", tag="a")
    assert both.items == []
    first_beta = client.list_blueprints(name="beta", limit=1)
    assert len(first_beta.items) == 1
    assert first_beta.next_cursor == first_beta.items[0].hash


@pytest.mark.parametrize(
    ("query", "fragment"),
    [
        ({"limit": 0}, "limit"),
        ({"limit": 501}, "limit"),
        ({"cursor": "not-a-hash"}, "cursor"),
        ({"tag": "Not A Tag"}, "tag"),
    ],
)
def test_list_refuses_bad_queries(local_urza: RunningUrza, query: dict, fragment: str) -> None:
    response = local_urza.http().get("/v1/blueprints", params=query)
    assert response.status_code == 422
    assert fragment in response.json()["detail"]


def test_unknown_blueprint_is_not_found(local_urza: RunningUrza) -> None:
    urza = local_urza
    client = urza.client()
    missing = "0" * 64
    with pytest.raises(UrzaNotFoundError, match=f"blueprint {missing} is not registered") as caught:
        client.get_blueprint(missing)
    assert caught.value.status == 404
    with pytest.raises(UrzaNotFoundError):
        client.delete_blueprint(missing)
    response = urza.http().get("/v1/blueprints/NOT-A-HASH")
    assert response.status_code == 422
    assert "blueprint_hash" in response.json()["detail"]


def test_delete_blueprint(local_urza: RunningUrza) -> None:
    urza = local_urza
    client, transport = urza.recording_client()
    record = client.submit_blueprint(blueprint())
    client.delete_blueprint(record.hash)
    assert transport.last_status() == 204
    with pytest.raises(UrzaNotFoundError):
        client.get_blueprint(record.hash)
    # It can be registered again afterwards, as new.
    client.submit_blueprint(blueprint())
    assert transport.last_status() == 201


def test_round_trip_keeps_the_ir_exactly(local_urza: RunningUrza) -> None:
    ir = BlueprintIR.model_validate(
        {
            "name": "conv-block",
            "description": "A depthwise separable block; unicode ok: ∂x/∂t",
            "tags": ["conv"],
            "input": {"layout": "image", "shape": ["C", 8, 8]},
            "nodes": [
                {
                    "id": "dw",
                    "op": "depthwise_conv2d",
                    "inputs": ["input"],
                    "params": {"kernelSize": 3},
                },
                {"id": "bn", "op": "batch_norm", "inputs": ["dw"], "params": {"eps": 0.001}},
                {"id": "act", "op": "silu", "inputs": ["bn"]},
                {
                    "id": "pw",
                    "op": "conv2d",
                    "inputs": ["act"],
                    "params": {"outChannels": "C", "kernelSize": 1, "init": "zeros"},
                },
                {"id": "sum", "op": "add", "inputs": ["input", "pw"]},
            ],
            "output": "sum",
        }
    )
    client = local_urza.client()
    record = client.submit_blueprint(ir)
    assert client.get_blueprint(record.hash).ir == ir
    assert record.hash == ir.canonical_hash()


def test_a_target_that_makes_the_shapes_clash_is_refused(local_urza: RunningUrza) -> None:
    # With C unbound the design may still fit; a target binding C to another size cannot.
    document = blueprint_document()
    document["nodes"][2]["params"] = {"outFeatures": 16, "init": "zeros"}
    client = local_urza.client()
    record = client.submit_blueprint(BlueprintIR.model_validate(document))
    with pytest.raises(UrzaRequestError, match="node 'out' \\(add\\): inputs differ in shape"):
        client.create_kernel(record.hash, cpu_target(64))
    assert client.list_kernels().items == []
    fitting = client.create_kernel(record.hash, cpu_target(16))
    assert fitting.target.bindings == {"C": 16}
