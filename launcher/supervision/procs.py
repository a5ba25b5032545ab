"""Child processes: start in their own process group, log every line to a file, stop for sure."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import re
import signal
import sys
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

import psutil

from launcher.kinds import ProcessRole

STREAM_LIMIT = 1 << 20
LINE_SPLIT = re.compile(r"\r\n|\r|\n")
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")  # Flower colours its log levels even into a pipe
PR_SET_PDEATHSIG = 1


def die_with_parent(parent: int) -> Callable[[], None] | None:
    """A preexec function: the child gets SIGKILL when the launcher (`parent`) dies (Linux), and
    keeps the launcher's niceness in the scheduler group its new session starts."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
    except OSError:
        return None
    nice = os.getpriority(os.PRIO_PROCESS, 0)

    def arm() -> None:
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent:  # the launcher died before the signal was armed
            os.kill(os.getpid(), signal.SIGKILL)
        if nice > 0:
            keep_niceness(nice)

    return arm


def keep_niceness(nice: int) -> None:
    """Give this process's autogroup the niceness `nice`. setsid() starts a new autogroup, and
    Linux shares the CPU between autogroups before it looks at niceness, so without this a
    `nice fedlaunch` would still take a full share of the CPU for each child (see sched(7))."""
    try:
        with open("/proc/self/autogroup", "w") as group:
            group.write(str(nice))
    except OSError:  # no autogroups in this kernel, or not allowed: niceness as it is
        pass


@dataclass(frozen=True)
class ProcessSpec:
    """How to start one child: what the plan shows and what the supervisor runs."""

    name: str
    role: ProcessRole  # what each means: launcher.supervision.roles
    argv: tuple[str, ...]
    env: dict[str, str] = field(default_factory=dict)
    gpu: int | None = None
    client: int | None = None
    clients: tuple[int, ...] = ()  # every client it serves: the pool's client host
    restartable: bool = False

    def served(self) -> tuple[int, ...]:
        """The clients whose nodes go when this process does."""
        return self.clients or (() if self.client is None else (self.client,))


class ManagedProcess:
    """One running child, its reader task and its log file."""

    def __init__(
        self,
        spec: ProcessSpec,
        log_path: Path,
        on_line: Callable[[str, str], None],
        base_env: dict[str, str],
        cwd: Path | None = None,
    ) -> None:
        self.spec = spec
        self.log_path = log_path
        self.on_line = on_line
        self.base_env = base_env
        self.cwd = cwd
        self.proc: asyncio.subprocess.Process | None = None
        self.reader: asyncio.Task[None] | None = None
        self.tail: deque[str] = deque(maxlen=40)
        self.known: dict[int, psutil.Process] = {}
        self.stopping = False
        self.write_error: OSError | None = None  # the first failed write of its log file

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    @property
    def returncode(self) -> int | None:
        return self.proc.returncode if self.proc else None

    async def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        env = {**self.base_env, **self.spec.env}
        self.stopping = False
        self.proc = await asyncio.create_subprocess_exec(
            *self.spec.argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            env=env,
            cwd=self.cwd,
            start_new_session=True,
            preexec_fn=die_with_parent(os.getpid()),
            limit=STREAM_LIMIT,
        )
        self.reader = asyncio.create_task(self._read(self.proc), name=f"read-{self.name}")

    async def _read(self, proc: asyncio.subprocess.Process) -> None:
        """Copy the child's output to its log file line by line, then wait for it to exit."""
        assert proc.stdout is not None
        pending = ""
        log = self._open_log()
        try:
            while chunk := await proc.stdout.read(65536):
                pending += chunk.decode(errors="replace")
                *lines, pending = LINE_SPLIT.split(pending)
                for line in lines:
                    self._emit(line, log)
            if pending:
                self._emit(pending, log)
        finally:
            if log is not None:
                with contextlib.suppress(OSError):
                    log.close()
        await proc.wait()

    def _open_log(self) -> TextIO | None:
        try:
            return self.log_path.open("a", buffering=1, errors="replace")
        except OSError as exc:
            self.write_error = self.write_error or exc
            return None

    def _emit(self, line: str, log: TextIO | None) -> None:
        """One line to the log file, the tail and the callback. A log that cannot be written
        is noted (write_error), and the child's output still read: a child blocked on a full
        pipe could never stop."""
        line = ANSI.sub("", line).rstrip()
        if not line:
            return
        if log is not None and self.write_error is None:
            try:
                log.write(line + "\n")
            except OSError as exc:  # a write names no file: say which
                self.write_error = OSError(exc.errno, exc.strerror, str(self.log_path))
        self.tail.append(line)
        self.on_line(self.name, line)

    async def wait(self) -> int:
        assert self.proc is not None and self.reader is not None
        await self.reader
        return self.proc.returncode if self.proc.returncode is not None else -1

    def send(self, sig: int) -> None:
        """Send `sig` to the child's process group; once the child has exited, to each
        descendant seen before (psutil checks each is still that process, so a reused pid
        is never hit)."""
        if self.proc is None:
            return
        if self.proc.returncode is None:
            try:
                os.killpg(self.proc.pid, sig)
                return
            except (ProcessLookupError, PermissionError):
                pass
        for child in self.known.values():
            try:
                child.send_signal(sig)
            except psutil.Error:
                continue

    def remember_descendants(self) -> list[psutil.Process]:
        """Note the child's descendants now: once it dies they can no longer be found from it.

        (Flower starts some in sessions of their own, e.g. the ServerApp under the SuperLink.)
        """
        if self.proc is None or self.proc.returncode is not None:
            return []
        try:
            found = psutil.Process(self.proc.pid).children(recursive=True)
        except psutil.Error:
            return []
        for child in found:
            self.known.setdefault(child.pid, child)
        return found

    def descendants(self) -> list[psutil.Process]:
        """Descendants seen now or earlier (psutil checks a remembered pid is the same process)."""
        self.remember_descendants()
        return list(self.known.values())


async def stop_all(processes: Sequence[ManagedProcess], timeout: float = 10.0) -> None:
    """Stop every process at once: SIGTERM each process group (and the descendants that left it),
    wait to one deadline, SIGKILL the survivors and every descendant seen, then drain the logs."""
    live = [p for p in processes if p.proc is not None]
    escaped: dict[int, psutil.Process] = {}
    for p in live:
        escaped.update((c.pid, c) for c in p.descendants())
        p.stopping = True
        p.send(signal.SIGTERM)
        p.send(signal.SIGCONT)  # a stopped (hung) process acts on SIGTERM only once continued
    signal_all(escaped.values(), signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for p in live:
        assert p.proc is not None
        try:
            await asyncio.wait_for(asyncio.shield(p.proc.wait()),
                                   max(0.0, deadline - time.monotonic()))
        except TimeoutError:
            pass
    for p in live:
        escaped.update((c.pid, c) for c in p.descendants())
        p.send(signal.SIGKILL)
    sweep(list(escaped.values()))  # they may hold a log pipe open: before waiting for EOF
    for p in live:
        assert p.reader is not None
        try:
            await asyncio.wait_for(asyncio.shield(p.reader), 5.0)
        except TimeoutError:
            pass


def signal_all(processes: Iterable[psutil.Process], sig: int) -> None:
    for proc in processes:
        try:
            proc.send_signal(sig)
        except psutil.Error:
            continue


def sweep(processes: Sequence[psutil.Process]) -> None:
    """Kill any process in the list that is still alive (children that left their group)."""
    alive = []
    for proc in processes:
        try:
            if proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE:
                proc.kill()
                alive.append(proc)
        except psutil.Error:
            continue
    # Wait until each is gone or a zombie: a killed orphan is reaped by init only when init
    # gets to it, and a zombie holds no pipe, port or memory.
    deadline = time.monotonic() + 3.0
    while alive and time.monotonic() < deadline:
        alive = [p for p in alive if running(p)]
        if alive:
            time.sleep(0.02)


def running(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


# Makes the ManagedProcess for a spec: the class itself, or a test's stand-in that runs tiny
# scripts in place of Flower (spec, log path, line callback, base environment, working folder).
ProcessFactory = Callable[[ProcessSpec, Path, Callable[[str, str], None], dict[str, str], Path | None],
                          ManagedProcess]
