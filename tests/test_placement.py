"""parse_gpus, plan_placement and client_env, against the fake NVML binding."""

from __future__ import annotations

import pytest

from fedcore.errors import UsageError
from launcher.planning.gpus import GpuInfo, Nvml
from launcher.planning.placement import GpuRequest, Placement, client_env, parse_gpus, plan_placement
from tests.fake_nvml import GB, FakeGpu, FakeNvml, fleet


def plan(num_clients: int, spec: str | None, lib: FakeNvml, **kw: int) -> Placement:
    return plan_placement(num_clients, parse_gpus(spec), Nvml(lib), parent_env={}, **kw)


# --- parse_gpus ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        (None, GpuRequest("auto")),
        ("auto", GpuRequest("auto")),
        ("all", GpuRequest("all")),
        (" ALL ", GpuRequest("all")),
        ("cpu", GpuRequest("cpu")),
        ("1", GpuRequest("ids", (1,))),
        ("0,1", GpuRequest("ids", (0, 1))),
        ("0, 2", GpuRequest("ids", (0, 2))),
        ("3,1", GpuRequest("ids", (3, 1))),
    ],
)
def test_parse_gpus(spec: str | None, expected: GpuRequest) -> None:
    assert parse_gpus(spec) == expected


@pytest.mark.parametrize(
    "spec", ["", "x", "-1", "0,-1", "0,", ",1", "0,,1", "1.5", "gpu0", "0 1", "²"]
)
def test_parse_gpus_rejects(spec: str) -> None:
    with pytest.raises(UsageError) as err:
        parse_gpus(spec)
    assert str(err.value) == (
        f"bad --gpus {spec!r}: use a comma list of GPU ids like 0,1, 'all' or 'cpu'"
    )


def test_parse_gpus_rejects_duplicates() -> None:
    with pytest.raises(UsageError, match="GPU 1 listed twice"):
        parse_gpus("1,0,1")


# --- plan_placement -------------------------------------------------------------


def test_eight_clients_on_two_gpus_alternate() -> None:
    p = plan(8, "0,1", fleet(2))
    assert p.client_gpu == (0, 1, 0, 1, 0, 1, 0, 1)
    assert p.client_gpu.count(0) == p.client_gpu.count(1) == 4
    assert [g.index for g in p.gpus] == [0, 1]
    assert p.warnings == () and p.notes == ()


def test_ids_keep_the_order_listed() -> None:
    p = plan(3, "1,0", fleet(2))
    assert p.client_gpu == (1, 0, 1)
    assert [g.index for g in p.gpus] == [1, 0]


def test_one_id_takes_every_client() -> None:
    p = plan(5, "1", fleet(2))
    assert p.client_gpu == (1,) * 5
    assert [g.index for g in p.gpus] == [1]


def test_missing_id_lists_the_existing_ones() -> None:
    with pytest.raises(UsageError) as err:
        plan(2, "0,3", fleet(2))
    assert str(err.value) == "--gpus 3: no such GPU; this machine has GPUs 0, 1"
    with pytest.raises(UsageError) as err:
        plan(2, "2,3", fleet(1))
    assert str(err.value) == "--gpus 2,3: no such GPUs; this machine has GPU 0"


def test_ids_without_driver_say_use_cpu() -> None:
    with pytest.raises(UsageError) as err:
        plan(2, "0", FakeNvml([FakeGpu()], driver=False))
    msg = str(err.value)
    assert msg.startswith("--gpus 0: no such GPU; no NVIDIA driver found")
    assert msg.endswith("; use --gpus cpu")
    assert "\n" not in msg


@pytest.mark.parametrize("spec", [None, "all"])
def test_no_driver_falls_back_to_cpu_with_a_note(spec: str | None) -> None:
    p = plan(3, spec, FakeNvml([FakeGpu()], driver=False))
    assert p.cpu_mode and p.gpus == ()
    assert p.client_gpu == (None, None, None)
    assert len(p.notes) == 1
    assert p.notes[0].startswith("no NVIDIA driver found (NVML: NVML Shared Library Not Found)")
    assert p.notes[0].endswith(": running on CPU")


def test_no_gpu_falls_back_to_cpu_with_a_note() -> None:
    p = plan(2, None, FakeNvml([]))
    assert p.cpu_mode and p.notes == ("NVML found no GPU: running on CPU",)


def test_cpu_makes_no_nvml_call() -> None:
    lib = fleet(2)
    p = plan(4, "cpu", lib)
    assert p.client_gpu == (None,) * 4 and p.gpus == ()
    assert p.notes == () and p.warnings == ()
    assert lib.calls == []


def test_auto_uses_every_gpu_round_robin() -> None:
    p = plan(5, None, fleet(3))
    assert p.client_gpu == (0, 1, 2, 0, 1)
    assert [g.index for g in p.gpus] == [0, 1, 2]


def test_fewer_clients_than_gpus() -> None:
    auto = plan(2, None, fleet(4))
    assert [g.index for g in auto.gpus] == [0, 1] and auto.notes == ()
    every = plan(2, "all", fleet(4))
    assert every.client_gpu == (0, 1)
    assert every.notes == ("GPUs 2, 3 get no client: 2 client(s) for 4 GPUs",)


def test_memory_warning_when_it_will_not_fit() -> None:
    lib = FakeNvml([FakeGpu(name="NVIDIA H100", memory_total=80 * GB, memory_used=74 * GB)])
    p = plan(8, "0", lib)
    assert p.warnings == (
        "GPU 0 (NVIDIA H100): 8 clients need about 10.4 GB but 6.0 GB is free; "
        "use fewer --clients, more --gpus, or a smaller --batch-size",
    )


def test_no_memory_warning_when_it_fits() -> None:
    assert plan(8, "0", fleet(1, free=11 * GB)).warnings == ()
    assert plan(8, "0,1", fleet(2, free=6 * GB)).warnings == ()  # 4 x 1.3 GB each


def test_server_memory_counts_on_the_first_gpu_only() -> None:
    lib = fleet(2, free=6 * GB)
    p = plan(8, "0,1", lib, server_gpu_bytes=2 * GB)
    assert len(p.warnings) == 1
    assert p.warnings[0].startswith(
        "GPU 0 (NVIDIA H100 80GB HBM3): 4 clients and the server need about 7.2 GB"
    )


def test_unknown_free_memory_is_noted_not_warned() -> None:
    lib = FakeNvml([FakeGpu(fail=frozenset({"nvmlDeviceGetMemoryInfo"}))])
    p = plan(2, None, lib)
    assert p.warnings == ()
    assert p.notes == ("GPU 0 (NVIDIA H100 80GB HBM3): NVML cannot read free memory; not checked",)


def test_inherited_cuda_visible_devices_is_noted() -> None:
    p = plan_placement(
        2, parse_gpus(None), Nvml(fleet(2)), parent_env={"CUDA_VISIBLE_DEVICES": "1"}
    )
    assert any(n.startswith("CUDA_VISIBLE_DEVICES=1 is set") for n in p.notes)


def test_zero_clients_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match="--clients 0"):
        plan(0, "cpu", fleet(1))


# --- client_env ------------------------------------------------------------------


def test_client_env() -> None:
    gpu = GpuInfo(3, "GPU-1234", "NVIDIA H100", 80 * GB, 80 * GB)
    assert client_env(gpu) == {
        "CUDA_DEVICE_ORDER": "PCI_BUS_ID",
        "CUDA_VISIBLE_DEVICES": "GPU-1234",
    }
    no_uuid = GpuInfo(3, "", "NVIDIA H100", None, None)
    assert client_env(no_uuid)["CUDA_VISIBLE_DEVICES"] == "3"
    assert client_env(None) == {"CUDA_VISIBLE_DEVICES": ""}


def test_placement_feeds_client_env() -> None:
    nvml = Nvml(fleet(2))
    p = plan_placement(4, parse_gpus("all"), nvml, parent_env={})
    by_id = {g.index: g for g in p.gpus}
    envs = [client_env(by_id[i] if i is not None else None) for i in p.client_gpu]
    assert [e["CUDA_VISIBLE_DEVICES"] for e in envs] == [
        "GPU-00000000-fake-uuid",
        "GPU-00000001-fake-uuid",
        "GPU-00000000-fake-uuid",
        "GPU-00000001-fake-uuid",
    ]


def test_clients_per_gpu_caps_how_many_clients_share_a_gpu() -> None:
    nvml = Nvml(fleet(2))

    fits = plan_placement(8, parse_gpus("0,1"), nvml, clients_per_gpu=4)
    assert fits.client_gpu.count(0) == 4 and fits.client_gpu.count(1) == 4
    with pytest.raises(UsageError, match="--clients 9 at --clients-per-gpu 4 needs 3 GPUs but 2"):
        plan_placement(9, parse_gpus("0,1"), nvml, clients_per_gpu=4)
