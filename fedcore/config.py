"""The resolved configuration of a run: one name per setting, from CLI flag to run_config key."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, fields
from typing import Any

from fedcore.errors import UsageError

OPTIMIZERS = ("sgd", "adam")
SCHEDULES = ("none", "cosine")
PRECISIONS = ("auto", "bf16", "fp32")
STRATEGIES = ("fedavg", "fedprox:MU", "fedadam")


@dataclass(frozen=True)
class RunConfig:
    """Every setting of a federated or local run.

    Field `local_epochs` is the CLI flag `--local-epochs` and the run_config key `local-epochs`.
    Optional values use 0 or "" for "not set", because Flower's run_config holds only
    str, int, float and bool.
    """

    dataset: str = "cifar10"
    data_dir: str = ""
    limit_train: int = 0
    limit_test: int = 0
    partition: str = "dirichlet:0.5"
    clients: int = 2
    model: str = "cnn"
    rounds: int = 10
    local_epochs: int = 1
    epochs: int = 10
    batch_size: int = 64
    eval_batch_size: int = 1000
    optimizer: str = "sgd"
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: str = "none"
    augment: bool = True
    strategy: str = "fedavg"
    fraction_train: float = 1.0
    seed: int = 0
    precision: str = "auto"
    round_timeout: float = 600.0
    out_dir: str = ""
    progress_dir: str = ""

    def to_run_config(self) -> dict[str, Any]:
        """Flower run_config form: kebab-case keys, scalar values."""
        return {key_of(f.name): getattr(self, f.name) for f in fields(self)}

    def to_json(self) -> dict[str, Any]:
        return self.to_run_config()

    def replace(self, **changes: Any) -> RunConfig:
        return dataclasses.replace(self, **changes)


def key_of(field_name: str) -> str:
    """`local_epochs` -> `local-epochs`."""
    return field_name.replace("_", "-")


FIELD_TYPES: dict[str, type] = {
    key_of(f.name): type(f.default) for f in fields(RunConfig)  # type: ignore[misc]
}


def coerce(key: str, value: Any, where: str) -> Any:
    """Check one setting's type (ints are accepted for floats); raise UsageError naming it."""
    if key not in FIELD_TYPES:
        known = ", ".join(sorted(FIELD_TYPES))
        raise UsageError(f"{where}: unknown setting '{key}' (known: {known})")
    want = FIELD_TYPES[key]
    if want is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if want is int and isinstance(value, float) and value.is_integer():
        return int(value)
    if not isinstance(value, want) or (want is not bool and isinstance(value, bool)):
        raise UsageError(
            f"{where}: '{key}' must be {want.__name__}, got {value!r}"
        )
    return value


def from_mapping(values: dict[str, Any], where: str, base: RunConfig | None = None) -> RunConfig:
    """Build a RunConfig from kebab-case keys (a profile, run_config, config.json)."""
    changes = {k.replace("-", "_"): coerce(k, v, where) for k, v in values.items()}
    return (base or RunConfig()).replace(**changes)


def from_run_config(run_config: dict[str, Any]) -> RunConfig:
    """Read a RunConfig from Flower's context.run_config, ignoring keys it does not know."""
    known = {k: v for k, v in run_config.items() if k in FIELD_TYPES}
    return from_mapping(known, "run_config")


def validate(cfg: RunConfig) -> RunConfig:
    """Check values a user can get wrong; raise UsageError with one line naming the flag."""
    for f in fields(cfg):
        value = getattr(cfg, f.name)
        if isinstance(value, float) and not math.isfinite(value):
            raise UsageError(f"--{key_of(f.name)} must be a finite number, got {value}")
    positive = {
        "clients": cfg.clients,
        "rounds": cfg.rounds,
        "local-epochs": cfg.local_epochs,
        "epochs": cfg.epochs,
        "batch-size": cfg.batch_size,
        "eval-batch-size": cfg.eval_batch_size,
    }
    for key, value in positive.items():
        if value < 1:
            raise UsageError(f"--{key} must be at least 1, got {value}")
    for key, value in {"limit-train": cfg.limit_train, "limit-test": cfg.limit_test}.items():
        if value < 0:
            raise UsageError(f"--{key} must be a positive number of images, got {value}")
    if not cfg.lr > 0:
        raise UsageError(f"--lr must be greater than 0, got {cfg.lr}")
    if cfg.momentum < 0 or cfg.weight_decay < 0:
        raise UsageError("--momentum and --weight-decay must not be negative")
    if not 0 < cfg.fraction_train <= 1:
        raise UsageError(f"--fraction-train must be in (0, 1], got {cfg.fraction_train}")
    if cfg.round_timeout <= 0:
        raise UsageError(f"--round-timeout must be greater than 0 seconds, got {cfg.round_timeout}")
    choices = {
        "optimizer": (cfg.optimizer, OPTIMIZERS),
        "schedule": (cfg.schedule, SCHEDULES),
        "precision": (cfg.precision, PRECISIONS),
    }
    for key, (value, allowed) in choices.items():
        if value not in allowed:
            raise UsageError(f"unknown --{key} '{value}': use one of {', '.join(allowed)}")
    return cfg
