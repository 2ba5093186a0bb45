"""A seed slot: the place after a host module where a seed can grow.

The slot runs as a forward hook on its host module and computes, by stage:

- DORMANT, GERMINATED: nothing (the hook returns the host's output untouched);
- TRAINING: ``h + (s - s.detach())`` with ``s = seed(h.detach())``, which is exactly ``h`` in the
  forward pass while the task loss's gradient still reaches the seed (straight-through at alpha 0);
  the host receives no gradient from the seed;
- BLENDING: ``h + alpha * seed(h)``, alpha a tensor buffer so compiled graphs never recompile as
  it ramps;
- PROBATION, FOSSILIZED: ``h + seed(h)``.

The lifecycle is the contract's transition table (:data:`esper.contracts.SEED_STAGES`); an
illegal move raises. The slot's stage, kernel and blueprint live in ``get_extra_state``, so a
state dict restores the grown morphology: loading one rebuilds the seed from its blueprint (no
pickled code) before its weights are copied in.
"""

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from esper.blueprints.builder import build_module
from esper.contracts.blueprint import BlueprintIR
from esper.contracts.lifecycle import IllegalTransitionError
from esper.contracts.seed import LIVE_STAGES, SeedStage, SeedState, SlotDescriptor
from esper.kasmina.telemetry import SlotStatistics

EXTRA_STATE_VERSION = 1

_NEXT_STAGE: dict[SeedStage, SeedStage] = {
    SeedStage.GERMINATED: SeedStage.TRAINING,
    SeedStage.TRAINING: SeedStage.BLENDING,
    SeedStage.BLENDING: SeedStage.PROBATION,
    SeedStage.PROBATION: SeedStage.FOSSILIZED,
}


@dataclass(frozen=True)
class StageChange:
    """A stage move of one slot, for events and reports.

    Attributes:
        slot_id: The slot.
        source: Stage before.
        target: Stage after.
        step: Training step.
        kernel_id: The seed's kernel.
    """

    slot_id: str
    source: SeedStage
    target: SeedStage
    step: int
    kernel_id: str | None


class SeedSlot(nn.Module):
    """One seed slot (see the module docstring).

    Args:
        descriptor: Where the slot sits and the shape it sees.
        device: Device of the host module it follows.
        dtype: Its floating dtype (the seed is cast to it); the default dtype when None.
    """

    def __init__(
        self,
        descriptor: SlotDescriptor,
        device: torch.device | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        """Create an empty (DORMANT) slot."""
        super().__init__()
        self.descriptor = descriptor
        self.register_buffer("alpha", torch.zeros((), device=device, dtype=dtype))
        self.register_module("seed", None)
        self.statistics = SlotStatistics().to(device)
        self._state = SeedState(slot_id=descriptor.slot_id)
        self._ir: BlueprintIR | None = None
        self._bindings: dict[str, int] = {}
        self._blueprint_name: str | None = None
        self._collecting = False
        self._disabled = False
        self.idle = True
        """True when the hook has nothing to do (dormant and not collecting): its fast path."""
        self.compute_key: tuple[SeedStage, str | None, bool] = (SeedStage.DORMANT, None, False)
        """What decides the slot's share of a step's FLOPs: stage, kernel and switch."""

    # Observation ------------------------------------------------------------------------------

    @property
    def slot_id(self) -> str:
        """The slot's id."""
        return self.descriptor.slot_id

    @property
    def state(self) -> SeedState:
        """The observable state."""
        return self._state

    @property
    def stage(self) -> SeedStage:
        """The lifecycle stage."""
        return self._state.stage

    @property
    def blueprint(self) -> BlueprintIR | None:
        """The blueprint of the seed in the slot, if any."""
        return self._ir

    @property
    def blueprint_name(self) -> str | None:
        """The name of that blueprint, if any."""
        return self._blueprint_name

    def seed_param_count(self) -> int:
        """Return the parameters of the seed (0 when empty)."""
        seed = self.seed
        return 0 if seed is None else sum(p.numel() for p in seed.parameters())

    def seed_parameters(self) -> list[nn.Parameter]:
        """Return the seed's parameters (none when empty)."""
        seed = self.seed
        return [] if seed is None else list(seed.parameters())

    @property
    def collecting(self) -> bool:
        """Whether the slot accumulates telemetry on each forward."""
        return self._collecting

    @collecting.setter
    def collecting(self, value: bool) -> None:
        self._collecting = value
        self._refresh_idle()

    @property
    def disabled(self) -> bool:
        """Whether the seed is bypassed (a counterfactual evaluation without it)."""
        return self._disabled

    @disabled.setter
    def disabled(self, value: bool) -> None:
        self._disabled = value
        self._refresh_idle()

    def _refresh_idle(self) -> None:
        # Called after every change of stage, seed or switch, so both flags stay current
        # without a per-step recomputation on the training path.
        self.idle = not self._collecting and (
            self._disabled or self._state.stage in (SeedStage.DORMANT, SeedStage.GERMINATED)
        )
        self.compute_key = (self._state.stage, self._state.kernel_id, self._disabled)

    # Lifecycle --------------------------------------------------------------------------------

    def germinate(
        self,
        seed: nn.Module,
        *,
        kernel_id: str,
        ir: BlueprintIR,
        bindings: dict[str, int],
        blueprint_name: str,
        step: int,
    ) -> StageChange:
        """Put a seed in the empty slot; the host's function is unchanged.

        Args:
            seed: The seed module (the slot takes it over: pass a copy when sharing).
            kernel_id: Its kernel.
            ir: Its blueprint.
            bindings: The symbol bindings it was built for.
            blueprint_name: The blueprint's name.
            step: The training step.

        Returns:
            The stage change.

        Raises:
            IllegalTransitionError: When the slot is not DORMANT.
            ValueError: When the bindings do not match the slot's shape.
        """
        if ir.input.layout is not self.descriptor.layout:
            raise ValueError(
                f"slot '{self.slot_id}' carries {self.descriptor.layout.value}; kernel "
                f"{kernel_id} takes {ir.input.layout.value}"
            )
        expected = self.descriptor.bindings()
        mismatched = {k: v for k, v in bindings.items() if expected.get(k) != v}
        if mismatched:
            raise ValueError(
                f"slot '{self.slot_id}' has sizes {expected}; kernel {kernel_id} was built for "
                f"{bindings}"
            )
        source = self._state.stage
        self._state = self._state.moved_to(
            SeedStage.GERMINATED,
            step,
            kernel_id=kernel_id,
            blueprint_hash=ir.canonical_hash(),
            germinated_step=step,
            alpha=0.0,
            contribution=None,
        )
        self.seed = seed.to(device=self.alpha.device, dtype=self.alpha.dtype)
        self.seed.train(self.training)
        self._ir = ir
        self._bindings = dict(bindings)
        self._blueprint_name = blueprint_name
        with torch.no_grad():
            self.alpha.zero_()
        self._refresh_idle()
        return StageChange(self.slot_id, source, SeedStage.GERMINATED, step, kernel_id)

    def advance(self, step: int) -> StageChange:
        """Move a live seed to the next stage of its lifecycle.

        Entering PROBATION sets alpha to 1; TRAINING and BLENDING start from 0.

        Args:
            step: The training step.

        Returns:
            The stage change.

        Raises:
            IllegalTransitionError: When the seed has no next stage (dormant or fossilized).
        """
        source = self._state.stage
        if source not in _NEXT_STAGE:
            allowed = ["GERMINATED (by germinate)"] if source is SeedStage.DORMANT else []
            raise IllegalTransitionError("SeedStage", source.value, "the next stage", allowed)
        target = _NEXT_STAGE[source]
        alpha = 1.0 if target in (SeedStage.PROBATION, SeedStage.FOSSILIZED) else 0.0
        self._state = self._state.moved_to(target, step, alpha=alpha)
        with torch.no_grad():
            self.alpha.fill_(alpha)
        self._refresh_idle()
        return StageChange(self.slot_id, source, target, step, self._state.kernel_id)

    def set_alpha(self, value: float) -> None:
        """Set the blend weight during BLENDING (an in-place fill: no host sync, no recompile).

        Args:
            value: Alpha in ``[0, 1]``.

        Raises:
            ValueError: Outside BLENDING or outside ``[0, 1]``.
        """
        if self._state.stage is not SeedStage.BLENDING:
            raise ValueError(
                f"slot '{self.slot_id}': alpha only changes while BLENDING "
                f"(stage {self._state.stage.value})"
            )
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"slot '{self.slot_id}': alpha {value} is outside [0, 1]")
        with torch.no_grad():
            self.alpha.fill_(value)
        self._state = self._state.model_copy(update={"alpha": value})

    def record_contribution(self, value: float) -> None:
        """Store the seed's measured counterfactual contribution.

        Args:
            value: Validation loss without the seed minus with it.

        Raises:
            ValueError: When the value is not finite.
        """
        if not math.isfinite(value):
            raise ValueError(f"slot '{self.slot_id}': contribution {value} is not finite")
        self._state = self._state.model_copy(update={"contribution": value})

    def fossilize(self, step: int) -> StageChange:
        """Make a seed in probation a permanent part of the host.

        Args:
            step: The training step.

        Returns:
            The stage change.
        """
        source = self._state.stage
        self._state = self._state.moved_to(SeedStage.FOSSILIZED, step)
        self._refresh_idle()
        return StageChange(self.slot_id, source, SeedStage.FOSSILIZED, step, self._state.kernel_id)

    def cull(self, step: int) -> tuple[StageChange, StageChange, list[nn.Parameter]]:
        """Remove a live seed; the host is exactly as before it germinated.

        Args:
            step: The training step.

        Returns:
            The move to CULLED, the move back to DORMANT, and the removed seed's parameters (to
            drop from the optimizer).

        Raises:
            IllegalTransitionError: When no live seed is in the slot.
        """
        source = self._state.stage
        kernel_id = self._state.kernel_id
        culled = self._state.moved_to(SeedStage.CULLED, step, alpha=0.0)
        removed = self.seed_parameters()
        self._state = culled.moved_to(
            SeedStage.DORMANT,
            step,
            kernel_id=None,
            blueprint_hash=None,
            germinated_step=None,
            contribution=None,
        )
        self.seed = None
        self._ir = None
        self._bindings = {}
        self._blueprint_name = None
        with torch.no_grad():
            self.alpha.zero_()
        self._refresh_idle()
        return (
            StageChange(self.slot_id, source, SeedStage.CULLED, step, kernel_id),
            StageChange(self.slot_id, SeedStage.CULLED, SeedStage.DORMANT, step, kernel_id),
            removed,
        )

    # Forward ----------------------------------------------------------------------------------

    def forward(self, host_output: Tensor) -> Tensor:
        """Return the slot's output for the host module's output (see the module docstring).

        Args:
            host_output: The host module's output.

        Returns:
            The blended activation.
        """
        if self._collecting:
            self.statistics.observe(host_output)
        stage = self._state.stage
        seed = self.seed
        if seed is None or self._disabled or stage is SeedStage.GERMINATED:
            return host_output
        if stage is SeedStage.TRAINING:
            contribution = seed(host_output.detach())
            return host_output + (contribution - contribution.detach())
        if stage is SeedStage.BLENDING:
            return host_output + self.alpha * seed(host_output)
        return host_output + seed(host_output)

    # State dict -------------------------------------------------------------------------------

    def get_extra_state(self) -> dict[str, object]:
        """Return the slot's lifecycle state for the state dict (plain data, no pickled code).

        Returns:
            The stage, kernel, blueprint and bindings.
        """
        return {
            "version": EXTRA_STATE_VERSION,
            "state": self._state.model_dump(mode="json", by_alias=True),
            "ir": None if self._ir is None else self._ir.model_dump(mode="json", by_alias=True),
            "bindings": dict(self._bindings),
            "blueprintName": self._blueprint_name,
        }

    def set_extra_state(self, state: object) -> None:
        """Restore the lifecycle state, rebuilding or removing the seed to match it.

        Called by ``load_state_dict`` before the seed's own weights are loaded, so a rebuilt
        seed then receives the checkpoint's weights.

        Args:
            state: What :meth:`get_extra_state` returned.

        Raises:
            ValueError: When the state is not a slot state of this version and slot.
        """
        if not isinstance(state, dict) or state.get("version") != EXTRA_STATE_VERSION:
            raise ValueError(f"slot '{self.slot_id}': not a version-{EXTRA_STATE_VERSION} state")
        restored = SeedState.model_validate(state["state"])
        if restored.slot_id != self.slot_id:
            raise ValueError(
                f"slot '{self.slot_id}': the state belongs to slot '{restored.slot_id}'"
            )
        occupied = restored.stage in LIVE_STAGES or restored.stage is SeedStage.FOSSILIZED
        if not occupied:
            self.seed = None
            self._ir = None
            self._bindings = {}
            self._blueprint_name = None
        elif self.seed is None or self._state.kernel_id != restored.kernel_id:
            ir = BlueprintIR.model_validate(state["ir"])
            bindings = {str(k): int(v) for k, v in dict(state["bindings"]).items()}
            self.seed = build_module(ir, bindings).to(
                device=self.alpha.device, dtype=self.alpha.dtype
            )
            self.seed.train(self.training)
            self._ir = ir
            self._bindings = bindings
            self._blueprint_name = str(state["blueprintName"])
        self._state = restored
        self._refresh_idle()
