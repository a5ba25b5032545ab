"""Start and stop: nothing outlives the launcher (SIGKILL, SIGHUP), the command returns soon after
the last round, and `q` in the TUI leaves once the processes are down."""

from __future__ import annotations

import asyncio
import io
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from launcher.events import Event, EventBus, RoundFinished, RunFinished, RunStarted
from launcher.supervision.headless import FinalLine, HeadlessPrinter
from launcher.supervision.watchdog import TOKEN_VAR, Watchdog, carries
from launcher.tui.app import FedlaunchApp
from tests.runs import SMALL, Run, describe, read_metrics, read_summary, role_of, rounds, until, wait_until

ARGS = ["--clients", "2", *SMALL, "--gpus", "cpu", "--headless", "--round-timeout", "20"]

# --- the watchdog, with plain processes --------------------------------------------------------

# A launcher stand-in: starts the watchdog, then a child in a session of its own that starts a
# grandchild in yet another session (as the SuperLink starts the SuperExec and the ServerApp),
# both carrying the token; prints their pids and waits to be killed.
FAKE_LAUNCHER = r"""
import os, subprocess, sys, time
from launcher.supervision.watchdog import Watchdog
dog = Watchdog()
dog.start()
env = {**os.environ, **dog.env}
inner = ("import subprocess, sys, time; "
         "g = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'], "
         "start_new_session=True); print(g.pid, flush=True); time.sleep(600)")
child = subprocess.Popen([sys.executable, "-c", inner], env=env, stdout=subprocess.PIPE, text=True,
                         start_new_session=True)
grandchild = child.stdout.readline().strip()
print(dog.proc.pid, child.pid, grandchild, flush=True)
time.sleep(600)
"""


def test_the_watchdog_kills_every_process_carrying_the_token_once_the_launcher_is_killed(
    tmp_path: Path,
) -> None:
    root = Path(__file__).resolve().parents[1]
    launcher = subprocess.Popen([sys.executable, "-c", FAKE_LAUNCHER], cwd=root,
                                stdout=subprocess.PIPE, text=True, start_new_session=True)
    assert launcher.stdout is not None
    dog, child, grandchild = (psutil.Process(int(p)) for p in launcher.stdout.readline().split())
    try:
        assert all(p.is_running() for p in (dog, child, grandchild))
        assert child.ppid() == launcher.pid and os.getsid(grandchild.pid) != os.getsid(child.pid)

        launcher.kill()
        launcher.wait(10)

        gone, alive = psutil.wait_procs([child, grandchild, dog], timeout=10)
        assert not alive, f"outlived the launcher: {describe(alive)}"
    finally:
        for proc in (dog, child, grandchild):
            try:
                proc.kill()
            except psutil.Error:
                pass


def test_the_watchdog_leaves_processes_without_the_token_alone(tmp_path: Path) -> None:
    dog = Watchdog()
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"],
                             env={**os.environ, TOKEN_VAR: "another-run"})
    mine = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"],
                            env={**os.environ, **dog.env})
    try:
        dog.start()
        assert carries(psutil.Process(mine.pid), dog.token)

        dog.close(wait=10)

        assert dog.proc is not None and dog.proc.returncode == 0
        assert mine.wait(5) == -signal.SIGKILL
        assert other.poll() is None
    finally:
        other.kill()
        mine.kill()
        other.wait()
        mine.wait()


# --- the TUI: q leaves once the processes are down, and the final line stays ---------------------

class SlowStop:
    """A launcher stand-in: a federated run of `total` rounds, `done` of them finished; a stop
    takes `stop_seconds` (the processes going down), or until `release` is set when None."""

    def __init__(self, done: int, total: int = 3, stop_seconds: float | None = 0.3) -> None:
        self.bus = EventBus()
        self.done, self.total, self.stop_seconds = done, total, stop_seconds
        self.stops: list[str] = []
        self.down_at: float | None = None
        self.published = asyncio.Event()
        self.release = asyncio.Event()

    async def run(self) -> int:
        self.bus.publish(RunStarted("r", "federated", "cnn", "synthetic", "iid", self.total, 2,
                                    "/tmp/r", time.time(), {0: None, 1: None}))
        for r in range(1, self.done + 1):
            self.bus.publish(RoundFinished(r, self.total, 0.1 * r, 1.0, 1.0, 2, 1.0, 0.1 * r))
        self.published.set()
        while not self.stops:
            await asyncio.sleep(0.01)
        if self.stop_seconds is None:
            await self.release.wait()
        else:
            await asyncio.sleep(self.stop_seconds)
        self.down_at = time.monotonic()
        code = 0 if self.done == self.total else 130
        reason = "completed" if code == 0 else "interrupted"
        self.bus.publish(RunFinished(reason, code, {"rounds_completed": self.done,
                                                    "wall_seconds": 9.0}))
        return code

    def app(self) -> FedlaunchApp:
        return FedlaunchApp(self.bus, self.run, self.stops.append)


async def test_q_once_the_last_round_is_done_leaves_as_soon_as_the_processes_are_down() -> None:
    script = SlowStop(done=3)
    app = script.app()
    async with app.run_test(size=(100, 30)) as pilot:
        await script.published.wait()
        await pilot.pause()

        await pilot.press("q")
        await until(lambda: not app.is_running, "the app to leave once the processes are down",
                    pause=pilot.pause)
    assert script.stops == ["interrupted"]
    assert app.return_value == 0


async def test_q_pressed_again_while_stopping_leaves_once_the_processes_are_down() -> None:
    script = SlowStop(done=1, stop_seconds=None)
    app = script.app()
    async with app.run_test(size=(100, 30)) as pilot:
        await script.published.wait()
        await pilot.pause()

        await pilot.press("q")  # mid-run: stop; the screen would stay on the summary
        await pilot.press("q")  # while it stops: leave once it is down
        await pilot.pause(0.1)
        assert app.is_running and script.down_at is None  # still stopping: still on screen
        script.release.set()
        await until(lambda: not app.is_running, "the app to leave once the processes are down",
                    pause=pilot.pause)
    assert script.stops == ["interrupted"]
    assert app.return_value == 130


async def test_a_single_q_mid_run_stops_and_stays_on_the_summary() -> None:
    script = SlowStop(done=1, stop_seconds=0.1)
    app = script.app()
    async with app.run_test(size=(100, 30)) as pilot:
        await script.published.wait()
        await pilot.pause()

        await pilot.press("q")
        await until(lambda: app.run_done, "the run to end", pause=pilot.pause)
        await pilot.pause(0.2)  # time to leave, had a single q wrongly quit

        assert app.is_running and app.run_done
        await pilot.press("q")
    assert app.return_value == 130


def test_the_final_line_after_the_tui_is_the_one_headless_prints() -> None:
    events: list[Event] = [RunStarted("r", "federated", "cnn", "synthetic", "iid", 3, 2, "/tmp/r", 0.0, {}),
              RunFinished("failed", 1, {"rounds_completed": 2, "final_accuracy": 0.25,
                                        "best_accuracy": 0.3, "wall_seconds": 12.5},
                          "superlink", ("boom",))]
    headless, after = io.StringIO(), io.StringIO()
    printer, final = HeadlessPrinter(headless, colour=False), FinalLine(after)
    for event in events:
        printer(event)
        final(event)
    assert after.getvalue() == ""  # nothing while the screen is up

    final.print()

    assert after.getvalue().splitlines() == headless.getvalue().splitlines()[1:]
    assert after.getvalue().splitlines()[-1] == ("fedlaunch: failed after 2 rounds in 12.5s; final "
                                                 "accuracy 0.2500, best 0.3000; exit 1")


# --- real runs -----------------------------------------------------------------------------------

ROLES = {"deployment": ("superlink", "serverapp", "server", "client-0", "client-1", "supernode-0",
                        "supernode-1"),
         "simulation": ("simulation",)}


@pytest.mark.e2e
@pytest.mark.timeout(300)
@pytest.mark.parametrize("engine", ["deployment", "simulation"])
def test_nothing_the_launcher_started_is_alive_10_s_after_it_is_killed(tmp_path: Path,
                                                                        engine: str) -> None:
    """SIGKILL of fedlaunch mid-round: the SuperLink, the ServerApp, SuperNodes, executors
    and `flwr run` all go, or the simulation process with its zygote and workers (the watchdog
    sweeps the run's token; children also have a parent-death signal)."""
    with Run([*ARGS, "--rounds", "30", "--engine", engine], tmp_path / "run", cwd=tmp_path) as run:
        run.wait_for_event("round_start", round=1, timeout=240)
        for role in ROLES[engine]:
            run.wait_for_role(role)  # each alive now, in the launcher's tree
        if engine == "simulation":  # the host, its zygote and 2 workers
            wait_until(lambda: sum(1 for p in run.snapshot() if role_of(p) == "simulation") >= 4,
                       60, "the simulation process's zygote and workers")

        run.root.kill()
        run.proc.wait(10)
        killed = time.monotonic()

        wait_until(lambda: not run.leftovers(), 10, "every process of the killed launcher to go",
                   detail=lambda: describe(run.leftovers()))
        assert time.monotonic() - killed < 10


@pytest.mark.e2e
@pytest.mark.timeout(300)
@pytest.mark.parametrize("engine", ["simulation", pytest.param("deployment", marks=pytest.mark.slow)])
def test_sighup_mid_round_stops_the_run_with_exit_129(tmp_path: Path, engine: str) -> None:
    with Run([*ARGS, "--rounds", "30", "--engine", engine], tmp_path / "run", cwd=tmp_path) as run:
        run.wait_for_event("round_start", round=1, timeout=240)
        run.wait_for_event("round_start", round=2, timeout=60)

        run.send(signal.SIGHUP)

        assert run.wait(60) == 129, run.report()
        run.assert_no_orphans()
    summary = read_summary(run.out)
    assert summary["exit_reason"] == "hangup", summary
    assert read_metrics(run.out)[-1] == {**read_metrics(run.out)[-1], "event": "end",
                                         "exit_reason": "hangup"}
    assert "fedlaunch: hangup after" in run.stdout, run.stdout[-500:]


@pytest.mark.e2e
@pytest.mark.timeout(300)
@pytest.mark.parametrize("engine", ["simulation", pytest.param("deployment", marks=pytest.mark.slow)])
def test_the_command_returns_soon_after_the_last_round(tmp_path: Path, engine: str) -> None:
    """The 'end' record ends the run; every process stops at once. (The target, 1.5 s on an idle
    machine, is measured by bench/lifecycle.py; a busy two-core CI machine gets some slack.)"""
    with Run([*ARGS, "--rounds", "2", "--engine", engine], tmp_path / "run", cwd=tmp_path) as run:
        assert run.wait(240) == 0, run.report()
        returned = time.time()
        run.assert_no_orphans()
        run.wait_for_plots()  # drawn after the command returned, off its critical path
    last = rounds(run.out)[-1]
    assert last["round"] == 2
    assert returned - last["time"] < 4.0, returned - last["time"]
    assert read_summary(run.out)["exit_reason"] == "completed"
