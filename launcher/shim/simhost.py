"""The simulation engine: fedcore's ServerApp and N virtual Flower nodes in Flower's own simulation
loop, with K fedlaunch worker processes in place of Ray.

`python -m launcher.shim.simhost --run-dir DIR --socket PATH --workers-json JSON` imports torch,
Flower and fedcore once, loads the data set (numpy only: the ServerApp and every worker share its
pages), forks the zygote that forks the K workers (launcher.shim.simworker: no thread has run
and CUDA is untouched at that point), then runs Flower's public `run_simulation`
with the run's ServerApp (its run config set from the run folder's config.json) and fedcore's
ClientApp. Flower registers the N virtual nodes (partition-id 0..N-1), keeps each node's Context,
and hands every ClientApp task to the backend this module installs (launcher.shim.simpool): no
SuperLink, no SuperNode, no HTTP per task, no Ray. The run folder gets what the Deployment
Engine's processes write: metrics.jsonl, progress, checkpoints (the ServerApp), workers.jsonl and
pool.json (the pool).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Any

from launcher.shim import flwr_internals as fi
from launcher.shim.simpool import Pool, PoolBackend, WorkerOrder
from launcher.shim.simworker import start_zygote

DEPRECATION = "`run_simulation` function is deprecated"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m launcher.shim.simhost")
    parser.add_argument("--run-dir", required=True)
    parser.add_argument("--socket", required=True)
    parser.add_argument("--workers-json", required=True,
                        help='[{"name": "worker-0", "gpu": "cpu", "env": {...}}, ...]')
    parser.add_argument("--max-restarts", type=int, default=3)
    return parser.parse_args(argv)


def run_config_of(run_dir: Path) -> dict[str, Any]:
    """The run config Flower's apps read, from the run folder's config.json."""
    from fedcore.config import from_mapping
    from fedcore.rundir import RunDir

    saved = RunDir(run_dir).read_config()
    saved.pop("mode", None)
    return dict(from_mapping(saved, str(run_dir / "config.json")).to_run_config())


def preload(run_config: dict[str, Any]) -> None:
    """The data set, loaded here once with numpy alone: the ServerApp, the zygote and every
    worker forked from it share its pages (fedcore.shared_data.preload)."""
    from fedcore.config import from_run_config
    from fedcore.shared_data import preload as preload_data

    try:
        preload_data(from_run_config(run_config))
    except Exception as exc:  # noqa: BLE001 - the ServerApp loads it again and says what failed
        print(f"fedlaunch: the data set was not loaded before the workers: {exc}", flush=True)


class QuietDeprecation(logging.Filter):
    """`run_simulation` is Flower's public API for this; its deprecation notice is not the user's."""

    def filter(self, record: logging.LogRecord) -> bool:
        return DEPRECATION not in record.getMessage()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    run_dir = Path(args.run_dir)
    orders = [WorkerOrder(str(o["name"]), str(o["gpu"]), dict(o["env"]))
              for o in json.loads(args.workers_json)]
    import torch  # noqa: F401 - once, here: every worker is forked with it loaded
    import torchvision  # noqa: F401
    from flwr.app import Context
    from flwr.serverapp import Grid, ServerApp
    from flwr.simulation import run_simulation

    import fedcore.client_app
    import fedcore.server_app

    run_config = run_config_of(run_dir)
    preload(run_config)
    zygote_pid, zygote_fd = start_zygote()  # before any thread or torch operation
    pool = Pool(run_dir, Path(args.socket), orders, zygote_fd, run_config, args.max_restarts,
                int(run_config["clients"]))

    def on_signal(signum: int, _frame: object) -> None:
        pool.stop()  # pool.json says the workers stopped; they go with the zygote
        sys.stdout.flush()
        os._exit(128 + signum)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGHUP, on_signal)
    pool.start()

    class Backend(PoolBackend):
        pass

    Backend.pool = pool
    fi.install_simulation_backend(Backend)
    logging.getLogger("flwr").addFilter(QuietDeprecation())

    server_app = ServerApp()

    @server_app.main()
    def _main(grid: Grid, context: Context) -> None:
        context.run_config = dict(run_config)  # the public API gives the ServerApp none
        fedcore.server_app.serve(grid, context)

    print(f"fedlaunch: simulation engine pid {os.getpid()}: {run_config['clients']} virtual "
          f"nodes, {pool.size} workers (zygote pid {zygote_pid})", flush=True)
    try:
        run_simulation(server_app=server_app, client_app=fedcore.client_app.app,
                       num_supernodes=int(run_config["clients"]), backend_name="fedlaunch",
                       backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0}})
    finally:
        pool.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
