"""Every piece of Flower's internal (non-public) API fedlaunch uses, in one place, checked by name.

The warm executor and the prompt SuperNode reach below Flower's public API. These names are
stable within the pinned flwr range; `missing()` lists any a flwr upgrade has moved, and a test
fails on it, naming the symbol.
"""

from __future__ import annotations

import importlib
from typing import Any

# (module, attribute) pairs the executor and the SuperNode wrapper use.
REQUIRED: tuple[tuple[str, str], ...] = (
    ("flwr.cli.install", "install_from_fab"),
    ("flwr.clientapp.utils", "get_load_client_app_fn"),
    ("flwr.common.config", "get_project_dir"),
    ("flwr.common.constant", "ErrorCode"),
    ("flwr.common.constant", "SubStatus"),
    ("flwr.proto.runtime_pb2", "AcquireTaskRequest"),
    ("flwr.supercore.constant", "TaskType"),
    ("flwr.supercore.heartbeat", "HeartbeatSender"),
    ("flwr.supercore.heartbeat", "make_task_heartbeat_fn_http"),
    ("flwr.supercore.interceptors", "RuntimeTokenHttpInterceptor"),
    ("flwr.supercore.interceptors", "RuntimeVersionHttpInterceptor"),
    ("flwr.supercore.retry", "make_simple_http_retry_invoker"),
    ("flwr.supercore.runtime", "RuntimeHttpClient"),
    ("flwr.supernode.runtime.run_clientapp", "pull_task_input"),
    ("flwr.supernode.runtime.run_clientapp", "push_message"),
    ("flwr.supernode.runtime.run_clientapp", "push_task_output"),
    ("flwr.supernode.runtime.run_clientapp", "pull_and_inflate_object_from_tree"),
    ("flwr.supernode.start_client_internal", "time"),
    ("flwr.supernode.nodestate.in_memory_nodestate", "InMemoryNodeState"),
    ("flwr.supernode.fleet_http_client", "FleetHttpClient"),
    ("flwr.supernode.cli.flower_supernode", "flower_supernode"),
    ("flwr.supernode.start_client_internal", "pull_objects"),
    ("flwr.superlink.grid.http_grid", "pull_objects"),
)


def missing() -> list[str]:
    """`module.attribute` for each required name this flwr does not have."""
    gone = []
    for module_name, attribute in REQUIRED:
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            gone.append(f"{module_name} (module)")
            continue
        if not hasattr(module, attribute):
            gone.append(f"{module_name}.{attribute}")
    return gone


def get(module_name: str, attribute: str) -> Any:
    if (module_name, attribute) not in REQUIRED:
        raise KeyError(f"{module_name}.{attribute} is not listed in REQUIRED")
    return getattr(importlib.import_module(module_name), attribute)
