"""Every shipped profile parses, validates, and holds its source's values (docs/RESULTS.md)."""

from __future__ import annotations

from typing import Any

import pytest

from fedcore.config import RunConfig, from_layers, validate
from launcher.planning.profiles import LAUNCHER_KEYS, load_profile, profile_names, profile_text

SOURCES: dict[str, dict[str, Any]] = {
    # The seed's final version: pretrained stock MobileNetV2 at 224, mean = std = 0.5, no
    # augmentation, even random split over 2 clients, Adam 1e-3 wd 1e-4, batch 32, 5 x 30, fp32, mean.
    "seed": {"model": "mobilenetv2-imagenet", "pretrained": True, "image_size": 224, "normalize": "half",
             "augment": "none", "clients": 2, "partition": "iid", "optimizer": "adam", "lr": 1e-3,
             "weight_decay": 1e-4, "batch_size": 32, "local_epochs": 5, "rounds": 30,
             "precision": "fp32", "strategy": "fedavg-unweighted", "schedule": "none",
             "weights": "", "fraction_train": 1.0},
    # Its first version: stride-1 MobileNetV2 from scratch, 4 clients, Dirichlet, SGD 0.01, 3 x 20.
    "seed-dirichlet": {"model": "mobilenetv2", "pretrained": False, "image_size": 0, "clients": 4,
                       "partition": "dirichlet:0.5", "optimizer": "sgd", "lr": 0.01,
                       "local_epochs": 3, "rounds": 20},
    # Its local baseline: stride-1 MobileNetV2 at 32, crop/flip/rotation/jitter, SGD 0.1 m 0.9
    # wd 5e-4, batch 128, cosine over 200 epochs.
    "seed-local": {"model": "mobilenetv2", "pretrained": False, "image_size": 0, "augment": "seed-local",
                   "optimizer": "sgd", "lr": 0.1, "momentum": 0.9, "weight_decay": 5e-4,
                   "batch_size": 128, "schedule": "cosine", "epochs": 200},
    # NIID-Bench FedAvg (Flower's niid_bench fedavg_base.yaml and dataset_preparation.py).
    "niid-bench-fedavg": {"model": "cnn", "clients": 10, "fraction_train": 1.0,
                          "partition": "dirichlet:0.5", "rounds": 50, "local_epochs": 10,
                          "batch_size": 64, "optimizer": "sgd", "lr": 0.01, "momentum": 0.9,
                          "weight_decay": 1e-5, "strategy": "fedavg", "augment": "flip-crop-reflect",
                          "normalize": "unit", "schedule": "none"},
    # McMahan et al. 2017: 100 clients x 500 IID, C = 0.1, E = 5, B = 50, TF-tutorial CNN on 24x24.
    "mcmahan2017-cifar": {"model": "tfcnn", "clients": 100, "partition": "iid", "fraction_train": 0.1,
                          "local_epochs": 5, "batch_size": 50, "augment": "crop24",
                          "normalize": "per-image", "strategy": "fedavg", "schedule": "exp:0.99",
                          "limit_train": 0},
}
PUBLISHED = {"seed": "91.8%", "seed-local": "90.03%", "niid-bench-fedavg": "62.47",
             "mcmahan2017-cifar": "80%", "seed-dirichlet": "no published number"}


def resolved(name: str) -> tuple[RunConfig, dict[str, Any]]:
    where, values = load_profile(name)
    launcher = {k: values.pop(k) for k in list(values) if k in LAUNCHER_KEYS}
    return validate(from_layers([(where, values)])), launcher


@pytest.mark.parametrize("name", sorted(SOURCES))
def test_profile_holds_its_sources_values(name: str) -> None:
    cfg, _ = resolved(name)

    for field, value in SOURCES[name].items():
        assert getattr(cfg, field) == value, field


@pytest.mark.parametrize("name", sorted(SOURCES))
def test_profile_names_its_source_and_expected_number(name: str) -> None:
    _, text = profile_text(name)
    comment = "\n".join(line for line in text.splitlines() if line.startswith("#"))

    assert PUBLISHED[name] in comment
    assert "Source:" in comment or "Published" in comment


def test_every_shipped_profile_resolves_and_validates() -> None:
    names = profile_names()

    assert set(SOURCES) <= set(names)
    for name in names:
        cfg, launcher = resolved(name)
        assert cfg.rounds >= 1 and cfg.epochs >= 1, name
        assert set(launcher) <= set(LAUNCHER_KEYS), name


def test_seed_local_runs_locally_and_federated_profiles_do_not() -> None:
    assert resolved("seed-local")[1] == {"local": True}
    for name in ("seed", "seed-dirichlet", "niid-bench-fedavg", "mcmahan2017-cifar"):
        assert resolved(name)[1] == {}, name


def test_mcmahan_clients_hold_500_images_each() -> None:
    cfg, _ = resolved("mcmahan2017-cifar")

    assert 50_000 // cfg.clients == 500
    assert round(cfg.clients * cfg.fraction_train) == 10
