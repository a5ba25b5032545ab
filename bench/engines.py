"""Both engines side by side on one experiment, alternating, in one sitting.

    python bench/engines.py --pairs 2 -- --clients 100 --partition iid --fraction-train 0.1 \
        --model cnn --rounds 5 --data-dir ~/.cache/fedlaunch/cifar10-images --gpus cpu

Runs `fedlaunch --headless --engine E ARGS` for E = simulation, deployment, simulation, ...
(`--pairs` of each; `--side NAME="FLAGS"`, given twice or more, compares other sides instead,
e.g. --side k2="--engine simulation --workers 2" --side k4="--engine simulation --workers 4")
and prints per run: exit code, wall seconds, seconds from start to the first
client training (round 1's earliest `train_started`), seconds per round (all, and rounds 2+),
peak PSS of the whole process tree (summed over every descendant, sampled every 0.5 s), the
CPU seconds of the tree, and test accuracy per round. The run folders stay under --keep.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil

FEDLAUNCH = Path(sys.executable).parent / "fedlaunch"
ENV = {"FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1"}


def tree(root: psutil.Process) -> list[psutil.Process]:
    try:
        return [root, *root.children(recursive=True)]
    except psutil.Error:
        return []


def sample(procs: list[psutil.Process], cpu: dict[int, float]) -> int:
    """PSS of `procs` in bytes; their CPU seconds are kept in `cpu` (last reading per pid)."""
    total = 0
    for proc in procs:
        try:
            total += int(proc.memory_full_info().pss)
            times = proc.cpu_times()
            cpu[proc.pid] = times.user + times.system
        except psutil.Error:
            continue
    return total


def one(engine: str, args: list[str], out: Path) -> dict[str, Any]:
    started = time.time()
    proc = subprocess.Popen([str(FEDLAUNCH), "--headless", "--out", str(out), *args],
                            env={**os.environ, **ENV}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
    root = psutil.Process(proc.pid)
    peak, cpu = 0, {}
    while proc.poll() is None:
        peak = max(peak, sample(tree(root), cpu))
        time.sleep(0.5)
    wall = time.time() - started
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    rounds = [r for r in records if r.get("event") == "round"]
    first = rounds[0].get("train_started") if rounds else None
    seconds = [float(r["seconds"]) for r in rounds]
    return {"engine": engine, "rc": proc.returncode, "wall": round(wall, 1),
            "first_training": round(float(first) - started, 1) if first else None,
            "s_per_round": round(statistics.mean(seconds), 2) if seconds else None,
            "s_per_round_2plus": round(statistics.mean(seconds[1:]), 2) if len(seconds) > 1 else None,
            "peak_pss_gb": round(peak / 1e9, 2), "cpu_s": round(sum(cpu.values()), 1),
            "accuracy": [round(float(r["accuracy"]), 4) for r in rounds]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pairs", type=int, default=2)
    parser.add_argument("--keep", default="", help="folder for the run folders (default: a temp one)")
    parser.add_argument("--side", action="append", default=[], metavar='NAME="FLAGS"',
                        help="a side to compare (default: the two engines)")
    parser.add_argument("args", nargs="*", help="after --: fedlaunch flags for every run")
    ns = parser.parse_args()
    keep = Path(ns.keep or tempfile.mkdtemp(prefix="engines-"))
    keep.mkdir(parents=True, exist_ok=True)
    sides = dict(side.split("=", 1) for side in ns.side) or {
        engine: f"--engine {engine}" for engine in ("simulation", "deployment")}
    results = []
    for pair in range(ns.pairs):
        for name, flags in sides.items():
            result = one(name, [*shlex.split(flags), *ns.args], keep / f"{name}-{pair}")
            results.append(result)
            print(json.dumps(result), flush=True)
    for engine in sides:
        mine = [r for r in results if r["engine"] == engine and r["rc"] == 0]
        if mine:
            print(f"{engine}: wall {min(r['wall'] for r in mine)}-{max(r['wall'] for r in mine)} s, "
                  f"first training {min(r['first_training'] or 0 for r in mine)}-"
                  f"{max(r['first_training'] or 0 for r in mine)} s, peak PSS "
                  f"{min(r['peak_pss_gb'] for r in mine)}-{max(r['peak_pss_gb'] for r in mine)} GB "
                  f"({len(mine)} runs)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
