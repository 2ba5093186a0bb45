"""Simic's episodes: real Esper runs of a task, with every action of the policy recorded.

An episode is :func:`esper.tolaria.job.run_job` — the same training loop, controller, kernel
catalog and Urza as ``esper run`` — with the policy replaced by one that records each action
(:class:`~esper.tamiyo.gnn_policy.GnnPolicy` with a recorder, or :class:`TeacherPolicy` around
the heuristic for imitation). Each task's no-growth run is trained once and kept, and the
actions are rewarded against it (:mod:`esper.simic.rewards`). Kernels are compiled by the local
forge the first time a (blueprint, slot size) pair is needed and reused by Urza afterwards.
"""

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from esper.contracts.blueprint import BlueprintIR
from esper.contracts.decisions import AdaptationDecision
from esper.contracts.report import RunReport
from esper.contracts.run import PolicyKind
from esper.simic.rewards import RewardWeights, action_rewards
from esper.simic.tasks import Task
from esper.tamiyo.features import encode
from esper.tamiyo.gnn_policy import PolicyStep, Recorder, action_for_decision
from esper.tamiyo.policy import Observation, Policy
from esper.tolaria.job import run_job
from esper.urza.client import UrzaClient

LOGGER = logging.getLogger("esper.simic")


class TeacherPolicy:
    """Another policy, acting as itself, with its actions recorded in the network's terms.

    Args:
        inner: The teacher (the heuristic).
        recorder: Called with every action, waits included; ``log_prob`` and ``value`` are 0.
    """

    def __init__(self, inner: Policy, recorder: Recorder) -> None:
        """Wrap the teacher."""
        self._inner = inner
        self._recorder = recorder

    def decide(self, observation: Observation) -> list[AdaptationDecision]:
        """Return the teacher's first decision (the network takes one action per boundary).

        Args:
            observation: What the policy sees.

        Returns:
            At most one decision.
        """
        decisions = self._inner.decide(observation)[:1]
        inp = encode(observation)
        action = action_for_decision(inp, decisions[0] if decisions else None)
        self._recorder(PolicyStep(observation.snapshot.step, inp, action, 0.0, 0.0))
        return decisions

    def state_dict(self) -> dict[str, float | int]:
        """Return the teacher's state."""
        return self._inner.state_dict()

    def load_state_dict(self, state: Mapping[str, float | int]) -> None:
        """Restore the teacher's state.

        Args:
            state: What :meth:`state_dict` returned.
        """
        self._inner.load_state_dict(state)


@dataclass(frozen=True)
class Episode:
    """One finished episode.

    Attributes:
        task: Its task.
        steps: The policy's actions, in order.
        rewards: The reward of each action.
        report: The run's report.
        baseline_accuracy: The no-growth run's final validation accuracy.
    """

    task: Task
    steps: list[PolicyStep]
    rewards: list[float]
    report: RunReport
    baseline_accuracy: float

    @property
    def final_gap_points(self) -> float:
        """Return the final validation accuracy minus the no-growth run's, in points."""
        return 100.0 * (self.report.grown.curve[-1].val_accuracy - self.baseline_accuracy)


PolicyFactory = Callable[[Recorder], Policy]


class EpisodeRunner:
    """Runs tasks against one Urza (see the module docstring).

    Args:
        client: Urza.
        blueprints: The blueprints episodes may grow.
        work_dir: Where run directories go (one per episode, overwritten by reruns).
        cache_dir: Where generated datasets are cached.
        prepare: The forge's hook for a run's kernels (``RunStack.prepare``).
        weights: The reward's weights.
    """

    def __init__(
        self,
        client: UrzaClient,
        blueprints: Sequence[BlueprintIR],
        *,
        work_dir: Path,
        cache_dir: Path,
        prepare: Callable[[Sequence[str]], None] | None,
        weights: RewardWeights,
    ) -> None:
        """Prepare to run episodes; nothing runs yet."""
        self._client = client
        self._blueprints = list(blueprints)
        self._work_dir = work_dir
        self._cache_dir = cache_dir
        self._prepare = prepare
        self._weights = weights
        self._baselines: dict[Task, RunReport] = {}
        self._count = 0

    def run_report(
        self,
        task: Task,
        spec_policy: PolicyKind,
        policy: Policy | None,
        *,
        checkpoint: str | None = None,
    ) -> RunReport:
        """Run one task and return its report.

        Args:
            task: The task.
            spec_policy: The policy kind written in the run's spec (``none`` never grows).
            policy: The policy instance to grow with instead of the kind's default, if any.
            checkpoint: The network of a ``gnn`` kind (None: the packaged one).

        Returns:
            The report.
        """
        self._count += 1
        run_id = f"simic-{self._count:05d}"
        report, _files = run_job(
            task.run_spec(spec_policy, checkpoint=checkpoint),
            run_id=run_id,
            run_dir=self._work_dir / run_id,
            client=self._client,
            blueprints=self._blueprints,
            cache_dir=self._cache_dir,
            prepare=self._prepare,
            policy=policy,
        )
        return report

    def baseline(self, task: Task) -> RunReport:
        """Return the task's no-growth run (trained once, then reused).

        Args:
            task: The task.

        Returns:
            Its report.
        """
        if task not in self._baselines:
            self._baselines[task] = self.run_report(task, PolicyKind.NONE, None)
        return self._baselines[task]

    def episode(self, task: Task, make_policy: PolicyFactory) -> Episode | None:
        """Run one episode and reward its actions.

        Args:
            task: The task.
            make_policy: Builds the acting policy around the episode's recorder.

        Returns:
            The episode, or None when it cannot be rewarded: the policy was never asked, or a
            rollback replayed boundaries (the same step decided twice).
        """
        baseline = self.baseline(task)
        steps: list[PolicyStep] = []
        report = self.run_report(task, PolicyKind.HEURISTIC, make_policy(steps.append))
        action_steps = [step.step for step in steps]
        if not steps or action_steps != sorted(set(action_steps)):
            LOGGER.warning(
                "simic: episode of %s not used (%d actions, %d rollbacks)",
                task.name,
                len(steps),
                len(report.rollbacks),
            )
            return None
        rewards = action_rewards(
            action_steps,
            report.grown.curve,
            baseline.grown.curve,
            report.seeds,
            host_params=baseline.grown.params,
            total_steps=report.grown.steps,
            weights=self._weights,
        )
        return Episode(
            task=task,
            steps=steps,
            rewards=rewards,
            report=report,
            baseline_accuracy=baseline.grown.curve[-1].val_accuracy,
        )
