"""The ServerApp's waits: for a round's replies (fedcore.server_app.collect), which ends when every
reply is in, when the round timeout passes (the start-up deadline, for a node not heard from
yet), or at once for a node the launcher says has left; and for the clients to connect first."""

from __future__ import annotations

import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from fedcore.rundir import NO_CLIENTS
from fedcore.server_app import collect, wait_for_nodes


class Grid:
    """Hands out the reply to each message in `answered` on the second pull; others never."""

    def __init__(self, answered: set[str]) -> None:
        self.answered = answered
        self.pulls = 0

    def pull_messages(self, ids: list[str]) -> list[Any]:
        self.pulls += 1
        if self.pulls < 2:
            return []
        out = [SimpleNamespace(metadata=SimpleNamespace(reply_to_message_id=i))
               for i in ids if i in self.answered]
        self.answered -= set(ids)
        return out


def test_every_reply_in_ends_the_wait_at_once() -> None:
    started = time.monotonic()
    replies = collect(Grid({"a", "b"}), {"a": 1, "b": 2}, timeout=30)
    assert sorted(r.metadata.reply_to_message_id for r in replies) == ["a", "b"]
    assert time.monotonic() - started < 5


def test_a_silent_node_costs_the_round_timeout_and_the_others_replies_are_kept() -> None:
    started = time.monotonic()
    replies = collect(Grid({"a"}), {"a": 1, "b": 2}, timeout=0.5)
    waited = time.monotonic() - started
    assert [r.metadata.reply_to_message_id for r in replies] == ["a"]
    assert 0.5 <= waited < 5, waited


def test_a_departed_node_is_not_waited_for(tmp_path: Path) -> None:
    departed = tmp_path / "departed-nodes.txt"
    departed.write_text("2\n")
    started = time.monotonic()
    replies = collect(Grid({"a"}), {"a": 1, "b": 2}, timeout=30, departed=departed)
    assert [r.metadata.reply_to_message_id for r in replies] == ["a"]
    assert time.monotonic() - started < 5


class SlowStart:
    """Hands out the reply to message `b` once `after` seconds have passed, like a client whose
    first task waits on its start-up; `a` at once."""

    def __init__(self, after: float) -> None:
        self.ready = time.monotonic() + after
        self.left = {"a", "b"}

    def pull_messages(self, ids: list[str]) -> list[Any]:
        ready = {"a"} | ({"b"} if time.monotonic() >= self.ready else set())
        out = [SimpleNamespace(metadata=SimpleNamespace(reply_to_message_id=i))
               for i in ids if i in ready & self.left]
        self.left -= ready
        return out


def test_a_node_not_heard_from_yet_gets_the_start_up_deadline_not_the_round_timeout() -> None:
    """Round 1's clock must not run out on a client still starting up: node 2 (message b) has
    not replied in this run, so its reply, 0.5 s in, is waited for past the 0.2 s round timeout."""
    replies = collect(SlowStart(0.5), {"a": 1, "b": 2}, timeout=0.2, starting={2}, startup=60)
    assert sorted(r.metadata.reply_to_message_id for r in replies) == ["a", "b"]


def test_a_node_heard_from_before_gets_the_round_timeout() -> None:
    started = time.monotonic()
    replies = collect(SlowStart(30), {"a": 1, "b": 2}, timeout=0.2, starting={1}, startup=60)
    assert [r.metadata.reply_to_message_id for r in replies] == ["a"]
    assert time.monotonic() - started < 5


class Descheduled:
    """A pull that returns nothing and takes `seconds` (the ServerApp starved of CPU), while the
    reply to `a` is stored meanwhile: only the next pull returns it."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.pulls = 0

    def pull_messages(self, ids: list[str]) -> list[Any]:
        self.pulls += 1
        if self.pulls == 1:
            time.sleep(self.seconds)
            return []
        return [SimpleNamespace(metadata=SimpleNamespace(reply_to_message_id=i))
                for i in ids if i == "a"]


def test_a_reply_stored_before_the_deadline_is_taken_however_late_the_server_looks() -> None:
    replies = collect(Descheduled(0.3), {"a": 1}, timeout=0.1)
    assert [r.metadata.reply_to_message_id for r in replies] == ["a"]


class Nodes:
    """A Grid with these nodes connected."""

    def __init__(self, nodes: list[int]) -> None:
        self.nodes = nodes

    def get_node_ids(self) -> list[int]:
        return self.nodes


class Metrics:
    def __init__(self) -> None:
        self.records: list[dict[str, Any]] = []

    def append_metric(self, event: str, **fields: Any) -> None:
        self.records.append({"event": event, **fields})


def test_no_client_by_the_start_up_deadline_stops_the_run_with_one_line(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(RuntimeError, match=NO_CLIENTS):
        wait_for_nodes(Nodes([]), 2, 0.2, Metrics())  # type: ignore[arg-type]
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and lines[0].startswith(NO_CLIENTS), lines
    assert "--startup-timeout" in lines[0] and "2 expected" in lines[0], lines


def test_some_clients_by_the_start_up_deadline_go_on_without_the_others() -> None:
    metrics = Metrics()
    wait_for_nodes(Nodes([7]), 2, 0.2, metrics)  # type: ignore[arg-type]
    assert metrics.records[-1] == {"event": "nodes", "connected": [7], "expected": 2}
