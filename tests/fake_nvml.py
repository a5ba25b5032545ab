"""A stand-in for the pynvml module: same function names, configurable GPUs and failures."""

from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

GB = 1_000_000_000

NVML_ERROR_DRIVER_NOT_LOADED = 9
NVML_ERROR_LIBRARY_NOT_FOUND = 12
NVML_ERROR_NOT_SUPPORTED = 3
NVML_ERROR_GPU_IS_LOST = 15
NVML_ERROR_UNINITIALIZED = 1

_MESSAGES = {
    NVML_ERROR_DRIVER_NOT_LOADED: "Driver Not Loaded",
    NVML_ERROR_LIBRARY_NOT_FOUND: "NVML Shared Library Not Found",
    NVML_ERROR_NOT_SUPPORTED: "Not Supported",
    NVML_ERROR_GPU_IS_LOST: "GPU is lost",
    NVML_ERROR_UNINITIALIZED: "Uninitialized",
}


class NVMLError(Exception):
    """The fake's own error class (not pynvml's): code under test must catch `lib.NVMLError`."""

    def __init__(self, value: int) -> None:
        super().__init__(value)
        self.value = value

    def __str__(self) -> str:
        return _MESSAGES.get(self.value, f"NVML Error with code {self.value}")


@dataclass
class FakeGpu:
    """One simulated GPU; `fail` names the pynvml functions that raise for this GPU."""

    name: str | bytes = "NVIDIA H100 80GB HBM3"
    uuid: str | bytes = ""
    memory_total: int = 80 * GB
    memory_used: int = 0
    utilization: int = 0
    pids: tuple[int, ...] = ()
    fail: frozenset[str] = frozenset()


@dataclass(frozen=True)
class _Handle:
    index: int


class FakeNvml:
    """Use as `Nvml(lib=FakeNvml([...]))`; `calls` records every function called, in order."""

    NVMLError = NVMLError
    NVML_ERROR_DRIVER_NOT_LOADED = NVML_ERROR_DRIVER_NOT_LOADED
    NVML_ERROR_LIBRARY_NOT_FOUND = NVML_ERROR_LIBRARY_NOT_FOUND

    def __init__(
        self,
        gpus: list[FakeGpu] | None = None,
        *,
        driver: bool = True,
        init_error: int = NVML_ERROR_LIBRARY_NOT_FOUND,
    ) -> None:
        self.gpus = list(gpus or [])
        for i, gpu in enumerate(self.gpus):
            if not gpu.uuid:
                gpu.uuid = f"GPU-{i:08d}-fake-uuid"
        self.driver = driver
        self.init_error = init_error
        self.initialised = 0
        self.calls: list[str] = []

    # --- helpers ------------------------------------------------------

    def _record(self, fn: str) -> None:
        self.calls.append(fn)
        if fn not in ("nvmlInit", "nvmlShutdown") and self.initialised < 1:
            raise NVMLError(NVML_ERROR_UNINITIALIZED)

    def _gpu(self, fn: str, handle: _Handle) -> FakeGpu:
        self._record(fn)
        gpu = self.gpus[handle.index]
        if fn in gpu.fail:
            raise NVMLError(NVML_ERROR_NOT_SUPPORTED)
        return gpu

    # --- the pynvml functions Nvml uses -----------------------------------

    def nvmlInit(self) -> None:
        self._record("nvmlInit")
        if not self.driver:
            raise NVMLError(self.init_error)
        self.initialised += 1

    def nvmlShutdown(self) -> None:
        self._record("nvmlShutdown")
        if self.initialised < 1:
            raise NVMLError(NVML_ERROR_UNINITIALIZED)
        self.initialised -= 1

    def nvmlDeviceGetCount(self) -> int:
        self._record("nvmlDeviceGetCount")
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> _Handle:
        self._record("nvmlDeviceGetHandleByIndex")
        if not 0 <= index < len(self.gpus):
            raise NVMLError(2)  # NVML_ERROR_INVALID_ARGUMENT
        if "nvmlDeviceGetHandleByIndex" in self.gpus[index].fail:
            raise NVMLError(NVML_ERROR_GPU_IS_LOST)
        return _Handle(index)

    def nvmlDeviceGetName(self, handle: _Handle) -> str | bytes:
        return self._gpu("nvmlDeviceGetName", handle).name

    def nvmlDeviceGetUUID(self, handle: _Handle) -> str | bytes:
        return self._gpu("nvmlDeviceGetUUID", handle).uuid

    def nvmlDeviceGetMemoryInfo(self, handle: _Handle) -> Any:
        gpu = self._gpu("nvmlDeviceGetMemoryInfo", handle)
        free = gpu.memory_total - gpu.memory_used
        return SimpleNamespace(total=gpu.memory_total, free=free, used=gpu.memory_used)

    def nvmlDeviceGetUtilizationRates(self, handle: _Handle) -> Any:
        gpu = self._gpu("nvmlDeviceGetUtilizationRates", handle)
        return SimpleNamespace(gpu=gpu.utilization, memory=0)

    def nvmlDeviceGetComputeRunningProcesses(self, handle: _Handle) -> list[Any]:
        gpu = self._gpu("nvmlDeviceGetComputeRunningProcesses", handle)
        return [SimpleNamespace(pid=pid, usedGpuMemory=None) for pid in gpu.pids]


def fleet(count: int = 2, *, free: int = 80 * GB, total: int = 80 * GB) -> FakeNvml:
    """Shorthand for tests: `count` identical GPUs, each with `free` bytes free of `total`."""
    return FakeNvml([FakeGpu(memory_total=total, memory_used=total - free) for _ in range(count)])
