"""Optimizers and the seed parameter groups that join and leave them.

A seed's parameters form their own param group, tagged with the slot id under
:data:`SLOT_KEY`, added at germination and removed (with their optimizer state) at a cull. The
tag travels in ``optimizer.state_dict()``, so a checkpoint records which group is which slot.
"""

from collections.abc import Iterable

import torch
from torch import nn
from torch.optim import Optimizer

from esper.contracts.run import ScheduleSpec

SLOT_KEY = "esper_slot"
"""Param-group key naming the slot whose seed the group trains."""


def build_optimizer(parameters: Iterable[nn.Parameter], schedule: ScheduleSpec) -> Optimizer:
    """Create the run's optimizer over the host's parameters.

    Args:
        parameters: The host's parameters.
        schedule: Optimizer family, learning rate and weight decay.

    Returns:
        The optimizer (one param group: the host).
    """
    params = list(parameters)
    if schedule.optimizer == "sgd":
        return torch.optim.SGD(
            params, lr=schedule.learning_rate, momentum=0.9, weight_decay=schedule.weight_decay
        )
    if schedule.optimizer == "adam":
        return torch.optim.Adam(
            params, lr=schedule.learning_rate, weight_decay=schedule.weight_decay
        )
    return torch.optim.AdamW(params, lr=schedule.learning_rate, weight_decay=schedule.weight_decay)


def seed_group_slots(optimizer: Optimizer) -> list[str]:
    """Return the slot ids of the optimizer's seed groups, in group order.

    Args:
        optimizer: The optimizer.

    Returns:
        Slot ids.
    """
    return [group[SLOT_KEY] for group in optimizer.param_groups if SLOT_KEY in group]


def add_seed_group(optimizer: Optimizer, slot_id: str, parameters: list[nn.Parameter]) -> None:
    """Add a seed's parameters as a new group (hyperparameters from the optimizer's defaults).

    Args:
        optimizer: The optimizer.
        slot_id: The slot.
        parameters: The seed's parameters.

    Raises:
        ValueError: When the slot already has a group.
    """
    if slot_id in seed_group_slots(optimizer):
        raise ValueError(f"slot '{slot_id}' already has a param group")
    optimizer.add_param_group({"params": parameters, SLOT_KEY: slot_id})


def remove_seed_group(optimizer: Optimizer, slot_id: str) -> None:
    """Remove a slot's group and its parameters' optimizer state.

    Args:
        optimizer: The optimizer.
        slot_id: The slot.

    Raises:
        KeyError: When the slot has no group.
    """
    for index, group in enumerate(optimizer.param_groups):
        if group.get(SLOT_KEY) == slot_id:
            for parameter in group["params"]:
                optimizer.state.pop(parameter, None)
            del optimizer.param_groups[index]
            return
    raise KeyError(f"slot '{slot_id}' has no param group")
