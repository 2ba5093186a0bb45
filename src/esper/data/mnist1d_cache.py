"""MNIST-1D, generated locally with the ``mnist1d`` package and cached as ``.npz``.

The package's ``get_dataset`` downloads a pickle; it is never called. ``make_dataset`` builds the
same kind of data from templates with the package's default arguments (its own generation seed,
42, included), so the content is fixed and accuracies are comparable with the literature
(4000 training and 1000 test signals of length 40, 10 classes). A run's seed never changes the
data, only how the training split is subsampled and divided.

Generation takes a few seconds, so the arrays are cached under the caller's cache directory, in a
file named by a hash of the arguments and the package version (a new version may generate
different data). The cache is written atomically and read with ``allow_pickle=False``.
"""

import hashlib
import json
import os
import random
import tempfile
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from types import MappingProxyType, SimpleNamespace

import numpy as np
import numpy.typing as npt

MNIST1D_ARGS: MappingProxyType[str, int | float | bool | tuple[int, int]] = MappingProxyType(
    {
        "num_samples": 5000,
        "train_split": 0.8,
        "template_len": 12,
        "padding": (36, 60),
        "scale_coeff": 0.4,
        "max_translation": 48,
        "corr_noise_scale": 0.25,
        "iid_noise_scale": 2e-2,
        "shear_scale": 0.75,
        "shuffle_seq": False,
        "final_seq_length": 40,
        "seed": 42,
    }
)
"""``mnist1d.data.get_dataset_args()`` of mnist1d 0.0.2, less its download URL.

Kept here rather than read from the package so that the data cannot change silently with a new
package default (the unit tests check that the two still agree).
"""

SEQUENCE_LENGTH = 40
NUM_CLASSES = 10
_KEYS = frozenset({"x", "y", "x_test", "y_test"})


@dataclass(frozen=True)
class Mnist1dArrays:
    """The generated splits.

    Attributes:
        train_x: ``(4000, 40)`` float32 signals (centred and scaled by the package).
        train_y: ``(4000,)`` int64 labels.
        test_x: ``(1000, 40)`` float32 signals.
        test_y: ``(1000,)`` int64 labels.
    """

    train_x: npt.NDArray[np.float32]
    train_y: npt.NDArray[np.int64]
    test_x: npt.NDArray[np.float32]
    test_y: npt.NDArray[np.int64]


def cache_path(cache_dir: Path) -> Path:
    """Return the cache file of the dataset generated from ``MNIST1D_ARGS``.

    Args:
        cache_dir: Directory of cached datasets.

    Returns:
        ``cache_dir / "mnist1d-<hash>.npz"``; the hash covers the arguments and the package
        version.
    """
    identity = json.dumps(
        {"args": dict(MNIST1D_ARGS), "mnist1d": version("mnist1d")}, sort_keys=True
    )
    digest = hashlib.sha256(identity.encode("utf-8")).hexdigest()[:16]
    return cache_dir / f"mnist1d-{digest}.npz"


def generate() -> Mnist1dArrays:
    """Generate the dataset with ``mnist1d.data.make_dataset`` (a few seconds).

    ``make_dataset`` seeds Python's and numpy's global generators; their states are restored
    afterwards so that loading data never changes the caller's random streams.

    Returns:
        The arrays, converted to float32 signals and int64 labels.
    """
    # Imported here, not at the top: the package imports matplotlib.pyplot and requests
    # (seconds on a small machine), which only generation needs, not a cache hit.
    from mnist1d.data import make_dataset  # noqa: PLC0415

    python_state = random.getstate()
    numpy_state = np.random.get_state()
    try:
        data = make_dataset(SimpleNamespace(**MNIST1D_ARGS))
    finally:
        random.setstate(python_state)
        np.random.set_state(numpy_state)
    return Mnist1dArrays(
        train_x=np.asarray(data["x"], dtype=np.float32),
        train_y=np.asarray(data["y"], dtype=np.int64),
        test_x=np.asarray(data["x_test"], dtype=np.float32),
        test_y=np.asarray(data["y_test"], dtype=np.int64),
    )


def _write_atomically(path: Path, arrays: Mnist1dArrays) -> None:
    # A temporary file in the same directory, then os.replace: a reader (another run sharing
    # the cache) sees either no file or a complete one, never a partial write.
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(descriptor, "wb") as handle:
            np.savez(
                handle,
                x=arrays.train_x,
                y=arrays.train_y,
                x_test=arrays.test_x,
                y_test=arrays.test_y,
            )
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)


def _read(path: Path) -> Mnist1dArrays:
    with np.load(path, allow_pickle=False) as archive:
        if set(archive.files) != _KEYS:
            raise ValueError(
                f"{path}: cached MNIST-1D holds {sorted(archive.files)}, expected "
                f"{sorted(_KEYS)}; delete the file to regenerate it"
            )
        arrays = Mnist1dArrays(
            train_x=archive["x"],
            train_y=archive["y"],
            test_x=archive["x_test"],
            test_y=archive["y_test"],
        )
    for name, signals, labels in (
        ("train", arrays.train_x, arrays.train_y),
        ("test", arrays.test_x, arrays.test_y),
    ):
        if (
            signals.dtype != np.float32
            or labels.dtype != np.int64
            or signals.ndim != 2
            or signals.shape[1] != SEQUENCE_LENGTH
            or labels.shape != signals.shape[:1]
        ):
            raise ValueError(
                f"{path}: cached {name} split is {signals.dtype}{signals.shape} / "
                f"{labels.dtype}{labels.shape}, expected float32 (N, {SEQUENCE_LENGTH}) and int64 "
                "(N,); delete the file to regenerate it"
            )
    return arrays


def load_mnist1d(cache_dir: Path) -> Mnist1dArrays:
    """Return MNIST-1D from the cache, generating and caching it on a miss.

    Args:
        cache_dir: Directory of cached datasets (created when absent).

    Returns:
        The arrays.

    Raises:
        ValueError: When the cache file exists but does not hold the expected arrays.
    """
    path = cache_path(cache_dir)
    if path.is_file():
        return _read(path)
    arrays = generate()
    cache_dir.mkdir(parents=True, exist_ok=True)
    _write_atomically(path, arrays)
    return arrays
