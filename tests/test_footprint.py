"""GPU memory estimates per model and image size, counted on the CPU, and the ServerApp's share."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

from fedcore.catalog import MODEL_NAMES
from fedcore.config import RunConfig
from fedcore.models import build_model
from launcher.planning.footprint import MODEL_MEMORY, client_footprint, server_footprint
from launcher.planning.gpus import GpuInfo, Nvml
from launcher.planning.pool import choose_workers
from launcher.planning.prepare import LaunchOptions, make_plan
from tests.fake_nvml import GB, FakeGpu, FakeNvml

ROOT = Path(__file__).resolve().parents[1]


def memory_table() -> ModuleType:
    spec = importlib.util.spec_from_file_location("memory_table", ROOT / "bench" / "memory_table.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["memory_table"] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("model", [
    "cnn", "tfcnn", *(pytest.param(m, marks=pytest.mark.slow)
                      for m in ("mobilenetv2", "mobilenetv2-imagenet", "resnet18", "resnet18-imagenet"))])
def test_the_table_is_what_forward_hooks_count_on_the_cpu(model: str) -> None:
    net = build_model(model)
    side = 24 if model == "tfcnn" else 32

    kept, largest = memory_table().activation_bytes(net, side)

    assert MODEL_MEMORY[model] == (sum(p.numel() for p in net.parameters()), kept, largest)


def test_every_model_has_a_row() -> None:
    assert sorted(MODEL_MEMORY) == sorted(MODEL_NAMES)


def test_the_estimate_grows_with_batch_and_image_size_and_fits_the_h100_figures() -> None:
    def gb(**changes: object) -> float:
        return client_footprint(RunConfig(**{"batch_size": 128, **changes})) / 1e9  # type: ignore[arg-type]

    big = gb(model="mobilenetv2-imagenet", image_size=224)

    assert big > 0.6 + 5.3  # about 5.3 GB of activations alone at 224 px, batch 128
    assert big > 5 * gb(model="mobilenetv2-imagenet")
    assert gb(model="resnet18", batch_size=256) > gb(model="resnet18") + 0.6
    # what NVML showed per client process on an H100 at batch 128, 32 px, within 10%
    for model, measured in (("cnn", 0.6), ("mobilenetv2", 1.3), ("resnet18", 1.6)):
        assert abs(gb(model=model) - measured) <= 0.1 * measured, model


def test_the_servers_gpu_memory_is_counted_on_the_gpu_it_shares(tmp_path: Path) -> None:
    cfg = RunConfig(clients=4, dataset="synthetic", model="cnn", batch_size=128)
    four = 4 * client_footprint(cfg)
    free = four + server_footprint(cfg) // 2  # the clients fit; with the server they do not
    nvml = Nvml(FakeNvml([FakeGpu(memory_total=80 * GB, memory_used=80 * GB - free)]))

    plan = make_plan(cfg, tmp_path / "run", LaunchOptions(gpus="0", workers=4, dry_run=True), nvml=nvml)
    gpus = (GpuInfo(0, "GPU-0", "H100", 80 * GB, 8 * GB),)

    assert server_footprint(cfg) > 0.6e9
    assert [w for w in plan.placement.warnings if "4 clients and the server need about" in w], \
        plan.placement.warnings
    assert choose_workers(100, None, gpus, 1_300_000_000, None).workers == 6
    assert choose_workers(100, None, gpus, 1_300_000_000, None, server_bytes=2_600_000_000).workers == 4
