"""The closed sets of names the launcher passes around: run modes and process roles."""

from __future__ import annotations

from typing import Literal, get_args

# federated: SuperLink and clients here; local: one trainer, no federation; join: clients only,
# joined to a SuperLink elsewhere (whose run decides model, data and rounds).
RunMode = Literal["federated", "local", "join"]
# What a supervised process is: launcher.supervision.roles says when it starts and what its exit means.
ProcessRole = Literal["superlink", "gateway", "serverapp", "supernode", "clienthost", "worker",
                      "submit", "local", "simulation"]
Executor = Literal["warm", "stock"]
# simulation: ServerApp and virtual nodes in Flower's simulation loop, K workers (docs/ENGINES.md);
# deployment: a SuperLink and real SuperNodes (the only one for --serve and --join).
Engine = Literal["simulation", "deployment"]

RUN_MODES: tuple[RunMode, ...] = get_args(RunMode)
PROCESS_ROLES: tuple[ProcessRole, ...] = get_args(ProcessRole)
EXECUTORS: tuple[Executor, ...] = get_args(Executor)
ENGINES: tuple[Engine, ...] = get_args(Engine)
