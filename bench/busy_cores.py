"""torch's OpenMP wait in fedlaunch's children, on idle cores and beside one busy core.

    python bench/busy_cores.py [--pairs 2] [--limit-train 10000] [--data-dir DIR]
        [--settings unset GOMP_SPINCOUNT=1000 ...]

First `fedlaunch --local --model cnn --epochs 1 --limit-train N --headless` once (it writes the
run folder's config.json and warms the data cache). Then, per pair and per machine state (idle;
one core spun by `python -c "while True: pass"`), the trainer process the launcher starts for
--local, `python -m fedcore.local RUN` in its own session, on a copy of that config, once per
OpenMP setting, in alternating order: "unset" (OpenMP's default: a waiting thread spins a long
while) or NAME=VALUE. Prints the wall clock of each and the trainer's own wall_seconds from its
summary.json; asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BIN = Path(sys.executable).parent
OPENMP = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")
HOG = [sys.executable, "-c", "while True: pass"]  # started in this bench's session


def trainer(config: Path, folder: Path, setting: str) -> tuple[float, float]:
    """Wall seconds of `python -m fedcore.local` on a copy of `config` with the OpenMP `setting`
    ("unset", or NAME=VALUE), and the trainer's own wall_seconds."""
    folder.mkdir(parents=True)
    shutil.copy(config, folder / "config.json")
    env = {k: v for k, v in os.environ.items() if k not in OPENMP}
    if setting != "unset":
        name, _, value = setting.partition("=")
        env[name] = value
    started = time.monotonic()
    # in its own session, as the launcher starts every child: with the kernel's autogroups
    # (sched_autogroup_enabled) a session shares the CPU with the busy core's session as a group
    subprocess.run([sys.executable, "-m", "fedcore.local", str(folder)], env=env, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd="/",
                   start_new_session=True)
    wall = time.monotonic() - started
    summary = json.loads((folder / "summary.json").read_text())
    return wall, float(summary["wall_seconds"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pairs", type=int, default=2)
    parser.add_argument("--settings", nargs="+", default=["unset", "OMP_WAIT_POLICY=PASSIVE"],
                        help="OpenMP settings to compare: unset, or NAME=VALUE")
    parser.add_argument("--limit-train", type=int, default=10_000)
    parser.add_argument("--data-dir", default=str(Path.home() / ".cache/fedlaunch/cifar10-images"))
    args = parser.parse_args()
    out = Path(tempfile.mkdtemp(prefix="busy-cores-"))
    base = out / "base"
    subprocess.run([str(BIN / "fedlaunch"), "--local", "--model", "cnn", "--epochs", "1",
                    "--limit-train", str(args.limit_train), "--data-dir", args.data_dir,
                    "--headless", "--out", str(base)], check=True, stdout=subprocess.DEVNULL)
    print(f"{os.cpu_count()} cores; load average at the start {os.getloadavg()[0]:.1f}; "
          f"one CNN epoch on {args.limit_train} images, then the 10,000 test images")
    print("| pair | machine | OpenMP setting | wall s | trainer s (summary.json wall_seconds) |")
    print("|---|---|---|---|---|")
    results: dict[tuple[str, str], list[float]] = {}
    for pair in range(1, args.pairs + 1):
        for machine in ("idle", "one busy core"):
            hog = subprocess.Popen(HOG) if machine != "idle" else None
            try:
                order = args.settings if pair % 2 else args.settings[::-1]
                for i, setting in enumerate(order):
                    folder = out / f"{pair}-{machine.replace(' ', '-')}-{i}"
                    wall, training = trainer(base / "config.json", folder, setting)
                    results.setdefault((machine, setting), []).append(wall)
                    print(f"| {pair} | {machine} | {setting} | {wall:.1f} | {training:.1f} |",
                          flush=True)
            finally:
                if hog is not None:
                    hog.kill()
                    hog.wait()
    for machine in ("idle", "one busy core"):
        print(f"{machine}: " + ", ".join(
            f"{setting} {min(walls):.1f}-{max(walls):.1f} s"
            for (where, setting), walls in results.items() if where == machine))
    shutil.rmtree(out, ignore_errors=True)


if __name__ == "__main__":
    main()
