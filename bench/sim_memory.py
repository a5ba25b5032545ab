"""Peak PSS of a simulation-engine run's process tree, split into the host, the zygote and workers.

    python bench/sim_memory.py [--every S] -- FEDLAUNCH-ARGS...
    python bench/sim_memory.py -- --headless --gpus cpu --dataset synthetic --clients 20 --rounds 2

Starts `fedlaunch FEDLAUNCH-ARGS --out <temp>` (the engine is the default, simulation), samples
/proc/PID/smaps_rollup of every process of the run every S seconds (bench/peer_sim_parts), and
prints at the peak of the engine's processes (the simulation host, the zygote, the workers; the
launcher's own memory is left out of the peak, not of the figures): each one's PSS.
PSS divides a page shared by n processes among them, so pages the workers share copy-on-write
with the zygote count once in the total.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from peer_sim_parts import MARKER, ProcessSet, name_of, pss_kb, stat_of  # noqa: E402

BIN = Path(sys.executable).parent
ENGINE = ("host", "zygote", "worker")  # the simulation engine's processes


def roles(pids: list[int]) -> dict[int, str]:
    """pid -> fedlaunch / host / zygote / worker / other, from the parent links."""
    parent = {pid: s[0] for pid in pids if (s := stat_of(pid))}
    host = {pid for pid in pids if name_of(pid) == "launcher.shim.simhost"
            and name_of(parent.get(pid, 0)) != "launcher.shim.simhost"}
    zygote = {pid for pid in pids if parent.get(pid) in host}
    named = {}
    for pid in pids:
        named[pid] = ("host" if pid in host else "zygote" if pid in zygote
                      else "worker" if parent.get(pid) in zygote
                      else "fedlaunch" if name_of(pid) == "fedlaunch" else "other")
    return named


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--every", type=float, default=0.25, help="seconds between samples")
    parser.add_argument("args", nargs=argparse.REMAINDER, help="fedlaunch's flags, after --")
    args = parser.parse_args()
    flags = [a for a in args.args if a != "--"]
    with tempfile.TemporaryDirectory(prefix="sim-memory-") as tmp:
        env = {**os.environ, MARKER: tmp, "FLWR_TELEMETRY_ENABLED": "0",
               "FLWR_DISABLE_UPDATE_CHECK": "1"}
        started = time.monotonic()
        proc = subprocess.Popen([str(BIN / "fedlaunch"), *flags, "--out", f"{tmp}/run"], env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        procs = ProcessSet(proc.pid, f"{MARKER}={tmp}")
        peak: dict[int, tuple[str, int]] = {}
        peak_total = 0
        while proc.poll() is None:
            live = procs.scan()
            sizes = {pid: pss_kb(pid) for pid in live}
            named = roles(live)
            engine = sum(kb for pid, kb in sizes.items() if named[pid] in ENGINE)
            if engine > peak_total:
                peak_total = engine
                peak = {pid: (named[pid], kb) for pid, kb in sizes.items()}
            time.sleep(args.every)
        wall = time.monotonic() - started
        if proc.returncode:
            sys.exit(f"fedlaunch exited with {proc.returncode}: {proc.stderr.read().decode()[-2000:]}"
                     if proc.stderr else f"fedlaunch exited with {proc.returncode}")
    by_role: dict[str, list[int]] = {}
    for role, kb in peak.values():
        by_role.setdefault(role, []).append(kb)
    print(f"fedlaunch {' '.join(flags)}: {wall:.1f} s")
    print(f"peak PSS of the simulation host, zygote and workers: {peak_total / 1024:,.0f} MiB "
          f"(the whole tree then: {sum(kb for _, kb in peak.values()) / 1024:,.0f} MiB in "
          f"{len(peak)} processes)")
    for role in ("fedlaunch", "host", "zygote", "worker", "other"):
        sizes = by_role.get(role, [])
        if sizes:
            print(f"  {role:9} {len(sizes)} x: " + ", ".join(f"{kb / 1024:,.0f}" for kb in sizes)
                  + f" MiB (sum {sum(sizes) / 1024:,.0f})")


if __name__ == "__main__":
    main()
