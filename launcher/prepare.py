"""Checks every input before anything starts, warms the data cache, and makes the Plan."""

from __future__ import annotations

import sys
from pathlib import Path

from fedcore.config import RunConfig
from fedcore.models import check_model
from fedcore.partition import parse_partition, partition_indices
from fedcore.rundir import RunDir
from fedcore.strategies import check_strategy
from fedcore.task import load_split
from launcher.gpus import Nvml
from launcher.placement import parse_gpus, plan_placement
from launcher.plan import Plan, federated_plan, local_plan


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
) -> Plan:
    """Validate names and data, place clients on GPUs, write config.json; raise UsageError."""
    check_model(cfg.model)
    if not local:
        check_strategy(cfg.strategy)
        spec = parse_partition(cfg.partition)
    request = parse_gpus(gpus)
    nvml = nvml or Nvml()
    placement = plan_placement(1 if local else cfg.clients, request, nvml)
    if dry_run:
        return local_plan(cfg, run_dir, placement) if local else federated_plan(
            cfg, run_dir, placement, max_restarts=max_restarts)
    split = load_split(cfg, log=say)
    if not local:
        partition_indices(split.train.labels, cfg.clients, spec, cfg.seed,
                          num_classes=len(split.classes))
    data_dir = str(Path(cfg.data_dir).expanduser().resolve()) if cfg.data_dir else ""
    cfg = cfg.replace(out_dir=str(run_dir), data_dir=data_dir)
    run = RunDir(run_dir).create()
    run.write_config({"mode": "local" if local else "federated", **cfg.to_json()})
    if local:
        return local_plan(cfg, run_dir, placement)
    return federated_plan(cfg, run_dir, placement, max_restarts=max_restarts)
