"""The model graph: a wrapped host's layers and seed slots, joined by the data flowing between them.

Nodes are the host modules a forward pass ran (see :func:`model_graph`): its leaf modules, and
the modules that carry a seed slot even when they have children. They come in execution order.

Edges come from ``torch.fx`` symbolic tracing, which runs each ``forward`` on proxies and never
on data. Each module with nodes below it is traced on its own, *shallowly*: every submodule it
calls is one opaque call. The walk then follows values through the functional ops between calls
(``+``, ``torch.cat``, ``F.relu``, ``flatten``, ``view``, indexing...) and joins every node to the
nearest nodes upstream of its inputs, so a residual ``out + x`` gives a skip edge from the
producer of ``x`` to the node after the addition. A call of a module with nodes below it is
entered and its own flow spliced in: when the module is a node (a slot-carrying block), the
nodes inside that produce its output feed it, as it comes after them in execution order; when
it is not, they feed whatever consumes its output.

Tracing one module at a time keeps a failure local. A module whose own ``forward`` cannot be
traced (control flow on tensor values, ``len`` or ``int`` of a tensor, numpy, ...) has the nodes
below it chained in execution order, and the rest of the host keeps its data-flow edges; when
the host's own ``forward`` is the one that fails, every node is chained, which is the graph the
execution order alone gives. :class:`EdgeSource` says which happened. Three torch modules that
test their inputs before choosing a fast path (``TransformerEncoderLayer``,
``TransformerEncoder``, ``MultiheadAttention``) are traced through stand-ins that replay their
module-by-module path.

Edges need not point forward in execution order:

- a module run more than once (weight sharing) is one node, so the flow into a later call can
  come from a node that ran after its first call (the graph then has a cycle). Flow from such a
  module into itself is dropped: the graph has no self-edges, which message passing adds on its
  own;
- without an example input, ``wrap`` orders nodes by module registration, not execution, and a
  host that registers its layers out of call order gets edges pointing back.

Known gaps: a module whose weights the host uses directly (``F.linear(x, self.fc.weight)``)
instead of calling it has no edges, and neither has a module only called from a hook: neither
makes a module call that a trace can see.
"""

import inspect
import logging
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import fx, nn
from torch.fx.proxy import TraceError

from esper.contracts.graph import EdgeSource, GraphEdge, GraphNode, ModelGraph
from esper.contracts.seed import SlotDescriptor

LOGGER = logging.getLogger("esper.kasmina")

Sources = frozenset[int]
"""Node indices that produced a value: the nearest nodes upstream of it."""

_NONE: Sources = frozenset()

_MISSING = object()
"""Marks a key absent from a dict (``None`` may be a value)."""

UNTRACEABLE: tuple[type[Exception], ...] = (
    # `if tensor:`, `assert tensor...`, `for row in tensor`. TraceError is a ValueError; it is
    # named for the reader.
    TraceError,
    # A proxy handed to numpy (`np.sqrt(x.shape[-1])`: "invalid __array_struct__").
    ValueError,
    # A proxy handed to Python where a number is needed: `range(x.shape[0])`, `int(...)`.
    TypeError,
    # `len(tensor)`, and torch functions that check their arguments' types in Python
    # (TransformerEncoderLayer: "input to _none_or_dtype() must be None or torch.Tensor").
    RuntimeError,
    # An object FX cannot record as an argument (an instance of an arbitrary class).
    NotImplementedError,
)
"""What ``torch.fx`` tracing raises on code it cannot follow symbolically (each one is met in
the tests). Anything else is a bug, and propagates."""


def model_graph(
    host: nn.Module, slots: Sequence[SlotDescriptor], order: Sequence[str]
) -> ModelGraph:
    """Build the model graph of a host, tracing it symbolically (no forward pass on data).

    Args:
        host: The host model (module paths are relative to it, as in ``SlotDescriptor``).
        slots: The seed slots' descriptors, in injection order.
        order: Module paths in execution order (``""`` is the host itself and is skipped).

    Returns:
        The graph: nodes in execution order; edges sorted, without repeats or self-edges; and
        where its edges come from (``edge_source``).
    """
    modules = dict(host.named_modules())
    slot_by_path = {slot.module_path: slot.slot_id for slot in slots}
    paths = [
        path
        for path in order
        if path and (not list(modules[path].children()) or path in slot_by_path)
    ]
    nodes = [
        GraphNode(
            module_path=path,
            module_type=type(modules[path]).__name__,
            param_count=sum(p.numel() for p in modules[path].parameters(recurse=False)),
            slot_id=slot_by_path.get(path),
        )
        for path in paths
    ]
    flow = _DataFlow(host, [modules[path] for path in paths])
    source = flow.run()
    graph = ModelGraph(
        nodes=nodes,
        edges=[GraphEdge(source=a, target=b) for a, b in sorted(flow.edges) if a != b],
        slots=list(slots),
        host_param_count=sum(p.numel() for p in host.parameters()),
        edge_source=source,
    )
    return graph


class _ShallowTracer(fx.Tracer):
    """Records one module's own ``forward``: every submodule it calls is a single node."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        """Treat every installed submodule as opaque; the walk enters those it needs."""
        del m, module_qualified_name
        return True

    def call_module(
        self,
        m: nn.Module,
        forward: Any,  # Any: FX passes the module's original __call__, of any signature
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> Any:  # Any: a proxy, or whatever the module returns on proxies
        """Trace through a module built inside ``forward`` (``nn.ReLU()(x)``).

        Such a module is not installed, so it has no path, and FX would raise ``NameError``;
        it is no layer of the host either, so its ops belong to the caller's flow.
        """
        installed: Mapping[nn.Module, str] = getattr(self, "submodule_paths", None) or {}
        if m not in installed:
            return forward(*args, **kwargs)
        return super().call_module(m, forward, args, kwargs)


class _EncoderLayerFlow(nn.Module):
    """The data flow of ``nn.TransformerEncoderLayer``, in a form FX can trace.

    The layer's ``forward`` first chooses between its fused fast path and the module-by-module
    path by testing its input (``src.dim()``, ``src.is_nested``...), which no symbolic trace
    can do. The module-by-module path is the one that runs the submodules the graph has as
    nodes, so this replays its last lines (torch's own ``_sa_block`` and ``_ff_block`` make the
    calls, so they stay torch's).

    Args:
        layer: The layer (held, not copied; the stand-in is dropped after tracing).
    """

    def __init__(self, layer: nn.TransformerEncoderLayer) -> None:
        """Hold the layer."""
        super().__init__()
        self.layer = layer

    def forward(self, src: torch.Tensor) -> torch.Tensor:
        """Replay the layer's module-by-module path (without masks: they carry no features)."""
        layer = self.layer
        x = src
        if layer.norm_first:
            x = x + layer._sa_block(layer.norm1(x), None, None, is_causal=False)
            return x + layer._ff_block(layer.norm2(x))
        x = layer.norm1(x + layer._sa_block(x, None, None, is_causal=False))
        return layer.norm2(x + layer._ff_block(x))


class _EncoderFlow(nn.Module):
    """The data flow of ``nn.TransformerEncoder`` (its layers in turn, then its norm).

    Its ``forward`` tests its input and masks to choose a nested-tensor fast path, which no
    symbolic trace can do; this replays the plain path.

    Args:
        encoder: The encoder (held, not copied; the stand-in is dropped after tracing).
    """

    def __init__(self, encoder: nn.TransformerEncoder) -> None:
        """Hold the encoder."""
        super().__init__()
        self.encoder = encoder

    def forward(self, src: torch.Tensor) -> torch.Tensor:
        """Run the layers, then the final norm if there is one."""
        output = src
        for layer in self.encoder.layers:
            output = layer(output)
        if self.encoder.norm is not None:
            output = self.encoder.norm(output)
        return output


class _AttentionFlow(nn.Module):
    """The data flow of ``nn.MultiheadAttention``: its inputs, then ``out_proj``.

    Its ``forward`` tests its inputs to choose a fast path, and it uses ``out_proj``'s weights
    directly rather than calling it, so ``out_proj`` is a node only when nodes come from module
    registration (no example input). There, it is the last step between the inputs and the
    output, which is what this says.

    Args:
        attention: The attention module (held, not copied; dropped after tracing).
    """

    def __init__(self, attention: nn.MultiheadAttention) -> None:
        """Hold the attention module."""
        super().__init__()
        self.attention = attention

    def forward(self, src: torch.Tensor) -> torch.Tensor:
        """Project the inputs (``src`` stands for the query, key, value and masks together)."""
        return self.attention.out_proj(src)


def _stand_in(module: nn.Module) -> nn.Module | None:
    """A traceable stand-in for a torch layer whose ``forward`` cannot trace, if there is one.

    The exact type only: a subclass may override ``forward`` and must be traced as it is.
    """
    if type(module) is nn.TransformerEncoderLayer:
        return _EncoderLayerFlow(module)
    if type(module) is nn.TransformerEncoder:
        return _EncoderFlow(module)
    if type(module) is nn.MultiheadAttention:
        return _AttentionFlow(module)
    return None


class _DataFlow:
    """Collects the edges of a host's graph.

    Args:
        host: The host.
        nodes: The node modules, in execution order (a node's index is its position).
    """

    def __init__(self, host: nn.Module, nodes: Sequence[nn.Module]) -> None:
        """Index the nodes and find the modules that have nodes below them."""
        self.host = host
        self.nodes = list(nodes)
        self.edges: set[tuple[int, int]] = set()
        self._index = {module: i for i, module in enumerate(self.nodes)}
        self._paths = {module: path for path, module in host.named_modules()}
        self._below: dict[nn.Module, bool] = {}
        self._mark(host)
        self._partial = False

    def _mark(self, module: nn.Module) -> bool:
        """Record whether ``module`` has nodes strictly below it; return whether it or they do."""
        if module not in self._below:
            below = False
            for child in module.children():
                # No short-circuit: every child must be marked.
                below = self._mark(child) or below
            self._below[module] = below
        return self._below[module] or module in self._index

    def run(self) -> EdgeSource:
        """Trace the host and collect its edges.

        Returns:
            Where the edges came from.
        """
        try:
            stand_in = _stand_in(self.host)
            root = self.host if stand_in is None else stand_in
            concrete = _defaults(self.host) if stand_in is None else None
            with _restored(self.host):
                graph = _ShallowTracer().trace(root, concrete_args=concrete)
        except UNTRACEABLE as error:
            LOGGER.debug(
                "model graph: %s does not trace (%s: %s); edges follow execution order",
                type(self.host).__name__,
                type(error).__name__,
                error,
            )
            self._chain(self.host, _NONE)
            return EdgeSource.EXECUTION_ORDER
        self._walk(root, graph, {})
        return EdgeSource.MIXED if self._partial else EdgeSource.DATAFLOW

    def _walk(self, root: nn.Module, graph: fx.Graph, inputs: Mapping[str, Sources]) -> Sources:
        """Follow values through one traced ``forward``, adding edges at every node it calls.

        Args:
            root: The module traced (call targets are relative to it).
            graph: Its trace.
            inputs: The sources of each placeholder, by target name (absent: none).

        Returns:
            The sources of its output.
        """
        sources: dict[fx.Node, Sources] = {}
        output = _NONE
        for node in graph.nodes:
            upstream = _union(sources[n] for n in node.all_input_nodes)
            if node.op == "placeholder":
                sources[node] = inputs.get(str(node.target), _NONE)
            elif node.op == "get_attr":
                # A parameter or buffer: state of the host, not data from a layer.
                sources[node] = _NONE
            elif node.op == "call_module":
                module = root.get_submodule(str(node.target))
                sources[node] = self._call(module, node, sources)
            elif node.op == "output":
                output = upstream
            else:
                # call_function / call_method: functional ops pass their inputs' sources on.
                sources[node] = upstream
        return output

    def _call(
        self, module: nn.Module, call: fx.Node, sources: Mapping[fx.Node, Sources]
    ) -> Sources:
        """Handle one module call: enter it if it has nodes below, join it if it is a node.

        Returns:
            The sources of the call's result.
        """
        if self._below.get(module, False):
            produced = self._enter(module, call, sources)
        else:
            produced = _union(sources[n] for n in call.all_input_nodes)
        index = self._index.get(module)
        if index is None:
            return produced
        self.edges.update((source, index) for source in produced)
        return frozenset({index})

    def _enter(
        self, module: nn.Module, call: fx.Node, sources: Mapping[fx.Node, Sources]
    ) -> Sources:
        """Trace a called module with nodes below it and splice its flow in.

        Returns:
            The sources of its output: the nodes inside that produce it.
        """
        upstream = _union(sources[n] for n in call.all_input_nodes)
        try:
            root, concrete, inputs = _entry(module, call, sources)
            with _restored(module):
                graph = _ShallowTracer().trace(root, concrete_args=concrete or None)
        except UNTRACEABLE as error:
            LOGGER.debug(
                "model graph: %s (%s) does not trace (%s: %s); the nodes inside it follow "
                "execution order",
                self._paths.get(module, "?"),
                type(module).__name__,
                type(error).__name__,
                error,
            )
            self._partial = True
            return self._chain(module, upstream)
        return self._walk(root, graph, inputs)

    def _chain(self, module: nn.Module, upstream: Sources) -> Sources:
        """Chain the nodes strictly below ``module`` in execution order, fed by ``upstream``.

        Returns:
            The last of them (``upstream`` when there is none).
        """
        inside = set(module.modules()) - {module}
        produced = upstream
        for index, node in enumerate(self.nodes):
            if node in inside:
                self.edges.update((source, index) for source in produced)
                produced = frozenset({index})
        return produced


def _entry(
    module: nn.Module, call: fx.Node, sources: Mapping[fx.Node, Sources]
) -> tuple[nn.Module, dict[str, object], dict[str, Sources]]:
    """Say how to trace a called module as its caller called it.

    Arguments the call passed as constants (``is_causal=True``) and parameters it left to their
    defaults are given to the trace as concrete values, so ``if mask is not None`` takes the
    branch the real call takes; arguments carrying values stay placeholders.

    Returns:
        The module to trace (a traceable stand-in for some torch layers), its concrete
        arguments, and the sources of each placeholder by name.

    Raises:
        TypeError: When the call does not fit the module's signature.
    """
    stand_in = _stand_in(module)
    if stand_in is not None:
        # Masks shape the attention, so whatever produced one feeds the output as well.
        return stand_in, {}, {"src": _union(sources[n] for n in call.all_input_nodes)}
    signature = inspect.signature(module.forward)
    bound = signature.bind(*call.args, **call.kwargs).arguments
    concrete: dict[str, object] = {}
    inputs: dict[str, Sources] = {}
    for name, parameter in signature.parameters.items():
        variadic = parameter.kind in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD)
        if name in bound:
            carried = list(_fx_nodes(bound[name]))
            if carried:
                # FX names the placeholder of `*args` "*args", and of `**kwargs` "**kwargs".
                star = {parameter.VAR_POSITIONAL: "*", parameter.VAR_KEYWORD: "**"}
                inputs[star.get(parameter.kind, "") + name] = _union(sources[n] for n in carried)
            elif not variadic:
                concrete[name] = bound[name]
        elif parameter.default is not parameter.empty:
            concrete[name] = parameter.default
    return module, concrete, inputs


def _defaults(module: nn.Module) -> dict[str, object] | None:
    """The host's parameters with defaults, as concrete values (a run calls ``host(x)``)."""
    concrete = {
        name: parameter.default
        for name, parameter in inspect.signature(module.forward).parameters.items()
        if parameter.default is not parameter.empty
    }
    return concrete or None


def _fx_nodes(value: object) -> Iterator[fx.Node]:
    """Yield the FX nodes inside an argument (nested in tuples, lists, dicts and slices)."""
    if isinstance(value, fx.Node):
        yield value
    elif isinstance(value, (tuple, list)):
        for item in value:
            yield from _fx_nodes(item)
    elif isinstance(value, dict):
        for item in value.values():
            yield from _fx_nodes(item)
    elif isinstance(value, slice):
        for item in (value.start, value.stop, value.step):
            yield from _fx_nodes(item)


def _union(groups: Iterable[Sources]) -> Sources:
    """Merge sources."""
    merged: set[int] = set()
    for group in groups:
        merged |= group
    return frozenset(merged)


@contextmanager
def _restored(module: nn.Module) -> Iterator[None]:
    """Undo attribute writes a traced ``forward`` makes on its module (``self.cache = x``).

    A trace runs the module's own Python code on proxies, and that code may store them; the
    host must come out exactly as it went in. Submodules are not run (they are leaves).
    """
    state = vars(module)
    registries = ("_parameters", "_buffers", "_modules")
    saved = dict(state)
    saved_registries = {name: dict(state[name]) for name in registries if name in state}
    try:
        yield
    finally:
        for name, entries in saved_registries.items():
            _restore(saved[name], entries)
        _restore(state, saved)


def _restore(current: dict[str, Any], saved: Mapping[str, Any]) -> None:
    """Make ``current`` hold exactly ``saved`` again, touching only entries that changed."""
    for key in [key for key in current if key not in saved]:
        del current[key]
    for key, value in saved.items():
        if current.get(key, _MISSING) is not value:
            current[key] = value
