"""The pool's client endpoint: when its claimer is woken for a new task."""

from __future__ import annotations

import importlib

import pytest

from launcher.shim import flwr_internals as fi
from launcher.shim.endpoint import Claimer, watch_tasks


def test_the_claimer_wakes_once_the_tasks_message_is_whole(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Flower creates a task before pulling its message's objects; the claimer (and so a worker)
    is woken only after that pull returns, and not by a poll that brought no message."""
    from flwr.supercore.object_store import ObjectStoreFactory

    loop = importlib.import_module("flwr.supernode.start_client_internal")
    monkeypatch.setattr(loop, "_pull_and_store_message", loop._pull_and_store_message)
    monkeypatch.setattr(fi.InMemoryNodeState, "create_task", fi.InMemoryNodeState.create_task)
    claimer = Claimer("127.0.0.1:1", wire=None)  # type: ignore[arg-type]  # nothing is sent here
    during: list[bool] = []
    message_comes = [False, True]

    def pull(state: object) -> int | None:  # stands in for Flower's pull: task, then objects
        if not message_comes.pop(0):
            return None
        state.create_task(task_type=fi.TaskType.CLIENT_APP, run_id=7,  # type: ignore[attr-defined]
                          fab_hash="f")
        during.append(claimer.wake.is_set())
        return 7

    monkeypatch.setattr(fi, "pull_and_store_message", pull)
    watch_tasks(claimer)
    state = fi.InMemoryNodeState(ObjectStoreFactory().store())

    assert loop._pull_and_store_message(state) is None
    assert not claimer.wake.is_set() and claimer.created == 0.0
    assert loop._pull_and_store_message(state) == 7
    assert during == [False]
    assert claimer.wake.is_set() and claimer.state is state
    assert claimer.received >= claimer.created > 0.0
