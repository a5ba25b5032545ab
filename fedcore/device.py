"""The device a process trains on: its pinned GPU or why that GPU is unusable, bf16, out-of-memory."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import torch

# The oldest Linux driver each CUDA major version runs on (CUDA's minor-version compatibility):
# torch 2.14.1+cu130 needs driver 580 or newer.
DRIVER_FOR_CUDA = {13: 580, 12: 525, 11: 450}
BF16_CAPABILITY = (8, 0)  # Ampere and later run bf16 natively; before that it is emulated, slowly

# What CUDA, cuBLAS and cuDNN say when an allocation fails: not all of them are OutOfMemoryError
# (a CUDA-context OOM is an AcceleratorError, cuBLAS/cuDNN failures plain RuntimeErrors).
OOM_TEXTS = (
    "cuda out of memory",
    "cuda error: out of memory",
    "cublas_status_alloc_failed",
    "cudnn_status_alloc_failed",
    "cudnn_status_internal_error_host_allocation_failed",
    "cudnn_status_internal_error_device_allocation_failed",
)


class GpuUnusable(RuntimeError):
    """This process is pinned to a GPU that torch cannot use; the message is one line with the fix."""


def pinned_gpu(env: Mapping[str, str] | None = None) -> str | None:
    """The GPU this process is pinned to the way fedlaunch pins (CUDA_VISIBLE_DEVICES with
    CUDA_DEVICE_ORDER=PCI_BUS_ID), None when it is not pinned or every GPU is hidden."""
    env = os.environ if env is None else env
    visible = env.get("CUDA_VISIBLE_DEVICES", "").strip()
    if not visible or visible == "-1" or env.get("CUDA_DEVICE_ORDER") != "PCI_BUS_ID":
        return None
    return visible


def _nvml_view(pinned: str, lib: Any = None) -> tuple[str, str, str]:
    """(the GPU's name by NVML, the driver version, the CUDA version it supports), "" where NVML
    cannot tell."""
    try:
        if lib is None:
            import pynvml  # type: ignore[import-untyped]

            lib = pynvml
        lib.nvmlInit()
    except Exception:  # noqa: BLE001 - no driver, no library: the message says less
        return "", "", ""
    name = driver = supports = ""
    try:
        driver = str(lib.nvmlSystemGetDriverVersion())
        cuda = int(lib.nvmlSystemGetCudaDriverVersion())
        supports = f"{cuda // 1000}.{cuda % 1000 // 10}"
        first = pinned.split(",")[0].strip()
        handle = (lib.nvmlDeviceGetHandleByIndex(int(first)) if first.isdigit()
                  else lib.nvmlDeviceGetHandleByUUID(first))
        name = str(lib.nvmlDeviceGetName(handle))
    except Exception:  # noqa: BLE001 - whatever NVML says, the line is still worth printing
        pass
    finally:
        try:
            lib.nvmlShutdown()
        except Exception:  # noqa: BLE001
            pass
    return name, driver, supports


def unusable_reason(pinned: str, lib: Any = None, cuda: str | None = "?",
                    version: str | None = None) -> str:
    """One line: the GPU, the torch build and the driver it needs, what is wrong, and the fix.

    `lib` is pynvml or a fake; `cuda` and `version` default to this torch's build.
    """
    cuda = torch.version.cuda if cuda == "?" else cuda
    version = version or torch.__version__
    name, driver, supports = _nvml_view(pinned, lib)
    gpu = f"GPU {name} ({pinned})" if name else f"GPU {pinned}"
    if cuda is None:
        return (f"{gpu} is this process's GPU but torch {version} is a CPU-only build; install a "
                "CUDA build of torch (pip install torch --index-url "
                "https://download.pytorch.org/whl/cu130) or run with --gpus cpu")
    need = DRIVER_FOR_CUDA.get(int(cuda.split(".")[0]))
    needs = f"torch {version} (CUDA {cuda}) needs NVIDIA driver {need}+" if need else (
        f"torch {version} is built for CUDA {cuda}")
    major = driver.split(".")[0]
    if need and major.isdigit() and int(major) < need:
        older = f"CUDA {supports} or older" if supports else "an older CUDA"
        return (f"{gpu} is this process's GPU but CUDA cannot use it: {needs} and the driver is "
                f"{driver}; install driver {need} or newer, or a torch built for {older} "
                "(https://pytorch.org/get-started/locally), or run with --gpus cpu")
    seen = f"driver {driver}" if driver else "NVML sees no driver"
    return (f"{gpu} is this process's GPU but CUDA cannot use it ({needs}; {seen}); check that "
            "`nvidia-smi -L` lists it and that it is no MIG parent or wrong UUID, then pass --gpus "
            "with an id nvidia-smi shows, or run with --gpus cpu")


def check_pinned_gpu(env: Mapping[str, str] | None = None) -> str | None:
    """None when this process may go on; else the one line why its pinned GPU is unusable."""
    pinned = pinned_gpu(env)
    if pinned is None or torch.cuda.is_available():
        return None
    return unusable_reason(pinned)


def pick_device() -> torch.device:
    """The process's GPU (CUDA_VISIBLE_DEVICES decides which) with cuDNN's benchmarked kernels, or
    the CPU when no GPU is pinned; GpuUnusable when a pinned GPU cannot be used (never the CPU
    in silence)."""
    if torch.cuda.is_available():
        torch.backends.cudnn.benchmark = True  # fixed shapes per run: the fastest kernels win
        return torch.device("cuda")
    why = check_pinned_gpu()
    if why is not None:
        raise GpuUnusable(why)
    return torch.device("cpu")


_CAPABILITY: dict[int, tuple[int, int]] = {}


def use_bf16(precision: str, device: torch.device) -> bool:
    """bf16 autocast for `auto` and `bf16` on a GPU of compute capability 8.0 or more; fp32 else."""
    if device.type != "cuda" or precision not in ("auto", "bf16"):
        return False
    index = device.index if device.index is not None else torch.cuda.current_device()
    if index not in _CAPABILITY:
        _CAPABILITY[index] = tuple(torch.cuda.get_device_capability(index))  # type: ignore[assignment]
    return _CAPABILITY[index] >= BF16_CAPABILITY


def is_oom(exc: BaseException) -> bool:
    """Whether `exc` is the GPU (or host) running out of memory, by type or by CUDA's message."""
    if isinstance(exc, torch.OutOfMemoryError):
        return True
    if not isinstance(exc, RuntimeError):  # torch.AcceleratorError is a RuntimeError
        return False
    text = str(exc).lower()
    return any(needle in text for needle in OOM_TEXTS)
