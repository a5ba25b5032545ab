"""The summary shown when the run has ended: accuracy, wall time, why it ended, what failed."""

from __future__ import annotations

from rich.text import Text
from textual.widgets import Static

from launcher.tui.charts import clock_text
from launcher.tui.header import REASON_STYLE
from launcher.tui.state import RunState

TAIL_LINES = 8
TAIL_LINES_SHORT = 3  # on a screen under 40 rows


def summary_text(state: RunState, tail_lines: int = TAIL_LINES) -> Text:
    """What the run achieved and, if a process failed, its name and last lines in red."""
    text = Text()
    finished = state.finished
    if finished is None and state.crash is not None:
        text.append(f"the launcher stopped with an error: {state.crash}", "bold red")
        return text
    if finished is None:
        return text
    s = finished.summary
    unit = state.unit
    done = s.get(f"{unit}s_completed", state.completed)
    final = s.get("final_accuracy", state.rounds[-1].accuracy if state.rounds else None)
    best = s.get("best_accuracy", state.best_accuracy)
    text.append(f"{finished.exit_reason}", REASON_STYLE.get(finished.exit_reason, "bold red"))
    if state.run is not None and state.run.mode == "join":  # the serving side has the metrics
        text.append(f" after {clock_text(state.elapsed())}; the clients here trained up to "
                    f"{unit} {state.current_round or '-'}")
    else:
        text.append(f" after {done} {unit}s in {clock_text(state.elapsed())}")
        if final is not None:
            text.append("  final accuracy ")
            text.append(f"{final:.4f}", "bold")
            text.append("  best ")
            text.append(f"{best:.4f}" if best is not None else "-", "bold")
        else:
            text.append(f"  no {unit} completed")
    text.append(f"  exit {finished.exit_code}")
    failure = state.failure
    if failure is not None:
        text.append(f"\n{failure.name} failed; the last lines of its log:", "bold red")
        for line in failure.tail[-tail_lines:]:
            text.append(f"\n  {line}", "red")
        more = len(failure.tail) > tail_lines
        text.append(f"\nf: all {len(failure.tail)} lines  q: quit" if more else "\nq: quit", "dim")
    else:
        text.append("  q: quit", "dim")
    return text


class SummaryPanel(Static):
    """Hidden while the run goes on; shown once it ends."""

    def show(self, state: RunState) -> None:
        visible = state.finished is not None or state.crash is not None
        self.set_class(visible, "-visible")
        self.set_class(state.failure is not None or state.crash is not None, "-failed")
        if visible:
            short = self.app.size.height < 40
            self.update(summary_text(state, TAIL_LINES_SHORT if short else TAIL_LINES))
