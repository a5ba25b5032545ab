"""How much GPU memory a client (or pool worker) and the ServerApp need, per model and image size.

The table is counted on the CPU by bench/memory_table.py (forward hooks: every module's output
kept for the backward pass, each tensor once, fp32), not guessed; the constants around it are
fitted to what NVML showed per client process on an H100 at batch 128, 32 px (cnn 0.6 GB,
mobilenetv2 1.3 GB, resnet18 1.6 GB). No torch here: the launcher never imports it.
"""

from __future__ import annotations

from fedcore.config import CROP24, RunConfig

# model: (parameters, activation bytes kept per sample, largest single output per sample), at
# 32 px (tfcnn: 24 px), from `python bench/memory_table.py`.
MODEL_MEMORY: dict[str, tuple[int, int, int]] = {
    "cnn": (62006, 44664, 18816),
    "mobilenetv2": (2236682, 4378664, 393216),
    "mobilenetv2-imagenet": (2236682, 1107752, 98304),
    "resnet18": (11173962, 4929576, 262144),
    "resnet18-imagenet": (11181642, 436264, 65536),
    "tfcnn": (1068298, 500008, 147456),
}
TABLE_SIDE = {"tfcnn": CROP24}  # the side the table was counted at (else 32)
UNKNOWN_MODEL = MODEL_MEMORY["resnet18"]  # a model not in the table: assume the largest
CONTEXT_BYTES = 600_000_000  # CUDA context, cuDNN/cuBLAS workspaces, the client's data on the GPU
ALLOCATOR_SLACK = 1.4  # the caching allocator's rounding and reuse, over the activations counted


def side(cfg: RunConfig) -> int:
    """The side of the square images the model sees (fedcore.augment.input_side, without torch)."""
    return cfg.image_size or (CROP24 if cfg.augment == "crop24" else 32)


def _scaled(model: str, per_sample: int, pixels: int) -> float:
    """Activations grow with the image's area (convolutions keep their strides)."""
    counted = TABLE_SIDE.get(model, 32)
    return per_sample * (pixels / counted) ** 2


def client_footprint(cfg: RunConfig) -> int:
    """Bytes one training process holds: context, weights with gradients and optimizer state,
    and the activations of one batch at the run's image size."""
    params, kept, _ = MODEL_MEMORY.get(cfg.model, UNKNOWN_MODEL)
    copies = 4 if cfg.optimizer == "adam" else 3  # weights, gradients, momentum (Adam: 2 moments)
    activations = cfg.batch_size * _scaled(cfg.model, kept, side(cfg)) * ALLOCATOR_SLACK
    return int(CONTEXT_BYTES + 4 * params * copies + activations)


def server_footprint(cfg: RunConfig) -> int:
    """Bytes the ServerApp holds on the first GPU while it evaluates the global model: context,
    weights, the test set and, without gradients, about two layers' outputs of one eval batch."""
    params, _, largest = MODEL_MEMORY.get(cfg.model, UNKNOWN_MODEL)
    activations = 2 * cfg.eval_batch_size * _scaled(cfg.model, largest, side(cfg)) * ALLOCATOR_SLACK
    return int(CONTEXT_BYTES + 4 * params + activations)
