"""The synthetic data set: CIFAR-10-shaped images of ten learnable classes, made from a seed, for
runs and tests without the real images."""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from fedcore.imageset import CIFAR10_CLASSES, ImageSet

SYNTHETIC_TRAIN = 10_000
SYNTHETIC_TEST = 2_000


def synthetic_labels(rng: np.random.Generator, n: int, num_classes: int) -> np.ndarray:
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
    labels = synthetic_labels(rng, n, num_classes)
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
