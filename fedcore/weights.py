"""A model's state as one flat float32 array: one Flower object to move per message, not one per tensor.

Flower sends every Array of an ArrayRecord as its own object, one HTTP request each; MobileNetV2
has 300+ tensors. Both ends build the same architecture, so the names, shapes and dtypes come
from the model and only the numbers travel. Integer buffers (BatchNorm's batch counters) are
exact in float32 up to 2**24.
"""

from __future__ import annotations

import torch
from flwr.app import Array, ArrayRecord
from torch import nn

KEY = "weights"


def to_record(model: nn.Module) -> ArrayRecord:
    tensors = [t.detach().reshape(-1).to(device="cpu", dtype=torch.float32)
               for t in model.state_dict().values()]
    return ArrayRecord({KEY: Array(torch.cat(tensors).numpy())})


def load_record(model: nn.Module, record: ArrayRecord) -> None:
    """Put the record's numbers into `model` (same architecture), in state_dict order."""
    flat = torch.from_numpy(record[KEY].numpy())
    state = model.state_dict()
    expected = sum(t.numel() for t in state.values())
    if flat.numel() != expected:
        raise ValueError(f"weights hold {flat.numel()} numbers; this model has {expected}")
    offset, loaded = 0, {}
    for name, tensor in state.items():
        count = tensor.numel()
        chunk = flat[offset : offset + count].view(tensor.shape)
        loaded[name] = chunk.round().to(tensor.dtype) if not tensor.is_floating_point() else chunk
        offset += count
    model.load_state_dict(loaded)


def number(value: object) -> float:
    """A metric or config value that must be a number (records hold unions of scalars and lists)."""
    if isinstance(value, int | float):
        return float(value)
    raise TypeError(f"expected a number, got {type(value).__name__}")
