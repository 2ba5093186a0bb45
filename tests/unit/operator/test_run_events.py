"""Run events folded into ``MorphogeneticRun.status`` and Kubernetes Events."""

import threading
from contextlib import contextmanager

import pytest

from esper.contracts.crd import AdaptationRecord, MorphogeneticRunResourceStatus, SlotState
from esper.contracts.decisions import AdaptationDecision, DecisionAction
from esper.contracts.events import Event, RunFinished, RunProgress, SeedLifecycleEvent, Topic
from esper.contracts.seed import SeedStage
from esper.oona import OonaError
from esper_operator.kube import KubeApi, KubeConflictError, esper_path
from esper_operator.run_events import (
    WRITE_ATTEMPTS,
    KubeEvent,
    RunEventConsumer,
    apply_event,
    event_name,
    split_run_id,
)
from tests.unit.contracts.samples import payload_for

from .factories import BLUEPRINT_HASH, is_dns_subdomain

RUN = "tiny"
RUN_ID = "esper.tiny"
KERNEL = "k-" + "0123456789abcdef01234567"
OTHER_KERNEL = "k-" + "fedcba9876543210fedcba98"


def wrap(topic: Topic, payload: object) -> Event:
    return Event(topic=topic, source="tolaria", payload=payload)


def progress(epoch: int, accuracy: float = 0.5, params: int = 1000) -> Event:
    return wrap(
        Topic.RUN_PROGRESS,
        RunProgress(
            run_id=RUN_ID, epoch=epoch, train_loss=0.3, val_accuracy=accuracy, params=params
        ),
    )


def lifecycle(
    slot: str, source: SeedStage, target: SeedStage, step: int, kernel: str | None = KERNEL
) -> Event:
    return wrap(
        Topic.SEED_LIFECYCLE,
        SeedLifecycleEvent(
            run_id=RUN_ID, slot_id=slot, source=source, target=target, step=step, kernel_id=kernel
        ),
    )


def decision(
    step: int,
    action: DecisionAction = DecisionAction.CULL,
    slot: str = "layer1",
    reason: str = "no gain",
    decision_id: str | None = None,
) -> Event:
    germinate = action is DecisionAction.GERMINATE
    return wrap(
        Topic.ADAPTATION_DECIDED,
        AdaptationDecision(
            decision_id=decision_id or f"d-{step:032x}",
            run_id=RUN_ID,
            step=step,
            action=action,
            slot_id=slot,
            kernel_id=KERNEL if germinate else None,
            blueprint_hash=BLUEPRINT_HASH if germinate else None,
            reason=reason,
        ),
    )


def succeeded() -> Event:
    return wrap(
        Topic.RUN_FINISHED,
        RunFinished(
            run_id=RUN_ID,
            succeeded=True,
            test_accuracy=0.91234,
            params=4321,
            seeds_fossilized=1,
            seeds_culled=2,
        ),
    )


def failed(error: str = "TrainingDivergedError: loss is nan") -> Event:
    return wrap(Topic.RUN_FINISHED, RunFinished(run_id=RUN_ID, succeeded=False, error=error))


def fold(*events: Event, status: MorphogeneticRunResourceStatus | None = None):
    current = status or MorphogeneticRunResourceStatus()
    posted: list[KubeEvent] = []
    for item in events:
        current, kube_event = apply_event(current, item, RUN)
        if kube_event is not None:
            posted.append(kube_event)
    return current, posted


def stored(status: MorphogeneticRunResourceStatus) -> MorphogeneticRunResourceStatus:
    """The status as the API server would store it and the operator read it back."""
    document = status.model_dump(mode="json", by_alias=True, exclude_none=True)
    return MorphogeneticRunResourceStatus.model_validate(document)


# Progress -----------------------------------------------------------------------------------


def test_progress_sets_epoch_accuracy_and_params() -> None:
    status, posted = fold(progress(1, 0.4, 900), progress(2, 0.6, 1100))
    assert (status.epoch, status.accuracy, status.params) == (2, 0.6, 1100)
    assert posted == []
    assert stored(status) == status


def test_progress_of_an_older_epoch_is_ignored() -> None:
    status, _ = fold(progress(3, 0.7, 1200))
    again, posted = apply_event(status, progress(2, 0.5, 900), RUN)
    assert again is status
    assert posted is None


def test_progress_of_the_same_epoch_applies() -> None:
    status, _ = fold(progress(3, 0.7), progress(3, 0.75))
    assert status.accuracy == 0.75


@pytest.mark.parametrize(("raw", "kept"), [(1.5, 1.0), (-0.2, 0.0), (0.25, 0.25)])
def test_accuracy_is_clamped_to_a_fraction(raw: float, kept: float) -> None:
    status, _ = fold(progress(1, raw))
    assert status.accuracy == kept
    assert stored(status).accuracy == kept


# Lifecycle ----------------------------------------------------------------------------------


def test_a_first_lifecycle_event_adds_the_slot() -> None:
    status, posted = fold(lifecycle("layer1", SeedStage.DORMANT, SeedStage.GERMINATED, 40))
    assert status.slots == [
        SlotState(slot_id="layer1", stage=SeedStage.GERMINATED, step=40, kernel_id=KERNEL)
    ]
    assert status.seeds == 1
    assert status.seeds_by_stage == {SeedStage.GERMINATED: 1}
    assert posted == []
    assert stored(status) == status


def test_a_later_step_wins() -> None:
    status, _ = fold(
        lifecycle("layer1", SeedStage.DORMANT, SeedStage.GERMINATED, 40),
        lifecycle("layer1", SeedStage.GERMINATED, SeedStage.TRAINING, 41),
        lifecycle("layer1", SeedStage.TRAINING, SeedStage.BLENDING, 71),
    )
    (slot,) = status.slots
    assert (slot.stage, slot.step) == (SeedStage.BLENDING, 71)
    assert status.seeds_by_stage == {SeedStage.BLENDING: 1}


def test_a_replay_of_an_older_step_is_ignored() -> None:
    status, _ = fold(
        lifecycle("layer1", SeedStage.DORMANT, SeedStage.GERMINATED, 40),
        lifecycle("layer1", SeedStage.GERMINATED, SeedStage.TRAINING, 41),
    )
    again, posted = apply_event(
        status, lifecycle("layer1", SeedStage.DORMANT, SeedStage.GERMINATED, 40), RUN
    )
    assert again is status
    assert posted is None


def test_seeds_count_alive_and_fossilized_slots_and_by_stage_counts_all_but_dormant() -> None:
    status, _ = fold(
        lifecycle("a", SeedStage.DORMANT, SeedStage.GERMINATED, 10),
        lifecycle("b", SeedStage.DORMANT, SeedStage.GERMINATED, 10, OTHER_KERNEL),
        lifecycle("c", SeedStage.DORMANT, SeedStage.GERMINATED, 10),
        lifecycle("d", SeedStage.DORMANT, SeedStage.GERMINATED, 10),
        lifecycle("e", SeedStage.DORMANT, SeedStage.GERMINATED, 10),
        lifecycle("a", SeedStage.GERMINATED, SeedStage.TRAINING, 11),
        lifecycle("b", SeedStage.PROBATION, SeedStage.FOSSILIZED, 90),
        lifecycle("c", SeedStage.TRAINING, SeedStage.CULLED, 50),
        lifecycle("d", SeedStage.TRAINING, SeedStage.CULLED, 50),
        lifecycle("d", SeedStage.CULLED, SeedStage.DORMANT, 51, None),
    )
    assert [slot.slot_id for slot in status.slots] == ["a", "b", "c", "d", "e"]
    assert status.seeds == 3  # a (TRAINING), b (FOSSILIZED), e (GERMINATED)
    assert status.seeds_by_stage == {
        SeedStage.CULLED: 1,
        SeedStage.FOSSILIZED: 1,
        SeedStage.GERMINATED: 1,
        SeedStage.TRAINING: 1,
    }
    assert SeedStage.DORMANT not in status.seeds_by_stage
    assert status.slots[3].stage is SeedStage.DORMANT
    assert status.slots[3].kernel_id is None
    assert stored(status) == status


def test_a_culled_slot_emptied_at_the_same_step_is_dormant() -> None:
    """Kasmina's cull is two changes at one step: CULLED, then DORMANT."""
    status, _ = fold(
        lifecycle("layer1", SeedStage.DORMANT, SeedStage.GERMINATED, 40),
        lifecycle("layer1", SeedStage.TRAINING, SeedStage.CULLED, 60),
        lifecycle("layer1", SeedStage.CULLED, SeedStage.DORMANT, 60, None),
    )
    assert status.slots[0].stage is SeedStage.DORMANT
    assert status.seeds == 0
    assert status.seeds_by_stage == {}


def test_a_redelivered_change_of_the_same_step_does_not_undo_the_next_one() -> None:
    """BUG: a replay of CULLED@60 after DORMANT@60 puts the slot back to CULLED.

    Oona redelivers a pending delivery to another consumer once it has been idle for
    ``claim_idle_ms``, so the CULLED change of a cull can arrive after its DORMANT change (both
    carry the same step). ``_with_slot`` only refuses *older* steps, so the replay wins.
    """
    status, _ = fold(
        lifecycle("layer1", SeedStage.DORMANT, SeedStage.GERMINATED, 40),
        lifecycle("layer1", SeedStage.TRAINING, SeedStage.CULLED, 60),
        lifecycle("layer1", SeedStage.CULLED, SeedStage.DORMANT, 60, None),
    )
    replayed, _ = apply_event(
        status, lifecycle("layer1", SeedStage.TRAINING, SeedStage.CULLED, 60), RUN
    )
    assert replayed.slots[0].stage is SeedStage.DORMANT
    assert replayed.seeds_by_stage == {}


# Decisions ----------------------------------------------------------------------------------


def test_a_decision_is_recorded_and_posted() -> None:
    event = decision(40, DecisionAction.GERMINATE, reason="plateau at step 40")
    status, (posted,) = fold(event)
    assert status.adaptations == [
        AdaptationRecord(
            step=40,
            action=DecisionAction.GERMINATE,
            slot_id="layer1",
            kernel_id=KERNEL,
            reason="plateau at step 40",
        )
    ]
    assert posted.reason == "Germinate"
    assert posted.message == f"step 40: germinate layer1 with kernel {KERNEL}: plateau at step 40"
    assert posted.name == event_name(RUN, event.payload.decision_id)
    assert stored(status) == status


@pytest.mark.parametrize(
    ("action", "reason"),
    [(DecisionAction.CULL, "Cull"), (DecisionAction.FOSSILIZE, "Fossilize")],
)
def test_a_decision_without_a_kernel(action: DecisionAction, reason: str) -> None:
    _, (posted,) = fold(decision(50, action, reason="why"))
    assert posted.reason == reason
    assert posted.message == f"step 50: {action.value} layer1: why"
    assert "kernel" not in posted.message


def test_a_redelivered_decision_is_recorded_once_and_posted_under_the_same_name() -> None:
    status, (first,) = fold(decision(40))
    again, second = apply_event(status, decision(40), RUN)
    assert again is status
    assert second == first
    assert len(again.adaptations) == 1


def test_decisions_are_kept_in_step_order() -> None:
    status, _ = fold(decision(30), decision(10), decision(20, slot="layer2"), decision(40))
    assert [record.step for record in status.adaptations] == [10, 20, 30, 40]


def test_decisions_are_capped_at_the_fifty_latest() -> None:
    steps = list(range(10, 610, 10))  # 60 decisions
    status, posted = fold(*(decision(step) for step in reversed(steps)))
    assert len(status.adaptations) == 50
    assert [record.step for record in status.adaptations] == steps[-50:]
    assert len({item.name for item in posted}) == 60
    assert stored(status) == status


def test_long_decision_reasons_are_cut_to_fit() -> None:
    status, (posted,) = fold(decision(40, reason="r" * 4000))
    assert len(status.adaptations[0].reason) == 256
    assert len(posted.message) == 1024
    assert stored(status) == status


def test_the_event_name_of_a_decision_is_a_dns_subdomain() -> None:
    event = decision(40, decision_id="d-" + "0f" * 16)
    _, (posted,) = fold(event)
    assert posted.name == "tiny.d-" + "0f" * 16
    assert is_dns_subdomain(posted.name)


# Run finished -------------------------------------------------------------------------------


def test_a_succeeded_run_records_its_results() -> None:
    before, _ = fold(progress(5, 0.8, 4000))
    status, (posted,) = fold(succeeded(), status=before)
    assert status.test_accuracy == 0.91234
    assert status.params == 4321
    assert status.epoch == 5
    assert posted == KubeEvent(
        name="tiny.finished",
        reason="RunFinished",
        message="test accuracy 0.9123, 4321 parameters, 1 seed(s) fossilized, 2 culled",
    )
    assert stored(status) == status


def test_a_failed_run_posts_its_error() -> None:
    before, _ = fold(progress(2, 0.5, 900))
    status, (posted,) = fold(failed(), status=before)
    assert status == before
    assert posted == KubeEvent(
        name="tiny.finished",
        reason="RunFailed",
        message="the run stopped: TrainingDivergedError: loss is nan",
    )


def test_a_failed_run_message_is_cut_to_fit() -> None:
    _, (posted,) = fold(failed("e" * 4000))
    assert len(posted.message) == 1024


# Other topics -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "topic", [Topic.TELEMETRY, Topic.BLUEPRINT_SUBMITTED, Topic.KERNEL_PHASE_CHANGED], ids=str
)
def test_other_topics_change_nothing(topic: Topic) -> None:
    status = MorphogeneticRunResourceStatus()
    again, posted = apply_event(status, wrap(topic, payload_for(topic)), RUN)
    assert again is status
    assert posted is None


# Run ids and Event names --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("run_id", "expected"),
    [
        ("esper.tiny", ("esper", "tiny")),
        ("team-a.my.run.v2", ("team-a", "my.run.v2")),
        ("local-run", None),
        (".tiny", None),
        ("esper.", None),
        ("", None),
    ],
)
def test_split_run_id(run_id: str, expected: tuple[str, str] | None) -> None:
    assert split_run_id(run_id) == expected


@pytest.mark.parametrize(
    ("parts", "expected"),
    [
        (("tiny", "d-abc"), "tiny.d-abc"),
        (("Tiny", "D_ABC"), "tiny.d-abc"),
        (("tiny", "finished"), "tiny.finished"),
        (("tiny", "x:y"), "tiny.x-y"),
        (("-tiny", "x-"), "tiny.x"),
        (("",), "event"),
        (("...",), "event"),
    ],
)
def test_event_name(parts: tuple[str, ...], expected: str) -> None:
    assert event_name(*parts) == expected
    assert is_dns_subdomain(event_name(*parts))


def test_event_names_are_at_most_253_characters() -> None:
    made = event_name("r" * 200, "d-" + "a" * 100)
    assert len(made) <= 253
    assert is_dns_subdomain(made)
    assert made == event_name("r" * 200, "d-" + "a" * 100)


@pytest.mark.parametrize("decision_id", ["a..b", "d-.x", "d.-x", "a_.b", "step:40.-slot"])
def test_event_names_of_any_valid_decision_id_are_dns_subdomains(decision_id: str) -> None:
    """BUG: decision ids are Identifiers, which allow '.', '_', ':' and '-' in any order.

    ``event_name`` maps '_' and ':' to '-', but never collapses '..' or a '-' next to a '.', so
    such ids give names the API server refuses (422). ``RunEventConsumer.handle`` posts the Event
    before writing the status and does not catch that KubeError, so the delivery stays pending
    and is retried forever, and every run's status stops following its events.
    """
    decision(40, decision_id=decision_id)  # the contract accepts it
    assert is_dns_subdomain(event_name(RUN, decision_id)), event_name(RUN, decision_id)


# The consumer's write loop (against a fake KubeApi) -----------------------------------------


class FakeRunApi:
    """One MorphogeneticRun, optimistic concurrency on its status, Events recorded."""

    def __init__(self, run: dict | None, conflicts: int = 0) -> None:
        self.run = run
        self.conflicts = conflicts
        self.reads = 0
        self.replaced: list[tuple[str, dict]] = []
        self.created: list[tuple[str, dict]] = []

    def get(self, path: str) -> dict | None:
        self.reads += 1
        if self.run is None or path != esper_path("morphogeneticruns", "esper", "tiny"):
            return None
        return {**self.run}

    def replace(self, path: str, body: dict) -> dict:
        if self.conflicts:
            self.conflicts -= 1
            raise KubeConflictError("conflict", 409)
        self.replaced.append((path, body))
        return body

    def create(self, path: str, body: dict) -> bool:
        self.created.append((path, body))
        return True


def run_body(status: dict | None = None) -> dict:
    body = {
        "apiVersion": "esper.dev/v1alpha1",
        "kind": "MorphogeneticRun",
        "metadata": {"name": "tiny", "namespace": "esper", "uid": "uid-run"},
        "spec": {},
    }
    if status is not None:
        body["status"] = status
    return body


def consumer(api: FakeRunApi, bus: object = None) -> RunEventConsumer:
    fake: KubeApi = api  # type: ignore[assignment]
    return RunEventConsumer(bus=bus, api=fake, consumer="replica-1")  # type: ignore[arg-type]


def test_handle_writes_the_status() -> None:
    api = FakeRunApi(run_body({"phase": "Running"}))
    worker = consumer(api)
    assert worker.handle(progress(2, 0.6, 1000))
    ((path, body),) = api.replaced
    assert path == esper_path("morphogeneticruns", "esper", "tiny") + "/status"
    assert body["status"]["phase"] == "Running"
    assert (body["status"]["epoch"], body["status"]["accuracy"]) == (2, 0.6)
    assert worker.applied == 1
    assert api.created == []


def test_handle_reads_again_after_a_conflict() -> None:
    api = FakeRunApi(run_body(), conflicts=2)
    assert consumer(api).handle(progress(1))
    assert api.reads == 3
    assert len(api.replaced) == 1


def test_handle_gives_up_after_repeated_conflicts() -> None:
    api = FakeRunApi(run_body(), conflicts=100)
    assert not consumer(api).handle(progress(1))
    assert api.reads == WRITE_ATTEMPTS


def test_handle_skips_what_changes_nothing() -> None:
    api = FakeRunApi(run_body({"phase": "Running", "epoch": 5}))
    assert not consumer(api).handle(progress(3))
    assert api.replaced == []


@pytest.mark.parametrize(("run_id", "reads"), [("local-run", 0), ("other.missing", 1)])
def test_handle_skips_runs_of_no_cluster(run_id: str, reads: int) -> None:
    api = FakeRunApi(run_body())
    payload = RunProgress(run_id=run_id, epoch=1, train_loss=0.1, val_accuracy=0.5, params=1)
    assert not consumer(api).handle(wrap(Topic.RUN_PROGRESS, payload))
    assert api.reads == reads
    assert api.replaced == []


def test_handle_posts_a_decision_as_an_event() -> None:
    api = FakeRunApi(run_body())
    event = decision(40, DecisionAction.GERMINATE)
    assert consumer(api).handle(event)
    ((path, posted),) = api.created
    assert path == "/api/v1/namespaces/esper/events"
    assert posted["metadata"] == {
        "name": event_name("tiny", event.payload.decision_id),
        "namespace": "esper",
    }
    assert posted["involvedObject"] == {
        "apiVersion": "esper.dev/v1alpha1",
        "kind": "MorphogeneticRun",
        "name": "tiny",
        "namespace": "esper",
        "uid": "uid-run",
    }
    assert posted["reason"] == "Germinate"
    assert posted["type"] == "Normal"
    assert posted["reportingInstance"] == "replica-1"
    assert len(api.replaced) == 1


def test_handle_posts_a_failed_run_as_a_warning_even_when_the_status_holds() -> None:
    api = FakeRunApi(run_body())
    consumer(api).handle(failed())
    ((_, posted),) = api.created
    assert posted["type"] == "Warning"
    assert posted["reason"] == "RunFailed"


def test_a_redelivered_decision_posts_again_but_writes_nothing() -> None:
    api = FakeRunApi(run_body())
    worker = consumer(api)
    worker.handle(decision(40))
    api.run = api.replaced[-1][1]
    assert worker.handle(decision(40))  # the Event create is repeated (409 on a cluster)
    assert len(api.replaced) == 1
    assert len(api.created) == 2


class Delivery:
    def __init__(self, event: Event) -> None:
        self.event = event


class FakeBus:
    """Hands out one batch of deliveries, after failing ``failures`` subscriptions."""

    def __init__(self, events: list[Event], failures: int = 0) -> None:
        self.pending = [Delivery(item) for item in events]
        self.failures = failures
        self.subscribed: list[tuple[tuple[Topic, ...], str, str]] = []
        self.acked: list[Delivery] = []
        self.failed = threading.Event()
        self.drained = threading.Event()

    @contextmanager
    def subscribe(self, topics: tuple[Topic, ...], group: str, consumer: str):
        self.subscribed.append((tuple(topics), group, consumer))
        if self.failures:
            self.failures -= 1
            self.failed.set()
            raise OonaError("redis is away")
        yield self

    def receive(self, max_count: int, block_ms: int) -> list[Delivery]:
        batch, self.pending = self.pending[:max_count], self.pending[max_count:]
        if not batch:
            self.drained.set()
            threading.Event().wait(block_ms / 1000 / 100)
        return batch

    def ack(self, delivery: Delivery) -> None:
        self.acked.append(delivery)


def test_the_consumer_thread_applies_and_acknowledges() -> None:
    api = FakeRunApi(run_body())
    bus = FakeBus([progress(1), progress(2, 0.7)])
    worker = consumer(api, bus)
    worker.start()
    try:
        assert bus.drained.wait(5)
    finally:
        worker.stop(timeout=5)
    assert [item.event.payload.epoch for item in bus.acked] == [1, 2]
    assert worker.applied == 2
    ((topics, group, name),) = bus.subscribed
    assert set(topics) == {
        Topic.RUN_PROGRESS,
        Topic.SEED_LIFECYCLE,
        Topic.ADAPTATION_DECIDED,
        Topic.RUN_FINISHED,
    }
    assert (group, name) == ("esper-operator", "replica-1")


def test_the_consumer_thread_backs_off_after_a_bus_error_until_stopped() -> None:
    bus = FakeBus([], failures=1)
    worker = consumer(FakeRunApi(run_body()), bus)
    worker.start()
    assert bus.failed.wait(5)
    worker.stop(timeout=5)  # interrupts the 5 s back-off
    assert not worker._thread.is_alive()
    assert bus.acked == []


def test_an_event_for_a_run_without_metadata_posts_nothing() -> None:
    api = FakeRunApi({"status": {}})
    assert consumer(api).handle(decision(40))
    assert api.created == []
