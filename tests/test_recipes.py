"""Per-model recipes: --model alone brings its recipe, profiles and flags override, pyproject agrees."""

from __future__ import annotations

import tomllib

import pytest

from fedcore import catalog
from fedcore.config import RunConfig, from_layers, from_mapping, recipe_of, validate
from fedcore.errors import UsageError
from fedcore.train import scheduled_lr
from tests.conftest import ROOT


def test_pyproject_app_config_is_the_default_config() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())

    assert pyproject["tool"]["flwr"]["app"]["config"] == RunConfig().to_run_config()


def test_defaults_are_the_cnn_recipe() -> None:
    assert RunConfig().model == "cnn"
    assert recipe_of("cnn") == RunConfig()
    cnn = RunConfig()
    # The measured CNN recipe (docs/RESULTS.md): SGD 0.01 momentum 0.9, batch 32, flips.
    assert (cnn.optimizer, cnn.lr, cnn.momentum, cnn.batch_size) == ("sgd", 0.01, 0.9, 32)
    assert cnn.augment == "flip"


@pytest.mark.parametrize("model", catalog.MODEL_NAMES)
def test_every_model_recipe_validates(model: str) -> None:
    cfg = validate(recipe_of(model))

    assert cfg.model == model
    for key, value in catalog.MODEL_RECIPES[model].items():
        assert cfg.to_run_config()[key] == value, key


def test_model_alone_brings_its_recipe_and_any_layer_overrides_it() -> None:
    only_model = from_layers([("command line", {"model": "mobilenetv2"})])
    profile_then_flag = from_layers([
        ("profile 'p'", {"model": "mobilenetv2", "lr": 0.2, "batch-size": 64}),
        ("command line", {"lr": 0.3}),
    ])
    flag_model_over_profile = from_layers([("profile 'p'", {"model": "cnn", "lr": 0.5}),
                                           ("command line", {"model": "resnet18"})])

    assert (only_model.optimizer, only_model.lr, only_model.batch_size, only_model.schedule) == (
        "sgd", 0.1, 128, "cosine")
    assert (profile_then_flag.lr, profile_then_flag.batch_size, profile_then_flag.schedule) == (
        0.3, 64, "cosine")
    assert flag_model_over_profile.model == "resnet18"
    assert flag_model_over_profile.lr == 0.5  # the profile named it: it stays
    assert flag_model_over_profile.batch_size == 128  # resnet18's recipe


def test_the_old_boolean_augment_still_reads() -> None:
    assert from_mapping({"augment": False}, "config.json").augment == "none"
    assert from_mapping({"augment": True}, "config.json").augment == "flip-crop"


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"augment": "mixup"}, "unknown --augment 'mixup': use one of none, flip, flip-crop"),
        ({"normalize": "zca"}, "unknown --normalize 'zca'"),
        ({"schedule": "exp:1.5"}, "unknown --schedule 'exp:1.5'"),
        ({"schedule": "step"}, "unknown --schedule 'step'"),
        ({"image_size": -1}, "--image-size must be 0"),
        ({"model": "tfcnn"}, "--model tfcnn takes 24x24 images"),
        ({"strategy": "fedavg-weighted"}, "bad --strategy 'fedavg-weighted'"),
    ],
)
def test_bad_settings_are_one_line_usage_errors(changes: dict, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        validate(RunConfig(**changes))


def test_exponential_schedule_decays_per_step() -> None:
    cfg = RunConfig(lr=0.1, schedule="exp:0.99")

    assert scheduled_lr(cfg, 0, 280) == pytest.approx(0.1)
    assert scheduled_lr(cfg, 100, 280) == pytest.approx(0.1 * 0.99**100)
