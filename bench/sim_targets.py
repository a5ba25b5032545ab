"""The simulation engine's two speed targets, measured on this machine; prints figures, asserts none.

    python bench/sim_targets.py overhead -- FEDLAUNCH-ARGS...    (a) rounds 2+ against bare training
    python bench/sim_targets.py overhead --run-dir RUN           (a) from a finished run's folder
    python bench/sim_targets.py local [--pairs 2]                (b) 2 clients x 3 rounds against --local

(a) For each round after the first: its `collect_seconds` (round start to the last reply, from
metrics.jsonl) and its `seconds` (round start to the next round's start) against the bare
training time of its tasks on the K workers: per worker, the sum of its tasks' `seconds` (the
ClientApp's own training time, workers.jsonl), and the largest of those sums (the round's
training, had nothing else cost anything). Target: at most 1.15x.

(b) `fedlaunch --headless --gpus cpu --dataset synthetic --model cnn --clients 2 --rounds 3
--partition iid` (its 10,000 synthetic images, 5,000 each: the synthetic set has 10,000; there
is no flag to make more) against `fedlaunch --local --epochs 3` on the same 10,000, alternating,
wall clock of each command, and each one's training seconds. Target: at most 1.5x.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

BIN = Path(sys.executable).parent
ENV = {"FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1"}
COMMON = ["--headless", "--gpus", "cpu", "--dataset", "synthetic", "--model", "cnn", "--seed", "1"]


def records(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def launch(args: list[str], out: Path) -> float:
    """Run `fedlaunch ARGS --out OUT`; its wall seconds (it must succeed)."""
    started = time.monotonic()
    result = subprocess.run([str(BIN / "fedlaunch"), *args, "--out", str(out)],
                            env={**os.environ, **ENV}, capture_output=True, text=True, check=False)
    if result.returncode:
        sys.exit(f"fedlaunch {' '.join(args)} exited {result.returncode}: {result.stderr[-2000:]}")
    return time.monotonic() - started


def overhead(run_dir: Path) -> None:
    rounds = {int(r["round"]): r for r in records(run_dir / "metrics.jsonl")
              if r.get("event") == "round"}
    per_worker: dict[int, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    spans: dict[int, dict[str, list[float]]] = defaultdict(dict)  # first taken, last sent
    for task in records(run_dir / "workers.jsonl"):
        if task.get("type") == "train" and task.get("seconds") is not None:
            number, worker = int(task["round"]), str(task["worker"])
            per_worker[number][worker] += float(task["seconds"])
            span = spans[number].setdefault(worker, [task["taken"], task["sent"]])
            span[0], span[1] = min(span[0], task["taken"]), max(span[1], task["sent"])
    print(f"{run_dir}: round | collect s | round s | bare training s (max over workers of "
          f"their tasks' training) | workers busy s (max over workers, first task taken to last "
          f"reply sent) | previous round's central evaluation s (runs meanwhile) | collect / bare "
          f"| round / bare | busy / bare")
    ratios = []
    for number in sorted(rounds)[1:]:
        r, workers = rounds[number], per_worker.get(number, {})
        if not workers:
            continue
        bare = max(workers.values())
        busy = max(last - first for first, last in spans[number].values())
        evaluating = rounds.get(number - 1, {}).get("evaluate_seconds", float("nan"))
        ratios.append((r["collect_seconds"] / bare, r["seconds"] / bare, busy / bare))
        print(f"  {number} | {r['collect_seconds']:.2f} | {r['seconds']:.2f} | {bare:.2f} "
              f"({len(workers)} workers) | {busy:.2f} | {evaluating:.2f} | {ratios[-1][0]:.2f}x | "
              f"{ratios[-1][1]:.2f}x | {ratios[-1][2]:.2f}x")
    if ratios:
        def span(i: int) -> str:
            return f"{min(r[i] for r in ratios):.2f}-{max(r[i] for r in ratios):.2f}x"
        print(f"  rounds 2+: collect / bare {span(0)}, round / bare {span(1)}, workers busy / bare "
              f"{span(2)} (target <= 1.15x)")


def train_seconds(run_dir: Path, event: str) -> float:
    """The training seconds a run's records report: the local run's epochs, or the federated
    run's tasks (workers.jsonl), summed."""
    if event == "epoch":
        return sum(float(r.get("seconds", 0.0)) for r in records(run_dir / "metrics.jsonl")
                   if r.get("event") == "epoch")
    return sum(float(t.get("seconds") or 0.0) for t in records(run_dir / "workers.jsonl"))


def local_pairs(pairs: int) -> None:
    federated = [*COMMON, "--clients", "2", "--rounds", "3", "--partition", "iid",
                 "--fraction-train", "1.0"]
    local = [*COMMON, "--local", "--epochs", "3"]
    print(f"load average at the start: {os.getloadavg()[0]:.1f}")
    with tempfile.TemporaryDirectory(prefix="sim-targets-") as tmp:
        for n in range(1, pairs + 1):
            fed_wall = launch(federated, Path(tmp) / f"fed-{n}")
            local_wall = launch(local, Path(tmp) / f"local-{n}")
            fed_train = train_seconds(Path(tmp) / f"fed-{n}", "round")
            local_train = train_seconds(Path(tmp) / f"local-{n}", "epoch")
            print(f"pair {n}: 2 clients x 3 rounds {fed_wall:.1f} s wall (tasks' training "
                  f"{fed_train:.1f} s over 2 workers) | --local 3 epochs {local_wall:.1f} s wall "
                  f"(epochs {local_train:.1f} s) | ratio {fed_wall / local_wall:.2f}x "
                  f"(target <= 1.5x)")
            if n == 1:
                overhead(Path(tmp) / f"fed-{n}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=["overhead", "local"])
    parser.add_argument("--run-dir", type=Path)
    parser.add_argument("--pairs", type=int, default=2)
    argv = sys.argv[1:]
    cut = argv.index("--") if "--" in argv else len(argv)
    args = parser.parse_args(argv[:cut])
    flags = argv[cut + 1:]  # fedlaunch's
    if args.what == "local":
        local_pairs(args.pairs)
    elif args.run_dir is not None:
        overhead(args.run_dir)
    else:
        with tempfile.TemporaryDirectory(prefix="sim-targets-") as tmp:
            wall = launch(["--headless", *flags], Path(tmp) / "run")
            print(f"fedlaunch --headless {' '.join(flags)}: {wall:.1f} s")
            overhead(Path(tmp) / "run")


if __name__ == "__main__":
    main()
