"""The `fedlaunch` command line: parse, check, plan, then run headless or under the TUI."""

from __future__ import annotations

import argparse
import asyncio
import atexit
import os
import signal
import sys
from pathlib import Path
from typing import Any, cast

from fedcore.config import RunConfig, from_layers, from_mapping, validate
from fedcore.errors import UsageError
from launcher.arguments import CONFIG_FLAGS, Parser, build_parser
from launcher.kinds import Engine, RunMode
from launcher.network.flags import network_plan
from launcher.planning.flower_version import check_flower
from launcher.planning.prepare import (
    LaunchOptions,
    default_run_dir,
    make_plan,
    resume_data_dir,
    utf8_path,
)
from launcher.planning.profiles import LAUNCHER_KEYS, describe_profiles, load_profile
from launcher.tracking.tracker import backends

SEED_MAX = 2**32 - 1  # numpy's and torch's seeds are unsigned 32-bit
MAX_RESTARTS = 1_000  # restarts of one client; more is a crash loop, not a run


def resolve_config(args: argparse.Namespace) -> tuple[RunConfig, LaunchOptions]:
    """Defaults, then the profile, then explicit flags; returns the config and launcher options."""
    profiled: dict[str, Any] = {}
    layers: list[tuple[str, dict[str, Any]]] = []
    if args.profile:
        where, values = load_profile(args.profile)
        for key, kind in LAUNCHER_KEYS.items():
            if key in values:
                value = values.pop(key)
                if not isinstance(value, kind) or isinstance(value, bool) != (kind is bool):
                    raise UsageError(f"{where}: '{key}' must be {kind.__name__}, got {value!r}")
                profiled[key] = value
        layers.append((where, values))
    explicit = {key: getattr(args, key.replace("-", "_")) for key in (*CONFIG_FLAGS, "pretrained")}
    layers.append(("command line", {k: v for k, v in explicit.items() if v is not None}))
    cfg = from_layers(layers)  # the model's recipe under the profile and the flags
    opts = launch_options(args, bool(profiled.get("local", False)), profiled.get("gpus"),
                          int(profiled.get("max-restarts", 3)))
    return validate(checked_seed(cfg)), opts


def launch_options(args: argparse.Namespace, local: bool, gpus: str | None,
                   max_restarts: int) -> LaunchOptions:
    """Flags over the profile's launcher keys; the mode from --local, --join."""
    local = args.local if args.local is not None else local
    gpus = args.gpus if args.gpus is not None else gpus
    max_restarts = args.max_restarts if args.max_restarts is not None else max_restarts
    if not 0 <= max_restarts <= MAX_RESTARTS:
        raise UsageError(f"--max-restarts must be from 0 to {MAX_RESTARTS}, got {max_restarts}")
    if local and (args.serve or args.join):
        raise UsageError("--local trains on this machine alone; drop --serve/--join, or --local")
    mode: RunMode = "local" if local else "join" if args.join else "federated"
    engine = choose_engine(args, mode)
    return LaunchOptions(
        engine=engine,
        mode=mode, gpus=gpus, max_restarts=max_restarts, executor=args.executor, port=args.port,
        clients_per_gpu=args.clients_per_gpu, workers=args.workers, dry_run=args.dry_run,
        resume=bool(args.resume),
        numbered=args.out is None and not args.resume,
        # A join runs the server's data set: check the local copy only when --dataset names it.
        check_data=not args.join or args.dataset is not None,
    )


DEFAULT_ENGINE: Engine = "simulation"  # measured faster on one machine: docs/PERFORMANCE.md


def choose_engine(args: argparse.Namespace, mode: RunMode) -> Engine:
    """--engine, or the default: the simulation engine for a run on this machine alone, the
    Deployment Engine when a flag asks for what only it has (--serve, --join: other machines;
    --port: its SuperLink; --executor stock: Flower's process per message)."""
    needs = [flag for flag, given in (("--serve", args.serve), ("--join", args.join),
                                      ("--port", args.port is not None),
                                      ("--executor stock", args.executor == "stock")) if given]
    if args.engine == "simulation" and needs and mode != "local":
        raise UsageError(f"{needs[0]} needs the Deployment Engine (a SuperLink and real "
                         "SuperNodes); drop --engine simulation or use --engine deployment")
    if args.engine is not None:
        return cast(Engine, args.engine)
    return "deployment" if needs else DEFAULT_ENGINE


def checked_seed(cfg: RunConfig) -> RunConfig:
    """numpy and torch take seeds from 0 to 2**32 - 1, and reject others only mid-run."""
    if not 0 <= cfg.seed <= SEED_MAX:
        raise UsageError(f"--seed must be between 0 and {SEED_MAX}, got {cfg.seed}")
    return cfg


def run_folder(out: str | None) -> Path:
    """The run folder: new, or empty; never an existing folder of someone else's files. The
    default runs/<timestamp> is claimed (with a suffix when taken) only at launch."""
    if out is None:
        return default_run_dir()
    utf8_path(out, "--out")
    path = Path(out).expanduser().resolve()
    if path.exists() and not path.is_dir():
        raise UsageError(f"--out {out} is a file; give a folder for the run")
    if path.is_dir() and any(path.iterdir()):
        if (path / "config.json").exists():
            raise UsageError(f"--out {out} already holds a fedlaunch run; choose another --out")
        raise UsageError(f"--out {out} is not empty and is not a fedlaunch run; choose another --out")
    return path


RESUME_OVERRIDES = ("rounds", "epochs", "data-dir")


def resume_config(args: argparse.Namespace) -> tuple[RunConfig, LaunchOptions, Path]:
    """The saved settings of the run in --resume, with --rounds/--epochs allowed to extend it."""
    from fedcore.rundir import RunDir, refuse_symlinks

    utf8_path(args.resume, "--resume")
    run_dir = Path(args.resume).expanduser().resolve()
    if run_dir.is_dir():
        refuse_symlinks(run_dir, f"--resume {args.resume}")
    if not (run_dir / "config.json").is_file():
        raise UsageError(f"--resume {args.resume}: not a fedlaunch run folder (no config.json)")
    if args.out or args.profile:
        raise UsageError("--resume continues in the run's own folder with its saved settings; "
                         "drop --out and --profile")
    given = [key for key in (*CONFIG_FLAGS, "pretrained") if getattr(args, key.replace("-", "_")) is not None]
    fixed = [key for key in given if key not in RESUME_OVERRIDES]
    if fixed:
        raise UsageError(f"--resume uses the run's saved settings; drop --{', --'.join(fixed)} "
                         "(only --rounds, --epochs and --data-dir may change)")
    try:
        saved = RunDir(run_dir).read_config()
    except (OSError, ValueError) as exc:
        raise UsageError(f"--resume {args.resume}: cannot read config.json ({exc})") from None
    if isinstance(saved, dict) and saved.get("mode") == "join":
        raise UsageError(f"--resume {args.resume}: a join run keeps nothing to resume; join again")
    if not isinstance(saved, dict) or saved.get("mode") not in ("federated", "local"):
        raise UsageError(f"--resume {args.resume}: config.json is not a fedlaunch run config")
    mode = saved.pop("mode")
    cfg = from_mapping(saved, f"{run_dir / 'config.json'}")
    for key in ("rounds", "epochs"):
        value = getattr(args, key)
        if value is not None:
            cfg = cfg.replace(**{key: value})
    # Paths of the machine (or the person) that wrote config.json are not reused as they stand.
    cfg = cfg.replace(data_dir=resume_data_dir(cfg.data_dir, args.data_dir), progress_dir="",
                      out_dir=str(run_dir))
    opts = launch_options(args, mode == "local", None, 3)
    return validate(checked_seed(cfg)), opts, run_dir


def report_main(argv: list[str]) -> int:
    """`fedlaunch report RUN_DIR [RUN_DIR ...] [--out PNG]`: curves side by side and a table."""
    parser = Parser(prog="fedlaunch report",
                    description="Plot runs side by side on a shared axis of training images seen, "
                    "a label heatmap per federated run, and a table of results. The run folders "
                    "are only read (unless --into-runs).")
    parser.add_argument("runs", nargs="+", metavar="RUN_DIR")
    parser.add_argument("--out", help="where to write the PNG (default: report.png here; a name "
                        "without .png/.svg/.pdf gets .png); the heatmaps go beside it")
    parser.add_argument("--into-runs", action="store_true",
                        help="write each run's heatmap into its own folder as partitions.png")
    args = parser.parse_args(argv)
    from launcher.report import print_table, report

    result = report([Path(r) for r in args.runs], Path(args.out) if args.out else None,
                    into_runs=args.into_runs)
    print_table(result.rows)
    for path in [result.report_png, *result.partition_pngs]:
        print(f"wrote {path}")
    return 0


def record_modules_at_exit() -> None:
    """FEDLAUNCH_MODULES_FILE=PATH: write the launcher's loaded modules there when it exits
    (tests/test_layers.py checks that torch and flwr never load in the launcher)."""
    target = os.environ.get("FEDLAUNCH_MODULES_FILE")
    if target:
        atexit.register(lambda: Path(target).write_text("\n".join(sorted(sys.modules)) + "\n"))


def main(argv: list[str] | None = None) -> int:
    record_modules_at_exit()
    # SIGINT stops fedlaunch with 130 at any point, as it does once the run is up, even when it
    # was started where SIGINT is inherited as ignored (`cmd &` in a script).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    args_list = sys.argv[1:] if argv is None else argv
    try:
        if args_list[:1] == ["sweep"]:
            from launcher.sweep.cli import sweep_main

            return sweep_main(args_list[1:])
        if args_list[:1] == ["report"]:
            from launcher.report_sweep import is_sweep_report, sweep_report_main

            if is_sweep_report(args_list[1:]):
                return sweep_report_main(args_list[1:])
            return report_main(args_list[1:])
        if args_list[:1] == ["certs"]:
            from launcher.network.certs import certs_main

            return certs_main(args_list[1:])
        return launch(args_list)
    except UsageError as exc:
        print(f"fedlaunch: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("fedlaunch: interrupted", file=sys.stderr)
        return 130


def fetch_pretrained(model: str) -> None:
    """--pretrained: torchvision's ImageNet weights into torch.hub's cache before anything starts,
    in a child (the launcher never imports torch); offline, one line naming the file to place."""
    import subprocess

    result = subprocess.run([sys.executable, "-m", "fedcore.models", "fetch", model], text=True,
                            capture_output=True, stdin=subprocess.DEVNULL)
    if result.returncode:
        lines = result.stderr.strip().splitlines() or [f"fetching ImageNet weights for {model} failed"]
        raise UsageError(lines[-1].removeprefix("fedlaunch: "))


def launch(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    if args.list_profiles:
        print(describe_profiles())
        return 0
    if args.resume:
        cfg, opts, run_dir = resume_config(args)
    else:
        cfg, opts = resolve_config(args)
        run_dir = run_folder(args.out)
    track = backends(args.track, run_dir if args.resume else None, opts.mode)
    local_clients, remote = network_plan(args, opts)
    flower = None if opts.mode == "local" else check_flower()  # before the run folder is claimed
    plan = make_plan(cfg, run_dir, opts, local_clients=local_clients, remote=remote)
    if flower is not None:
        plan = plan.warn(flower)
    if cfg.pretrained and not args.dry_run and opts.mode != "join":
        fetch_pretrained(cfg.model)
    if args.dry_run:
        print(plan.describe())
        if track:
            print(f"tracking: {', '.join(track)}, live into {run_dir}")
        return 0
    headless = args.headless or not sys.stdout.isatty()
    from launcher.supervision.runner import run_headless, run_tui

    if headless:
        return asyncio.run(run_headless(plan, track))
    return run_tui(plan, exit_on_finish=args.exit_on_finish, track=track)


if __name__ == "__main__":
    sys.exit(main())
