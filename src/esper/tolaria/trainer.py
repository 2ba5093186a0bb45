"""The training loop: device-agnostic, AMP on CUDA, growth through the controller.

The split tensors are moved to the device once; each epoch's order comes from a generator
seeded with the run seed and the epoch, so a run resumed from an epoch checkpoint sees exactly
the batches it would have seen. Nothing in the step path reads a value back to the host; the
controller does that at decision boundaries.
"""

import math
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import TypedDict

import torch
from torch import Tensor, nn
from torch.nn import functional

from esper.tolaria.controller import ControllerCheckpoint, Evaluation, MorphogeneticController
from esper.tolaria.flops import FlopMeter

TRAINER_CHECKPOINT_VERSION = 2
EVAL_BATCH = 1024


@dataclass(frozen=True)
class Split:
    """Features and labels of one split, on the training device.

    Attributes:
        features: ``[N, ...]`` float tensor.
        labels: ``[N]`` class indices.
    """

    features: Tensor
    labels: Tensor

    def __len__(self) -> int:
        """Return the number of examples."""
        return int(self.labels.shape[0])


def autocast_for(device: torch.device) -> AbstractContextManager[object]:
    """Return the mixed-precision context for a device: bf16 autocast on CUDA, none on CPU.

    Args:
        device: The training device.

    Returns:
        The context manager.
    """
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return nullcontext()


def evaluate(model: nn.Module, split: Split, device: torch.device) -> Evaluation:
    """Return the model's mean cross-entropy and accuracy on a split (one host sync).

    The model is put in eval mode for the pass and returned to its previous mode.

    Args:
        model: The model.
        split: The split.
        device: Where it runs.

    Returns:
        Loss and accuracy.
    """
    was_training = model.training
    model.eval()
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device)
    with torch.no_grad(), autocast_for(device):
        for start in range(0, len(split), EVAL_BATCH):
            features = split.features[start : start + EVAL_BATCH]
            labels = split.labels[start : start + EVAL_BATCH]
            logits = model(features).float()
            loss_sum += functional.cross_entropy(logits, labels, reduction="sum")
            correct += (logits.argmax(dim=1) == labels).sum()
    model.train(was_training)
    total, hits = torch.stack((loss_sum, correct)).tolist()
    return Evaluation(loss=total / len(split), accuracy=hits / len(split))


class TrainerCheckpoint(TypedDict):
    """An end-of-epoch checkpoint: the controller's state plus the random generators."""

    version: int
    epochs_done: int
    train_seconds: float
    train_flops: int
    controller: ControllerCheckpoint
    cpu_rng: Tensor
    cuda_rng: list[Tensor]


@dataclass(frozen=True)
class StepInfo:
    """Where training is, for progress displays.

    Attributes:
        step: Steps done.
        total_steps: Steps planned.
        epoch: Current epoch (0-based).
    """

    step: int
    total_steps: int
    epoch: int


@dataclass(frozen=True)
class EpochInfo:
    """A finished epoch, for progress reports.

    Attributes:
        epoch: Epochs finished, this one included (1 after the first).
        step: Steps done.
        train_loss: Mean training loss over the epoch's steps whose loss was finite; None when
            none was (the governor rolls such steps back).
        val_loss: Validation loss after the epoch.
        val_accuracy: Validation accuracy after the epoch.
        params: Parameters of the model now (host plus seeds).
        train_flops: Training FLOPs counted so far (see :mod:`esper.tolaria.flops`).
    """

    epoch: int
    step: int
    train_loss: float | None
    val_loss: float
    val_accuracy: float
    params: int
    train_flops: int


class Trainer:
    """Trains a wrapped model with its controller.

    Args:
        controller: The controller (it holds the model and optimizer).
        train: The training split.
        epochs: Epochs to train.
        batch_size: Examples per step.
        seed: Run seed (data order).
        device: Where it trains.
        checkpoint_path: Where to write a checkpoint after every epoch, if anywhere.
        on_step: Called every ``progress_every`` steps (host-side values only).
        progress_every: Steps between ``on_step`` calls.
        on_epoch: Called after every epoch (and its checkpoint). Only when it is set does the
            loop keep the epoch's loss (device-side, read once per epoch) and evaluate the
            validation split at the epoch's end.

    Attributes:
        flops: The run's FLOP count so far (training steps and the controller's work).
    """

    def __init__(
        self,
        controller: MorphogeneticController,
        train: Split,
        *,
        epochs: int,
        batch_size: int,
        seed: int,
        device: torch.device,
        checkpoint_path: Path | None = None,
        on_step: Callable[[StepInfo], None] | None = None,
        progress_every: int = 10,
        on_epoch: Callable[[EpochInfo], None] | None = None,
    ) -> None:
        """Prepare the loop."""
        self.controller = controller
        self._train = train
        self._epochs = epochs
        self._batch_size = batch_size
        self._seed = seed
        self._device = device
        self._checkpoint_path = checkpoint_path
        self._on_step = on_step
        self._progress_every = progress_every
        self._on_epoch = on_epoch
        self.steps_per_epoch = math.ceil(len(train) / batch_size)
        self.total_steps = self.steps_per_epoch * epochs
        self.epochs_done = 0
        self.train_seconds = 0.0
        self.flops = FlopMeter()

    def fit(self) -> None:
        """Train the remaining epochs (all of them, or those after a restored checkpoint)."""
        model = self.controller.model
        optimizer = self.controller.optimizer
        model.train()
        for epoch in range(self.epochs_done, self._epochs):
            started = time.perf_counter()
            self.controller.epoch = epoch
            order = torch.randperm(len(self._train), generator=self._epoch_generator(epoch))
            order = order.to(self._device)
            # Sum and count of the epoch's finite losses, kept on the device: no host sync
            # per step.
            epoch_loss = torch.zeros(2, device=self._device)
            for start in range(0, len(self._train), self._batch_size):
                index = order[start : start + self._batch_size]
                features = self._train.features[index]
                labels = self._train.labels[index]
                with self.flops.training_step(model, len(index)):
                    optimizer.zero_grad(set_to_none=True)
                    with autocast_for(self._device):
                        logits = model(features)
                    loss = functional.cross_entropy(logits.float(), labels)
                    loss.backward()
                    optimizer.step()
                self._after_step(loss)
                if self._on_epoch is not None:
                    _accumulate(epoch_loss, loss.detach())
                if self._on_step is not None and self.controller.step % self._progress_every == 0:
                    self._on_step(StepInfo(self.controller.step, self.total_steps, epoch))
            self.epochs_done = epoch + 1
            self.train_seconds += time.perf_counter() - started
            if self._checkpoint_path is not None:
                self.save(self._checkpoint_path)
            if self._on_epoch is not None:
                self._on_epoch(self._epoch_info(epoch_loss))

    def _after_step(self, loss: Tensor) -> None:
        controller = self.controller
        if not controller.boundary_due():
            controller.after_step(loss)
            return
        curve_length = len(controller.curve)
        with self.flops.controller_work():
            controller.after_step(loss)
        if len(controller.curve) > curve_length:
            # The boundary's point carries the compute spent to reach it, its own evaluation
            # included, so accuracy can be read against FLOPs.
            controller.curve[-1] = controller.curve[-1].model_copy(
                update={"train_flops": self.flops.total}
            )

    def _epoch_info(self, epoch_loss: Tensor) -> EpochInfo:
        total, count = epoch_loss.tolist()
        with self.flops.controller_work():
            validation = self.controller.validation()
        return EpochInfo(
            epoch=self.epochs_done,
            step=self.controller.step,
            train_loss=total / count if count else None,
            val_loss=validation.loss,
            val_accuracy=validation.accuracy,
            params=self.controller.model.param_count(),
            train_flops=self.flops.total,
        )

    def _epoch_generator(self, epoch: int) -> torch.Generator:
        return torch.Generator().manual_seed(self._seed * 100_003 + epoch)

    def checkpoint(self) -> TrainerCheckpoint:
        """Return the state to resume from after the last finished epoch."""
        cuda_rng = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []
        return {
            "version": TRAINER_CHECKPOINT_VERSION,
            "epochs_done": self.epochs_done,
            "train_seconds": self.train_seconds,
            "train_flops": self.flops.total,
            "controller": self.controller.checkpoint(),
            "cpu_rng": torch.get_rng_state(),
            "cuda_rng": list(cuda_rng),
        }

    def save(self, path: Path) -> None:
        """Write :meth:`checkpoint` atomically (a crash mid-write leaves the previous one).

        Args:
            path: The checkpoint file.
        """
        partial = path.with_suffix(path.suffix + ".partial")
        torch.save(self.checkpoint(), partial)
        partial.replace(path)

    def restore(self, checkpoint: TrainerCheckpoint) -> None:
        """Continue from a checkpoint: morphology, optimizer, lifecycle, generators.

        Args:
            checkpoint: What :meth:`checkpoint` returned (or :func:`load_checkpoint` read).

        Raises:
            ValueError: When the checkpoint is of another version.
        """
        if checkpoint.get("version") != TRAINER_CHECKPOINT_VERSION:
            raise ValueError(f"not a version-{TRAINER_CHECKPOINT_VERSION} trainer checkpoint")
        self.controller.restore(checkpoint["controller"])
        self.epochs_done = checkpoint["epochs_done"]
        self.train_seconds = checkpoint["train_seconds"]
        self.flops = FlopMeter(checkpoint["train_flops"])
        torch.set_rng_state(checkpoint["cpu_rng"])
        if checkpoint["cuda_rng"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(checkpoint["cuda_rng"])


def _accumulate(epoch_loss: Tensor, loss: Tensor) -> None:
    # A non-finite loss is the governor's business (it rolls the window back); it must not
    # turn the epoch's mean into NaN.
    finite = torch.isfinite(loss)
    epoch_loss += torch.stack((torch.where(finite, loss, 0.0), finite.to(epoch_loss.dtype)))


def load_checkpoint(path: Path) -> TrainerCheckpoint:
    """Read a checkpoint with torch's weights-only loader (no pickled code runs).

    Args:
        path: The file.

    Returns:
        The checkpoint.

    Raises:
        FileNotFoundError: When there is none.
    """
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    loaded = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(loaded, dict):
        raise ValueError(f"{path} is not an Esper checkpoint")
    return loaded  # pytype: disable=bad-return-type
