"""Shared pieces of the Kasmina tests: a small host, and a grower that puts real seeds in slots.

Seeds are built from the built-in blueprint library (``build_module``), so every test runs real
torch modules; a grown seed is perturbed away from its zero-initialised output so that it really
changes the activation once blended in.
"""

import os
from collections.abc import Callable

import pytest
import torch
from torch import nn

from esper.blueprints.builder import build_module
from esper.blueprints.library import builtin
from esper.contracts.blueprint import Layout
from esper.contracts.seed import SeedStage
from esper.kasmina import SeedSlot

BLUEPRINT_FOR_LAYOUT = {
    Layout.FEATURES: "bottleneck-mlp",
    Layout.IMAGE: "squeeze-excite",
    Layout.SEQUENCE: "self-attention",
}
"""A built-in blueprint that fits each slot layout."""

LATER = [
    SeedStage.GERMINATED,
    SeedStage.TRAINING,
    SeedStage.BLENDING,
    SeedStage.PROBATION,
    SeedStage.FOSSILIZED,
]
"""The stages of a seed after germination, in lifecycle order."""

Grower = Callable[..., SeedSlot]


def kernel_id(number: int) -> str:
    """A well-formed kernel id, distinct per number."""
    return f"k-{number:024x}"


def perturb(module: nn.Module, seed: int, scale: float = 0.5) -> None:
    """Move every parameter of ``module`` away from its initialisation (deterministically)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.add_(scale * torch.randn(parameter.shape, generator=generator))


@pytest.fixture(autouse=True)
def _no_esper_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Settings come from each test alone, never from ESPER_* variables of the environment."""
    for name in list(os.environ):
        if name.startswith("ESPER_"):
            monkeypatch.delenv(name)


@pytest.fixture
def mlp() -> nn.Sequential:
    """A small MLP whose three Linear layers all output 16 features."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 16)
    )


@pytest.fixture
def grow() -> Grower:
    """Germinate a real seed in a slot and advance it to a stage.

    The returned function takes the slot and the stage, and optionally ``blueprint`` (a library
    name; by default one that fits the slot's layout), ``kernel`` (the number of its kernel id),
    ``perturbed`` (move the seed's weights off their function-preserving start) and ``alpha``
    (set once BLENDING).
    """

    def grow_seed(
        slot: SeedSlot,
        stage: SeedStage,
        *,
        blueprint: str | None = None,
        kernel: int = 1,
        perturbed: bool = True,
        alpha: float | None = None,
    ) -> SeedSlot:
        name = blueprint or BLUEPRINT_FOR_LAYOUT[slot.descriptor.layout]
        ir = builtin(name)
        bindings = slot.descriptor.bindings()
        seed = build_module(ir, bindings)
        if perturbed:
            perturb(seed, kernel)
        slot.germinate(
            seed, kernel_id=kernel_id(kernel), ir=ir, bindings=bindings, blueprint_name=name, step=1
        )
        for step, _ in enumerate(LATER[: LATER.index(stage)], start=2):
            slot.advance(step)
        assert slot.stage is stage
        if alpha is not None:
            slot.set_alpha(alpha)
        return slot

    return grow_seed
