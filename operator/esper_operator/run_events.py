"""Training runs' events on Oona, mirrored into ``MorphogeneticRun.status`` and Kubernetes Events.

A training Job publishes ``run.progress`` (each epoch), ``seed.lifecycle`` (each stage change),
``adaptation.decided`` (each controller decision) and ``run.finished`` under the run id
``<namespace>.<name>``. One consumer group (``esper-operator``) shares them among the operator's
replicas. Applying an event is idempotent (slots keep the step of their last change, decisions
are recorded once), and status writes use optimistic concurrency, so a redelivered event or two
replicas writing at once never corrupt a run's status.
"""

import logging
import re
import threading
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime

from esper.contracts.crd import (
    AdaptationRecord,
    MorphogeneticRunResourceStatus,
    SlotState,
)
from esper.contracts.decisions import AdaptationDecision
from esper.contracts.events import Event, RunFinished, RunProgress, SeedLifecycleEvent, Topic
from esper.contracts.seed import SeedStage
from esper.oona import Bus, OonaError
from esper_operator import OPERATOR_NAME
from esper_operator.kube import KubeApi, KubeConflictError, KubeError, esper_path, resource_path
from esper_operator.metrics import RUN_EVENTS
from esper_operator.runs import current_run_status
from esper_operator.settings import JsonObject

LOGGER = logging.getLogger("esper_operator.run_events")

RUN_TOPICS = (
    Topic.RUN_PROGRESS,
    Topic.SEED_LIFECYCLE,
    Topic.ADAPTATION_DECIDED,
    Topic.RUN_FINISHED,
)
GROUP = OPERATOR_NAME
WRITE_ATTEMPTS = 8
ALIVE_STAGES = frozenset(
    {
        SeedStage.GERMINATED,
        SeedStage.TRAINING,
        SeedStage.BLENDING,
        SeedStage.PROBATION,
        SeedStage.FOSSILIZED,
    }
)
"""Stages counted in the SEEDS column: seeds alive or kept."""


@dataclass(frozen=True)
class KubeEvent:
    """A Kubernetes Event to post on a run.

    Attributes:
        name: Deterministic name (a redelivered decision posts nothing new).
        reason: CamelCase reason.
        message: What happened.
    """

    name: str
    reason: str
    message: str


def event_name(*parts: str) -> str:
    """Return a valid, deterministic Kubernetes Event name made of parts.

    Args:
        parts: The pieces (run name, decision id...).

    Returns:
        A DNS subdomain of at most 253 characters.
    """
    text = re.sub(r"[^a-z0-9.-]+", "-", ".".join(parts).lower())
    # Each dot-separated label starts and ends with a letter or digit; empty labels go.
    text = ".".join(label for label in (item.strip("-") for item in text.split(".")) if label)
    return text[:253].rstrip("-.") or "event"


def split_run_id(run_id: str) -> tuple[str, str] | None:
    """Return the namespace and name a run id stands for.

    Args:
        run_id: ``<namespace>.<name>`` (a namespace has no dots, so the first one splits).

    Returns:
        The pair, or None for an id that no run of a cluster publishes under.
    """
    namespace, dot, name = run_id.partition(".")
    return (namespace, name) if dot and namespace and name else None


def _with_slot(slots: list[SlotState], event: SeedLifecycleEvent) -> list[SlotState] | None:
    for index, slot in enumerate(slots):
        if slot.slot_id != event.slot_id:
            continue
        if event.step < slot.step or (event.step == slot.step and event.source is not slot.stage):
            # An older change, or a replay of one at the same step (a cull is CULLED, then
            # DORMANT, at one step): only the change that follows the slot's stage applies.
            return None
        updated = list(slots)
        updated[index] = SlotState(
            slot_id=event.slot_id, stage=event.target, step=event.step, kernel_id=event.kernel_id
        )
        return updated
    return [
        *slots,
        SlotState(
            slot_id=event.slot_id, stage=event.target, step=event.step, kernel_id=event.kernel_id
        ),
    ]


def _counts(slots: list[SlotState]) -> tuple[int, dict[SeedStage, int]]:
    by_stage = Counter(slot.stage for slot in slots if slot.stage is not SeedStage.DORMANT)
    alive = sum(count for stage, count in by_stage.items() if stage in ALIVE_STAGES)
    return alive, dict(sorted(by_stage.items()))


def apply_event(
    status: MorphogeneticRunResourceStatus, event: Event, run_name: str
) -> tuple[MorphogeneticRunResourceStatus, KubeEvent | None]:
    """Fold one run event into a run's status.

    Args:
        status: The run's status now.
        event: The event.
        run_name: The run's name (for the Kubernetes Event's name).

    Returns:
        The new status (the same object when the event changes nothing) and the Kubernetes
        Event to post, if any.
    """
    payload = event.payload
    if isinstance(payload, RunProgress):
        return _with_progress(status, payload), None
    if isinstance(payload, SeedLifecycleEvent):
        return _with_lifecycle(status, payload), None
    if isinstance(payload, AdaptationDecision):
        return _with_decision(status, payload, run_name)
    if isinstance(payload, RunFinished):
        return _with_finish(status, payload, run_name)
    return status, None


def _with_progress(
    status: MorphogeneticRunResourceStatus, progress: RunProgress
) -> MorphogeneticRunResourceStatus:
    if progress.epoch < status.epoch:
        return status
    accuracy = min(max(progress.val_accuracy, 0.0), 1.0)
    return status.model_copy(
        update={"epoch": progress.epoch, "accuracy": accuracy, "params": progress.params}
    )


def _with_lifecycle(
    status: MorphogeneticRunResourceStatus, change: SeedLifecycleEvent
) -> MorphogeneticRunResourceStatus:
    slots = _with_slot(status.slots, change)
    if slots is None:
        return status
    alive, by_stage = _counts(slots)
    return status.model_copy(update={"slots": slots, "seeds": alive, "seeds_by_stage": by_stage})


def _with_finish(
    status: MorphogeneticRunResourceStatus, finished: RunFinished, run_name: str
) -> tuple[MorphogeneticRunResourceStatus, KubeEvent]:
    update: dict[str, object] = {}
    if finished.test_accuracy is not None:
        update["test_accuracy"] = finished.test_accuracy
    if finished.params is not None:
        update["params"] = finished.params
    message = (
        f"test accuracy {finished.test_accuracy:.4f}, {finished.params} parameters, "
        f"{finished.seeds_fossilized} seed(s) fossilized, {finished.seeds_culled} culled"
        if finished.succeeded
        else f"the run stopped: {finished.error}"
    )
    posted = KubeEvent(
        name=event_name(run_name, "finished"),
        reason="RunFinished" if finished.succeeded else "RunFailed",
        message=message[:1024],
    )
    return status.model_copy(update=update), posted


def _with_decision(
    status: MorphogeneticRunResourceStatus, decision: AdaptationDecision, run_name: str
) -> tuple[MorphogeneticRunResourceStatus, KubeEvent | None]:
    record = AdaptationRecord(
        step=decision.step,
        action=decision.action,
        slot_id=decision.slot_id,
        kernel_id=decision.kernel_id,
        reason=decision.reason[:256],
    )
    posted = KubeEvent(
        name=event_name(run_name, decision.decision_id),
        reason=decision.action.value.capitalize(),
        message=(
            f"step {decision.step}: {decision.action.value} {decision.slot_id}"
            + (f" with kernel {decision.kernel_id}" if decision.kernel_id else "")
            + f": {decision.reason}"
        )[:1024],
    )
    if record in status.adaptations:
        return status, posted
    adaptations = sorted([*status.adaptations, record], key=lambda item: item.step)[-50:]
    return status.model_copy(update={"adaptations": adaptations}), posted


class RunEventConsumer:
    """A background thread that mirrors run events into run statuses."""

    def __init__(self, bus: Bus, api: KubeApi, consumer: str) -> None:
        """Create the consumer (call :meth:`start`).

        Args:
            bus: Oona (Redis Streams).
            api: The Kubernetes API.
            consumer: This replica's consumer name within the group.
        """
        self._bus = bus
        self._api = api
        self._consumer = consumer
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="run-events", daemon=True)
        self.applied = 0

    def start(self) -> None:
        """Start consuming."""
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop consuming and wait for the thread.

        Args:
            timeout: Longest wait in seconds.
        """
        self._stop.set()
        self._thread.join(timeout)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self._consume()
            except (OonaError, KubeError) as error:
                # Unacknowledged deliveries come back; wait for Redis or the API server to return.
                LOGGER.warning("run events: %s; retrying in 5 s", error)
                self._stop.wait(5.0)

    def _consume(self) -> None:
        with self._bus.subscribe(RUN_TOPICS, GROUP, self._consumer) as subscription:
            while not self._stop.is_set():
                for delivery in subscription.receive(max_count=100, block_ms=1000):
                    self.handle(delivery.event)
                    subscription.ack(delivery)

    def handle(self, event: Event) -> bool:
        """Apply one event to its run (skipping runs that are not in this cluster).

        Args:
            event: The event.

        Returns:
            True when a run's status or Events changed.
        """
        RUN_EVENTS.labels(topic=event.topic.value).inc()
        run_id = getattr(event.payload, "run_id", None)
        target = split_run_id(run_id) if isinstance(run_id, str) else None
        if target is None:
            return False
        namespace, name = target
        for _attempt in range(WRITE_ATTEMPTS):
            body = self._api.get(esper_path("morphogeneticruns", namespace, name))
            if body is None:
                return False
            status = current_run_status(body)
            updated, posted = apply_event(status, event, name)
            if posted is not None:
                self._post(body, posted)
            if updated is status:
                return posted is not None
            body["status"] = updated.model_dump(mode="json", by_alias=True, exclude_none=True)
            try:
                self._api.replace(
                    esper_path("morphogeneticruns", namespace, name) + "/status", body
                )
            except KubeConflictError:
                continue  # Someone else wrote the status since we read it: read again.
            self.applied += 1
            return True
        LOGGER.warning("gave up writing event %s to run %s after conflicts", event.id, run_id)
        return False

    def _post(self, run: JsonObject, posted: KubeEvent) -> None:
        metadata = run.get("metadata")
        if not isinstance(metadata, dict):
            return
        namespace = str(metadata["namespace"])
        now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        try:
            self._create_event(namespace, run, metadata, posted, now)
        except KubeError as error:
            if error.status is None or error.status >= 500:
                raise
            # A refused Event (a name or permission problem) must not stall the run's status.
            LOGGER.warning("could not post event %s on run %s: %s", posted.name, namespace, error)

    def _create_event(
        self, namespace: str, run: JsonObject, metadata: JsonObject, posted: KubeEvent, now: str
    ) -> None:
        self._api.create(
            resource_path("v1", "events", namespace),
            {
                "apiVersion": "v1",
                "kind": "Event",
                "metadata": {"name": posted.name, "namespace": namespace},
                "involvedObject": {
                    "apiVersion": str(run.get("apiVersion")),
                    "kind": "MorphogeneticRun",
                    "name": str(metadata["name"]),
                    "namespace": namespace,
                    "uid": str(metadata["uid"]),
                },
                "reason": posted.reason,
                "message": posted.message,
                "type": "Normal" if posted.reason != "RunFailed" else "Warning",
                "source": {"component": OPERATOR_NAME},
                "reportingComponent": f"esper.dev/{OPERATOR_NAME}",
                "reportingInstance": self._consumer[:128],
                "firstTimestamp": now,
                "lastTimestamp": now,
                "count": 1,
            },
        )
