"""Runs a Plan headless or under the Textual view, guarded by the watchdog; and a sweep's view."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Callable
from typing import TYPE_CHECKING

from launcher.events import EventBus
from launcher.planning.gpus import Nvml
from launcher.planning.plan import Plan
from launcher.supervision.afterwards import start_plots
from launcher.supervision.headless import FinalLine, HeadlessPrinter
from launcher.supervision.supervisor import Supervisor
from launcher.supervision.watchdog import Watchdog
from launcher.tracking.tracker import Tracking

if TYPE_CHECKING:
    from launcher.sweep.queue import CellEvent, SweepQueue


def make_supervisor(plan: Plan, bus: EventBus, track: tuple[str, ...] = ()) -> Supervisor:
    nvml = Nvml() if plan.placement.gpus else None
    tracking = Tracking(plan.run_dir, track) if track else None
    return Supervisor(plan, bus, nvml=nvml, watchdog=Watchdog(), afterwards=start_plots,
                      tracking=tracking)


async def run_headless(plan: Plan, track: tuple[str, ...] = ()) -> int:
    bus = EventBus()
    bus.subscribe(HeadlessPrinter())
    supervisor = make_supervisor(plan, bus, track)
    supervisor.install_signal_handlers()
    return await supervisor.run()


def run_tui(plan: Plan, *, exit_on_finish: bool = False, track: tuple[str, ...] = ()) -> int:
    from launcher.tui.app import FedlaunchApp
    from launcher.tui.terminal import leave_now, terminal_gone

    bus = EventBus()
    final = FinalLine()
    bus.subscribe(final)
    supervisor = make_supervisor(plan, bus, track)

    async def run() -> int:
        supervisor.install_signal_handlers()
        asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, app.hang_up)
        code = await supervisor.run()
        if terminal_gone():  # hung up: the run is down and summary.json written; no screen is
            leave_now(code)  # left to restore, so skip Textual's teardown (seconds under load)
        return code

    app = FedlaunchApp(bus, run, supervisor.request_stop, exit_on_finish=exit_on_finish)
    code = app.run()
    if not terminal_gone():  # the screen is gone: the result stays in the terminal, as headless prints it
        with contextlib.suppress(OSError):
            final.print()
    return int(code) if code is not None else 1


def run_sweep_tui(make_queue: Callable[[Callable[[CellEvent], None]], SweepQueue]) -> int:
    """The sweep's screen until the sweep ends or is stopped; the sweep's exit code."""
    from launcher.tui.sweep_app import SweepApp

    code = SweepApp(make_queue).run()
    return int(code) if code is not None else 1
