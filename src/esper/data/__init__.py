"""Offline datasets: Fashion-MNIST (Debian package), MNIST-1D (generated), scikit-learn digits.

``load_dataset`` is the entry point; nothing in this package downloads. Needs the ``train`` extra.
"""

from esper.data.datasets import DatasetSplits, DatasetUnavailableError, load_dataset

__all__ = ["DatasetSplits", "DatasetUnavailableError", "load_dataset"]
