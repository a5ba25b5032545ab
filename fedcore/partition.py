"""Split a training set among federated clients: iid, Dirichlet label skew, or K classes each."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from fedcore.errors import UsageError
from fedcore.partition_spec import (  # noqa: F401  (re-exported: the names fedcore.partition always had)
    DEFAULT_ALPHA,
    PARTITION_KINDS,
    PartitionSpec,
    bad_spec,
    parse_partition,
)

DIRICHLET_TRIES = 100
MIN_CLIENT_SAMPLES = 10


def partition_indices(
    labels: np.ndarray, num_clients: int, spec: PartitionSpec, seed: int, num_classes: int = 10
) -> list[np.ndarray]:
    """Sorted int64 sample indices per client; deterministic for (labels, num_clients, spec, seed).

    iid and dirichlet place every sample in exactly one client. classes:K gives client i the labels
    (i*K + j) % num_classes for j < K and splits each label evenly among its holders; when
    num_clients * K < num_classes the labels no client holds are left unused. A client has all K
    labels as long as each label has at least as many samples as clients holding it.
    """
    labels = np.asarray(labels, dtype=np.int64)
    n = len(labels)
    if num_clients < 1:
        raise UsageError(f"--clients must be at least 1 (got {num_clients})")
    if num_clients > n:
        raise UsageError(
            f"--clients {num_clients} is more than the {n} training samples; "
            "use fewer clients or a larger --limit-train"
        )
    if n and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"labels must lie in [0, {num_classes}), got [{labels.min()}, {labels.max()}]")
    rng = np.random.default_rng(seed)
    if spec.kind == "iid":
        parts = np.array_split(rng.permutation(n), num_clients)
    elif spec.kind == "dirichlet":
        if spec.alpha is None or not (spec.alpha > 0 and math.isfinite(spec.alpha)):
            raise bad_spec(str(spec))
        parts = _dirichlet(labels, num_clients, spec.alpha, num_classes, rng)
    elif spec.kind == "classes":
        parts = _by_classes(labels, num_clients, spec, num_classes, rng)
    else:
        raise bad_spec(spec.kind)
    return [np.sort(np.asarray(p, dtype=np.int64)) for p in parts]


def _dirichlet(
    labels: np.ndarray, num_clients: int, alpha: float, num_classes: int, rng: np.random.Generator
) -> list[np.ndarray]:
    n = len(labels)
    min_size = min(MIN_CLIENT_SAMPLES, n // num_clients)
    by_class = [rng.permutation(np.flatnonzero(labels == c)) for c in range(num_classes)]
    concentration = np.full(num_clients, alpha)
    parts: list[list[np.ndarray]] = []
    for _ in range(DIRICHLET_TRIES):
        parts = [[] for _ in range(num_clients)]
        sizes = np.zeros(num_clients, dtype=np.int64)
        for idx in by_class:
            if not len(idx):
                continue
            props = np.nan_to_num(rng.dirichlet(concentration))
            # Clients already holding their fair share take no more (keeps sizes from collapsing).
            capped = props * (sizes < n / num_clients)
            props = capped if capped.sum() > 0 else props
            if props.sum() <= 0:
                props = np.eye(num_clients)[rng.integers(num_clients)]
            cuts = (np.cumsum(props / props.sum()) * len(idx)).astype(np.int64)[:-1]
            for client, chunk in enumerate(np.split(idx, cuts)):
                parts[client].append(chunk)
                sizes[client] += len(chunk)
        if sizes.min() >= min_size:
            break
    merged = [np.concatenate(p) if p else np.empty(0, np.int64) for p in parts]
    return _top_up(merged, min_size)


def _top_up(parts: list[np.ndarray], min_size: int) -> list[np.ndarray]:
    """Move samples from the largest clients until every client has at least min_size."""
    pool = [list(p) for p in parts]
    sizes = np.array([len(p) for p in pool])
    while sizes.min() < min_size:
        small, large = int(sizes.argmin()), int(sizes.argmax())
        if sizes[large] <= min_size:
            break
        take = int(min(min_size - sizes[small], sizes[large] - min_size))
        pool[small].extend(pool[large][-take:])
        del pool[large][-take:]
        sizes[small] += take
        sizes[large] -= take
    return [np.asarray(p, dtype=np.int64) for p in pool]


def _by_classes(
    labels: np.ndarray,
    num_clients: int,
    spec: PartitionSpec,
    num_classes: int,
    rng: np.random.Generator,
) -> list[np.ndarray]:
    k = spec.classes_per_client
    if k is None or not 1 <= k <= num_classes:
        raise UsageError(f"bad --partition {str(spec)!r}: K must be between 1 and {num_classes}")
    holders: list[list[int]] = [[] for _ in range(num_classes)]
    for client in range(num_clients):
        for j in range(k):
            holders[(client * k + j) % num_classes].append(client)
    parts: list[list[np.ndarray]] = [[] for _ in range(num_clients)]
    for label, clients in enumerate(holders):
        if not clients:
            continue
        idx = rng.permutation(np.flatnonzero(labels == label))
        for client, chunk in zip(clients, np.array_split(idx, len(clients)), strict=True):
            parts[client].append(chunk)
    merged = [np.concatenate(p) for p in parts]
    empty = [i for i, p in enumerate(merged) if not len(p)]
    if empty:
        raise UsageError(
            f"--partition {spec} leaves client {empty[0]} without samples; "
            "use fewer clients or a larger --limit-train"
        )
    return merged


def partition_stats(
    labels: np.ndarray,
    parts: list[np.ndarray],
    classes: Sequence[str],
    spec: PartitionSpec | str | None = None,
) -> dict[str, Any]:
    """JSON-ready summary: samples and per-class counts for every client."""
    labels = np.asarray(labels, dtype=np.int64)
    counts = [np.bincount(labels[p], minlength=len(classes))[: len(classes)] for p in parts]
    return {
        "spec": None if spec is None else str(spec),
        "num_clients": len(parts),
        "num_samples": int(sum(len(p) for p in parts)),
        "clients": [
            {
                "client": i,
                "samples": int(len(p)),
                "labels": {name: int(c) for name, c in zip(classes, row, strict=True)},
            }
            for i, (p, row) in enumerate(zip(parts, counts, strict=True))
        ],
        "label_counts": [[int(c) for c in row] for row in counts],
    }
