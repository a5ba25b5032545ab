"""How a run ends: the exit codes, the stop reasons behind them, and the named failure."""

from __future__ import annotations

import signal

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
EXIT_SIGHUP = 128 + signal.SIGHUP  # 129: the terminal or SSH session went away
EXIT_SIGINT = 128 + signal.SIGINT  # 130: Ctrl+C, `q` in the TUI
EXIT_SIGTERM = 128 + signal.SIGTERM  # 143: `kill`, a scheduler's stop

# A stop asked for from outside: the reason summary.json records and the exit code it gives.
STOP_CODES = {"interrupted": EXIT_SIGINT, "terminated": EXIT_SIGTERM, "hangup": EXIT_SIGHUP}
# Which signal asks for which stop (SIGHUP is handled like SIGTERM, with its own code).
STOP_SIGNALS = {signal.SIGINT: "interrupted", signal.SIGTERM: "terminated",
                signal.SIGHUP: "hangup"}


class RunFailed(Exception):
    """A process the run cannot go on without has died."""

    def __init__(self, process: str, reason: str, tail: tuple[str, ...] = ()) -> None:
        super().__init__(f"{process} {reason}")
        self.process = process
        self.tail = tail
