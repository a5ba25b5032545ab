"""Writers for small fake CIFAR-10 data sets in each layout that fedcore.data accepts."""

from __future__ import annotations

import io
import pickle
import tarfile
from pathlib import Path

import numpy as np

from fedcore.data import CIFAR10_CLASSES

Arrays = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]


def fake_images(n: int, seed: int, smooth: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Random uint8 (n, 32, 32, 3) images (flat 8x8 blocks if smooth), labels cycling 0..9."""
    rng = np.random.default_rng(seed)
    if smooth:
        blocks = rng.integers(0, 256, size=(n, 4, 4, 3), dtype=np.uint8)
        images = blocks.repeat(8, axis=1).repeat(8, axis=2)
    else:
        images = rng.integers(0, 256, size=(n, 32, 32, 3), dtype=np.uint8)
    labels = (np.arange(n, dtype=np.int64) + seed) % len(CIFAR10_CLASSES)
    return images, labels


def batch_pickle(images: np.ndarray, labels: np.ndarray, batch_label: str) -> bytes:
    """One batch pickled like the official files: bytes keys, (N, 3072) CHW row-major data."""
    data = np.ascontiguousarray(images.transpose(0, 3, 1, 2)).reshape(len(images), 3072)
    batch = {
        b"batch_label": batch_label.encode(),
        b"labels": [int(x) for x in labels],
        b"data": data,
        b"filenames": [f"img_{i:05d}.png".encode() for i in range(len(images))],
    }
    return pickle.dumps(batch, protocol=2)


def _batch_files(n_train: int, n_test: int, seed: int) -> tuple[dict[str, bytes], Arrays]:
    train_images, train_labels = fake_images(n_train, seed)
    test_images, test_labels = fake_images(n_test, seed + 1)
    files: dict[str, bytes] = {}
    chunks = np.array_split(np.arange(n_train), 5)
    for i, chunk in enumerate(chunks, start=1):
        files[f"data_batch_{i}"] = batch_pickle(
            train_images[chunk], train_labels[chunk], f"training batch {i} of 5"
        )
    files["test_batch"] = batch_pickle(test_images, test_labels, "testing batch 1 of 1")
    meta = {
        b"label_names": [name.encode() for name in CIFAR10_CLASSES],
        b"num_cases_per_batch": len(chunks[0]),
        b"num_vis": 3072,
    }
    files["batches.meta"] = pickle.dumps(meta, protocol=2)
    return files, (train_images, train_labels, test_images, test_labels)


def write_batches_py(root: Path, n_train: int = 50, n_test: int = 20, seed: int = 0) -> Arrays:
    """Write root/cifar-10-batches-py/ (data_batch_1..5, test_batch, batches.meta)."""
    files, arrays = _batch_files(n_train, n_test, seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    for name, blob in files.items():
        (folder / name).write_bytes(blob)
    return arrays


def write_tar_gz(root: Path, n_train: int = 50, n_test: int = 20, seed: int = 0) -> Arrays:
    """Write root/cifar-10-python.tar.gz holding cifar-10-batches-py/ like the official archive."""
    files, arrays = _batch_files(n_train, n_test, seed)
    root.mkdir(parents=True, exist_ok=True)
    with tarfile.open(root / "cifar-10-python.tar.gz", "w:gz") as tar:
        folder = tarfile.TarInfo("cifar-10-batches-py")
        folder.type = tarfile.DIRTYPE
        tar.addfile(folder)
        for name, blob in files.items():
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
    return arrays


def write_image_folder(
    root: Path, n_train: int = 50, n_test: int = 20, seed: int = 0, ext: str = "png"
) -> Arrays:
    """Write root/train/<class>/*.ext and root/test/<class>/*.ext; arrays come back in loader order.

    Lossy formats get smooth images so that decoded pixels stay close to the written ones.
    """
    from PIL import Image

    smooth = ext.lower() in ("jpg", "jpeg")
    train_images, train_labels = fake_images(n_train, seed, smooth)
    test_images, test_labels = fake_images(n_test, seed + 1, smooth)
    result: list[np.ndarray] = []
    for split, images, labels in (
        ("train", train_images, train_labels),
        ("test", test_images, test_labels),
    ):
        for i, (image, label) in enumerate(zip(images, labels, strict=True)):
            folder = root / split / CIFAR10_CLASSES[label]
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image).save(folder / f"{i:05d}.{ext}", quality=95, subsampling=0)
        order = np.lexsort((np.arange(len(labels)), labels))
        result += [images[order], labels[order]]
    return result[0], result[1], result[2], result[3]
