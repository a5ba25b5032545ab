"""CIFAR-10 and synthetic image datasets: find, decode once, cache, and subset."""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import tarfile
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from fedcore.errors import UsageError

CIFAR10_CLASSES: tuple[str, ...] = tuple(
    "airplane automobile bird cat deer dog frog horse ship truck".split()
)
DATASETS = ("cifar10", "synthetic")

BATCHES_DIR = "cifar-10-batches-py"
TARBALL = "cifar-10-python.tar.gz"
TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_BATCH = "test_batch"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
SYNTHETIC_TRAIN = 10_000
SYNTHETIC_TEST = 2_000
LAYOUTS = f"{BATCHES_DIR}/, {TARBALL}, or train/<class>/ + test/<class>/ image folders"
OFFLINE_HINT = "(offline: copy one there, or use --dataset synthetic)"

_ALLOWED_GLOBALS = frozenset(
    [(f"numpy.{core}.multiarray", "_reconstruct") for core in ("core", "_core")]
    + [(f"numpy.{core}.numeric", "_frombuffer") for core in ("core", "_core")]
    + [("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")]
)

Log = Callable[[str], None]


@dataclass(frozen=True, eq=False)
class ImageSet:
    """Images as uint8 (N, 32, 32, 3) HWC RGB with int64 labels (N,)."""

    images: np.ndarray
    labels: np.ndarray

    def __post_init__(self) -> None:
        images, labels = self.images, self.labels
        if images.dtype != np.uint8 or images.shape[1:] != (32, 32, 3):
            raise ValueError(f"ImageSet images must be uint8 (N, 32, 32, 3), got {images.shape}")
        if labels.dtype != np.int64 or labels.shape != images.shape[:1]:
            raise ValueError(
                f"ImageSet labels must be int64 ({len(images)},), got {labels.dtype} {labels.shape}"
            )

    def __len__(self) -> int:
        return int(self.labels.shape[0])


@dataclass(frozen=True, eq=False)
class DataSplit:
    """A train/test pair with class names and a human description of where it came from."""

    train: ImageSet
    test: ImageSet
    classes: tuple[str, ...]
    source: str


@dataclass(frozen=True)
class _Source:
    kind: str  # "batches" | "tar" | "images"
    path: Path
    description: str
    files: tuple[Path, ...]


class _BatchUnpickler(pickle.Unpickler):
    def __init__(self, file: IO[bytes], name: str) -> None:
        super().__init__(file, encoding="bytes")
        self._name = name

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED_GLOBALS:
            return super().find_class(module, name)
        raise UsageError(
            f"{self._name} is not a CIFAR-10 batch file (it refers to {module}.{name}); "
            "replace it with the official download"
        )


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
        labels = _synthetic_labels(np.random.default_rng([seed, 1]), SYNTHETIC_TRAIN,
                                   len(CIFAR10_CLASSES))
    elif name == "cifar10":
        labels = _cifar10_labels(data_dir, download, log)
    else:
        raise UsageError(f"unknown dataset {name!r}: use one of {', '.join(DATASETS)}")
    keep = _subset_index(len(labels), limit_train, seed)
    return labels if keep is None else labels[keep]


def _synthetic_labels(rng: np.random.Generator, n: int, num_classes: int) -> np.ndarray:
    """The first draw of a synthetic set's generator: its labels."""
    return rng.integers(0, num_classes, size=n, dtype=np.int64)


def make_synthetic(
    seed: int, n_train: int = SYNTHETIC_TRAIN, n_test: int = SYNTHETIC_TEST
) -> tuple[ImageSet, ImageSet]:
    """Noisy, shifted copies of one smooth colour pattern per class, shared by train and test."""
    patterns = _class_patterns(np.random.default_rng([seed, 0]), len(CIFAR10_CLASSES))
    return (
        _synthetic_images(patterns, n_train, np.random.default_rng([seed, 1])),
        _synthetic_images(patterns, n_test, np.random.default_rng([seed, 2])),
    )


def _class_patterns(rng: np.random.Generator, num_classes: int) -> np.ndarray:
    coarse = rng.uniform(-1.0, 1.0, size=(num_classes, 4, 4, 3)).astype(np.float32)
    pos = np.arange(32, dtype=np.float32) / 8.0
    lo = np.floor(pos).astype(np.int64)
    hi = (lo + 1) % 4
    frac = (pos - lo)[:, None]
    rows = coarse[:, lo] * (1 - frac)[None, :, :, None] + coarse[:, hi] * frac[None, :, :, None]
    frac_c = (pos - lo)[None, :, None]
    smooth = rows[:, :, lo] * (1 - frac_c)[None] + rows[:, :, hi] * frac_c[None]
    return np.asarray(smooth, dtype=np.float32)


def _synthetic_images(patterns: np.ndarray, n: int, rng: np.random.Generator) -> ImageSet:
    num_classes = patterns.shape[0]
    mixed = patterns[:, None] + 0.6 * patterns[None, :]
    tiled = np.pad(mixed, ((0, 0), (0, 0), (0, 12), (0, 12), (0, 0)), mode="wrap")
    windows = sliding_window_view(tiled, (32, 32), axis=(2, 3))
    labels = _synthetic_labels(rng, n, num_classes)
    distractors = (labels + rng.integers(1, num_classes, size=n)) % num_classes
    shift_r, shift_c = rng.integers(0, 13, size=(2, n))
    pixels = windows[labels, distractors, shift_r, shift_c]
    pixels *= rng.uniform(25.0, 55.0, size=(n, 1, 1, 1)).astype(np.float32)
    pixels += rng.uniform(90.0, 165.0, size=(n, 1, 1, 1)).astype(np.float32)
    noise = rng.random(size=pixels.shape, dtype=np.float32)
    noise -= 0.5
    noise *= 156.0
    pixels += noise
    np.clip(pixels, 0, 255, out=pixels)
    return ImageSet(np.ascontiguousarray(pixels.astype(np.uint8).transpose(0, 2, 3, 1)), labels)


def _cifar10_source(data_dir: Path | None, download: bool, log: Log) -> tuple[Path, _Source]:
    explicit = data_dir is not None
    root = Path(data_dir).expanduser() if data_dir is not None else default_data_dir()
    _check_folder(root, explicit, download)
    source = _find_source(root) if root.is_dir() else None
    if source is None and download:
        _download(root, log)
        source = _find_source(root)
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
    train, test = _decode(source)
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


def _find_source(root: Path) -> _Source | None:
    for batches in (root / BATCHES_DIR, root):
        if (batches / TEST_BATCH).is_file() or (batches / TRAIN_BATCHES[0]).is_file():
            files = tuple(batches / name for name in (*TRAIN_BATCHES, TEST_BATCH))
            missing = [f.name for f in files if not f.is_file()]
            if missing:
                raise UsageError(
                    f"CIFAR-10 batches in {batches} are incomplete "
                    f"(missing {', '.join(missing)}): re-download them"
                )
            return _Source("batches", batches, f"{BATCHES_DIR} in {batches}", files)
    if (root / TARBALL).is_file():
        return _Source("tar", root / TARBALL, f"{TARBALL} in {root}", (root / TARBALL,))
    try:
        subdirs = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
        trees = [t for t in (root, *subdirs) if (t / "train").is_dir() and (t / "test").is_dir()]
        if not trees:
            return None
        files = tuple(_image_files(trees[0] / "train")) + tuple(_image_files(trees[0] / "test"))
    except OSError as exc:
        raise UsageError(f"cannot list {exc.filename} ({exc.strerror}): fix its permissions") from None
    return _Source("images", trees[0], f"image folders in {trees[0]}", files)


def _image_files(split_dir: Path) -> Iterable[Path]:
    for class_dir in sorted(split_dir.iterdir()):
        if class_dir.name.startswith("."):
            continue
        if not class_dir.is_dir() or class_dir.name not in CIFAR10_CLASSES:
            raise UsageError(
                f"{class_dir} is not a CIFAR-10 class folder: "
                f"{split_dir} may only hold folders named {', '.join(CIFAR10_CLASSES)}"
            )
        yield from sorted(
            p for p in class_dir.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
        )


def _cache_key(source: _Source) -> str:
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


def _decode(source: _Source) -> tuple[ImageSet, ImageSet]:
    if source.kind == "images":
        return _read_image_split(source.path / "train"), _read_image_split(source.path / "test")
    if source.kind == "tar":
        return _from_batches(_read_tar(source.path), str(source.path))
    try:
        blobs = {path.name: path.read_bytes() for path in source.files}
    except OSError as exc:
        raise UsageError(f"cannot read {exc.filename} ({exc.strerror}): fix its permissions") from None
    return _from_batches(blobs, str(source.path))


def _read_tar(path: Path) -> dict[str, bytes]:
    wanted = {*TRAIN_BATCHES, TEST_BATCH}
    blobs: dict[str, bytes] = {}
    try:
        with tarfile.open(path, "r:gz") as tar:
            for member in tar:
                base = member.name.rsplit("/", 1)[-1]
                if member.isfile() and base in wanted and base not in blobs:
                    handle = tar.extractfile(member)
                    if handle is not None:
                        blobs[base] = handle.read()
    except (OSError, tarfile.TarError, EOFError) as exc:
        raise UsageError(
            f"{path} is not a readable CIFAR-10 archive ({type(exc).__name__}): re-download it"
        ) from None
    missing = sorted(wanted - blobs.keys())
    if missing:
        raise UsageError(
            f"{path} lacks {', '.join(missing)}: it is not the official {TARBALL}; re-download it"
        )
    return blobs


def _from_batches(blobs: dict[str, bytes], where: str) -> tuple[ImageSet, ImageSet]:
    train = [_parse_batch(blobs[name], f"{where}/{name}") for name in TRAIN_BATCHES]
    test = _parse_batch(blobs[TEST_BATCH], f"{where}/{TEST_BATCH}")
    return (
        ImageSet(np.concatenate([t.images for t in train]), np.concatenate([t.labels for t in train])),
        test,
    )


def _parse_batch(blob: bytes, name: str) -> ImageSet:
    bad = f"{name} is not a readable CIFAR-10 batch file (truncated or corrupt): re-download it"
    try:
        raw = _BatchUnpickler(io.BytesIO(blob), name).load()
    except UsageError:
        raise
    except Exception:
        raise UsageError(bad) from None
    if not isinstance(raw, dict):
        raise UsageError(bad)
    batch = {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in raw.items()}
    data, labels = batch.get("data"), batch.get("labels")
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.shape[1:] != (3072,):
        raise UsageError(bad)
    try:
        label_arr = np.asarray(labels, dtype=np.int64)
    except (TypeError, ValueError):
        raise UsageError(bad) from None
    if label_arr.shape != data.shape[:1] or not np.isin(label_arr, range(10)).all():
        raise UsageError(bad)
    images = np.ascontiguousarray(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
    return ImageSet(images, label_arr)


def _read_image_split(split_dir: Path) -> ImageSet:
    from PIL import Image, UnidentifiedImageError

    images: list[np.ndarray] = []
    labels: list[int] = []
    for path in _image_files(split_dir):
        try:
            with Image.open(path) as img:
                rgb = img.convert("RGB")
        except (OSError, UnidentifiedImageError, ValueError):
            raise UsageError(f"{path} is not a readable image: replace or delete it") from None
        if rgb.size != (32, 32):
            raise UsageError(f"{path} is {rgb.size[0]}x{rgb.size[1]}, expected 32x32: resize it or remove it")
        images.append(np.asarray(rgb, dtype=np.uint8))
        labels.append(CIFAR10_CLASSES.index(path.parent.name))
    if not images:
        raise UsageError(f"{split_dir} holds no .png/.jpg images: put images under {split_dir}/<class>/")
    return ImageSet(np.stack(images), np.asarray(labels, dtype=np.int64))


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
