"""What the server, the clients and the local baseline share: data for a config, and a client's share."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from fedcore.config import RunConfig
from fedcore.data import DataSplit, ImageSet, load_dataset, load_train_labels
from fedcore.partition import parse_partition, partition_indices


def load_split(cfg: RunConfig, log: Callable[[str], None] = print) -> DataSplit:
    """The train and test sets a config names (decoded once, then read from the cache)."""
    key = (cfg.dataset, cfg.data_dir, cfg.seed, cfg.limit_train, cfg.limit_test)
    if key not in _SPLITS:
        _SPLITS.clear()
        _SPLITS[key] = load_dataset(
            cfg.dataset,
            Path(cfg.data_dir).expanduser() if cfg.data_dir else None,
            seed=cfg.seed,
            limit_train=cfg.limit_train or None,
            limit_test=cfg.limit_test or None,
            download=True,
            log=log,
        )
    return _SPLITS[key]


_SPLITS: dict[tuple[object, ...], DataSplit] = {}


def train_labels(cfg: RunConfig, log: Callable[[str], None] = print) -> np.ndarray:
    """The training labels of `load_split(cfg)`, without its images when they are cached."""
    return load_train_labels(
        cfg.dataset,
        Path(cfg.data_dir).expanduser() if cfg.data_dir else None,
        seed=cfg.seed,
        limit_train=cfg.limit_train or None,
        download=True,
        log=log,
    )


def client_share(cfg: RunConfig, split: DataSplit, partition_id: int, num_partitions: int) -> ImageSet:
    """Client `partition_id`'s training images under cfg.partition, the same in every process."""
    parts = partition_indices(
        split.train.labels, num_partitions, parse_partition(cfg.partition), cfg.seed,
        num_classes=len(split.classes),
    )
    index = parts[partition_id]
    return ImageSet(images=split.train.images[index], labels=split.train.labels[index])
