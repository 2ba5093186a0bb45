"""Per-slot statistics accumulated on the device, read only at decision boundaries.

Each update is a handful of in-place tensor ops on buffers that live next to the activation, so
collecting never forces a host synchronisation; :meth:`SlotStatistics.read` is the one place
values cross to the host, and Tolaria calls it once per decision boundary.
"""

from dataclasses import dataclass

import torch
from torch import Tensor, nn


@dataclass(frozen=True)
class SlotReading:
    """A slot's statistics since the last reset.

    Attributes:
        activation_mean: Mean of the host activation at the slot.
        activation_std: Its standard deviation.
        dead_fraction: Share of exactly-zero activations.
        gradient_norm: Root mean square over observed steps of the gradient's L2 norm.
        samples: Activation values observed (0 when nothing was collected).
    """

    activation_mean: float
    activation_std: float
    dead_fraction: float
    gradient_norm: float
    samples: int


class SlotStatistics(nn.Module):
    """Running sums of one slot's activations and gradients (non-persistent buffers)."""

    def __init__(self) -> None:
        """Create zeroed accumulators."""
        super().__init__()
        # [sum, sum of squares, zero count, value count, gradient norm^2 sum, gradient steps]
        self.register_buffer("sums", torch.zeros(6, dtype=torch.float32), persistent=False)

    def observe(self, activation: Tensor) -> None:
        """Add one activation tensor (and, later, its gradient) to the sums.

        Args:
            activation: The host activation at the slot.
        """
        with torch.no_grad():
            values = activation.detach().float()
            update = torch.stack(
                (
                    values.sum(),
                    values.square().sum(),
                    (values == 0).sum().float(),
                    values.new_full((), float(values.numel())),
                )
            )
            self.sums[:4] += update.to(self.sums.device)
        if activation.requires_grad and torch.is_grad_enabled():
            activation.register_hook(self._observe_gradient)

    def _observe_gradient(self, gradient: Tensor) -> None:
        with torch.no_grad():
            norm_sq = gradient.detach().float().square().sum().to(self.sums.device)
            self.sums[4] += norm_sq
            self.sums[5] += 1.0

    def reset(self) -> None:
        """Zero the sums (after a reading)."""
        self.sums.zero_()

    def raw(self) -> Tensor:
        """Return the sums as one device tensor, so several slots can be read in one transfer.

        Returns:
            A copy of the six sums.
        """
        return self.sums.detach().clone()


def reading_from(raw: list[float]) -> SlotReading:
    """Turn the six sums of :meth:`SlotStatistics.raw` into statistics.

    Args:
        raw: The sums, already on the host.

    Returns:
        The reading.
    """
    total, total_sq, zeros, count, gradient_sq, gradient_steps = raw
    if count <= 0:
        return SlotReading(0.0, 0.0, 0.0, 0.0, 0)
    mean = total / count
    variance = max(0.0, total_sq / count - mean * mean)
    gradient = (gradient_sq / gradient_steps) ** 0.5 if gradient_steps > 0 else 0.0
    return SlotReading(
        activation_mean=mean,
        activation_std=variance**0.5,
        dead_fraction=min(1.0, zeros / count),
        gradient_norm=gradient,
        samples=int(count),
    )
