"""How a run ends: the exit codes, the stop reasons behind them, and the named failure."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

from fedcore.rundir import NO_CLIENTS, RUN_FOLDER_FAILED, RunDir, failed_in_folder, summarize

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


RUN_FOLDER = "run folder"  # the failed "process" of a run whose folder cannot be written
SERVERAPP_LINE = f"fedlaunch: {RUN_FOLDER_FAILED}"  # what the ServerApp prints then (fedcore.rundir)


def folder_failed(exc: OSError, run_dir: Path) -> RunFailed | None:
    """`run folder PATH cannot be written (CAUSE)` when `exc` is about a file in `run_dir`."""
    found = failed_in_folder(exc, run_dir)
    return None if found is None else RunFailed(RUN_FOLDER, f"{found[0]} cannot be written "
                                                f"({found[1]})")


REFUSED_RUN = "fedlaunch: the ServerApp refused run "  # launcher.shim.serverhost.REFUSED


def serverapp_folder_failure(name: str, tail: tuple[str, ...]) -> RunFailed | None:
    """The ServerApp's own line saying which file of the run folder it could not write, that no
    client connected, or which run, submitted by someone else, it refused to run."""
    for line in reversed(tail):
        if line.startswith((SERVERAPP_LINE, NO_CLIENTS)):
            return RunFailed(name, f"(the ServerApp) {line.removeprefix('fedlaunch: ')}")
        if line.startswith(REFUSED_RUN):
            return RunFailed(name, f"(the ServerApp) refused run {line.removeprefix(REFUSED_RUN)}; "
                             "this launch's own run cannot start: launch again")
    return None


def write_summary(rundir: RunDir, records: list[dict[str, Any]], ended: dict[str, Any] | None,
                  mode: str, reason: str, wall: float, restarts: dict[str, int],
                  ) -> tuple[dict[str, Any], OSError | None]:
    """metrics.jsonl's end record (unless the app wrote one: `ended`) and summary.json, each as
    far as the run folder lets it be written; the summary, and the first write that failed.
    `records` are the metrics as the launcher read them, used where metrics.jsonl is unreadable."""
    error: OSError | None = None
    try:
        rundir.create()
        if ended is None and reason != "completed":
            rundir.append_metric("end", exit_reason=reason)
    except OSError as exc:
        error, reason = exc, "failed"
    try:
        read = rundir.metrics()
    except OSError:
        read = records
    summary = summarize(rundir, mode=mode, exit_reason=reason, wall_seconds=wall, records=read)
    summary["restarts"] = dict(restarts)
    try:
        rundir.write_summary(summary)
    except OSError as exc:
        error = error or exc
    return summary, error
