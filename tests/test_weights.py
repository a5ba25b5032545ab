"""Model weights travel as one flat array and come back exactly, integer buffers included."""

from __future__ import annotations

import pytest
import torch

from fedcore.models import build_model
from fedcore.weights import KEY, load_record, to_record


@pytest.mark.parametrize("name", ["cnn", "mobilenetv2"])
def test_weights_round_trip_through_one_array(name: str) -> None:
    torch.manual_seed(0)
    source = build_model(name)
    source.train()
    source(torch.randn(4, 3, 32, 32))  # moves BatchNorm statistics and batch counters
    target = build_model(name)

    record = to_record(source)
    load_record(target, record)

    assert list(record.keys()) == [KEY]
    for (key, a), b in zip(source.state_dict().items(), target.state_dict().values(), strict=True):
        assert a.dtype == b.dtype, key
        assert torch.equal(a, b), key


def test_weights_of_another_architecture_are_refused() -> None:
    with pytest.raises(ValueError, match="this model has"):
        load_record(build_model("cnn"), to_record(build_model("mobilenetv2")))
