"""Offline datasets: real Fashion-MNIST files, generated and cached MNIST-1D, digits, splits."""

import gzip
import random
import struct
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import TensorDataset

from esper.contracts.run import DatasetName, DatasetSpec
from esper.data import (
    DatasetSplits,
    DatasetUnavailableError,
    datasets,
    fashion_mnist,
    load_dataset,
    mnist1d_cache,
)
from esper.data.datasets import FASHION_MNIST_DIR_ENV, resolve_fashion_mnist_dir

APT_COMMAND = "sudo apt-get install dataset-fashion-mnist"


def _spec(name: DatasetName, **fields: float | int | None) -> DatasetSpec:
    return DatasetSpec.model_validate({"name": name, **fields})


def _features(split: TensorDataset) -> torch.Tensor:
    return split.tensors[0]


def _labels(split: TensorDataset) -> torch.Tensor:
    return split.tensors[1]


def _assert_same(a: DatasetSplits, b: DatasetSplits) -> None:
    for first, second in ((a.train, b.train), (a.validation, b.validation), (a.test, b.test)):
        assert torch.equal(_features(first), _features(second))
        assert torch.equal(_labels(first), _labels(second))


# --- the split rules, on a fake dataset whose features are their own indices -----------------


FAKE_TRAIN = 100
FAKE_TEST = 7


def _fake_arrays(locations: object) -> datasets._Arrays:
    del locations
    return datasets._Arrays(
        train_x=np.arange(FAKE_TRAIN, dtype=np.float32)[:, None],
        train_y=np.arange(FAKE_TRAIN, dtype=np.int64) % 3,
        test_x=np.arange(FAKE_TEST, dtype=np.float32)[:, None] + 1000,
        test_y=np.zeros(FAKE_TEST, dtype=np.int64),
        num_classes=3,
    )


@pytest.fixture
def fake_digits(monkeypatch: pytest.MonkeyPatch) -> DatasetName:
    monkeypatch.setitem(datasets._LOADERS, DatasetName.DIGITS, _fake_arrays)
    return DatasetName.DIGITS


def _indices(split: TensorDataset) -> list[int]:
    return [int(value) for value in _features(split)[:, 0]]


def _load(spec: DatasetSpec, seed: int, tmp_path: Path) -> DatasetSplits:
    return load_dataset(spec, seed=seed, cache_dir=tmp_path)


def test_split_is_a_seeded_partition_of_the_training_split(
    fake_digits: DatasetName, tmp_path: Path
) -> None:
    splits = _load(_spec(fake_digits, validation_fraction=0.25), 3, tmp_path)
    train, validation = _indices(splits.train), _indices(splits.validation)
    assert len(validation) == 25
    assert len(train) == 75
    assert sorted(train + validation) == list(range(FAKE_TRAIN))
    assert train != sorted(train)  # permuted, not the first examples in order
    # Labels travel with their features.
    assert _labels(splits.train).tolist() == [index % 3 for index in train]
    assert _indices(splits.test) == [1000 + i for i in range(FAKE_TEST)]
    assert splits.input_shape == (1,)
    assert splits.num_classes == 3
    assert splits.name is DatasetName.DIGITS


def test_same_seed_same_splits_other_seed_other_splits(
    fake_digits: DatasetName, tmp_path: Path
) -> None:
    spec = _spec(fake_digits, validation_fraction=0.2)
    _assert_same(_load(spec, 11, tmp_path), _load(spec, 11, tmp_path))
    other = _load(spec, 12, tmp_path)
    assert _indices(other.validation) != _indices(_load(spec, 11, tmp_path).validation)
    assert torch.equal(_features(other.test), _features(_load(spec, 11, tmp_path).test))


def test_subset_is_carved_before_the_validation_split(
    fake_digits: DatasetName, tmp_path: Path
) -> None:
    full = _load(_spec(fake_digits, validation_fraction=0.1), 5, tmp_path)
    subset = _load(_spec(fake_digits, validation_fraction=0.1, train_subset=40), 5, tmp_path)
    assert len(subset.validation) == 4
    assert len(subset.train) == 36
    assert len(subset.test) == FAKE_TEST  # never subsampled
    # Both come from the same permutation: the subset is its first 40 indices.
    permutation = _indices(full.validation) + _indices(full.train)
    assert _indices(subset.validation) + _indices(subset.train) == permutation[:40]


def test_validation_size_is_the_floor_of_the_fraction(
    fake_digits: DatasetName, tmp_path: Path
) -> None:
    splits = _load(_spec(fake_digits, validation_fraction=0.15, train_subset=33), 0, tmp_path)
    assert len(splits.validation) == 4  # floor(4.95)
    assert len(splits.train) == 29


def test_subset_larger_than_the_training_split_is_refused(
    fake_digits: DatasetName, tmp_path: Path
) -> None:
    with pytest.raises(ValueError, match="train_subset 101 exceeds the 100 training examples"):
        _load(_spec(fake_digits, train_subset=101), 0, tmp_path)


def test_a_split_too_small_for_validation_is_refused(
    fake_digits: DatasetName, tmp_path: Path
) -> None:
    with pytest.raises(ValueError, match="leaves 0 for validation"):
        _load(_spec(fake_digits, validation_fraction=0.1, train_subset=9), 0, tmp_path)


def test_every_dataset_name_has_a_loader() -> None:
    assert set(datasets._LOADERS) == set(DatasetName)


# --- digits -----------------------------------------------------------------------------------


def test_digits_shapes_scaling_and_fixed_test_split(tmp_path: Path) -> None:
    spec = _spec(DatasetName.DIGITS)
    first = _load(spec, 0, tmp_path)
    assert first.input_shape == (64,)
    assert first.num_classes == 10
    assert len(first.test) == 359  # floor(0.2 * 1797)
    assert len(first.validation) == 143  # floor(0.1 * 1438)
    assert len(first.train) == 1438 - 143
    features = torch.cat([_features(first.train), _features(first.validation)])
    assert features.dtype == torch.float32
    assert _labels(first.train).dtype == torch.int64
    assert float(features.min()) == 0.0
    assert float(features.max()) == 1.0
    assert set(_labels(first.test).tolist()) == set(range(10))
    # The test split does not depend on the run's seed; the validation split does.
    second = _load(spec, 1, tmp_path)
    assert torch.equal(_features(first.test), _features(second.test))
    assert torch.equal(_labels(first.test), _labels(second.test))
    assert not torch.equal(_features(first.validation), _features(second.validation))


# --- Fashion-MNIST from the Debian package ---------------------------------------------------


@pytest.fixture(scope="module")
def fashion(tmp_path_factory: pytest.TempPathFactory) -> DatasetSplits:
    return load_dataset(
        _spec(DatasetName.FASHION_MNIST, validation_fraction=0.1),
        seed=0,
        cache_dir=tmp_path_factory.mktemp("cache"),
        fashion_mnist_dir=fashion_mnist.DEBIAN_DIR,
    )


def test_fashion_mnist_from_the_debian_package(fashion: DatasetSplits) -> None:
    assert fashion.input_shape == (1, 28, 28)
    assert fashion.num_classes == 10
    assert (len(fashion.train), len(fashion.validation), len(fashion.test)) == (54000, 6000, 10000)
    assert _features(fashion.train).shape == (54000, 1, 28, 28)
    assert _features(fashion.train).dtype == torch.float32
    assert _labels(fashion.test).dtype == torch.int64
    # The official test split: 1000 examples per class, first labels 9, 2, 1, 1.
    assert torch.bincount(_labels(fashion.test)).tolist() == [1000] * 10
    assert _labels(fashion.test)[:4].tolist() == [9, 2, 1, 1]


def test_fashion_mnist_is_standardised_by_the_training_statistics(
    fashion: DatasetSplits,
) -> None:
    train = torch.cat([_features(fashion.train), _features(fashion.validation)]).double()
    assert float(train.mean()) == pytest.approx(0.0, abs=1e-4)
    assert float(train.std()) == pytest.approx(1.0, abs=1e-4)
    # A black pixel is (0 - mean) / std with Fashion-MNIST's known mean 0.2860 and std 0.3530.
    assert float(train.min()) == pytest.approx(-0.2860 / 0.3530, abs=1e-3)


def test_fashion_mnist_subset_keeps_the_whole_test_split(tmp_path: Path) -> None:
    splits = load_dataset(
        _spec(DatasetName.FASHION_MNIST, train_subset=500, validation_fraction=0.2),
        seed=4,
        cache_dir=tmp_path,
    )
    assert (len(splits.train), len(splits.validation), len(splits.test)) == (400, 100, 10000)


def _write_idx(path: Path, array: np.ndarray, magic: bytes | None = None) -> None:
    header = magic or bytes((0, 0, 0x08, array.ndim))
    header += struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(gzip.compress(header + array.astype(np.uint8).tobytes()))


def _write_fashion(directory: Path, train: int = 6, test: int = 4) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    _write_idx(directory / fashion_mnist.TRAIN_IMAGES, rng.integers(0, 256, (train, 28, 28)))
    _write_idx(directory / fashion_mnist.TRAIN_LABELS, np.arange(train) % 10)
    _write_idx(directory / fashion_mnist.TEST_IMAGES, rng.integers(0, 256, (test, 28, 28)))
    _write_idx(directory / fashion_mnist.TEST_LABELS, np.arange(test) % 10)
    return directory


def test_fashion_mnist_from_another_directory_is_scaled_then_standardised(
    tmp_path: Path,
) -> None:
    directory = _write_fashion(tmp_path / "fashion")
    splits = load_dataset(
        _spec(DatasetName.FASHION_MNIST, validation_fraction=0.5),
        seed=0,
        cache_dir=tmp_path,
        fashion_mnist_dir=directory,
    )
    raw = fashion_mnist.load_fashion_mnist(directory)
    scaled = raw.train_images.astype(np.float64) / 255
    expected_test = (raw.test_images / 255 - scaled.mean()) / scaled.std()
    assert np.allclose(_features(splits.test)[:, 0].numpy(), expected_test, atol=1e-5)
    assert _labels(splits.test).tolist() == [0, 1, 2, 3]


def test_missing_fashion_mnist_names_the_files_and_the_install_command(tmp_path: Path) -> None:
    with pytest.raises(DatasetUnavailableError) as caught:
        load_dataset(
            _spec(DatasetName.FASHION_MNIST),
            seed=0,
            cache_dir=tmp_path,
            fashion_mnist_dir=tmp_path / "nowhere",
        )
    message = str(caught.value)
    assert APT_COMMAND in message
    assert str(tmp_path / "nowhere") in message
    assert fashion_mnist.TRAIN_IMAGES in message
    assert FASHION_MNIST_DIR_ENV in message


def test_one_missing_file_is_named(tmp_path: Path) -> None:
    directory = _write_fashion(tmp_path / "fashion")
    (directory / fashion_mnist.TEST_LABELS).unlink()
    with pytest.raises(DatasetUnavailableError, match=fashion_mnist.TEST_LABELS) as caught:
        load_dataset(
            _spec(DatasetName.FASHION_MNIST),
            seed=0,
            cache_dir=tmp_path,
            fashion_mnist_dir=directory,
        )
    assert fashion_mnist.TRAIN_IMAGES not in str(caught.value)


def test_fashion_mnist_directory_comes_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(FASHION_MNIST_DIR_ENV, str(tmp_path / "from-env"))
    assert resolve_fashion_mnist_dir() == tmp_path / "from-env"
    assert resolve_fashion_mnist_dir(tmp_path / "explicit") == tmp_path / "explicit"
    with pytest.raises(DatasetUnavailableError, match="from-env"):
        load_dataset(_spec(DatasetName.FASHION_MNIST), seed=0, cache_dir=tmp_path)
    monkeypatch.delenv(FASHION_MNIST_DIR_ENV)
    assert resolve_fashion_mnist_dir() == Path("/usr/share/datasets/fashion-mnist")


def _corrupt_magic(directory: Path) -> Path:
    path = directory / fashion_mnist.TRAIN_IMAGES
    _write_idx(path, np.zeros((6, 28, 28)), magic=bytes((0, 0, 0x0D, 3)))  # float, not ubyte
    return path


def _truncate(directory: Path) -> Path:
    path = directory / fashion_mnist.TEST_IMAGES
    raw = gzip.decompress(path.read_bytes())
    path.write_bytes(gzip.compress(raw[:-10]))
    return path


def _not_gzip(directory: Path) -> Path:
    path = directory / fashion_mnist.TRAIN_LABELS
    path.write_bytes(b"this is not gzip")
    return path


def _cut_gzip(directory: Path) -> Path:
    path = directory / fashion_mnist.TRAIN_LABELS
    path.write_bytes(path.read_bytes()[:-12])
    return path


def _no_header(directory: Path) -> Path:
    path = directory / fashion_mnist.TEST_LABELS
    path.write_bytes(gzip.compress(b"\x00\x00"))
    return path


def _wrong_image_size(directory: Path) -> Path:
    path = directory / fashion_mnist.TRAIN_IMAGES
    _write_idx(path, np.zeros((6, 32, 32)))
    return path


def _count_mismatch(directory: Path) -> Path:
    path = directory / fashion_mnist.TEST_IMAGES
    _write_idx(path, np.zeros((5, 28, 28)))
    return path


def _label_out_of_range(directory: Path) -> Path:
    path = directory / fashion_mnist.TRAIN_LABELS
    _write_idx(path, np.array([0, 1, 2, 3, 4, 10]))
    return path


@pytest.mark.parametrize(
    ("corrupt", "message"),
    [
        (_corrupt_magic, "magic number 00000d03"),
        (_truncate, "truncated"),
        (_not_gzip, "not a valid gzip file"),
        (_cut_gzip, "not a valid gzip file"),
        (_no_header, "shorter than an idx header"),
        (_wrong_image_size, r"images are \(32, 32\)"),
        (_count_mismatch, "holds 5 images but"),
        (_label_out_of_range, "label 10 is not below 10"),
    ],
)
def test_corrupt_idx_files_raise_value_errors_naming_the_file(
    tmp_path: Path, corrupt: Callable[[Path], Path], message: str
) -> None:
    directory = _write_fashion(tmp_path / "fashion")
    path = corrupt(directory)
    with pytest.raises(ValueError, match=message) as caught:
        load_dataset(
            _spec(DatasetName.FASHION_MNIST),
            seed=0,
            cache_dir=tmp_path,
            fashion_mnist_dir=directory,
        )
    assert str(path) in str(caught.value)


# --- MNIST-1D, generated once per module and cached ------------------------------------------


class _Generation:
    """What happened while the module fixture generated MNIST-1D."""

    def __init__(self, cache_dir: Path, splits: DatasetSplits, calls: int, rng_kept: bool) -> None:
        self.cache_dir = cache_dir
        self.splits = splits
        self.calls = calls
        self.rng_kept = rng_kept


@pytest.fixture(scope="module")
def mnist1d(tmp_path_factory: pytest.TempPathFactory) -> _Generation:
    cache_dir = tmp_path_factory.mktemp("mnist1d") / "nested" / "cache"
    calls = 0
    real_generate = mnist1d_cache.generate

    def counting_generate() -> mnist1d_cache.Mnist1dArrays:
        nonlocal calls
        calls += 1
        return real_generate()

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(mnist1d_cache, "generate", counting_generate)
        numpy_before = np.random.get_state()[1].copy()
        python_before = random.getstate()
        splits = load_dataset(_spec(DatasetName.MNIST1D), seed=0, cache_dir=cache_dir)
        rng_kept = (
            np.array_equal(np.random.get_state()[1], numpy_before)
            and random.getstate() == python_before
        )
    return _Generation(cache_dir, splits, calls, rng_kept)


def test_mnist1d_is_generated_with_the_package_defaults(mnist1d: _Generation) -> None:
    from mnist1d.data import get_dataset_args

    package = get_dataset_args(as_dict=True)
    del package["url"]
    ours = dict(mnist1d_cache.MNIST1D_ARGS)
    ours["padding"] = list(ours["padding"])  # a tuple here, a list in the package
    assert package == ours
    assert mnist1d.calls == 1
    splits = mnist1d.splits
    assert splits.input_shape == (40,)
    assert splits.num_classes == 10
    assert (len(splits.train), len(splits.validation), len(splits.test)) == (3600, 400, 1000)
    assert _features(splits.train).dtype == torch.float32
    assert _labels(splits.test).dtype == torch.int64
    assert set(_labels(splits.test).tolist()) == set(range(10))


def test_mnist1d_generation_leaves_the_global_generators_alone(mnist1d: _Generation) -> None:
    assert mnist1d.rng_kept


def test_mnist1d_second_load_reads_the_cache(
    mnist1d: _Generation, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_generation() -> mnist1d_cache.Mnist1dArrays:
        raise AssertionError("MNIST-1D was regenerated despite the cache")

    monkeypatch.setattr(mnist1d_cache, "generate", no_generation)
    again = load_dataset(_spec(DatasetName.MNIST1D), seed=0, cache_dir=mnist1d.cache_dir)
    _assert_same(again, mnist1d.splits)
    files = sorted(path.name for path in mnist1d.cache_dir.iterdir())
    assert files == [mnist1d_cache.cache_path(mnist1d.cache_dir).name]  # no temporary left
    assert files[0].startswith("mnist1d-")
    assert files[0].endswith(".npz")


def test_mnist1d_seed_changes_the_split_not_the_data(mnist1d: _Generation) -> None:
    other = load_dataset(_spec(DatasetName.MNIST1D), seed=1, cache_dir=mnist1d.cache_dir)
    assert torch.equal(_features(other.test), _features(mnist1d.splits.test))
    assert not torch.equal(_features(other.validation), _features(mnist1d.splits.validation))


def test_generation_is_deterministic(mnist1d: _Generation) -> None:
    # The cached copy equals a fresh generation: the content is fixed by the package's seed.
    fresh = mnist1d_cache.generate()
    with np.load(mnist1d_cache.cache_path(mnist1d.cache_dir), allow_pickle=False) as cached:
        assert np.array_equal(cached["x_test"], fresh.test_x)
        assert np.array_equal(cached["y"], fresh.train_y)


def test_a_cache_with_other_arrays_is_refused(tmp_path: Path) -> None:
    path = mnist1d_cache.cache_path(tmp_path)
    np.savez(path, x=np.zeros((2, 40), dtype=np.float32))
    with pytest.raises(ValueError, match="delete the file to regenerate it") as caught:
        load_dataset(_spec(DatasetName.MNIST1D), seed=0, cache_dir=tmp_path)
    assert str(path) in str(caught.value)


@pytest.mark.parametrize(
    ("x_test", "y_test"),
    [
        (np.zeros((3, 40), dtype=np.float64), np.zeros(3, dtype=np.int64)),
        (np.zeros((3, 39), dtype=np.float32), np.zeros(3, dtype=np.int64)),
        (np.zeros((3, 40), dtype=np.float32), np.zeros(4, dtype=np.int64)),
        (np.zeros((3, 40), dtype=np.float32), np.zeros(3, dtype=np.int32)),
    ],
)
def test_a_cache_with_wrong_shapes_or_types_is_refused(
    tmp_path: Path, x_test: np.ndarray, y_test: np.ndarray
) -> None:
    path = mnist1d_cache.cache_path(tmp_path)
    np.savez(
        path,
        x=np.zeros((20, 40), dtype=np.float32),
        y=np.zeros(20, dtype=np.int64),
        x_test=x_test,
        y_test=y_test,
    )
    with pytest.raises(ValueError, match="cached test split"):
        load_dataset(_spec(DatasetName.MNIST1D), seed=0, cache_dir=tmp_path)


def test_the_cache_name_follows_the_package_version(monkeypatch: pytest.MonkeyPatch) -> None:
    before = mnist1d_cache.cache_path(Path("/cache"))
    monkeypatch.setattr(mnist1d_cache, "version", lambda package: "999")
    after = mnist1d_cache.cache_path(Path("/cache"))
    assert before.parent == after.parent == Path("/cache")
    assert before != after


def test_a_failed_cache_write_leaves_no_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    small = mnist1d_cache.Mnist1dArrays(
        train_x=np.zeros((20, 40), dtype=np.float32),
        train_y=np.zeros(20, dtype=np.int64),
        test_x=np.zeros((3, 40), dtype=np.float32),
        test_y=np.zeros(3, dtype=np.int64),
    )
    monkeypatch.setattr(mnist1d_cache, "generate", lambda: small)

    def full_disk(*args: object, **kwargs: object) -> None:
        raise OSError("No space left on device")

    monkeypatch.setattr(np, "savez", full_disk)
    with pytest.raises(OSError, match="No space left"):
        load_dataset(_spec(DatasetName.MNIST1D), seed=0, cache_dir=tmp_path / "cache")
    assert list((tmp_path / "cache").iterdir()) == []
