"""The `fedlaunch` command's flags: the parser, its help text and examples, and the training
flags that map one to one onto RunConfig keys."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any, NoReturn

from fedcore.catalog import AUGMENTS, MODEL_NAMES, NORMALIZATIONS, STRATEGY_NAMES
from fedcore.config import OPTIMIZERS, PRECISIONS, SCHEDULES, RunConfig
from fedcore.errors import UsageError
from launcher.kinds import ENGINES, EXECUTORS

EXAMPLES = """\
examples:
  fedlaunch --clients 8 --gpus 0,1                 8 clients, round-robin over GPUs 0 and 1
  fedlaunch --profile quick                        a one-minute look on CPU
  fedlaunch --clients 3 --rounds 2 --dataset synthetic --model cnn --headless
  fedlaunch --local --epochs 20                    the same model and data, no federation
  fedlaunch --dry-run --clients 4                  print the processes, GPUs and ports; start nothing
  fedlaunch report runs/A runs/B                   curves of two runs side by side
  fedlaunch sweep --profile P --seeds 0-2 --partition iid,classes:2   a grid of runs (sweep --help)
  fedlaunch report sweeps/S                        a sweep's table: mean +- sd over seeds

exit codes: 0 done, 1 run failed, 2 bad input, 129 hung up (SIGHUP: the terminal or SSH
session closed), 130 interrupted (Ctrl+C), 143 terminated (SIGTERM)
"""

# CLI flag -> RunConfig key; value types come from RunConfig, so names agree everywhere.
CONFIG_FLAGS: dict[str, str] = {
    "dataset": "dataset name: cifar10 or synthetic (generated, offline)",
    "data-dir": "folder with CIFAR-10 (batches folder, .tar.gz or image folders)",
    "limit-train": "use a fixed subset of N training images",
    "limit-test": "use a fixed subset of N test images",
    "partition": "iid, dirichlet:ALPHA or classes:K",
    "clients": "number of clients (SuperNodes)",
    "model": f"{', '.join(MODEL_NAMES)}; brings that model's recipe (optimizer, lr, batch, "
             "weight decay, schedule, augmentation; a profile or flag still overrides each)",
    "weights": "a state dict (torch.save) or a fedlaunch checkpoint to start from",
    "image-size": "resize images to NxN on the device (0: the data's own 32, or 24 with crop24)",
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
    "augment": f"training augmentation: {', '.join(AUGMENTS)}",
    "normalize": f"input normalisation: {', '.join(NORMALIZATIONS)}",
    "strategy": f"{', '.join(STRATEGY_NAMES)} (fedavg weights clients by examples; "
                "fedavg-unweighted takes the plain mean)",
    "fraction-train": "fraction of clients sampled each round",
    "seed": "seed for partitioning, shuffling and augmentation",
    "precision": f"{', '.join(PRECISIONS)} (auto: bf16 on CUDA, fp32 on CPU)",
    "round-timeout": "seconds a round waits for replies (on the simulation engine, a worker "
                     "silent that long on a task is killed as hung and replaced)",
    "startup-timeout": "seconds the run waits for its clients to connect, and for each client's "
                       "first reply (its start-up: torch, the data), at least --round-timeout",
}


METAVARS = {int: "N", float: "X"}


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line and exit 2."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see fedlaunch --help)")


NUMBER_WORDS = {int: "a whole number", float: "a number"}


def number(kind: type) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        try:
            return kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"'{text}' is not {NUMBER_WORDS[kind]}") from None

    parse.__name__ = kind.__name__
    return parse


def version_line() -> str:
    """`fedlaunch --version`: this package's version and the Flower it runs on, read from the
    installed metadata (no import of flwr)."""
    from importlib.metadata import PackageNotFoundError, version

    def installed(name: str) -> str:
        try:
            return version(name)
        except PackageNotFoundError:
            return "not installed"

    return f"fedlaunch {installed('fedlaunch')} (flwr {installed('flwr')})"


def build_parser() -> Parser:
    defaults = RunConfig()
    parser = Parser(
        prog="fedlaunch",
        description="Federated learning of CIFAR-10 on this machine's GPUs with Flower: virtual "
        "clients served by warm workers pinned round-robin to the GPUs (real SuperNodes with "
        "--engine deployment), a live view of the run.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=version_line())
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
    run.add_argument("--workers", type=number(int), default=None, metavar="K",
                     help="GPU worker processes that train the clients' tasks (default with "
                     "--engine simulation: one per core on the CPU, two per GPU; with deployment: "
                     "one per client while they fit in GPU memory, or in max(4, 2 x cores) on "
                     "the CPU); "
                     "with fewer workers than clients, the clients are light Flower SuperNodes "
                     "and any free worker trains any sampled client")
    run.add_argument("--workers-per-gpu", "--clients-per-gpu", dest="clients_per_gpu",
                     type=number(int), default=None, metavar="N",
                     help="at most N worker processes on one GPU (--clients-per-gpu is the old "
                     "name: it now counts workers; default: as many as fit in its memory)")
    run.add_argument("--engine", choices=ENGINES, default=None,
                     help="simulation: the ServerApp and virtual Flower nodes in one process, "
                     "K worker processes train them (default on one machine); deployment: a "
                     "Flower SuperLink and a real SuperNode per client (always with --serve "
                     "and --join); see docs/ENGINES.md")
    run.add_argument("--executor", choices=EXECUTORS, default="warm",
                     help="warm: one long-lived process per client keeps torch, the model and "
                     "data loaded (default); stock: Flower's new process per message")
    run.add_argument("--max-restarts", type=number(int), default=None,
                     help="restarts allowed per client process (default 3)")
    run.add_argument("--track", action="append", metavar="NAME",
                     help="log the run live to tensorboard, wandb or mlflow, offline into the run "
                     "folder (several: --track tensorboard,wandb); each needs its extra, e.g. "
                     "pip install 'fedlaunch[wandb]'")
    run.add_argument("--headless", action="store_true", help="no TUI: print logs and progress")
    run.add_argument("--exit-on-finish", action="store_true", help="leave the TUI when the run ends")
    run.add_argument("--dry-run", action="store_true", help="print the plan and exit")
    net = parser.add_argument_group("across machines (see docs/ACROSS_MACHINES.md)")
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
    net.add_argument("--gateway-max-body", metavar="SIZE",
                     help="--serve: largest request body a client may send (default 16MiB)")
    net.add_argument("--gateway-max-header", metavar="SIZE",
                     help="--serve: largest request head (default 16KiB)")
    net.add_argument("--gateway-max-connections", metavar="N",
                     help="--serve: open connections in all, a quarter per address (default 1024)")
    net.add_argument("--gateway-timeout", metavar="S",
                     help="--serve: seconds a request may take to arrive (default 120)")
    settings = parser.add_argument_group("training (flags override the profile)")
    for key, text in CONFIG_FLAGS.items():
        default = getattr(defaults, key.replace("-", "_"))
        kind = type(default)
        settings.add_argument(f"--{key}", type=number(kind) if kind in (int, float) else str,
                              default=None, metavar=METAVARS.get(kind, "TEXT"),
                              help=f"{text} (default {default if default != '' else 'none'})")
    settings.add_argument("--no-augment", dest="augment", action="store_const", const="none",
                          default=None, help="the same as --augment none")
    settings.add_argument("--pretrained", action="store_true", default=None,
                          help="start from torchvision's ImageNet weights (mobilenetv2, "
                          "mobilenetv2-imagenet, resnet18-imagenet), kept in torch.hub's cache")
    return parser
