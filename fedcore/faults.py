"""Fault injection for tests: a client whose training replies are broken the ways a bad one's are.

FEDLAUNCH_SIMULATE_BAD_REPLY=nan,shape,ok,... breaks this client's reply to round N with the
N-th kind (`ok`: sent as trained); rounds beyond the list are sent as trained.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord, RecordDict

ENV = "FEDLAUNCH_SIMULATE_BAD_REPLY"


def _arrays(content: RecordDict) -> tuple[str, np.ndarray]:
    name, array = next(iter(content.array_records["arrays"].items()))
    return name, array.numpy().copy()


def _with_arrays(content: RecordDict, arrays: dict[str, np.ndarray]) -> RecordDict:
    return RecordDict({"arrays": ArrayRecord({k: Array(v) for k, v in arrays.items()}),
                       "metrics": content.metric_records["metrics"]})


def _with_metrics(content: RecordDict, **changes: Any) -> RecordDict:
    metrics: dict[str, Any] = dict(content.metric_records["metrics"])
    for key, value in changes.items():
        if value is None:
            metrics.pop(key, None)
        else:
            metrics[key] = value
    return RecordDict({"arrays": content.array_records["arrays"],
                       "metrics": MetricRecord(metrics)})


def broken(content: RecordDict, kind: str) -> RecordDict:
    """The reply `content` broken as `kind` says."""
    name, values = _arrays(content)
    if kind in ("nan", "inf"):
        values[::7] = np.nan if kind == "nan" else np.inf
        return _with_arrays(content, {name: values})
    if kind == "shape":
        return _with_arrays(content, {name: values[:-1]})
    if kind == "names":
        return _with_arrays(content, {"renamed": values})
    if kind == "dtype":
        return _with_arrays(content, {name: values.astype(np.float64)})
    if kind == "count-huge":
        return _with_metrics(content, **{"num-examples": 10**15})
    if kind == "count-negative":
        return _with_metrics(content, **{"num-examples": -5})
    if kind == "count-fraction":
        return _with_metrics(content, **{"num-examples": 2.5})
    if kind == "no-partition":
        return _with_metrics(content, **{"partition-id": None})
    if kind == "metric-list":
        return _with_metrics(content, **{"train-loss": [0.5, 0.5]})
    if kind == "metric-missing":
        return _with_metrics(content, **{"train-loss": None})
    if kind == "config-metrics":
        return RecordDict({"arrays": content.array_records["arrays"],
                           "metrics": ConfigRecord({"num-examples": "many"})})
    raise ValueError(f"{ENV}: unknown kind '{kind}'")


def simulate_bad_reply(content: RecordDict, server_round: int) -> RecordDict:
    """`content`, broken as FEDLAUNCH_SIMULATE_BAD_REPLY says for `server_round`."""
    kinds = [k.strip() for k in os.environ.get(ENV, "").split(",") if k.strip()]
    if not 1 <= server_round <= len(kinds) or kinds[server_round - 1] == "ok":
        return content
    return broken(content, kinds[server_round - 1])
