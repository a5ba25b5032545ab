"""The header: what runs (name, mode, model, data, partition) and how long it has run."""

from __future__ import annotations

from rich.table import Table
from rich.text import Text
from textual.widgets import Static

from launcher.tui.charts import clock_text
from launcher.tui.state import RunState

REASON_STYLE = {"completed": "bold green", "interrupted": "bold yellow", "terminated": "bold yellow",
                "hangup": "bold yellow"}


def status_text(state: RunState) -> Text:
    """running / stopping… / the exit reason and code once the run has ended."""
    if state.finished is not None:
        reason = state.finished.exit_reason
        return Text(f"{reason} (exit {state.finished.exit_code})", REASON_STYLE.get(reason, "bold red"))
    if state.crash is not None:
        return Text("launcher error", "bold red")
    if state.stopping:
        return Text("stopping…", "bold yellow")
    if state.run is None:
        return Text("starting…", "dim")
    return Text("running", "bold green")


class RunHeader(Static):
    """Two lines: the run's identity, then elapsed / ETA / the last warning / status."""

    def show(self, state: RunState) -> None:
        run = state.run
        top = Text(" fedlaunch ", "bold reverse")
        if run is None:
            top.append("  waiting for the run to start", "dim")
        else:
            top.append(f" {run.run_name}", "bold")
            parts = [p for p in (run.mode, run.model, run.dataset) if p]
            if run.mode == "federated":
                parts += [run.partition, f"{run.num_clients} clients"]
            top.append("  " + " · ".join(parts))
        left = Text(f" elapsed {clock_text(state.elapsed())}")
        if state.finished is None:
            left.append(f"  ETA {clock_text(state.eta())}")
        if state.rounds:
            mean = sum(r.seconds for r in state.rounds) / len(state.rounds)
            left.append(f"  {mean:.1f} s/{state.unit}", "dim")
        notice = state.last_notice
        if notice is not None and state.finished is None:
            left.append(f"  {notice.text}", "red" if notice.level == "error" else "yellow")
        bottom = Table.grid(expand=True)
        bottom.add_column(ratio=1, no_wrap=True, overflow="ellipsis")
        bottom.add_column(justify="right", no_wrap=True)
        bottom.add_row(left, status_text(state) + Text(" "))
        grid = Table.grid(expand=True)
        grid.add_column(no_wrap=True, overflow="ellipsis")
        grid.add_row(top)
        grid.add_row(bottom)
        self.update(grid)
