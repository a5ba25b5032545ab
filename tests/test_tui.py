"""The Textual view, driven by scripted launcher events instead of real processes."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from rich.text import Text
from textual.geometry import Region
from textual.pilot import Pilot
from textual.widget import Widget
from textual.widgets import Label, ProgressBar

from launcher.events import (
    ClientProgress,
    Event,
    EventBus,
    GpuSample,
    GpuStats,
    LogLine,
    ProcessExited,
    ProcessStarted,
    RoundFinished,
    RoundStarted,
    RunFinished,
    RunStarted,
)
from launcher.tui.app import FedlaunchApp
from launcher.tui.clients import ClientsTable
from launcher.tui.gpus import CPU_MODE, GpuPanel
from launcher.tui.logpane import LogPane
from launcher.tui.summary import SummaryPanel
from tests.runs import until

NOW = 1_000_095.0
GIB = 2**30


class Script:
    """Publishes `events` on a bus as the launcher would, then waits for a stop request."""

    def __init__(self, events: Sequence[Event], *, hold: bool = True, code: int = 0,
                 delay: float | None = 0.005, finish_on_stop: bool = True) -> None:
        self.bus = EventBus()
        self.events = list(events)
        self.hold, self.code, self.delay = hold, code, delay
        self.finish_on_stop = finish_on_stop
        self.stops: list[str] = []
        self.published = False

    async def run(self) -> int:
        for event in self.events:
            self.bus.publish(event)
            if self.delay is not None:  # None: all at once, so no redraw sees a half-built state
                await asyncio.sleep(self.delay)
        self.published = True
        while self.hold and not (self.stops and self.finish_on_stop):
            await asyncio.sleep(0.01)
        if self.stops:
            self.bus.publish(RunFinished("interrupted", 130, {"wall_seconds": 95.0}))
            return 130
        return self.code

    def request_stop(self, reason: str) -> None:
        self.stops.append(reason)

    def app(self, *, exit_on_finish: bool = False) -> FedlaunchApp:
        return FedlaunchApp(self.bus, self.run, self.request_stop, exit_on_finish=exit_on_finish,
                            clock=lambda: NOW)


async def settle(pilot: Pilot[int], script: Script) -> None:
    """Wait until every scripted event is published and the panels have redrawn."""
    await until(lambda: script.published, "every scripted event published", pause=pilot.pause)
    assert isinstance(pilot.app, FedlaunchApp)
    pilot.app.redraw()
    await pilot.pause()


def started(clients: int = 3, gpus: tuple[int | None, ...] = (0, 1, 0)) -> list[Event]:
    return [
        RunStarted("demo-run", "federated", "cnn", "cifar10", "dirichlet:0.5", 10, clients,
                   "/runs/demo-run", NOW - 95.0, dict(enumerate(gpus))),
        ProcessStarted("superlink", 101, "superlink"),
        *(ProcessStarted(f"client-{k}", 110 + k, "supernode", gpus[k], k) for k in range(clients)),
        ProcessStarted("server", 120, "server"),
    ]


def federated_events() -> list[Event]:
    events = started()
    events.append(GpuStats((
        GpuSample(0, "NVIDIA H100 80GB HBM3", 83, 21 * GIB, 80 * GIB, (110, 112)),
        GpuSample(1, "NVIDIA H100 80GB HBM3", 41, 9 * GIB, 80 * GIB, (111,)),
    )))
    for r, (acc, loss) in enumerate([(0.31, 1.92), (0.42, 1.61), (0.47, 1.49)], start=1):
        events.append(RoundStarted(r, 10))
        events.append(RoundFinished(r, 10, acc, loss, loss + 0.1, 3, 30.0, acc))
        events.append(LogLine("server", f"round {r}/10: accuracy {acc:.4f} loss {loss:.4f}"))
    events.append(RoundStarted(4, 10))
    events += [
        ClientProgress(0, "training", 4, 1, 2, 120, 391, 15360, 1.2345, 0),
        ClientProgress(1, "evaluating", 4, 2, 2, 391, 391, 50048, 1.1, 1),
        ClientProgress(2, "training", 4, 1, 2, 50, 391, 6400, 1.4, 0),
        LogLine("client-0", "epoch 1/2 batch 120/391 loss 1.2345"),
        LogLine("client-1", "epoch 2/2 done"),
        LogLine("client-2", "CUDA error: out of memory"),
        ProcessExited("client-2", 1, expected=False, restarts=2, client=2, log_tail=(
            "Traceback (most recent call last):", "RuntimeError: CUDA error: out of memory")),
    ]
    return events


def screen_text(widget: Widget) -> str:
    """The characters `widget` shows on screen, line by line."""
    return "\n".join(strip.text for strip in widget.render_lines(Region(0, 0, *widget.outer_size)))


def cell(table: ClientsTable, client: int, column: str) -> Text:
    value = table.get_cell(str(client), column)
    assert isinstance(value, Text)
    return value


async def test_progress_and_clients_table_show_published_values() -> None:
    # Prepare
    script = Script(federated_events())
    # Execute
    async with script.app().run_test(size=(120, 40)) as pilot:
        await settle(pilot, script)
        app = pilot.app
        label = app.query_one("#round-label", Label)
        bar = app.query_one("#round-bar", ProgressBar)
        table = app.query_one(ClientsTable)
        # Assert
        assert str(label.render()) == "round 4/10"
        assert bar.total == 10
        assert bar.progress is not None and 3.0 < bar.progress < 4.0
        assert table.row_count == 3
        assert cell(table, 0, "gpu").plain.strip() == "0"
        assert cell(table, 1, "gpu").plain.strip() == "1"
        assert cell(table, 0, "state").plain.strip() == "training"
        assert cell(table, 0, "round").plain.strip() == "4"
        assert cell(table, 0, "epoch").plain.strip() == "1/2"
        assert cell(table, 0, "batch").plain.strip() == "120/391"
        assert cell(table, 0, "samples").plain.strip() == "15360"
        assert cell(table, 0, "train_loss").plain.strip() == "1.2345"
        assert cell(table, 1, "state").plain.strip() == "evaluating"


async def test_serving_side_shows_remote_clients_by_their_replies() -> None:
    """--serve with client 0 here and 1, 2 joined from elsewhere: every client that replied gets
    a row, the remote ones marked so; a local client that signed in shows `connected`."""
    events: list[Event] = [
        RunStarted("serve", "federated", "cnn", "cifar10", "iid", 10, 3, "/runs/serve",
                   NOW - 30.0, {0: 0}),
        ProcessStarted("client-0", 110, "supernode", 0, 0),
        ClientProgress(0, "connected", gpu=0),
        RoundStarted(1, 10),
        RoundFinished(1, 10, 0.3, 2.0, 2.1, 3, 5.0, 0.3, clients=(0, 1, 2)),
    ]
    script = Script(events)
    async with script.app().run_test(size=(120, 40)) as pilot:
        await settle(pilot, script)
        table = pilot.app.query_one(ClientsTable)
        assert table.row_count == 3
        assert [cell(table, c, "gpu").plain.strip() for c in (0, 1, 2)] == ["0", "remote", "remote"]
        assert [cell(table, c, "state").plain.strip() for c in (0, 1, 2)] == [
            "connected", "replied", "replied"]
        assert cell(table, 2, "round").plain.strip() == "1"


async def test_the_round_line_counts_the_replies_the_server_rejected() -> None:
    events: list[Event] = [
        RunStarted("serve", "federated", "cnn", "cifar10", "iid", 10, 2, "/runs/serve",
                   NOW - 30.0, {0: 0}),
        RoundFinished(1, 10, 0.3, 2.0, 2.1, 1, 5.0, 0.3, clients=(0,), rejected=1),
        RoundFinished(2, 10, 0.3, 2.0, 2.1, 0, 5.0, 0.3, clients=(), rejected=2),
    ]
    script = Script(events)
    async with script.app().run_test(size=(120, 40)) as pilot:
        await settle(pilot, script)
        assert str(pilot.app.query_one("#round-label", Label).render()) == "round 2/10  3 rejected"


async def test_a_join_shows_the_round_its_clients_are_in() -> None:
    """--join sees no server metrics: the round is the one its clients train, of an unknown
    total, and the bar shows how far they are into it."""
    events: list[Event] = [
        RunStarted("jn", "join", "", "", "iid", 0, 2, "/runs/jn", NOW - 30.0, {1: None, 2: None}),
        ClientProgress(1, "training", round=3, epoch=1, epochs=1, batch=2, batches=4),
        ClientProgress(2, "waiting", round=3, epoch=1, epochs=1, batch=4, batches=4),
    ]
    script = Script(events)
    async with script.app().run_test(size=(120, 40)) as pilot:
        await settle(pilot, script)
        label = pilot.app.query_one("#round-label", Label)
        bar = pilot.app.query_one("#round-bar", ProgressBar)
        assert str(label.render()) == "round 3/?"
        assert bar.total == 1 and bar.progress is not None and 0.4 < bar.progress < 1.0
        assert pilot.app.query_one(ClientsTable).row_count == 2


async def test_a_restart_counts_at_once() -> None:
    """client-1 dies and is restarted: the row says restarting, and its restarts column 1."""
    events = [*started(), ProcessExited("client-1", -9, expected=False, restarts=0,
                                        will_restart=True, client=1)]
    script = Script(events)
    async with script.app().run_test(size=(120, 40)) as pilot:
        await settle(pilot, script)
        table = pilot.app.query_one(ClientsTable)
        assert cell(table, 1, "state").plain.strip() == "restarting"
        assert cell(table, 1, "restarts").plain.strip() == "1"


async def test_failed_client_row_is_red_and_f_shows_its_tail() -> None:
    script = Script(federated_events())
    async with script.app().run_test(size=(120, 40)) as pilot:
        await settle(pilot, script)
        table = pilot.app.query_one(ClientsTable)
        state = cell(table, 2, "state")
        assert state.plain.strip() == "failed"
        assert "red" in str(state.style)
        assert "red" in str(cell(table, 2, "client").style)
        assert cell(table, 2, "restarts").plain.strip() == "2"
        assert "red" not in str(cell(table, 0, "state").style)
        await pilot.press("f")
        body = pilot.app.screen.query_one("#failed-body")
        assert "RuntimeError: CUDA error: out of memory" in str(body.render())


async def test_q_requests_stop_once_then_quits_with_run_exit_code() -> None:
    script = Script(started())
    app = script.app()
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot, script)
        await pilot.press("q")
        assert script.stops == ["interrupted"]
        await until(lambda: app.run_done, "the run to end", pause=pilot.pause)
        app.redraw()
        await pilot.pause()
        summary = app.query_one(SummaryPanel)
        assert summary.has_class("-visible")
        assert "interrupted" in str(summary.render())
        await pilot.press("q")
    assert app.return_value == 130


async def test_header_shows_stopping_after_q() -> None:
    script = Script(started(), finish_on_stop=False)
    app = script.app()
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot, script)
        await pilot.press("q")
        await pilot.press("q")
        assert script.stops == ["interrupted"]
        await pilot.pause()
        assert "stopping…" in screen_text(app.query_one("#header"))


async def test_cpu_mode_text_instead_of_bars() -> None:
    script = Script([*started(2, (None, None)), GpuStats((), cpu_mode=True)])
    async with script.app().run_test(size=(80, 24)) as pilot:
        await settle(pilot, script)
        panel = pilot.app.query_one(GpuPanel)
        assert str(panel.render()) == CPU_MODE
        assert cell(pilot.app.query_one(ClientsTable), 0, "gpu").plain.strip() == "cpu"


async def test_gpu_panel_shows_each_gpu() -> None:
    script = Script(federated_events())
    async with script.app().run_test(size=(160, 48)) as pilot:
        await settle(pilot, script)
        text = str(pilot.app.query_one(GpuPanel).render())
        assert "GPU 0 NVIDIA H100 80GB HBM3" in text
        assert "83%" in text and "21.0/80.0 GiB" in text
        assert "2 pids" in text


async def test_a_redraw_while_the_panels_are_gone_keeps_its_work_for_later() -> None:
    # the refresh timer can tick while the app tears its screen down (seen once in CI)
    script = Script(federated_events())
    async with script.app().run_test(size=(160, 48)) as pilot:
        await settle(pilot, script)
        await pilot.app.query(GpuPanel).remove()
        pilot.app.state.dirty |= {"gpus", "header"}

        pilot.app.redraw()

        assert {"gpus", "header"} <= pilot.app.state.dirty


async def test_run_finished_with_exit_on_finish_exits_with_its_code() -> None:
    events = [*started(), RunFinished("failed", 1, {"wall_seconds": 12.0}, "client-1", ("boom",))]
    script = Script(events, hold=False, code=1)
    app = script.app(exit_on_finish=True)
    async with app.run_test(size=(80, 24)) as pilot:
        await until(lambda: not app.is_running, "the app to exit on RunFinished", pause=pilot.pause)
    assert app.return_value == 1


async def test_local_run_counts_epochs() -> None:
    events: list[Event] = [
        RunStarted("solo", "local", "resnet18", "cifar10", "none", 5, 1, "/runs/solo", NOW - 10, {0: 0}),
        ProcessStarted("local", 130, "local", 0, 0),
        RoundStarted(1, 5),
        RoundFinished(1, 5, 0.5, 1.4, 1.6, 1, 10.0, 0.5),
        RoundStarted(2, 5),
        ClientProgress(0, "training", 2, 1, 1, 100, 782, 6400, 1.3, 0),
        LogLine("local", "epoch 1/5: accuracy 0.5000"),
    ]
    script = Script(events)
    async with script.app().run_test(size=(80, 24)) as pilot:
        await settle(pilot, script)
        assert str(pilot.app.query_one("#round-label", Label).render()) == "epoch 2/5"
        table = pilot.app.query_one(ClientsTable)
        assert cell(table, 0, "client").plain.strip() == "local"
        assert cell(table, 0, "batch").plain.strip() == "100/782"
        await pilot.press("1")
        assert pilot.app.query_one(LogPane).only == "local"


async def test_crashing_run_shows_the_error_and_exits_1() -> None:
    bus = EventBus()

    async def run() -> int:
        raise RuntimeError("supervisor broke")

    app = FedlaunchApp(bus, run, lambda reason: None, clock=lambda: NOW)
    async with app.run_test(size=(80, 24)) as pilot:
        await until(lambda: app.run_done, "the crashed run to end", pause=pilot.pause)
        await until(lambda: "RuntimeError: supervisor broke" in screen_text(app.query_one(SummaryPanel)),
                    "the error on the summary", pause=pilot.pause)
        await pilot.press("q")
    assert app.return_value == 1


async def test_log_filter_by_client_key() -> None:
    script = Script(federated_events())
    async with script.app().run_test(size=(120, 40)) as pilot:
        await settle(pilot, script)
        log = pilot.app.query_one(LogPane)
        lines = [strip.text for strip in log.lines]
        assert any(line.startswith("server    | round 1/10") for line in lines)
        await pilot.press("1")
        assert log.only == "client-1"
        lines = [strip.text for strip in log.lines]
        assert lines and all(line.startswith("client-1  | ") for line in lines)
        await pilot.press("a")
        assert log.only is None
        assert len(log.lines) > len(lines)


def finished_events() -> list[Event]:
    tail = ("Traceback (most recent call last):", '  File "fedcore/train.py", line 88, in train_epochs',
            "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB")
    summary = {"rounds_completed": 3, "final_accuracy": 0.47, "best_accuracy": 0.47, "wall_seconds": 130.5}
    return [*federated_events(), RunFinished("failed", 1, summary, "client-2", tail)]


def test_snapshot_failed_80x24(snap_compare) -> None:  # type: ignore[no-untyped-def]
    script = Script(finished_events(), hold=False, code=1, delay=None)

    async def ready(pilot: Pilot[int]) -> None:
        await settle(pilot, script)

    assert snap_compare(script.app(), terminal_size=(80, 24), run_before=ready)


def test_snapshot_80x24(snap_compare) -> None:  # type: ignore[no-untyped-def]
    script = Script(federated_events(), delay=None)

    async def ready(pilot: Pilot[int]) -> None:
        await settle(pilot, script)

    assert snap_compare(script.app(), terminal_size=(80, 24), run_before=ready)


def test_snapshot_160x48(snap_compare) -> None:  # type: ignore[no-untyped-def]
    script = Script(federated_events(), delay=None)

    async def ready(pilot: Pilot[int]) -> None:
        await settle(pilot, script)

    assert snap_compare(script.app(), terminal_size=(160, 48), run_before=ready)


def test_headless_join_says_what_its_clients_did() -> None:
    """A join prints which clients it runs, and at the end how far they trained: the model,
    rounds and accuracy are the serving side's."""
    import io

    from launcher.supervision.headless import HeadlessPrinter

    out = io.StringIO()
    printer = HeadlessPrinter(out, colour=False)
    printer(RunStarted("jn", "join", "", "", "iid", 0, 2, "/runs/jn", NOW, {4: None, 5: None}))
    printer(ClientProgress(4, "training", round=2))
    printer(ClientProgress(5, "waiting", round=3))
    printer(RunFinished("interrupted", 130, {"wall_seconds": 12.0}))
    lines = out.getvalue().splitlines()
    assert lines[0] == ("fedlaunch: join run 'jn': client(s) 4, 5 (model, data and rounds set "
                        "by the server) -> /runs/jn")
    assert lines[-1] == ("fedlaunch: interrupted after 3 rounds in 12.0s; the serving side has "
                         "the accuracy; exit 130")
