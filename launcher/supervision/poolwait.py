"""Start-up of a worker pool run: the ServerApp goes only once the pool is warm.

Flower gives a claimed task 30 s to start. K workers importing torch and N SuperNodes signing
in, on a small machine, can starve a ServerApp started beside them past that window; started
after them, it has the CPU to itself while it imports and pulls its task.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path

POOL = "pool.json"  # written by launcher/shim/clienthost.py


def pool_warm(run_dir: Path, clients: int, workers: int) -> bool:
    """Every client forked and every worker connected (its torch imported)."""
    try:
        status = json.loads((run_dir / POOL).read_text())
    except (OSError, ValueError):
        return False
    ready = [w for w in status.get("workers", []) if w.get("state") != "connecting"]
    return len(status.get("clients", {})) >= clients and len(ready) >= workers


async def wait_for_pool(run_dir: Path, clients: int, workers: int,
                        stopping: Callable[[], bool], monotonic: Callable[[], float],
                        timeout: float = 300.0, interval: float = 0.2) -> bool:
    """Wait until the pool is warm (True), a stop is asked for, or `timeout` (False: go on)."""
    deadline = monotonic() + timeout
    while monotonic() < deadline and not stopping():
        if pool_warm(run_dir, clients, workers):
            return True
        await asyncio.sleep(interval)
    return False
