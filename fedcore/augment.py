"""Images kept as uint8 on the device; cropped, flipped, jittered, normalised and resized there per batch."""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from fedcore.catalog import AUGMENTS, NORMALIZATIONS
from fedcore.data import ImageSet

PAD = 4
SIDE = 32  # CIFAR-10 images are 32x32
CROP24 = 24
MEANS = {"cifar": (0.4914, 0.4822, 0.4465), "imagenet": (0.485, 0.456, 0.406), "half": (0.5, 0.5, 0.5)}
STDS = {"cifar": (0.2470, 0.2435, 0.2616), "imagenet": (0.229, 0.224, 0.225), "half": (0.5, 0.5, 0.5)}
PADDED = ("flip-crop", "flip-crop-reflect", "seed-local")


def policy_name(augment: bool | str) -> str:
    """An --augment name; the old boolean form (True: crop and flip, False: none) still works."""
    if isinstance(augment, bool):
        return "flip-crop" if augment else "none"
    if augment not in AUGMENTS:
        raise ValueError(f"unknown augmentation '{augment}'")
    return augment


def input_side(augment: bool | str, image_size: int) -> int:
    """The side of the square images the model sees."""
    if image_size:
        return image_size
    return CROP24 if policy_name(augment) == "crop24" else SIDE


def reflect_pad(chw: torch.Tensor, pad: int) -> torch.Tensor:
    """Reflection padding of uint8 images by gathering (no float copy of the whole set)."""
    side = chw.shape[-1]
    index = torch.tensor([abs(i) if i < side else 2 * (side - 1) - i for i in range(-pad, side + pad)])
    return chw[:, :, index][:, :, :, index].contiguous()


def host_layout(images: ImageSet, augment: bool | str, *, train: bool) -> np.ndarray:
    """`images` laid out as DeviceData keeps them (uint8 N x C x H x W, padded for a cropping
    policy's training set), by numpy alone: no torch work runs, so the process may fork after."""
    chw = np.ascontiguousarray(images.images.transpose(0, 3, 1, 2))
    policy = policy_name(augment)
    if train and policy in PADDED:
        width = ((0, 0), (0, 0), (PAD, PAD), (PAD, PAD))
        chw = (np.pad(chw, width, mode="reflect") if policy == "flip-crop-reflect"
               else np.pad(chw, width, mode="constant"))
    return chw


class DeviceData:
    """A labelled image set as uint8 on the device, augmented (training only) and normalised per batch.

    `train=False` gives the test-time view of the same policy: no randomness, and for `crop24` the
    centre 24x24 (TensorFlow's CIFAR-10 tutorial evaluates on centre crops).
    """

    def __init__(self, images: ImageSet, device: torch.device, *, augment: bool | str = "none",
                 normalize: str = "cifar", image_size: int = 0, train: bool = True,
                 layout: np.ndarray | None = None) -> None:
        """`layout`: host_layout(images, augment, train=train), made before: on the CPU the
        images are that array (no copy; never written), elsewhere copied from it."""
        if normalize not in NORMALIZATIONS:
            raise ValueError(f"unknown normalisation '{normalize}'")
        chw = torch.from_numpy(np.ascontiguousarray(images.images.transpose(0, 3, 1, 2))
                               if layout is None else layout)
        self.device = device
        self.policy = policy_name(augment)
        self.train = train
        self.normalize = normalize
        self.image_size = image_size
        self.labels = torch.from_numpy(images.labels.astype(np.int64)).to(device)
        self.count = len(images)
        self.padded = train and self.policy in PADDED
        if layout is not None:
            if tuple(chw.shape[:2]) != (self.count, 3):
                raise ValueError(f"a layout of {tuple(chw.shape)} for {self.count} images")
        elif self.padded and self.policy == "flip-crop-reflect":
            chw = reflect_pad(chw, PAD)
        elif self.padded:
            chw = nn.functional.pad(chw, (PAD, PAD, PAD, PAD), mode="constant", value=0)
        self.images = chw.to(device)
        mean, std = MEANS.get(normalize, (0.0,) * 3), STDS.get(normalize, (1.0,) * 3)
        self.mean = torch.tensor(mean, device=device).view(1, 3, 1, 1)
        self.std = torch.tensor(std, device=device).view(1, 3, 1, 1)

    def __len__(self) -> int:
        return self.count

    @property
    def augment(self) -> bool:
        return self.policy != "none"

    def batch(self, index: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """Model inputs for `index`; random augmentation only with a generator on a training set."""
        raw = self.images[index]
        rng = generator if self.train and self.policy != "none" else None
        raw = self._geometry(raw, rng)
        x = raw.float() / 255
        if rng is not None:
            x = self._photometric(x, rng)
        x = self._normalise(x)
        if self.image_size and self.image_size != x.shape[-1]:
            x = nn.functional.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear",
                                          align_corners=False)
        if self.device.type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def _geometry(self, raw: torch.Tensor, rng: torch.Generator | None) -> torch.Tensor:
        n, side = raw.shape[0], raw.shape[-1]
        if rng is None:  # the test-time view
            if self.padded:
                return raw[:, :, PAD:-PAD, PAD:-PAD]
            if self.policy == "crop24":
                start = (side - CROP24) // 2
                return raw[:, :, start : start + CROP24, start : start + CROP24]
            return raw
        if self.policy == "flip":
            return self._flip(raw, rng)
        out = CROP24 if self.policy == "crop24" else SIDE
        shifts = torch.randint(0, side - out + 1, (2, n), device=self.device, generator=rng)
        steps = torch.arange(out, device=self.device)
        rows = (shifts[0][:, None] + steps)[:, None, :, None]
        cols = (shifts[1][:, None] + steps)[:, None, None, :]
        batch_ix = torch.arange(n, device=self.device)[:, None, None, None]
        chan_ix = torch.arange(raw.shape[1], device=self.device)[None, :, None, None]
        return self._flip(raw[batch_ix, chan_ix, rows, cols], rng)

    def _flip(self, raw: torch.Tensor, rng: torch.Generator) -> torch.Tensor:
        flip = torch.rand(raw.shape[0], device=self.device, generator=rng) < 0.5
        return torch.where(flip[:, None, None, None], raw.flip(3), raw)

    def _photometric(self, x: torch.Tensor, rng: torch.Generator) -> torch.Tensor:
        n = x.shape[0]

        def uniform(low: float, high: float) -> torch.Tensor:
            u = torch.rand(n, device=self.device, generator=rng)
            return (low + (high - low) * u).view(n, 1, 1, 1)

        if self.policy == "seed-local":  # RandomRotation(15), ColorJitter(0.2, 0.2), clamped like PIL
            x = rotate(x, uniform(-15.0, 15.0).view(n))
            x = (x * uniform(0.8, 1.2)).clamp(0, 1)
            grey = (0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]).mean((1, 2)).view(n, 1, 1, 1)
            x = ((x - grey) * uniform(0.8, 1.2) + grey).clamp(0, 1)
        elif self.policy == "crop24":  # random_brightness(63/255), random_contrast(0.2, 1.8)
            x = x + uniform(-63 / 255, 63 / 255)
            mean = x.mean((2, 3), keepdim=True)
            x = (x - mean) * uniform(0.2, 1.8) + mean
        return x

    def _normalise(self, x: torch.Tensor) -> torch.Tensor:
        if self.normalize == "unit":
            return x
        if self.normalize == "per-image":
            flat = x.flatten(1)
            floor = 1.0 / math.sqrt(flat.shape[1])
            std = flat.std(1, unbiased=False).clamp_min(floor).view(-1, 1, 1, 1)
            return (x - flat.mean(1).view(-1, 1, 1, 1)) / std
        return (x - self.mean) / self.std


def rotate(x: torch.Tensor, degrees: torch.Tensor) -> torch.Tensor:
    """Rotate each image by its angle about the centre; nearest pixels, zeros outside."""
    theta = degrees * math.pi / 180
    cos, sin = torch.cos(theta), torch.sin(theta)
    zero = torch.zeros_like(cos)
    matrix = torch.stack([torch.stack([cos, -sin, zero], 1), torch.stack([sin, cos, zero], 1)], 1)
    grid = nn.functional.affine_grid(matrix, list(x.shape), align_corners=False)
    return nn.functional.grid_sample(x, grid, mode="nearest", padding_mode="zeros", align_corners=False)
