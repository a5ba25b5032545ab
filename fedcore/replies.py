"""Every training reply checked before aggregation: a bad one is dropped and named, never averaged."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from flwr.app import ArrayRecord, Message

# The one ArrayRecord and the one MetricRecord of a training reply (fedcore.client_app.train),
# and the metrics it holds: Flower's strategies need every reply to hold the same keys.
ARRAYS, METRICS = "arrays", "metrics"
TRAIN_METRICS = ("train-loss", "train-accuracy", "num-examples", "train-seconds", "train-started",
                 "partition-id")


@dataclass(frozen=True)
class Rejected:
    """A reply that was not aggregated: from which node and partition, and what was wrong."""

    node_id: int
    partition_id: int | None  # None when the reply did not say which one it was, or said wrongly
    reason: str

    def as_record(self) -> dict[str, object]:
        return {"node_id": self.node_id, "partition_id": self.partition_id, "reason": self.reason}


def whole(value: object) -> int | None:
    """`value` as an int when it is a whole number (an int, or a float such as 3.0), else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return int(value)
    return None


def partition_of(msg: Message, partitions: int) -> int | None:
    """The partition id the reply names, when it names one that exists."""
    try:
        metrics = msg.content.metric_records[METRICS]
    except (KeyError, ValueError):
        return None
    pid = whole(metrics.get("partition-id"))
    return pid if pid is not None and 0 <= pid < partitions else None


def problem(msg: Message, reference: ArrayRecord, sizes: Sequence[int]) -> str | None:
    """What is wrong with one training reply, or None when it can be aggregated.

    `reference`: the global model sent this round (names, shapes, dtypes); `sizes`: each
    partition's number of training images, the most `num-examples` a client can claim.
    """
    if msg.has_error():
        return f"the client failed: {msg.error.reason}"
    if not msg.has_content():
        return "the reply is empty"
    content = msg.content
    if list(content.array_records) != [ARRAYS] or list(content.metric_records) != [METRICS]:
        return (f"holds arrays {sorted(content.array_records)} and metrics "
                f"{sorted(content.metric_records)}, not one '{ARRAYS}' and one '{METRICS}'")
    if set(content) != {ARRAYS, METRICS}:
        return f"holds records {sorted(content)}, not only '{ARRAYS}' and '{METRICS}'"
    return metrics_problem(content.metric_records[METRICS], sizes) or arrays_problem(
        content.array_records[ARRAYS], reference)


def metrics_problem(metrics: Mapping[str, object], sizes: Sequence[int]) -> str | None:
    """Every metric the server reads present, a finite number, in its range."""
    missing = [key for key in TRAIN_METRICS if key not in metrics]
    if missing:
        return f"metric {', '.join(missing)} missing"
    extra = sorted(set(metrics) - set(TRAIN_METRICS))
    if extra:
        return f"unexpected metric {', '.join(extra)}"
    for key in TRAIN_METRICS:
        value = metrics[key]
        if isinstance(value, bool) or not isinstance(value, int | float):
            return f"metric {key} is {type(value).__name__} {str(value)[:40]}, not a number"
        if not math.isfinite(value):
            return f"metric {key} is {value}"
    pid = whole(metrics["partition-id"])
    if pid is None or not 0 <= pid < len(sizes):
        return f"partition-id {metrics['partition-id']} is not one of 0 to {len(sizes) - 1}"
    count = whole(metrics["num-examples"])
    if count is None or not 1 <= count <= sizes[pid]:
        return (f"num-examples {metrics['num-examples']} is not a whole number from 1 to "
                f"{sizes[pid]} (partition {pid}'s size)")
    if not 0 <= float(metrics["train-accuracy"]) <= 1:  # type: ignore[arg-type]
        return f"train-accuracy {metrics['train-accuracy']} is not from 0 to 1"
    return None


def arrays_problem(arrays: ArrayRecord, reference: ArrayRecord) -> str | None:
    """The same array names, shapes and dtypes as the global model, and every number finite."""
    if set(arrays) != set(reference):
        return f"arrays {sorted(arrays)[:4]} instead of the model's {sorted(reference)[:4]}"
    for name, array in arrays.items():
        want = reference[name]
        if tuple(array.shape) != tuple(want.shape) or array.dtype != want.dtype:
            return (f"array {name} is {array.dtype} {list(array.shape)}, the model's is "
                    f"{want.dtype} {list(want.shape)}")
        try:
            values = array.numpy()
        except Exception as exc:  # bytes that do not decode as the array they claim to be
            return f"array {name} cannot be read ({type(exc).__name__})"
        if values.dtype.kind in "fc" and not np.isfinite(values).all():
            bad = int(values.size - np.isfinite(values).sum())
            return f"array {name} holds {bad} NaN or infinite value(s)"
    return None


def check_replies(replies: Iterable[Message], reference: ArrayRecord,
                  sizes: Sequence[int]) -> tuple[list[Message], list[Rejected]]:
    """The replies to aggregate, sorted by partition id, and those rejected with the reason.

    A second reply for a partition already answered this round is rejected too: one client's
    data must not count twice. Failed replies (the client raised) are left out of both lists.
    """
    accepted: dict[int, Message] = {}
    rejected: list[Rejected] = []
    for msg in replies:
        if msg.has_error():
            continue
        node = int(msg.metadata.src_node_id)
        why = problem(msg, reference, sizes)
        pid = partition_of(msg, len(sizes))
        if why is None and pid is not None and pid in accepted:
            why = (f"partition {pid} already replied this round "
                   f"(node {accepted[pid].metadata.src_node_id})")
        if why is not None:
            rejected.append(Rejected(node, pid, why))
        else:
            assert pid is not None  # a reply without a problem names its partition
            accepted[pid] = msg
    return [accepted[pid] for pid in sorted(accepted)], rejected


def not_finite(arrays: ArrayRecord) -> str | None:
    """Which array of an aggregate holds a NaN or infinity, or None when all are finite."""
    for name, array in arrays.items():
        values = array.numpy()
        if values.dtype.kind in "fc" and not np.isfinite(values).all():
            return name
    return None
