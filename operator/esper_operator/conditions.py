"""Kubernetes-style conditions: set one, keeping its transition time while its status holds."""

from datetime import UTC, datetime

from esper.contracts.crd import Condition, ConditionStatus


def set_condition(
    conditions: list[Condition],
    kind: str,
    status: bool | None,
    reason: str,
    message: str,
    *,
    generation: int,
    now: datetime | None = None,
) -> list[Condition]:
    """Return the conditions with one of them set.

    ``lastTransitionTime`` changes only when the status does, as ``metav1.Condition`` requires,
    so a resync that finds nothing new writes nothing new.

    Args:
        conditions: The current conditions.
        kind: The condition's type (``Valid``, ``Ready``...).
        status: True, False or None (Unknown).
        reason: CamelCase reason.
        message: Human-readable detail (truncated to the contract's limit).
        generation: The ``metadata.generation`` it was computed from.
        now: The time of this observation (default: now).

    Returns:
        A new list, in the original order, with the condition added at the end when new.
    """
    value = {
        True: ConditionStatus.TRUE,
        False: ConditionStatus.FALSE,
        None: ConditionStatus.UNKNOWN,
    }[status]
    moment = now or datetime.now(UTC)
    updated: list[Condition] = []
    found = False
    for condition in conditions:
        if condition.type != kind:
            updated.append(condition)
            continue
        found = True
        updated.append(
            Condition(
                type=kind,
                status=value,
                reason=reason,
                message=message[:4096],
                last_transition_time=(
                    condition.last_transition_time if condition.status == value else moment
                ),
                observed_generation=generation,
            )
        )
    if not found:
        updated.append(
            Condition(
                type=kind,
                status=value,
                reason=reason,
                message=message[:4096],
                last_transition_time=moment,
                observed_generation=generation,
            )
        )
    return updated


def is_true(conditions: list[Condition], kind: str) -> bool:
    """Tell whether a condition is present and True.

    Args:
        conditions: The conditions.
        kind: The condition's type.

    Returns:
        True when it is set to True.
    """
    return any(item.type == kind and item.status is ConditionStatus.TRUE for item in conditions)
