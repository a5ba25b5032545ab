"""CIFAR-10's layouts on disk (the official pickled batches, their tarball, or image folders per
class): find a copy in a folder and decode it, refusing anything that is not CIFAR-10."""

from __future__ import annotations

import io
import pickle
import tarfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np

from fedcore.errors import UsageError
from fedcore.imageset import CIFAR10_CLASSES, ImageSet

BATCHES_DIR = "cifar-10-batches-py"
TARBALL = "cifar-10-python.tar.gz"
TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_BATCH = "test_batch"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
LAYOUTS = f"{BATCHES_DIR}/, {TARBALL}, or train/<class>/ + test/<class>/ image folders"

_ALLOWED_GLOBALS = frozenset(
    [(f"numpy.{core}.multiarray", "_reconstruct") for core in ("core", "_core")]
    + [(f"numpy.{core}.numeric", "_frombuffer") for core in ("core", "_core")]
    + [("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")]
)


@dataclass(frozen=True)
class Source:
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


def find_source(root: Path) -> Source | None:
    for batches in (root / BATCHES_DIR, root):
        if (batches / TEST_BATCH).is_file() or (batches / TRAIN_BATCHES[0]).is_file():
            files = tuple(batches / name for name in (*TRAIN_BATCHES, TEST_BATCH))
            missing = [f.name for f in files if not f.is_file()]
            if missing:
                raise UsageError(
                    f"CIFAR-10 batches in {batches} are incomplete "
                    f"(missing {', '.join(missing)}): re-download them"
                )
            return Source("batches", batches, f"{BATCHES_DIR} in {batches}", files)
    if (root / TARBALL).is_file():
        return Source("tar", root / TARBALL, f"{TARBALL} in {root}", (root / TARBALL,))
    try:
        subdirs = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
        trees = [t for t in (root, *subdirs) if (t / "train").is_dir() and (t / "test").is_dir()]
        if not trees:
            return None
        files = tuple(_image_files(trees[0] / "train")) + tuple(_image_files(trees[0] / "test"))
    except OSError as exc:
        raise UsageError(f"cannot list {exc.filename} ({exc.strerror}): fix its permissions") from None
    return Source("images", trees[0], f"image folders in {trees[0]}", files)


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


def decode(source: Source) -> tuple[ImageSet, ImageSet]:
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
