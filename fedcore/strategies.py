"""Flower strategies by --strategy name: fedavg, fedprox:MU, fedadam."""

from __future__ import annotations

from flwr.serverapp.strategy import FedAdam, FedAvg, FedProx

from fedcore.catalog import STRATEGY_HELP, check_strategy

__all__ = ["STRATEGY_HELP", "check_strategy", "make_strategy"]


def make_strategy(spec: str, fraction_train: float) -> FedAvg:
    """A Flower strategy weighting replies by `num-examples`; rounds go on with whoever replies."""
    check_strategy(spec)
    name, _, arg = spec.partition(":")
    common = {
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
    return FedAvg(**common)
