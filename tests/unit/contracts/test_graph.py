"""ModelGraph: the host's leaf modules, the edges between them and its seed slots."""

import json
from typing import Any

import pytest
from pydantic import ValidationError

from esper.contracts import GraphEdge, GraphNode, ModelGraph
from esper.contracts.graph import MAX_GRAPH_NODES

from .samples import graph_node, image_slot, model_graph


def graph_document(**changes: Any) -> dict[str, Any]:
    document = model_graph().model_dump(by_alias=False)
    document.update(changes)
    return document


def test_the_sample_graph() -> None:
    graph = model_graph()
    assert [node.slot_id for node in graph.nodes] == ["layer1.0", "layer2.0", None]
    assert [(edge.source, edge.target) for edge in graph.edges] == [(0, 1), (1, 2)]
    assert [slot.slot_id for slot in graph.slots] == ["layer1.0", "layer2.0"]


def test_wire_form_is_camel_case_and_round_trips() -> None:
    graph = model_graph()
    document = json.loads(graph.to_json())
    assert set(document) == {"nodes", "edges", "slots", "hostParamCount", "edgeSource"}
    assert document["edgeSource"] == "execution-order"  # the default: claims no traced flow
    assert set(document["nodes"][0]) == {"modulePath", "moduleType", "paramCount", "slotId"}
    assert document["nodes"][2]["slotId"] is None
    assert set(document["slots"][0]) >= {"slotId", "modulePath", "shape"}
    assert ModelGraph.model_validate(document) == graph
    assert ModelGraph.model_validate_json(graph.to_json()) == graph


def test_edge_source_names_where_the_edges_come_from() -> None:
    document = json.loads(model_graph().to_json())
    for source in ("dataflow", "mixed", "execution-order"):
        assert ModelGraph.model_validate({**document, "edgeSource": source}).edge_source == source
    with pytest.raises(ValidationError, match="edgeSource"):
        ModelGraph.model_validate({**document, "edgeSource": "guessed"})


def test_an_empty_graph_is_valid() -> None:
    graph = ModelGraph(nodes=[], edges=[], slots=[], host_param_count=0)
    assert (graph.nodes, graph.edges, graph.slots) == ([], [], [])


def test_a_graph_without_slots() -> None:
    graph = ModelGraph(
        nodes=[graph_node("fc1", None), graph_node("fc2", None)],
        edges=[GraphEdge(source=0, target=1)],
        slots=[],
        host_param_count=10,
    )
    assert graph.slots == []


def test_a_slot_no_node_names_is_allowed() -> None:
    # A slot after a container module need not be named by any leaf node.
    graph = ModelGraph(
        nodes=[graph_node("fc", None)], edges=[], slots=[image_slot("blocks.0")], host_param_count=1
    )
    assert [slot.slot_id for slot in graph.slots] == ["blocks.0"]


@pytest.mark.parametrize(("source", "target"), [(3, 0), (0, 3), (2, 7), (100, 100)])
def test_an_edge_beyond_the_nodes_is_an_error(source: int, target: int) -> None:
    edges = [{"source": 0, "target": 1}, {"source": source, "target": target}]
    with pytest.raises(ValidationError) as caught:
        ModelGraph.model_validate(graph_document(edges=edges))
    assert f"edge {source}->{target} names a node beyond the 3 nodes" in str(caught.value)


def test_the_last_node_is_a_valid_edge_end() -> None:
    graph = ModelGraph.model_validate(graph_document(edges=[{"source": 2, "target": 0}]))
    assert graph.edges == [GraphEdge(source=2, target=0)]


def test_an_edge_in_a_graph_without_nodes_is_an_error() -> None:
    with pytest.raises(ValidationError, match=r"edge 0->0 names a node beyond the 0 nodes"):
        ModelGraph(nodes=[], edges=[GraphEdge(source=0, target=0)], slots=[], host_param_count=0)


@pytest.mark.parametrize("field", ["source", "target"])
def test_edge_indices_are_not_negative(field: str) -> None:
    document = {"source": 0, "target": 1, field: -1}
    with pytest.raises(ValidationError, match=field):
        GraphEdge.model_validate(document)


def test_slot_ids_must_not_repeat() -> None:
    slots = [image_slot("layer1.0"), image_slot("layer2.0"), image_slot("layer1.0")]
    with pytest.raises(ValidationError, match="slot ids repeat in the graph"):
        ModelGraph.model_validate(graph_document(slots=slots))


def test_a_node_naming_an_unknown_slot_is_an_error() -> None:
    nodes = [graph_node("a", "layer1.0"), graph_node("b", "ghost.1"), graph_node("c", "ghost.0")]
    with pytest.raises(ValidationError) as caught:
        ModelGraph.model_validate(graph_document(nodes=nodes))
    # Unknown slots are listed once each, sorted.
    assert "node(s) name unknown slot(s): ghost.0, ghost.1" in str(caught.value)


def test_edges_are_checked_before_slots() -> None:
    document = graph_document(
        edges=[{"source": 9, "target": 0}],
        slots=[image_slot("layer1.0"), image_slot("layer1.0")],
    )
    with pytest.raises(ValidationError, match="edge 9->0"):
        ModelGraph.model_validate(document)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("param_count", -1),
        ("param_count", 10**15 + 1),
        ("slot_id", "has space"),
        ("slot_id", ""),
        ("module_path", "x" * 257),
        ("module_type", "T" * 257),
    ],
)
def test_graph_node_bounds(field: str, value: Any) -> None:
    document = graph_node().model_dump(by_alias=False) | {field: value}
    with pytest.raises(ValidationError, match=field):
        GraphNode.model_validate(document)


def test_host_param_count_is_bounded() -> None:
    with pytest.raises(ValidationError, match="host_param_count"):
        ModelGraph.model_validate(graph_document(host_param_count=-1))


def test_list_sizes_are_bounded() -> None:
    assert MAX_GRAPH_NODES == 100_000
    too_many_slots = [image_slot(f"s{index}") for index in range(513)]
    with pytest.raises(ValidationError, match="slots"):
        ModelGraph.model_validate(graph_document(slots=too_many_slots))
    node = graph_node("fc", None)
    with pytest.raises(ValidationError, match="nodes"):
        ModelGraph(nodes=[node] * (MAX_GRAPH_NODES + 1), edges=[], slots=[], host_param_count=0)
    edge = GraphEdge(source=0, target=0)
    with pytest.raises(ValidationError, match="edges"):
        ModelGraph(nodes=[node], edges=[edge] * (MAX_GRAPH_NODES + 1), slots=[], host_param_count=0)
