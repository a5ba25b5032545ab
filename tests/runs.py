"""Helpers for tests that run fedlaunch for real: start it, watch its run folder, find its processes.

Everything that knows which process is which (the command lines of the SuperLink, SuperNodes,
executors, `flwr run`, the ServerApp) lives in `role_of`, so a change in what runs under a
SuperNode is one edit here.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import psutil

from fedcore.rundir import read_jsonl

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
FEDLAUNCH = BIN / "fedlaunch"
# Small and fast: synthetic data, the tutorial CNN, a few hundred images.
SMALL = ("--dataset", "synthetic", "--model", "cnn", "--limit-train", "600", "--limit-test", "200")
FLWR_ENV = {"FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1"}
EXIT_REASONS = {"completed", "interrupted", "terminated", "hangup", "failed"}


def fedlaunch_argv(*args: str) -> list[str]:
    """The `fedlaunch` console script of this environment, or the module when it is not installed."""
    if FEDLAUNCH.exists():
        return [str(FEDLAUNCH), *args]
    return [sys.executable, "-m", "launcher.cli", *args]


def child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """This environment with Flower quiet and offline-friendly, plus `extra`."""
    env = {**os.environ, **FLWR_ENV, "PYTHONUNBUFFERED": "1"}
    env["PATH"] = os.pathsep.join([str(BIN), env.get("PATH", "")])
    env.pop("NO_COLOR", None)
    return {**env, **(extra or {})}


def run_cli(args: Sequence[str], cwd: Path, timeout: float = 120,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run `fedlaunch ARGS` to its end with stdin closed; return its exit code and output."""
    return subprocess.run(fedlaunch_argv(*args), cwd=cwd, env=child_env(env), text=True,
                          capture_output=True, timeout=timeout, stdin=subprocess.DEVNULL,
                          start_new_session=True)


# --- which process is which ----------------------------------------------------------------

_PARTITION = re.compile(r"partition-id=(\d+)")


def cmdline(proc: psutil.Process) -> list[str]:
    try:
        return proc.cmdline()
    except psutil.Error:
        return []


def role_of(proc: psutil.Process) -> str | None:
    """`superlink`, `serverapp` (the warm ServerApp), `server` (flwr run), `client-N` (the process the
    launcher supervises for client N), `supernode-N` (the Flower SuperNode of client N; the same
    process as client-N when no executor wraps it), `clientapp`, `local`, `simulation` (the
    simulation engine's process and the workers it forks), `plots` (the background
    step that draws accuracy.png and loss.png after the run); None for others."""
    argv = cmdline(proc)
    text = " ".join(argv)
    names = {Path(a).name for a in argv[:3]}
    partition = _PARTITION.search(text)
    if "flower-superlink" in names:
        return "superlink"
    if "launcher.shim.serverhost" in argv:
        return "serverapp"
    if "launcher.shim.simhost" in argv:  # the simulation engine, its zygote and workers (forked)
        return "simulation"
    if "flwr-clientapp" in names:
        return "clientapp"
    if "flwr" in names and "run" in argv:
        return "server"
    if "fedcore.local" in argv:
        return "local"
    if any("plot_curves" in a for a in argv):
        return "plots"
    if partition is not None:
        if "launcher.shim.executor" in argv:
            return f"client-{partition.group(1)}"
        if "flower-supernode" in names or "launcher.shim.supernode" in argv:
            return f"supernode-{partition.group(1)}"
    return None


def alive(proc: psutil.Process) -> bool:
    """Running and not a zombie (is_running also guards against a reused pid)."""
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def describe(procs: Iterable[psutil.Process]) -> str:
    return "; ".join(f"{p.pid} {' '.join(cmdline(p))[:160]}" for p in procs)


def mentions(proc: psutil.Process, needle: str) -> bool:
    """Whether the process's command line or environment (FLWR_HOME, ...) mentions `needle`."""
    try:
        if any(needle in arg for arg in proc.cmdline()):
            return True
        return any(needle in value for value in proc.environ().values())
    except psutil.Error:
        return False


def processes_mentioning(needle: str) -> list[psutil.Process]:
    """Every live process, other than this one and its ancestors, whose cmdline or env names `needle`."""
    me = psutil.Process()
    skip = {me.pid, *(p.pid for p in me.parents())}
    return [p for p in psutil.process_iter() if p.pid not in skip and alive(p) and mentions(p, needle)]


def kill_tree(procs: Iterable[psutil.Process]) -> None:
    """SIGKILL each process's group and the process itself; ignore those already gone."""
    procs = [p for p in procs if alive(p)]
    for proc in procs:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            proc.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(procs, timeout=5)


def wait_until(check: Callable[[], Any], timeout: float, what: str, interval: float = 0.1,
               abort: Callable[[], str | None] | None = None,
               detail: Callable[[], str] | None = None) -> Any:
    """Poll `check` until it returns something truthy; fail naming `what` at `timeout`, or as soon
    as `abort` returns a reason; `detail()` (a log's end, the screen) is added to the failure.
    The tests' one polling loop."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        if abort is not None and (reason := abort()):
            raise AssertionError(f"gave up waiting for {what}: {reason}"
                                 + (f"\n{detail()}" if detail else ""))
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}"
                         + (f"\n{detail()}" if detail else ""))



async def until(check: Callable[[], Any], what: str, timeout: float = 30.0,
                pause: Callable[[float], Awaitable[Any]] = asyncio.sleep) -> Any:
    """`wait_until` inside an event loop (a Textual pilot's `pause`, or asyncio.sleep): await
    `check` becoming truthy; fail naming `what` at `timeout`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        await pause(0.01)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")

# --- run folders -----------------------------------------------------------------------------

def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    """Every line of metrics.jsonl; fails on a line that is not a whole JSON object."""
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return []
    records = []
    for number, line in enumerate(path.read_text().splitlines(keepends=True), start=1):
        assert line.endswith("\n"), f"metrics.jsonl line {number} is torn: {line!r}"
        record = json.loads(line)
        assert isinstance(record, dict) and "event" in record, f"line {number}: {line!r}"
        records.append(record)
    return records


def rounds(run_dir: Path, event: str = "round") -> list[dict[str, Any]]:
    """The finished rounds (or epochs, with event="epoch"), in file order; tolerates a torn last
    line so it can be read while the run writes (the product's own reader)."""
    return [r for r in read_jsonl(run_dir / "metrics.jsonl") if r.get("event") == event]


def read_summary(run_dir: Path) -> dict[str, Any]:
    path = run_dir / "summary.json"
    assert path.exists(), f"no summary.json in {run_dir}: {sorted(p.name for p in run_dir.iterdir())}"
    summary: dict[str, Any] = json.loads(path.read_text())
    assert summary.get("exit_reason") in EXIT_REASONS, summary
    return summary


# --- one fedlaunch run -------------------------------------------------------------------------

class Run:
    """`fedlaunch ARGS --out OUT` started in its own session, output to files, with a watcher
    thread that records every process of its tree while it runs (so that processes that lose
    their parent can still be checked for afterwards). Use as a context manager: leaving it kills
    whatever is left, so a failing test leaves nothing behind."""

    def __init__(self, args: Sequence[str], out: Path, cwd: Path,
                 env: dict[str, str] | None = None) -> None:
        self.out = out
        self.args = list(args)
        self.stdout_path = out.parent / f"{out.name}.stdout"
        self.stderr_path = out.parent / f"{out.name}.stderr"
        self.seen: dict[int, psutil.Process] = {}
        self.roles: dict[int, str] = {}  # pid -> role_of (or process name), as first seen
        self.ended: dict[int, float] = {}  # pid -> seconds after the start when it was seen gone
        self.started = time.monotonic()
        self._stop_watch = threading.Event()
        with self.stdout_path.open("wb") as so, self.stderr_path.open("wb") as se:
            self.proc = subprocess.Popen(
                fedlaunch_argv(*args, "--out", str(out)), cwd=cwd, env=child_env(env),
                stdin=subprocess.DEVNULL, stdout=so, stderr=se, start_new_session=True,
            )
        self.root = psutil.Process(self.proc.pid)
        self.seen[self.root.pid] = self.root
        self.roles[self.root.pid] = "fedlaunch"
        self._watcher = threading.Thread(target=self._watch, name="run-watcher", daemon=True)
        self._watcher.start()

    def __enter__(self) -> Run:
        return self

    def __exit__(self, *exc: object) -> None:
        self.kill_all()

    def _watch(self) -> None:
        while not self._stop_watch.is_set():
            self.snapshot()
            now = round(time.monotonic() - self.started, 1)
            for pid, proc in list(self.seen.items()):
                if pid not in self.ended and not alive(proc):
                    self.ended[pid] = now
            if self.proc.poll() is not None:
                return
            self._stop_watch.wait(0.1)

    def snapshot(self) -> list[psutil.Process]:
        """The run's live process tree now (recorded as seen)."""
        try:
            tree = self.root.children(recursive=True)
        except psutil.Error:
            return []
        for proc in tree:
            if proc.pid not in self.seen:
                self.seen[proc.pid] = proc
                try:
                    self.roles[proc.pid] = role_of(proc) or proc.name()
                except psutil.Error:
                    self.roles[proc.pid] = "?"
        return tree

    # what the run shows

    @property
    def stdout(self) -> str:
        return self.stdout_path.read_text(errors="replace")

    @property
    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def output(self) -> str:
        return self.stdout + self.stderr

    def returncode(self) -> int | None:
        return self.proc.poll()

    def exited(self) -> str | None:
        code = self.proc.poll()
        return None if code is None else f"fedlaunch exited with {code}: {self.output()[-3000:]}"

    def log(self, name: str) -> str:
        path = self.out / "logs" / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    # waiting

    def wait_for_event(self, event: str, round: int | None = None, timeout: float = 90) -> dict[str, Any]:
        """The first metrics.jsonl record of `event` (for `round`, when given)."""
        def find() -> dict[str, Any] | None:
            for record in rounds(self.out, event):
                if round is None or record.get("round") == round:
                    return record
            return None
        what = f"'{event}'" + (f" of round {round}" if round is not None else "") + " in metrics"
        return wait_until(find, timeout, what, abort=self.exited)  # type: ignore[no-any-return]

    def wait_for_role(self, role: str, timeout: float = 60) -> psutil.Process:
        """The live process of the run with this role (see `role_of`)."""
        def find() -> psutil.Process | None:
            return next((p for p in self.snapshot() if role_of(p) == role and alive(p)), None)
        return wait_until(find, timeout, f"process {role}", abort=self.exited)  # type: ignore[no-any-return]

    def wait(self, timeout: float = 120) -> int:
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"fedlaunch still running after {timeout:.0f} s; "
                                 f"{self.report()}") from None
        self._stop_watch.set()
        self._watcher.join(5)
        return code

    def tree_report(self) -> str:
        """Each process seen in the run: role, pid, and its status or when it was seen gone."""
        rows = []
        for pid, proc in self.seen.items():
            try:
                status = proc.status() if alive(proc) else f"gone at {self.ended.get(pid, '?')} s"
            except psutil.Error:
                status = f"gone at {self.ended.get(pid, '?')} s"
            rows.append(f"{self.roles.get(pid, '?')}[{pid}] {status}")
        now = time.monotonic() - self.started
        return f"(at {now:.1f} s) " + ", ".join(rows)

    def report(self, chars: int = 3000) -> str:
        """For assertion messages: the process history and the end of fedlaunch's output."""
        return f"processes: {self.tree_report()}\noutput: {self.output()[-chars:]}"

    # acting

    def send(self, sig: int) -> None:
        """Send `sig` to fedlaunch itself (as `kill` would)."""
        self.proc.send_signal(sig)

    def send_group(self, sig: int) -> None:
        """Send `sig` to fedlaunch's whole process group, its children too, as a terminal's
        Ctrl+C does (fedlaunch was started as the leader of its own group)."""
        os.killpg(self.proc.pid, sig)

    def kill_all(self) -> None:
        """Kill fedlaunch and every process it was seen to have, and any that names the run folder."""
        self._stop_watch.set()
        kill_tree([*self.seen.values(), *processes_mentioning(str(self.out))])
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)

    # checking

    def leftovers(self) -> list[psutil.Process]:
        """Processes of the run still alive: seen in its tree, or naming its run folder; not the
        plots step, which is meant to outlive the command (see `wait_for_plots`)."""
        found = {p.pid: p for p in self.seen.values() if alive(p)}
        found.update({p.pid: p for p in processes_mentioning(str(self.out))})
        return [p for p in found.values() if role_of(p) != "plots"]

    def wait_for_plots(self, timeout: float = 90) -> None:
        """The background plots step drew accuracy.png and loss.png and is gone."""
        def drawn() -> bool:
            steps = [p for p in processes_mentioning(str(self.out)) if role_of(p) == "plots"]
            return not steps and all((self.out / f"{k}.png").exists() for k in ("accuracy", "loss"))
        wait_until(drawn, timeout, "accuracy.png and loss.png from the plots step")

    def assert_no_orphans(self, grace: float = 5.0) -> None:
        """After fedlaunch has exited, no process of the run may live on (a few seconds allowed
        for processes already killed to disappear)."""
        assert self.proc.poll() is not None, "fedlaunch is still running"
        deadline = time.monotonic() + grace
        while (left := self.leftovers()) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not left, (f"{len(left)} process(es) of the run outlived fedlaunch "
                          f"(seen {len(self.seen)}): {describe(left)}")


def assert_round_records(records: Sequence[dict[str, Any]], expected: Sequence[int],
                         replies: int | None = None, unit: str = "round") -> None:
    """Rounds (or epochs) `expected`, in order, each with accuracy and loss in range, and
    `replies` replies without failures when given."""
    assert [r[unit] for r in records] == list(expected), records
    for record in records:
        assert 0.0 <= record["accuracy"] <= 1.0, record
        assert record["loss"] >= 0.0, record
        if replies is not None:
            assert record["replies"] == replies, record
            assert record["failures"] == 0, record


class Processes:
    """Processes a test starts by hand (a SuperLink, SuperNodes, `flwr run`), each in its own
    session with its output in `logs/NAME.log`; `kill_all` leaves none behind, children included."""

    def __init__(self, folder: Path) -> None:
        self.logs = folder / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.seen: dict[int, psutil.Process] = {}

    def start(self, name: str, argv: Sequence[str], env: dict[str, str],
              cwd: Path | None = None) -> subprocess.Popen[bytes]:
        with (self.logs / f"{name}.log").open("wb") as log:
            proc = subprocess.Popen(list(argv), env=child_env(env), cwd=cwd, stdin=subprocess.DEVNULL,
                                    stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self.procs[name] = proc
        self.seen[proc.pid] = psutil.Process(proc.pid)
        return proc

    def log(self, name: str) -> str:
        return (self.logs / f"{name}.log").read_text(errors="replace")

    def record(self) -> None:
        for proc in list(self.seen.values()):
            try:
                for child in proc.children(recursive=True):
                    self.seen.setdefault(child.pid, child)
            except psutil.Error:
                continue

    def kill_all(self) -> None:
        self.record()
        kill_tree(self.seen.values())
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.kill()
            proc.wait(10)


def wait_for_port(port: int, timeout: float = 60, abort: Callable[[], str | None] | None = None,
                  detail: Callable[[], str] | None = None) -> None:
    """Wait until something accepts TCP connections on 127.0.0.1:port."""
    import socket

    def accepts() -> bool:
        with socket.socket() as sock:
            sock.settimeout(0.5)
            return sock.connect_ex(("127.0.0.1", port)) == 0
    wait_until(accepts, timeout, f"127.0.0.1:{port} to accept connections", abort=abort,
               detail=detail)
