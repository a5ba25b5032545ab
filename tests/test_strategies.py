"""--strategy: Flower's own FedAvg, FedProx and FedAdam, and one-line errors for bad specs."""

from __future__ import annotations

import pytest
from flwr.serverapp.strategy import FedAdam, FedAvg, FedProx

from fedcore.errors import UsageError
from fedcore.strategies import check_strategy, make_strategy


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
    with pytest.raises(UsageError, match=f"bad --strategy '{spec}': use fedavg, fedprox:MU"):
        check_strategy(spec)


def test_an_infinite_proximal_term_is_refused() -> None:
    with pytest.raises(UsageError, match="bad --strategy 'fedprox:inf'"):
        check_strategy("fedprox:inf")
