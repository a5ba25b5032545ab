"""Remake docs/tui.svg: the real TUI over a real run (a small synthetic one on the CPU), mid-run."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# A laptop-sized run: the same flags as the README's quick start, a few more clients and rounds.
RUN_ARGS = ["--clients", "4", "--rounds", "6", "--local-epochs", "2", "--lr", "0.05",
            "--dataset", "synthetic", "--model", "cnn", "--limit-train", "4000",
            "--limit-test", "1000", "--gpus", "cpu"]


def rounds_done(run_dir: Path) -> int:
    try:
        lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    except OSError:
        return 0
    return sum(1 for line in lines if line.startswith('{"event": "round",'))


def training(run_dir: Path) -> int:
    """How many clients' progress files say they are a few batches into their training."""
    count = 0
    for path in (run_dir / "progress").glob("client-*.json"):
        try:
            progress = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        count += progress.get("state") == "training" and progress.get("batch", 0) >= 3
    return count


async def shoot(run_dir: Path, after: int, size: tuple[int, int], timeout: float) -> str:
    """Start the run under the real app (Textual's headless driver); once `after` rounds are in
    and a client trains the next one, export the screen as SVG, then stop the run."""
    from launcher.arguments import build_parser
    from launcher.cli import resolve_config, run_folder
    from launcher.events import EventBus
    from launcher.network.flags import network_plan
    from launcher.planning.prepare import make_plan
    from launcher.supervision.runner import make_supervisor
    from launcher.tui.app import FedlaunchApp

    args = build_parser().parse_args([*RUN_ARGS, "--out", str(run_dir)])
    cfg, opts = resolve_config(args)
    local_clients, remote = network_plan(args, opts)
    plan = make_plan(cfg, run_folder(args.out), opts, local_clients=local_clients, remote=remote)
    bus = EventBus()
    supervisor = make_supervisor(plan, bus)
    app = FedlaunchApp(bus, supervisor.run, supervisor.request_stop)
    deadline = time.monotonic() + timeout
    async with app.run_test(size=size) as pilot:
        while rounds_done(run_dir) < after or training(run_dir) < 2:
            if time.monotonic() > deadline or app.run_done:
                raise SystemExit(f"make_screenshot: round {after} not reached; see {run_dir}/logs")
            await asyncio.sleep(0.2)
        await asyncio.sleep(0.3)  # a redraw (REFRESH_S) with the clients' batches moving
        await pilot.pause()
        svg = app.export_screenshot(title="fedlaunch")
        supervisor.request_stop("interrupted")
        while not app.run_done and time.monotonic() < deadline + 60:
            await asyncio.sleep(0.2)
    return svg


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "tui.svg")
    parser.add_argument("--after-round", type=int, default=3, help="rounds done before the shot")
    parser.add_argument("--size", default="120x34", help="terminal COLUMNSxROWS")
    parser.add_argument("--timeout", type=float, default=600.0)
    args = parser.parse_args()
    columns, rows = (int(n) for n in args.size.split("x"))
    with tempfile.TemporaryDirectory(prefix="fedlaunch-screenshot-") as tmp:
        svg = asyncio.run(shoot(Path(tmp) / "runs" / "demo", args.after_round, (columns, rows),
                                args.timeout))
    args.out.write_text(svg)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
