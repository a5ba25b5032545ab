"""The sweep's screen: the grid with each cell's state, round and accuracy, and the cells running."""

from __future__ import annotations

import asyncio
import signal
from collections import deque
from collections.abc import Callable

from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.widgets import DataTable, Footer, Static

from launcher.sweep.queue import CellEvent, SweepQueue
from launcher.sweep.state import CellState

COLUMNS = ("cell", "state", "round", "accuracy", "best acc", "gpus")
REFRESH_S = 0.5
STATE_STYLE = {"done": "green", "running": "bold cyan", "failed": "bold red", "stopped": "yellow",
               "pending": "dim"}


def cell_cells(cell: CellState) -> tuple[str, ...]:
    def pct(value: float | None) -> str:
        return "-" if value is None else f"{value:.4f}"

    rounds = f"{cell.round}/{cell.total}" if cell.total else (str(cell.round) if cell.round else "-")
    return (cell.name, cell.state, rounds, pct(cell.accuracy), pct(cell.best_accuracy),
            cell.gpus or "-")


class SweepApp(App[int]):
    """Live view of a sweep; its result is the sweep's exit code. q or Ctrl+C stops it."""

    TITLE = "fedlaunch sweep"
    ENABLE_COMMAND_PALETTE = False
    AUTO_FOCUS = None
    CSS = """
    #now { height: auto; padding: 0 1; background: $boost; }
    #grid { height: 1fr; }
    #events { height: 8; border-top: solid $primary; padding: 0 1; }
    """
    BINDINGS = [
        Binding("q", "stop", "stop (resumable)"),
        Binding("ctrl+c", "stop", "stop", show=False, priority=True),
    ]

    def __init__(self, make_queue: Callable[[Callable[[CellEvent], None]], SweepQueue]) -> None:
        super().__init__()
        self.queue = make_queue(self.on_cell_event)
        self.events: deque[str] = deque(maxlen=6)
        self.code: int | None = None

    def compose(self) -> ComposeResult:
        yield Static(id="now", markup=False)
        yield DataTable(id="grid", cursor_type="row", zebra_stripes=True)
        yield Static(id="events", markup=False)
        yield Footer()

    def on_mount(self) -> None:
        table = self.query_one("#grid", DataTable)
        table.add_columns(*COLUMNS)
        for cell in self.queue.state.cells:
            table.add_row(*cell_cells(cell), key=cell.name)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGHUP):
            loop.add_signal_handler(sig, self.queue.stop, sig)
        self.set_interval(REFRESH_S, self.redraw)
        self.run_worker(self.drive(), exclusive=True)
        self.redraw()

    async def drive(self) -> None:
        self.code = await self.queue.run()
        self.redraw()
        self.exit(self.code)

    def on_cell_event(self, event: CellEvent) -> None:
        self.events.append(f"[{event.index}/{event.cells}] {event.cell}: {event.kind} {event.text}")

    def redraw(self) -> None:
        state = self.queue.state
        table = self.query_one("#grid", DataTable)
        for cell in state.cells:
            values = cell_cells(cell)
            for column, value in zip(table.columns, values, strict=True):
                shown = f"[{STATE_STYLE[value]}]{value}[/]" if value in STATE_STYLE else value
                table.update_cell(cell.name, column, shown)
        counts = state.counts()
        running = [c for c in state.cells if c.state == "running"]
        now = "; ".join(f"{c.name} round {c.round}/{c.total or '?'}"
                        + (f" accuracy {c.accuracy:.4f}" if c.accuracy is not None else "")
                        for c in running) or "no cell running"
        stopping = " — stopping: cells keep their checkpoints" if self.queue.stop_signal else ""
        self.query_one("#now", Static).update(
            f"sweep {state.path}  {counts['done']}/{len(state.cells)} done, {counts['failed']} "
            f"failed\nrunning now: {now}{stopping}")
        self.query_one("#events", Static).update("\n".join(self.events))

    def action_stop(self) -> None:
        self.queue.stop(signal.SIGINT)
        self.redraw()

