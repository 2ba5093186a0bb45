"""Simic's tasks: procedurally varied training problems, each a MorphogeneticRunSpec.

A task fixes a dataset (with a training subset), a host MLP's width and depth, the epochs and the
seed; everything else (budget, lifecycle timing, decision interval, blueprints) is shared, so the
policies are compared and trained under one protocol. :func:`training_tasks` draws from the
training families; :data:`HELD_OUT_TASKS` are never drawn by it — a dataset the training never
sees (Fashion-MNIST) and MNIST-1D at a width and depth outside the training ranges — and are what
the evaluation (``benchmarks/tamiyo_policies.py``) reports on.
"""

import random
from dataclasses import dataclass

from esper.contracts.run import (
    BlueprintRef,
    BudgetSpec,
    DatasetName,
    DatasetSpec,
    HostSpec,
    InjectionSpec,
    MorphogeneticRunSpec,
    PolicyKind,
    PolicySpec,
    ScheduleSpec,
)

BLUEPRINTS = ("residual-mlp", "bottleneck-mlp", "low-rank-adapter")
"""The built-in blueprints every task may grow (all fit an MLP block's output)."""

BATCH_SIZE = 64
DECISION_INTERVAL_STEPS = 25
LIFECYCLE_STEPS = 50
"""Steps of isolated training, of blending and of probation for every seed."""


@dataclass(frozen=True)
class Task:
    """One training problem.

    Attributes:
        dataset: The offline dataset.
        train_subset: Training examples kept (None: all of them).
        hidden: Width of the host MLP's blocks.
        depth: Number of its blocks (each a seed slot).
        epochs: Epochs of training.
        seed: Seed of the subset, the host's initialisation and the data order.
    """

    dataset: DatasetName
    train_subset: int | None
    hidden: int
    depth: int
    epochs: int
    seed: int

    @property
    def name(self) -> str:
        """Return a readable, unique name: ``mnist1d-n3000-h32x2-e30-s0``."""
        subset = "all" if self.train_subset is None else str(self.train_subset)
        return (
            f"{self.dataset.value}-n{subset}-h{self.hidden}x{self.depth}-e{self.epochs}"
            f"-s{self.seed}"
        )

    def run_spec(
        self, policy: PolicyKind, *, checkpoint: str | None = None, max_added_params: int = 20_000
    ) -> MorphogeneticRunSpec:
        """Return the run of this task under a policy.

        Args:
            policy: Which policy grows (``none`` for the no-growth baseline).
            checkpoint: The network of a ``gnn`` policy.
            max_added_params: The growth budget.

        Returns:
            The run: CPU, waiting for its kernels (so every policy sees the same candidates
            from the first boundary), no separate baseline.
        """
        return MorphogeneticRunSpec(
            host=HostSpec(zoo="mlp", kwargs={"hidden": self.hidden, "depth": self.depth}),
            dataset=DatasetSpec(
                name=self.dataset,
                batch_size=BATCH_SIZE,
                validation_fraction=0.2,
                train_subset=self.train_subset,
            ),
            budget=BudgetSpec(max_added_params=max_added_params, max_seeds=2),
            policy=PolicySpec(
                kind=policy,
                checkpoint=checkpoint,
                decision_interval_steps=DECISION_INTERVAL_STEPS,
                plateau_patience=2,
                plateau_threshold=0.01,
            ),
            schedule=ScheduleSpec(
                epochs=self.epochs,
                learning_rate=0.003,
                optimizer="adamw",
                seed_training_steps=LIFECYCLE_STEPS,
                blending_steps=LIFECYCLE_STEPS,
                probation_steps=LIFECYCLE_STEPS,
                alpha_schedule="cosine",
            ),
            injection=InjectionSpec(module_types=["MLPBlock"]),
            blueprints=[BlueprintRef(name) for name in BLUEPRINTS],
            wait_for_kernels=policy is not PolicyKind.NONE,
            baseline=False,
            device="cpu",
            seed=self.seed,
        )


_TRAINING_FAMILIES: tuple[tuple[DatasetName, tuple[int | None, ...]], ...] = (
    (DatasetName.MNIST1D, (1500, 2500, 4000)),
    (DatasetName.DIGITS, (None,)),
)
_TRAINING_WIDTHS = (16, 24, 32, 48)
_TRAINING_DEPTHS = (1, 2, 3)
_TRAINING_EPOCHS = (20, 30)

HELD_OUT_TASKS: tuple[Task, ...] = (
    Task(DatasetName.FASHION_MNIST, 3000, hidden=32, depth=2, epochs=20, seed=0),
    Task(DatasetName.FASHION_MNIST, 5000, hidden=64, depth=2, epochs=20, seed=0),
    Task(DatasetName.MNIST1D, 3000, hidden=40, depth=4, epochs=30, seed=0),
)
"""The evaluation's tasks (their seeds are varied there): Fashion-MNIST is never trained on,
and no training task has width 40, 64 or depth 4."""


def training_tasks(count: int, seed: int) -> list[Task]:
    """Draw training tasks (never one of :data:`HELD_OUT_TASKS`'s configurations).

    Args:
        count: How many.
        seed: Seed of the draw; task ``i`` gets task seed ``seed * 1000 + i``.

    Returns:
        The tasks, in draw order.
    """
    rng = random.Random(seed)
    tasks = []
    for index in range(count):
        dataset, subsets = rng.choice(_TRAINING_FAMILIES)
        tasks.append(
            Task(
                dataset=dataset,
                train_subset=rng.choice(subsets),
                hidden=rng.choice(_TRAINING_WIDTHS),
                depth=rng.choice(_TRAINING_DEPTHS),
                epochs=rng.choice(_TRAINING_EPOCHS),
                seed=seed * 1000 + index,
            )
        )
    return tasks
