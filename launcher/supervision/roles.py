"""What each process role means to the supervisor: when it starts and what its exit means.

The start order and the handling of an exit are read from this table, so a new role (a network
gateway, a worker pool) is one row here. Every process stops at the same time at the end.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

# "lifeline": the run is over when it ends (it failed unless the app wrote its 'end' record);
# "fatal": its exit fails the run, naming it; "client": restarted up to --max-restarts, and the
# run fails only when no client is left.
OnExit = Literal["lifeline", "fatal", "client"]


@dataclass(frozen=True)
class Role:
    """When a process of this role starts, and what its exit means."""

    on_exit: OnExit
    after_link: bool = False  # starts once the SuperLink answers (at once otherwise)
    after_keys: bool = False  # with SuperNode authentication: once the node keys are registered
    echo: bool = True  # its output lines go on the screen (always to logs/<name>.log)


ROLES: dict[str, Role] = {
    "superlink": Role("fatal"),
    "gateway": Role("fatal"),  # forwards the network to the SuperLink; retries until it answers
    # the warm ServerApp (shim/serverhost.py): imports torch at once, claims the run's ServerApp
    # task once `flwr run` has submitted it, and ends with it; its lines reach the screen once,
    # through `flwr run --stream`
    "serverapp": Role("lifeline", echo=False),
    # SuperNodes retry until the SuperLink answers, so they start with it
    "supernode": Role("client", after_keys=True),
    # the worker pool (planning/pool.py): the host of every client's SuperNode, and the workers
    # that train them (they connect to the host and wait); a role's last process gone fails the run
    "clienthost": Role("client", after_keys=True),
    "worker": Role("client"),
    "submit": Role("lifeline", after_link=True, after_keys=True),  # `flwr run`
    "local": Role("lifeline"),
    # the simulation engine (shim/simhost.py): the ServerApp, the virtual nodes and the workers
    # it forks, in one process tree; the run is over when it ends
    "simulation": Role("lifeline"),
}
UNKNOWN = Role("fatal")


def role(name: str) -> Role:
    return ROLES.get(name, UNKNOWN)


def starts_at_once(name: str, keyed: bool) -> bool:
    """Whether a process of role `name` starts with the first wave (before the SuperLink answers)."""
    info = role(name)
    return not info.after_link and not (keyed and info.after_keys)
