"""A pool worker's data: the data set on the device once, each client's partition only as indices.

`preload` before the workers are forked (the simulation engine's host does) lets every worker use
the one copy of the images in host memory, shared copy-on-write and never written.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from fedcore.augment import DeviceData, host_layout, policy_name
from fedcore.config import RunConfig
from fedcore.models import build_model
from fedcore.partition import parse_partition, partition_indices
from fedcore.task import load_split
from fedcore.train import device_data, pick_device, prepare_model


class PartitionView(DeviceData):
    """Client rows of a device-resident data set: batches gather through the rows.

    Training on a view draws the same batches and augmentations as training on a copy of the
    client's images (the shuffled order and the random draws depend only on the count).
    """

    def __init__(self, base: DeviceData, rows: np.ndarray) -> None:  # noqa: D107 - no super init
        self.base = base
        self.rows = torch.as_tensor(rows, dtype=torch.long, device=base.device)
        self.device = base.device
        self.policy = base.policy
        self.train = base.train
        self.labels = base.labels[self.rows]
        self.count = len(rows)

    def batch(self, index: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        return self.base.batch(self.rows[index], generator)


@dataclass
class SharedData:
    """What one worker keeps for every client it trains: one model, the sets, the partitions."""

    key: tuple[object, ...]
    device: torch.device
    model: nn.Module
    train: DeviceData
    test: DeviceData
    partitions: dict[tuple[str, int, int], list[np.ndarray]]


_SHARED: dict[str, SharedData] = {}
_LAYOUTS: dict[tuple[object, ...], tuple[np.ndarray, np.ndarray]] = {}  # key: layout_key


def layout_key(cfg: RunConfig) -> tuple[object, ...]:
    """What the images' host layout depends on: the split (fedcore.task.load_split's key) and
    the augmentation's padding."""
    return (cfg.dataset, cfg.data_dir, cfg.seed, cfg.limit_train, cfg.limit_test,
            policy_name(cfg.augment))


def preload(cfg: RunConfig) -> None:
    """Load the data set and lay out its train and test images as the workers keep them, with
    numpy alone (the caller forks afterwards)."""
    split = load_split(cfg)
    _LAYOUTS.clear()
    _LAYOUTS[layout_key(cfg)] = (host_layout(split.train, cfg.augment, train=True),
                                 host_layout(split.test, cfg.augment, train=False))


def shared_data(cfg: RunConfig) -> SharedData:
    """The model and the whole train and test sets on this process's device, built once."""
    key = (cfg.dataset, cfg.data_dir, cfg.limit_train, cfg.limit_test, cfg.seed, cfg.model,
           cfg.augment, cfg.normalize, cfg.image_size)
    data = _SHARED.get("worker")
    if data is None or data.key != key:
        _SHARED.clear()
        device = pick_device()
        split = load_split(cfg)
        train, test = _LAYOUTS.get(layout_key(cfg), (None, None))
        data = SharedData(
            key=key, device=device, model=prepare_model(build_model(cfg.model), device),
            train=device_data(split.train, device, cfg, train=True, layout=train),
            test=device_data(split.test, device, cfg, train=False, layout=test), partitions={})
        _SHARED["worker"] = data
    return data


def client_view(cfg: RunConfig, partition_id: int, num_partitions: int) -> tuple[SharedData, DeviceData]:
    """This worker's shared data and client `partition_id`'s training rows of it."""
    data = shared_data(cfg)
    part_key = (cfg.partition, num_partitions, cfg.seed)
    parts = data.partitions.get(part_key)
    if parts is None:
        split = load_split(cfg)
        parts = partition_indices(split.train.labels, num_partitions, parse_partition(cfg.partition),
                                  cfg.seed, num_classes=len(split.classes))
        data.partitions = {part_key: parts}
    return data, PartitionView(data.train, parts[partition_id])
