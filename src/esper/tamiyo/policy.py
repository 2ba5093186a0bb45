"""The policy interface: what Tamiyo sees at a decision boundary and what it returns.

Tamiyo reads contracts only — the model graph, a telemetry snapshot and the kernels that are
ready for each slot — and never touches the model's modules.
"""

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from esper.contracts.decisions import AdaptationDecision, DecisionAction
from esper.contracts.graph import ModelGraph
from esper.contracts.kernel import KernelArtifact
from esper.contracts.telemetry import TelemetrySnapshot

DECISION_NAMESPACE = uuid.UUID("6b3f0c4e-2f59-4a7e-9c1d-8a4e5b7f0d21")


@dataclass(frozen=True)
class KernelCandidate:
    """A Validated kernel that is loaded and can germinate in a slot at once.

    Attributes:
        kernel: The kernel's record (target, benchmark report).
        blueprint_name: Its blueprint's name.
        params: Parameters it adds.
    """

    kernel: KernelArtifact
    blueprint_name: str
    params: int

    def latency_ms(self) -> float:
        """Return the benchmarked p50 latency at the largest batch (ms); infinity if unmeasured."""
        report = self.kernel.benchmark
        return float("inf") if report is None else report.p50_ms_at_largest_batch()


@dataclass(frozen=True)
class Observation:
    """Everything a policy sees at one decision boundary.

    Attributes:
        snapshot: Telemetry and metrics.
        graph: The model's structure.
        candidates: Ready kernels per slot id.
        max_seeds: Seeds alive or fossilized the run allows at once.
        excluded: ``(slot id, kernel id)`` pairs culled before, not to be tried again.
    """

    snapshot: TelemetrySnapshot
    graph: ModelGraph
    candidates: Mapping[str, Sequence[KernelCandidate]]
    max_seeds: int
    excluded: frozenset[tuple[str, str]] = field(default_factory=frozenset)


class Policy(Protocol):
    """A controller policy."""

    def decide(self, observation: Observation) -> list[AdaptationDecision]:
        """Return the decisions for this boundary (often none).

        Args:
            observation: What the policy sees.

        Returns:
            Decisions, applied in order.
        """
        ...

    def state_dict(self) -> dict[str, float | int]:
        """Return the policy's internal state (plain numbers) for checkpoints."""
        ...

    def load_state_dict(self, state: Mapping[str, float | int]) -> None:
        """Restore :meth:`state_dict`'s output.

        Args:
            state: The saved state.
        """
        ...


def decision_id(run_id: str, step: int, slot_id: str, action: str) -> str:
    """Return a deterministic decision id (the same run, step, slot and action give the same id).

    Args:
        run_id: The run.
        step: The step.
        slot_id: The slot.
        action: The action.

    Returns:
        ``d-`` and 32 hex digits.
    """
    return "d-" + uuid.uuid5(DECISION_NAMESPACE, f"{run_id}/{step}/{slot_id}/{action}").hex


def germination(
    snapshot: TelemetrySnapshot,
    slot_id: str,
    candidate: KernelCandidate,
    *,
    reason: str,
    confidence: float,
) -> AdaptationDecision:
    """Return the decision to germinate ``candidate`` in ``slot_id`` at the snapshot's step.

    Args:
        snapshot: The boundary's snapshot (run and step).
        slot_id: The slot.
        candidate: The kernel to grow there.
        reason: Why, for the report.
        confidence: The policy's confidence, 0 to 1.

    Returns:
        The decision, with its deterministic id.
    """
    action = DecisionAction.GERMINATE
    return AdaptationDecision(
        decision_id=decision_id(snapshot.run_id, snapshot.step, slot_id, action.value),
        run_id=snapshot.run_id,
        step=snapshot.step,
        action=action,
        slot_id=slot_id,
        kernel_id=candidate.kernel.id,
        blueprint_hash=candidate.kernel.blueprint_hash,
        reason=reason,
        confidence=confidence,
    )
