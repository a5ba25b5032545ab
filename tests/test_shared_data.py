"""The simulation engine's data loaded once before the workers fork: workers use it, never copy it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

from fedcore import shared_data
from fedcore.config import RunConfig


@pytest.fixture(autouse=True)
def fresh_state() -> Iterator[None]:
    shared_data._SHARED.clear()
    shared_data._LAYOUTS.clear()
    yield
    shared_data._SHARED.clear()
    shared_data._LAYOUTS.clear()


def config(**changes: object) -> RunConfig:
    return RunConfig(dataset="synthetic", model="cnn", limit_train=300, limit_test=50, partition="iid",
                     augment="flip-crop").replace(**changes)


def test_a_worker_keeps_the_preloaded_images_without_a_copy() -> None:
    # Prepare: the simulation host's preload, before it forks
    cfg = config()
    shared_data.preload(cfg)
    train, test = shared_data._LAYOUTS[shared_data.layout_key(cfg)]

    # Execute: what a worker builds for its first task
    data, view = shared_data.client_view(cfg, 1, 3)

    # Assert: on the CPU its train and test images are the preloaded arrays' own memory
    assert data.device == torch.device("cpu")
    assert data.train.images.data_ptr() == train.ctypes.data
    assert data.test.images.data_ptr() == test.ctypes.data
    assert data.train.images.shape == (300, 3, 40, 40)  # padded for flip-crop
    assert len(view) == 100


def test_another_data_set_than_the_preloaded_one_is_loaded_as_before() -> None:
    shared_data.preload(config())

    data = shared_data.shared_data(config(limit_train=200))

    assert data.train.images.shape == (200, 3, 40, 40)
    assert all(data.train.images.data_ptr() != layout.ctypes.data
               for pair in shared_data._LAYOUTS.values() for layout in pair)
