"""The governor's loss watch: accumulated on the device, judged at decision boundaries.

Every step adds its loss to a device-side sum and running maximum (no host sync); at a boundary
one transfer reads both. A non-finite value anywhere in the window, or a window maximum above
``spike_factor`` times the previous healthy window's mean, calls for a rollback.
"""

import math
from typing import TypedDict

import torch
from torch import Tensor


class LossWindow(TypedDict):
    """The losses of the current window: their sum, maximum and count."""

    sum: Tensor
    max: Tensor
    count: int


class LossMonitor:
    """Watches the training loss for divergence.

    Args:
        device: Where losses live.
        spike_factor: Window maximum over previous mean that counts as a spike.
    """

    def __init__(self, device: torch.device, spike_factor: float) -> None:
        """Start an empty window."""
        if spike_factor <= 1.0:
            raise ValueError(f"spike_factor must exceed 1, got {spike_factor}")
        self._spike_factor = spike_factor
        self._sum = torch.zeros((), device=device)
        self._max = torch.full((), -math.inf, device=device)
        self._count = 0
        self.previous_mean: float | None = None

    def record(self, loss: Tensor) -> None:
        """Add one step's loss (device-side only).

        Args:
            loss: The step's scalar loss.
        """
        value = loss.detach().float()
        self._sum += value
        torch.maximum(self._max, value, out=self._max)
        self._count += 1

    def window(self) -> LossWindow:
        """Return the window so far (tensor copies), for checkpoints."""
        return {"sum": self._sum.clone(), "max": self._max.clone(), "count": self._count}

    def load_window(self, window: LossWindow) -> None:
        """Restore :meth:`window`'s output.

        Args:
            window: The saved window.
        """
        self._sum.copy_(window["sum"])
        self._max.copy_(window["max"])
        self._count = window["count"]

    def judge(self) -> tuple[float, str | None]:
        """Read the window, start a new one, and say whether training went wrong.

        Returns:
            The window's mean loss, and the problem (None when healthy). A healthy window's
            mean becomes the reference for the next spike check.
        """
        if self._count == 0:
            return (self.previous_mean or 0.0), None
        total, largest = torch.stack((self._sum, self._max)).tolist()
        mean = total / self._count
        self._sum.zero_()
        self._max.fill_(-math.inf)
        self._count = 0
        if not (math.isfinite(total) and math.isfinite(largest)):
            return mean, "the training loss was not finite"
        reference = self.previous_mean
        if reference is not None and largest > self._spike_factor * reference:
            return mean, (
                f"loss spike: {largest:.4g} exceeds {self._spike_factor:g}x the previous mean "
                f"{reference:.4g}"
            )
        self.previous_mean = mean
        return mean, None
