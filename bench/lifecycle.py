"""How fast the launcher starts and stops, and how heavy it is: figures measured side by side.

    python bench/lifecycle.py [--repeat 3] [--rounds 3] [--clients 2] [--limit-train N]
                              [--tree OLD_CHECKOUT ...]

Prints, for each repetition, all measured in this one run on this machine (synthetic data,
tutorial CNN, headless, CPU):
  dry-run   wall seconds of `fedlaunch --dry-run --clients 4`
  P4        seconds from launching a federated run to the first client starting to train
  exit      seconds from the last round's metrics line (federated) / last epoch's (local) to
            the command returning
  ratio     federated wall time (N clients, R rounds x 1 local epoch) / `--local --epochs R`
            wall time: the same R passes over the training set
  RSS       the launcher process's peak resident memory during the federated run (VmHWM)
then the range of each figure over the repetitions. With --tree (another checkout of the
project, e.g. `git archive OLD | tar -x -C /tmp/old`), each repetition measures every tree in
turn (PYTHONPATH points at it), so an old and a new launcher meet the same machine load.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FLWR_ENV = {"FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1"}


KEEP = Path(tempfile.gettempdir()) / "fedlaunch-lifecycle-failures"


def fedlaunch(*args: str) -> list[str]:
    return [sys.executable, "-m", "launcher.cli", *args]


def env(tree: Path) -> dict[str, str]:
    scripts = str(Path(sys.executable).parent)
    return {**os.environ, **FLWR_ENV, "PYTHONPATH": str(tree),
            "PATH": os.pathsep.join([scripts, os.environ.get("PATH", "")])}


def peak_rss_mib(pid: int) -> float | None:
    """The process's peak resident set (VmHWM) so far, in MiB; None once it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def run(tree: Path, args: list[str], out: Path, tries: int = 2) -> dict[str, float]:
    """Run fedlaunch headless to its end (again if it fails: a busy machine can starve Flower's
    start-up); wall time, exit time and the launcher's peak RSS."""
    for attempt in range(1, tries + 1):
        try:
            return run_once(tree, args, out.with_name(f"{out.name}-{attempt}"))
        except RuntimeError as exc:
            print(f"  (attempt {attempt} failed: {exc})", flush=True)
    raise SystemExit(f"fedlaunch {' '.join(args)} failed {tries} times; logs in {KEEP}")


def run_once(tree: Path, args: list[str], out: Path) -> dict[str, float]:
    peak = [0.0]
    launched = time.time()
    with (out.parent / f"{out.name}.log").open("wb") as log:
        proc = subprocess.Popen(fedlaunch(*args, "--headless", "--out", str(out)), cwd=tree,
                                env=env(tree), stdin=subprocess.DEVNULL, stdout=log,
                                stderr=subprocess.STDOUT)

        def sample() -> None:
            while proc.poll() is None:
                value = peak_rss_mib(proc.pid)
                if value is not None:
                    peak[0] = max(peak[0], value)
                time.sleep(0.05)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        code = proc.wait()
        exited = time.time()
        sampler.join()
    if code != 0:
        KEEP.mkdir(exist_ok=True)
        kept = KEEP / f"{out.name}-{int(launched)}.log"
        kept.write_bytes((out.parent / f"{out.name}.log").read_bytes())
        raise RuntimeError(f"exit {code}, log kept in {kept}")
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    done = [r for r in records if r.get("event") in ("round", "epoch")]
    result = {"wall": exited - launched, "exit": exited - done[-1]["time"], "rss": peak[0]}
    if done[0].get("train_started"):
        result["p4"] = done[0]["train_started"] - launched
    return result


def dry_run(tree: Path, folder: Path) -> float:
    started = time.time()
    subprocess.run(fedlaunch("--dry-run", "--clients", "4", "--gpus", "cpu", "--out", str(folder)),
                   cwd=tree, env=env(tree), check=True, capture_output=True)
    return time.time() - started


def span(values: list[float], fmt: str = ".2f") -> str:
    low, high = min(values), max(values)
    return f"{low:{fmt}}" if f"{low:{fmt}}" == f"{high:{fmt}}" else f"{low:{fmt}}-{high:{fmt}}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--clients", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--limit-train", type=int, default=0,
                        help="train on N images (default: the whole synthetic set, 10,000)")
    parser.add_argument("--tree", action="append", default=[], type=Path,
                        help="another checkout to measure in the same run (repeatable)")
    args = parser.parse_args()
    trees = [ROOT, *(t.resolve() for t in args.tree)]
    common = ["--dataset", "synthetic", "--model", "cnn", "--gpus", "cpu", "--partition", "iid"]
    if args.limit_train:
        common += ["--limit-train", str(args.limit_train), "--limit-test", "500"]
    head = subprocess.run(["git", "log", "-1", "--format=%h %s"], cwd=ROOT, capture_output=True,
                          text=True).stdout.strip()
    print(f"# {time.strftime('%Y-%m-%d %H:%M')} on {platform.node()} (CPU x{os.cpu_count()}, load "
          f"{os.getloadavg()[0]:.1f}); {ROOT} at {head[:60]} (+ uncommitted changes)")
    print(f"# {' '.join([Path(sys.argv[0]).name, *sys.argv[1:]])}")
    rows: dict[Path, list[dict[str, float]]] = {tree: [] for tree in trees}
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.repeat):
            for t, tree in enumerate(trees):
                folder = Path(tmp) / f"t{t}r{i}"
                folder.mkdir()
                dry = dry_run(tree, folder / "dry")
                fed = run(tree, [*common, "--clients", str(args.clients), "--rounds",
                                 str(args.rounds), "--local-epochs", "1"], folder / "fed")
                local = run(tree, [*common, "--local", "--epochs", str(args.rounds)],
                            folder / "local")
                row = {"dry": dry, "p4": fed.get("p4", float("nan")), "fed_exit": fed["exit"],
                       "local_exit": local["exit"], "fed": fed["wall"], "local": local["wall"],
                       "ratio": fed["wall"] / local["wall"], "rss": fed["rss"],
                       "local_rss": local["rss"]}
                rows[tree].append(row)
                print(f"[{i + 1}] {tree}: dry-run {dry:.2f} s | P4 {row['p4']:.1f} s | exit after "
                      f"last round {fed['exit']:.2f} s, after last epoch (local) "
                      f"{local['exit']:.2f} s | federated {fed['wall']:.1f} s / local "
                      f"{local['wall']:.1f} s = {row['ratio']:.2f} | launcher peak RSS "
                      f"{fed['rss']:.0f} MiB (local run {local['rss']:.0f} MiB) | load "
                      f"{os.getloadavg()[0]:.1f}", flush=True)
    for tree, tree_rows in rows.items():
        col = {key: [r[key] for r in tree_rows] for key in tree_rows[0]}
        print(f"{tree}: dry-run {span(col['dry'])} s (target <= 1); launcher peak RSS "
              f"{span(col['rss'], '.0f')} MiB (target <= 150); P4 {span(col['p4'], '.1f')} s; exit "
              f"after the last round {span(col['fed_exit'])} s, after the last local epoch "
              f"{span(col['local_exit'])} s (target <= 1.5); federated / local "
              f"{span(col['ratio'])} (target <= 1.25)")


if __name__ == "__main__":
    main()
