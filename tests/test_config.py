"""RunConfig: one name per setting, type checks, and validation messages."""

from __future__ import annotations

import pytest

from fedcore.config import RunConfig, from_mapping, from_run_config, validate
from fedcore.errors import UsageError


def test_run_config_round_trips_through_flower_run_config() -> None:
    cfg = RunConfig(local_epochs=3, lr=0.1, data_dir="/x", augment="none")

    run_config = cfg.to_run_config()

    assert run_config["local-epochs"] == 3
    assert run_config["data-dir"] == "/x"
    assert from_run_config({**run_config, "unrelated-key": 1}) == cfg


def test_from_mapping_accepts_int_for_float_and_names_bad_keys() -> None:
    assert from_mapping({"lr": 1}, "p").lr == 1.0
    with pytest.raises(UsageError, match="p: unknown setting 'lrr'"):
        from_mapping({"lrr": 1}, "p")
    with pytest.raises(UsageError, match="'rounds' must be int, got 'ten'"):
        from_mapping({"rounds": "ten"}, "p")
    with pytest.raises(UsageError, match="'augment' must be str"):
        from_mapping({"augment": 1}, "p")


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"clients": 0}, "--clients must be at least 1"),
        ({"rounds": -1}, "--rounds must be at least 1"),
        ({"local_epochs": 0}, "--local-epochs must be at least 1"),
        ({"lr": 0.0}, "--lr must be greater than 0"),
        ({"fraction_train": 1.5}, "--fraction-train must be in"),
        ({"optimizer": "rmsprop"}, "unknown --optimizer 'rmsprop'"),
        ({"limit_train": -5}, "--limit-train must be a positive"),
    ],
)
def test_validate_rejects_bad_values_with_the_flag_name(changes: dict, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        validate(RunConfig(**changes))


def test_validate_rejects_infinite_numbers() -> None:
    with pytest.raises(UsageError, match="--round-timeout must be a finite number, got inf"):
        validate(RunConfig(round_timeout=float("inf")))
