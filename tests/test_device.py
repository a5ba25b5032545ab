"""The device a process trains on: a pinned GPU torch cannot use, cuDNN, bf16, out-of-memory."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fedcore import device as dev
from tests.fake_nvml import FakeGpu, FakeNvml

ROOT = Path(__file__).resolve().parents[1]
PINNED = {"CUDA_VISIBLE_DEVICES": "GPU-5d8a1c2e-0000-fake", "CUDA_DEVICE_ORDER": "PCI_BUS_ID"}


@pytest.mark.skipif(torch.cuda.is_available(), reason="torch can use a GPU here")
@pytest.mark.timeout(360)
def test_a_worker_pinned_to_a_gpu_torch_cannot_use_stops_at_once_with_one_line(tmp_path: Path) -> None:
    env = {**os.environ, **PINNED, "FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1"}

    done = subprocess.run([sys.executable, "-m", "launcher.shim.worker", "--socket",
                           str(tmp_path / "no-host.sock"), "--name", "worker-0"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)

    said = [line for line in done.stderr.splitlines() if line.startswith("fedlaunch:")]
    assert done.returncode == 2, done.stderr[-2000:]
    assert len(said) == 1, done.stderr[-2000:]
    assert said[0].startswith("fedlaunch: error: worker-0: GPU ")
    assert "GPU-5d8a1c2e-0000-fake" in said[0] and f"torch {torch.__version__}" in said[0]
    if torch.version.cuda is not None:
        assert f"(CUDA {torch.version.cuda}) needs NVIDIA driver" in said[0]
    assert "--gpus" in said[0]  # the fix (before, it waited for its client host on the CPU)


def test_the_line_names_the_gpu_the_driver_it_needs_and_the_fix() -> None:
    lib = FakeNvml([FakeGpu(name="NVIDIA A100-SXM4-40GB", uuid="GPU-aaaa")], driver_version="535.54.03",
                   cuda_version=12020)

    old_driver = dev.unusable_reason("GPU-aaaa", lib, cuda="13.0", version="2.14.1+cu130")
    cpu_build = dev.unusable_reason("GPU-aaaa", lib, cuda=None, version="2.14.1+cpu")
    unknown = dev.unusable_reason("GPU-bbbb", FakeNvml([FakeGpu()]), cuda="13.0", version="2.14.1+cu130")

    assert old_driver == (
        "GPU NVIDIA A100-SXM4-40GB (GPU-aaaa) is this process's GPU but CUDA cannot use it: torch "
        "2.14.1+cu130 (CUDA 13.0) needs NVIDIA driver 580+ and the driver is 535.54.03; install "
        "driver 580 or newer, or a torch built for CUDA 12.2 or older "
        "(https://pytorch.org/get-started/locally), or run with --gpus cpu")
    assert "torch 2.14.1+cpu is a CPU-only build" in cpu_build and "--gpus cpu" in cpu_build
    assert unknown.startswith("GPU GPU-bbbb is this process's GPU but CUDA cannot use it "
                              "(torch 2.14.1+cu130 (CUDA 13.0) needs NVIDIA driver 580+; driver 580")
    assert "nvidia-smi -L" in unknown
    assert lib.initialised == 0  # NVML shut down again
    assert all("\n" not in text for text in (old_driver, cpu_build, unknown))


def test_pick_device_refuses_a_pinned_gpu_it_cannot_use_and_keeps_the_cpu_when_unpinned(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for key, value in PINNED.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(dev.GpuUnusable, match="GPU-5d8a1c2e-0000-fake"):
        dev.pick_device()

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # fedlaunch's CPU clients: every GPU hidden

    assert dev.pick_device() == torch.device("cpu")
    assert dev.check_pinned_gpu({"CUDA_VISIBLE_DEVICES": "0"}) is None  # not pinned by fedlaunch


def test_clients_on_cuda_use_cudnns_benchmarked_kernels(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)

    chosen = dev.pick_device()

    assert chosen.type == "cuda" and torch.backends.cudnn.benchmark is True


@pytest.mark.parametrize(("capability", "precision", "bf16"), [
    ((7, 0), "auto", False), ((7, 5), "auto", False), ((7, 5), "bf16", False),
    ((8, 0), "auto", True), ((9, 0), "bf16", True), ((9, 0), "fp32", False)])
def test_bf16_only_from_compute_capability_8_0(monkeypatch: pytest.MonkeyPatch, capability: tuple[int, int],
                                               precision: str, bf16: bool) -> None:
    monkeypatch.setattr(dev, "_CAPABILITY", {})
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda _index=None: capability)

    assert dev.use_bf16(precision, torch.device("cuda", 0)) is bf16
    assert dev.use_bf16(precision, torch.device("cpu")) is False


@pytest.mark.parametrize(("exc", "oom"), [
    (torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"), True),
    (torch.AcceleratorError("CUDA error: out of memory\nCUDA kernel errors might be asynchronously "
                            "reported"), True),
    (RuntimeError("CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`"), True),
    (RuntimeError("cuDNN error: CUDNN_STATUS_ALLOC_FAILED"), True),
    (RuntimeError("cuDNN error: CUDNN_STATUS_INTERNAL_ERROR_HOST_ALLOCATION_FAILED"), True),
    (RuntimeError("CUDA error: device-side assert triggered"), False),
    (ValueError("out of memory"), False)])
def test_out_of_memory_is_known_by_type_and_by_message(exc: BaseException, oom: bool) -> None:
    assert dev.is_oom(exc) is oom


@pytest.mark.slow  # 10 CNN steps: seconds on an idle machine, half a minute on a loaded one
def test_the_gpu_tests_fixed_batch_check_holds_on_the_cpu() -> None:
    from tests.test_gpu_real import fixed_batch_losses

    before, after = fixed_batch_losses(torch.device("cpu"))

    assert after < 0.8 * before, (before, after)  # the bound tests/test_gpu_real.py asserts on CUDA
