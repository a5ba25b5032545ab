"""Checks every input before anything starts, claims the run folder, and makes the Plan."""

from __future__ import annotations

import dataclasses
import os
import shutil
import stat
import sys
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from fedcore.catalog import check_model, check_strategy
from fedcore.config import RunConfig
from fedcore.errors import UsageError
from fedcore.partition_spec import parse_partition
from fedcore.rundir import CONFIG, METRICS, PROGRESS, RunDir, drop_torn_tail, refuse_symlinks
from launcher.kinds import Engine, Executor, RunMode
from launcher.network.ports import port_in_use
from launcher.planning.footprint import client_footprint, server_footprint
from launcher.planning.gpus import Nvml
from launcher.planning.placement import Placement, parse_gpus, plan_placement
from launcher.planning.plan import Plan, federated_plan, local_plan, simulation_plan
from launcher.planning.pool import WorkerChoice, choose_simulation_workers, choose_workers

# The most training images each data set can have: more clients than this can never get data
# (fedcore.synthetic.SYNTHETIC_TRAIN; numpy is imported only when the data is checked).
TRAIN_SIZES = {"cifar10": 50_000, "synthetic": 10_000}
DATASETS = tuple(TRAIN_SIZES)
# Built afresh at every launch: the Flower app, Flower's homes, the clients' progress files.
REBUILT = ("app", "flwr", PROGRESS)

RemotePlan = Callable[[RunConfig, Path, Placement, "WorkerChoice | None"], Plan]


@dataclass(frozen=True)
class LaunchOptions:
    """How to launch, beyond the run's settings (RunConfig): from flags, a profile or --resume."""

    mode: RunMode = "federated"
    gpus: str | None = None
    max_restarts: int = 3
    executor: Executor = "warm"
    port: int | None = None
    clients_per_gpu: int | None = None  # per worker process (--workers-per-gpu)
    workers: int | None = None  # --workers: GPU worker processes (default: see planning.pool)
    dry_run: bool = False
    resume: bool = False
    numbered: bool = False  # the run folder is runs/<timestamp>: take the next free name
    check_data: bool = True  # a join without --dataset: the server's run names the data
    engine: Engine = "deployment"  # the CLI's default is resolved in launcher.cli.choose_engine


def say(text: str) -> None:
    """Progress while the data is prepared; on stdout, so a bad input's one line is stderr's only."""
    print(f"fedlaunch: {text}", file=sys.stdout, flush=True)


def default_run_dir() -> Path:
    """runs/<timestamp> under the working folder (claimed, with a suffix if taken, at launch)."""
    return (Path("runs") / datetime.now().strftime("%Y%m%d-%H%M%S")).resolve()


def utf8_path(path: Path | str, what: str) -> None:
    """Paths end up in TOML and JSON files, which hold only UTF-8: refuse any other name."""
    try:
        os.fsencode(path).decode("utf-8")
    except UnicodeDecodeError:
        raise UsageError(f"{what} {os.fsencode(path)!r} is not valid UTF-8; "
                         "rename it or choose another") from None


def trusted_path(path: Path, flag: str) -> None:
    """Certificates and node keys decide who may join a run: refuse a folder or file that another
    user owns, or that others may write (they could swap the CA or a key)."""
    try:
        st = path.stat()
    except OSError:
        return  # missing: the check that needs it names it
    if st.st_uid != os.geteuid():
        raise UsageError(f"{flag} {path} belongs to another user (uid {st.st_uid}); use a copy "
                         "of your own")
    sticky = stat.S_ISDIR(st.st_mode) and st.st_mode & stat.S_ISVTX  # /tmp: others cannot swap files
    if st.st_mode & 0o022 and not sticky:
        raise UsageError(f"{flag} {path} is writable by others (mode {st.st_mode & 0o777:o}); "
                         f"run chmod go-w {path}")


def trusted_folder(folder: Path, flag: str) -> None:
    """`folder` and everything directly in it (and in its nodes/ folder of node keys)."""
    trusted_path(folder, flag)
    for inner in (folder, folder / "nodes"):
        if inner.is_dir() and not inner.is_symlink():
            trusted_path(inner, flag)
            for child in sorted(inner.iterdir()):
                if child.is_file():
                    trusted_path(child, flag)


def make_plan(
    cfg: RunConfig,
    run_dir: Path,
    opts: LaunchOptions,
    *,
    nvml: Nvml | None = None,
    local_clients: int | None = None,
    remote: RemotePlan | None = None,
) -> Plan:
    """Validate names and data, place clients on GPUs, claim the run folder and write its
    config.json; raise UsageError (leaving nothing behind).

    `local_clients` places fewer clients than cfg.clients here (--serve, --join), and
    `remote` builds their plan from the config, the run folder and the placement.
    """
    local, join = opts.mode == "local", opts.mode == "join"
    utf8_path(run_dir, "the run folder")
    if cfg.data_dir:
        utf8_path(cfg.data_dir, "--data-dir")
    check_model(cfg.model)
    if cfg.dataset not in DATASETS:
        raise UsageError(f"unknown --dataset '{cfg.dataset}': use one of {', '.join(DATASETS)}")
    if not local and not join:
        parse_partition(cfg.partition)
        check_strategy(cfg.strategy)
        most = min(TRAIN_SIZES[cfg.dataset], cfg.limit_train or TRAIN_SIZES[cfg.dataset])
        if cfg.clients > most:
            raise UsageError(f"--clients {cfg.clients} is more than the {most} training samples; "
                             "use fewer clients or a larger --limit-train")
    port = opts.port
    if port is not None and not 1 <= port <= 65535:
        raise UsageError(f"--port must be between 1 and 65535, got {port}")
    if port is not None and port_in_use(port):
        raise UsageError(f"--port {port} is already in use on 127.0.0.1; choose another or leave "
                         "--port out to take a free one")
    request = parse_gpus(opts.gpus)
    nvml = nvml or Nvml()
    here = 1 if local else cfg.clients if local_clients is None else local_clients
    choice = None
    per_client = client_footprint(cfg)  # per model, batch and image size (planning.footprint)
    server = 0 if local or join else server_footprint(cfg)  # the ServerApp, on the first GPU
    simulation = opts.engine == "simulation" and not local and remote is None
    if simulation:
        if opts.executor != "warm":
            raise UsageError("--executor stock goes with --engine deployment (the simulation "
                             "engine's workers always stay warm)")
        seen = plan_placement(here, request, nvml)
        choice = choose_simulation_workers(here, opts.workers, seen.gpus, per_client,
                                           opts.clients_per_gpu, server_bytes=server)
        here = choice.workers
    elif not local and here > 0 and opts.executor == "warm":  # this machine's clients: a pool?
        seen = plan_placement(here, request, nvml)  # which GPUs, how much is free
        choice = choose_workers(here, opts.workers, seen.gpus, per_client, opts.clients_per_gpu,
                                server_bytes=server)
        here = choice.workers
    elif opts.workers is not None:
        raise UsageError("--workers goes with clients on this machine and the warm executor "
                         "(not --local, --executor stock, or --serve without --partition-ids)")
    placement = plan_placement(max(here, 1), request, nvml,
                               per_client_bytes=per_client, server_gpu_bytes=server,
                               clients_per_gpu=opts.clients_per_gpu)
    if here == 0:  # --serve with every client on other machines: the GPUs are the server's
        placement = dataclasses.replace(placement, client_gpu=())

    def build(cfg: RunConfig, run_dir: Path) -> Plan:
        if remote is not None:
            return remote(cfg, run_dir, placement, choice)
        if local:
            return local_plan(cfg, run_dir, placement)
        if simulation and choice is not None:
            return simulation_plan(cfg, run_dir, placement, workers=choice.workers,
                                   workers_why=choice.why, max_restarts=opts.max_restarts)
        return federated_plan(cfg, run_dir, placement, max_restarts=opts.max_restarts,
                              superlink_port=port, executor=opts.executor,
                              workers=choice.workers if choice else None,
                              workers_why=choice.why if choice else "")

    if opts.dry_run:
        return build(cfg, run_dir)
    if opts.check_data:
        check_data(cfg, opts.mode)
    data_dir = str(Path(cfg.data_dir).expanduser().resolve()) if cfg.data_dir else ""
    existed = run_dir.is_dir()  # an empty --out the user made: keep it if the launch fails
    if opts.resume:
        prepare_resume(run_dir)
        claimed = run_dir
    else:
        claimed = claim_run_dir(run_dir, opts.numbered)
    try:
        cfg = cfg.replace(out_dir=str(claimed), data_dir=data_dir, progress_dir="")
        RunDir(claimed).write_config({"mode": opts.mode, **cfg.to_json()})
        plan = build(cfg, claimed)
    except BaseException:
        if not opts.resume:
            forget(claimed, keep_folder=existed and claimed == run_dir)
        raise
    return dataclasses.replace(plan, resumed=opts.resume)


def check_data(cfg: RunConfig, mode: RunMode) -> None:
    """The data is there and readable, and the partition gives every client some: checked on
    the training labels alone (read from their cache; the images stay for the clients)."""
    from fedcore.partition import partition_indices
    from fedcore.task import train_labels

    labels = train_labels(cfg, log=say)
    if mode == "federated":
        partition_indices(labels, cfg.clients, parse_partition(cfg.partition), cfg.seed,
                          num_classes=10)


def claim_run_dir(path: Path, numbered: bool) -> Path:
    """Create the run folder and its config.json exclusively, so that two launches never share
    one: a numbered folder (runs/<timestamp>) moves on to the next free name, a chosen --out
    that another launch took in the meantime is a UsageError."""
    first = path
    for suffix in range(1, 10_000):
        try:
            path.mkdir(parents=True, exist_ok=not numbered)
            fd = os.open(path / CONFIG, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
        except FileExistsError:
            if numbered:
                path = first.with_name(f"{first.name}.{suffix}")
                continue
            raise UsageError(f"--out {path} already holds a fedlaunch run; choose another --out") from None
        except OSError as exc:
            raise UsageError(f"cannot create the run folder {path} ({exc.strerror}): "
                             "choose another --out") from None
        os.close(fd)
        return path
    raise UsageError(f"no free run folder name beside {first}; give --out")


def forget(run_dir: Path, keep_folder: bool) -> None:
    """Undo a claim whose launch failed before anything ran: nothing is left behind."""
    if keep_folder:
        for child in run_dir.iterdir():
            shutil.rmtree(child) if child.is_dir() and not child.is_symlink() else child.unlink()
    else:
        shutil.rmtree(run_dir, ignore_errors=True)


def prepare_resume(run_dir: Path) -> None:
    """A run folder to continue may come from someone else: no symlinks in it, and what fedlaunch
    builds at each launch (the Flower app, Flower's homes, progress files) is made afresh; a
    torn last line of metrics.jsonl is dropped, so the records appended next stay whole."""
    refuse_symlinks(run_dir, f"--resume {run_dir}")
    for name in REBUILT:
        target = run_dir / name
        try:
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()
        except OSError as exc:
            raise UsageError(f"--resume {run_dir}: cannot clear {name}/ ({exc.strerror})") from None
    try:
        dropped = drop_torn_tail(run_dir / METRICS)
    except OSError as exc:
        raise UsageError(f"--resume {run_dir}: cannot repair {METRICS} ({exc.strerror})") from None
    if dropped:
        say(f"--resume: dropped the torn last line of {METRICS} ({dropped} bytes, written when "
            "the run stopped mid-write)")


def resume_data_dir(saved: str, given: str | None) -> str:
    """The data folder of a resumed run: the one given now, else this machine's default (a
    saved absolute path from another machine, or from someone else's config.json, is not
    read or written without being asked for)."""
    if given:
        return given
    if saved:
        from fedcore.data import default_data_dir

        say(f"--resume: not reusing the saved data folder {saved}; using {default_data_dir()} "
            "(give --data-dir to choose)")
    return ""
