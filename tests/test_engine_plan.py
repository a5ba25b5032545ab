"""The simulation engine's plan: the default engine, its K workers, their GPUs, its one process."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fedcore.config import RunConfig
from fedcore.errors import UsageError
from launcher.arguments import build_parser
from launcher.cli import choose_engine
from launcher.planning.gpus import GpuInfo, Nvml
from launcher.planning.pool import choose_simulation_workers
from launcher.planning.prepare import LaunchOptions, make_plan
from tests.fake_nvml import GB, fleet


def engine_of(*argv: str) -> str:
    args = build_parser().parse_args(list(argv))
    return choose_engine(args, "local" if args.local else "join" if args.join else "federated")


def test_one_machine_runs_the_simulation_engine_unless_a_flag_needs_deployment() -> None:
    assert engine_of() == "simulation"
    assert engine_of("--engine", "deployment") == "deployment"
    assert engine_of("--serve", "0.0.0.0:9092") == "deployment"
    assert engine_of("--join", "10.0.0.1:9092") == "deployment"
    assert engine_of("--port", "9999") == "deployment"
    assert engine_of("--executor", "stock") == "deployment"
    with pytest.raises(UsageError, match="--port needs the Deployment Engine"):
        engine_of("--engine", "simulation", "--port", "9999")


def gpu(index: int, free_gb: float) -> GpuInfo:
    return GpuInfo(index, f"GPU-{index}", "H100", 80 * GB, int(free_gb * GB))


def test_default_k_one_per_core_on_the_cpu_two_per_gpu_within_free_memory() -> None:
    per = 600_000_000
    assert choose_simulation_workers(100, None, (), per, None, cores=2).workers == 2
    assert choose_simulation_workers(100, None, (), per, None, cores=16).workers == 16
    assert choose_simulation_workers(3, None, (), per, None, cores=16).workers == 3
    assert choose_simulation_workers(100, None, (gpu(0, 70), gpu(1, 70)), per, None).workers == 4
    assert choose_simulation_workers(100, None, (gpu(0, 70), gpu(1, 0.7)), per, None).workers == 3
    assert choose_simulation_workers(100, None, (gpu(0, 70),), per, 5).workers == 5
    assert choose_simulation_workers(1, None, (gpu(0, 70),), per, None).workers == 1
    assert choose_simulation_workers(100, 7, (), per, None, cores=2).workers == 7
    with pytest.raises(UsageError, match="more than --clients"):
        choose_simulation_workers(2, 3, (), per, None)


def test_the_plan_is_one_process_whose_workers_are_pinned_round_robin_by_uuid(tmp_path: Path) -> None:
    cfg = RunConfig(clients=100, dataset="synthetic", fraction_train=0.1)
    opts = LaunchOptions(gpus="0,1", workers=4, dry_run=True, engine="simulation")

    plan = make_plan(cfg, tmp_path / "run", opts, nvml=Nvml(fleet(2)))

    assert [p.role for p in plan.processes] == ["simulation"]
    spec = plan.processes[0]
    orders = json.loads(spec.argv[spec.argv.index("--workers-json") + 1])
    assert [o["gpu"] for o in orders] == ["0", "1", "0", "1"]
    uuids = [o["env"]["CUDA_VISIBLE_DEVICES"] for o in orders]
    assert uuids[0] == uuids[2] != uuids[1] and uuids[0].startswith("GPU-")
    assert all(o["env"]["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID" for o in orders)
    assert plan.pooled == tuple(range(100)) and plan.engine == "simulation"
    assert "engine: simulation" in plan.describe() and "superlink" not in plan.describe()
