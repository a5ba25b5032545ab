"""The worker pool's plan: how many GPU workers (K) serve the N clients, and their processes.

With K < N the clients are cheap endpoints forked by one client host (launcher.shim.clienthost)
and K warm workers (launcher.shim.worker), pinned round-robin over --gpus like clients, train
whichever client's task waits. With K == N each client keeps its own warm executor. The
simulation engine (docs/ENGINES.md) has its own default K and one process that forks its workers
(choose_simulation_workers, simulation_specs).
"""

from __future__ import annotations

import hashlib
import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from fedcore.errors import UsageError
from launcher.planning.gpus import GpuInfo
from launcher.planning.placement import Placement, client_env
from launcher.supervision.procs import ProcessSpec

CPU_WORKERS_PER_CORE = 2  # on the CPU, at most this many workers per core ...
CPU_WORKERS_FLOOR = 4  # ... but never fewer than this (small runs keep one executor per client)
SOCKET_PATH_MAX = 100  # AF_UNIX paths hold 108 bytes


@dataclass(frozen=True)
class WorkerChoice:
    """K and why."""

    workers: int
    why: str


def choose_workers(clients: int, requested: int | None, gpus: tuple[GpuInfo, ...],
                   per_worker_bytes: int, per_gpu: int | None,
                   cores: int | None = None, server_bytes: int = 0) -> WorkerChoice:
    """--workers, or one worker per client while that fits: in each GPU's free memory (the first
    GPU's less `server_bytes`, the ServerApp's) and --workers-per-gpu, or, on the CPU, in
    max(4, 2 x cores) processes."""
    if requested is not None:
        if requested < 1:
            raise UsageError(f"--workers must be at least 1, got {requested}")
        if requested > clients:
            raise UsageError(f"--workers {requested} is more than --clients {clients}; a worker "
                             "trains one client at a time, so use at most one per client")
        if per_gpu is not None and gpus and requested > per_gpu * len(gpus):
            raise UsageError(f"--workers {requested} at --workers-per-gpu {per_gpu} needs "
                             f"{-(-requested // per_gpu)} GPUs but {len(gpus)} are in use; add "
                             "--gpus or raise --workers-per-gpu")
        return WorkerChoice(requested, f"--workers {requested}")
    if not gpus:
        cores = cores or os.cpu_count() or 1
        cap = max(CPU_WORKERS_FLOOR, CPU_WORKERS_PER_CORE * cores)
        if clients <= cap:
            return WorkerChoice(clients, f"one per client ({clients} fit the CPU's cap of {cap})")
        return WorkerChoice(cap, f"capped by the CPU: {cores} cores, at most {cap} workers "
                            f"({CPU_WORKERS_PER_CORE} per core, at least {CPU_WORKERS_FLOOR})")
    fits = []
    for position, gpu in enumerate(gpus):
        free = None if gpu.memory_free is None else gpu.memory_free - (server_bytes if position == 0 else 0)
        room = clients if free is None else max(0, free) // max(1, per_worker_bytes)
        fits.append(min(room, per_gpu) if per_gpu is not None else room)
    total = max(len(gpus), sum(fits))  # at least one per GPU; the memory warning tells the rest
    if clients <= total:
        return WorkerChoice(clients, "one per client (they fit in the GPUs' free memory"
                            + (f" at --workers-per-gpu {per_gpu})" if per_gpu else ")"))
    limit = f"--workers-per-gpu {per_gpu}" if per_gpu is not None and all(
        f == per_gpu for f in fits) else f"free GPU memory at about {per_worker_bytes / 1e9:.1f} GB each"
    return WorkerChoice(total, f"capped at {total} by {limit}")


def pool_socket(run_dir: Path) -> Path:
    """The client host's Unix socket: in the run folder, or in /tmp when that path is too long."""
    path = run_dir / "pool.sock"
    if len(os.fsencode(path)) <= SOCKET_PATH_MAX:
        return path
    digest = hashlib.sha1(os.fsencode(run_dir)).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / f"fedlaunch-{os.getuid()}-{digest}.sock"


RUNG_IDLE_WAIT = 10.0  # rung by the doorbell, a node polls on its own only this often


def idle_wait(clients: int, rung: bool = False) -> float:
    """Seconds between an idle SuperNode's polls of the SuperLink.

    Rung (the client host rings a round's nodes once its messages are in the SuperLink, on the
    machine whose run folder the ServerApp writes to): RUNG_IDLE_WAIT. Polls cost the SuperLink,
    and with 100 clients a SuperLink on 2 cores answered replies half as fast amid them. Not rung
    (a join): 0.2 s, longer with many clients (about 25 polls a second in all), at most Flower's
    own 3 s; such a node also polls every 20 ms right after a task (supernode.PromptTime)."""
    if rung:
        return RUNG_IDLE_WAIT
    return round(min(3.0, max(0.2, clients / 25)), 2)


def pool_specs(run_dir: Path, partitions: range, num_partitions: int, superlink: str,
               placement: Placement, flwr_env: dict[str, str], threads: dict[str, str],
               max_restarts: int, supernode_args: tuple[str, ...] = ("--insecure",),
               node_config_extra: str = "", rung: bool = True) -> list[ProcessSpec]:
    """The client host (the SuperNodes of `partitions` out of `num_partitions`, with
    `supernode_args`: TLS, the run's SuperExec secret its claimers sign AcquireTask with, and a
    node key per client where `{partition}` stands for its id) and one process per worker,
    pinned. `node_config_extra` goes into every client's node config (a join's progress-dir).
    `rung`: the ServerApp writes this run folder, so the host's doorbell can ring (not a join)."""
    sock = str(pool_socket(run_dir))
    extra = (("--node-config-extra", node_config_extra) if node_config_extra else ()) + (
        ("--doorbell",) if rung else ())
    host = ProcessSpec(
        name="clients", role="clienthost",
        argv=(sys.executable, "-m", "launcher.shim.clienthost", "--superlink", superlink,
              "--run-dir", str(run_dir), "--socket", sock,
              "--partition-ids", f"{partitions.start}-{partitions.stop - 1}",
              "--num-partitions", str(num_partitions), "--max-restarts", str(max_restarts),
              "--idle-wait", str(idle_wait(len(partitions), rung)), *extra, "--",
              *supernode_args),
        env={**flwr_env, "FLWR_HOME": str(run_dir / "flwr" / "clients"),
             "CUDA_VISIBLE_DEVICES": ""},
        clients=tuple(partitions), restartable=True,
    )
    specs = [host]
    for k, gpu_id in enumerate(placement.client_gpu):
        gpu = next((g for g in placement.gpus if g.index == gpu_id), None)
        name = f"worker-{k}"
        specs.append(ProcessSpec(
            name=name, role="worker",
            argv=(sys.executable, "-m", "launcher.shim.worker", "--socket", sock, "--name", name),
            env={**flwr_env, "FLWR_HOME": str(run_dir / "flwr" / name), **client_env(gpu),
                 **threads, "FEDLAUNCH_WORKER_GPU": "cpu" if gpu_id is None else str(gpu_id)},
            gpu=gpu_id, restartable=True,
        ))
    return specs


SIM_WORKERS_PER_CORE = 1  # the simulation engine on the CPU: one worker per core (docs/ENGINES.md)
SIM_WORKERS_PER_GPU = 2  # ... and on a GPU: two, so one loads its task while the other trains


def choose_simulation_workers(clients: int, requested: int | None, gpus: tuple[GpuInfo, ...],
                              per_worker_bytes: int, per_gpu: int | None,
                              cores: int | None = None, server_bytes: int = 0) -> WorkerChoice:
    """K for the simulation engine: --workers, else one per core on the CPU (2 workers on 2 cores
    beat 4: each holds the data set and competes for the cores; docs/PERFORMANCE.md), else
    SIM_WORKERS_PER_GPU per GPU (or --workers-per-gpu) while they fit in its free memory; never
    more than the clients."""
    if requested is not None:
        return choose_workers(clients, requested, gpus, per_worker_bytes, per_gpu, cores,
                              server_bytes=server_bytes)
    if not gpus:
        cores = cores or os.cpu_count() or 1
        k = min(clients, max(1, SIM_WORKERS_PER_CORE * cores))
        return WorkerChoice(k, f"one per core ({cores} cores)" if k < clients else
                            f"one per client ({clients} clients, {cores} cores)")
    each = per_gpu if per_gpu is not None else SIM_WORKERS_PER_GPU
    # the first GPU also holds the ServerApp (the simulation process): its share is not free
    fits = [each if gpu.memory_free is None else
            max(1, min(each, (gpu.memory_free - (server_bytes if position == 0 else 0))
                       // max(1, per_worker_bytes)))
            for position, gpu in enumerate(gpus)]
    k = min(clients, sum(fits))
    return WorkerChoice(k, f"{each} per GPU" + (" (fewer where free memory is short)"
                                                 if sum(fits) < each * len(gpus) else "")
                        + (f", capped by {clients} clients" if k < sum(fits) else ""))


def simulation_specs(run_dir: Path, clients: int, placement: Placement, flwr_env: dict[str, str],
                     threads: dict[str, str], max_restarts: int) -> list[ProcessSpec]:
    """The simulation engine's one process (launcher.shim.simhost) on the server's GPU; its
    workers, forked inside it, are pinned round-robin over the placement's GPUs like pool
    workers (CUDA_VISIBLE_DEVICES by UUID)."""
    orders = []
    for k, gpu_id in enumerate(placement.client_gpu):
        gpu = next((g for g in placement.gpus if g.index == gpu_id), None)
        orders.append({"name": f"worker-{k}", "gpu": "cpu" if gpu_id is None else str(gpu_id),
                       "env": {**client_env(gpu), **threads,
                               "FEDLAUNCH_WORKER_GPU": "cpu" if gpu_id is None else str(gpu_id)}})
    server_gpu = placement.gpus[0] if placement.gpus else None
    import json

    return [ProcessSpec(
        name="simulation", role="simulation",
        argv=(sys.executable, "-m", "launcher.shim.simhost", "--run-dir", str(run_dir),
              "--socket", str(pool_socket(run_dir)), "--max-restarts", str(max_restarts),
              "--workers-json", json.dumps(orders, separators=(",", ":"))),
        env={**flwr_env, "FLWR_HOME": str(run_dir / "flwr" / "simulation"), **client_env(server_gpu)},
        clients=tuple(range(clients)),
    )]
