"""Runs a Plan headless or under the Textual view, guarded by the watchdog; and a sweep's view."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from launcher.events import EventBus
from launcher.planning.gpus import Nvml
from launcher.planning.plan import Plan
from launcher.supervision.afterwards import start_plots
from launcher.supervision.headless import FinalLine, HeadlessPrinter
from launcher.supervision.supervisor import Supervisor
from launcher.supervision.watchdog import Watchdog

if TYPE_CHECKING:
    from launcher.sweep.queue import CellEvent, SweepQueue


def make_supervisor(plan: Plan, bus: EventBus) -> Supervisor:
    nvml = Nvml() if plan.placement.gpus else None
    return Supervisor(plan, bus, nvml=nvml, watchdog=Watchdog(), afterwards=start_plots)


async def run_headless(plan: Plan) -> int:
    bus = EventBus()
    bus.subscribe(HeadlessPrinter())
    supervisor = make_supervisor(plan, bus)
    supervisor.install_signal_handlers()
    return await supervisor.run()


def run_tui(plan: Plan, *, exit_on_finish: bool = False) -> int:
    from launcher.tui.app import FedlaunchApp

    bus = EventBus()
    final = FinalLine()
    bus.subscribe(final)
    supervisor = make_supervisor(plan, bus)

    async def run() -> int:
        supervisor.install_signal_handlers()
        return await supervisor.run()

    app = FedlaunchApp(bus, run, supervisor.request_stop, exit_on_finish=exit_on_finish)
    code = app.run()
    final.print()  # the screen is gone: the result stays in the terminal, as headless prints it
    return int(code) if code is not None else 1


def run_sweep_tui(make_queue: Callable[[Callable[[CellEvent], None]], SweepQueue]) -> int:
    """The sweep's screen until the sweep ends or is stopped; the sweep's exit code."""
    from launcher.tui.sweep_app import SweepApp

    code = SweepApp(make_queue).run()
    return int(code) if code is not None else 1
