"""Start N torch children pinned to one GPU, check NVML sees them there, stop them: PASS/FAIL."""

from __future__ import annotations

import argparse
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from launcher.planning.gpus import GpuInfo, Nvml  # noqa: E402
from launcher.planning.placement import client_env  # noqa: E402

# Each child: report which GPU CUDA gave it, then multiply matrices until told to stop.
CHILD = r"""
import signal, sys, time
stop = False
def _stop(*_):
    global stop
    stop = True
signal.signal(signal.SIGTERM, _stop)
try:
    import torch
except ImportError as exc:
    print(f"error torch is not installed: {exc}", flush=True)
    sys.exit(3)
if not torch.cuda.is_available():
    print("error torch sees no CUDA device", flush=True)
    sys.exit(3)
props = torch.cuda.get_device_properties(0)
uuid = str(getattr(props, "uuid", "") or "")
a = torch.randn(2048, 2048, device="cuda")
b = torch.randn(2048, 2048, device="cuda")
torch.cuda.synchronize()
print(f"ready {torch.cuda.device_count()} {uuid} {props.name}", flush=True)
deadline = time.monotonic() + float(sys.argv[1])
while not stop and time.monotonic() < deadline:
    for _ in range(20):
        a = (a @ b).clamp_(-1, 1)
    torch.cuda.synchronize()
print("done", flush=True)
"""


def _reader(proc: subprocess.Popen[str], lines: queue.Queue[tuple[int, str]]) -> None:
    assert proc.stdout is not None
    for line in proc.stdout:
        lines.put((proc.pid, line.rstrip()))


def _wait_ready(
    procs: list[subprocess.Popen[str]], lines: queue.Queue[tuple[int, str]], timeout: float
) -> dict[int, str]:
    """Each child's 'ready ...' line by pid; stops early when a child fails."""
    ready: dict[int, str] = {}
    deadline = time.monotonic() + timeout
    while len(ready) < len(procs) and time.monotonic() < deadline:
        try:
            pid, line = lines.get(timeout=0.5)
        except queue.Empty:
            if any(p.poll() is not None and p.pid not in ready for p in procs):
                break
            continue
        print(f"  child {pid}: {line}")
        if line.startswith("ready"):
            ready[pid] = line
        elif line.startswith("error"):
            break
    return ready


def _table(nvml: Nvml, gpu: GpuInfo, children: set[int], rounds: int = 3) -> set[int]:
    """Print a few NVML readings of the GPU; return every pid NVML listed on it."""
    seen: set[int] = set()
    print(f"{'GPU':>3}  {'name':<24} {'util':>5}  {'memory used/total':>20}  children seen")
    for _ in range(rounds):
        for s in nvml.sample([gpu.index]):
            seen.update(s.pids)
            util = f"{s.utilization}%" if s.utilization is not None else "n/a"
            if s.memory_used is not None and s.memory_total is not None:
                mem = f"{s.memory_used / 1e9:.1f}/{s.memory_total / 1e9:.1f} GB"
            else:
                mem = "n/a"
            mine = sorted(children & set(s.pids))
            print(
                f"{s.index:>3}  {s.name[:24]:<24} {util:>5}  {mem:>20}  "
                f"{len(mine)}/{len(children)} {mine} (all pids on GPU: {list(s.pids)})"
            )
        time.sleep(1.0)
    return seen


def _stop(procs: list[subprocess.Popen[str]], timeout: float = 10.0) -> None:
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for p in procs:
        try:
            p.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--clients", type=int, default=4, help="child processes (default 4)")
    parser.add_argument("--gpu", type=int, default=0, help="NVML GPU id (default 0)")
    parser.add_argument("--seconds", type=float, default=20.0, help="longest a child runs")
    args = parser.parse_args(argv)

    nvml = Nvml()
    if not nvml.available():
        print(f"no NVIDIA GPU: nothing to check ({nvml.unavailable_reason()})")
        return 0
    by_id = {g.index: g for g in nvml.devices()}
    if args.gpu not in by_id:
        print(f"--gpu {args.gpu}: no such GPU; this machine has GPUs {sorted(by_id)}")
        return 2
    gpu = by_id[args.gpu]
    env = {**os.environ, **client_env(gpu)}
    print(f"GPU {gpu.index} ({gpu.name}, {gpu.uuid}); child env: {client_env(gpu)}")

    lines: queue.Queue[tuple[int, str]] = queue.Queue()
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", CHILD, str(args.seconds)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for _ in range(args.clients)
    ]
    for p in procs:
        threading.Thread(target=_reader, args=(p, lines), daemon=True).start()
    children = {p.pid for p in procs}
    problems: list[str] = []
    try:
        ready = _wait_ready(procs, lines, timeout=max(60.0, args.seconds * 3))
        if len(ready) < len(procs):
            problems.append(f"only {len(ready)}/{len(procs)} children reached CUDA")
        want = gpu.uuid.removeprefix("GPU-")
        for pid, line in sorted(ready.items()):
            parts = line.split(" ", 3)
            if parts[1] != "1":
                problems.append(f"child {pid} sees {parts[1]} CUDA devices, not 1")
            if want and len(parts) > 2 and parts[2] and parts[2].removeprefix("GPU-") != want:
                problems.append(f"child {pid} runs on CUDA device {parts[2]}, not {gpu.uuid}")
        seen = _table(nvml, gpu, children) if ready else set()
        missing = sorted(set(ready) - seen)
        if missing:
            hint = ""
            if len(seen) >= len(ready):
                hint = " (NVML lists other pids: a container's PID namespace hides the match)"
            problems.append(f"NVML does not list children {missing} on GPU {gpu.index}{hint}")
    finally:
        _stop(procs)

    alive = [p.pid for p in procs if p.poll() is None]
    if alive:
        problems.append(f"children {alive} still running after stop")
    deadline = time.monotonic() + 10.0
    lingering = children & set(nvml.pids_on(gpu.index))
    while lingering and time.monotonic() < deadline:
        time.sleep(0.5)
        lingering = children & set(nvml.pids_on(gpu.index))
    if lingering:
        problems.append(f"NVML still lists {sorted(lingering)} on GPU {gpu.index} after stop")
    nvml.shutdown()

    for problem in problems:
        print(f"  problem: {problem}")
    print("FAIL" if problems else "PASS")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
