"""Simic's training run: imitation of the heuristic, then PPO, on procedurally varied tasks.

``esper simic train --out tamiyo.pt --work-dir DIR`` runs, on the embedded stack (SQLite Urza
and a local artifact directory under ``DIR``, the in-process bus, the local forge):

1. **Imitation**: the heuristic runs ``imitation_tasks`` training tasks; the network learns to
   take its actions (behaviour cloning), and its value head the returns they earned.
2. **PPO**: ``iterations`` rounds; each runs ``episodes_per_iteration`` new training tasks with
   the network sampling its actions, rewards them (:mod:`esper.simic.rewards`), and updates
   the network with PPO on GAE advantages (:mod:`esper.simic.ppo`).

Every phase writes one JSON line to ``DIR/simic-log.jsonl``: rewards, the final accuracy gap to
no growth, germinations, losses, approximate KL and each head's entropy. The network is saved
with :func:`esper.tamiyo.gnn.save` (weights only).
"""

import json
import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from esper.blueprints.library import builtin
from esper.config import ForgeSettings, UrzaSettings
from esper.contracts.decisions import DecisionAction
from esper.contracts.seed import SeedStage
from esper.embedded import embedded_stack
from esper.simic.ppo import PPOConfig, Transition, UpdateStats, gae, imitation_update, ppo_update
from esper.simic.rewards import RewardWeights
from esper.simic.rollout import Episode, EpisodeRunner, TeacherPolicy
from esper.simic.tasks import BLUEPRINTS, Task, training_tasks
from esper.tamiyo import gnn
from esper.tamiyo.gnn_policy import GnnPolicy, Recorder
from esper.tamiyo.heuristic import HeuristicPolicy
from esper.tamiyo.policy import Policy

LOGGER = logging.getLogger("esper.simic")
LOG_FILE = "simic-log.jsonl"


@dataclass(frozen=True)
class SimicConfig:
    """A Simic training run.

    Attributes:
        seed: Seed of the tasks, the network's initialisation and every sampler.
        imitation_tasks: Tasks the heuristic runs for behaviour cloning (0: none).
        imitation_epochs: Passes over the heuristic's actions.
        iterations: PPO rounds.
        episodes_per_iteration: New tasks per PPO round.
        gamma: Discount per action.
        lam: GAE's lambda.
        imitation_lr: Adam's learning rate for imitation.
        ppo_lr: Adam's learning rate for PPO.
        ppo: PPO's hyper-parameters.
        weights: The reward's weights.
        net: The network's sizes.
    """

    seed: int = 0
    imitation_tasks: int = 24
    imitation_epochs: int = 15
    iterations: int = 10
    episodes_per_iteration: int = 8
    gamma: float = 0.99
    lam: float = 0.95
    imitation_lr: float = 1e-3
    ppo_lr: float = 3e-4
    ppo: PPOConfig = field(default_factory=PPOConfig)
    weights: RewardWeights = field(default_factory=RewardWeights)
    net: gnn.TamiyoNetConfig = field(default_factory=gnn.TamiyoNetConfig)

    def __post_init__(self) -> None:
        """Reject counts that leave nothing to learn from."""
        if self.imitation_tasks < 0 or self.iterations < 0 or self.episodes_per_iteration < 1:
            raise ValueError(
                "imitation_tasks and iterations must be >= 0 and episodes_per_iteration >= 1 "
                f"(got {self.imitation_tasks}, {self.iterations}, {self.episodes_per_iteration})"
            )
        if self.imitation_tasks == 0 and self.iterations == 0:
            raise ValueError("nothing to train: imitation_tasks and iterations are both 0")


def _germinations(episode: Episode) -> int:
    return sum(1 for d in episode.report.decisions if d.action is DecisionAction.GERMINATE)


def _episode_summary(episodes: list[Episode]) -> dict[str, float]:
    count = max(1, len(episodes))
    return {
        "episodes": len(episodes),
        "mean_return": sum(sum(e.rewards) for e in episodes) / count,
        "mean_final_gap_points": sum(e.final_gap_points for e in episodes) / count,
        "mean_germinations": sum(_germinations(e) for e in episodes) / count,
        "mean_kept_seed_params": sum(
            seed.params
            for e in episodes
            for seed in e.report.seeds
            if seed.final_stage is not SeedStage.CULLED
        )
        / count,
    }


def _transitions(episode: Episode, *, gamma: float, lam: float, teacher: bool) -> list[Transition]:
    values = [0.0] * len(episode.rewards) if teacher else [s.value for s in episode.steps]
    # A teacher's values are unknown: lam = 1 makes the targets its Monte Carlo returns.
    advantages, returns = gae(episode.rewards, values, gamma=gamma, lam=1.0 if teacher else lam)
    return [
        Transition(step.inp, step.action, step.log_prob, advantage, target)
        for step, advantage, target in zip(episode.steps, advantages, returns, strict=True)
    ]


class _Log:
    def __init__(self, path: Path) -> None:
        self._path = path
        path.write_text("", encoding="utf-8")

    def write(self, record: dict[str, object]) -> None:
        with self._path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(record, sort_keys=True) + "\n")
        LOGGER.info("simic: %s", json.dumps(record, sort_keys=True))


def _update_record(stats: UpdateStats) -> dict[str, object]:
    return {
        "policy_loss": stats.policy_loss,
        "value_loss": stats.value_loss,
        "approx_kl": stats.approx_kl,
        "clip_fraction": stats.clip_fraction,
        "passes": stats.passes,
        "entropy": stats.entropy,
    }


def _collect(
    runner: EpisodeRunner, tasks: list[Task], make_policy: Callable[[Task, Recorder], Policy]
) -> list[Episode]:
    episodes = []
    for task in tasks:
        episode = runner.episode(task, lambda recorder, task=task: make_policy(task, recorder))
        if episode is not None:
            episodes.append(episode)
    return episodes


def train(config: SimicConfig, runner: EpisodeRunner, log_path: Path) -> gnn.TamiyoNet:
    """Train a network with imitation, then PPO (see the module docstring).

    Args:
        config: The run.
        runner: Runs the episodes.
        log_path: The JSON-lines log.

    Returns:
        The trained network.
    """
    torch.manual_seed(config.seed)
    net = gnn.TamiyoNet(config.net)
    generator = torch.Generator().manual_seed(config.seed)
    log = _Log(log_path)
    if config.imitation_tasks:
        started = time.perf_counter()
        episodes = _collect(
            runner,
            training_tasks(config.imitation_tasks, config.seed),
            lambda _task, recorder: TeacherPolicy(HeuristicPolicy(2, 0.01), recorder),
        )
        data = [
            t for e in episodes for t in _transitions(e, gamma=config.gamma, lam=1.0, teacher=True)
        ]
        optimizer = torch.optim.Adam(net.parameters(), lr=config.imitation_lr)
        stats = imitation_update(
            net,
            optimizer,
            data,
            epochs=config.imitation_epochs,
            minibatch=config.ppo.minibatch,
            generator=generator,
        )
        log.write(
            {
                "phase": "imitation",
                "transitions": len(data),
                **_episode_summary(episodes),
                **_update_record(stats),
                "seconds": time.perf_counter() - started,
            }
        )
    optimizer = torch.optim.Adam(net.parameters(), lr=config.ppo_lr)
    for iteration in range(config.iterations):
        started = time.perf_counter()
        tasks = training_tasks(config.episodes_per_iteration, config.seed + 1 + iteration)
        episodes = _collect(
            runner,
            tasks,
            lambda task, recorder: GnnPolicy(net, greedy=False, seed=task.seed, recorder=recorder),
        )
        data = [
            t
            for e in episodes
            for t in _transitions(e, gamma=config.gamma, lam=config.lam, teacher=False)
        ]
        record: dict[str, object] = {
            "phase": "ppo",
            "iteration": iteration,
            "transitions": len(data),
            **_episode_summary(episodes),
        }
        if data:
            record.update(_update_record(ppo_update(net, optimizer, data, config.ppo, generator)))
        record["seconds"] = time.perf_counter() - started
        log.write(record)
    return net.eval()


@contextmanager
def local_runner(work_dir: Path, weights: RewardWeights) -> Iterator[EpisodeRunner]:
    """Start the embedded stack under ``work_dir`` and yield an episode runner on it.

    Args:
        work_dir: Holds Urza's SQLite database and artifacts, the episodes' run directories and
            the dataset cache; reusing it reuses the compiled kernels.
        weights: The reward's weights.

    Yields:
        The runner.
    """
    work_dir.mkdir(parents=True, exist_ok=True)
    urza = UrzaSettings(
        database_url=f"sqlite:///{work_dir / 'urza.sqlite'}",
        artifact_dir=work_dir / "artifacts",
        allow_anonymous_writes=True,
    )
    with embedded_stack(urza, ForgeSettings(), consumer="simic", compile_cache=False) as stack:
        yield EpisodeRunner(
            stack.client,
            [builtin(name) for name in BLUEPRINTS],
            work_dir=work_dir / "episodes",
            cache_dir=work_dir / "data",
            prepare=stack.prepare,
            weights=weights,
        )


def train_locally(config: SimicConfig, out: Path, work_dir: Path) -> Path:
    """Train on the embedded stack and save the network (the ``esper simic train`` command).

    Args:
        config: The run.
        out: Where the checkpoint goes.
        work_dir: See :func:`local_runner`.

    Returns:
        The checkpoint's path.
    """
    with local_runner(work_dir, config.weights) as runner:
        net = train(config, runner, work_dir / LOG_FILE)
    out.parent.mkdir(parents=True, exist_ok=True)
    gnn.save(net, out)
    (work_dir / "simic-config.json").write_text(
        json.dumps(asdict(config), indent=2, sort_keys=True) + "\n", encoding="utf-8"
    )
    return out
