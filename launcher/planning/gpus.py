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

    def _pids(self, handle: Any) -> tuple[int, ...] | None:
        lib = self._lib
        procs = self._query(lib.nvmlDeviceGetComputeRunningProcesses, handle)
        if procs is None and hasattr(lib, "nvmlDeviceGetComputeRunningProcesses_v2"):
            # An older driver lacks the _v3 call that the unversioned name maps to.
            procs = self._query(lib.nvmlDeviceGetComputeRunningProcesses_v2, handle)
        if procs is None:
            return None
        return tuple(sorted({int(p.pid) for p in procs}))

    def devices(self) -> list[GpuInfo]:
        """Every GPU NVML can open, by physical NVML index; [] when NVML is unavailable."""
        with self._lock:
            if not self.available():
                return []
            found = []
            for index in range(self._count):
                handle = self._handle(index)
                if handle is None:
                    continue  # NVML lists it but cannot open it (lost GPU, no permission)
                uuid = self._query(self._lib.nvmlDeviceGetUUID, handle)
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
                handle = self._handle(index)
                if handle is None:
                    samples.append(GpuSample(index, "unknown GPU", None, None, None, ()))
                    continue
                util = self._query(self._lib.nvmlDeviceGetUtilizationRates, handle)
                mem = self._query(self._lib.nvmlDeviceGetMemoryInfo, handle)
                samples.append(
                    GpuSample(
                        index=index,
                        name=self._name(index, handle),
                        utilization=int(util.gpu) if util is not None else None,
                        memory_used=int(mem.used) if mem is not None else None,
                        memory_total=int(mem.total) if mem is not None else None,
                        pids=self._pids(handle) or (),
                    )
                )
            return samples

    def pids_on(self, index: int) -> list[int]:
        """Process ids with a compute context on GPU `index` ([] when unknown).

        NVML reports host PIDs: inside a container with its own PID namespace they may not
        match os.getpid() of the processes you started.
        """
        with self._lock:
            if not self.available():
                return []
            handle = self._handle(index)
            if handle is None:
                return []
            return list(self._pids(handle) or ())


def _error_types(lib: Any) -> tuple[type[BaseException], ...]:
    """The exceptions a binding's calls raise for NVML failures (its own NVMLError and kin)."""
    found: list[type[BaseException]] = [OSError]
    for name in ("NVMLError", "NVMLLibraryMismatchError"):
        cls = getattr(lib, name, None)
        if isinstance(cls, type) and issubclass(cls, BaseException):
            found.append(cls)
    return tuple(found)
