"""Headless output: the merged, prefixed log stream and one progress line per round."""

from __future__ import annotations

import os
import sys
import time
from typing import TextIO

from launcher.events import (
    ClientProgress,
    Event,
    LogLine,
    Notice,
    ProcessExited,
    RoundFinished,
    RunFinished,
    RunStarted,
)

COLOURS = ("36", "32", "33", "35", "34", "96", "92", "93", "95", "94")


def use_colour(stream: TextIO) -> bool:
    return stream.isatty() and "NO_COLOR" not in os.environ


class HeadlessPrinter:
    """Prints events as `name | line` text; colour only on a terminal, NO_COLOR respected."""

    def __init__(self, stream: TextIO = sys.stdout, *, show_logs: bool = True,
                 colour: bool | None = None) -> None:
        self.stream = stream
        self.show_logs = show_logs
        self.colour = use_colour(stream) if colour is None else colour
        self.width = 10
        self.started = time.time()
        self.unit = "round"
        self.joined = False  # a --join: only its clients' progress is seen here
        self.client_round = 0  # the latest round a client here trained (for a join)
        self._colours: dict[str, str] = {}

    def __call__(self, event: Event) -> None:
        if isinstance(event, LogLine):
            if self.show_logs and event.echo:
                self._write(self._prefix(event.name) + event.text)
        elif isinstance(event, RunStarted):
            self.started = event.started_at
            self.unit = "epoch" if event.mode == "local" else "round"
            self.joined = event.mode == "join"
            what = (f"{event.model} on {event.dataset}, {event.total} {self.unit}s"
                    if event.model else "client(s) " + ", ".join(map(str, event.client_gpus))
                    + " (model, data and rounds set by the server)")
            self._write(self._bold(f"fedlaunch: {event.mode} run '{event.run_name}': {what} "
                                   f"-> {event.out_dir}"))
        elif isinstance(event, ClientProgress):
            self.client_round = max(self.client_round, event.round)
        elif isinstance(event, RoundFinished):
            train = f"  train loss {event.train_loss:.4f}" if event.train_loss is not None else ""
            replies = f"  replies {event.replies}" if self.unit == "round" else ""
            if event.rejected:
                replies += f"  rejected {event.rejected}"
            if event.kept_model:
                replies += f"  ({event.kept_model})"
            self._write(self._bold(
                f"{self.unit} {event.round}/{event.total}  accuracy {event.accuracy:.4f}  "
                f"loss {event.loss:.4f}{train}{replies}  elapsed "
                f"{time.time() - self.started:.1f}s"))
        elif isinstance(event, Notice):
            self._write(f"fedlaunch: {event.level}: {event.text}", "31" if event.level == "error"
                        else "33" if event.level == "warning" else None)
        elif isinstance(event, ProcessExited) and not event.will_restart and event.log_tail:
            self._write(f"fedlaunch: last lines of {event.name}'s log:", "31")
            for line in event.log_tail:
                self._write(self._prefix(event.name) + line)
        elif isinstance(event, RunFinished):
            self._finished(event)

    def _finished(self, event: RunFinished) -> None:
        if event.failed_process and not event.log_tail:  # the reason was the error line above
            self._write(f"fedlaunch: run failed: {event.failed_process}", "31")
        elif event.failed_process:
            self._write(f"fedlaunch: run failed: {event.failed_process} died; last lines of its log:",
                        "31")
            for line in event.log_tail[-15:]:
                self._write(self._prefix(event.failed_process) + line)
        self._write(self._bold(self.final_line(event)))

    def final_line(self, event: RunFinished) -> str:
        """The one-line result: `fedlaunch: completed after 3 rounds in 21.4s; ...; exit 0`."""
        s = event.summary
        done = s.get("rounds_completed", s.get("epochs_completed"))
        final, best = s.get("final_accuracy"), s.get("best_accuracy")
        accuracy = (f"final accuracy {final:.4f}, best {best:.4f}" if final is not None
                    else "no round completed")
        if self.joined:  # the serving side has the metrics
            done, accuracy = self.client_round, "the serving side has the accuracy"
        return (f"fedlaunch: {event.exit_reason} after {done} {self.unit}s in "
                f"{s.get('wall_seconds', 0):.1f}s; {accuracy}; exit {event.exit_code}")

    def _prefix(self, name: str) -> str:
        self.width = max(self.width, len(name))
        text = f"{name:<{self.width}} | "
        if not self.colour:
            return text
        code = self._colours.setdefault(name, COLOURS[len(self._colours) % len(COLOURS)])
        return f"\x1b[{code}m{text}\x1b[0m"

    def _bold(self, text: str) -> str:
        return f"\x1b[1m{text}\x1b[0m" if self.colour else text

    def _write(self, text: str, colour: str | None = None) -> None:
        if colour and self.colour:
            text = f"\x1b[{colour}m{text}\x1b[0m"
        try:
            self.stream.write(text + "\n")
            self.stream.flush()
        except (OSError, ValueError):  # a closed pipe, or a terminal gone (SIGHUP follows)
            pass


class FinalLine:
    """Under the TUI: remembers what the final line needs, to print it once the screen is gone."""

    def __init__(self, stream: TextIO = sys.stdout) -> None:
        self.printer = HeadlessPrinter(stream, show_logs=False)
        self.finished: RunFinished | None = None

    def __call__(self, event: Event) -> None:
        if isinstance(event, RunStarted):
            self.printer.unit = "epoch" if event.mode == "local" else "round"
            self.printer.joined = event.mode == "join"
        elif isinstance(event, ClientProgress):
            self.printer(event)
        elif isinstance(event, RunFinished):
            self.finished = event

    def print(self) -> None:
        """As headless prints it: the failure (named, with its log's tail) and the result line."""
        if self.finished is not None:
            self.printer(self.finished)
