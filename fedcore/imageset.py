"""A set of CIFAR-10-shaped images with their labels, and CIFAR-10's class names."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

CIFAR10_CLASSES: tuple[str, ...] = tuple(
    "airplane automobile bird cat deer dog frog horse ship truck".split()
)
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
