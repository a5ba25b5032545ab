"""Checks every input before anything starts, warms the data cache, and makes the Plan."""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Callable
from pathlib import Path

from fedcore.catalog import check_model, check_strategy
from fedcore.config import RunConfig
from fedcore.data import DATASETS, SYNTHETIC_TRAIN
from fedcore.errors import UsageError
from fedcore.partition import parse_partition, partition_indices
from fedcore.rundir import RunDir
from fedcore.task import load_split
from launcher.planning.gpus import Nvml
from launcher.planning.placement import Placement, parse_gpus, plan_placement
from launcher.planning.plan import Plan, federated_plan, local_plan, port_in_use

# The most training images each data set can have: more clients than this can never get data.
TRAIN_SIZES = {"cifar10": 50_000, "synthetic": SYNTHETIC_TRAIN}


def say(text: str) -> None:
    """Progress while the data is prepared; on stdout, so a bad input's one line is stderr's only."""
    print(f"fedlaunch: {text}", file=sys.stdout, flush=True)


# GPU memory one client process holds, by NVML, measured on an H100 (CUDA context + allocator).
FOOTPRINT_BYTES = {"cnn": 600_000_000, "mobilenetv2": 1_300_000_000, "resnet18": 1_600_000_000}


def client_footprint(model: str, batch_size: int) -> int:
    """Estimated GPU bytes per client: the measured base plus activations growing with the batch."""
    base = FOOTPRINT_BYTES.get(model, 1_300_000_000)
    return base + max(0, batch_size - 128) * 4_000_000


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
    clients_per_gpu: int | None = None,
    local_clients: int | None = None,
    remote: Callable[[RunConfig, Placement], Plan] | None = None,
) -> Plan:
    """Validate names and data, place clients on GPUs, write config.json; raise UsageError.

    `local_clients` places fewer clients than cfg.clients here (--serve, --join), and
    `remote` builds their plan from the config and the placement.
    """
    check_model(cfg.model)
    if cfg.dataset not in DATASETS:
        raise UsageError(f"unknown --dataset '{cfg.dataset}': use one of {', '.join(DATASETS)}")
    if not local:
        check_strategy(cfg.strategy)
        spec = parse_partition(cfg.partition)
        most = min(TRAIN_SIZES[cfg.dataset], cfg.limit_train or TRAIN_SIZES[cfg.dataset])
        if cfg.clients > most:
            raise UsageError(f"--clients {cfg.clients} is more than the {most} training samples; "
                             "use fewer clients or a larger --limit-train")
    if port is not None and not 1 <= port <= 65535:
        raise UsageError(f"--port must be between 1 and 65535, got {port}")
    if port is not None and port_in_use(port):
        raise UsageError(f"--port {port} is already in use on 127.0.0.1; choose another or leave "
                         "--port out to take a free one")
    request = parse_gpus(gpus)
    nvml = nvml or Nvml()
    here = 1 if local else cfg.clients if local_clients is None else local_clients
    placement = plan_placement(max(here, 1), request, nvml,
                               per_client_bytes=client_footprint(cfg.model, cfg.batch_size),
                               clients_per_gpu=clients_per_gpu)
    if here == 0:  # --serve with every client on other machines: the GPUs are the server's
        placement = dataclasses.replace(placement, client_gpu=())
    if dry_run:
        if remote is not None:
            return remote(cfg, placement)
        return local_plan(cfg, run_dir, placement) if local else federated_plan(
            cfg, run_dir, placement, max_restarts=max_restarts, superlink_port=port,
            executor=executor)
    split = load_split(cfg, log=say)
    if not local:
        partition_indices(split.train.labels, cfg.clients, spec, cfg.seed,
                          num_classes=len(split.classes))
    data_dir = str(Path(cfg.data_dir).expanduser().resolve()) if cfg.data_dir else ""
    cfg = cfg.replace(out_dir=str(run_dir), data_dir=data_dir)
    try:
        run = RunDir(run_dir).create()
        run.write_config({"mode": "local" if local else "federated", **cfg.to_json()})
    except OSError as exc:
        raise UsageError(f"cannot create the run folder {run_dir} ({exc.strerror}): "
                         "choose another --out") from None
    if local:
        plan = local_plan(cfg, run_dir, placement)
    elif remote is not None:
        plan = remote(cfg, placement)
    else:
        plan = federated_plan(cfg, run_dir, placement, max_restarts=max_restarts,
                              superlink_port=port, executor=executor)
    return dataclasses.replace(plan, resumed=resume)
