"""The ServerApp's wait for a round's replies (fedcore.server_app.collect): it ends when every
reply is in, when the round timeout passes, or at once for a node the launcher says has left."""

from __future__ import annotations

import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from fedcore.server_app import collect


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
