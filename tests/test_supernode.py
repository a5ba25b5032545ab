"""The prompt SuperNode: how long it waits between polls, and the node id it records."""

from __future__ import annotations

from pathlib import Path

import pytest

from launcher import supernode
from launcher.supernode import FIRST_IDLE_WAIT, IDLE_WAIT, SHORT_WAIT, PromptTime


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def slept(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    waits: list[float] = []
    monkeypatch.setattr(supernode.time, "sleep", waits.append)
    return waits


def test_idle_polls_start_fast_after_a_task_and_settle(slept: list[float]) -> None:
    clock = Clock()
    prompt = PromptTime(clock)
    prompt.sleep(3)  # no task yet: the settled idle wait
    prompt.sleep(0.5)  # waiting for the ClientApp's reply: short, and the node counts as busy
    clock.now += 0.01
    prompt.sleep(3)  # just replied: the next round's message is due soon
    clock.now += 0.4
    prompt.sleep(3)
    clock.now += 5
    prompt.sleep(3)
    assert slept == [IDLE_WAIT, SHORT_WAIT, FIRST_IDLE_WAIT, pytest.approx(0.1025), IDLE_WAIT]


def test_other_time_functions_are_the_real_ones() -> None:
    import time

    assert PromptTime().monotonic is time.monotonic


def test_the_node_id_flower_assigns_is_written_atomically(tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    from flwr.supernode.nodestate.in_memory_nodestate import InMemoryNodeState

    monkeypatch.setattr(InMemoryNodeState, "set_node_id", InMemoryNodeState.set_node_id)
    path = tmp_path / "progress" / "client-3.node"
    supernode.record_node_id(str(path))
    state = InMemoryNodeState.__new__(InMemoryNodeState)
    state.set_node_id(1234567890123)
    assert path.read_text() == "1234567890123\n" and state.get_node_id() == 1234567890123
    state.set_node_id(42)  # a SuperNode that reconnects gets a new id
    assert path.read_text() == "42\n"
    assert [p.name for p in path.parent.iterdir()] == ["client-3.node"]
