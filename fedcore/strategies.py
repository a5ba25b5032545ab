"""Flower strategies by --strategy name: fedavg, fedavg-unweighted, fedprox:MU, fedadam."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, Message, MetricRecord
from flwr.serverapp.strategy import FedAdam, FedAvg, FedProx

from fedcore.catalog import STRATEGY_HELP, check_strategy

__all__ = ["STRATEGY_HELP", "FedAvgUnweighted", "check_strategy", "make_strategy"]


class FedAvgUnweighted(FedAvg):
    """FedAvg whose new model is the plain mean of the clients' models, whatever their data sizes
    (the seed project's aggregation). Metrics such as the training loss stay example-weighted."""

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        valid, _ = self._check_and_log_replies(replies, is_train=True)
        if not valid:
            return None, None
        contents = [msg.content for msg in valid]
        sums: dict[str, np.ndarray] = {}
        for content in contents:
            for record in content.array_records.values():
                for key, array in record.items():
                    value = array.numpy().astype(np.float64)
                    sums[key] = sums[key] + value if key in sums else value
        first = next(iter(contents[0].array_records.values()))
        arrays = ArrayRecord({
            key: Array((sums[key] / len(contents)).astype(first[key].numpy().dtype)) for key in sums
        })
        return arrays, self.train_metrics_aggr_fn(contents, self.weighted_by_key)


def make_strategy(spec: str, fraction_train: float) -> FedAvg:
    """A Flower strategy (example-weighted unless `fedavg-unweighted`); rounds go on with whoever replies."""
    check_strategy(spec)
    name, _, arg = spec.partition(":")
    common: dict[str, Any] = {
        "fraction_train": fraction_train,
        "fraction_evaluate": 0.0,
        "min_train_nodes": 1,
        "min_evaluate_nodes": 0,
        "min_available_nodes": 1,
    }
    if name == "fedprox":
        return FedProx(proximal_mu=float(arg), **common)
    if name == "fedadam":
        return FedAdam(eta=1e-2, eta_l=1e-2, **common)
    if name == "fedavg-unweighted":
        return FedAvgUnweighted(**common)
    return FedAvg(**common)
