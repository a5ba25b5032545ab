"""The worker pool's client-count scan: N clients on K workers, against K bare processes.

    python bench/pool_scan.py --clients 8 32 100 --workers 2 [--fraction-train 0.25] [--rounds 3]

For each N, one real `fedlaunch --clients N --workers K --gpus cpu` run (synthetic data, CNN),
sampled every second, and K bare processes training the same number of images. Prints a row:
  connected  seconds from launch until the SuperLink had all N clients (the 'nodes' record)
  peak PSS   of every process of the run together (from /proc/<pid>/smaps_rollup), and per
             idle client endpoint (median, at the moment all were connected) with its CPU seconds
  overhead   per task, median over train tasks (workers.jsonl): the task's message whole at its
             SuperNode -> training starts (the ClientApp's own set-up included), less the time it
             queued for a busy worker (shown apart), plus training ends -> the reply accepted by
             the SuperLink. The SuperLink -> SuperNode transfer before it is shown apart too.
  P1         fedlaunch's training images/s over its rounds / K bare processes' images/s
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1"}


def pss(pid: int) -> int:
    """Proportional set size in bytes (0 when the process is gone)."""
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def tree(root: psutil.Process) -> list[psutil.Process]:
    try:
        return [root, *root.children(recursive=True)]
    except psutil.Error:
        return [root]


def endpoints(procs: list[psutil.Process]) -> list[psutil.Process]:
    """The forked client endpoints: children of the client host with its command line."""
    hosts = {p.pid for p in procs if "launcher.shim.clienthost" in " ".join(_cmd(p))}
    out = []
    for p in procs:
        try:
            if p.ppid() in hosts:
                out.append(p)
        except psutil.Error:
            continue
    return out


def _cmd(p: psutil.Process) -> list[str]:
    try:
        return p.cmdline()
    except psutil.Error:
        return []


def all_connected(out: Path) -> float | None:
    try:
        lines = (out / "metrics.jsonl").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if record.get("event") == "nodes" and "round" not in record and \
                len(record.get("connected", ())) >= int(record.get("expected", 1 << 30)):
            return float(record["time"])
    return None


def run_pool(args: argparse.Namespace, clients: int, out: Path) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "launcher.cli", "--headless", "--engine", "deployment",
           "--out", str(out), "--gpus", "cpu",
           "--clients", str(clients), "--workers", str(args.workers), "--rounds", str(args.rounds),
           "--fraction-train", str(args.fraction_train), "--dataset", "synthetic", "--model",
           "cnn", "--partition", "iid", "--limit-train", str(args.images_per_client * clients),
           "--limit-test", "500", "--round-timeout", "300"]
    launched = time.time()
    proc = subprocess.Popen(cmd, cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    root = psutil.Process(proc.pid)
    peak, client_pss, client_cpu = 0, [], []
    while proc.poll() is None:
        procs = tree(root)
        peak = max(peak, sum(pss(p.pid) for p in procs))
        if not client_pss and all_connected(out) is not None:
            eps = endpoints(procs)
            client_pss = [pss(p.pid) for p in eps]
            for p in eps:
                try:
                    t = p.cpu_times()
                    client_cpu.append(t.user + t.system)
                except psutil.Error:
                    pass
        time.sleep(1.0)
    if proc.returncode != 0:
        raise SystemExit(f"fedlaunch --clients {clients} exited {proc.returncode}; see {out}")
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    rounds = [m for m in metrics if m["event"] == "round"]
    starts = [m for m in metrics if m["event"] == "round_start"]
    tasks = [json.loads(line) for line in (out / "workers.jsonl").read_text().splitlines()]
    train = [t for t in tasks if t.get("type") == "train" and t.get("status") == "completed"
             and t.get("sent") and t.get("app_start") and t.get("seconds") and t.get("taken")]
    if not train:
        statuses = sorted({str(t.get("status")) for t in tasks})
        raise SystemExit(f"fedlaunch --clients {clients}: no completed train task ({statuses}); "
                         f"see {out}")
    queued = [t["taken"] - t["acquired"] for t in train]
    arrived = [t.get("received") or t["created"] for t in train]
    dispatch = [t["app_end"] - t["seconds"] - a - q for t, a, q in zip(train, arrived, queued,
                                                                          strict=True)]
    back = [t["sent"] - t["app_end"] for t in train]
    transfer = [a - t["created"] for t, a in zip(train, arrived, strict=True)]
    span = rounds[-1]["time"] - starts[0]["time"]
    return {
        "clients": clients,
        "connected_s": (all_connected(out) or launched) - launched,
        "peak_pss_mb": peak / 1e6,
        "client_pss_mb": statistics.median(client_pss) / 1e6 if client_pss else float("nan"),
        "client_cpu_s": statistics.median(client_cpu) if client_cpu else float("nan"),
        "overhead_ms": statistics.median(d + b for d, b in zip(dispatch, back, strict=True)) * 1000,
        "dispatch_ms": statistics.median(dispatch) * 1000,
        "return_ms": statistics.median(back) * 1000,
        "queued_ms": statistics.median(queued) * 1000,
        "transfer_ms": statistics.median(transfer) * 1000,
        "tasks": len(train),
        "images_per_s": rounds[-1]["train_images"] / span,
        "images": rounds[-1]["train_images"],
    }


def run_bare(args: argparse.Namespace, images: int) -> float:
    """K bare processes (bench.py's loop, no Flower) training `images` images in all: images/s."""
    per_round = max(args.workers, images // args.rounds)
    cmd = [sys.executable, str(ROOT / "bench" / "bench.py"), "--clients", str(args.workers),
           "--rounds", str(args.rounds), "--model", "cnn", "--dataset", "synthetic",
           "--limit-train", str(per_round)]
    threads = str(max(1, (os.cpu_count() or 1) // args.workers))
    env = {**ENV, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}
    procs = [subprocess.Popen([*cmd[:2], "--bare-worker", str(i), *cmd[2:]], cwd=ROOT, env=env,
                              stdout=subprocess.PIPE, text=True) for i in range(args.workers)]
    results = [json.loads(p.communicate()[0].strip().splitlines()[-1]) for p in procs]
    wall = max(r["end"] for r in results) - min(r["start"] for r in results)
    return sum(r["images"] for r in results) / wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, nargs="+", default=[8, 32, 100])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--fraction-train", type=float, default=0.25)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--images-per-client", type=int, default=100)
    parser.add_argument("--keep", help="keep each run folder under this folder")
    args = parser.parse_args()
    print(f"# {time.strftime('%Y-%m-%d %H:%M')} CPU x{os.cpu_count()}, load "
          f"{os.getloadavg()[0]:.1f}; {' '.join(sys.argv[1:])}")
    print("| clients | workers | all connected | peak PSS (run) | per idle client PSS / CPU | "
          "per-task overhead (dispatch + return) | queued for a worker | SuperLink -> SuperNode | "
          "fedlaunch img/s | bare img/s | P1 |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for clients in args.clients:
            r = run_pool(args, clients, Path(args.keep or tmp) / f"n{clients}")
            bare = run_bare(args, int(r["images"]))
            print(f"| {clients} | {args.workers} | {r['connected_s']:.1f} s | "
                  f"{r['peak_pss_mb']:.0f} MB | {r['client_pss_mb']:.1f} MB / "
                  f"{r['client_cpu_s']:.2f} s | {r['overhead_ms']:.0f} ms ({r['dispatch_ms']:.0f} + "
                  f"{r['return_ms']:.0f}), {r['tasks']} tasks | {r['queued_ms']:.0f} ms | "
                  f"{r['transfer_ms']:.0f} ms | {r['images_per_s']:.0f} | "
                  f"{bare:.0f} | {r['images_per_s'] / bare:.2f} |", flush=True)


if __name__ == "__main__":
    main()
