"""A Textual driver whose output survives a closed terminal, so the app can still stop the run.

Textual 8's `LinuxDriver` writes the screen through a `WriterThread`: the event loop puts text on
a queue of 30 items and the thread writes it to the terminal. When the terminal closes (the
window, `tmux kill-session`, an SSH connection dropped) the tty is hung up and every write fails
with EIO: the writer thread dies of it, the queue fills, and the next `put` blocks the event loop
for good, so neither the SIGHUP handler nor the supervisor that must stop the children ever runs
again. Here the driver's file drops what it cannot write once the terminal is gone (the writer
thread keeps draining the queue), and `gone` tells the app that nobody is watching any more.
"""

from __future__ import annotations

import os
import sys
import threading
from typing import IO, Any

from textual.drivers.linux_driver import LinuxDriver


class HangupSafeFile:
    """The terminal's text stream for Textual's writer thread: a write or flush that fails (EIO
    on a hung-up tty, EPIPE, a closed file) marks the terminal gone, and later ones are dropped."""

    def __init__(self, file: IO[str]) -> None:
        self._file = file
        self.gone = threading.Event()

    def write(self, text: str) -> int:
        if not self.gone.is_set():
            try:
                return self._file.write(text)
            except (OSError, ValueError):
                self.gone.set()
        return len(text)

    def flush(self) -> None:
        if not self.gone.is_set():
            try:
                self._file.flush()
            except (OSError, ValueError):
                self.gone.set()

    def fileno(self) -> int:
        return self._file.fileno()

    def isatty(self) -> bool:
        return self._file.isatty()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._file, name)


class HangupSafeDriver(LinuxDriver):
    """`LinuxDriver` writing through a `HangupSafeFile`, whose input thread can be stopped once
    the terminal is gone (reading a hung-up tty returns at once with nothing, so Textual's input
    loop would spin, holding the GIL the stopping app needs)."""

    latest: HangupSafeDriver | None = None  # the one drawing now, for `hung_up`/`terminal_gone`

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.terminal = HangupSafeFile(self._file if self._file is not None else sys.stderr)
        self._file = self.terminal  # type: ignore[assignment]  # for start_application_mode's WriterThread
        HangupSafeDriver.latest = self


def hung_up() -> None:
    """The terminal closed: drop further output and stop reading input."""
    driver = HangupSafeDriver.latest
    if driver is not None:
        driver.terminal.gone.set()
        driver.exit_event.set()  # Textual's input loop checks it every 0.1 s


def terminal_gone() -> bool:
    """Whether the terminal the TUI drew on has closed or stopped taking output."""
    driver = HangupSafeDriver.latest
    return driver is not None and driver.terminal.gone.is_set()


def leave_now(code: int) -> None:
    """End the process with `code` at once, once the terminal is gone and the run is down: no
    Textual teardown (widgets unmounted, the screen restored for nobody) and no interpreter
    clean-up, which under load take longer than the 5 s a hung-up launcher has to be gone."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)
