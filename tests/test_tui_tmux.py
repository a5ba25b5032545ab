"""The real TUI in a real terminal: tmux runs fedlaunch, the screen shows rounds and clients, `q` quits."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from tests.runs import (
    SMALL,
    child_env,
    describe,
    fedlaunch_argv,
    kill_tree,
    processes_mentioning,
    read_summary,
    role_of,
    rounds,
    wait_until,
)

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed"),
]


def tmux(session: str, *args: str) -> list[str]:
    """A tmux command on this session's own server (`-L`): a tmux server that other sessions on
    the machine share would outlive this test's session, its command line naming this run."""
    return ["tmux", "-L", session, *args]


def screen(session: str) -> str:
    return subprocess.run(tmux(session, "capture-pane", "-p", "-t", session), capture_output=True,
                          text=True, check=False).stdout


def wait_for_screen(session: str, needles: list[str], timeout: float) -> str:
    def shows() -> str | None:
        text = screen(session)
        return text if all(n in text for n in needles) else None

    return str(wait_until(shows, timeout, f"the screen to show {needles}", interval=0.5,
                          detail=lambda: screen(session)))


@pytest.mark.timeout(180)
def test_tui_in_tmux_shows_rounds_and_clients_and_quits_on_q(tmp_path: Path) -> None:
    # Prepare
    session = f"fedlaunch-test-{uuid.uuid4().hex[:8]}"
    out = tmp_path / "run"
    command = " ".join(fedlaunch_argv("--clients", "2", "--rounds", "2", *SMALL, "--out", str(out)))
    env = child_env({"TERM": "xterm-256color"})
    subprocess.run([*tmux(session, "new-session"), "-d", "-s", session, "-x", "100", "-y", "30",
                    f"{command}; echo FEDLAUNCH-EXIT=$?; sleep 60"], env=env, check=True)
    try:
        # Execute: the live screen, then the end screen
        live = wait_for_screen(session, ["round", "client", "cpu"], timeout=60)
        done = wait_for_screen(session, ["completed"], timeout=150)
        subprocess.run(tmux(session, "send-keys", "-t", session, "q"), check=True)
        final = wait_for_screen(session, ["FEDLAUNCH-EXIT="], timeout=30)
    finally:
        subprocess.run(tmux(session, "kill-session", "-t", session), check=False)

    # Assert
    assert "CPU mode" in live
    assert "2/2" in done
    assert "FEDLAUNCH-EXIT=0" in final
    rows = [line for line in done.splitlines() if re.match(r"│\s*[01]\s+cpu\s+\w+\s+2\s", line)]
    assert len(rows) == 2, done
    # the plots step is meant to outlive the command (tests/runs.py: Run.leftovers)
    wait_until(lambda: not [p for p in processes_mentioning(str(out)) if role_of(p) != "plots"], 20,
               "fedlaunch and its tmux server to leave once the session is killed",
               detail=lambda: describe(processes_mentioning(str(out))))


@pytest.mark.timeout(180)
def test_closing_the_terminal_on_the_end_screen_ends_fedlaunch(tmp_path: Path) -> None:
    """The run is over and the screen waits for `q`; the user closes the terminal instead."""
    session = f"fedlaunch-test-{uuid.uuid4().hex[:8]}"
    out = tmp_path / "run"
    command = " ".join(fedlaunch_argv("--clients", "2", "--rounds", "1", *SMALL, "--out", str(out)))
    env = child_env({"TERM": "xterm-256color"})
    subprocess.run([*tmux(session, "new-session"), "-d", "-s", session, "-x", "100", "-y", "30", command],
                   env=env, check=True)
    try:
        wait_for_screen(session, ["completed"], timeout=150)
        assert processes_mentioning(str(out)), "fedlaunch left before the terminal closed"
    finally:
        subprocess.run(tmux(session, "kill-session", "-t", session), check=False)  # SIGHUP

    wait_until(lambda: not processes_mentioning(str(out)), 20,
               "fedlaunch to leave once its terminal closed",
               detail=lambda: str(processes_mentioning(str(out))))



# Runs `fedlaunch ARGS` and writes "EXIT_CODE TIME" to FILE when it ends. It outlives the terminal:
# its own SIGHUP handler does nothing (a handler, not SIG_IGN, so fedlaunch gets the default).
RECORD_EXIT = ("import signal, subprocess, sys, time; signal.signal(signal.SIGHUP, lambda *_: None); "
               "code = subprocess.run(sys.argv[2:]).returncode; "
               "open(sys.argv[1], 'w').write(f'{code} {time.time()}')")


@pytest.mark.timeout(240)
def test_closing_the_terminal_mid_run_stops_the_run_with_129(tmp_path: Path) -> None:
    """tmux kill-session at round 2 closes the terminal under the live TUI: fedlaunch stops the
    run as for SIGHUP, writes summary.json, exits 129 within 5 s and leaves no process."""
    # Prepare
    session = f"fedlaunch-test-{uuid.uuid4().hex[:8]}"
    out, exit_file = tmp_path / "run", tmp_path / "exit"
    argv = fedlaunch_argv("--clients", "2", "--rounds", "30", *SMALL, "--out", str(out))
    command = shlex.join([sys.executable, "-c", RECORD_EXIT, str(exit_file), *argv])
    env = child_env({"TERM": "xterm-256color"})
    subprocess.run(tmux(session, "new-session", "-d", "-s", session, "-x", "100", "-y", "30", command),
                   env=env, check=True)
    try:
        wait_until(lambda: len(rounds(out)) >= 1, 150, "round 1 to finish",
                   detail=lambda: screen(session))
        assert "round" in screen(session)
    finally:
        # Execute: the terminal closes (SIGHUP to fedlaunch, its pty gone)
        closed = time.time()
        subprocess.run(tmux(session, "kill-session", "-t", session), check=False)
    try:
        wait_until(exit_file.exists, 30, "fedlaunch to exit once its terminal closed",
                   detail=lambda: describe(processes_mentioning(str(out))))
        wait_until(lambda: not processes_mentioning(str(out)), 20,  # plots end by themselves
                   "every process of the run to be gone",
                   detail=lambda: describe(processes_mentioning(str(out))))
    except AssertionError:
        kill_tree(processes_mentioning(str(out)))  # a failure leaves nothing behind
        raise

    # Assert
    code, ended = exit_file.read_text().split()
    assert int(code) == 129
    assert float(ended) - closed < 5.0, f"fedlaunch took {float(ended) - closed:.1f} s to exit"
    summary = read_summary(out)
    assert summary["exit_reason"] == "hangup"
    assert 1 <= len(rounds(out)) < 30
