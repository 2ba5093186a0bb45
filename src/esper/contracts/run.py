"""MorphogeneticRunSpec: everything needed to start a training run that grows its model.

The same document is the ``esper run CONFIG`` file (YAML) and the ``spec`` of a
``MorphogeneticRun`` custom resource.
"""

from enum import StrEnum
from typing import Annotated, Literal

from pydantic import Field, StringConstraints, model_validator

from esper.contracts._base import Contract
from esper.contracts.types import PRESERVE_UNKNOWN_FIELDS, Count, ShortText

ImportPath = Annotated[
    str,
    StringConstraints(pattern=r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_]\w*$"),
]
"""A ``package.module:factory`` reference to a callable that returns an ``nn.Module``."""

KwargName = Annotated[str, StringConstraints(pattern=r"^[a-z_][a-z0-9_]{0,62}$")]
"""A keyword argument name of a host model factory."""

KwargValue = int | float | bool | str
"""A keyword argument value passed to a host model factory."""


class HostSpec(Contract):
    """The host model to wrap: a zoo name or the import path of the user's own factory.

    Attributes:
        zoo: Name of a model in ``esper.zoo``.
        factory: ``package.module:callable`` returning an ``nn.Module``.
        kwargs: Keyword arguments for the zoo entry or factory.
    """

    zoo: Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_-]{0,62}$")] | None = None
    factory: ImportPath | None = None
    kwargs: dict[KwargName, KwargValue] = Field(
        default_factory=dict,
        max_length=32,
        # Values are scalars of several types, which a structural CRD schema cannot express;
        # the CRD keeps them as free-form and the contract validates them.
        json_schema_extra={PRESERVE_UNKNOWN_FIELDS: True},
    )

    @model_validator(mode="after")
    def _exactly_one_source(self) -> "HostSpec":
        if (self.zoo is None) == (self.factory is None):
            raise ValueError("host names exactly one of zoo or factory")
        return self


class DatasetName(StrEnum):
    """The offline datasets Esper ships loaders for."""

    FASHION_MNIST = "fashion-mnist"
    MNIST1D = "mnist1d"
    DIGITS = "digits"


class DatasetSpec(Contract):
    """Which data to train on.

    Attributes:
        name: The dataset.
        batch_size: Training batch size.
        validation_fraction: Share of the training split held out for validation.
        train_subset: Use only this many training examples (for quick runs); all when absent.
    """

    name: DatasetName
    batch_size: int = Field(default=128, ge=1, le=65536)
    validation_fraction: float = Field(default=0.1, gt=0.0, le=0.5)
    train_subset: int | None = Field(default=None, ge=1, le=100_000_000)


class BudgetSpec(Contract):
    """How much growth a run may afford.

    Attributes:
        max_added_params: Parameters that seeds may add in total.
        max_seeds: Seeds alive or fossilized at once.
    """

    max_added_params: Count
    max_seeds: int = Field(default=4, ge=0, le=512)


class PolicyKind(StrEnum):
    """Which controller decides the growth."""

    HEURISTIC = "heuristic"
    GNN = "gnn"
    RANDOM = "random"
    NONE = "none"


class PolicySpec(Contract):
    """The controller (Tamiyo) and how often it is consulted.

    Attributes:
        kind: Which policy.
        checkpoint: Path of a policy checkpoint (GNN only; the packaged one when absent).
        decision_interval_steps: Training steps between decision boundaries (each one also
            evaluates on the validation split).
        plateau_patience: Decision boundaries without enough validation-loss improvement before
            the heuristic policy calls a plateau.
        plateau_threshold: Relative validation-loss improvement that counts as progress.
        min_contribution: Smallest counterfactual contribution (validation loss without the
            seed minus with it) that earns a seed fossilization at the end of probation.
    """

    kind: PolicyKind = PolicyKind.HEURISTIC
    checkpoint: ShortText | None = None
    decision_interval_steps: int = Field(default=100, ge=1, le=1_000_000)
    plateau_patience: int = Field(default=2, ge=1, le=10_000)
    plateau_threshold: float = Field(default=0.01, ge=0.0, le=1.0)
    min_contribution: float = Field(default=0.0, ge=-1.0, le=1000.0)

    @model_validator(mode="after")
    def _checkpoint_only_for_gnn(self) -> "PolicySpec":
        if self.checkpoint is not None and self.kind is not PolicyKind.GNN:
            raise ValueError(f"checkpoint applies to the gnn policy, not '{self.kind.value}'")
        return self


class AlphaSchedule(StrEnum):
    """Shape of the blend ramp from 0 to 1."""

    LINEAR = "linear"
    COSINE = "cosine"
    SIGMOID = "sigmoid"


class ScheduleSpec(Contract):
    """Optimisation and seed-lifecycle timing.

    Attributes:
        epochs: Training epochs.
        learning_rate: Learning rate of the host and seeds.
        optimizer: Optimiser family.
        weight_decay: Decoupled weight decay.
        seed_training_steps: Steps a seed trains in isolation before blending.
        blending_steps: Steps of the alpha ramp.
        probation_steps: Steps of probation before the fossilize-or-cull verdict.
        alpha_schedule: Shape of the ramp.
        loss_spike_factor: The governor rolls back when a window's largest training loss
            exceeds this multiple of the previous window's mean (or any loss is not finite).
    """

    epochs: int = Field(ge=1, le=100_000)
    learning_rate: float = Field(gt=0.0, le=10.0)
    optimizer: Literal["sgd", "adam", "adamw"] = "adamw"
    weight_decay: float = Field(default=0.0, ge=0.0, le=1.0)
    seed_training_steps: int = Field(default=200, ge=1, le=10_000_000)
    blending_steps: int = Field(default=200, ge=1, le=10_000_000)
    probation_steps: int = Field(default=200, ge=1, le=10_000_000)
    alpha_schedule: AlphaSchedule = AlphaSchedule.LINEAR
    loss_spike_factor: float = Field(default=4.0, gt=1.0, le=1e6)


class InjectionSpec(Contract):
    """Where seed slots go: after modules matched by name glob and/or by type.

    Attributes:
        module_globs: ``fnmatch`` patterns over dotted module names (``layer*.0.conv2``).
        module_types: Class names (``Linear``, ``Conv2d``, ``TransformerEncoderLayer``).
    """

    module_globs: list[Annotated[str, StringConstraints(min_length=1, max_length=256)]] = Field(
        default_factory=list, max_length=64
    )
    module_types: list[Annotated[str, StringConstraints(pattern=r"^[A-Za-z_]\w{0,127}$")]] = Field(
        default_factory=list, max_length=64
    )

    @model_validator(mode="after")
    def _something_selected(self) -> "InjectionSpec":
        if not self.module_globs and not self.module_types:
            raise ValueError("injection selects no module: give moduleGlobs or moduleTypes")
        return self


BlueprintRef = Annotated[str, StringConstraints(min_length=1, max_length=256)]
"""A blueprint a run may grow: a library name (``residual-mlp``) or, for local runs, the path of a
blueprint file (YAML or JSON ``BlueprintIR``, or a ``Blueprint`` manifest), relative to the
config file."""


class MorphogeneticRunSpec(Contract):
    """A training run that may grow its host model.

    Attributes:
        host: The host model.
        dataset: The data.
        budget: Growth budget.
        policy: The controller.
        schedule: Optimisation and lifecycle timing.
        injection: Where seed slots go.
        blueprints: Blueprints the run submits and may grow; when empty, every kernel Urza has
            Validated for a slot's target is a candidate.
        wait_for_kernels: Before the first training step, wait until each listed blueprint's
            kernel for each slot target is Validated or Rejected. The training loop itself never
            waits; this only delays its start, so a short run can grow from its first decision.
        baseline: Also train the same host without growth (same seed and data order) and
            report both.
        device: ``cpu``, ``cuda`` or ``auto`` (CUDA when available).
        seed: Random seed of the run (data order, initialisation).
    """

    host: HostSpec
    dataset: DatasetSpec
    budget: BudgetSpec
    policy: PolicySpec = Field(default_factory=PolicySpec)
    schedule: ScheduleSpec
    injection: InjectionSpec
    blueprints: list[BlueprintRef] = Field(default_factory=list, max_length=64)
    wait_for_kernels: bool = False
    baseline: bool = False
    device: Literal["cpu", "cuda", "auto"] = "auto"
    seed: int = Field(default=0, ge=0, le=2**31 - 1)
