"""Fashion-MNIST from the gzip-compressed idx files of the Debian package ``dataset-fashion-mnist``.

The idx format is parsed here with numpy (no torchvision, no download): a 4-byte magic number
(two zero bytes, the element type, the number of dimensions), one big-endian ``uint32`` per
dimension, then the elements. Every file is checked against what Fashion-MNIST must be, so a
truncated or foreign file fails loudly with its path instead of training on garbage.
"""

import gzip
import math
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
"""Where ``apt-get install dataset-fashion-mnist`` puts the files."""

TRAIN_IMAGES = "train-images-idx3-ubyte.gz"
TRAIN_LABELS = "train-labels-idx1-ubyte.gz"
TEST_IMAGES = "t10k-images-idx3-ubyte.gz"
TEST_LABELS = "t10k-labels-idx1-ubyte.gz"
FILE_NAMES = (TRAIN_IMAGES, TRAIN_LABELS, TEST_IMAGES, TEST_LABELS)
"""The four files a Fashion-MNIST directory must hold."""

IMAGE_SIDE = 28
NUM_CLASSES = 10
_UBYTE = 0x08
"""idx element type code of unsigned bytes, the only type Fashion-MNIST uses."""


@dataclass(frozen=True)
class FashionMnistArrays:
    """The raw splits, as stored: ``uint8`` pixels and ``uint8`` labels.

    Attributes:
        train_images: ``(60000, 28, 28)`` pixels of the training split.
        train_labels: ``(60000,)`` class indices of the training split.
        test_images: ``(10000, 28, 28)`` pixels of the test split.
        test_labels: ``(10000,)`` class indices of the test split.
    """

    train_images: npt.NDArray[np.uint8]
    train_labels: npt.NDArray[np.uint8]
    test_images: npt.NDArray[np.uint8]
    test_labels: npt.NDArray[np.uint8]


def read_idx(path: Path, ndim: int) -> npt.NDArray[np.uint8]:
    """Read a gzip-compressed idx file of unsigned bytes.

    Args:
        path: The ``.gz`` file.
        ndim: Number of dimensions the file must declare (3 for images, 1 for labels).

    Returns:
        The array, shaped as the header says.

    Raises:
        ValueError: When the file is not valid gzip, its magic number is not that of a
            ``ndim``-dimensional unsigned-byte idx file, or its length disagrees with its header.
    """
    # Only the decompression errors are caught, to name the file; anything else propagates.
    try:
        raw = gzip.decompress(path.read_bytes())
    except (gzip.BadGzipFile, EOFError, zlib.error) as error:
        raise ValueError(f"{path}: not a valid gzip file ({error})") from error
    header_size = 4 + 4 * ndim
    if len(raw) < header_size:
        raise ValueError(f"{path}: {len(raw)} bytes, shorter than an idx header ({header_size})")
    magic = raw[:4]
    if magic != bytes((0, 0, _UBYTE, ndim)):
        raise ValueError(
            f"{path}: magic number {magic.hex()} is not that of a {ndim}-d unsigned-byte idx file "
            f"({bytes((0, 0, _UBYTE, ndim)).hex()})"
        )
    dims = struct.unpack(f">{ndim}I", raw[4:header_size])
    expected = header_size + math.prod(dims)
    if len(raw) != expected:
        raise ValueError(
            f"{path}: {len(raw)} bytes, but its header {dims} implies {expected} (truncated?)"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header_size).reshape(dims)


def _read_split(
    images_path: Path, labels_path: Path
) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.uint8]]:
    images = read_idx(images_path, ndim=3)
    labels = read_idx(labels_path, ndim=1)
    if images.shape[1:] != (IMAGE_SIDE, IMAGE_SIDE):
        raise ValueError(
            f"{images_path}: images are {images.shape[1:]}, not ({IMAGE_SIDE}, {IMAGE_SIDE})"
        )
    if images.shape[0] != labels.shape[0]:
        raise ValueError(
            f"{images_path} holds {images.shape[0]} images but {labels_path} "
            f"{labels.shape[0]} labels"
        )
    if labels.size and int(labels.max()) >= NUM_CLASSES:
        raise ValueError(f"{labels_path}: label {int(labels.max())} is not below {NUM_CLASSES}")
    return images, labels


def load_fashion_mnist(directory: Path) -> FashionMnistArrays:
    """Read and check the four Fashion-MNIST files of ``directory``.

    Args:
        directory: A directory holding ``FILE_NAMES`` (the caller checks that they exist).

    Returns:
        The raw arrays.

    Raises:
        ValueError: When a file is corrupt or the files disagree with each other.
    """
    train_images, train_labels = _read_split(directory / TRAIN_IMAGES, directory / TRAIN_LABELS)
    test_images, test_labels = _read_split(directory / TEST_IMAGES, directory / TEST_LABELS)
    return FashionMnistArrays(
        train_images=train_images,
        train_labels=train_labels,
        test_images=test_images,
        test_labels=test_labels,
    )
