"""One training loop and one evaluation for clients and the local baseline, data kept on the device."""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from fedcore.augment import DeviceData
from fedcore.config import RunConfig, schedule_gamma
from fedcore.data import ImageSet
from fedcore.device import pick_device, use_bf16  # noqa: F401 - pick_device: importable here too

# (epoch, batch, batches, samples seen in this call, mean loss of the last finished epoch)
ProgressFn = Callable[[int, int, int, int, "float | None"], None]


def device_data(images: ImageSet, device: torch.device, cfg: RunConfig, *, train: bool,
                layout: np.ndarray | None = None) -> DeviceData:
    """`images` on the device under the config's augmentation, normalisation and image size
    (`layout`: their host_layout, made before; see DeviceData)."""
    return DeviceData(images, device, augment=cfg.augment, normalize=cfg.normalize,
                      image_size=cfg.image_size, train=train, layout=layout)


@dataclass(frozen=True)
class TrainStats:
    loss: float
    samples: int
    seconds: float
    accuracy: float = float("nan")  # on the training batches of the last epoch, as trained


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
    gamma = schedule_gamma(cfg.schedule)
    if gamma is not None:
        return cfg.lr * gamma**step
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
    epoch_accuracy = float("nan")
    for epoch in range(1, epochs + 1):
        order = torch.randperm(len(data), device=device, generator=generator)
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), device=device, dtype=torch.long)
        for b in range(batches):
            index = order[b * batch_size : (b + 1) * batch_size]
            x = data.batch(index, generator)
            y = data.labels[index]
            with autocast:
                logits = model(x)
                loss = criterion(logits, y)
            correct += (logits.detach().argmax(1) == y).sum()
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
        epoch_accuracy = float(correct) / max(1, len(data))
        if progress is not None:
            progress(epoch, batches, batches, samples, epoch_loss)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return TrainStats(
        loss=epoch_loss if epoch_loss is not None else float("nan"),
        samples=samples,
        seconds=time.perf_counter() - started,
        accuracy=epoch_accuracy,
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


def derived_seed(*seeds: int) -> int:
    """One 63-bit seed from a tuple (run seed, client, round...), the same in every process."""
    digest = hashlib.blake2b(repr(tuple(int(s) for s in seeds)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") & 0x7FFF_FFFF_FFFF_FFFF


def seeded_generator(device: torch.device, *seeds: int) -> torch.Generator:
    """A generator on `device` for shuffling and augmentation, seeded from (run seed, client, round...)."""
    generator = torch.Generator(device=device)
    generator.manual_seed(derived_seed(*seeds))
    return generator


def seed_torch(*seeds: int) -> None:
    """Seed torch's global generators (dropout draws from them) from (run seed, client, round...)."""
    torch.manual_seed(derived_seed(0xD0, *seeds))
