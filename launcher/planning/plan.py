"""The plan of a run: its folder, ports, GPU placement and every process's command line."""

from __future__ import annotations

import dataclasses
import os
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

from fedcore.config import RunConfig
from fedcore.rundir import PROGRESS
from launcher.kinds import Engine, RunMode
from launcher.network.ports import free_port
from launcher.network.runtime_secret import FLAG as SECRET_FLAG
from launcher.network.runtime_secret import secret_path
from launcher.planning.bundle import toml_table
from launcher.planning.gpus import GpuInfo
from launcher.planning.placement import Placement, client_env
from launcher.supervision.procs import ProcessSpec

FLWR_ENV = {"FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1"}
FEDERATION = "fedlaunch"


@dataclass(frozen=True)
class Plan:
    """Everything decided before the first process starts; `--dry-run` prints it."""

    mode: RunMode
    cfg: RunConfig
    run_dir: Path
    placement: Placement
    processes: tuple[ProcessSpec, ...]
    superlink_address: str = ""
    max_restarts: int = 3
    resumed: bool = False
    root_certificates: str = ""  # the CA `flwr run` and local clients trust; "" = no TLS
    node_keys: tuple[str, ...] = ()  # public keys to register before any SuperNode starts
    workers_why: str = ""  # with a worker pool: why K workers (for --dry-run)
    engine: Engine = "deployment"

    @property
    def pooled(self) -> tuple[int, ...]:
        """The partition ids of the clients served by a worker pool: on its client host, or the
        simulation engine's virtual nodes (none without a pool)."""
        return tuple(c for spec in self.processes if spec.role in ("clienthost", "simulation")
                     for c in spec.clients)

    @property
    def pool_clients(self) -> int:
        return len(self.pooled)

    @property
    def worker_gpus(self) -> tuple[int | None, ...]:
        """The physical GPU (None: the CPU) of each pool worker, in order (none without a pool)."""
        return tuple(spec.gpu for spec in self.processes if spec.role == "worker")

    @property
    def client_gpus(self) -> dict[int, int | None]:
        """The physical GPU (None: the CPU) of each client started here, by partition id.

        A pooled client trains on its workers' GPU; with workers on several GPUs it is the GPU of
        whichever worker takes each task (see `unplaced`), None here until a progress record says.
        """
        if self.pooled:
            gpus = set(self.worker_gpus)
            return dict.fromkeys(self.pooled, gpus.pop() if len(gpus) == 1 else None)
        return {spec.client: spec.gpu for spec in self.processes
                if spec.role in ("supernode", "local") and spec.client is not None}

    @property
    def unplaced(self) -> tuple[int, ...]:
        """Pooled clients whose GPU is known only per task: their workers use several GPUs."""
        return self.pooled if len(set(self.worker_gpus)) > 1 else ()

    def warn(self, warning: str) -> Plan:
        """This plan with one more warning (shown with the placement's at start-up)."""
        placement = dataclasses.replace(self.placement,
                                        warnings=(*self.placement.warnings, warning))
        return dataclasses.replace(self, placement=placement)

    def describe(self) -> str:
        """A human-readable plan: each process, its GPU, its command line."""
        where = (
            ", ".join(f"GPU {g.index} ({g.name})" for g in self.placement.gpus)
            if self.placement.gpus else "CPU"
        )
        lines = [
            f"run folder: {self.run_dir}",
            f"mode: join; {self.pool_clients or len(self.processes)} clients for the "
            "SuperLink's run (its settings "
            "decide model, data and rounds)" if self.mode == "join" else
            f"mode: {self.mode}; model {self.cfg.model}; data {self.cfg.dataset}; "
            + (f"{self.cfg.clients} clients, {self.cfg.rounds} rounds x {self.cfg.local_epochs} "
               f"local epochs, partition {self.cfg.partition}, strategy {self.cfg.strategy}"
               if self.mode == "federated" else f"{self.cfg.epochs} epochs"),
            f"devices: {where}",
        ]
        if self.mode != "local":
            lines.append(f"engine: {self.engine}" + (
                " (Flower's simulation loop in one process: virtual nodes, no SuperLink)"
                if self.engine == "simulation" else " (a Flower SuperLink and real SuperNodes)"))
        if self.superlink_address:
            tls = f" (TLS, trusting {self.root_certificates})" if self.root_certificates else ""
            lines.append(f"superlink: {self.superlink_address}{tls}")
        if self.engine == "simulation":
            ids = self.pooled
            lines.append(f"clients: {len(ids)} virtual Flower nodes (partition-id {ids[0]}-"
                         f"{ids[-1]}) in the simulation process")
            lines.append(f"workers: {len(self.placement.client_gpu)} ({self.workers_why}), forked "
                         "by the simulation process; each trains any sampled client")
            lines.extend(f"  worker-{k:<3}  {'cpu' if g is None else f'GPU {g}'}"
                         for k, g in enumerate(self.placement.client_gpu))
        elif self.pool_clients:
            workers = [p for p in self.processes if p.role == "worker"]
            ids = self.pooled
            lines.append(f"clients: {len(ids)} Flower SuperNodes (partition-id "
                         f"{ids[0]}-{ids[-1]}) forked by one client host, no GPU")
            lines.append(f"workers: {len(workers)} ({self.workers_why}), each trains any "
                         "client's waiting task")
        for spec in self.processes:
            gpu = "cpu" if spec.gpu is None else f"GPU {spec.gpu}"
            lines.append(f"  {spec.name:<10} {gpu:<6} {shlex.join(spec.argv)}")
        lines.extend(f"note: {n}" for n in self.placement.notes)
        lines.extend(f"warning: {w}" for w in self.placement.warnings)
        return "\n".join(lines)


def bin_path(name: str) -> str:
    """A console script of this Python's environment (flower-superlink, flwr, ...)."""
    candidate = Path(sys.executable).parent / name
    return str(candidate) if candidate.exists() else name


def cpu_threads(processes: int) -> dict[str, str]:
    """Share the CPU cores among `processes` trainers instead of each taking them all."""
    count = str(max(1, (os.cpu_count() or 1) // max(1, processes)))
    return {"OMP_NUM_THREADS": count, "MKL_NUM_THREADS": count}


def flwr_home(run_dir: Path, name: str) -> str:
    return str(run_dir / "flwr" / name)


def node_id_file(run_dir: Path, client: int) -> Path:
    """Where client `client`'s SuperNode writes the node id the SuperLink gave it."""
    return run_dir / PROGRESS / f"client-{client}.node"


def client_spec(
    run_dir: Path, partition_id: int, node_config: str, superlink: str, tls: tuple[str, ...],
    gpu_id: int | None, placement: Placement, threads: dict[str, str], executor: str,
    extra: tuple[str, ...] = (),
) -> ProcessSpec:
    """One client: the warm executor (with its SuperNode under it) or a stock SuperNode, pinned
    to its GPU, on a free runtime port, restartable."""
    runtime_port = str(free_port("127.0.0.1"))
    if executor == "warm":
        argv: tuple[str, ...] = (
            sys.executable, "-m", "launcher.shim.executor", "--superlink", superlink,
            "--node-config", node_config, "--runtime-port", runtime_port, *tls,
            SECRET_FLAG, str(secret_path(run_dir)), *extra)
    else:
        argv = (bin_path("flower-supernode"), *tls, "--superlink", superlink,
                "--node-config", node_config, "--host", "127.0.0.1", "--port", runtime_port,
                *extra)
    gpu = next((g for g in placement.gpus if g.index == gpu_id), None) if gpu_id is not None else None
    name = f"client-{partition_id}"
    return ProcessSpec(
        name=name, role="supernode", argv=argv,
        env={**FLWR_ENV, "FLWR_HOME": flwr_home(run_dir, name), **client_env(gpu), **threads,
             "FEDLAUNCH_NODE_ID_FILE": str(node_id_file(run_dir, partition_id))},
        gpu=gpu_id, client=partition_id, restartable=True,
    )


def superlink_spec(run_dir: Path, port: int, tls: tuple[str, ...], gpu: GpuInfo | None) -> ProcessSpec:
    """The SuperLink, on 127.0.0.1 only (`--serve` puts a Fleet-only gateway in front of it), in
    process isolation: its runtime API hands the ServerApp's task only to AcquireTask calls signed
    with the run's SuperExec secret."""
    return ProcessSpec(
        name="superlink", role="superlink",
        argv=(bin_path("flower-superlink"), *tls, "--host", "127.0.0.1", "--port", str(port),
              "--isolation", "process", SECRET_FLAG, str(secret_path(run_dir)),
              "--disable-runtime-dependency-installation"),
        env={**FLWR_ENV, "FLWR_HOME": flwr_home(run_dir, "superlink"), **client_env(gpu)},
        gpu=gpu.index if gpu else None,
    )


def serverapp_spec(run_dir: Path, port: int, ca: str | None, gpu: GpuInfo | None) -> ProcessSpec:
    """The warm ServerApp (launcher.shim.serverhost), started with the SuperLink on the server's
    GPU: it imports torch while the SuperLink starts, then claims the run's ServerApp task with
    the run's SuperExec secret and runs it with Flower's runtime, in its own process."""
    tls = ("--root-certificates", ca) if ca else ("--insecure",)
    return ProcessSpec(
        name="serverapp", role="serverapp",
        argv=(sys.executable, "-m", "launcher.shim.serverhost", *tls, "--runtime-api-address",
              f"127.0.0.1:{port}", SECRET_FLAG, str(secret_path(run_dir))),
        # the ServerApp writes here, never where a submitted run config says (fedcore.server_app)
        env={**FLWR_ENV, "FLWR_HOME": flwr_home(run_dir, "superlink"), **client_env(gpu),
             "FEDLAUNCH_OUT_DIR": str(run_dir)},
        gpu=gpu.index if gpu else None,
    )


def submit_spec(run_dir: Path) -> ProcessSpec:
    """`flwr run` of the run's app, against the SuperLink on loopback (its FLWR_HOME says where)."""
    return ProcessSpec(
        name="server", role="submit",
        argv=(bin_path("flwr"), "run", str(run_dir / "app"), FEDERATION,
              "--run-config", str(run_dir / "run_config.toml"), "--stream"),
        env={**FLWR_ENV, "FLWR_HOME": flwr_home(run_dir, "submit")},
    )


def federated_plan(
    cfg: RunConfig,
    run_dir: Path,
    placement: Placement,
    *,
    superlink_port: int | None = None,
    max_restarts: int = 3,
    executor: str = "warm",
    workers: int | None = None,
    workers_why: str = "",
) -> Plan:
    """SuperLink, one SuperNode per client pinned to its GPU, and the `flwr run` submitter;
    with `workers` < clients, the clients on one client host and that many pinned workers."""
    host = "127.0.0.1"
    port = superlink_port or free_port(host)
    pool = workers is not None and workers < cfg.clients and executor == "warm"
    threads = cpu_threads(workers if pool and workers else cfg.clients)
    address = f"{host}:{port}"
    server_gpu = placement.gpus[0] if placement.gpus else None
    specs = [superlink_spec(run_dir, port, ("--insecure",), server_gpu),
             serverapp_spec(run_dir, port, None, server_gpu)]
    if pool:
        from launcher.planning.pool import pool_specs

        specs.extend(pool_specs(run_dir, range(cfg.clients), cfg.clients, address, placement,
                                FLWR_ENV, threads, max_restarts,
                                ("--insecure", SECRET_FLAG, str(secret_path(run_dir)))))
    else:
        for i, gpu_id in enumerate(placement.client_gpu):
            node_config = f"partition-id={i} num-partitions={cfg.clients}"
            specs.append(client_spec(run_dir, i, node_config, address, ("--insecure",), gpu_id,
                                     placement, threads, executor))
    specs.append(submit_spec(run_dir))
    return Plan("federated", cfg, run_dir, placement, tuple(specs), address, max_restarts,
                workers_why=workers_why if pool else "")


def simulation_plan(cfg: RunConfig, run_dir: Path, placement: Placement, *, workers: int,
                    workers_why: str, max_restarts: int = 3) -> Plan:
    """The simulation engine: one process holding the ServerApp and the virtual nodes, and the
    K workers it forks, pinned by `placement` (one slot per worker)."""
    from launcher.planning.pool import simulation_specs

    specs = simulation_specs(run_dir, cfg.clients, placement, FLWR_ENV, cpu_threads(workers),
                             max_restarts)
    return Plan("federated", cfg, run_dir, placement, tuple(specs), "", max_restarts,
                workers_why=workers_why, engine="simulation")


def local_plan(cfg: RunConfig, run_dir: Path, placement: Placement) -> Plan:
    """One trainer process on the first GPU (or the CPU)."""
    gpu = placement.gpus[0] if placement.gpus else None
    spec = ProcessSpec(
        name="local",
        role="local",
        argv=(sys.executable, "-m", "fedcore.local", str(run_dir)),
        env={**client_env(gpu), "PYTHONUNBUFFERED": "1"},
        gpu=gpu.index if gpu else None,
        client=0,
    )
    return Plan("local", cfg, run_dir, placement, (spec,), "", 0)


def run_config_toml(cfg: RunConfig) -> str:
    return toml_table(cfg.to_run_config())
