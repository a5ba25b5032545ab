"""What a tracker logs: a run's config as hyperparameters, and a point per round or epoch."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from typing import Any

from fedcore.errors import UsageError

# --track name -> the module that must import, and the extra that brings it.
BACKENDS: dict[str, str] = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow"}
# The values of a round (or epoch) record that are logged, under their metrics.jsonl names.
ROUND_KEYS = ("accuracy", "loss", "train_accuracy", "train_loss", "seconds", "replies")
REJECTED = "rejected"  # rejected replies in the round; 0 where metrics.jsonl does not say
CLIENT_KEYS = {"client_train_loss": "train_loss", "client_examples": "examples"}
PROJECT = "fedlaunch"  # the W&B project and the MLflow experiment


def parse_track(values: list[str] | None) -> tuple[str, ...]:
    """`--track tensorboard --track wandb,mlflow` -> the names in order, once each."""
    names: list[str] = []
    for value in values or ():
        for name in (part.strip().lower() for part in value.split(",")):
            if name not in BACKENDS:
                raise UsageError(f"--track {name or repr(value)}: choose from "
                                 f"{', '.join(BACKENDS)} (several: --track tensorboard,wandb)")
            if name not in names:
                names.append(name)
    return tuple(names)


def check_installed(names: tuple[str, ...]) -> None:
    """A backend whose library is missing: one line naming the pip command, before anything starts."""
    for name in names:
        if importlib.util.find_spec(BACKENDS[name]) is None:
            raise UsageError(f"--track {name} needs the '{name}' extra: pip install 'fedlaunch[{name}]'")


@dataclass(frozen=True)
class Point:
    """One round (federated) or epoch (--local): its number and the values logged at it."""

    unit: str  # "round" or "epoch"
    step: int
    values: dict[str, float]


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def point(record: dict[str, Any]) -> Point | None:
    """The values of a `round` or `epoch` record of metrics.jsonl; None for any other record."""
    unit = record.get("event")
    if unit not in ("round", "epoch"):
        return None
    step = _number(record.get(unit))
    if step is None:
        return None
    values = {key: v for key in ROUND_KEYS if (v := _number(record.get(key))) is not None}
    values[REJECTED] = _number(record.get(REJECTED, record.get("rejected_replies"))) or 0.0
    clients = record.get("clients")
    if isinstance(clients, list):
        for field, name in CLIENT_KEYS.items():
            column = record.get(field)
            if not isinstance(column, list) or len(column) != len(clients):
                continue
            for client, raw in zip(clients, column, strict=True):
                value = _number(raw)
                if value is not None and isinstance(client, int):
                    values[f"client-{client}/{name}"] = value
    return Point(unit=str(unit), step=int(step), values=values)


def hyperparameters(config: dict[str, Any]) -> dict[str, str | int | float | bool]:
    """config.json (the run's settings and its mode) as flat scalars; the machine's own paths
    (where the run folder and the data were) are left out."""
    skip = {"out-dir", "progress-dir", "data-dir"}
    return {key: value for key, value in sorted(config.items())
            if key not in skip and isinstance(value, str | int | float | bool)}
