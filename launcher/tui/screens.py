"""Modal screens: the key help, and the failed process's log tail."""

from __future__ import annotations

from collections.abc import Sequence

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Static

HELP = """\
q, ctrl+c   stop the run (once); after it ended: quit
l           focus the log pane / give it the whole screen / back
0 .. 9      show only client k's log (process client-k)
c           cycle the log through the processes
a           show every process's log
f           the failed process's last log lines
?           this help
escape      close a popup"""


class HelpScreen(ModalScreen[None]):
    """The keys, in a box over the run."""

    BINDINGS = [Binding("escape,question_mark,q", "dismiss", "close")]

    def compose(self) -> ComposeResult:
        yield Static(Text(HELP), id="help-body")

    def on_mount(self) -> None:
        self.query_one("#help-body").border_title = "fedlaunch keys"


class FailedLogScreen(ModalScreen[None]):
    """A failed process's name and last log lines, in red."""

    BINDINGS = [Binding("escape,f,q", "dismiss", "close")]

    def __init__(self, name: str, tail: Sequence[str]) -> None:
        super().__init__()
        self.process = name
        self.tail = tuple(tail)

    def compose(self) -> ComposeResult:
        body = Text(f"{self.process} failed; the last lines of its log:\n", "bold red")
        body.append("\n".join(self.tail) if self.tail else "(it printed nothing)", "red")
        with VerticalScroll(id="failed-box"):
            yield Static(body, id="failed-body")

    def on_mount(self) -> None:
        box = self.query_one("#failed-box")
        box.border_title = f"{self.process}: log tail"
        box.scroll_end(animate=False)
