"""Checks every input before anything starts, warms the data cache, and makes the Plan."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

from fedcore.config import RunConfig
from fedcore.errors import UsageError
from fedcore.models import check_model
from fedcore.partition import parse_partition, partition_indices
from fedcore.rundir import RunDir
from fedcore.strategies import check_strategy
from fedcore.task import load_split
from launcher.gpus import Nvml
from launcher.placement import parse_gpus, plan_placement
from launcher.plan import Plan, federated_plan, local_plan, port_in_use


def say(text: str) -> None:
    print(f"fedlaunch: {text}", file=sys.stderr, flush=True)


def make_plan(
    cfg: RunConfig,
    run_dir: Path,
    *,
    local: bool,
    gpus: str | None,
    max_restarts: int = 3,
    dry_run: bool = False,
    nvml: Nvml | None = None,
    port: int | None = None,
    executor: str = "warm",
    resume: bool = False,
) -> Plan:
    """Validate names and data, place clients on GPUs, write config.json; raise UsageError."""
    check_model(cfg.model)
    if not local:
        check_strategy(cfg.strategy)
        spec = parse_partition(cfg.partition)
    if port is not None and not 1 <= port <= 65535:
        raise UsageError(f"--port must be between 1 and 65535, got {port}")
    if port is not None and port_in_use(port):
        raise UsageError(f"--port {port} is already in use on 127.0.0.1; choose another or leave "
                         "--port out to take a free one")
    request = parse_gpus(gpus)
    nvml = nvml or Nvml()
    placement = plan_placement(1 if local else cfg.clients, request, nvml)
    if dry_run:
        return local_plan(cfg, run_dir, placement) if local else federated_plan(
            cfg, run_dir, placement, max_restarts=max_restarts, superlink_port=port,
            executor=executor)
    split = load_split(cfg, log=say)
    if not local:
        partition_indices(split.train.labels, cfg.clients, spec, cfg.seed,
                          num_classes=len(split.classes))
    data_dir = str(Path(cfg.data_dir).expanduser().resolve()) if cfg.data_dir else ""
    cfg = cfg.replace(out_dir=str(run_dir), data_dir=data_dir)
    run = RunDir(run_dir).create()
    run.write_config({"mode": "local" if local else "federated", **cfg.to_json()})
    if local:
        plan = local_plan(cfg, run_dir, placement)
    else:
        plan = federated_plan(cfg, run_dir, placement, max_restarts=max_restarts,
                              superlink_port=port, executor=executor)
    return dataclasses.replace(plan, resumed=resume)
