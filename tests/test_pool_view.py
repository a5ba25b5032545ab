"""The worker pool on screen at 100 clients: a workers table, a summary line, a scrollable table."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from launcher.events import (
    ClientProgress,
    Event,
    Notice,
    PoolStats,
    ProcessStarted,
    RoundStarted,
    RunStarted,
    WorkerInfo,
)
from launcher.supervision.follow import RunFollower, metric_event
from launcher.tui.clients import ClientsTable
from launcher.tui.state import RunState
from launcher.tui.workers import ClientsSummary, WorkersTable, clients_summary
from tests.test_tui import NOW, Script, screen_text, settle

CLIENTS = 100
SAMPLED = (3, 17, 42, 58, 71, 90, 11, 23, 64, 99)


def pool_events() -> list[Event]:
    events: list[Event] = [
        RunStarted("pool-run", "federated", "cnn", "cifar10", "iid", 20, CLIENTS, "/runs/pool",
                   NOW - 60.0, dict.fromkeys(range(CLIENTS))),
        ProcessStarted("clients", 200, "clienthost"),
        ProcessStarted("worker-0", 201, "worker", 0),
        ProcessStarted("worker-1", 202, "worker", 1),
        *(ClientProgress(c, "connected") for c in range(CLIENTS)),
        RoundStarted(3, 20),
    ]
    for n, client in enumerate(SAMPLED):
        state = "training" if n < 2 else "waiting"
        events.append(ClientProgress(client, state, 3, 1, 1, 5, 10, 320, 1.5))
    events.append(PoolStats((
        WorkerInfo("worker-0", "0", "training", 3, 2150.0, 21),
        WorkerInfo("worker-1", "1", "training", 17, 2080.0, 20),
    ), queued=(42, 58), failed_clients=()))
    return events


def test_the_summary_counts_clients_by_state_and_lists_the_round_sample() -> None:
    state = RunState(clock=lambda: NOW)
    for event in pool_events():
        state.apply(event)

    text = clients_summary(state).plain

    assert text.startswith("100 clients: 90 connected, 8 waiting, 2 training"), text
    assert "round 3 sampled (10): 3, 11, 17, 23, 42, 58, 64, 71, 90, 99" in text, text
    assert "waiting for a worker: 42, 58" in text, text


def test_pool_json_becomes_a_pool_event(tmp_path: Path) -> None:
    (tmp_path / "pool.json").write_text(json.dumps({
        "workers": [{"name": "worker-1", "gpu": "1", "state": "idle", "client": None,
                     "images_per_s": 0.0, "tasks": 4},
                    {"name": "worker-0", "gpu": "0", "state": "training", "client": 7,
                     "images_per_s": 1999.5, "tasks": 5}],
        "queued": [9], "failed": [2]}))
    follower = RunFollower(tmp_path)

    events = [e for e in follower.poll() if isinstance(e, PoolStats)]

    assert events == [PoolStats((WorkerInfo("worker-0", "0", "training", 7, 1999.5, 5),
                                 WorkerInfo("worker-1", "1", "idle", None, 0.0, 4)),
                                queued=(9,), failed_clients=(2,))]
    assert [e for e in follower.poll() if isinstance(e, PoolStats)] == []  # unchanged: no event


def test_pooled_clients_logs_reach_the_log_pane_but_not_headless_output(tmp_path: Path) -> None:
    """The pool's endpoints write logs/client-<id>.log themselves: the follower turns what they
    append into LogLine events (an earlier launch's lines and a half-written line held back),
    which the TUI shows under the client's name and headless does not print."""
    import io

    from launcher.events import LogLine
    from launcher.supervision.headless import HeadlessPrinter

    log = tmp_path / "logs" / "client-7.log"
    log.parent.mkdir()
    log.write_text("from an earlier launch\n")
    follower = RunFollower(tmp_path, log_files={"client-7": log, "client-8": tmp_path / "none"})
    with log.open("a") as fh:
        fh.write("INFO :      Receiving: train message\nINFO :      Sent succ")

    lines = [e for e in follower.poll() if isinstance(e, LogLine)]
    with log.open("a") as fh:
        fh.write("essfully\n")
    lines += [e for e in follower.poll() if isinstance(e, LogLine)]

    assert lines == [LogLine("client-7", "INFO :      Receiving: train message", echo=False),
                     LogLine("client-7", "INFO :      Sent successfully", echo=False)]
    state = RunState()
    for line in lines:
        state.apply(line)
    assert state.tail_of("client-7") == ("INFO :      Receiving: train message",
                                         "INFO :      Sent successfully")
    out = io.StringIO()
    printer = HeadlessPrinter(out, colour=False)
    for line in (*lines, LogLine("worker-0", "a worker's line")):
        printer(line)
    assert out.getvalue().split() == ["worker-0", "|", "a", "worker's", "line"]


@pytest.mark.parametrize("size", [(80, 24), (160, 48)])
async def test_100_clients_fit_the_screen(size: tuple[int, int]) -> None:
    script = Script(pool_events())
    async with script.app().run_test(size=size) as pilot:
        await settle(pilot, script)
        workers = pilot.app.query_one(WorkersTable)
        summary = pilot.app.query_one(ClientsSummary)
        clients = pilot.app.query_one(ClientsTable)

        shown = screen_text(workers)
        line = screen_text(summary)

        assert workers.display and workers.row_count == 2
        assert "worker-0" in shown and "worker-1" in shown and "training" in shown, shown
        assert "2,150" in shown or size[0] < 100, shown
        assert "100 clients" in line and "round 3 sampled" in line, line
        assert clients.row_count == CLIENTS
        assert clients.outer_size.height < size[1], "the clients table must scroll, not fill"
        assert clients.max_scroll_y > 0
        assert workers.region.bottom <= clients.region.y


def test_the_nodes_record_says_how_many_clients_connected_on_either_engine() -> None:
    # The simulation engine has no SuperLink: the line names none
    event = metric_event({"event": "nodes", "connected": [3, 4], "expected": 12})
    assert event == Notice("info", "2 of 12 clients connected")
