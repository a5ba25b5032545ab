"""One training loop and one evaluation for clients and the local baseline, data kept on the device."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from fedcore.config import RunConfig
from fedcore.data import ImageSet

CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)
PAD = 4

# (epoch, batch, batches, samples seen in this call, mean loss of the last finished epoch)
ProgressFn = Callable[[int, int, int, int, "float | None"], None]


def pick_device() -> torch.device:
    """The process's GPU when it has one (CUDA_VISIBLE_DEVICES decides which), else the CPU."""
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def use_bf16(precision: str, device: torch.device) -> bool:
    return device.type == "cuda" and precision in ("auto", "bf16")


class DeviceData:
    """A labelled image set as uint8 on the device, normalised and augmented there per batch."""

    def __init__(self, images: ImageSet, device: torch.device, *, augment: bool) -> None:
        chw = torch.from_numpy(np.ascontiguousarray(images.images.transpose(0, 3, 1, 2)))
        self.device = device
        self.augment = augment
        self.labels = torch.from_numpy(images.labels.astype(np.int64)).to(device)
        self.count = len(images)
        if augment:
            chw = nn.functional.pad(chw, (PAD, PAD, PAD, PAD), mode="constant", value=0)
        self.images = chw.to(device)
        self.mean = torch.tensor(CIFAR_MEAN, device=device).view(1, 3, 1, 1) * 255
        self.std = torch.tensor(CIFAR_STD, device=device).view(1, 3, 1, 1) * 255
        self._range = torch.arange(32, device=device)

    def __len__(self) -> int:
        return self.count

    def batch(self, index: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """Normalised float images for `index`: randomly cropped and flipped when augmenting."""
        raw = self.images[index]
        if self.augment and generator is not None:
            n = raw.shape[0]
            shifts = torch.randint(0, 2 * PAD + 1, (2, n), device=self.device, generator=generator)
            rows = (shifts[0][:, None] + self._range)[:, None, :, None]
            cols = (shifts[1][:, None] + self._range)[:, None, None, :]
            batch_ix = torch.arange(n, device=self.device)[:, None, None, None]
            chan_ix = torch.arange(3, device=self.device)[None, :, None, None]
            raw = raw[batch_ix, chan_ix, rows, cols]
            flip = torch.rand(n, device=self.device, generator=generator) < 0.5
            raw = torch.where(flip[:, None, None, None], raw.flip(3), raw)
        elif self.augment:
            raw = raw[:, :, PAD:-PAD, PAD:-PAD]
        x = (raw.float() - self.mean) / self.std
        if self.device.type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
        return x


@dataclass(frozen=True)
class TrainStats:
    loss: float
    samples: int
    seconds: float


def make_optimizer(model: nn.Module, cfg: RunConfig, lr: float) -> torch.optim.Optimizer:
    if cfg.optimizer == "adam":
        return torch.optim.Adam(model.parameters(), lr=lr, weight_decay=cfg.weight_decay)
    return torch.optim.SGD(
        model.parameters(), lr=lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay
    )


def scheduled_lr(cfg: RunConfig, step: int, total: int) -> float:
    """Learning rate for step `step` (0-based round or epoch) of `total` under cfg.schedule."""
    if cfg.schedule == "cosine" and total > 1:
        return cfg.lr * 0.5 * (1 + math.cos(math.pi * step / total))
    return cfg.lr


def prepare_model(model: nn.Module, device: torch.device) -> nn.Module:
    model = model.to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    return model


def train_epochs(
    model: nn.Module,
    data: DeviceData,
    optimizer: torch.optim.Optimizer,
    *,
    epochs: int,
    batch_size: int,
    precision: str,
    generator: torch.Generator,
    proximal_mu: float = 0.0,
    progress: ProgressFn | None = None,
    progress_every: float = 0.5,
) -> TrainStats:
    """Train for `epochs` passes over `data`; the loss is summed on the device, read once an epoch."""
    device = data.device
    model.train()
    criterion = nn.CrossEntropyLoss()
    autocast = (
        torch.autocast("cuda", dtype=torch.bfloat16) if use_bf16(precision, device) else nullcontext()
    )
    anchors = [p.detach().clone() for p in model.parameters()] if proximal_mu > 0 else []
    batches = max(1, math.ceil(len(data) / batch_size))
    started = last_report = time.perf_counter()
    samples = 0
    epoch_loss: float | None = None
    for epoch in range(1, epochs + 1):
        order = torch.randperm(len(data), device=device, generator=generator)
        loss_sum = torch.zeros((), device=device)
        for b in range(batches):
            index = order[b * batch_size : (b + 1) * batch_size]
            x = data.batch(index, generator)
            y = data.labels[index]
            with autocast:
                loss = criterion(model(x), y)
            if anchors:
                prox = sum(((p - a) ** 2).sum() for p, a in zip(model.parameters(), anchors, strict=True))
                loss = loss + 0.5 * proximal_mu * prox
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_sum += loss.detach() * len(index)
            samples += len(index)
            if progress is not None and time.perf_counter() - last_report >= progress_every:
                last_report = time.perf_counter()
                progress(epoch, b + 1, batches, samples, epoch_loss)
        epoch_loss = float(loss_sum) / len(data)
        if progress is not None:
            progress(epoch, batches, batches, samples, epoch_loss)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return TrainStats(
        loss=epoch_loss if epoch_loss is not None else float("nan"),
        samples=samples,
        seconds=time.perf_counter() - started,
    )


@torch.no_grad()
def evaluate(
    model: nn.Module, data: DeviceData, *, batch_size: int, precision: str
) -> tuple[float, float]:
    """Mean cross-entropy loss and accuracy of `model` on `data` (no augmentation)."""
    device = data.device
    model.eval()
    autocast = (
        torch.autocast("cuda", dtype=torch.bfloat16) if use_bf16(precision, device) else nullcontext()
    )
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.long)
    for start in range(0, len(data), batch_size):
        index = torch.arange(start, min(start + batch_size, len(data)), device=device)
        x = data.batch(index, None)
        y = data.labels[index]
        with autocast:
            logits = model(x)
        loss_sum += nn.functional.cross_entropy(logits.float(), y, reduction="sum")
        correct += (logits.argmax(1) == y).sum()
    n = max(1, len(data))
    return float(loss_sum) / n, float(correct) / n


def seeded_generator(device: torch.device, *seeds: int) -> torch.Generator:
    """A generator on `device` seeded from a tuple (run seed, client, round...)."""
    generator = torch.Generator(device=device)
    generator.manual_seed(hash(tuple(seeds)) & 0x7FFF_FFFF_FFFF_FFFF)
    return generator
