"""CIFAR-10 and synthetic image datasets: find, decode once, cache, and subset.

The formats on disk are read by fedcore.cifar_files, the synthetic set is made by
fedcore.synthetic; this module picks the source, keeps the decoded cache and applies the limits.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fedcore.cifar_files import LAYOUTS, Source, decode, find_source
from fedcore.errors import UsageError
from fedcore.imageset import CIFAR10_CLASSES, ImageSet
from fedcore.synthetic import SYNTHETIC_TRAIN, make_synthetic, synthetic_labels

__all__ = ["CIFAR10_CLASSES", "DATASETS", "DataSplit", "ImageSet", "default_data_dir",
           "load_dataset", "load_train_labels", "make_synthetic"]

DATASETS = ("cifar10", "synthetic")

OFFLINE_HINT = "(offline: copy one there, or use --dataset synthetic)"

Log = Callable[[str], None]


@dataclass(frozen=True, eq=False)
class DataSplit:
    """A train/test pair with class names and a human description of where it came from."""

    train: ImageSet
    test: ImageSet
    classes: tuple[str, ...]
    source: str


def default_data_dir() -> Path:
    """$FEDLAUNCH_DATA_DIR, else $XDG_CACHE_HOME (or ~/.cache) / fedlaunch/cifar10."""
    env = os.environ.get("FEDLAUNCH_DATA_DIR")
    if env:
        return Path(env).expanduser()
    return _cache_root() / "cifar10"


def _cache_root() -> Path:
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "fedlaunch"


def load_dataset(
    name: str,
    data_dir: Path | None = None,
    *,
    seed: int = 0,
    limit_train: int | None = None,
    limit_test: int | None = None,
    download: bool = True,
    log: Log = print,
) -> DataSplit:
    """Load CIFAR-10 (decoded once, then cached) or the synthetic set, then apply the limits."""
    _check_limit("--limit-train", limit_train)
    _check_limit("--limit-test", limit_test)
    if name == "cifar10":
        train, test, source = _load_cifar10(data_dir, download, log)
    elif name == "synthetic":
        train, test = make_synthetic(seed)
        source = f"synthetic (seed {seed})"
    else:
        raise UsageError(f"unknown dataset {name!r}: use one of {', '.join(DATASETS)}")
    return DataSplit(
        train=_subset(train, limit_train, seed),
        test=_subset(test, limit_test, seed),
        classes=CIFAR10_CLASSES,
        source=source,
    )


def _check_limit(flag: str, limit: int | None) -> None:
    if limit is not None and limit <= 0:
        raise UsageError(f"{flag} must be at least 1 (got {limit}); leave it out to use all samples")


def _subset(data: ImageSet, limit: int | None, seed: int) -> ImageSet:
    keep = _subset_index(len(data), limit, seed)
    return data if keep is None else ImageSet(data.images[keep], data.labels[keep])


def _subset_index(size: int, limit: int | None, seed: int) -> np.ndarray | None:
    """The sorted indices a limit keeps (the same draw for images and labels); None: all."""
    if limit is None or limit >= size:
        return None
    return np.sort(np.random.default_rng(seed).permutation(size)[:limit])


def load_train_labels(
    name: str,
    data_dir: Path | None = None,
    *,
    seed: int = 0,
    limit_train: int | None = None,
    download: bool = True,
    log: Log = print,
) -> np.ndarray:
    """The training labels `load_dataset` would give, reading only them when they are cached
    (`<cache>.labels.npy` beside the images' cache): the launcher checks a partition with them."""
    _check_limit("--limit-train", limit_train)
    if name == "synthetic":
        labels = synthetic_labels(np.random.default_rng([seed, 1]), SYNTHETIC_TRAIN,
                                   len(CIFAR10_CLASSES))
    elif name == "cifar10":
        labels = _cifar10_labels(data_dir, download, log)
    else:
        raise UsageError(f"unknown dataset {name!r}: use one of {', '.join(DATASETS)}")
    keep = _subset_index(len(labels), limit_train, seed)
    return labels if keep is None else labels[keep]


def _cifar10_source(data_dir: Path | None, download: bool, log: Log) -> tuple[Path, Source]:
    explicit = data_dir is not None
    root = Path(data_dir).expanduser() if data_dir is not None else default_data_dir()
    _check_folder(root, explicit, download)
    source = find_source(root) if root.is_dir() else None
    if source is None and download:
        _download(root, log)
        source = find_source(root)
    if source is None:
        raise UsageError(f"no CIFAR-10 found in {root}: expected {LAYOUTS} {OFFLINE_HINT}")
    return root, source


def _cifar10_labels(data_dir: Path | None, download: bool, log: Log) -> np.ndarray:
    """CIFAR-10's training labels: from the labels cache, else from the images' cache (which
    then gets a labels cache), else decoded once with the images (both caches written)."""
    root, source = _cifar10_source(data_dir, download, log)
    cache_name = f"fedlaunch-cifar10-{_cache_key(source)}.npz"
    for cache_dir in (root, _cache_root()):
        labels_path = cache_dir / _labels_name(cache_name)
        try:
            labels = np.load(labels_path, allow_pickle=False)
            if labels.dtype == np.int64 and labels.ndim == 1:
                return np.asarray(labels)
        except (OSError, ValueError):
            pass
        try:
            with np.load(cache_dir / cache_name, allow_pickle=False) as npz:
                labels = np.asarray(npz["train_labels"])
        except (OSError, ValueError, KeyError):
            continue
        if labels.dtype == np.int64 and labels.ndim == 1:
            _write_labels(labels_path, labels)
            return labels
    return _load_cifar10(data_dir, download, log)[0].labels


def _labels_name(cache_name: str) -> str:
    return cache_name.removesuffix(".npz") + ".labels.npy"


def _write_labels(path: Path, labels: np.ndarray) -> None:
    """The labels alone beside the images' cache, atomically; skipped where it cannot be written."""
    tmp_name = ""
    try:
        with tempfile.NamedTemporaryFile(dir=path.parent, prefix=".fedlaunch-", suffix=".tmp",
                                         delete=False) as tmp:
            tmp_name = tmp.name
            np.save(tmp, labels, allow_pickle=False)
        os.replace(tmp_name, path)
    except OSError:
        if tmp_name:
            Path(tmp_name).unlink(missing_ok=True)


def _load_cifar10(data_dir: Path | None, download: bool, log: Log) -> tuple[ImageSet, ImageSet, str]:
    root, source = _cifar10_source(data_dir, download, log)
    cache_name = f"fedlaunch-cifar10-{_cache_key(source)}.npz"
    for cache_dir in (root, _cache_root()):
        cached = _read_cache(cache_dir / cache_name, log)
        if cached is not None:
            log(f"loaded cached CIFAR-10 from {cache_dir / cache_name}")
            return cached[0], cached[1], source.description
    count = len(source.files) if source.kind == "images" else 60000
    log(f"decoding {count} images from {source.description} (once; cached for next time)")
    train, test = decode(source)
    _write_cache((root, _cache_root()), cache_name, train, test, log)
    return train, test, source.description


def _check_folder(root: Path, explicit: bool, download: bool) -> None:
    if root.exists() and not root.is_dir():
        raise UsageError(
            f"data folder {root} is a file, not a folder: point --data-dir at the folder holding CIFAR-10"
        )
    if not root.exists():
        if explicit:
            raise UsageError(
                f"data folder {root} does not exist: "
                "create it with CIFAR-10 inside, or use --dataset synthetic"
            )
        if download:
            try:
                root.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise UsageError(
                    f"cannot create data folder {root} ({exc.strerror}): set FEDLAUNCH_DATA_DIR or --data-dir"
                ) from None
        return
    if not os.access(root, os.R_OK | os.X_OK):
        raise UsageError(
            f"data folder {root} is not readable: fix its permissions or point --data-dir elsewhere"
        )


def _cache_key(source: Source) -> str:
    digest = hashlib.sha256(str(source.path.resolve()).encode())
    for path in source.files:
        st = path.stat()
        digest.update(f"\0{path.name}\0{st.st_size}\0{st.st_mtime_ns}".encode())
    return digest.hexdigest()[:16]


def _read_cache(path: Path, log: Log) -> tuple[ImageSet, ImageSet] | None:
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as npz:
            train = ImageSet(npz["train_images"], npz["train_labels"])
            test = ImageSet(npz["test_images"], npz["test_labels"])
    except Exception as exc:
        log(f"ignoring unreadable cache {path} ({type(exc).__name__}); decoding again")
        return None
    return train, test


def _write_cache(dirs: Iterable[Path], name: str, train: ImageSet, test: ImageSet, log: Log) -> None:
    for cache_dir in dirs:
        tmp_name = ""
        try:
            cache_dir.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(
                dir=cache_dir, prefix=".fedlaunch-", suffix=".tmp", delete=False
            ) as tmp:
                tmp_name = tmp.name
                np.savez(
                    tmp,
                    train_images=train.images,
                    train_labels=train.labels,
                    test_images=test.images,
                    test_labels=test.labels,
                )
            os.replace(tmp_name, cache_dir / name)
            _write_labels(cache_dir / _labels_name(name), train.labels)
            log(f"wrote cache {cache_dir / name}")
            return
        except OSError:
            if tmp_name:
                Path(tmp_name).unlink(missing_ok=True)
    log("could not write a CIFAR-10 cache anywhere; the next run will decode again")


def _download(root: Path, log: Log) -> None:
    log(f"CIFAR-10 not found in {root}; downloading it (about 170 MB)")
    try:
        from torchvision.datasets import CIFAR10  # type: ignore[import-untyped]

        CIFAR10(root=str(root), train=True, download=True)
    except Exception as exc:
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise UsageError(
            f"could not download CIFAR-10 into {root} ({reason}): expected {LAYOUTS} {OFFLINE_HINT}"
        ) from None
