"""The one place fedlaunch talks to NVML: lazy, lock-guarded, and never raising on a query."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from launcher.events import GpuSample

T = TypeVar("T")

# NVML error codes (nvml.h) that mean "no usable driver", as opposed to a broken GPU.
_NO_DRIVER_CODES = {
    "NVML_ERROR_LIBRARY_NOT_FOUND": 12,
    "NVML_ERROR_DRIVER_NOT_LOADED": 9,
}


@dataclass(frozen=True)
class GpuInfo:
    """One physical GPU by its NVML index (not a CUDA ordinal); memory in bytes, None = unknown."""

    index: int
    uuid: str  # "GPU-..."; "" when NVML could not tell
    name: str
    memory_total: int | None
    memory_free: int | None


def _text(value: Any) -> str:
    """NVML strings come back as bytes from older bindings and str from newer ones."""
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return str(value)


class Nvml:
    """Lazy NVML session; `available()` says, before any UI starts, whether a GPU can be used.

    `lib` is the pynvml module (imported on first use) or a fake with the same function
    names. Every query answers a value, or None / () / [] for "not available"; none raises.
    """

    def __init__(self, lib: Any = None) -> None:
        self._lib = lib
        self._lock = threading.RLock()
        self._tried = False
        self._ok = False
        self._reason: str | None = None
        self._count = 0
        self._handles: dict[int, Any] = {}
        self._names: dict[int, str] = {}
        self._targets: dict[int, Any] = {}  # the handle holding a GPU's memory: its MIG instance's
        self._no_utilization: set[int] = set()  # NOT_SUPPORTED once (MIG): not asked again
        self._errors: tuple[type[BaseException], ...] = ()

    # --- start and stop -------------------------------------------------

    def available(self) -> bool:
        """Start NVML once (later calls reuse the answer); True when there is at least one GPU."""
        with self._lock:
            if not self._tried:
                self._tried = True
                try:
                    self._start()
                except Exception as exc:  # available() must never raise, whatever the binding does
                    self._ok = False
                    self._reason = f"NVML could not start ({type(exc).__name__}: {exc})"
            return self._ok

    def unavailable_reason(self) -> str | None:
        """Why there is no GPU to use, in words for the user; None when `available()` is True."""
        self.available()
        return self._reason

    def shutdown(self) -> None:
        """Stop NVML if it was started; a later `available()` starts it again."""
        with self._lock:
            if self._ok and self._lib is not None:
                try:
                    self._lib.nvmlShutdown()
                except self._errors:
                    pass
            self._tried = False
            self._ok = False
            self._reason = None
            self._count = 0
            self._handles.clear()
            self._names.clear()
            self._targets.clear()
            self._no_utilization.clear()

    def _start(self) -> None:
        if self._lib is None:
            try:
                import pynvml  # type: ignore[import-untyped]
            except ImportError as exc:
                self._reason = f"nvidia-ml-py is not installed ({exc}); pip install nvidia-ml-py"
                return
            self._lib = pynvml
        lib = self._lib
        self._errors = _error_types(lib)
        try:
            lib.nvmlInit()
        except self._errors as exc:
            code = getattr(exc, "value", None)
            no_driver = {getattr(lib, name, num) for name, num in _NO_DRIVER_CODES.items()}
            if code in no_driver:
                self._reason = f"no NVIDIA driver found (NVML: {exc})"
            else:
                self._reason = f"NVML could not start (NVML: {exc})"
            return
        try:
            count = int(lib.nvmlDeviceGetCount())
        except self._errors as exc:
            self._shutdown_quietly()
            self._reason = f"NVML could not count the GPUs (NVML: {exc})"
            return
        if count < 1:
            self._shutdown_quietly()
            self._reason = "NVML found no GPU"
            return
        self._count = count
        self._ok = True
        self._reason = None

    def _shutdown_quietly(self) -> None:
        try:
            self._lib.nvmlShutdown()
        except self._errors:
            pass

    # --- queries ----------------------------------------------------------

    def _query(self, fn: Callable[..., T], *args: Any) -> T | None:
        """Run one NVML call; None when NVML reports an error for it."""
        try:
            return fn(*args)
        except self._errors:
            return None

    def _handle(self, index: int) -> Any:
        """The cached NVML handle of GPU `index`, or None (call with the lock held)."""
        if index in self._handles:
            return self._handles[index]
        if not 0 <= index < self._count:
            return None
        handle = self._query(self._lib.nvmlDeviceGetHandleByIndex, index)
        if handle is not None:
            self._handles[index] = handle
        return handle

    def _name(self, index: int, handle: Any) -> str:
        if index not in self._names:
            name = self._query(self._lib.nvmlDeviceGetName, handle)
            if name is None:
                return "unknown GPU"
            self._names[index] = _text(name)
        return self._names[index]

    def _target(self, index: int) -> Any:
        """The handle that holds GPU `index`'s memory and processes (call with the lock held).

        A GPU in MIG mode is used through its first MIG instance: CUDA sees only that instance
        (pinned by its MIG UUID), with that instance's memory; None when it cannot be opened.
        """
        if index in self._targets:
            return self._targets[index]
        handle = self._handle(index)
        if handle is None:
            return None
        target = handle
        lib = self._lib
        mode = self._query(lib.nvmlDeviceGetMigMode, handle) if hasattr(lib, "nvmlDeviceGetMigMode") else None
        if mode is not None and int(mode[0]) == MIG_ENABLED:
            slots = self._query(lib.nvmlDeviceGetMaxMigDeviceCount, handle) or 0
            for slot in range(int(slots)):
                mig = self._query(lib.nvmlDeviceGetMigDeviceHandleByIndex, handle, slot)
                if mig is not None:
                    target = mig
                    break
        self._targets[index] = target
        return target

    def _utilization(self, index: int, handle: Any) -> int | None:
        """Percent busy, or None; a GPU that answers NOT_SUPPORTED (MIG) is not asked again."""
        if index in self._no_utilization:
            return None
        try:
            util = self._lib.nvmlDeviceGetUtilizationRates(handle)
        except self._errors as exc:
            if getattr(exc, "value", None) == getattr(self._lib, "NVML_ERROR_NOT_SUPPORTED", 3):
                self._no_utilization.add(index)
            return None
        return int(util.gpu)

    def _processes(self, index: int) -> dict[int, int | None] | None:
        """Host pid -> bytes of GPU memory it holds (None: NVML cannot tell); None when unknown."""
        lib = self._lib
        target, parent = self._target(index), self._handle(index)
        for handle in dict.fromkeys(h for h in (target, parent) if h is not None):
            procs = self._query(lib.nvmlDeviceGetComputeRunningProcesses, handle)
            if procs is None and hasattr(lib, "nvmlDeviceGetComputeRunningProcesses_v2"):
                # An older driver lacks the _v3 call that the unversioned name maps to.
                procs = self._query(lib.nvmlDeviceGetComputeRunningProcesses_v2, handle)
            if procs is not None:
                return {int(p.pid): _bytes(p.usedGpuMemory) for p in procs}
        return None

    def devices(self) -> list[GpuInfo]:
        """Every GPU NVML can open, by physical NVML index; [] when NVML is unavailable."""
        with self._lock:
            if not self.available():
                return []
            found = []
            for index in range(self._count):
                handle = self._target(index)
                if handle is None:
                    continue  # NVML lists it but cannot open it (lost GPU, no permission)
                uuid = self._query(self._lib.nvmlDeviceGetUUID, handle)  # MIG-... for an instance
                mem = self._query(self._lib.nvmlDeviceGetMemoryInfo, handle)
                found.append(
                    GpuInfo(
                        index=index,
                        uuid=_text(uuid) if uuid is not None else "",
                        name=self._name(index, handle),
                        memory_total=int(mem.total) if mem is not None else None,
                        memory_free=int(mem.free) if mem is not None else None,
                    )
                )
            return found

    def sample(self, indices: Sequence[int] | None = None) -> list[GpuSample]:
        """One reading per GPU (all when `indices` is None); a failed query leaves None or ()."""
        with self._lock:
            if not self.available():
                return []
            wanted = range(self._count) if indices is None else indices
            samples = []
            for index in wanted:
                handle = self._target(index)
                if handle is None:
                    samples.append(GpuSample(index, "unknown GPU", None, None, None, ()))
                    continue
                mem = self._query(self._lib.nvmlDeviceGetMemoryInfo, handle)
                held = self._processes(index) or {}
                samples.append(
                    GpuSample(
                        index=index,
                        name=self._name(index, handle),
                        utilization=self._utilization(index, handle),
                        memory_used=int(mem.used) if mem is not None else None,
                        memory_total=int(mem.total) if mem is not None else None,
                        pids=tuple(sorted(held)),
                        process_memory=held,
                    )
                )
            return samples

    def pids_on(self, index: int) -> list[int]:
        """Process ids with a compute context on GPU `index` ([] when unknown).

        NVML reports host PIDs: inside a container with its own PID namespace they may not
        match os.getpid() of the processes you started (see `pid_match`).
        """
        return sorted(self.processes(index))

    def processes(self, index: int) -> dict[int, int | None]:
        """Host pid -> bytes of GPU `index`'s memory it holds (None: NVML cannot tell); {} when unknown."""
        with self._lock:
            if not self.available() or not 0 <= index < self._count:
                return {}
            return self._processes(index) or {}

    def driver(self) -> tuple[str, str]:
        """(driver version, CUDA version the driver supports, "13.0"); "" where NVML cannot tell."""
        with self._lock:
            if not self.available():
                return "", ""
            version = self._query(self._lib.nvmlSystemGetDriverVersion)
            cuda = self._query(self._lib.nvmlSystemGetCudaDriverVersion)
            return (_text(version) if version is not None else "",
                    f"{int(cuda) // 1000}.{int(cuda) % 1000 // 10}" if cuda is not None else "")


MIG_ENABLED = 1  # NVML_DEVICE_MIG_ENABLE
_NOT_AVAILABLE = 2**64 - 1  # NVML_VALUE_NOT_AVAILABLE_ulonglong


def _bytes(value: Any) -> int | None:
    """A process's usedGpuMemory: bytes, or None where NVML cannot tell (WDDM, MIG without root)."""
    if value is None or int(value) == _NOT_AVAILABLE:
        return None
    return int(value)


def other_pid_namespace(ours: set[int], listed: set[int]) -> str | None:
    """A note when NVML lists processes but none of `ours`: NVML reports host pids, so inside a
    container with its own PID namespace it lists none of ours. That is a note, not a failure:
    per-process GPU memory cannot be matched there. None when one of ours is listed (or none
    is listed at all, which is no namespace question)."""
    if not ours or not listed or ours & listed:
        return None
    return (f"NVML lists pids {sorted(listed)}, none of ours {sorted(ours)}: NVML reports host "
            "pids, so in a container (own PID namespace) per-process GPU memory is not matched")


def _error_types(lib: Any) -> tuple[type[BaseException], ...]:
    """The exceptions a binding's calls raise for NVML failures: its NVMLError (whose per-code
    subclasses it raises) and NVMLLibraryMismatchError, which is no NVMLError."""
    found: list[type[BaseException]] = [OSError]
    for name in ("NVMLError", "NVMLLibraryMismatchError"):
        cls = getattr(lib, name, None)
        if isinstance(cls, type) and issubclass(cls, BaseException):
            found.append(cls)
    return tuple(found)
