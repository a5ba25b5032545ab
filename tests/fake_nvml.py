"""A stand-in for the pynvml module (nvidia-ml-py 13): same names, signatures and return types.

Return values are pynvml's own ctypes structures and friendly objects; errors follow pynvml's
scheme (`NVMLError(code)` builds the per-code subclass, `NVMLLibraryMismatchError` is no
NVMLError) but are the fake's own classes, so code under test must catch `lib.NVMLError`.
GPUs, MIG instances, process lists (host pids, memory in bytes) and failures are configurable.
"""

from __future__ import annotations

import string
from dataclasses import dataclass, field
from typing import Any

import pynvml as _real  # type: ignore[import-untyped]  # for its structures, never its calls

GB = 1_000_000_000
MIB = 2**20

NVML_SUCCESS = 0
NVML_ERROR_UNINITIALIZED = 1
NVML_ERROR_INVALID_ARGUMENT = 2
NVML_ERROR_NOT_SUPPORTED = 3
NVML_ERROR_NO_PERMISSION = 4
NVML_ERROR_NOT_FOUND = 6
NVML_ERROR_DRIVER_NOT_LOADED = 9
NVML_ERROR_LIBRARY_NOT_FOUND = 12
NVML_ERROR_FUNCTION_NOT_FOUND = 13
NVML_ERROR_GPU_IS_LOST = 15
NVML_ERROR_UNKNOWN = 999
NVML_DEVICE_MIG_DISABLE = 0
NVML_DEVICE_MIG_ENABLE = 1
NVML_VALUE_NOT_AVAILABLE_ulonglong = _real.NVML_VALUE_NOT_AVAILABLE_ulonglong
NVML_VALUE_NOT_AVAILABLE_uint = _real.NVML_VALUE_NOT_AVAILABLE_uint


class NVMLError(Exception):
    """As pynvml's: `NVMLError(code)` is an instance of that code's subclass; `.value` the code."""

    _valClassMapping: dict[int, type[NVMLError]] = {}
    _errcode_to_string = {
        NVML_ERROR_UNINITIALIZED: "Uninitialized",
        NVML_ERROR_INVALID_ARGUMENT: "Invalid Argument",
        NVML_ERROR_NOT_SUPPORTED: "Not Supported",
        NVML_ERROR_NO_PERMISSION: "Insufficient Permissions",
        NVML_ERROR_NOT_FOUND: "Not Found",
        NVML_ERROR_DRIVER_NOT_LOADED: "Driver Not Loaded",
        NVML_ERROR_LIBRARY_NOT_FOUND: "NVML Shared Library Not Found",
        NVML_ERROR_FUNCTION_NOT_FOUND: "Function Not Found",
        NVML_ERROR_GPU_IS_LOST: "GPU is lost",
        NVML_ERROR_UNKNOWN: "Unknown Error",
    }
    value: int

    def __new__(cls, value: int) -> NVMLError:
        if cls is NVMLError:
            cls = NVMLError._valClassMapping.get(value, cls)
        obj = Exception.__new__(cls)
        obj.value = value
        return obj

    def __str__(self) -> str:
        return self._errcode_to_string.get(self.value, f"NVML Error with code {self.value}")

    def __eq__(self, other: object) -> bool:
        return self.value == getattr(other, "value", None)

    __hash__ = None  # type: ignore[assignment]  # as pynvml's, which defines __eq__ only


class NVMLLibraryMismatchError(Exception):
    """pynvml raises this (no NVMLError) when an unversioned call's versioned C function is missing."""


def _error_classes() -> dict[str, type[NVMLError]]:
    """NVMLError_NotSupported and kin, made the way pynvml's _extractNVMLErrorsAsClasses makes them."""
    made = {}
    for name, code in list(globals().items()):
        if not name.startswith("NVML_ERROR_"):
            continue
        cls_name = "NVMLError_" + string.capwords(name.replace("NVML_ERROR_", ""), "_").replace("_", "")

        def new(cls: type[NVMLError], *_: Any, _code: int = code) -> NVMLError:
            return NVMLError.__new__(cls, _code)

        cls = type(cls_name, (NVMLError,), {"__new__": new})
        NVMLError._valClassMapping[code] = cls
        made[cls_name] = cls
    return made


globals().update(_error_classes())
NVMLError_FunctionNotFound = NVMLError._valClassMapping[NVML_ERROR_FUNCTION_NOT_FOUND]


@dataclass
class FakeMig:
    """One MIG instance of a FakeGpu."""

    uuid: str = ""
    memory_total: int = 10 * GB
    memory_used: int = 0
    pids: tuple[int, ...] = ()
    process_memory: dict[int, int | None] = field(default_factory=dict)


@dataclass
class FakeGpu:
    """One simulated GPU; `fail` names the pynvml functions that raise NOT_SUPPORTED for it.

    `pids` are host pids; each holds `process_memory[pid]` bytes (None: NVML cannot tell),
    256 MiB when not given. With `mig` instances the GPU is in MIG mode.
    """

    name: str | bytes = "NVIDIA H100 80GB HBM3"
    uuid: str | bytes = ""
    memory_total: int = 80 * GB
    memory_used: int = 0
    utilization: int = 0
    pids: tuple[int, ...] = ()
    process_memory: dict[int, int | None] = field(default_factory=dict)
    fail: frozenset[str] = frozenset()
    mig: tuple[FakeMig, ...] = ()
    capability: tuple[int, int] = (9, 0)
    bus: int = 0


@dataclass(frozen=True)
class _Handle:
    index: int
    mig: int | None = None  # the MIG instance's slot, for a MIG device handle


class FakeNvml:
    """Use as `Nvml(lib=FakeNvml([...]))`; `calls` records every function called, in order.

    `process_api`: 3, the driver has the _v3 process calls (the unversioned name works); 2, only
    _v2 (the unversioned name raises NVMLLibraryMismatchError, as with a driver older than the
    binding). `privileged`: aggregate process lists of a MIG-mode GPU (else NO_PERMISSION).
    """

    NVMLError = NVMLError
    NVMLLibraryMismatchError = NVMLLibraryMismatchError

    def __init__(
        self,
        gpus: list[FakeGpu] | None = None,
        *,
        driver: bool = True,
        init_error: int = NVML_ERROR_LIBRARY_NOT_FOUND,
        process_api: int = 3,
        driver_version: str = "580.95.05",
        cuda_version: int = 13000,
        privileged: bool = False,
    ) -> None:
        self.gpus = list(gpus or [])
        for i, gpu in enumerate(self.gpus):
            if not gpu.uuid:
                gpu.uuid = f"GPU-{i:08d}-fake-uuid"
            gpu.bus = gpu.bus or 0x18 + i
            for k, mig in enumerate(gpu.mig):
                mig.uuid = mig.uuid or f"MIG-{i:04d}{k:04d}-fake-uuid"
        self.driver = driver
        self.init_error = init_error
        self.process_api = process_api
        self.driver_version = driver_version
        self.cuda_version = cuda_version
        self.privileged = privileged
        self.initialised = 0
        self.calls: list[str] = []

    def __getattr__(self, name: str) -> Any:
        """pynvml's constants and error classes (NVML_ERROR_*, NVMLError_*), as the module has them."""
        if name.startswith(("NVML_", "NVMLError_")) and name in globals():
            return globals()[name]
        raise AttributeError(name)

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

    @staticmethod
    def _procs(pids: tuple[int, ...], memory: dict[int, int | None], gi: int) -> list[Any]:
        found = []
        for pid in pids:
            used = memory.get(pid, 256 * MIB)
            info = _real.c_nvmlProcessInfo_v3_t(
                pid=pid, usedGpuMemory=NVML_VALUE_NOT_AVAILABLE_ulonglong.value if used is None else used,
                gpuInstanceId=gi, computeInstanceId=0 if gi != NVML_VALUE_NOT_AVAILABLE_uint.value else gi)
            obj = _real.nvmlStructToFriendlyObject(info)
            if obj.usedGpuMemory == NVML_VALUE_NOT_AVAILABLE_ulonglong.value:
                obj.usedGpuMemory = None  # as pynvml does
            found.append(obj)
        return found

    # --- the system -----------------------------------------------------

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

    def nvmlSystemGetDriverVersion(self) -> str:
        self._record("nvmlSystemGetDriverVersion")
        return self.driver_version

    def nvmlSystemGetCudaDriverVersion(self) -> int:
        self._record("nvmlSystemGetCudaDriverVersion")
        return self.cuda_version

    def nvmlDeviceGetCount(self) -> int:
        self._record("nvmlDeviceGetCount")
        return len(self.gpus)

    # --- handles --------------------------------------------------------

    def nvmlDeviceGetHandleByIndex(self, index: int) -> _Handle:
        self._record("nvmlDeviceGetHandleByIndex")
        if not 0 <= index < len(self.gpus):
            raise NVMLError(NVML_ERROR_INVALID_ARGUMENT)
        if "nvmlDeviceGetHandleByIndex" in self.gpus[index].fail:
            raise NVMLError(NVML_ERROR_GPU_IS_LOST)
        return _Handle(index)

    def nvmlDeviceGetHandleByUUID(self, uuid: str | bytes) -> _Handle:
        self._record("nvmlDeviceGetHandleByUUID")
        want = uuid.decode() if isinstance(uuid, bytes) else uuid
        for i, gpu in enumerate(self.gpus):
            mine = gpu.uuid.decode() if isinstance(gpu.uuid, bytes) else gpu.uuid
            if mine == want:
                return _Handle(i)
            for k, mig in enumerate(gpu.mig):
                if mig.uuid == want:
                    return _Handle(i, k)
        raise NVMLError(NVML_ERROR_NOT_FOUND)

    def nvmlDeviceGetMigMode(self, device: _Handle) -> list[int]:
        gpu = self._gpu("nvmlDeviceGetMigMode", device)
        if device.mig is not None:
            raise NVMLError(NVML_ERROR_INVALID_ARGUMENT)
        mode = NVML_DEVICE_MIG_ENABLE if gpu.mig else NVML_DEVICE_MIG_DISABLE
        return [mode, mode]

    def nvmlDeviceGetMaxMigDeviceCount(self, device: _Handle) -> int:
        gpu = self._gpu("nvmlDeviceGetMaxMigDeviceCount", device)
        return 7 if gpu.mig else 0

    def nvmlDeviceGetMigDeviceHandleByIndex(self, device: _Handle, index: int) -> _Handle:
        gpu = self._gpu("nvmlDeviceGetMigDeviceHandleByIndex", device)
        if not gpu.mig:
            raise NVMLError(NVML_ERROR_INVALID_ARGUMENT)
        if not 0 <= index < len(gpu.mig):
            raise NVMLError(NVML_ERROR_NOT_FOUND)  # an empty slot
        return _Handle(device.index, index)

    def nvmlDeviceIsMigDeviceHandle(self, device: _Handle) -> Any:
        self._gpu("nvmlDeviceIsMigDeviceHandle", device)
        return _real.c_uint(1 if device.mig is not None else 0)  # pynvml returns the c_uint itself

    def nvmlDeviceGetDeviceHandleFromMigDeviceHandle(self, migDevice: _Handle) -> _Handle:
        self._gpu("nvmlDeviceGetDeviceHandleFromMigDeviceHandle", migDevice)
        if migDevice.mig is None:
            raise NVMLError(NVML_ERROR_INVALID_ARGUMENT)
        return _Handle(migDevice.index)

    # --- what a GPU (or MIG instance) says ---------------------------------

    def nvmlDeviceGetName(self, handle: _Handle) -> str | bytes:
        gpu = self._gpu("nvmlDeviceGetName", handle)
        if handle.mig is not None:
            return f"{gpu.name!s} MIG {gpu.mig[handle.mig].memory_total // GB}gb"
        return gpu.name

    def nvmlDeviceGetUUID(self, handle: _Handle) -> str | bytes:
        gpu = self._gpu("nvmlDeviceGetUUID", handle)
        return gpu.uuid if handle.mig is None else gpu.mig[handle.mig].uuid

    def nvmlDeviceGetMemoryInfo(self, handle: _Handle, version: Any = None) -> Any:
        gpu = self._gpu("nvmlDeviceGetMemoryInfo", handle)
        total, used = ((gpu.memory_total, gpu.memory_used) if handle.mig is None else
                       (gpu.mig[handle.mig].memory_total, gpu.mig[handle.mig].memory_used))
        return _real.c_nvmlMemory_t(total=total, free=total - used, used=used)

    def nvmlDeviceGetUtilizationRates(self, handle: _Handle) -> Any:
        gpu = self._gpu("nvmlDeviceGetUtilizationRates", handle)
        if gpu.mig:  # not supported on a MIG-mode GPU nor its instances
            raise NVMLError(NVML_ERROR_NOT_SUPPORTED)
        return _real.c_nvmlUtilization_t(gpu=gpu.utilization, memory=0)

    def nvmlDeviceGetCudaComputeCapability(self, handle: _Handle) -> tuple[int, int]:
        return self._gpu("nvmlDeviceGetCudaComputeCapability", handle).capability

    def nvmlDeviceGetPciInfo(self, handle: _Handle) -> Any:
        gpu = self._gpu("nvmlDeviceGetPciInfo", handle)
        bus_id = f"00000000:{gpu.bus:02X}:00.0".encode()
        return _real.nvmlPciInfo_t(busIdLegacy=bus_id, domain=0, bus=gpu.bus, device=0,
                                   pciDeviceId=0x233510DE, pciSubSystemId=0x18CC10DE, busId=bus_id)

    def nvmlDeviceGetComputeRunningProcesses_v3(self, handle: _Handle) -> list[Any]:
        gpu = self._gpu("nvmlDeviceGetComputeRunningProcesses_v3", handle)
        if self.process_api < 3:
            raise NVMLError(NVML_ERROR_FUNCTION_NOT_FOUND)
        return self._processes(gpu, handle)

    def nvmlDeviceGetComputeRunningProcesses_v2(self, handle: _Handle) -> list[Any]:
        gpu = self._gpu("nvmlDeviceGetComputeRunningProcesses_v2", handle)
        return self._processes(gpu, handle)

    def nvmlDeviceGetComputeRunningProcesses(self, handle: _Handle) -> list[Any]:
        self._record("nvmlDeviceGetComputeRunningProcesses")
        try:  # pynvml's @throwOnVersionMismatch around the _v3 call
            return self.nvmlDeviceGetComputeRunningProcesses_v3(handle)
        except NVMLError_FunctionNotFound:
            raise NVMLLibraryMismatchError(
                "Unversioned function called and the pyNVML version does not match the NVML lib "
                "version. Either use matching pyNVML and NVML lib versions or use a versioned "
                "function such as nvmlDeviceGetComputeRunningProcesses_v2") from None

    def _processes(self, gpu: FakeGpu, handle: _Handle) -> list[Any]:
        if "nvmlDeviceGetComputeRunningProcesses" in gpu.fail:  # every version of the call
            raise NVMLError(NVML_ERROR_NOT_SUPPORTED)
        none = NVML_VALUE_NOT_AVAILABLE_uint.value
        if handle.mig is not None:
            mig = gpu.mig[handle.mig]
            return self._procs(mig.pids, mig.process_memory, handle.mig + 1)
        if gpu.mig:
            if not self.privileged:  # a MIG-mode GPU's aggregate list needs root
                raise NVMLError(NVML_ERROR_NO_PERMISSION)
            return [p for k, m in enumerate(gpu.mig) for p in self._procs(m.pids, m.process_memory, k + 1)]
        return self._procs(gpu.pids, gpu.process_memory, none)


def fleet(count: int = 2, *, free: int = 80 * GB, total: int = 80 * GB) -> FakeNvml:
    """Shorthand for tests: `count` identical GPUs, each with `free` bytes free of `total`."""
    return FakeNvml([FakeGpu(memory_total=total, memory_used=total - free) for _ in range(count)])
