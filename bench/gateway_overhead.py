"""Does the Fleet-only gateway slow rounds? Serve + join on loopback, joined through it or around it.

`python bench/gateway_overhead.py [--rounds 6] [--pairs 2] [--out DIR]` runs, `--pairs` times,
one `fedlaunch --serve` (TLS, no local client) and one `fedlaunch --join` of 2 clients, with the
join pointed once at the served address (the gateway) and once straight at the SuperLink's
loopback port (what every join did before the gateway). It prints each run's round seconds and
the mean of rounds 2.. per path. Every process is a real fedlaunch/Flower process on the CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ["--dataset", "synthetic", "--limit-train", "600", "--limit-test", "200", "--gpus", "cpu"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def fedlaunch(args: list[str], log: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1"}
    with log.open("wb") as out:
        return subprocess.Popen([sys.executable, "-m", "launcher.cli", *args], stdout=out,
                                stderr=subprocess.STDOUT, env=env, cwd=ROOT, start_new_session=True)


def one_run(out: Path, tls: Path, via: str, rounds: int) -> list[float]:
    out.mkdir(parents=True)
    port = free_port()
    serve = fedlaunch(["--serve", f"127.0.0.1:{port}", "--certificates", str(tls), "--clients", "2",
                       "--rounds", str(rounds), *DATA, "--headless", "--out", str(out / "serve")],
                      out / "serve.out")
    config = out / "serve" / "flwr" / "submit" / "config.toml"
    while not config.exists():
        if serve.poll() is not None:
            raise SystemExit(f"serve exited: {(out / 'serve.out').read_text()[-2000:]}")
        time.sleep(0.2)
    loopback = tomllib.loads(config.read_text())["superlink"]["fedlaunch"]["address"]
    target = f"127.0.0.1:{port}" if via == "gateway" else loopback
    join = fedlaunch(["--join", target, "--root-certificates", str(tls / "ca.crt"), "--clients", "2",
                      "--partition-ids", "0-1", "--num-partitions", "2", *DATA, "--headless",
                      "--out", str(out / "join")], out / "join.out")
    try:
        serve.wait(900)
    finally:
        for proc in (join, serve):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(60)
    lines = (out / "serve" / "metrics.jsonl").read_text().splitlines()
    return [r["seconds"] for r in map(json.loads, lines) if r.get("event") == "round"]


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--pairs", type=int, default=2)
    parser.add_argument("--out", default="/tmp/gateway-overhead")
    args = parser.parse_args()
    out = Path(args.out) / time.strftime("%H%M%S")
    tls = out / "tls"
    subprocess.run([sys.executable, "-m", "launcher.cli", "certs", str(tls)], check=True, cwd=ROOT,
                   capture_output=True)
    results: dict[str, list[float]] = {"gateway": [], "direct": []}
    for pair in range(args.pairs):
        for via in ("gateway", "direct") if pair % 2 == 0 else ("direct", "gateway"):
            seconds = one_run(out / f"{via}-{pair}", tls, via, args.rounds)
            print(f"{via:8} run {pair}: rounds {' '.join(f'{s:.2f}' for s in seconds)}", flush=True)
            results[via].extend(seconds[1:])
    for via, seconds in results.items():
        print(f"{via:8} rounds 2..{args.rounds}: mean {statistics.mean(seconds):.2f} s, median "
              f"{statistics.median(seconds):.2f} s over {len(seconds)} rounds")
    return 0


if __name__ == "__main__":
    sys.exit(main())
