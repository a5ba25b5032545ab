"""Soak: a long run of a tiny model on CPU; the launcher's memory and open files must stay flat.

    python bench/soak.py [--rounds 200] [--clients 2]

Samples the fedlaunch process (RSS, open files, threads) after round 1 and at every 10th round,
counts zombie children, and prints the first and last samples and the run's outcome.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]


def rounds_done(out: Path) -> int:
    path = out / "metrics.jsonl"
    if not path.exists():
        return 0
    return sum(1 for line in path.read_text().splitlines() if '"event": "round"' in line)


def sample(proc: psutil.Process) -> dict[str, float]:
    with proc.oneshot():
        children = proc.children(recursive=True)
        zombies = sum(1 for c in children if c.status() == psutil.STATUS_ZOMBIE)
        return {"rss_mib": proc.memory_info().rss / 2**20, "open_files": proc.num_fds(),
                "threads": proc.num_threads(), "children": len(children), "zombies": zombies}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--clients", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "soak"
        env = {**os.environ, "FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1"}
        started = time.time()
        proc = subprocess.Popen(
            [sys.executable, "-m", "launcher.cli", "--headless", "--out", str(out),
             "--clients", str(args.clients), "--rounds", str(args.rounds), "--dataset", "synthetic",
             "--model", "cnn", "--limit-train", "256", "--limit-test", "128", "--batch-size", "64"],
            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        watched = psutil.Process(proc.pid)
        samples: list[tuple[int, dict[str, float]]] = []
        max_zombies, next_mark = 0, 1
        while proc.poll() is None:
            done = rounds_done(out)
            try:
                now = sample(watched)
            except psutil.Error:
                break
            max_zombies = max(max_zombies, int(now["zombies"]))
            if done >= next_mark:
                samples.append((done, now))
                next_mark = 1 if done < 1 else (done // 10 + 1) * 10
            time.sleep(0.5)
        code = proc.wait()
        summary = json.loads((out / "summary.json").read_text()) if (out / "summary.json").exists() else {}
    wall = time.time() - started
    print(f"soak: {args.rounds} rounds x {args.clients} clients, exit {code}, "
          f"{summary.get('rounds_completed')} rounds completed in {wall:.0f} s")
    print("round  rss_mib  open_files  threads  children  zombies")
    for done, s in samples:
        print(f"{done:>5}  {s['rss_mib']:7.1f}  {s['open_files']:10.0f}  {s['threads']:7.0f}  "
              f"{s['children']:8.0f}  {s['zombies']:7.0f}")
    if samples:
        first, last = samples[0][1], samples[-1][1]
        print(f"launcher memory {first['rss_mib']:.1f} -> {last['rss_mib']:.1f} MiB, open files "
              f"{first['open_files']:.0f} -> {last['open_files']:.0f}, most zombies seen {max_zombies}")


if __name__ == "__main__":
    main()
