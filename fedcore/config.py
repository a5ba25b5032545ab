"""The resolved configuration of a run: one name per setting, from CLI flag to run_config key."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from fedcore.catalog import (
    AUGMENTS,
    MODEL_NAMES,
    MODEL_RECIPES,
    NORMALIZATIONS,
    PRETRAINED_FILES,
    STRATEGY_NAMES,
    check_strategy,
)
from fedcore.errors import UsageError

OPTIMIZERS = ("sgd", "adam")
SCHEDULES = ("none", "cosine", "exp:GAMMA")
PRECISIONS = ("auto", "bf16", "fp32")
STRATEGIES = STRATEGY_NAMES
DEFAULT_MODEL = "cnn"
CROP24 = 24


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
    model: str = DEFAULT_MODEL
    pretrained: bool = False
    weights: str = ""
    image_size: int = 0
    rounds: int = 10
    local_epochs: int = 1
    epochs: int = 10
    batch_size: int = 32
    eval_batch_size: int = 1000
    optimizer: str = "sgd"
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 0.0
    schedule: str = "none"
    augment: str = "flip"
    normalize: str = "cifar"
    strategy: str = "fedavg"
    fraction_train: float = 1.0
    seed: int = 0
    precision: str = "auto"
    round_timeout: float = 600.0
    startup_timeout: float = 300.0
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
    if key == "augment" and isinstance(value, bool):  # before --augment NAME: a boolean
        return "flip-crop" if value else "none"
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


def from_layers(layers: list[tuple[str, dict[str, Any]]]) -> RunConfig:
    """Defaults, then the chosen model's recipe, then each layer (a profile, the command line).

    A user who sets only --model gets that model's optimizer, learning rate, batch size, weight
    decay, schedule, augmentation and normalisation (fedcore.catalog.MODEL_RECIPES); any layer
    that names one of them wins.
    """
    model = DEFAULT_MODEL
    for where, values in layers:
        if "model" in values:
            model = coerce("model", values["model"], where)
    cfg = RunConfig()
    if model in MODEL_RECIPES:
        cfg = from_mapping(MODEL_RECIPES[model], f"recipe of {model}", cfg)
    for where, values in layers:
        cfg = from_mapping(values, where, cfg)
    return cfg


def recipe_of(model: str) -> RunConfig:
    """RunConfig() with `model` and its recipe."""
    return from_layers([("--model", {"model": model})])


def from_run_config(run_config: dict[str, Any]) -> RunConfig:
    """Read a RunConfig from Flower's context.run_config, ignoring keys it does not know."""
    known = {k: v for k, v in run_config.items() if k in FIELD_TYPES}
    return from_mapping(known, "run_config")


# The largest value each number may take. Flower carries run_config integers as 64-bit numbers,
# and well below that a run could never finish: a round a second for a year is 3e7 rounds, a
# SuperNode per client makes 10,000 clients more than one SuperLink serves. A value beyond its
# bound is refused before anything starts rather than failing once every process is up.
MOST: dict[str, int | float] = {
    "clients": 10_000,
    "rounds": 1_000_000,
    "local-epochs": 10_000,
    "epochs": 1_000_000,
    "batch-size": 1_000_000,
    "eval-batch-size": 1_000_000,
    "limit-train": 1_000_000_000,
    "limit-test": 1_000_000_000,
    "lr": 1_000.0,
    "momentum": 1.0,
    "weight-decay": 1.0,
    "round-timeout": 7 * 24 * 3600.0,  # a week
    "startup-timeout": 7 * 24 * 3600.0,
}


def validate(cfg: RunConfig) -> RunConfig:
    """Check values a user can get wrong; raise UsageError with one line naming the flag."""
    for f in fields(cfg):
        value = getattr(cfg, f.name)
        if isinstance(value, float) and not math.isfinite(value):
            raise UsageError(f"--{key_of(f.name)} must be a finite number, got {value}")
        most = MOST.get(key_of(f.name))
        if most is not None and value > most:
            shown = f"{most:,}" if isinstance(most, int) else f"{most:g}"
            raise UsageError(f"--{key_of(f.name)} {value} is too large: at most {shown}")
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
    if cfg.startup_timeout <= 0:
        raise UsageError(f"--startup-timeout must be greater than 0 seconds, got {cfg.startup_timeout}")
    choices = {
        "optimizer": (cfg.optimizer, OPTIMIZERS),
        "precision": (cfg.precision, PRECISIONS),
        "model": (cfg.model, MODEL_NAMES),
        "augment": (cfg.augment, tuple(AUGMENTS)),
        "normalize": (cfg.normalize, tuple(NORMALIZATIONS)),
    }
    for key, (value, allowed) in choices.items():
        if value not in allowed:
            raise UsageError(f"unknown --{key} '{value}': use one of {', '.join(allowed)}")
    schedule_gamma(cfg.schedule)
    check_strategy(cfg.strategy)
    if not 0 <= cfg.image_size <= 1024:
        raise UsageError(f"--image-size must be 0 (the data's own 32) to 1024 pixels, got {cfg.image_size}")
    if cfg.model == "tfcnn" and (cfg.image_size or (CROP24 if cfg.augment == "crop24" else 32)) != CROP24:
        raise UsageError("--model tfcnn takes 24x24 images: use --augment crop24 or --image-size 24")
    if cfg.pretrained and cfg.weights:
        raise UsageError("give --pretrained or --weights FILE, not both")
    if cfg.pretrained and cfg.model not in PRETRAINED_FILES:
        raise UsageError(f"--pretrained: no ImageNet weights for --model {cfg.model}; "
                         f"use one of {', '.join(sorted(PRETRAINED_FILES))}")
    if cfg.weights and not Path(cfg.weights).expanduser().is_file():
        raise UsageError(f"--weights {cfg.weights}: no such file")
    return cfg


def schedule_gamma(schedule: str) -> float | None:
    """The per-step factor of an `exp:GAMMA` schedule, None for the others; UsageError when bad."""
    name, _, arg = schedule.partition(":")
    if name in ("none", "cosine") and not arg:
        return None
    if name == "exp":
        try:
            gamma = float(arg)
        except ValueError:
            gamma = -1.0
        if 0 < gamma <= 1:
            return gamma
    raise UsageError(f"unknown --schedule '{schedule}': use none, cosine or exp:GAMMA (0 < GAMMA <= 1)")
