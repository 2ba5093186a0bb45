"""Tamiyo's GNN policy network: a GATv2 encoder over the model graph and masked action heads.

The network scores one :class:`~esper.tamiyo.encoding.PolicyInput` (one decision boundary):

- **Encoder.** An MLP embeds each node's features; ``layers`` GATv2 layers then pass messages
  over the data-flow graph made undirected (a slot's seed changes both what reaches the layers
  after it and the gradient reaching the layers before it), each with a residual connection and
  a LayerNorm.
- **Graph embedding.** The mean and the max of the node embeddings over the nodes, concatenated
  with an MLP's embedding of the run's ``graph_features``.
- **Heads.** ``kind`` (4 logits in :class:`~esper.tamiyo.encoding.ActionKind` order), ``germinate``
  (one score per candidate), ``cull`` and ``fossilize`` (one logit per slot) and a scalar
  ``value`` for PPO's critic. Every illegal entry is exactly ``-inf``.

**Location and blueprint are scored jointly.** A germination candidate is a (slot, kernel) pair,
so the germinate head scores each pair from the slot's node embedding, the kernel's embedding
(an MLP over its ``candidate_features``) and the graph embedding: a kernel can be good in one
slot and poor in another, which separate location and blueprint heads could not express. The
factorisation *location, then blueprint* is still exact: ``location_logits[s]`` is the
logsumexp of slot ``s``'s legal candidate scores, so ``softmax(location_logits)`` is the
marginal ``p(slot)`` of the joint distribution and ``germinate_logits[k] -
location_logits[slot(k)]`` is ``log p(kernel | slot)`` (:func:`location_log_probs`,
:func:`kernel_log_probs_given_slot`). The joint form is what is sampled; the factors are there
for diagnostics and for a policy that wants to choose the location first.

**Static shapes.** For a fixed ``(N, E, S, K)`` the forward pass has no data-dependent shape, so
``torch.compile(net, fullgraph=True)`` traces it as one graph: masks are applied with
``masked_fill``/``torch.where`` (never by indexing with a boolean mask), pooling reduces over
the node dimension of the single graph (no scatter with an inferred size), gathers use
``index_select`` and per-slot reductions go through a dense ``[S, K]`` membership matrix.
torch_geometric's ``GATv2Conv(add_self_loops=True)`` calls ``remove_self_loops``, which indexes
the edges with a boolean mask and so gives the edge count an unbacked (data-dependent) size
under dynamo; the layers here are built with ``add_self_loops=False`` and
:func:`message_edges` appends the reverse edges and one self loop per node itself, which keeps
``E' = 2E + N``. The cost: a self loop already in ``edge_index`` would be counted twice; a
ModelGraph's data-flow edges form a DAG, so it has none.

The action distribution (:class:`Action`, :func:`sample`, :func:`greedy`, :func:`log_prob`,
:func:`entropy`) is hierarchical: ``log p(action) = log p(kind) + log p(target | kind)``, each
factor a softmax over the legal entries of its head.
"""

import dataclasses
import pickle
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import torch
import torch.nn.functional as F  # noqa: N812 (the conventional name)
from torch import Tensor, nn
from torch_geometric.nn import GATv2Conv

from esper.tamiyo.encoding import (
    GRAPH_FEATURES,
    KERNEL_FEATURES,
    NODE_FEATURES,
    ActionKind,
    PolicyInput,
)

_NEG_INF = float("-inf")
_CHECKPOINT_KEYS = frozenset({"config", "sizes", "state_dict"})
_POLICY_HEAD_GAIN = 0.01
"""Init gain of the policy heads' last layers: near-uniform over legal actions at the start
(PPO's usual choice), yet not zero, so gradients reach the layers below from the first step."""


@dataclass(frozen=True)
class TamiyoNetConfig:
    """Sizes of :class:`TamiyoNet`.

    Attributes:
        hidden: Width of node, kernel and head embeddings; a multiple of ``heads``.
        layers: GATv2 message-passing layers.
        heads: Attention heads per layer (their outputs are concatenated to ``hidden``).
        dropout: Dropout on attention weights and layer updates (training mode only).
    """

    hidden: int = 64
    layers: int = 2
    heads: int = 4
    dropout: float = 0.0

    def __post_init__(self) -> None:
        """Reject sizes the network cannot be built with."""
        if self.hidden < 1 or self.layers < 1 or self.heads < 1:
            raise ValueError(
                f"hidden, layers and heads must be >= 1 (got {self.hidden}, {self.layers}, "
                f"{self.heads})"
            )
        if self.hidden % self.heads:
            raise ValueError(f"hidden ({self.hidden}) must be a multiple of heads ({self.heads})")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1) (got {self.dropout})")


@dataclass(frozen=True)
class PolicyOutput:
    """The network's scores for one observation; illegal entries are exactly ``-inf``.

    Attributes:
        kind_logits: ``[4]``, in :class:`ActionKind` order.
        germinate_logits: ``[K]``: one score per candidate (joint over slot and kernel).
        location_logits: ``[S]``: logsumexp of each slot's legal candidate scores.
        cull_logits: ``[S]``.
        fossilize_logits: ``[S]``.
        value: ``[]``: the state value.
        candidate_slot: ``[K]``: each candidate's slot index (the input's), kept so the
            distribution helpers can factorise ``germinate_logits`` without the input.
    """

    kind_logits: Tensor
    germinate_logits: Tensor
    location_logits: Tensor
    cull_logits: Tensor
    fossilize_logits: Tensor
    value: Tensor
    candidate_slot: Tensor


def _mlp(
    in_features: int, hidden: int, out_features: int, *, out_bias: bool = True
) -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(in_features, hidden), nn.GELU(), nn.Linear(hidden, out_features, bias=out_bias)
    )


def _policy_head(
    in_features: int, hidden: int, out_features: int, *, out_bias: bool = True
) -> nn.Sequential:
    head = _mlp(in_features, hidden, out_features, out_bias=out_bias)
    last = cast(nn.Linear, head[-1])
    nn.init.orthogonal_(last.weight, gain=_POLICY_HEAD_GAIN)
    if last.bias is not None:
        nn.init.zeros_(last.bias)
    return head


def message_edges(edge_index: Tensor, num_nodes: int) -> Tensor:
    """Return the edges messages travel along: both directions of each edge and self loops.

    Built here rather than by ``GATv2Conv(add_self_loops=True)``, whose ``remove_self_loops``
    gives the edge count a data-dependent size (see the module docstring).

    Args:
        edge_index: ``[2, E]`` data-flow edges (no self loops).
        num_nodes: ``N``.

    Returns:
        ``[2, 2E + N]``: the edges, their reverses, then ``(i, i)`` for every node.
    """
    loops = torch.arange(num_nodes, dtype=edge_index.dtype, device=edge_index.device)
    return torch.cat([edge_index, edge_index.flip(0), loops.expand(2, num_nodes)], dim=1)


def _location_logits(
    scores: Tensor, candidate_slot: Tensor, legal: Tensor, num_slots: int
) -> Tensor:
    """Logsumexp of each slot's legal candidate scores; ``-inf`` for a slot with none."""
    slots = torch.arange(num_slots, dtype=candidate_slot.dtype, device=candidate_slot.device)
    member = (candidate_slot.unsqueeze(0) == slots.unsqueeze(1)) & legal.unsqueeze(0)  # [S, K]
    has_any = member.any(dim=1)
    per_slot = torch.where(member, scores.unsqueeze(0), _NEG_INF)
    # A row of only -inf would give logsumexp a NaN gradient (exp(-inf - -inf)) that leaks
    # through the final where; such rows are computed on zeros and replaced afterwards.
    per_slot = torch.where(has_any.unsqueeze(1), per_slot, 0.0)
    return torch.where(has_any, torch.logsumexp(per_slot, dim=1), _NEG_INF)


class TamiyoNet(nn.Module):
    """The GNN policy and value network (see the module docstring).

    Args:
        config: Its sizes; the default when omitted.
    """

    def __init__(self, config: TamiyoNetConfig | None = None) -> None:
        """Build the encoder and heads."""
        super().__init__()
        self.config = config or TamiyoNetConfig()
        hidden = self.config.hidden
        graph_dim = 3 * hidden  # mean pool, max pool, graph features
        self.node_encoder = _mlp(NODE_FEATURES, hidden, hidden)
        self.convs = nn.ModuleList(
            GATv2Conv(
                hidden,
                hidden // self.config.heads,
                heads=self.config.heads,
                dropout=self.config.dropout,
                add_self_loops=False,  # message_edges adds them with a static count
            )
            for _ in range(self.config.layers)
        )
        self.norms = nn.ModuleList(nn.LayerNorm(hidden) for _ in range(self.config.layers))
        self.dropout = nn.Dropout(self.config.dropout)
        self.graph_encoder = _mlp(GRAPH_FEATURES, hidden, hidden)
        self.kernel_encoder = _mlp(KERNEL_FEATURES, hidden, hidden)
        self.kind_head = _policy_head(graph_dim, hidden, len(ActionKind))
        # A head scoring the rows of one softmax (candidates, slots) needs no output bias: a
        # shift shared by every row cancels in the softmax, so it could never learn.
        self.germinate_head = _policy_head(2 * hidden + graph_dim, hidden, 1, out_bias=False)
        self.cull_head = _policy_head(hidden + graph_dim, hidden, 1, out_bias=False)
        self.fossilize_head = _policy_head(hidden + graph_dim, hidden, 1, out_bias=False)
        self.value_head = _mlp(graph_dim, hidden, 1)

    def forward(self, inp: PolicyInput) -> PolicyOutput:
        """Score one observation.

        Args:
            inp: The observation as tensors (at least one node).

        Returns:
            Masked logits for every head and the state value.
        """
        nodes = self.node_encoder(inp.node_features)
        edges = message_edges(inp.edge_index, nodes.size(0))
        for conv, norm in zip(self.convs, self.norms, strict=True):
            update = cast(Tensor, conv(nodes, edges))
            nodes = norm(nodes + self.dropout(F.gelu(update)))
        graph = torch.cat(
            [nodes.mean(dim=0), nodes.amax(dim=0), self.graph_encoder(inp.graph_features)]
        )

        slots = nodes.index_select(0, inp.slot_nodes)  # [S, H]
        num_slots = slots.size(0)
        per_slot = torch.cat([slots, graph.expand(num_slots, -1)], dim=1)
        cull = self.cull_head(per_slot).squeeze(-1)
        fossilize = self.fossilize_head(per_slot).squeeze(-1)

        kernels = self.kernel_encoder(inp.candidate_features)  # [K, H]
        num_candidates = kernels.size(0)
        candidates = torch.cat(
            [
                slots.index_select(0, inp.candidate_slot),
                kernels,
                graph.expand(num_candidates, -1),
            ],
            dim=1,
        )
        germinate = self.germinate_head(candidates).squeeze(-1)

        return PolicyOutput(
            kind_logits=self.kind_head(graph).masked_fill(~inp.action_mask(), _NEG_INF),
            germinate_logits=germinate.masked_fill(~inp.germinate_mask, _NEG_INF),
            location_logits=_location_logits(
                germinate, inp.candidate_slot, inp.germinate_mask, num_slots
            ),
            cull_logits=cull.masked_fill(~inp.cull_mask, _NEG_INF),
            fossilize_logits=fossilize.masked_fill(~inp.fossilize_mask, _NEG_INF),
            value=self.value_head(graph).squeeze(-1),
            candidate_slot=inp.candidate_slot,
        )


# --- the action distribution ---------------------------------------------------------------


@dataclass(frozen=True)
class Action:
    """One action.

    Attributes:
        kind: What to do.
        target: The candidate index for GERMINATE, the slot index for CULL and FOSSILIZE, -1
            for WAIT (indices into the :class:`PolicyInput`'s rows).
    """

    kind: ActionKind
    target: int

    def __post_init__(self) -> None:
        """Reject a target that does not fit the kind."""
        if (self.kind is ActionKind.WAIT) != (self.target == -1) or self.target < -1:
            raise ValueError(
                f"{self.kind.name} takes "
                f"{'target -1' if self.kind is ActionKind.WAIT else 'a target >= 0'}, "
                f"not {self.target}"
            )


def legal_log_softmax(logits: Tensor) -> Tensor:
    """Return log-probabilities of the distribution renormalised over the legal entries.

    Args:
        logits: ``[n]``; ``-inf`` marks an illegal entry.

    Returns:
        ``[n]``: ``-inf`` at illegal entries, and everywhere when none is legal (instead of the
        NaNs ``log_softmax`` gives then); gradients stay finite in both cases.
    """
    legal = ~torch.isneginf(logits)
    # The lowest finite float instead of -inf: exp() of it minus any legal logit is exactly 0,
    # so the legal entries renormalise as they should, while a head with nothing legal gives a
    # finite (uniform) log_softmax, not -inf - -inf; the where then restores the -inf.
    floored = torch.where(legal, logits, torch.finfo(logits.dtype).min)
    return torch.where(legal, torch.log_softmax(floored, dim=-1), _NEG_INF)


def _entropy(logits: Tensor) -> Tensor:
    log_p = legal_log_softmax(logits)
    legal = ~torch.isneginf(log_p)
    safe = torch.where(legal, log_p, 0.0)
    return -(torch.exp(safe) * safe).masked_fill(~legal, 0.0).sum(dim=-1)


def _target_logits(out: PolicyOutput, kind: ActionKind) -> Tensor:
    if kind is ActionKind.GERMINATE:
        return out.germinate_logits
    if kind is ActionKind.CULL:
        return out.cull_logits
    if kind is ActionKind.FOSSILIZE:
        return out.fossilize_logits
    raise ValueError("WAIT has no target")


def _draw(logits: Tensor, generator: torch.Generator | None, head: str) -> int:
    probs = legal_log_softmax(logits.detach()).exp()
    if not bool(probs.sum() > 0):
        raise ValueError(f"nothing is legal in the {head} head")
    # multinomial never draws a zero-probability entry, so an illegal action is never drawn.
    return int(torch.multinomial(probs, 1, generator=generator).item())


def _pick(logits: Tensor, head: str) -> int:
    if bool(torch.isneginf(logits).all()):
        raise ValueError(f"nothing is legal in the {head} head")
    return int(logits.detach().argmax().item())


def sample(out: PolicyOutput, generator: torch.Generator | None = None) -> Action:
    """Draw an action: a kind from the kind head, then a target from that kind's head.

    Args:
        out: The network's output for one observation.
        generator: The random source (seed it for reproducible rollouts).

    Returns:
        A legal action.
    """
    kind = ActionKind(_draw(out.kind_logits, generator, "kind"))
    if kind is ActionKind.WAIT:
        return Action(kind, -1)
    return Action(kind, _draw(_target_logits(out, kind), generator, kind.name.lower()))


def greedy(out: PolicyOutput) -> Action:
    """Return the most probable kind and, for it, the most probable target.

    This is the mode of each factor in turn, not necessarily the most probable joint action.

    Args:
        out: The network's output for one observation.

    Returns:
        A legal action.
    """
    kind = ActionKind(_pick(out.kind_logits, "kind"))
    if kind is ActionKind.WAIT:
        return Action(kind, -1)
    return Action(kind, _pick(_target_logits(out, kind), kind.name.lower()))


def log_prob(out: PolicyOutput, action: Action) -> Tensor:
    """Return ``log p(kind) + log p(target | kind)``, differentiable in the network's outputs.

    Args:
        out: The network's output for one observation.
        action: An action on that observation.

    Returns:
        ``[]``; ``-inf`` for an illegal action.

    Raises:
        ValueError: The target is out of range for its head.
    """
    kind_log_p = legal_log_softmax(out.kind_logits)[int(action.kind)]
    if action.kind is ActionKind.WAIT:
        return kind_log_p
    logits = _target_logits(out, action.kind)
    if action.target >= logits.size(0):
        raise ValueError(
            f"{action.kind.name} target {action.target} is out of range ({logits.size(0)} rows)"
        )
    return kind_log_p + legal_log_softmax(logits)[action.target]


def entropy(out: PolicyOutput) -> dict[str, Tensor]:
    """Return each head's entropy over its legal entries (nats; 0 when at most one is legal).

    Args:
        out: The network's output for one observation.

    Returns:
        ``kind``, ``germinate`` (joint over candidates), ``location`` (its slot marginal),
        ``cull`` and ``fossilize``: ``[]`` tensors, differentiable; a head collapsing to one
        choice shows as its entropy falling to 0.
    """
    return {
        "kind": _entropy(out.kind_logits),
        "germinate": _entropy(out.germinate_logits),
        "location": _entropy(out.location_logits),
        "cull": _entropy(out.cull_logits),
        "fossilize": _entropy(out.fossilize_logits),
    }


def location_log_probs(out: PolicyOutput) -> Tensor:
    """Return ``log p(slot)`` for a germination: the slot marginal of the germinate head.

    Args:
        out: The network's output for one observation.

    Returns:
        ``[S]``; ``-inf`` for a slot without a legal candidate.
    """
    return legal_log_softmax(out.location_logits)


def kernel_log_probs_given_slot(out: PolicyOutput) -> Tensor:
    """Return ``log p(kernel | slot)`` for each candidate, normalised within its slot.

    Args:
        out: The network's output for one observation.

    Returns:
        ``[K]``; ``-inf`` for an illegal candidate. ``location_log_probs(out)[slot(k)]`` plus
        this is the germinate head's ``log p(k)``.
    """
    germinate = out.germinate_logits
    legal = ~torch.isneginf(germinate)
    slot_total = out.location_logits.index_select(0, out.candidate_slot)
    # A legal candidate's slot has a finite total; the where keeps -inf - -inf out elsewhere.
    return torch.where(
        legal,
        torch.where(legal, germinate, 0.0) - torch.where(legal, slot_total, 0.0),
        _NEG_INF,
    )


# --- checkpoints -----------------------------------------------------------------------------


def feature_sizes() -> dict[str, int]:
    """Return the feature sizes a checkpoint is written for (those of encoding.py)."""
    return {
        "NODE_FEATURES": NODE_FEATURES,
        "GRAPH_FEATURES": GRAPH_FEATURES,
        "KERNEL_FEATURES": KERNEL_FEATURES,
    }


def save(net: TamiyoNet, path: str | Path) -> None:
    """Write a checkpoint: the config, the feature sizes and the weights (no pickled code).

    Args:
        net: The network.
        path: Where to write it.
    """
    torch.save(
        {
            "config": dataclasses.asdict(net.config),
            "sizes": feature_sizes(),
            "state_dict": net.state_dict(),
        },
        path,
    )


def load(path: str | Path, *, map_location: str | torch.device = "cpu") -> TamiyoNet:
    """Read a checkpoint written by :func:`save` (with ``weights_only=True``: no code runs).

    Args:
        path: The checkpoint.
        map_location: Where to put the weights.

    Returns:
        The network, in training mode as ``nn.Module`` starts.

    Raises:
        ValueError: The file is not such a checkpoint, was written for other feature sizes than
            encoding.py's, or its weights do not match its config's network.
    """
    try:
        raw = torch.load(path, map_location=map_location, weights_only=True)
    except (pickle.UnpicklingError, KeyError, EOFError, RuntimeError) as error:
        # What torch.load raises for a file that is not a weights-only archive: a pickle it
        # refuses, text (KeyError from its legacy reader), an empty file, a damaged zip.
        raise ValueError(f"{path} is not a Tamiyo checkpoint ({error!r})") from error
    if not isinstance(raw, dict) or set(raw) != _CHECKPOINT_KEYS:
        raise ValueError(
            f"{path} is not a Tamiyo checkpoint (expected keys {sorted(_CHECKPOINT_KEYS)})"
        )
    checkpoint = cast(Mapping[str, object], raw)
    sizes = checkpoint["sizes"]
    if sizes != feature_sizes():
        raise ValueError(
            f"{path} was written for feature sizes {sizes}, but esper.tamiyo.encoding defines "
            f"{feature_sizes()}; the network cannot read these observations"
        )
    try:
        config = TamiyoNetConfig(**cast(Mapping[str, int | float], checkpoint["config"]))
    except TypeError as error:
        raise ValueError(f"{path} has an invalid config: {error}") from error
    net = TamiyoNet(config)
    state = cast(Mapping[str, Tensor], checkpoint["state_dict"])
    expected = set(net.state_dict())
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or unexpected:
        raise ValueError(
            f"{path}'s weights do not match its config's network: missing {missing}, "
            f"unexpected {unexpected}"
        )
    try:
        net.load_state_dict(state)
    except RuntimeError as error:  # a tensor of the wrong shape
        raise ValueError(f"{path}'s weights do not match its config's network: {error}") from error
    return net
