"""Every piece of Flower's internal (non-public) API fedlaunch uses, in one place, checked by name.

The warm executor, the pool's endpoints and workers, and the prompt SuperNode reach below
Flower's public API. Each internal is a typed attribute of this module, looked up once on first
use (`fi.RuntimeHttpClient`); `get(module, name)` is the older spelling of the same lookup.
`missing()` lists any a flwr upgrade has moved, and tests/test_flwr_internals.py fails on it,
naming the symbol; that test also pins the keyword arguments and the sleeps the code relies on.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the types mypy sees; at run time each is looked up on first use
    from collections.abc import Callable
    from types import ModuleType

    from flwr.cli.install import install_from_fab as install_from_fab
    from flwr.clientapp.utils import get_load_client_app_fn as get_load_client_app_fn
    from flwr.common.config import get_project_dir as get_project_dir
    from flwr.common.constant import ErrorCode as ErrorCode
    from flwr.common.constant import SubStatus as SubStatus
    from flwr.common.serde import message_from_proto as message_from_proto
    from flwr.common.serde import message_to_proto as message_to_proto
    from flwr.proto.message_pb2 import Message as ProtoMessage  # noqa: F401
    from flwr.proto.runtime_pb2 import AcquireTaskRequest as AcquireTaskRequest
    from flwr.proto.runtime_pb2 import SendTaskHeartbeatRequest as SendTaskHeartbeatRequest
    from flwr.supercore.constant import TaskType as TaskType
    from flwr.supercore.heartbeat import HeartbeatSender as HeartbeatSender
    from flwr.supercore.heartbeat import make_task_heartbeat_fn_http as make_task_heartbeat_fn_http
    from flwr.supercore.interceptors import RuntimeTokenHttpInterceptor as RuntimeTokenHttpInterceptor
    from flwr.supercore.interceptors import RuntimeVersionHttpInterceptor as RuntimeVersionHttpInterceptor
    from flwr.supercore.interceptors import SuperExecAuthHttpInterceptor as SuperExecAuthHttpInterceptor
    from flwr.supercore.logger import mirror_output_to_queue as mirror_output_to_queue
    from flwr.supercore.retry import make_simple_http_retry_invoker as make_simple_http_retry_invoker
    from flwr.supercore.runtime import RuntimeHttpClient as RuntimeHttpClient
    from flwr.superlink.runtime.run_serverapp import run_serverapp as run_serverapp
    from flwr.supernode.cli.flower_supernode import flower_supernode as flower_supernode
    from flwr.supernode.fleet_http_client import FleetHttpClient as FleetHttpClient
    from flwr.supernode.nodestate.in_memory_nodestate import InMemoryNodeState as InMemoryNodeState
    from flwr.supernode.runtime.run_clientapp import (
        pull_and_inflate_object_from_tree as pull_and_inflate_object_from_tree,
    )
    from flwr.supernode.runtime.run_clientapp import pull_task_input as pull_task_input
    from flwr.supernode.runtime.run_clientapp import push_message as push_message
    from flwr.supernode.runtime.run_clientapp import push_task_output as push_task_output

    push_messages: Callable[..., None]  # flwr.supernode.start_client_internal._push_messages
    pull_and_store_message: Callable[..., int | None]  # ..._pull_and_store_message
    supernode_time: ModuleType  # the `time` module flwr's SuperNode loop sleeps with

# These names (and launcher/shim/flwr_reliances.py) were read from, and are tested with, the
# Flower releases launcher.planning.flower_version.TESTED names; `fedlaunch` warns at start-up
# when another is installed and runs `python -m launcher.shim.flwr_internals` to look them up.

# attribute of this module -> (flwr module, its attribute)
NAMES: dict[str, tuple[str, str]] = {
    "install_from_fab": ("flwr.cli.install", "install_from_fab"),
    "get_load_client_app_fn": ("flwr.clientapp.utils", "get_load_client_app_fn"),
    "get_project_dir": ("flwr.common.config", "get_project_dir"),
    "ErrorCode": ("flwr.common.constant", "ErrorCode"),
    "SubStatus": ("flwr.common.constant", "SubStatus"),
    "message_to_proto": ("flwr.common.serde", "message_to_proto"),
    "message_from_proto": ("flwr.common.serde", "message_from_proto"),
    "ProtoMessage": ("flwr.proto.message_pb2", "Message"),
    "AcquireTaskRequest": ("flwr.proto.runtime_pb2", "AcquireTaskRequest"),
    "SendTaskHeartbeatRequest": ("flwr.proto.runtime_pb2", "SendTaskHeartbeatRequest"),
    "TaskType": ("flwr.supercore.constant", "TaskType"),
    "HeartbeatSender": ("flwr.supercore.heartbeat", "HeartbeatSender"),
    "make_task_heartbeat_fn_http": ("flwr.supercore.heartbeat", "make_task_heartbeat_fn_http"),
    "RuntimeTokenHttpInterceptor": ("flwr.supercore.interceptors", "RuntimeTokenHttpInterceptor"),
    "RuntimeVersionHttpInterceptor": ("flwr.supercore.interceptors",
                                      "RuntimeVersionHttpInterceptor"),
    "SuperExecAuthHttpInterceptor": ("flwr.supercore.interceptors", "SuperExecAuthHttpInterceptor"),
    "make_simple_http_retry_invoker": ("flwr.supercore.retry", "make_simple_http_retry_invoker"),
    "RuntimeHttpClient": ("flwr.supercore.runtime", "RuntimeHttpClient"),
    "pull_task_input": ("flwr.supernode.runtime.run_clientapp", "pull_task_input"),
    "push_message": ("flwr.supernode.runtime.run_clientapp", "push_message"),
    "push_task_output": ("flwr.supernode.runtime.run_clientapp", "push_task_output"),
    "pull_and_inflate_object_from_tree": ("flwr.supernode.runtime.run_clientapp",
                                          "pull_and_inflate_object_from_tree"),
    "supernode_time": ("flwr.supernode.start_client_internal", "time"),
    "push_messages": ("flwr.supernode.start_client_internal", "_push_messages"),
    "pull_and_store_message": ("flwr.supernode.start_client_internal", "_pull_and_store_message"),
    "run_serverapp": ("flwr.superlink.runtime.run_serverapp", "run_serverapp"),
    "serverapp_install": ("flwr.superlink.runtime.run_serverapp", "install_from_fab"),
    "mirror_output_to_queue": ("flwr.supercore.logger", "mirror_output_to_queue"),
    "InMemoryNodeState": ("flwr.supernode.nodestate.in_memory_nodestate", "InMemoryNodeState"),
    "FleetHttpClient": ("flwr.supernode.fleet_http_client", "FleetHttpClient"),
    "flower_supernode": ("flwr.supernode.cli.flower_supernode", "flower_supernode"),
    "supernode_pull_objects": ("flwr.supernode.start_client_internal", "pull_objects"),
    "grid_pull_objects": ("flwr.superlink.grid.http_grid", "pull_objects"),
}

# The Simulation Engine's one seam (launcher.shim.simhost): Flower's `start_vce` imports its
# backend as `from .backend.raybackend import RayBackend` when the simulation starts, so a module
# put under that name in sys.modules supplies fedlaunch's backend and Ray is never imported.
RAYBACKEND_MODULE = "flwr.server.superlink.fleet.vce.backend.raybackend"
BACKEND_IMPORT = ("flwr.server.superlink.fleet.vce.vce_api", "start_vce",
                  "from .backend.raybackend import RayBackend")


def install_simulation_backend(backend_class: type) -> None:
    """Make Flower's simulation loop instantiate `backend_class(backend_config)` instead of Ray's
    backend (Flower calls its build, num_workers, process_message and terminate)."""
    import sys
    import types

    stand_in = types.ModuleType(RAYBACKEND_MODULE)
    stand_in.RayBackend = backend_class  # type: ignore[attr-defined]
    sys.modules[RAYBACKEND_MODULE] = stand_in


def backend_seam_intact() -> bool:
    """Whether this flwr's `start_vce` still imports its backend where the seam expects it."""
    import inspect

    module_name, function, line = BACKEND_IMPORT
    source = inspect.getsource(getattr(importlib.import_module(module_name), function))
    return line in source


# (module, attribute) pairs, as listed above.
REQUIRED: tuple[tuple[str, str], ...] = tuple(NAMES.values())

# Attributes of Flower's in-memory node state the pool's endpoint reads or changes directly.
STATE_FIELDS = ("lock_task_store", "task_token_to_task_id", "task_token_store")


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


def __getattr__(name: str) -> Any:
    """Look an internal up once and keep it as this module's attribute."""
    if name not in NAMES:
        raise AttributeError(f"{name} is not a listed flwr internal (see NAMES)")
    value = get(*NAMES[name])
    globals()[name] = value
    return value


if __name__ == "__main__":  # `python -m launcher.shim.flwr_internals`: the missing ones, exit 1
    import sys

    gone = missing()
    print(", ".join(gone))
    sys.exit(1 if gone else 0)
