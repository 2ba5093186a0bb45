"""A run's events on Oona: its progress, its seeds' lifecycle, its decisions and its end.

A :class:`RunAnnouncer` turns what the job reports through its hooks into events and hands
them to a :class:`~esper.oona.BackgroundPublisher`: a hook builds one event and queues it, so
the training thread never waits on the bus, even when the bus is down. At the end the queue is
drained for a bounded time, so the last events are not lost when the process exits.

What is published, each event with the run id as its trace id and ``tolaria`` as its source:

- ``run.progress`` (:class:`~esper.contracts.events.RunProgress`) after every epoch of the
  grown model (``epoch`` counts the epochs finished, so it is 1 after the first);
- ``seed.lifecycle`` (:class:`~esper.contracts.events.SeedLifecycleEvent`) for every stage
  change of a seed, in the order they happen;
- ``adaptation.decided`` (:class:`~esper.contracts.decisions.AdaptationDecision`) for every
  decision of the controller, before the stage changes it causes;
- ``run.finished`` (:class:`~esper.contracts.events.RunFinished`) once, last: the grown
  model's test accuracy and parameters and how its seeds ended, or the error that stopped the
  run.
"""

import logging
import math
from collections.abc import Iterator
from contextlib import contextmanager

from esper.contracts.decisions import AdaptationDecision
from esper.contracts.events import (
    Event,
    EventPayload,
    RunFinished,
    RunProgress,
    SeedLifecycleEvent,
    Topic,
)
from esper.contracts.report import LifecycleMark, RunReport
from esper.contracts.seed import SeedStage
from esper.oona import BackgroundPublisher, Bus
from esper.tolaria.job import JobHooks
from esper.tolaria.trainer import EpochInfo

LOGGER = logging.getLogger("esper.tolaria")

SOURCE = "tolaria"
"""The ``source`` of every event a run publishes."""

FLUSH_SECONDS = 10.0
"""Longest wait, at the end of a run, for queued events to reach the bus."""

_ERROR_LENGTH = 4096


class RunAnnouncer:
    """Publishes one run's events without ever blocking its caller (see the module docstring).

    Args:
        bus: The bus; the announcer does not close it.
        run_id: The run.
        flush_seconds: Longest wait in :meth:`close` for queued events to be published.
    """

    def __init__(self, bus: Bus, run_id: str, flush_seconds: float = FLUSH_SECONDS) -> None:
        """Start the publishing thread."""
        self.run_id = run_id
        self._flush_ms = max(1, round(flush_seconds * 1000))
        self._publisher = BackgroundPublisher(bus, name=f"oona-publisher-{run_id}"[:64])
        self.unpublished = 0

    @property
    def published(self) -> int:
        """Events published so far."""
        return self._publisher.published

    def hooks(self) -> JobHooks:
        """Return the job hooks that announce (epochs, stage changes, decisions)."""
        return JobHooks(lifecycle=self.lifecycle, epoch=self.epoch, decision=self.decision)

    def epoch(self, info: EpochInfo) -> None:
        """Announce the end of an epoch (``run.progress``).

        Args:
            info: The finished epoch.
        """
        if info.train_loss is None or not math.isfinite(info.train_loss):
            # RunProgress carries a finite mean loss; an epoch without one is about to be
            # rolled back or declared diverged, which the run's end reports.
            LOGGER.warning("epoch %d had no finite loss; no run.progress for it", info.epoch)
            return
        self._publish(
            Topic.RUN_PROGRESS,
            RunProgress(
                run_id=self.run_id,
                epoch=info.epoch,
                train_loss=info.train_loss,
                val_accuracy=info.val_accuracy,
                params=info.params,
            ),
        )

    def lifecycle(self, mark: LifecycleMark) -> None:
        """Announce a seed's stage change (``seed.lifecycle``).

        Args:
            mark: The change.
        """
        self._publish(
            Topic.SEED_LIFECYCLE,
            SeedLifecycleEvent(
                run_id=self.run_id,
                slot_id=mark.slot_id,
                source=mark.source,
                target=mark.target,
                step=mark.step,
                kernel_id=mark.kernel_id,
            ),
        )

    def decision(self, decision: AdaptationDecision) -> None:
        """Announce a decision of the controller (``adaptation.decided``).

        Args:
            decision: The decision.
        """
        self._publish(Topic.ADAPTATION_DECIDED, decision)

    def finished(self, report: RunReport) -> None:
        """Announce that the run finished and wrote its report (``run.finished``).

        Args:
            report: The report.
        """
        ended = [seed.final_stage for seed in report.seeds]
        self._publish(
            Topic.RUN_FINISHED,
            RunFinished(
                run_id=self.run_id,
                succeeded=True,
                test_accuracy=report.grown.test_accuracy,
                params=report.grown.params,
                seeds_fossilized=ended.count(SeedStage.FOSSILIZED),
                seeds_culled=ended.count(SeedStage.CULLED),
            ),
        )

    def failed(self, error: BaseException) -> None:
        """Announce that the run stopped on an error (``run.finished``, not succeeded).

        Args:
            error: What stopped it.
        """
        text = str(error)
        message = f"{type(error).__name__}: {text}" if text else type(error).__name__
        self._publish(
            Topic.RUN_FINISHED,
            RunFinished(run_id=self.run_id, succeeded=False, error=message[:_ERROR_LENGTH]),
        )

    def close(self) -> int:
        """Publish what is queued (for at most ``flush_seconds``) and stop.

        Returns:
            How many events were left unpublished (also in :attr:`unpublished`, and logged).
        """
        self.unpublished = self._publisher.close(self._flush_ms)
        return self.unpublished

    def _publish(self, topic: Topic, payload: EventPayload) -> None:
        # The run id is the trace id: a consumer follows one run across the topics.
        self._publisher.publish(
            Event(topic=topic, source=SOURCE, trace_id=self.run_id, payload=payload)
        )


@contextmanager
def announcing(
    bus: Bus, run_id: str, flush_seconds: float = FLUSH_SECONDS
) -> Iterator[RunAnnouncer]:
    """Announce a run on ``bus`` for the block's duration.

    When the block raises, ``run.finished`` reports the error (then the error goes on up);
    either way the queued events are published, for at most ``flush_seconds``, before the
    block is left. A block that ends normally announces its own end with
    :meth:`RunAnnouncer.finished`.

    Args:
        bus: The bus; not closed here.
        run_id: The run.
        flush_seconds: Longest wait for queued events at the end.

    Yields:
        The announcer.
    """
    announcer = RunAnnouncer(bus, run_id, flush_seconds)
    try:
        yield announcer
    except (Exception, KeyboardInterrupt) as error:
        # Whatever stops the run, whoever mirrors it must hear that it stopped; the error
        # itself goes on up unchanged.
        announcer.failed(error)
        raise
    finally:
        announcer.close()
