"""--augment, --normalize and --image-size: what a batch looks like, on the device, per policy."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedcore.augment import DeviceData, host_layout, reflect_pad
from fedcore.catalog import AUGMENTS, NORMALIZATIONS
from fedcore.data import ImageSet

CPU = torch.device("cpu")


def images(n: int = 6, seed: int = 0) -> ImageSet:
    rng = np.random.default_rng(seed)
    return ImageSet(images=rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8), labels=np.arange(n) % 10)


def generator(seed: int = 1) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("policy", sorted(AUGMENTS))
def test_each_policy_is_random_in_training_and_fixed_for_testing(policy: str) -> None:
    train = DeviceData(images(), CPU, augment=policy, normalize="unit")
    test = DeviceData(images(), CPU, augment=policy, normalize="unit", train=False)
    index = torch.arange(6)
    side = 24 if policy == "crop24" else 32

    a, b = train.batch(index, generator(1)), train.batch(index, generator(1))
    other = train.batch(index, generator(2))

    assert a.shape == test.batch(index, None).shape == (6, 3, side, side)
    assert torch.equal(a, b)  # the same generator state gives the same batch
    assert torch.equal(test.batch(index, None), test.batch(index, None))
    if policy == "none":
        assert torch.equal(a, other)
    else:
        assert not torch.equal(a, other)


def test_test_view_is_the_image_itself_or_its_centre() -> None:
    data = images()
    pixels = torch.from_numpy(data.images.transpose(0, 3, 1, 2).copy()).float() / 255

    index = torch.arange(6)
    plain = DeviceData(data, CPU, augment="flip-crop", normalize="unit", train=False).batch(index, None)
    centre = DeviceData(data, CPU, augment="crop24", normalize="unit", train=False).batch(index, None)

    assert torch.equal(plain, pixels)
    assert torch.equal(centre, pixels[:, :, 4:28, 4:28])


def test_reflection_padding_matches_numpys() -> None:
    chw = torch.from_numpy(images().images.transpose(0, 3, 1, 2).copy())

    padded = reflect_pad(chw, 4)

    expected = np.pad(chw.numpy(), ((0, 0), (0, 0), (4, 4), (4, 4)), mode="reflect")
    assert padded.dtype == torch.uint8 and np.array_equal(padded.numpy(), expected)


def test_normalisations() -> None:
    index = torch.arange(6)
    batches = {name: DeviceData(images(), CPU, normalize=name).batch(index, None) for name in NORMALIZATIONS}

    assert batches["unit"].min() >= 0 and batches["unit"].max() <= 1
    assert torch.allclose(batches["half"], batches["unit"] * 2 - 1)
    per_image = batches["per-image"].flatten(1)
    assert torch.allclose(per_image.mean(1), torch.zeros(6), atol=1e-5)
    assert torch.allclose(per_image.std(1, unbiased=False), torch.ones(6), atol=1e-4)
    assert abs(float(batches["cifar"].mean())) < 0.5


def test_image_size_resizes_on_the_device_and_keeps_uint8_storage() -> None:
    data = DeviceData(images(), CPU, augment="none", normalize="half", image_size=224)

    batch = data.batch(torch.arange(2), None)

    assert data.images.dtype == torch.uint8 and data.images.shape[-1] == 32
    assert batch.shape == (2, 3, 224, 224)
    assert batch.min() >= -1 and batch.max() <= 1


@pytest.mark.parametrize("policy", sorted(AUGMENTS))
@pytest.mark.parametrize("train", [True, False])
def test_a_host_layout_made_before_is_used_as_is_and_gives_the_same_batches(policy: str,
                                                                            train: bool) -> None:
    # Prepare: the layout a process makes before it forks its workers
    layout = host_layout(images(), policy, train=train)

    # Execute
    shared = DeviceData(images(), CPU, augment=policy, normalize="unit", train=train, layout=layout)
    own = DeviceData(images(), CPU, augment=policy, normalize="unit", train=train)

    # Assert: the same pixels and batches; on the CPU the layout's own memory, not a copy
    assert torch.equal(shared.images, own.images)
    index = torch.arange(6)
    assert torch.equal(shared.batch(index, generator(3)), own.batch(index, generator(3)))
    assert shared.images.data_ptr() == layout.ctypes.data
