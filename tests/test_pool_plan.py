"""How many workers (K) serve N clients, and the plan of a pool run, against the fake NVML."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedcore.config import RunConfig
from fedcore.errors import UsageError
from launcher.planning.gpus import GpuInfo, Nvml
from launcher.planning.pool import choose_workers, idle_wait, pool_socket
from launcher.planning.prepare import LaunchOptions, make_plan
from tests.fake_nvml import GB, fleet


def gpus(count: int, free: int | None) -> tuple[GpuInfo, ...]:
    return tuple(GpuInfo(i, f"GPU-{i}", "H100", 80 * GB, free) for i in range(count))


def test_one_worker_per_client_while_they_fit() -> None:
    assert choose_workers(8, None, gpus(2, 80 * GB), 1_300_000_000, None).workers == 8
    assert choose_workers(3, None, (), 1, None, cores=2).workers == 3


def test_the_cpu_caps_workers_at_twice_its_cores_and_at_least_four() -> None:
    assert choose_workers(100, None, (), 1, None, cores=2).workers == 4
    assert choose_workers(100, None, (), 1, None, cores=16).workers == 32
    assert "capped by the CPU: 2 cores" in choose_workers(100, None, (), 1, None, cores=2).why


def test_free_gpu_memory_and_workers_per_gpu_cap_workers() -> None:
    by_memory = choose_workers(100, None, gpus(2, 8 * GB), 1_300_000_000, None)
    per_gpu = choose_workers(100, None, gpus(2, 80 * GB), 1_300_000_000, 3)

    assert by_memory.workers == 12 and "free GPU memory" in by_memory.why
    assert per_gpu.workers == 6 and "--workers-per-gpu 3" in per_gpu.why


@pytest.mark.parametrize(("requested", "message"), [
    (0, "--workers must be at least 1"),
    (9, "--workers 9 is more than --clients 8"),
])
def test_bad_workers_are_one_line_errors(requested: int, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        choose_workers(8, requested, (), 1, None)


def test_idle_polls_slow_down_with_many_clients() -> None:
    assert idle_wait(4) == 0.2 and idle_wait(50) == 2.0 and idle_wait(1000) == 3.0
    assert idle_wait(4, rung=True) == idle_wait(1000, rung=True) == 10.0


def test_a_long_run_folder_gets_its_socket_in_tmp(tmp_path: Path) -> None:
    assert pool_socket(tmp_path) == tmp_path / "pool.sock"
    assert str(pool_socket(tmp_path / ("x" * 120))).startswith("/tmp/fedlaunch-")


def test_the_dry_run_names_clients_workers_their_gpus_and_why(tmp_path: Path) -> None:
    cfg = RunConfig(clients=100, dataset="synthetic", fraction_train=0.1)
    opts = LaunchOptions(gpus="0,1", workers=8, dry_run=True)

    plan = make_plan(cfg, tmp_path / "run", opts, nvml=Nvml(fleet(2)))
    text = plan.describe()

    workers = [p for p in plan.processes if p.role == "worker"]
    assert [w.gpu for w in workers] == [0, 1] * 4
    assert [p.role for p in plan.processes].count("clienthost") == 1
    assert not any(p.role == "supernode" for p in plan.processes)
    assert "clients: 100 Flower SuperNodes" in text and "workers: 8 (--workers 8)" in text
    assert "worker-7   GPU 1" in text
    assert plan.client_gpus == dict.fromkeys(range(100))


def test_clients_on_two_gpus_still_get_one_pinned_process_each(tmp_path: Path) -> None:
    plan = make_plan(RunConfig(clients=8, dataset="synthetic"), tmp_path / "run",
                     LaunchOptions(gpus="0,1", dry_run=True), nvml=Nvml(fleet(2)))

    assert [p.gpu for p in plan.processes if p.role == "supernode"] == [0, 1] * 4
    assert plan.pool_clients == 0
