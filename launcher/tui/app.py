"""The Textual app: subscribes to the event bus, runs the launcher's coroutine, draws panels."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import threading
import time
import traceback
from collections.abc import Awaitable, Callable

from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.css.query import NoMatches
from textual.widgets import Footer

from launcher.events import Event, EventBus, RunFinished
from launcher.tui.clients import ClientsTable
from launcher.tui.gpus import GpuPanel
from launcher.tui.header import RunHeader
from launcher.tui.logpane import LogPane
from launcher.tui.metrics import MetricsPanel
from launcher.tui.progress import RoundProgress
from launcher.tui.screens import FailedLogScreen, HelpScreen
from launcher.tui.state import RunState
from launcher.tui.summary import SummaryPanel
from launcher.tui.terminal import HangupSafeDriver, hung_up, terminal_gone
from launcher.tui.workers import ClientsSummary, WorkersTable

REFRESH_S = 0.15  # panels redraw at most this often, however fast events come
CLOCK_S = 1.0  # the header's elapsed / ETA tick
EXIT_FAILED = 1


class FedlaunchApp(App[int]):
    """Live view of one run; its result is the run's exit code."""

    CSS_PATH = "fedlaunch.tcss"
    TITLE = "fedlaunch"
    ENABLE_COMMAND_PALETTE = False
    AUTO_FOCUS = None
    BINDINGS = [
        Binding("q", "stop", "stop/quit"),
        Binding("ctrl+c", "stop", "stop", show=False, priority=True),
        Binding("ctrl+q", "stop", "stop", show=False, priority=True),
        Binding("l", "log", "log"),
        Binding("a", "only(None)", "all logs"),
        *(Binding(str(k), f"only({k})", f"client {k} log", show=False) for k in range(10)),
        Binding("c", "cycle", "cycle logs", show=False),
        Binding("f", "failed", "failed log"),
        Binding("question_mark", "help", "help"),
    ]

    def __init__(
        self,
        bus: EventBus,
        run: Callable[[], Awaitable[int]],
        request_stop: Callable[[str], None],
        *,
        exit_on_finish: bool = False,
        clock: Callable[[], float] = time.time,
    ) -> None:
        # Not on Windows, nor when TEXTUAL_DRIVER names another driver (Textual's own choice then).
        driver = None if sys.platform == "win32" or os.environ.get("TEXTUAL_DRIVER") else HangupSafeDriver
        super().__init__(driver_class=driver)
        self.bus = bus
        self._run_launcher = run
        self._request_stop = request_stop
        self.exit_on_finish = exit_on_finish
        self.state = RunState(clock)
        self.exit_code: int | None = None  # the run worker's result, else RunFinished's
        self.run_done = False
        self.leave_when_done = False  # `q` while stopping or finishing: leave once all is down
        self._ignore_events = False

    def compose(self) -> ComposeResult:
        yield RunHeader(id="header")
        yield RoundProgress(id="progress")
        yield SummaryPanel(id="summary")
        with Vertical(id="body"):
            yield WorkersTable(id="workers")
            yield ClientsSummary(id="clients-summary")
            yield ClientsTable(id="clients")
            with Horizontal(id="panels"):
                yield MetricsPanel(id="metrics")
                yield GpuPanel(id="gpus")
            yield LogPane(id="log")
        yield Footer()

    def on_mount(self) -> None:
        self.query_one("#clients").border_title = "clients"
        self.query_one("#workers").border_title = "workers"
        self.query_one("#metrics").border_title = "test accuracy / loss"
        self.query_one("#gpus").border_title = "GPUs"
        self.state.dirty |= {"header", "progress", "gpus", "metrics"}
        self.bus.subscribe(self._on_event)
        self.set_interval(REFRESH_S, self.redraw)
        self.set_interval(CLOCK_S, self._tick)
        self.redraw()
        self.run_worker(self._drive(), name="run", group="run", exit_on_error=False)

    # -- events in ----------------------------------------------------------------------------

    def _on_event(self, event: Event) -> None:
        """The bus callback: fold the event into state; panels redraw on the next tick."""
        if self._ignore_events:
            return
        if threading.get_ident() != self._thread_id and self._loop is not None:
            self._loop.call_soon_threadsafe(self._on_event, event)
            return
        try:
            self.state.apply(event)
        except Exception as exc:  # a view bug must never break the run that publishes
            self.state.log("fedlaunch", "error", f"view could not show {type(event).__name__}: {exc!r}")
        if isinstance(event, RunFinished):
            if self.exit_code is None:
                self.exit_code = event.exit_code
            self.redraw()
            if self.exit_on_finish:
                self._quit_with(event.exit_code if not self.run_done else self.exit_code)

    async def _drive(self) -> None:
        """Run the launcher; its return value is the exit code."""
        try:
            code = await self._run_launcher()
        except Exception as exc:  # shown to the user, then exit 1
            self.state.crash = f"{type(exc).__name__}: {exc}"
            for line in traceback.format_exc().splitlines():
                self.state.log("fedlaunch", "error", line)
            code = EXIT_FAILED
        self.exit_code = int(code)
        self.run_done = True
        self._leave_on_stop_signals()
        self.state.dirty |= {"header", "summary", "progress"}
        self.redraw()
        if self.exit_on_finish or self.leave_when_done:
            self._quit_with(self.exit_code)

    # -- drawing ------------------------------------------------------------------------------

    def _tick(self) -> None:
        self.state.dirty.add("header")
        if terminal_gone() and not self.leave_when_done:  # closed, and no SIGHUP came with it
            self.hang_up()

    def redraw(self) -> None:
        """Redraw the panels whose state changed since the last call."""
        state = self.state
        dirty, state.dirty = state.dirty, set()
        if not dirty:
            return
        try:
            self._draw(dirty)
        except NoMatches:  # a timer tick while the screen is not composed yet, or torn down
            state.dirty |= dirty

    def _draw(self, dirty: set[str]) -> None:
        state = self.state
        if "header" in dirty:
            self.query_one(RunHeader).show(state)
        if "progress" in dirty:
            self.query_one(RoundProgress).show(state)
        if dirty & {"clients", "clients-layout"}:
            clients, state.dirty_clients = state.dirty_clients, set()
            self.query_one(ClientsTable).show(state, clients, "clients-layout" in dirty)
        if dirty & {"workers", "workers-layout"}:
            self.query_one(WorkersTable).show(state)
            self.screen.set_class(state.pool is not None, "-pool")
        if dirty & {"workers", "clients", "progress"}:
            self.query_one(ClientsSummary).show(state)
        if "gpus" in dirty:
            self.query_one(GpuPanel).show(state)
        if "metrics" in dirty:
            self.query_one(MetricsPanel).show(state)
        if "log" in dirty:
            self.query_one(LogPane).show(state)
        if "summary" in dirty or "header" in dirty:
            self.query_one(SummaryPanel).show(state)
            self.screen.set_class(self.finished, "-finished")

    def on_resize(self) -> None:
        self.screen.set_class(self.size.height < 40, "-short")
        self.state.dirty.add("summary")

    # -- keys ---------------------------------------------------------------------------------

    @property
    def finished(self) -> bool:
        return self.run_done or self.state.finished is not None

    @property
    def finishing(self) -> bool:
        """The last round (or epoch) is done: what is left is the processes stopping."""
        state = self.state
        return state.total > 0 and state.completed >= state.total

    def action_stop(self) -> None:
        """Mid-run, the first press asks the run to stop and the screen stays on its summary.
        Pressed again while it stops, or once the run is finishing, the app leaves as soon as
        the processes are down; once the run has ended, at once."""
        if self.run_done:
            self._quit_with(self.exit_code if self.exit_code is not None else EXIT_FAILED)
            return
        leave = self.state.stopping or self.finishing or self.finished
        if not self.state.stopping:
            self.state.stopping = True
            self.state.dirty.add("header")
            self.redraw()
            self._request_stop("interrupted")
        if leave:
            self.leave_when_done = True
            self.notify("leaving once the processes are down", timeout=3)

    def action_log(self) -> None:
        log = self.query_one(LogPane)
        if self.screen.has_class("-log-only"):
            self.screen.remove_class("-log-only")
        elif self.focused is log:
            self.screen.add_class("-log-only")
        log.focus()

    def action_only(self, client: int | None) -> None:
        name = None if client is None else self.state.client_name(client)
        self.query_one(LogPane).filter(self.state, name)

    def action_cycle(self) -> None:
        names = [None, *sorted({n for n, _, _ in self.state.logs}, key=_process_order)]
        current = self.query_one(LogPane).only
        following = names[(names.index(current) + 1) % len(names)] if current in names else None
        self.query_one(LogPane).filter(self.state, following)

    def action_failed(self) -> None:
        failure = self.state.failure
        if failure is None:
            self.notify("no process has failed", timeout=3)
            return
        tail = failure.tail or self.state.tail_of(failure.name)
        self.push_screen(FailedLogScreen(failure.name, tail))

    def action_help(self) -> None:
        self.push_screen(HelpScreen())

    def hang_up(self) -> None:
        """SIGHUP, or the terminal stopped taking output: nobody is left to press `q` on the end
        screen, so the run stops as for SIGTERM (exit 129) and the app leaves once the processes
        are down."""
        hung_up()
        self.leave_when_done = True
        if self.run_done:
            self._quit_with(self.exit_code)
            return
        if not self.state.stopping:
            self.state.stopping = True
            self.state.dirty.add("header")
        self._request_stop("hangup")

    def _leave_on_stop_signals(self) -> None:
        """Once the run is over only this screen is left: the terminal closing (SIGHUP), `kill`
        or SIGINT leave it as `q` does. They used to ask the ended run to stop, and a TUI whose
        terminal had gone stayed alive, spinning on it."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGHUP, signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.action_stop)

    def _quit_with(self, code: int | None) -> None:
        self._ignore_events = True
        self.exit(EXIT_FAILED if code is None else code)


def _process_order(name: str) -> tuple[int, int, str]:
    """superlink, client-0, client-1, ..., then the rest by name."""
    if name.startswith("client-") and name[7:].isdigit():
        return (1, int(name[7:]), name)
    return (0 if name == "superlink" else 2, 0, name)

