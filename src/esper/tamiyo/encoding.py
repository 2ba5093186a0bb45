"""The GNN policy's view of an observation: tensors, action masks and their meaning.

:func:`esper.tamiyo.features.encode` turns an :class:`~esper.tamiyo.policy.Observation` into a
:class:`PolicyInput`; :mod:`esper.tamiyo.gnn` scores it. The sizes below are the contract
between the two (a checkpoint records them, and loading one with other sizes is refused).

Actions (one per decision boundary, like the heuristic's "at most one change at a time"):

- ``WAIT``: do nothing;
- ``GERMINATE``: grow candidate ``k`` in its slot (``candidate_slot[k]``); legal for candidates
  that fit the remaining budget, were not culled in that slot before, in a DORMANT slot, while
  fewer than ``max_seeds`` seeds are alive or fossilized;
- ``CULL``: remove slot ``s``'s seed; legal while it is GERMINATED, TRAINING, BLENDING or
  PROBATION;
- ``FOSSILIZE``: end slot ``s``'s probation early and keep the seed; legal in PROBATION.
"""

from dataclasses import dataclass
from enum import IntEnum

import torch

NODE_FEATURES = 32
"""Features per graph node (layer or slot-carrying module); see features.node_features."""
GRAPH_FEATURES = 12
"""Features of the whole run at the boundary (progress, losses, budget, seeds)."""
KERNEL_FEATURES = 24
"""Features per germination candidate (a ready kernel for one slot)."""


class ActionKind(IntEnum):
    """The kind of the one action taken at a decision boundary."""

    WAIT = 0
    GERMINATE = 1
    CULL = 2
    FOSSILIZE = 3


@dataclass(frozen=True)
class PolicyInput:
    """One observation as tensors (float32 features, int64 indices, bool masks).

    Attributes:
        node_features: ``[N, NODE_FEATURES]``: one row per ModelGraph node, in its order.
        edge_index: ``[2, E]``: data-flow edges (source row, target row), as torch_geometric
            expects; both directions are added by the network, not here.
        graph_features: ``[GRAPH_FEATURES]``.
        slot_nodes: ``[S]``: the node row carrying each slot, in ``slot_ids`` order.
        slot_ids: The slots, in the order of every per-slot tensor.
        candidate_features: ``[K, KERNEL_FEATURES]``: one row per (slot, ready kernel).
        candidate_slot: ``[K]``: index into ``slot_ids`` of each candidate's slot.
        candidate_kernel_ids: The kernel id of each candidate row.
        germinate_mask: ``[K]``: which candidates may germinate now.
        cull_mask: ``[S]``: which slots hold a seed that may be culled.
        fossilize_mask: ``[S]``: which slots hold a seed in PROBATION.
    """

    node_features: torch.Tensor
    edge_index: torch.Tensor
    graph_features: torch.Tensor
    slot_nodes: torch.Tensor
    slot_ids: tuple[str, ...]
    candidate_features: torch.Tensor
    candidate_slot: torch.Tensor
    candidate_kernel_ids: tuple[str, ...]
    germinate_mask: torch.Tensor
    cull_mask: torch.Tensor
    fossilize_mask: torch.Tensor

    def action_mask(self) -> torch.Tensor:
        """Return which action kinds are legal: ``[4]`` bool in :class:`ActionKind` order.

        Returns:
            WAIT is always legal; each other kind when any of its targets is.
        """
        return torch.stack(
            [
                torch.ones((), dtype=torch.bool),
                self.germinate_mask.any(),
                self.cull_mask.any(),
                self.fossilize_mask.any(),
            ]
        )
