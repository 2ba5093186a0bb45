"""ModelGraph: the structure of a wrapped host model as Tamiyo sees it.

Kasmina exports it; Tamiyo's policies read it (with telemetry) and never touch the modules
themselves. Nodes are the host's leaf modules and slot-carrying modules in the order a forward
pass ran them (or module registration order when no example input was given); edges are the data
flow between them (traced with torch.fx; an execution-order chain where tracing fails, which
``edge_source`` says).
"""

from enum import StrEnum

from pydantic import Field, model_validator

from esper.contracts._base import Contract
from esper.contracts.seed import SlotDescriptor
from esper.contracts.types import Count, Identifier, ShortText

MAX_GRAPH_NODES = 100_000


class EdgeSource(StrEnum):
    """Where a graph's edges come from."""

    DATAFLOW = "dataflow"
    """Every edge is traced data flow."""
    MIXED = "mixed"
    """The host traced, but some modules holding nodes did not: their nodes are chained in
    execution order."""
    EXECUTION_ORDER = "execution-order"
    """The host did not trace: every node is chained to the next in execution order."""


class GraphNode(Contract):
    """One module of the host: a leaf, or a module that carries a seed slot.

    Attributes:
        module_path: Its dotted path in the host.
        module_type: Its class name.
        param_count: Its own parameters.
        slot_id: The seed slot after it, if any.
    """

    module_path: ShortText
    module_type: ShortText
    param_count: Count
    slot_id: Identifier | None = None


class GraphEdge(Contract):
    """Data flows from one node to another.

    Attributes:
        source: Index of the producing node.
        target: Index of the consuming node.
    """

    source: int = Field(ge=0)
    target: int = Field(ge=0)


class ModelGraph(Contract):
    """A wrapped host: its leaf modules, how they connect, and its seed slots.

    Attributes:
        nodes: Leaf modules.
        edges: Data flow between them.
        slots: The seed slots.
        host_param_count: Parameters of the host without any seed.
        edge_source: Where the edges come from (data flow, or an execution-order chain).
    """

    nodes: list[GraphNode] = Field(max_length=MAX_GRAPH_NODES)
    edges: list[GraphEdge] = Field(max_length=MAX_GRAPH_NODES)
    slots: list[SlotDescriptor] = Field(max_length=512)
    host_param_count: Count
    edge_source: EdgeSource = EdgeSource.EXECUTION_ORDER

    @model_validator(mode="after")
    def _consistent(self) -> "ModelGraph":
        for edge in self.edges:
            if edge.source >= len(self.nodes) or edge.target >= len(self.nodes):
                raise ValueError(
                    f"edge {edge.source}->{edge.target} names a node beyond the "
                    f"{len(self.nodes)} nodes"
                )
        slot_ids = [slot.slot_id for slot in self.slots]
        repeated = sorted({slot_id for slot_id in slot_ids if slot_ids.count(slot_id) > 1})
        if repeated:
            raise ValueError(f"slot ids repeat in the graph: {', '.join(repeated)}")
        unknown = {node.slot_id for node in self.nodes if node.slot_id} - set(slot_ids)
        if unknown:
            raise ValueError(f"node(s) name unknown slot(s): {', '.join(sorted(unknown))}")
        return self
