"""The warm ServerApp runs only the run its own launch submitted: a run another local user
submitted first through the loopback Control API is refused and named (issue 21, item 3)."""

from __future__ import annotations

import signal
import socket
import subprocess
import tomllib
from pathlib import Path

import psutil
import pytest

from fedcore.config import RunConfig
from launcher.planning.bundle import make_app
from tests.runs import BIN, SMALL, Run, child_env, processes_mentioning, wait_until

pytestmark = pytest.mark.e2e


def answers(address: str) -> bool:
    host, port = address.rsplit(":", 1)
    try:
        with socket.create_connection((host, int(port)), timeout=1):
            return True
    except OSError:
        return False


def workers_of(out: Path) -> list[psutil.Process]:
    return [p for p in processes_mentioning(str(out))
            if "launcher.shim.worker" in " ".join(p.cmdline())]


@pytest.mark.timeout(300)
def test_a_run_submitted_first_by_someone_else_is_refused_and_named(tmp_path: Path) -> None:
    # Prepare: a run whose own submission waits for its pool of one worker; the worker is held
    # (SIGSTOP) so that a stranger's run certainly reaches the SuperLink first
    out, elsewhere = tmp_path / "run", tmp_path / "elsewhere"
    theirs = make_app(tmp_path / "theirs", RunConfig(dataset="synthetic", clients=2, rounds=1,
                                                     out_dir=str(elsewhere)))
    with Run(["--engine", "deployment", "--clients", "2", "--workers", "1", "--rounds", "2", *SMALL,
              "--gpus", "cpu", "--headless"], out, cwd=tmp_path) as run:
        held = wait_until(lambda: workers_of(out), 120, "the pool's worker")
        for worker in held:
            worker.send_signal(signal.SIGSTOP)
        try:
            config = wait_until(lambda: (out / "flwr" / "submit" / "config.toml").exists(), 60,
                                "flwr run's config")
            address = tomllib.loads((out / "flwr" / "submit" / "config.toml").read_text())[
                "superlink"]["fedlaunch"]["address"]
            assert config
            wait_until(lambda: answers(address), 120, "the SuperLink")

            # Execute: the stranger submits with fedlaunch's own `flwr run` settings
            submitted = subprocess.run(
                [str(BIN / "flwr"), "run", str(theirs), "fedlaunch"], capture_output=True,
                text=True, timeout=120, cwd=tmp_path,
                env=child_env({"FLWR_HOME": str(out / "flwr" / "submit")}))
            assert submitted.returncode == 0, submitted.stdout + submitted.stderr
        finally:
            for worker in held:
                worker.send_signal(signal.SIGCONT)
        code = run.wait(120)
        run.assert_no_orphans()

    # Assert: refused before it ran, named by its run id, one line; the stranger's folder unmade
    run_id = next(w for w in submitted.stdout.split() if w.isdigit())
    errors = [line for line in run.stdout.splitlines() if line.startswith("fedlaunch: error:")]
    assert code == 1, run.report()
    assert errors == [f"fedlaunch: error: serverapp (the ServerApp) refused run {run_id}: it "
                      "lacks this launch's key: someone else submitted it to the SuperLink; this "
                      "launch's own run cannot start: launch again"], run.stdout[-3000:]
    assert not elsewhere.exists()
    assert not any((out / name).exists() for name in ("partitions.json", "checkpoints"))
