"""Nothing outlives the launcher: a tiny watchdog kills every process of the run once it is gone.

Every child gets a per-run token in its environment (`FEDLAUNCH_RUN_TOKEN`), and Flower passes
its environment on to what it starts (the SuperExec, the ServerApp, ClientApps), in whatever
session. The watchdog starts first, in a session of its own, with the read end of a pipe whose
write end only the launcher holds. When the launcher exits, however it exits (SIGKILL, the OOM
killer, a closed SSH session), the pipe reads EOF and the watchdog SIGKILLs every process that
carries the token, until none is left. Direct children also get PR_SET_PDEATHSIG (procs.py).

    python -m launcher.supervision.watchdog TOKEN     (stdin: the launcher's pipe)
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time

import psutil

TOKEN_VAR = "FEDLAUNCH_RUN_TOKEN"


def carries(proc: psutil.Process, token: str) -> bool:
    try:
        return proc.environ().get(TOKEN_VAR) == token
    except psutil.Error:  # gone, a zombie, or another user's
        return False


def sweep(token: str, passes: int = 10) -> int:
    """SIGKILL every process carrying `token` until a scan finds none; how many were killed."""
    me, killed = os.getpid(), 0
    for _ in range(passes):
        found = [p for p in psutil.process_iter() if p.pid != me and carries(p, token)]
        if not found:
            break
        for proc in found:
            try:
                proc.kill()
                killed += 1
            except psutil.Error:
                continue
        psutil.wait_procs(found, timeout=1.0)
    return killed


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m launcher.supervision.watchdog TOKEN", file=sys.stderr)
        return 2
    token = argv[0]
    for sig in (signal.SIGINT, signal.SIGHUP):  # a terminal's signals are the launcher's to act on
        signal.signal(sig, signal.SIG_IGN)
    try:
        while os.read(0, 4096):
            pass
    except OSError:
        pass
    sweep(token)
    return 0


class Watchdog:
    """The launcher's side: start the watchdog, give children the token, close the pipe at the end."""

    def __init__(self, token: str | None = None) -> None:
        self.token = token or secrets.token_hex(16)
        self.proc: subprocess.Popen[bytes] | None = None
        self._pipe: int | None = None

    @property
    def env(self) -> dict[str, str]:
        """What every child's environment gets, so the watchdog can find it and its descendants."""
        return {TOKEN_VAR: self.token}

    def start(self) -> None:
        read, write = os.pipe()  # not inheritable: no child but the watchdog holds the pipe
        env = {k: v for k, v in os.environ.items() if k != TOKEN_VAR}
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "launcher.supervision.watchdog", self.token],
                stdin=read, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
                start_new_session=True,
            )
        finally:
            os.close(read)
        self._pipe = write

    def close(self, wait: float = 0.0) -> None:
        """Let the watchdog sweep and exit (as it would if the launcher died); wait up to `wait` s."""
        if self._pipe is not None:
            os.close(self._pipe)
            self._pipe = None
        if self.proc is not None and wait > 0:
            deadline = time.monotonic() + wait
            while self.proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.02)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
