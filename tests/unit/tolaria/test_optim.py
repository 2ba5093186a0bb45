"""Optimizers per family, and the seed param groups that join and leave them."""

import pytest
import torch
from torch import nn

from esper.tolaria.optim import (
    SLOT_KEY,
    add_seed_group,
    build_optimizer,
    remove_seed_group,
    seed_group_slots,
)
from tests.unit.tolaria.support import schedule


def host() -> nn.Linear:
    torch.manual_seed(0)
    return nn.Linear(4, 3)


def take_step(parameters: list[nn.Parameter], optimizer: torch.optim.Optimizer) -> None:
    optimizer.zero_grad()
    sum(p.square().sum() for p in parameters).backward()
    optimizer.step()


@pytest.mark.parametrize(
    ("family", "kind"),
    [("sgd", torch.optim.SGD), ("adam", torch.optim.Adam), ("adamw", torch.optim.AdamW)],
)
def test_build_optimizer_per_family(family: str, kind: type[torch.optim.Optimizer]) -> None:
    model = host()
    optimizer = build_optimizer(
        model.parameters(), schedule(optimizer=family, learning_rate=0.03, weight_decay=0.01)
    )
    assert type(optimizer) is kind
    [group] = optimizer.param_groups
    assert group["params"] == list(model.parameters())
    assert group["lr"] == 0.03
    assert group["weight_decay"] == 0.01
    assert SLOT_KEY not in group
    if family == "sgd":
        assert group["momentum"] == 0.9


def test_add_seed_group_tags_the_slot_and_uses_the_defaults() -> None:
    optimizer = build_optimizer(host().parameters(), schedule(learning_rate=0.02))
    seed = nn.Linear(3, 3)
    add_seed_group(optimizer, "layer1", list(seed.parameters()))
    add_seed_group(optimizer, "layer2", list(nn.Linear(3, 3).parameters()))
    assert seed_group_slots(optimizer) == ["layer1", "layer2"]
    group = optimizer.param_groups[1]
    assert group[SLOT_KEY] == "layer1"
    assert group["params"] == list(seed.parameters())
    assert group["lr"] == 0.02
    # The tag travels in the optimizer's state dict (a checkpoint knows which group is which).
    saved = optimizer.state_dict()["param_groups"]
    assert [g.get(SLOT_KEY) for g in saved] == [None, "layer1", "layer2"]


def test_seed_group_slots_of_a_host_only_optimizer_is_empty() -> None:
    assert seed_group_slots(build_optimizer(host().parameters(), schedule())) == []


def test_a_slot_has_one_group_at_most() -> None:
    optimizer = build_optimizer(host().parameters(), schedule())
    add_seed_group(optimizer, "layer1", list(nn.Linear(3, 3).parameters()))
    with pytest.raises(ValueError, match="slot 'layer1' already has a param group"):
        add_seed_group(optimizer, "layer1", list(nn.Linear(3, 3).parameters()))
    assert seed_group_slots(optimizer) == ["layer1"]


@pytest.mark.parametrize("family", ["sgd", "adam", "adamw"])
def test_remove_seed_group_drops_its_parameters_and_their_state(family: str) -> None:
    model = host()
    optimizer = build_optimizer(model.parameters(), schedule(optimizer=family))
    first, second = nn.Linear(3, 3), nn.Linear(3, 3)
    add_seed_group(optimizer, "layer1", list(first.parameters()))
    add_seed_group(optimizer, "layer2", list(second.parameters()))
    everything = [*model.parameters(), *first.parameters(), *second.parameters()]
    take_step(everything, optimizer)
    assert all(p in optimizer.state for p in everything)

    remove_seed_group(optimizer, "layer1")

    assert seed_group_slots(optimizer) == ["layer2"]
    assert not any(p in optimizer.state for p in first.parameters())
    assert all(p in optimizer.state for p in [*model.parameters(), *second.parameters()])
    # The optimizer still steps, and its state dict has only the remaining groups' state.
    take_step([*model.parameters(), *second.parameters()], optimizer)
    state = optimizer.state_dict()
    assert len(state["param_groups"]) == 2
    assert len(state["state"]) == 4


def test_remove_unknown_slot_raises() -> None:
    optimizer = build_optimizer(host().parameters(), schedule())
    add_seed_group(optimizer, "layer1", list(nn.Linear(3, 3).parameters()))
    with pytest.raises(KeyError, match="slot 'layer9' has no param group"):
        remove_seed_group(optimizer, "layer9")
    assert seed_group_slots(optimizer) == ["layer1"]


def test_a_removed_slot_can_get_a_new_group() -> None:
    optimizer = build_optimizer(host().parameters(), schedule())
    add_seed_group(optimizer, "layer1", list(nn.Linear(3, 3).parameters()))
    remove_seed_group(optimizer, "layer1")
    replacement = nn.Linear(3, 3)
    add_seed_group(optimizer, "layer1", list(replacement.parameters()))
    assert optimizer.param_groups[-1]["params"] == list(replacement.parameters())
