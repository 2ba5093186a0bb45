"""The payoff protocol's tiers: dataset, hosts, schedule and budget of each (see payoff.py).

The growth budget of each tier leaves the grown model room to stay under half of static-large's
parameters (the target's bound); everything else is shared by every arm of the tier.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

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


@dataclass(frozen=True)
class Tier:
    """One tier of the protocol.

    Attributes:
        name: Its name (``cpu``, ``smoke``, ``h100``).
        dataset: The offline dataset.
        train_subset: Training examples kept (None: all).
        host: The seed host (static-small, and where Esper starts).
        large: The reference host (static-large).
        width_key: The host kwarg that sets its width (for the FLOP-matched arm).
        widths: Widths the FLOP-matched arm may take (start, stop).
        epochs: Epochs of every arm.
        batch_size: Examples per step.
        learning_rate: AdamW's learning rate.
        lifecycle_steps: Steps of a seed's isolated training, blending and probation each.
        decision_interval: Steps between decision boundaries.
        blueprints: Blueprints Esper may grow.
        module_types: Host module classes that get seed slots.
        max_added_params: Esper's growth budget.
        max_seeds: Seeds alive or fossilized at once.
        device: ``cpu`` or ``cuda``.
        seeds: Default seeds per arm.
    """

    name: str
    dataset: DatasetName
    train_subset: int | None
    host: HostSpec
    large: HostSpec
    width_key: str
    widths: tuple[int, int]
    epochs: int
    batch_size: int
    learning_rate: float
    lifecycle_steps: int
    decision_interval: int
    blueprints: tuple[str, ...]
    module_types: tuple[str, ...]
    max_added_params: int
    max_seeds: int
    device: str
    seeds: int

    def run_spec(
        self,
        policy: PolicyKind,
        *,
        seed: int,
        host: HostSpec | None = None,
        epochs: int | None = None,
    ) -> MorphogeneticRunSpec:
        """Return one arm's run.

        Args:
            policy: The policy kind (``none`` for the static arms).
            seed: Seed of the host's initialisation, the data order and the draws.
            host: Another host than the tier's seed host.
            epochs: Another number of epochs than the tier's (the warm-up run).

        Returns:
            The run.
        """
        lifecycle = self.lifecycle_steps
        return MorphogeneticRunSpec(
            host=host or self.host,
            dataset=DatasetSpec(
                name=self.dataset,
                batch_size=self.batch_size,
                validation_fraction=0.1,
                train_subset=self.train_subset,
            ),
            budget=BudgetSpec(max_added_params=self.max_added_params, max_seeds=self.max_seeds),
            policy=PolicySpec(
                kind=policy,
                decision_interval_steps=self.decision_interval,
                plateau_patience=2,
                plateau_threshold=0.01,
            ),
            schedule=ScheduleSpec(
                epochs=epochs or self.epochs,
                learning_rate=self.learning_rate,
                optimizer="adamw",
                seed_training_steps=lifecycle,
                blending_steps=lifecycle,
                probation_steps=lifecycle,
                alpha_schedule="cosine",
            ),
            injection=InjectionSpec(module_types=list(self.module_types)),
            blueprints=[BlueprintRef(name) for name in self.blueprints],
            wait_for_kernels=policy is not PolicyKind.NONE,
            baseline=False,
            device=self.device,
            seed=seed,
        )

    def describe(self) -> dict[str, object]:
        """Return the tier's settings as plain values (for the result file)."""
        values = asdict(self)
        values["host"] = self.host.model_dump(mode="json")
        values["large"] = self.large.model_dump(mode="json")
        return values


_MLP_BLUEPRINTS = ("residual-mlp", "bottleneck-mlp", "low-rank-adapter")

CPU = Tier(
    name="cpu",
    dataset=DatasetName.MNIST1D,
    train_subset=None,
    host=HostSpec(zoo="mlp", kwargs={"hidden": 32, "depth": 2}),
    large=HostSpec(zoo="mlp", kwargs={"hidden": 128, "depth": 2}),
    width_key="hidden",
    widths=(8, 257),
    epochs=20,
    batch_size=64,
    learning_rate=0.003,
    lifecycle_steps=50,
    decision_interval=25,
    blueprints=_MLP_BLUEPRINTS,
    module_types=("MLPBlock",),
    max_added_params=8_000,
    max_seeds=2,
    device="cpu",
    seeds=3,
)

SMOKE = Tier(
    name="smoke",
    dataset=DatasetName.MNIST1D,
    train_subset=1_000,
    host=HostSpec(zoo="mlp", kwargs={"hidden": 16, "depth": 2}),
    large=HostSpec(zoo="mlp", kwargs={"hidden": 64, "depth": 2}),
    width_key="hidden",
    widths=(8, 129),
    epochs=8,
    batch_size=64,
    learning_rate=0.003,
    lifecycle_steps=10,
    decision_interval=10,
    blueprints=("residual-mlp", "bottleneck-mlp"),
    module_types=("MLPBlock",),
    max_added_params=3_000,
    max_seeds=2,
    device="cpu",
    seeds=1,
)

H100 = Tier(
    name="h100",
    dataset=DatasetName.FASHION_MNIST,
    train_subset=None,
    host=HostSpec(zoo="resnet", kwargs={"channels": 16, "depth": 4}),
    large=HostSpec(zoo="resnet", kwargs={"channels": 48, "depth": 4}),
    width_key="channels",
    widths=(8, 97),
    epochs=8,
    batch_size=256,
    learning_rate=0.003,
    lifecycle_steps=100,
    decision_interval=50,
    blueprints=("residual-conv3x3", "depthwise-separable", "squeeze-excite"),
    module_types=("ResidualBlock",),
    max_added_params=60_000,
    max_seeds=3,
    device="cuda",
    seeds=3,
)

TIERS = {tier.name: tier for tier in (CPU, SMOKE, H100)}
"""Every tier by name."""
