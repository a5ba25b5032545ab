"""Shorter retry waits inside Flower's object transfer (flwr internals, pinned to flwr 1.42).

A message lands before its objects are uploaded, so the first pull of its objects often finds
them missing; Flower then waits 1 s (doubling to 10 s) before trying again. These retries are
on this machine's loopback: 20 ms, capped at 0.2 s, is plenty.
"""

from __future__ import annotations

import functools
import importlib

FAST_PULL = {"initial_backoff": 0.02, "backoff_cap": 0.2}
# Modules whose `pull_objects` name is rebound; listed in launcher/shim/flwr_internals.py too.
PULL_USERS = ("flwr.superlink.grid.http_grid", "flwr.supernode.start_client_internal")


def fast_object_pulls(module_name: str) -> None:
    """Rebind `module_name.pull_objects` to retry quickly; a second call changes nothing."""
    module = importlib.import_module(module_name)
    original = vars(module)["pull_objects"]
    if not isinstance(original, functools.partial):
        vars(module)["pull_objects"] = functools.partial(original, **FAST_PULL)
