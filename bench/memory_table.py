"""Counts, on the CPU, what each model holds on a GPU per training sample: the table in
launcher/planning/footprint.py comes from this script's output.

    python bench/memory_table.py [--side 32] [--models cnn,mobilenetv2]

For each model: its parameters, and the bytes of activations one sample keeps for the backward
pass (the outputs of every module in training mode, each tensor counted once, fp32), from
forward hooks on one batch at a SIDE x SIDE input; and the largest single output (what an
evaluation without gradients holds at its peak, about twice that).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fedcore.models import MODELS, build_model  # noqa: E402


def activation_bytes(model: nn.Module, side: int, batch: int = 2) -> tuple[int, int]:
    """(bytes kept per sample for backward, bytes of the largest single output per sample)."""
    seen: dict[int, int] = {}
    held: list[torch.Tensor] = []  # alive to the end: a freed tensor's address is not reused

    def hook(_module: nn.Module, _inputs: object, output: object) -> None:
        if isinstance(output, torch.Tensor):  # an in-place module's output shares its storage
            held.append(output)
            seen[output.untyped_storage().data_ptr()] = output.numel() * output.element_size()

    leaves = [m for m in model.modules() if not list(m.children())]
    handles = [m.register_forward_hook(hook) for m in leaves]
    model.train()
    try:
        model(torch.randn(batch, 3, side, side)).sum().backward()
    finally:
        for handle in handles:
            handle.remove()
    # the input batch itself is kept by the first layer
    total = sum(seen.values()) + batch * 3 * side * side * 4
    return total // batch, max(seen.values()) // batch


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--side", type=int, default=32)
    parser.add_argument("--models", default=",".join(sorted(MODELS)))
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    print(f"# per sample at {args.side} px, fp32: model params kept_bytes largest_output_bytes")
    for name in args.models.split(","):
        model = build_model(name)
        side = 24 if name == "tfcnn" else args.side
        params = sum(p.numel() for p in model.parameters())
        kept, largest = activation_bytes(model, side)
        print(f'    "{name}": ({params}, {kept}, {largest}),  # at {side} px')
    return 0


if __name__ == "__main__":
    sys.exit(main())
