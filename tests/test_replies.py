"""Training replies checked before aggregation: each kind of bad reply is dropped and named."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp.strategy import FedAdam
from flwr.supercore.task_identity import TaskIdentity

from fedcore.faults import broken
from fedcore.replies import TRAIN_METRICS, check_replies, not_finite
from fedcore.server_app import aggregate
from fedcore.strategies import make_strategy
from fedcore.weights import KEY

SIZES = [300, 200]  # partition 0 has 300 training images, partition 1 has 200
MODEL = ArrayRecord({KEY: Array(np.zeros(10, dtype=np.float32))})


def reply(node: int, partition: int, value: float = 1.0, examples: int = 150,
          content: RecordDict | None = None) -> Message:
    """A reply from `node` as fedcore's ClientApp sends it (or with `content` instead)."""
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 1, 1
    sent = Message(content=RecordDict({"arrays": MODEL, "config": ConfigRecord({"lr": 0.1})}),
                   dst_node_id=node, message_type="train")
    metrics = MetricRecord({"train-loss": 0.5, "train-accuracy": 0.8, "num-examples": examples,
                            "train-seconds": 1.5, "train-started": 1.7e9,
                            "partition-id": partition})
    good = RecordDict({"arrays": ArrayRecord({KEY: Array(np.full(10, value, dtype=np.float32))}),
                       "metrics": metrics})
    return Message(content=content or good, reply_to=sent)


def test_the_client_apps_own_metrics_are_the_checked_ones() -> None:
    import inspect

    from fedcore import client_app

    source = inspect.getsource(client_app.train)
    assert all(f'"{key}"' in source for key in TRAIN_METRICS)


def test_good_replies_are_all_kept_in_partition_order() -> None:
    ok, rejected = check_replies([reply(8, 1), reply(7, 0)], MODEL, SIZES)

    assert rejected == []
    assert [m.metadata.src_node_id for m in ok] == [7, 8]


@pytest.mark.parametrize(("kind", "reason"), [
    ("nan", f"array {KEY} holds 2 NaN or infinite value(s)"),
    ("inf", f"array {KEY} holds 2 NaN or infinite value(s)"),
    ("shape", f"array {KEY} is float32 [9], the model's is float32 [10]"),
    ("names", f"arrays ['renamed'] instead of the model's ['{KEY}']"),
    ("dtype", f"array {KEY} is float64 [10], the model's is float32 [10]"),
    ("count-huge", "num-examples 1000000000000000 is not a whole number from 1 to 200"),
    ("count-negative", "num-examples -5 is not a whole number from 1 to 200"),
    ("count-fraction", "num-examples 2.5 is not a whole number from 1 to 200"),
    ("no-partition", "metric partition-id missing"),
    ("metric-list", "metric train-loss is list [0.5, 0.5], not a number"),
    ("metric-missing", "metric train-loss missing"),
    ("config-metrics", "not one 'arrays' and one 'metrics'"),
])
def test_each_kind_of_bad_reply_is_dropped_and_named(kind: str, reason: str) -> None:
    # Prepare: a good reply from partition 0 and partition 1's reply broken as `kind`
    bad = reply(9, 1)
    bad = reply(9, 1, content=broken(bad.content, kind))

    # Execute
    ok, rejected = check_replies([reply(7, 0), bad], MODEL, SIZES)

    # Assert
    assert [m.metadata.src_node_id for m in ok] == [7]
    assert len(rejected) == 1
    assert rejected[0].node_id == 9
    assert rejected[0].partition_id == (None if kind in ("no-partition", "config-metrics") else 1)
    assert reason in rejected[0].reason


@pytest.mark.parametrize(("partition", "examples", "reason"), [
    (2, 10, "partition-id 2 is not one of 0 to 1"),
    (-1, 10, "partition-id -1 is not one of 0 to 1"),
    (0, 0, "num-examples 0 is not a whole number from 1 to 300 (partition 0's size)"),
    (0, 301, "num-examples 301 is not a whole number from 1 to 300 (partition 0's size)"),
])
def test_ids_and_counts_out_of_range_are_dropped(partition: int, examples: int, reason: str) -> None:
    ok, rejected = check_replies([reply(9, partition, examples=examples)], MODEL, SIZES)

    assert ok == []
    assert [r.reason for r in rejected] == [reason]


def test_a_second_reply_for_the_same_partition_is_dropped() -> None:
    ok, rejected = check_replies([reply(7, 0), reply(9, 0, value=5.0)], MODEL, SIZES)

    assert [m.metadata.src_node_id for m in ok] == [7]
    assert [(r.node_id, r.partition_id) for r in rejected] == [(9, 0)]
    assert rejected[0].reason == "partition 0 already replied this round (node 7)"


def test_the_largest_count_and_a_whole_float_count_are_taken() -> None:
    ok, rejected = check_replies([reply(7, 0, examples=300), reply(8, 1, examples=200.0)],  # type: ignore[arg-type]
                                 MODEL, SIZES)

    assert rejected == [] and len(ok) == 2


def test_checked_replies_aggregate_as_before() -> None:
    """FedAvg of the kept replies only: the dropped one's huge count does not weigh in."""
    strategy = make_strategy("fedavg", 1.0)
    bad = reply(9, 1, value=0.0)
    bad = reply(9, 1, content=broken(bad.content, "count-huge"))
    ok, _ = check_replies([reply(7, 0, value=2.0), bad], MODEL, SIZES)

    arrays, metrics, kept = aggregate(strategy, 1, ok, MODEL)

    assert kept == ""
    assert np.allclose(arrays[KEY].numpy(), 2.0)
    assert metrics is not None and metrics["train-loss"] == pytest.approx(0.5)


def test_an_aggregate_that_is_not_finite_keeps_the_previous_model() -> None:
    """Flower's FedAdam turns finite replies into NaN when the step overflows float32: the
    previous model stays, and the round says why."""
    # Prepare: a global model at the float32 minimum, and a reply at the maximum
    strategy = make_strategy("fedadam", 1.0)
    assert isinstance(strategy, FedAdam)
    low = np.finfo(np.float32).min
    previous = ArrayRecord({KEY: Array(np.full(10, low, dtype=np.float32))})
    strategy.current_arrays = {KEY: previous[KEY].numpy()}  # as configure_train sets it
    ok, rejected = check_replies([reply(7, 0, value=float(np.finfo(np.float32).max))],
                                 previous, SIZES)
    assert rejected == []

    # Execute
    with np.errstate(over="ignore", invalid="ignore"):
        arrays, metrics, kept = aggregate(strategy, 1, ok, previous)

    # Assert
    assert arrays is previous and metrics is None
    assert kept == f"the aggregate is not finite (array {KEY}); kept the previous model"


def test_not_finite_names_the_array() -> None:
    record = ArrayRecord({"a": Array(np.ones(3, dtype=np.float32)),
                          "b": Array(np.array([1.0, np.inf], dtype=np.float32)),
                          "steps": Array(np.array([3], dtype=np.int64))})

    assert not_finite(record) == "b"
    assert not_finite(ArrayRecord({"a": Array(np.ones(3, dtype=np.float32))})) is None


def test_the_launcher_shows_each_rejection_and_the_rounds_count() -> None:
    from launcher.events import Notice, RoundFinished
    from launcher.supervision.follow import metric_event

    notice = metric_event({"event": "rejected", "round": 3, "node_id": 77, "partition_id": 1,
                           "reason": "metric train-loss missing"})
    finished = metric_event({"event": "round", "round": 3, "total": 5, "accuracy": 0.5,
                             "loss": 1.0, "replies": 1, "rejected": 1, "kept_model": None})

    assert notice == Notice("warning", "round 3: rejected the reply of node 77 (partition 1): "
                                       "metric train-loss missing")
    assert isinstance(finished, RoundFinished)
    assert (finished.rejected, finished.kept_model) == (1, "")
