"""Tests for fedcore.partition: spec parsing, the three split kinds, and the stats summary."""

from __future__ import annotations

import json

import numpy as np
import pytest

from fedcore.data import CIFAR10_CLASSES
from fedcore.errors import UsageError
from fedcore.partition import PartitionSpec, parse_partition, partition_indices, partition_stats


def cycling_labels(n: int) -> np.ndarray:
    return np.arange(n, dtype=np.int64) % 10


def random_labels(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 10, size=n).astype(np.int64)


def assert_exact_cover(parts: list[np.ndarray], n: int) -> None:
    np.testing.assert_array_equal(np.sort(np.concatenate(parts)), np.arange(n))


def mean_label_entropy(labels: np.ndarray, parts: list[np.ndarray]) -> float:
    entropies = []
    for part in parts:
        p = np.bincount(labels[part], minlength=10) / len(part)
        p = p[p > 0]
        entropies.append(float(-(p * np.log(p)).sum()))
    return float(np.mean(entropies))


@pytest.mark.parametrize(
    ("text", "expected", "rendered"),
    [
        ("iid", PartitionSpec("iid"), "iid"),
        ("dirichlet", PartitionSpec("dirichlet", alpha=0.5), "dirichlet:0.5"),
        ("dirichlet:0.1", PartitionSpec("dirichlet", alpha=0.1), "dirichlet:0.1"),
        ("Dirichlet:100", PartitionSpec("dirichlet", alpha=100.0), "dirichlet:100"),
        ("classes:2", PartitionSpec("classes", classes_per_client=2), "classes:2"),
    ],
)
def test_parse_partition_accepts_valid_specs(text: str, expected: PartitionSpec, rendered: str) -> None:
    spec = parse_partition(text)

    assert spec == expected
    assert str(spec) == rendered
    assert parse_partition(str(spec)) == spec


@pytest.mark.parametrize(
    "text",
    [
        "foo",
        "",
        "iid:3",
        "dirichlet:0",
        "dirichlet:-1",
        "dirichlet:x",
        "dirichlet:nan",
        "dirichlet:inf",
        "classes",
        "classes:0",
        "classes:two",
        "classes:1.5",
    ],
)
def test_parse_partition_rejects_bad_specs(text: str) -> None:
    with pytest.raises(UsageError) as err:
        parse_partition(text)

    assert str(err.value) == f"bad --partition {text!r}: use iid, dirichlet:ALPHA (ALPHA > 0) or classes:K"


def test_iid_is_a_shuffled_equal_split() -> None:
    labels = cycling_labels(103)

    parts = partition_indices(labels, 4, PartitionSpec("iid"), seed=0)

    assert_exact_cover(parts, 103)
    assert sorted(len(p) for p in parts) == [25, 26, 26, 26]
    assert not np.array_equal(parts[0], np.arange(len(parts[0])))
    assert all(p.dtype == np.int64 for p in parts)


@pytest.mark.parametrize("spec", ["iid", "dirichlet:0.3", "classes:3"])
def test_partitions_are_deterministic_per_seed(spec: str) -> None:
    labels = random_labels(2000)
    parsed = parse_partition(spec)

    first = partition_indices(labels, 7, parsed, seed=5)
    again = partition_indices(labels, 7, parsed, seed=5)
    other = partition_indices(labels, 7, parsed, seed=6)

    assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))
    assert not all(np.array_equal(a, b) for a, b in zip(first, other, strict=True))


def test_dirichlet_covers_every_sample_with_minimum_sizes() -> None:
    labels = random_labels(5000)

    parts = partition_indices(labels, 20, PartitionSpec("dirichlet", alpha=0.5), seed=1)

    assert_exact_cover(parts, 5000)
    assert min(len(p) for p in parts) >= 10


def test_dirichlet_skew_grows_as_alpha_falls() -> None:
    labels = random_labels(10_000)

    entropies = [
        mean_label_entropy(labels, partition_indices(labels, 10, PartitionSpec("dirichlet", alpha=a), seed=0))
        for a in (100.0, 1.0, 0.1)
    ]

    assert entropies[0] > entropies[1] > entropies[2]
    assert entropies[0] > 0.95 * np.log(10)
    assert entropies[2] < 0.6 * np.log(10)


def test_extreme_dirichlet_still_leaves_no_client_small() -> None:
    labels = random_labels(500)

    parts = partition_indices(labels, 50, PartitionSpec("dirichlet", alpha=0.001), seed=2)

    assert_exact_cover(parts, 500)
    assert min(len(p) for p in parts) == 10


def test_dirichlet_with_as_many_clients_as_samples() -> None:
    labels = cycling_labels(30)

    parts = partition_indices(labels, 30, PartitionSpec("dirichlet", alpha=0.1), seed=0)

    assert_exact_cover(parts, 30)
    assert [len(p) for p in parts] == [1] * 30


def test_classes_gives_each_client_exactly_k_labels_split_evenly() -> None:
    labels = random_labels(3000)

    parts = partition_indices(labels, 8, PartitionSpec("classes", classes_per_client=3), seed=0)

    assert_exact_cover(parts, 3000)
    assert [sorted(set(labels[p].tolist())) for p in parts[:4]] == [
        [0, 1, 2],
        [3, 4, 5],
        [6, 7, 8],
        [0, 1, 9],
    ]
    assert all(len(np.unique(labels[p])) == 3 for p in parts)
    holders_of_0 = [int((labels[p] == 0).sum()) for p in parts if (labels[p] == 0).any()]
    assert len(holders_of_0) == 3
    assert max(holders_of_0) - min(holders_of_0) <= 1
    assert sum(holders_of_0) == int((labels == 0).sum())


def test_classes_with_too_few_clients_leaves_unheld_labels_unused() -> None:
    labels = cycling_labels(200)

    parts = partition_indices(labels, 2, PartitionSpec("classes", classes_per_client=2), seed=0)

    np.testing.assert_array_equal(np.sort(np.concatenate(parts)), np.flatnonzero(labels < 4))
    assert [sorted(set(labels[p].tolist())) for p in parts] == [[0, 1], [2, 3]]


@pytest.mark.parametrize("k", [0, 11])
def test_classes_k_out_of_range_is_rejected(k: int) -> None:
    with pytest.raises(UsageError, match="K must be between 1 and 10"):
        partition_indices(cycling_labels(100), 2, PartitionSpec("classes", classes_per_client=k), seed=0)


def test_classes_that_leave_a_client_empty_are_rejected() -> None:
    labels = np.array([0] * 20 + [1] * 20, dtype=np.int64)

    with pytest.raises(UsageError, match="leaves client 2 without samples"):
        partition_indices(labels, 3, PartitionSpec("classes", classes_per_client=1), seed=0)


def test_more_clients_than_samples_is_rejected() -> None:
    with pytest.raises(UsageError) as err:
        partition_indices(cycling_labels(50), 100, PartitionSpec("iid"), seed=0)

    assert str(err.value) == (
        "--clients 100 is more than the 50 training samples; use fewer clients or a larger --limit-train"
    )


def test_zero_clients_is_rejected() -> None:
    with pytest.raises(UsageError, match="--clients must be at least 1"):
        partition_indices(cycling_labels(50), 0, PartitionSpec("iid"), seed=0)


def test_partition_stats_counts_labels_per_client() -> None:
    labels = np.array([0, 0, 1, 2, 2, 2, 9], dtype=np.int64)
    parts = [np.array([0, 2, 6]), np.array([1, 3, 4, 5])]

    stats = partition_stats(
        labels, parts, CIFAR10_CLASSES, spec=PartitionSpec("classes", classes_per_client=2)
    )

    assert stats["spec"] == "classes:2"
    assert stats["num_clients"] == 2
    assert stats["num_samples"] == 7
    assert stats["clients"][0]["client"] == 0
    assert stats["clients"][0]["samples"] == 3
    assert stats["clients"][0]["labels"] == dict.fromkeys(CIFAR10_CLASSES, 0) | {
        "airplane": 1,
        "automobile": 1,
        "truck": 1,
    }
    assert stats["label_counts"] == [[1, 1, 0, 0, 0, 0, 0, 0, 0, 1], [1, 0, 3, 0, 0, 0, 0, 0, 0, 0]]
    assert json.loads(json.dumps(stats)) == stats
