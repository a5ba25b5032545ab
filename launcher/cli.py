"""The `fedlaunch` command line: parse, check, plan, then run headless or under the TUI."""

from __future__ import annotations

import argparse
import asyncio
import sys
from datetime import datetime
from pathlib import Path
from typing import Any, NoReturn

from fedcore.config import OPTIMIZERS, PRECISIONS, SCHEDULES, RunConfig, from_mapping, validate
from fedcore.errors import UsageError
from launcher.planning.profiles import LAUNCHER_KEYS, describe_profiles, load_profile

EXAMPLES = """\
examples:
  fedlaunch --clients 8 --gpus 0,1                 8 clients, round-robin over GPUs 0 and 1
  fedlaunch --profile quick                        a one-minute look on CPU
  fedlaunch --clients 3 --rounds 2 --dataset synthetic --model cnn --headless
  fedlaunch --local --epochs 20                    the same model and data, no federation
  fedlaunch --dry-run --clients 4                  print the processes, GPUs and ports; start nothing
  fedlaunch report runs/A runs/B                   curves of two runs side by side

exit codes: 0 done, 1 run failed, 2 bad input, 129 hung up (SIGHUP: the terminal or SSH
session closed), 130 interrupted (Ctrl+C), 143 terminated (SIGTERM)
"""

# CLI flag -> RunConfig key; value types come from RunConfig, so names agree everywhere.
CONFIG_FLAGS: dict[str, str] = {
    "dataset": "dataset name: cifar10 or synthetic (generated, offline)",
    "data-dir": "folder with CIFAR-10 (batches folder, .tar.gz or image folders)",
    "limit-train": "use a fixed subset of N training images",
    "limit-test": "use a fixed subset of N test images",
    "partition": "iid, dirichlet:ALPHA or classes:K (default dirichlet:0.5)",
    "clients": "number of clients (SuperNodes)",
    "model": "cnn, mobilenetv2 or resnet18",
    "rounds": "federated rounds",
    "local-epochs": "epochs each client trains per round",
    "epochs": "epochs of a --local run",
    "batch-size": "training batch size",
    "eval-batch-size": "evaluation batch size",
    "optimizer": f"one of {', '.join(OPTIMIZERS)}",
    "lr": "learning rate",
    "momentum": "SGD momentum",
    "weight-decay": "weight decay",
    "schedule": f"learning-rate schedule: {', '.join(SCHEDULES)}",
    "strategy": "fedavg, fedprox:MU or fedadam",
    "fraction-train": "fraction of clients sampled each round",
    "seed": "seed for partitioning, shuffling and augmentation",
    "precision": f"{', '.join(PRECISIONS)} (auto: bf16 on CUDA, fp32 on CPU)",
    "round-timeout": "seconds a round waits for replies",
}


METAVARS = {int: "N", float: "X"}


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line and exit 2."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see fedlaunch --help)")


def number(kind: type) -> Any:
    def parse(text: str) -> Any:
        try:
            return kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"'{text}' is not a {kind.__name__}") from None

    parse.__name__ = kind.__name__
    return parse


def build_parser() -> Parser:
    defaults = RunConfig()
    parser = Parser(
        prog="fedlaunch",
        description="Federated learning of CIFAR-10 on this machine's GPUs: a Flower SuperLink, "
        "one SuperNode per client pinned to a GPU, a live view of the run.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    run = parser.add_argument_group("run")
    run.add_argument("--local", action="store_true", default=None,
                     help="train without federation (the baseline)")
    run.add_argument("--gpus", help="GPU ids like 0,1, 'all' or 'cpu' (default: all GPUs, or CPU)")
    run.add_argument("--profile", help="a profile name (see --list-profiles) or a .toml path")
    run.add_argument("--list-profiles", action="store_true", help="list profiles and exit")
    run.add_argument("--out", help="run folder (default: runs/<timestamp>)")
    run.add_argument("--resume", metavar="RUN_DIR",
                     help="continue a stopped or crashed run from its last checkpoint, with its "
                     "saved settings (--rounds/--epochs may extend it)")
    run.add_argument("--port", type=number(int), default=None, metavar="N",
                     help="SuperLink port on 127.0.0.1 (default: a free one)")
    run.add_argument("--clients-per-gpu", type=number(int), default=None, metavar="N",
                     help="at most N clients on one GPU (default: as many as fit in its memory, "
                     "with a warning when they may not)")
    run.add_argument("--executor", choices=("warm", "stock"), default="warm",
                     help="warm: one long-lived process per client keeps torch, the model and "
                     "data loaded (default); stock: Flower's new process per message")
    run.add_argument("--max-restarts", type=number(int), default=None,
                     help="restarts allowed per client process (default 3)")
    run.add_argument("--headless", action="store_true", help="no TUI: print logs and progress")
    run.add_argument("--exit-on-finish", action="store_true", help="leave the TUI when the run ends")
    run.add_argument("--dry-run", action="store_true", help="print the plan and exit")
    net = parser.add_argument_group("across machines (see README: Across machines)")
    net.add_argument("--serve", metavar="HOST:PORT",
                     help="run the SuperLink on this address for --clients nodes from any machine")
    net.add_argument("--join", metavar="HOST:PORT",
                     help="start only clients here, joined to the SuperLink at HOST:PORT")
    net.add_argument("--partition-ids", metavar="A-B",
                     help="the partitions this machine's clients train (--join; --serve: local ones)")
    net.add_argument("--num-partitions", type=number(int), default=None, metavar="N",
                     help="partitions in the whole run (--join)")
    net.add_argument("--certificates", metavar="DIR",
                     help="folder from `fedlaunch certs` (server: CA, certificate, key)")
    net.add_argument("--root-certificates", metavar="FILE", help="the CA a joining client trusts")
    net.add_argument("--insecure", action="store_true",
                     help="no TLS beyond this machine (prints a warning)")
    net.add_argument("--node-keys", metavar="DIR",
                     help="SuperNode authentication (needs TLS): --serve admits only the nodes "
                     "whose DIR/*.pub it registers; each client signs in with "
                     "DIR/node-<partition id>.key (`fedlaunch certs DIR --node-keys N`)")
    settings = parser.add_argument_group("training (flags override the profile)")
    for key, text in CONFIG_FLAGS.items():
        default = getattr(defaults, key.replace("-", "_"))
        kind = type(default)
        settings.add_argument(f"--{key}", type=number(kind) if kind in (int, float) else str,
                              default=None, metavar=METAVARS.get(kind, "TEXT"),
                              help=f"{text} (default {default if default != '' else 'none'})")
    settings.add_argument("--no-augment", dest="augment", action="store_false", default=None,
                          help="no random crop and flip")
    return parser


def resolve_config(args: argparse.Namespace) -> tuple[RunConfig, dict[str, Any]]:
    """Defaults, then the profile, then explicit flags; returns the config and launcher options."""
    launcher: dict[str, Any] = {"local": False, "gpus": None, "max-restarts": 3}
    cfg = RunConfig()
    if args.profile:
        where, values = load_profile(args.profile)
        for key, kind in LAUNCHER_KEYS.items():
            if key in values:
                value = values.pop(key)
                if not isinstance(value, kind) or isinstance(value, bool) != (kind is bool):
                    raise UsageError(f"{where}: '{key}' must be {kind.__name__}, got {value!r}")
                launcher[key] = value
        cfg = from_mapping(values, where, cfg)
    explicit = {key: getattr(args, key.replace("-", "_")) for key in CONFIG_FLAGS}
    explicit["augment"] = args.augment
    cfg = from_mapping({k: v for k, v in explicit.items() if v is not None}, "command line", cfg)
    for key in ("local", "gpus", "max_restarts"):
        value = getattr(args, key)
        if value is not None:
            launcher[key.replace("_", "-")] = value
    if launcher["max-restarts"] < 0:
        raise UsageError(f"--max-restarts must be 0 or more, got {launcher['max-restarts']}")
    return validate(cfg), launcher


def run_folder(out: str | None) -> Path:
    """The run folder: new, or empty; never an existing folder of someone else's files."""
    if out is None:
        path = Path("runs") / datetime.now().strftime("%Y%m%d-%H%M%S")
        suffix = 1
        while path.exists():
            path = path.with_name(f"{path.name.split('.')[0]}.{suffix}")
            suffix += 1
        return path.resolve()
    path = Path(out).expanduser().resolve()
    if path.exists() and not path.is_dir():
        raise UsageError(f"--out {out} is a file; give a folder for the run")
    if path.is_dir() and any(path.iterdir()):
        if (path / "config.json").exists():
            raise UsageError(f"--out {out} already holds a fedlaunch run; choose another --out")
        raise UsageError(f"--out {out} is not empty and is not a fedlaunch run; choose another --out")
    return path


def partition_range(text: str | None, flag: str = "--partition-ids") -> range | None:
    """`3-5` -> range(3, 6); `4` -> range(4, 5)."""
    if text is None:
        return None
    first, _, last = text.partition("-")
    try:
        start, stop = int(first), int(last or first) + 1
    except ValueError:
        raise UsageError(f"bad {flag} '{text}': give A-B, e.g. 0-3, or one id") from None
    if start < 0 or stop <= start:
        raise UsageError(f"bad {flag} '{text}': ids start at 0 and A must not exceed B")
    return range(start, stop)


def network_plan(args: argparse.Namespace, cfg: RunConfig, run_dir: Path,
                 opts: dict[str, Any]) -> tuple[int | None, Any]:
    """For --serve/--join: how many clients run here and the function that builds their plan."""
    from launcher.network import remote

    ids = partition_range(args.partition_ids)
    certs = Path(args.certificates).expanduser().resolve() if args.certificates else None
    keys = Path(args.node_keys) if args.node_keys else None
    if args.serve and args.join:
        raise UsageError("--serve and --join exclude each other: one machine serves, others join")
    if args.serve:
        address = remote.parse_address(args.serve, "--serve")
        local = ids or range(0)

        def serve(cfg: RunConfig, placement: Any) -> Any:
            return remote.serve_plan(cfg, run_dir, placement, address, certs, args.insecure,
                                     local_partitions=local, max_restarts=opts["max-restarts"],
                                     executor=args.executor, node_keys=keys)

        return len(local), serve
    if args.join:
        address = remote.parse_address(args.join, "--join")
        if ids is None or args.num_partitions is None:
            raise UsageError("--join needs --partition-ids A-B and --num-partitions N")
        if args.clients is not None and args.clients != len(ids):
            raise UsageError(f"--clients {args.clients} but --partition-ids {args.partition_ids} "
                             f"names {len(ids)}; drop --clients or make them agree")
        if ids.stop > args.num_partitions:
            raise UsageError(f"--partition-ids {args.partition_ids} goes beyond --num-partitions "
                             f"{args.num_partitions} (ids run from 0 to {args.num_partitions - 1})")
        ca = remote.root_ca(certs, Path(args.root_certificates) if args.root_certificates else None)

        def join(cfg: RunConfig, placement: Any) -> Any:
            return remote.join_plan(cfg, run_dir, placement, address, ids, args.num_partitions,
                                    ca, args.insecure, max_restarts=opts["max-restarts"],
                                    executor=args.executor, node_keys=keys)

        return len(ids), join
    if (args.partition_ids or args.certificates or args.root_certificates or args.insecure
            or args.node_keys):
        raise UsageError("--partition-ids, --certificates, --root-certificates, --insecure and "
                         "--node-keys go with --serve or --join")
    return None, None


RESUME_OVERRIDES = ("rounds", "epochs")


def resume_config(args: argparse.Namespace) -> tuple[RunConfig, dict[str, Any], Path]:
    """The saved settings of the run in --resume, with --rounds/--epochs allowed to extend it."""
    from fedcore.rundir import RunDir

    run_dir = Path(args.resume).expanduser().resolve()
    if not (run_dir / "config.json").is_file():
        raise UsageError(f"--resume {args.resume}: not a fedlaunch run folder (no config.json)")
    if args.out or args.profile:
        raise UsageError("--resume continues in the run's own folder with its saved settings; "
                         "drop --out and --profile")
    given = [key for key in CONFIG_FLAGS if getattr(args, key.replace("-", "_")) is not None]
    if args.augment is not None:
        given.append("no-augment")
    fixed = [key for key in given if key not in RESUME_OVERRIDES]
    if fixed:
        raise UsageError(f"--resume uses the run's saved settings; drop --{', --'.join(fixed)} "
                         "(only --rounds and --epochs may change)")
    try:
        saved = RunDir(run_dir).read_config()
    except (OSError, ValueError) as exc:
        raise UsageError(f"--resume {args.resume}: cannot read config.json ({exc})") from None
    if not isinstance(saved, dict) or saved.get("mode") not in ("federated", "local"):
        raise UsageError(f"--resume {args.resume}: config.json is not a fedlaunch run config")
    mode = saved.pop("mode")
    cfg = from_mapping(saved, f"{run_dir / 'config.json'}")
    for key in RESUME_OVERRIDES:
        value = getattr(args, key)
        if value is not None:
            cfg = cfg.replace(**{key: value})
    opts = {"local": mode == "local", "gpus": args.gpus,
            "max-restarts": 3 if args.max_restarts is None else args.max_restarts}
    return validate(cfg), opts, run_dir


def report_main(argv: list[str]) -> int:
    """`fedlaunch report RUN_DIR [RUN_DIR ...] [--out PNG]`: curves side by side and a table."""
    parser = Parser(prog="fedlaunch report",
                    description="Plot runs side by side on a shared axis of training images seen, "
                    "a label heatmap per federated run, and a table of results.")
    parser.add_argument("runs", nargs="+", metavar="RUN_DIR")
    parser.add_argument("--out", help="where to write the PNG (default: RUN_DIR/report.png of the first)")
    args = parser.parse_args(argv)
    from launcher.report import print_table, report

    result = report([Path(r) for r in args.runs], Path(args.out) if args.out else None)
    print_table(result.rows)
    for path in [result.report_png, *result.partition_pngs]:
        print(f"wrote {path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args_list = sys.argv[1:] if argv is None else argv
    try:
        if args_list[:1] == ["report"]:
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
    from launcher.planning.prepare import make_plan

    local_clients, remote = network_plan(args, cfg, run_dir, opts)
    plan = make_plan(cfg, run_dir, local=opts["local"], gpus=opts["gpus"],
                     max_restarts=opts["max-restarts"], dry_run=args.dry_run, port=args.port,
                     executor=args.executor, resume=bool(args.resume),
                     clients_per_gpu=args.clients_per_gpu, local_clients=local_clients,
                     remote=remote)
    if args.dry_run:
        print(plan.describe())
        return 0
    headless = args.headless or not sys.stdout.isatty()
    from launcher.supervision.runner import run_headless, run_tui

    if headless:
        return asyncio.run(run_headless(plan))
    return run_tui(plan, exit_on_finish=args.exit_on_finish)


if __name__ == "__main__":
    sys.exit(main())
