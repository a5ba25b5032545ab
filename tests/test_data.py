"""Tests for fedcore.data: every CIFAR-10 layout, caching, limits, errors and the synthetic set."""

from __future__ import annotations

import os
import pickle
import sys
import tempfile
import types
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fedcore import data
from fedcore.data import CIFAR10_CLASSES, DataSplit, ImageSet, default_data_dir, load_dataset
from fedcore.errors import UsageError
from tests.fixtures import (
    batch_pickle,
    fake_images,
    write_batches_py,
    write_image_folder,
    write_tar_gz,
)


@pytest.fixture(autouse=True)
def isolated_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FEDLAUNCH_DATA_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))


@pytest.fixture(scope="module")
def synthetic() -> DataSplit:
    return load_dataset("synthetic", seed=0, log=lambda _: None)


def load_quiet(root: Path, **kwargs: object) -> DataSplit:
    return load_dataset("cifar10", root, download=False, log=lambda _: None, **kwargs)  # type: ignore[arg-type]


def assert_split_equals(split: DataSplit, arrays: tuple[np.ndarray, ...]) -> None:
    train_images, train_labels, test_images, test_labels = arrays
    np.testing.assert_array_equal(split.train.images, train_images)
    np.testing.assert_array_equal(split.train.labels, train_labels)
    np.testing.assert_array_equal(split.test.images, test_images)
    np.testing.assert_array_equal(split.test.labels, test_labels)


def test_batches_folder_loads_written_pixels_and_labels(tmp_path: Path) -> None:
    arrays = write_batches_py(tmp_path, n_train=50, n_test=20)

    split = load_quiet(tmp_path)

    assert_split_equals(split, arrays)
    assert split.train.images.dtype == np.uint8 and split.train.labels.dtype == np.int64
    assert (len(split.train), len(split.test)) == (50, 20)
    assert split.classes == CIFAR10_CLASSES
    assert split.source == f"cifar-10-batches-py in {tmp_path / 'cifar-10-batches-py'}"


def test_data_dir_may_be_the_batches_folder_itself(tmp_path: Path) -> None:
    arrays = write_batches_py(tmp_path, n_train=15, n_test=5)

    split = load_quiet(tmp_path / "cifar-10-batches-py")

    assert_split_equals(split, arrays)


def test_tar_gz_loads_without_extracting(tmp_path: Path) -> None:
    arrays = write_tar_gz(tmp_path, n_train=30, n_test=10)

    split = load_quiet(tmp_path)

    assert_split_equals(split, arrays)
    assert split.source == f"cifar-10-python.tar.gz in {tmp_path}"
    assert not (tmp_path / "cifar-10-batches-py").exists()


def test_png_image_folders_load_exact_pixels(tmp_path: Path) -> None:
    arrays = write_image_folder(tmp_path, n_train=25, n_test=12, ext="png")

    split = load_quiet(tmp_path)

    assert_split_equals(split, arrays)
    assert split.source == f"image folders in {tmp_path}"


def test_jpeg_image_folders_load_close_pixels(tmp_path: Path) -> None:
    train_images, train_labels, test_images, test_labels = write_image_folder(tmp_path, 20, 10, ext="jpg")

    split = load_quiet(tmp_path)

    np.testing.assert_array_equal(split.train.labels, train_labels)
    np.testing.assert_array_equal(split.test.labels, test_labels)
    error = np.abs(split.train.images.astype(int) - train_images.astype(int))
    assert error.mean() < 2.0 and error.max() <= 8


def test_image_tree_inside_a_single_subfolder(tmp_path: Path) -> None:
    arrays = write_image_folder(tmp_path / "cifar10-images", n_train=12, n_test=6)

    split = load_quiet(tmp_path)

    assert_split_equals(split, arrays)
    assert split.source == f"image folders in {tmp_path / 'cifar10-images'}"


def test_second_load_reads_cache_without_decoding(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    arrays = write_batches_py(tmp_path)
    first_log: list[str] = []
    load_dataset("cifar10", tmp_path, download=False, log=first_log.append)
    caches = list(tmp_path.glob("fedlaunch-cifar10-*.npz"))

    def no_decode(*_: object) -> None:
        raise AssertionError("decoded again despite the cache")

    monkeypatch.setattr(data, "decode", no_decode)
    second_log: list[str] = []
    split = load_dataset("cifar10", tmp_path, download=False, log=second_log.append)

    assert len(caches) == 1
    assert not list(tmp_path.glob("*.tmp"))
    assert any(line.startswith("decoding 60000 images from") for line in first_log)
    assert second_log == [f"loaded cached CIFAR-10 from {caches[0]}"]
    assert_split_equals(split, arrays)


def test_cache_goes_to_default_cache_dir_when_data_dir_unwritable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data_dir = tmp_path / "readonly"
    arrays = write_batches_py(data_dir)
    real_tempfile = tempfile.NamedTemporaryFile

    def refuse_data_dir(*args: Any, **kwargs: Any) -> Any:
        if Path(str(kwargs["dir"])) == data_dir:
            raise PermissionError(13, "Permission denied")
        return real_tempfile(*args, **kwargs)

    monkeypatch.setattr(tempfile, "NamedTemporaryFile", refuse_data_dir)
    load_quiet(data_dir)
    monkeypatch.setattr(data, "decode", lambda *_: pytest.fail("decoded again"))

    split = load_quiet(data_dir)

    assert not list(data_dir.glob("*.npz"))
    assert len(list((tmp_path / "xdg-cache" / "fedlaunch").glob("fedlaunch-cifar10-*.npz"))) == 1
    assert_split_equals(split, arrays)


def test_unreadable_cache_is_ignored_and_rebuilt(tmp_path: Path) -> None:
    arrays = write_batches_py(tmp_path)
    load_quiet(tmp_path)
    cache = next(tmp_path.glob("fedlaunch-cifar10-*.npz"))
    cache.write_bytes(b"not a zip file")
    log: list[str] = []

    split = load_dataset("cifar10", tmp_path, download=False, log=log.append)

    assert_split_equals(split, arrays)
    assert log[0].startswith(f"ignoring unreadable cache {cache}")
    assert np.load(cache)["train_labels"].shape == (50,)


def test_changed_batches_are_decoded_again(tmp_path: Path) -> None:
    write_batches_py(tmp_path, seed=0)
    load_quiet(tmp_path)
    batch = tmp_path / "cifar-10-batches-py" / "data_batch_1"
    arrays = write_batches_py(tmp_path, seed=7)
    os.utime(batch, ns=(batch.stat().st_atime_ns, batch.stat().st_mtime_ns + 10**9))

    split = load_quiet(tmp_path)

    assert_split_equals(split, arrays)
    assert len(list(tmp_path.glob("fedlaunch-cifar10-*.npz"))) == 2


def test_limits_pick_a_seeded_subset_in_original_order(tmp_path: Path) -> None:
    train_images, train_labels, _, _ = write_batches_py(tmp_path, n_train=50, n_test=20)

    a = load_quiet(tmp_path, seed=3, limit_train=10, limit_test=5)
    b = load_quiet(tmp_path, seed=3, limit_train=10, limit_test=5)
    c = load_quiet(tmp_path, seed=4, limit_train=10, limit_test=5)
    everything = load_quiet(tmp_path, limit_train=1000)

    assert (len(a.train), len(a.test)) == (10, 5)
    np.testing.assert_array_equal(a.train.images, b.train.images)
    np.testing.assert_array_equal(a.test.labels, b.test.labels)
    assert not np.array_equal(a.train.images, c.train.images)
    rows = [int(np.flatnonzero((train_images == img).all(axis=(1, 2, 3)))[0]) for img in a.train.images]
    assert rows == sorted(rows)
    np.testing.assert_array_equal(a.train.labels, train_labels[rows])
    assert len(everything.train) == 50


@pytest.mark.parametrize(
    ("kwargs", "flag"),
    [({"limit_train": 0}, "--limit-train"), ({"limit_test": -2}, "--limit-test")],
)
def test_non_positive_limit_is_rejected(tmp_path: Path, kwargs: dict[str, int], flag: str) -> None:
    with pytest.raises(UsageError, match=f"^{flag} must be at least 1"):
        load_dataset("synthetic", **kwargs)  # type: ignore[arg-type]


def test_unknown_dataset_lists_the_choices() -> None:
    with pytest.raises(UsageError) as err:
        load_dataset("mnist")

    assert str(err.value) == "unknown dataset 'mnist': use one of cifar10, synthetic"


def test_empty_folder_without_download_names_folder_and_layouts(tmp_path: Path) -> None:
    with pytest.raises(UsageError) as err:
        load_quiet(tmp_path)

    message = str(err.value)
    assert message.startswith(
        f"no CIFAR-10 found in {tmp_path}: expected cifar-10-batches-py/, cifar-10-python.tar.gz"
    )
    assert "--dataset synthetic" in message and "\n" not in message


def test_missing_default_folder_without_download_names_it(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="no CIFAR-10 found in .*xdg-cache/fedlaunch/cifar10"):
        load_dataset("cifar10", download=False, log=lambda _: None)

    assert not (tmp_path / "xdg-cache").exists()


def test_nonexistent_data_dir_is_named(tmp_path: Path) -> None:
    missing = tmp_path / "nope"

    with pytest.raises(UsageError, match=f"^data folder {missing} does not exist"):
        load_quiet(missing)


def test_data_dir_that_is_a_file_is_rejected(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")

    with pytest.raises(UsageError, match="is a file, not a folder"):
        load_quiet(tmp_path / "file")


def test_truncated_batch_names_the_file(tmp_path: Path) -> None:
    write_batches_py(tmp_path)
    batch = tmp_path / "cifar-10-batches-py" / "data_batch_3"
    batch.write_bytes(batch.read_bytes()[:200])

    with pytest.raises(UsageError) as err:
        load_quiet(tmp_path)

    assert (
        str(err.value)
        == f"{batch} is not a readable CIFAR-10 batch file (truncated or corrupt): re-download it"
    )


def test_incomplete_batches_folder_lists_missing_files(tmp_path: Path) -> None:
    write_batches_py(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "data_batch_4").unlink()

    with pytest.raises(UsageError, match=r"incomplete \(missing data_batch_4\)"):
        load_quiet(tmp_path)


def test_batch_with_out_of_range_labels_is_rejected(tmp_path: Path) -> None:
    write_batches_py(tmp_path)
    images, _ = fake_images(4, seed=0)
    batch = tmp_path / "cifar-10-batches-py" / "test_batch"
    batch.write_bytes(batch_pickle(images, np.array([0, 1, 2, 57]), "testing batch 1 of 1"))

    with pytest.raises(UsageError, match=f"^{batch} is not a readable CIFAR-10 batch"):
        load_quiet(tmp_path)


class _Exploit:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, (f"touch {self.marker}",))


def test_malicious_pickle_is_rejected_without_running(tmp_path: Path) -> None:
    write_batches_py(tmp_path)
    marker = tmp_path / "pwned"
    batch = tmp_path / "cifar-10-batches-py" / "data_batch_1"
    batch.write_bytes(pickle.dumps({b"data": _Exploit(marker), b"labels": []}, protocol=2))

    with pytest.raises(UsageError) as err:
        load_quiet(tmp_path)

    assert str(err.value).startswith(f"{batch} is not a CIFAR-10 batch file (it refers to ")
    assert "system" in str(err.value)
    assert not marker.exists()


def test_corrupt_tar_names_the_archive(tmp_path: Path) -> None:
    (tmp_path / "cifar-10-python.tar.gz").write_bytes(b"\x1f\x8b definitely not gzip")

    with pytest.raises(UsageError, match="cifar-10-python.tar.gz is not a readable CIFAR-10 archive"):
        load_quiet(tmp_path)


def test_image_of_wrong_size_names_the_file(tmp_path: Path) -> None:
    from PIL import Image

    write_image_folder(tmp_path, n_train=10, n_test=5)
    big = tmp_path / "train" / "cat" / "big.png"
    Image.new("RGB", (64, 48)).save(big)

    with pytest.raises(UsageError) as err:
        load_quiet(tmp_path)

    assert str(err.value) == f"{big} is 64x48, expected 32x32: resize it or remove it"


def test_corrupt_image_names_the_file(tmp_path: Path) -> None:
    write_image_folder(tmp_path, n_train=10, n_test=5)
    bad = tmp_path / "test" / "dog" / "broken.png"
    bad.write_bytes(b"\x89PNG garbage")

    with pytest.raises(UsageError, match=f"^{bad} is not a readable image"):
        load_quiet(tmp_path)


def test_unknown_class_folder_is_rejected(tmp_path: Path) -> None:
    write_image_folder(tmp_path, n_train=10, n_test=5)
    (tmp_path / "train" / "unicorn").mkdir()

    with pytest.raises(UsageError, match="unicorn is not a CIFAR-10 class folder"):
        load_quiet(tmp_path)


def _fake_torchvision(monkeypatch: pytest.MonkeyPatch, cifar10: object) -> None:
    datasets = types.ModuleType("torchvision.datasets")
    datasets.CIFAR10 = cifar10  # type: ignore[attr-defined]
    package = types.ModuleType("torchvision")
    package.datasets = datasets  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "torchvision", package)
    monkeypatch.setitem(sys.modules, "torchvision.datasets", datasets)


def test_failed_download_becomes_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def offline(root: str, train: bool, download: bool) -> None:
        raise OSError("<urlopen error [Errno -3] Temporary failure in name resolution>\nmore")

    _fake_torchvision(monkeypatch, offline)

    with pytest.raises(UsageError) as err:
        load_dataset("cifar10", tmp_path, download=True, log=lambda _: None)

    message = str(err.value)
    assert message.startswith(f"could not download CIFAR-10 into {tmp_path} (<urlopen error")
    assert "\n" not in message and "--dataset synthetic" in message


def test_download_then_reads_the_batches(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    written: list[tuple[np.ndarray, ...]] = []

    def fake_download(root: str, train: bool, download: bool) -> None:
        written.append(write_batches_py(Path(root), n_train=10, n_test=5))

    _fake_torchvision(monkeypatch, fake_download)

    split = load_dataset("cifar10", tmp_path, download=True, log=lambda _: None)

    assert_split_equals(split, written[0])


def test_default_data_dir_prefers_env_then_xdg(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    xdg_default = default_data_dir()
    monkeypatch.setenv("FEDLAUNCH_DATA_DIR", str(tmp_path / "mine"))

    assert xdg_default == tmp_path / "xdg-cache" / "fedlaunch" / "cifar10"
    assert default_data_dir() == tmp_path / "mine"


def test_synthetic_shape_dtype_and_sizes(synthetic: DataSplit) -> None:
    assert synthetic.train.images.shape == (10_000, 32, 32, 3)
    assert synthetic.test.images.shape == (2_000, 32, 32, 3)
    assert synthetic.train.images.dtype == np.uint8
    assert synthetic.train.labels.dtype == np.int64
    assert set(np.unique(synthetic.train.labels)) == set(range(10))
    assert synthetic.source == "synthetic (seed 0)"
    assert synthetic.classes == CIFAR10_CLASSES


def test_synthetic_is_deterministic_per_seed(synthetic: DataSplit) -> None:
    same = load_dataset("synthetic", seed=0, limit_train=500, limit_test=100, log=lambda _: None)
    other = load_dataset("synthetic", seed=1, limit_train=500, limit_test=100, log=lambda _: None)
    keep = np.sort(np.random.default_rng(0).permutation(10_000)[:500])

    np.testing.assert_array_equal(same.train.images, synthetic.train.images[keep])
    np.testing.assert_array_equal(same.train.labels, synthetic.train.labels[keep])
    assert not np.array_equal(same.train.images, other.train.images)


def test_synthetic_has_a_learnable_but_imperfect_class_signal(synthetic: DataSplit) -> None:
    train = synthetic.train.images.reshape(10_000, -1).astype(np.float32)
    test = synthetic.test.images[:500].reshape(500, -1).astype(np.float32)
    centroids = np.stack([train[synthetic.train.labels == c].mean(axis=0) for c in range(10)])

    distances = ((test[:, None, :] - centroids[None]) ** 2).sum(axis=-1)
    accuracy = float((distances.argmin(axis=1) == synthetic.test.labels[:500]).mean())

    assert 0.25 < accuracy < 0.9


def test_imageset_rejects_wrong_layout() -> None:
    with pytest.raises(ValueError, match="uint8"):
        ImageSet(np.zeros((2, 3, 32, 32), np.uint8), np.zeros(2, np.int64))


# --- the launcher's partition check: the training labels alone ---------------------------------

@pytest.mark.parametrize("limit", [None, 600])
def test_synthetic_labels_alone_match_the_full_set(limit: int | None) -> None:
    full = load_dataset("synthetic", seed=5, limit_train=limit, log=lambda _: None)

    labels = data.load_train_labels("synthetic", seed=5, limit_train=limit)

    assert labels.dtype == np.int64 and np.array_equal(labels, full.train.labels)


def test_cifar10_labels_are_read_from_their_own_cache(tmp_path: Path) -> None:
    """After one full load, the labels come from `<cache>.labels.npy`: the images' cache is not
    read (here it is even replaced by garbage)."""
    # Prepare
    write_batches_py(tmp_path / "d", n_train=100, n_test=20)
    full = load_quiet(tmp_path / "d", seed=1, limit_train=30)
    [images_cache] = (tmp_path / "d").glob("fedlaunch-cifar10-*.npz")
    labels_cache = images_cache.with_name(images_cache.name.removesuffix(".npz") + ".labels.npy")
    assert labels_cache.is_file()
    images_cache.write_bytes(b"not read")

    # Execute
    labels = data.load_train_labels("cifar10", tmp_path / "d", seed=1, limit_train=30,
                                    download=False, log=lambda _: None)

    # Assert
    assert np.array_equal(labels, full.train.labels)


def test_cifar10_labels_from_an_older_cache_without_a_labels_file(tmp_path: Path) -> None:
    write_batches_py(tmp_path / "d", n_train=100, n_test=20)
    full = load_quiet(tmp_path / "d")
    [labels_cache] = (tmp_path / "d").glob("fedlaunch-cifar10-*.labels.npy")
    labels_cache.unlink()
    logged: list[str] = []

    labels = data.load_train_labels("cifar10", tmp_path / "d", download=False, log=logged.append)

    assert np.array_equal(labels, full.train.labels)
    assert labels_cache.is_file() and logged == []  # nothing decoded again
