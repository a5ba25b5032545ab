"""Model and strategy names as plain data: the launcher checks them without torch or flwr."""

from __future__ import annotations

from fedcore.errors import UsageError

# --model values; fedcore.models registers one builder under each (a test keeps them equal).
MODEL_NAMES: tuple[str, ...] = ("cnn", "mobilenetv2", "resnet18")

STRATEGY_HELP = "use fedavg, fedprox:MU (MU >= 0) or fedadam"


def check_model(name: str) -> str:
    if name not in MODEL_NAMES:
        raise UsageError(f"unknown --model '{name}': use one of {', '.join(sorted(MODEL_NAMES))}")
    return name


def check_strategy(spec: str) -> str:
    name, _, arg = spec.partition(":")
    if name in ("fedavg", "fedadam") and not arg:
        return spec
    if name == "fedprox":
        try:
            if 0 <= float(arg) < float("inf"):
                return spec
        except ValueError:
            pass
    raise UsageError(f"bad --strategy '{spec}': {STRATEGY_HELP}")
