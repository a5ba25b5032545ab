"""`fedlaunch sweep`: parse the grid, check every cell before anything starts, run the queue."""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
from datetime import datetime
from pathlib import Path
from typing import Any, TextIO

from fedcore.config import RunConfig
from fedcore.errors import UsageError
from launcher.planning.footprint import client_footprint, server_footprint
from launcher.planning.gpus import Nvml
from launcher.planning.prepare import utf8_path
from launcher.sweep.grid import NOT_AXES, build_grid, parse_seeds, split_axis
from launcher.sweep.packing import GpuSlots
from launcher.sweep.queue import CellEvent, SweepQueue
from launcher.sweep.state import SWEEP_JSON, CellState, SweepState, load_sweep

EXAMPLES = """\
examples:
  fedlaunch sweep --profile niid-bench-fedavg --seeds 0-2 \\
      --partition iid,dirichlet:0.5,classes:2,classes:3 --out sweeps/niid
  fedlaunch sweep --resume sweeps/niid          go on where it stopped
  fedlaunch report sweeps/niid                  mean +- sd over seeds, beside published numbers

Every run setting of `fedlaunch` is a flag here too; a comma list makes it an axis of the grid.
exit codes: 0 every cell done, 1 a cell failed, 2 bad input, 130/143 stopped (resumable)
"""
RESUME_FLAGS = ("gpus", "max_parallel", "headless")


def build_sweep_parser() -> argparse.ArgumentParser:
    from launcher.arguments import CONFIG_FLAGS, Parser

    parser = Parser(prog="fedlaunch sweep", epilog=EXAMPLES,
                    formatter_class=argparse.RawDescriptionHelpFormatter,
                    description="A grid of fedlaunch runs from a profile plus axes, run as a "
                    "queue (several at once on GPUs where they fit), one folder per cell.")
    parser.add_argument("--profile", help="the profile every cell starts from (name or .toml)")
    parser.add_argument("--seeds", help="seeds as an axis: 0-2, or 0,1,5")
    parser.add_argument("--out", help="the sweep folder (default: sweeps/<timestamp>)")
    parser.add_argument("--resume", metavar="SWEEP_DIR",
                        help="go on with a stopped sweep: finished cells are kept, a cell cut "
                        "short continues from its checkpoint")
    parser.add_argument("--gpus", help="GPU ids like 0,1, 'all' or 'cpu' (default: all, or CPU)")
    parser.add_argument("--max-parallel", type=int, default=None, metavar="N",
                        help="at most N cells at once (default: as many as fit; 1 on the CPU)")
    parser.add_argument("--headless", action="store_true", help="no TUI: a line per cell event")
    for key, text in CONFIG_FLAGS.items():
        parser.add_argument(f"--{key}", default=None, help=text,
                            metavar="PATH" if key in NOT_AXES else "V[,V...]")
    return parser


def child_command() -> list[str]:
    """The `fedlaunch` a cell runs: this interpreter's launcher module (the same program as the
    console script, and free of PATH)."""
    return [sys.executable, "-m", "launcher.cli"]


def profile_path(profile: str) -> str:
    """A profile as an absolute path: a name read by a child whose working folder holds a folder
    of that name (the sweep's own, say) would be taken for that path."""
    if profile.endswith(".toml") or Path(profile).is_absolute():
        return profile
    from importlib import resources

    entry = resources.files("profiles") / f"{profile}.toml"
    return str(entry) if entry.is_file() else profile


def cell_config_args(state: SweepState, cell: CellState) -> list[str]:
    args = ["--profile", profile_path(state.profile)] if state.profile else []
    for key, value in {**state.fixed, **cell.settings}.items():
        args += [f"--{key}", value]
    return args


def resolve_cell(state: SweepState, cell: CellState, labels: dict[tuple[Any, ...], Any]) -> RunConfig:
    """The cell's settings as a run would resolve them; a bad one is a UsageError naming it."""
    import dataclasses

    from fedcore.partition import partition_indices
    from fedcore.partition_spec import parse_partition
    from fedcore.task import train_labels
    from launcher.arguments import build_parser
    from launcher.cli import resolve_config
    from launcher.planning.prepare import make_plan, say

    try:
        cfg, opts = resolve_config(build_parser().parse_args(cell_config_args(state, cell)))
        # The run's own checks (names, partition, clients), writing nothing; GPUs are the sweep's.
        make_plan(cfg, state.cell_dir(cell), dataclasses.replace(opts, dry_run=True, gpus="cpu"))
        key = (cfg.dataset, cfg.data_dir, cfg.limit_train, cfg.seed if cfg.limit_train else 0)
        if key not in labels:
            labels[key] = train_labels(cfg, log=say)
        if opts.mode == "federated":  # every client gets some data, as the run checks it
            partition_indices(labels[key], cfg.clients, parse_partition(cfg.partition), cfg.seed,
                              num_classes=10)
    except UsageError as exc:
        raise UsageError(f"cell {cell.name}: {exc}") from None
    return cfg


def cell_argv(state: SweepState, cell: CellState, gpus: str, resume: bool) -> list[str]:
    base = [*child_command(), "--headless", "--gpus", gpus]
    run_dir = str(state.cell_dir(cell))
    if resume:  # the run's saved settings; its data folder is given again, never reused
        extra = ["--data-dir", state.fixed["data-dir"]] if state.fixed.get("data-dir") else []
        return [*base, "--resume", run_dir, *extra]
    return [*base, *cell_config_args(state, cell), "--out", run_dir]


def new_sweep(args: argparse.Namespace) -> SweepState:
    from launcher.arguments import CONFIG_FLAGS
    from launcher.planning.profiles import published_of

    if args.seeds is not None and args.seed is not None:
        raise UsageError("give --seeds (an axis) or --seed (one seed), not both")
    seeds = parse_seeds(args.seeds) if args.seeds is not None else []
    fixed: dict[str, str] = {}
    axes: dict[str, list[str]] = {}
    for key in CONFIG_FLAGS:
        value = getattr(args, key.replace("-", "_"))
        if value is None:
            continue
        if key in ("data-dir", "weights"):  # the children may run elsewhere
            utf8_path(value, f"--{key}")
            value = str(Path(value).expanduser().resolve())
        values = [value] if key in NOT_AXES else split_axis(key, value)
        if len(values) > 1:
            axes[key] = values
        else:
            fixed[key] = values[0]
    profile = args.profile
    if profile and (profile.endswith(".toml") or Path(profile).exists()):
        profile = str(Path(profile).expanduser().resolve())
    elif profile:
        from launcher.planning.profiles import profile_text

        profile_text(profile)  # an unknown name: one line listing the known ones
    out = sweep_folder(args.out)
    cells = build_grid(axes, seeds)
    state = SweepState(out, profile, fixed, axes, seeds, args.gpus, args.max_parallel,
                       published_of(profile_path(profile)) if profile else None,
                       [CellState(c.name, dict(c.settings)) for c in cells])
    return state


def sweep_folder(out: str | None) -> Path:
    if out is None:
        return (Path("sweeps") / datetime.now().strftime("%Y%m%d-%H%M%S")).resolve()
    utf8_path(out, "--out")
    path = Path(out).expanduser().resolve()
    if path.exists() and not path.is_dir():
        raise UsageError(f"--out {out} is a file; give a folder for the sweep")
    if path.is_dir() and any(path.iterdir()):
        if (path / SWEEP_JSON).exists():
            raise UsageError(f"--out {out} already holds a sweep; go on with "
                             f"`fedlaunch sweep --resume {out}` or choose another --out")
        raise UsageError(f"--out {out} is not empty; choose another --out")
    return path


def resumed_sweep(args: argparse.Namespace) -> SweepState:
    given = [k for k, v in vars(args).items() if v not in (None, False) and k != "resume"
             and k not in RESUME_FLAGS]
    if given:
        flags = ", ".join(f"--{k.replace('_', '-')}" for k in given)
        raise UsageError(f"--resume uses the sweep's saved grid and settings; drop {flags}")
    utf8_path(args.resume, "--resume")
    state = load_sweep(Path(args.resume).expanduser().resolve())
    if args.gpus is not None:
        state.gpus = args.gpus
    if args.max_parallel is not None:
        state.max_parallel = args.max_parallel
    return state


def gpu_slots(state: SweepState, nvml: Nvml | None = None) -> GpuSlots:
    """The GPUs the sweep may use, read through the launcher's own NVML placement."""
    from launcher.planning.placement import parse_gpus, plan_placement

    request = parse_gpus(state.gpus)
    if request.kind == "cpu":
        return GpuSlots([], state.max_parallel)
    nvml = nvml or Nvml()
    placement = plan_placement(1, request, nvml)  # UsageError for GPU ids that do not exist
    if placement.cpu_mode:
        return GpuSlots([], state.max_parallel)
    found = nvml.devices()
    wanted = set(request.ids) if request.kind == "ids" else {g.index for g in found}
    return GpuSlots([g for g in found if g.index in wanted], state.max_parallel)


class SweepPrinter:
    """Headless: one line per cell event, `HH:MM:SS sweep [3/12] NAME: what happened`."""

    def __init__(self, stream: TextIO = sys.stdout) -> None:
        self.stream = stream

    def __call__(self, event: CellEvent) -> None:
        now = datetime.now().strftime("%H:%M:%S")
        print(f"{now} sweep [{event.index}/{event.cells}] {event.cell}: {event.kind} "
              f"{event.text}".rstrip(), file=self.stream, flush=True)


def sweep_main(argv: list[str]) -> int:
    args = build_sweep_parser().parse_args(argv)
    state = resumed_sweep(args) if args.resume else new_sweep(args)
    if not state.cells:
        raise UsageError("the grid is empty")
    if state.max_parallel is not None and state.max_parallel < 1:
        raise UsageError(f"--max-parallel must be at least 1, got {state.max_parallel}")
    labels: dict[tuple[Any, ...], Any] = {}  # training labels read once per data set
    configs = {cell.name: resolve_cell(state, cell, labels) for cell in state.cells}
    slots = gpu_slots(state)
    state.path.mkdir(parents=True, exist_ok=True)
    state.save()
    headless = args.headless or not sys.stdout.isatty()
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "FLWR_TELEMETRY_ENABLED": "0",
           "FLWR_DISABLE_UPDATE_CHECK": "1"}

    def need(cell: CellState) -> int:
        cfg = configs[cell.name]
        # at most one process per client, and the ServerApp (planning.footprint)
        return cfg.clients * client_footprint(cfg) + server_footprint(cfg)

    def argv_of(cell: CellState, gpus: str, resume: bool) -> list[str]:
        return cell_argv(state, cell, gpus, resume)

    if not headless:
        from launcher.supervision.runner import run_sweep_tui

        code = run_sweep_tui(lambda on_event: SweepQueue(state, slots, argv_of, need, env, on_event))
        print(closing_line(state, code), flush=True)  # the screen is gone: the result stays
        return code
    printer = SweepPrinter()
    queue = SweepQueue(state, slots, argv_of, need, env, printer)
    counts = state.counts()
    print(f"sweep: {len(state.cells)} cells, {counts['done']} done, in {state.path}", flush=True)
    code = asyncio.run(run_queue(queue))
    print(closing_line(state, code), flush=True)
    return code


async def run_queue(queue: SweepQueue) -> int:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        loop.add_signal_handler(sig, queue.stop, sig)
    try:
        return await queue.run()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            loop.remove_signal_handler(sig)


def closing_line(state: SweepState, code: int) -> str:
    counts = state.counts()
    parts = ", ".join(f"{n} {s}" for s, n in counts.items() if n)
    line = f"sweep: exit {code}: {parts}"
    if counts["done"] < len(state.cells):
        line += f"; go on with: fedlaunch sweep --resume {state.path}"
    return line

