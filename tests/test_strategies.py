"""--strategy: Flower's own FedAvg, FedProx and FedAdam, and one-line errors for bad specs."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, Message, MetricRecord, RecordDict
from flwr.serverapp.strategy import FedAdam, FedAvg, FedProx
from flwr.supercore.task_identity import TaskIdentity

from fedcore.errors import UsageError
from fedcore.strategies import FedAvgUnweighted, check_strategy, make_strategy


def test_strategies_are_flowers_own_weighted_by_examples() -> None:
    fedavg = make_strategy("fedavg", 0.5)
    fedprox = make_strategy("fedprox:0.01", 1.0)
    fedadam = make_strategy("fedadam", 1.0)

    assert type(fedavg) is FedAvg and fedavg.fraction_train == 0.5
    assert isinstance(fedprox, FedProx) and fedprox.proximal_mu == 0.01
    assert isinstance(fedadam, FedAdam)
    for strategy in (fedavg, fedprox, fedadam):
        assert strategy.weighted_by_key == "num-examples"
        assert strategy.min_available_nodes == 1  # rounds go on when a client is missing


@pytest.mark.parametrize("spec", ["fedsgd", "fedprox", "fedprox:-1", "fedprox:x", "fedavg:2", ""])
def test_bad_strategy_specs_are_one_line_errors(spec: str) -> None:
    expected = f"bad --strategy '{spec}': use fedavg, fedavg-unweighted, fedprox:MU"
    with pytest.raises(UsageError, match=expected):
        check_strategy(spec)


def test_an_infinite_proximal_term_is_refused() -> None:
    with pytest.raises(UsageError, match="bad --strategy 'fedprox:inf'"):
        check_strategy("fedprox:inf")


def replies(*clients: tuple[float, int]) -> list[Message]:
    """Train replies: a model whose every number is `value`, trained on `examples` images."""
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 1, 1
    out = []
    for value, examples in clients:
        content = RecordDict({
            "arrays": ArrayRecord({"weights": Array(np.full(3, value, dtype=np.float32))}),
            "metrics": MetricRecord({"num-examples": examples, "train-loss": value}),
        })
        out.append(Message(content=content, dst_node_id=1, message_type="train"))
    return out


def test_fedavg_weights_by_examples_and_fedavg_unweighted_takes_the_plain_mean() -> None:
    weighted = make_strategy("fedavg", 1.0)
    unweighted = make_strategy("fedavg-unweighted", 1.0)
    got = replies((1.0, 100), (4.0, 300))

    w_arrays, w_metrics = weighted.aggregate_train(1, got)
    u_arrays, u_metrics = unweighted.aggregate_train(1, got)

    assert isinstance(unweighted, FedAvgUnweighted)
    assert np.allclose(w_arrays["weights"].numpy(), 3.25)  # (1*100 + 4*300) / 400
    assert np.allclose(u_arrays["weights"].numpy(), 2.5)  # (1 + 4) / 2, as the seed averaged
    assert u_arrays["weights"].numpy().dtype == np.float32
    assert u_metrics["train-loss"] == w_metrics["train-loss"] == 3.25  # metrics stay example-weighted


def test_fedavg_unweighted_with_no_replies_keeps_the_model() -> None:
    assert make_strategy("fedavg-unweighted", 1.0).aggregate_train(1, []) == (None, None)
