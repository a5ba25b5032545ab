"""Nvml against the fake binding, plus the no-driver path of the real pynvml."""

from __future__ import annotations

import inspect
import threading

import pytest

from launcher.events import GpuSample
from launcher.planning.gpus import GpuInfo, Nvml, other_pid_namespace
from launcher.planning.placement import client_env, parse_gpus, plan_placement
from tests.fake_nvml import GB, FakeGpu, FakeMig, FakeNvml, NVMLError, fleet


def test_devices_lists_physical_gpus_with_memory() -> None:
    lib = FakeNvml(
        [
            FakeGpu(name=b"NVIDIA A100", uuid=b"GPU-aaa", memory_total=40 * GB, memory_used=4 * GB),
            FakeGpu(name="NVIDIA H100", uuid="GPU-bbb", memory_total=80 * GB),
        ]
    )
    nvml = Nvml(lib)
    assert nvml.available()
    assert nvml.unavailable_reason() is None
    assert nvml.devices() == [
        GpuInfo(0, "GPU-aaa", "NVIDIA A100", 40 * GB, 36 * GB),
        GpuInfo(1, "GPU-bbb", "NVIDIA H100", 80 * GB, 80 * GB),
    ]


def test_init_is_lazy_and_happens_once() -> None:
    lib = fleet(2)
    nvml = Nvml(lib)
    assert lib.calls == []
    threads = [threading.Thread(target=nvml.available) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    nvml.devices()
    nvml.sample()
    assert lib.calls.count("nvmlInit") == 1
    assert lib.calls.count("nvmlDeviceGetHandleByIndex") == 2  # handles are cached


def test_no_driver_is_reported_not_raised() -> None:
    lib = FakeNvml([FakeGpu()], driver=False)
    nvml = Nvml(lib)
    assert nvml.available() is False
    reason = nvml.unavailable_reason()
    assert reason is not None and reason.startswith("no NVIDIA driver found")
    assert "NVML Shared Library Not Found" in reason
    assert nvml.devices() == []
    assert nvml.sample() == []
    assert nvml.pids_on(0) == []
    nvml.shutdown()
    assert "nvmlShutdown" not in lib.calls


def test_other_init_failure_has_its_own_reason() -> None:
    nvml = Nvml(FakeNvml([FakeGpu()], driver=False, init_error=999))
    assert not nvml.available()
    assert nvml.unavailable_reason() == "NVML could not start (NVML: Unknown Error)"


def test_zero_devices() -> None:
    lib = FakeNvml([])
    nvml = Nvml(lib)
    assert not nvml.available()
    assert nvml.unavailable_reason() == "NVML found no GPU"
    assert nvml.devices() == []
    assert lib.initialised == 0  # shut down again after finding nothing


def test_unexpected_exception_in_init_is_contained() -> None:
    class Broken(FakeNvml):
        def nvmlInit(self) -> None:
            raise RuntimeError("boom")

    nvml = Nvml(Broken([FakeGpu()]))
    assert not nvml.available()
    assert nvml.unavailable_reason() == "NVML could not start (RuntimeError: boom)"


def test_sample_reads_util_memory_and_pids() -> None:
    lib = FakeNvml(
        [
            FakeGpu(name="A", memory_total=10 * GB, memory_used=3 * GB, utilization=57, pids=(30, 10),
                    process_memory={30: 2 * GB, 10: None}),
            FakeGpu(name="B", memory_total=10 * GB, utilization=0),
        ]
    )
    nvml = Nvml(lib)
    assert nvml.sample() == [
        GpuSample(0, "A", 57, 3 * GB, 10 * GB, (10, 30), {10: None, 30: 2 * GB}),
        GpuSample(1, "B", 0, 0, 10 * GB, ()),
    ]
    assert nvml.sample([1]) == [GpuSample(1, "B", 0, 0, 10 * GB, ())]
    assert nvml.pids_on(0) == [10, 30]
    assert nvml.pids_on(1) == []


def test_sample_leaves_none_where_a_query_fails() -> None:
    lib = FakeNvml(
        [
            FakeGpu(name="ok", memory_total=10 * GB, utilization=5, pids=(7,)),
            FakeGpu(
                name="flaky",
                memory_total=10 * GB,
                pids=(8,),
                fail=frozenset(
                    {
                        "nvmlDeviceGetUtilizationRates",
                        "nvmlDeviceGetMemoryInfo",
                        "nvmlDeviceGetComputeRunningProcesses",
                    }
                ),
            ),
        ]
    )
    nvml = Nvml(lib)
    ok, flaky = nvml.sample()
    assert ok == GpuSample(0, "ok", 5, 0, 10 * GB, (7,), {7: 256 * 2**20})
    assert flaky.index == 1 and flaky.name == "flaky"
    assert flaky.utilization is None
    assert flaky.memory_used is None and flaky.memory_total is None
    assert flaky.pids == ()
    assert nvml.pids_on(1) == []
    info = nvml.devices()[1]
    assert info.memory_total is None and info.memory_free is None


def test_failed_name_and_uuid_and_lost_gpu() -> None:
    lib = FakeNvml(
        [
            FakeGpu(fail=frozenset({"nvmlDeviceGetName", "nvmlDeviceGetUUID"})),
            FakeGpu(fail=frozenset({"nvmlDeviceGetHandleByIndex"})),
        ]
    )
    nvml = Nvml(lib)
    devices = nvml.devices()
    assert [d.index for d in devices] == [0]  # the lost GPU cannot be used
    assert devices[0].uuid == "" and devices[0].name == "unknown GPU"
    lost = nvml.sample([1])[0]
    assert lost.index == 1 and lost.utilization is None and lost.pids == ()
    assert nvml.sample([5])[0].utilization is None  # an index NVML does not have
    assert nvml.pids_on(5) == []


def test_shutdown_then_restart() -> None:
    lib = fleet(1)
    nvml = Nvml(lib)
    assert nvml.available()
    nvml.shutdown()
    assert lib.initialised == 0
    nvml.shutdown()  # twice is harmless
    assert nvml.available()
    assert lib.calls.count("nvmlInit") == 2


def test_fake_error_is_not_pynvml_error() -> None:
    # Nvml must catch lib.NVMLError, not a class it imported itself.
    pynvml = pytest.importorskip("pynvml")
    assert not issubclass(NVMLError, pynvml.NVMLError)


def _real_gpu_present() -> bool:
    try:
        import pynvml  # type: ignore[import-untyped]
    except ImportError:
        return False
    try:
        pynvml.nvmlInit()
    except Exception:
        return False
    try:
        return int(pynvml.nvmlDeviceGetCount()) > 0
    finally:
        pynvml.nvmlShutdown()


def test_real_library_without_driver() -> None:
    pytest.importorskip("pynvml")
    if _real_gpu_present():
        pytest.skip("an NVIDIA GPU is present: the no-driver path cannot be exercised")
    nvml = Nvml()
    assert nvml.available() is False
    reason = nvml.unavailable_reason()
    assert reason is not None and reason
    assert "\n" not in reason
    assert nvml.devices() == []
    assert nvml.sample() == []
    assert nvml.pids_on(0) == []
    nvml.shutdown()


# --- the fake is nvidia-ml-py 13, and Nvml handles what that library does -------------------------

def test_the_fake_has_pynvmls_signatures_errors_and_return_types() -> None:
    pynvml = pytest.importorskip("pynvml")
    lib = FakeNvml([FakeGpu(pids=(41,), process_memory={41: 3 * GB})])
    lib.nvmlInit()
    handle = lib.nvmlDeviceGetHandleByIndex(0)

    names = [n for n in dir(FakeNvml) if n.startswith("nvml")]
    error = lib.NVMLError(lib.NVML_ERROR_NOT_SUPPORTED)
    procs = lib.nvmlDeviceGetComputeRunningProcesses(handle)

    for name in names:
        real = inspect.signature(getattr(pynvml, name)).parameters
        fake = inspect.signature(getattr(lib, name)).parameters
        assert list(fake) == list(real), name
    assert type(error).__name__ == "NVMLError_NotSupported" and isinstance(error, lib.NVMLError)
    assert str(error) == str(pynvml.NVMLError(pynvml.NVML_ERROR_NOT_SUPPORTED)) == "Not Supported"
    assert error.value == 3
    assert not issubclass(lib.NVMLLibraryMismatchError, lib.NVMLError)
    assert not issubclass(pynvml.NVMLLibraryMismatchError, pynvml.NVMLError)
    assert isinstance(lib.nvmlDeviceGetMemoryInfo(handle), pynvml.c_nvmlMemory_t)
    assert isinstance(lib.nvmlDeviceGetUtilizationRates(handle), pynvml.c_nvmlUtilization_t)
    assert isinstance(lib.nvmlDeviceGetPciInfo(handle), pynvml.nvmlPciInfo_t)
    assert [(type(p), p.pid, p.usedGpuMemory) for p in procs] == [
        (pynvml.nvmlFriendlyObject, 41, 3 * GB)]
    assert isinstance(lib.nvmlSystemGetDriverVersion(), str)
    assert lib.nvmlSystemGetCudaDriverVersion() == 13000
    assert lib.nvmlDeviceGetMigMode(handle) == [0, 0]


def test_an_older_driver_without_the_v3_process_call_is_read_through_v2() -> None:
    lib = FakeNvml([FakeGpu(pids=(5, 6), process_memory={5: GB, 6: 2 * GB})], process_api=2)
    nvml = Nvml(lib)

    held = nvml.processes(0)

    assert held == {5: GB, 6: 2 * GB}
    assert "nvmlDeviceGetComputeRunningProcesses_v2" in lib.calls


def test_a_mig_gpu_is_used_through_its_first_instance() -> None:
    lib = FakeNvml([FakeGpu(name="NVIDIA A100-SXM4-40GB", memory_total=40 * GB, mig=(
        FakeMig(uuid="MIG-1111", memory_total=10 * GB, memory_used=GB, pids=(77,),
                process_memory={77: None}),
        FakeMig(uuid="MIG-2222", memory_total=20 * GB)))])
    nvml = Nvml(lib)

    devices = nvml.devices()
    first, again = nvml.sample([0])[0], nvml.sample([0])[0]
    placement = plan_placement(2, parse_gpus("0"), nvml, per_client_bytes=GB, parent_env={})

    assert devices == [GpuInfo(0, "MIG-1111", "NVIDIA A100-SXM4-40GB MIG 10gb", 10 * GB, 9 * GB)]
    assert client_env(placement.gpus[0])["CUDA_VISIBLE_DEVICES"] == "MIG-1111"
    assert first.utilization is None and again.utilization is None
    assert lib.calls.count("nvmlDeviceGetUtilizationRates") == 1  # NOT_SUPPORTED: asked once
    assert (first.memory_used, first.memory_total) == (GB, 10 * GB)
    assert first.pids == (77,) and first.process_memory == {77: None}  # MIG hides it from non-root


def test_no_pid_of_ours_in_nvmls_list_is_a_pid_namespace_note() -> None:
    note = other_pid_namespace({100, 101}, {4242, 4243})

    assert note is not None and "container" in note and "host pids" in note
    assert other_pid_namespace({100}, {100, 4242}) is None
    assert other_pid_namespace({100}, set()) is None
