"""Flower's Simulation Engine (Ray) against fedlaunch on the same app and run config, alternating.

    pip install -e ".[bench]"     # Ray, from flwr[simulation] at the pinned Flower release
    python bench/peer_sim.py [--clients 100 500 1000] [--repeats 3]
        [--fedlaunch PATH/bin/fedlaunch] [--fedlaunch-args "--engine simulation"] [--out DIR]

For each client count, `--repeats` pairs of runs, one after the other in one sitting:
  fedlaunch  `fedlaunch --headless` with its defaults (workers, GPUs, engine) plus the
             experiment's flags and --fedlaunch-args;
  ray        `flwr run APP peer --run-config FILE --stream` against Flower's managed local
             SuperLink (FLWR_HOME/config.toml: `address = ":local:"`, options.num-supernodes,
             options.backend.client-resources.num-cpus), which runs the Simulation Engine with
             its Ray backend. APP is the fedcore package that --fedlaunch runs, beside the pyproject
             fedlaunch writes; its run config is the first fedlaunch run's run_config.toml, with
             its own run folder: the ServerApp writes a byte-identical partitions.json (checked).
Experiment: real CIFAR-10 (--data-dir), --clients clients, IID, --sampled a round, the CNN and
its recipe, --local-epochs, --rounds, central evaluation after each round (fedcore's ServerApp).

Per run: wall time (launch to the command's exit), launch to the first client training (round 1's
`train_started` in metrics.jsonl), seconds per round after the first, peak PSS summed over every
process the run started (its tree, plus every process started since whose environment holds the
run's marker: Ray's daemons and the detached local SuperLink), their CPU seconds, what was still
running 3 s after the command exited (then stopped), accuracy per round. Prints a Markdown table
of the runs and one of the ranges; the raw figures go to OUT/peer_sim.json after every run.
"""

from __future__ import annotations

import argparse
import filecmp
import importlib.util
import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from importlib.metadata import version
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from peer_sim_parts import (  # noqa: E402
    MARKER,
    ProcessSet,
    flwr_home_config,
    peer_run_config,
    read_records,
    read_run_config,
    run_figures,
    summary,
    table,
    write_peer_app,
)

BIN = Path(sys.executable).parent
FLWR_ENV = {"FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1"}
# the helper commands run in the measured checkout leave nothing in it (no __pycache__, no index);
# they run in / so that `python -c` imports the checkout's fedcore, not one in the current folder
QUIET = {**FLWR_ENV, "PYTHONDONTWRITEBYTECODE": "1", "GIT_OPTIONAL_LOCKS": "0"}
FEDERATION = "peer"
SUPERLINK_TIMEOUT = "Failed to start local SuperLink within"
SETTLE = 3.0  # seconds after a command's exit before what it left running is named and stopped


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def python_of(script: Path) -> str:
    """The interpreter of a console script (its #! line), else this one."""
    try:
        first = script.read_bytes().split(b"\n", 1)[0].decode()
    except (OSError, UnicodeDecodeError):
        return sys.executable
    return first[2:].strip() if first.startswith("#!") and "python" in first else sys.executable


def checkout_of(python: str) -> tuple[Path, str]:
    """The fedcore package that `python` imports, and its checkout's commit (+ if changed)."""
    out = subprocess.run([python, "-c", "import fedcore, os; print(os.path.dirname(fedcore.__file__))"],
                         capture_output=True, text=True, env={**os.environ, **QUIET}, cwd="/")
    if out.returncode != 0:
        raise SystemExit(f"peer_sim: error: {python} cannot import fedcore: "
                         f"{out.stderr.strip().splitlines()[-1:]}")
    fedcore_dir = Path(out.stdout.strip())
    git = ["git", "-C", str(fedcore_dir.parent)]
    quiet = {**os.environ, **QUIET}
    head = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                          env=quiet)
    dirty = subprocess.run([*git, "status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True, env=quiet)
    commit = head.stdout.strip() or "?"
    return fedcore_dir, commit + (" + uncommitted changes" if dirty.stdout.strip() else "")


def warm_data(python: str, data_dir: str) -> None:
    """Decode the data set into fedcore's cache before the sitting, so no run pays for it."""
    code = ("import sys; from pathlib import Path; from fedcore.data import load_dataset; "
            "load_dataset('cifar10', Path(sys.argv[1]), log=lambda text: None)")
    subprocess.run([python, "-c", code, data_dir], check=False, env={**os.environ, **QUIET}, cwd="/")


def measure(side: str, run: str, clients: int, cmd: list[str], env: dict[str, str],
            folder: Path, out_dir: Path, args: argparse.Namespace) -> dict[str, Any]:
    """One run: start `cmd`, sample its process set until it exits, stop what it left."""
    marker = f"{uuid.uuid4().hex}"
    env = {**env, **FLWR_ENV, MARKER: marker}
    load = os.getloadavg()[0]
    print(f"# {time.strftime('%H:%M:%S')} {run}: {shlex.join(cmd)}", flush=True)
    with (folder / "run.log").open("wb") as log:
        launched = time.time()
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=folder,
                                start_new_session=True)
        procs = ProcessSet(proc.pid, f"{MARKER}={marker}")
        deadline = time.monotonic() + args.timeout
        try:
            while proc.poll() is None:
                procs.sample()
                if time.monotonic() > deadline:
                    print(f"# {run}: still running after {args.timeout:.0f} s: stopped", flush=True)
                    procs.stop()
                    break
                time.sleep(args.interval)
            rc = proc.wait()
            wall = time.time() - launched
            time.sleep(SETTLE)
            left = procs.stop()
        except BaseException:
            procs.stop(grace=2.0)
            proc.wait()
            raise
    records = read_records(out_dir / "metrics.jsonl")
    return {"run": run, "side": side, "clients": clients, "load": load, "rc": rc,
            "wall_s": round(wall, 2), "peak_pss_kb": procs.peak_pss_kb,
            "peak_procs": procs.peak_procs, "cpu_s": round(procs.cpu_seconds(), 1),
            "processes": len(procs.members), "left_after_exit": left, "command": cmd,
            "folder": str(folder), **run_figures(records, launched)}


def fedlaunch_cmd(args: argparse.Namespace, clients: int, out: Path) -> list[str]:
    return [args.fedlaunch, "--headless", "--out", str(out), "--dataset", "cifar10",
            "--data-dir", args.data_dir, "--clients", str(clients), "--partition", args.partition,
            "--fraction-train", repr(args.sampled / clients), "--model", args.model,
            "--rounds", str(args.rounds), "--local-epochs", str(args.local_epochs),
            *shlex.split(args.fedlaunch_args)]


def ray_run(args: argparse.Namespace, run: str, clients: int, folder: Path, fedcore_dir: Path,
            base_config: dict[str, Any]) -> dict[str, Any]:
    home, out = folder / "flwr-home", folder / "run"
    home.mkdir(parents=True)
    (home / "config.toml").write_text(
        flwr_home_config(FEDERATION, clients, args.ray_num_cpus, args.ray_num_gpus), encoding="utf-8")
    app = write_peer_app(folder / "app", fedcore_dir, peer_run_config(base_config, out))
    ray_tmp = Path(tempfile.mkdtemp(prefix="psr-"))  # Ray's session folder: short socket paths
    env = {**os.environ, "FLWR_HOME": str(home), "RAY_TMPDIR": str(ray_tmp),
           "PATH": os.pathsep.join([str(BIN), os.environ.get("PATH", "")]),
           "FLWR_LOCAL_SUPERLINK_HTTP_API_PORT": str(free_port()),
           "FLWR_LOCAL_CONTROL_API_PORT": str(free_port())}
    cmd = [str(BIN / "flwr"), "run", str(app), FEDERATION, "--run-config",
           str(folder / "run_config.toml"), "--stream"]
    try:
        return measure("ray", run, clients, cmd, env, folder, out, args)
    finally:
        subprocess.run(["rm", "-rf", str(ray_tmp)], check=False)


def ray_run_retried(args: argparse.Namespace, run: str, clients: int, folder: Path,
                    fedcore_dir: Path, base_config: dict[str, Any]) -> dict[str, Any]:
    """A Ray run, started again (in a fresh folder; the failed one is kept beside it) when Flower's
    managed local SuperLink did not answer within its fixed 15 s, as on a loaded machine."""
    for attempt in range(args.superlink_retries + 1):
        row = ray_run(args, run, clients, folder, fedcore_dir, base_config)
        log = (folder / "run.log").read_text(errors="replace")
        if row["rc"] == 0 or SUPERLINK_TIMEOUT not in log or attempt == args.superlink_retries:
            break
        print(f"# {run}: {SUPERLINK_TIMEOUT}; once more", flush=True)
        folder.rename(folder.with_name(f"{folder.name}-superlink-timeout-{attempt + 1}"))
        folder.mkdir()
    row["superlink_start_failures"] = attempt
    return row


def stop_on(signum: int, frame: object) -> None:
    """SIGTERM and SIGHUP stop the sitting as Ctrl+C does: the run in progress is stopped."""
    raise KeyboardInterrupt


def main() -> None:
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):  # SIGINT too: a shell's `cmd &`
        signal.signal(sig, stop_on)                             # starts it ignored
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, nargs="+", default=[100])
    parser.add_argument("--repeats", type=int, default=3, help="pairs of runs per client count")
    parser.add_argument("--sampled", type=int, default=10, help="clients trained per round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--local-epochs", type=int, default=1)
    parser.add_argument("--model", default="cnn")
    parser.add_argument("--partition", default="iid")
    parser.add_argument("--data-dir", default=str(Path.home() / ".cache/fedlaunch/cifar10-images"))
    parser.add_argument("--fedlaunch", default=str(BIN / "fedlaunch"))
    parser.add_argument("--fedlaunch-args", default="", help="more flags, e.g. '--engine simulation'")
    parser.add_argument("--ray-num-cpus", type=float, default=1.0,
                        help="options.backend.client-resources.num-cpus (CPUs per Ray actor)")
    parser.add_argument("--ray-num-gpus", type=float, default=0.0)
    parser.add_argument("--superlink-retries", type=int, default=2,
                        help="Ray runs started again when Flower's local SuperLink does not start in 15 s")
    parser.add_argument("--sides", nargs="+", choices=["fedlaunch", "ray"], default=["fedlaunch", "ray"])
    parser.add_argument("--interval", type=float, default=0.5, help="seconds between PSS samples")
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds a run may take")
    parser.add_argument("--out", help="folder for the runs and peer_sim.json (default: a new one in /tmp)")
    args = parser.parse_args()
    problems = [
        (min(args.clients) < 2, "--clients must be at least 2"),
        (args.repeats < 1 or args.rounds < 2, "--repeats must be at least 1 and --rounds 2"),
        (not 1 <= args.sampled <= min(args.clients), "--sampled must be 1 to the fewest --clients"),
        (not os.access(args.fedlaunch, os.X_OK), f"--fedlaunch {args.fedlaunch}: not an executable"),
        (not Path(args.data_dir, "train").is_dir(),
         f"--data-dir {args.data_dir}: no train/ (extract ../shared/data/cifar10-images.tar there)"),
        ("ray" in args.sides and importlib.util.find_spec("ray") is None,
         "Ray is not installed here: pip install -e '.[bench]'"),
    ]
    for bad, why in problems:
        if bad:
            print(f"peer_sim: error: {why}", file=sys.stderr)
            raise SystemExit(2)
    out = Path(args.out or tempfile.mkdtemp(prefix="peer-sim-")).resolve()
    out.mkdir(parents=True, exist_ok=True)
    python = python_of(Path(args.fedlaunch))
    fedcore_dir, commit = checkout_of(python)
    header = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "cpus": os.cpu_count(),
        "load": os.getloadavg(), "fedlaunch": args.fedlaunch, "fedlaunch_args": args.fedlaunch_args,
        "fedcore": str(fedcore_dir), "commit": commit,
        "flwr": version("flwr"), "ray": version("ray") if "ray" in args.sides else None,
        "command": shlex.join([sys.executable, *sys.argv]),
    }
    print(f"# {json.dumps(header)}", flush=True)
    warm_data(python, args.data_dir)
    rows: list[dict[str, Any]] = []

    def save() -> None:
        (out / "peer_sim.json").write_text(json.dumps({**header, "runs": rows}, indent=1))

    for clients in args.clients:
        base: dict[str, Any] | None = None
        partitions: Path | None = None
        for i in range(1, args.repeats + 1):
            for side in args.sides:
                folder = out / f"{side}-{clients}-{i}"
                folder.mkdir(parents=True)
                if side == "fedlaunch":
                    row = measure("fedlaunch", folder.name, clients,
                                  fedlaunch_cmd(args, clients, folder / "run"), dict(os.environ),
                                  folder, folder / "run", args)
                    row["commit"] = checkout_of(python)[1]  # the checkout may change meanwhile
                    if base is None and row["rc"] == 0:
                        base, partitions = read_run_config(folder / "run"), folder / "run/partitions.json"
                else:
                    if base is None:
                        base = fallback_config(args, clients, python)
                    row = ray_run_retried(args, folder.name, clients, folder, fedcore_dir, base)
                    mine = folder / "run/partitions.json"
                    row["partitions_identical"] = (partitions is not None and mine.is_file()
                                                   and filecmp.cmp(partitions, mine, shallow=False))
                rows.append(row)
                save()
                print(table([row]).splitlines()[-1], flush=True)
    print(f"\n{table(rows)}\n\n{summary(rows)}\n\nraw figures: {out / 'peer_sim.json'}")


def fallback_config(args: argparse.Namespace, clients: int, python: str) -> dict[str, Any]:
    """The run config fedlaunch would write, from its fedcore (when only the Ray side runs)."""
    layers = {"dataset": "cifar10", "data-dir": args.data_dir, "clients": clients,
              "partition": args.partition, "fraction-train": args.sampled / clients,
              "model": args.model, "rounds": args.rounds, "local-epochs": args.local_epochs}
    code = ("import json, sys; from fedcore.config import from_layers; "
            "print(json.dumps(from_layers([('peer_sim', json.loads(sys.argv[1]))]).to_run_config()))")
    done = subprocess.run([python, "-c", code, json.dumps(layers)], capture_output=True, text=True,
                          check=True, env={**os.environ, **QUIET}, cwd="/")
    return dict(json.loads(done.stdout))


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:  # the run in progress and what it started are stopped
        print("peer_sim: stopped; the runs done so far are in peer_sim.json", file=sys.stderr)
        raise SystemExit(130) from None
