"""The warm ServerApp runs only the run its own launch submitted: a run submitted first through
the loopback Control API, by this user without the launch's key or by another local user, is
refused and named; one submitted during the launch is never run (issue 21, item 3)."""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

from fedcore.config import RunConfig
from launcher.planning.bundle import make_app, write_flwr_config
from tests.runs import BIN, FLWR_ENV, SMALL, Run, child_env, processes_mentioning, rounds, wait_until

pytestmark = pytest.mark.e2e

STRANGER = "nobody"  # an unprivileged local user every Linux has
FLWR_CLI = "import sys; from flwr.cli.app import app; sys.argv[0] = 'flwr'; sys.exit(app())"


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


@dataclass
class Submitter:
    """Who submits the foreign run: its app, where it asked its results to go, how it runs `flwr`."""

    home: Path
    elsewhere: Path
    user: pwd.struct_passwd | None = None
    python: str = ""

    def submit(self, address: str, own_flwr_home: Path) -> subprocess.CompletedProcess[str]:
        app = make_app(self.home / "theirs", RunConfig(dataset="synthetic", clients=2, rounds=1,
                                                       out_dir=str(self.elsewhere)))
        if self.user is None:  # this user, with fedlaunch's own `flwr run` settings
            return subprocess.run([str(BIN / "flwr"), "run", str(app), "fedlaunch"],
                                  capture_output=True, text=True, timeout=120, cwd=self.home,
                                  env=child_env({"FLWR_HOME": str(own_flwr_home)}))
        write_flwr_config(self.home / "flwr", address)  # knows the port, not fedlaunch's files
        chown_tree(self.home, self.user)
        return subprocess.run([self.python, "-c", FLWR_CLI, "run", str(app), "fedlaunch"],
                              capture_output=True, text=True, timeout=120, cwd=self.home,
                              env=stranger_env(self.home), user=self.user.pw_uid,
                              group=self.user.pw_gid, extra_groups=[])


def chown_tree(top: Path, user: pwd.struct_passwd) -> None:
    for path in (top, *top.rglob("*")):
        os.chown(path, user.pw_uid, user.pw_gid, follow_symlinks=False)


def stranger_env(home: Path) -> dict[str, str]:
    """A bare environment: this venv's packages by path (the stranger cannot run its Python)."""
    packages = {sysconfig.get_path("purelib"), sysconfig.get_path("platlib")}
    return {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": str(home), "LANG": "C.UTF-8",
            "PYTHONPATH": os.pathsep.join(sorted(packages)), "FLWR_HOME": str(home / "flwr"),
            **FLWR_ENV}


def stranger_python(user: pwd.struct_passwd, home: Path) -> str | None:
    """An interpreter of this Python's version that `user` may run and that imports flwr."""
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    for python in (sys.executable, f"/usr/bin/{version}", f"/usr/local/bin/{version}"):
        try:
            probe = subprocess.run([python, "-c", "import flwr.cli.app"], capture_output=True,
                                   timeout=60, cwd=home, env=stranger_env(home),
                                   user=user.pw_uid, group=user.pw_gid, extra_groups=[])
        except OSError:
            continue
        if probe.returncode == 0:
            return python
    return None


@pytest.fixture(params=["this user", pytest.param("another local user", marks=pytest.mark.slow)])
def submitter(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Submitter]:
    if request.param == "this user":
        yield Submitter(tmp_path, tmp_path / "elsewhere")
        return
    if os.geteuid() != 0:
        pytest.skip("submitting as another local user needs root (to switch to it)")
    try:
        user = pwd.getpwnam(STRANGER)
    except KeyError:
        pytest.skip(f"no local user '{STRANGER}' to submit as")
    home = Path(tempfile.mkdtemp(prefix="fedlaunch-stranger-"))  # outside root's 0700 tmp_path
    try:
        os.chown(home, user.pw_uid, user.pw_gid)
        python = stranger_python(user, home)
        if python is None:
            pytest.skip(f"no Python {sys.version_info.major}.{sys.version_info.minor} that "
                        f"'{STRANGER}' may run")
        yield Submitter(home, home / "elsewhere", user, python)
    finally:
        shutil.rmtree(home, ignore_errors=True)


@pytest.mark.timeout(300)
def test_a_run_submitted_first_by_someone_else_is_refused_and_named(
        tmp_path: Path, submitter: Submitter) -> None:
    # Prepare: a run whose own submission waits for its pool of one worker; the worker is held
    # (SIGSTOP) so that a stranger's run certainly reaches the SuperLink first
    out = tmp_path / "run"
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

            # Execute: the stranger submits its own app through the loopback Control API
            submitted = submitter.submit(address, out / "flwr" / "submit")
            assert submitted.returncode == 0, submitted.stdout + submitted.stderr
        finally:
            for worker in held:
                worker.send_signal(signal.SIGCONT)
        code = run.wait(120)
        run.assert_no_orphans()

    # Assert: refused before it ran, named by its run id, one line; nothing written where the
    # stranger asked (nor anything in its folder by fedlaunch's processes)
    run_id = next(w for w in submitted.stdout.split() if w.isdigit())
    errors = [line for line in run.stdout.splitlines() if line.startswith("fedlaunch: error:")]
    assert code == 1, run.report()
    assert errors == [f"fedlaunch: error: serverapp (the ServerApp) refused run {run_id}: it "
                      "lacks this launch's key: someone else submitted it to the SuperLink; this "
                      "launch's own run cannot start: launch again"], run.stdout[-3000:]
    assert not submitter.elsewhere.exists()
    if submitter.user is not None:
        foreign = [p for p in (submitter.home, *submitter.home.rglob("*"))
                   if p.lstat().st_uid != submitter.user.pw_uid]
        assert foreign == []
    assert not any((out / name).exists() for name in ("partitions.json", "checkpoints"))


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.parametrize("submitter", ["another local user"], indirect=True)
def test_a_run_submitted_by_someone_else_during_the_launch_is_never_run(
        tmp_path: Path, submitter: Submitter) -> None:
    # Prepare: a run of 2 rounds whose ServerApp has claimed its own run (round 1 started)
    out = tmp_path / "run"
    with Run(["--engine", "deployment", "--clients", "2", "--rounds", "2", *SMALL, "--gpus", "cpu",
              "--headless"], out, cwd=tmp_path) as run:
        run.wait_for_event("round_start", round=1, timeout=180)
        address = tomllib.loads((out / "flwr" / "submit" / "config.toml").read_text())[
            "superlink"]["fedlaunch"]["address"]

        # Execute: the stranger submits its own app through the loopback Control API
        submitted = submitter.submit(address, out / "flwr" / "submit")
        code = run.wait(180)
        run.assert_no_orphans()

    # Assert: the launch's own run completed; the stranger's was taken but never run
    assert submitted.returncode == 0, submitted.stdout + submitted.stderr
    assert code == 0, run.report()
    assert [r["round"] for r in rounds(out)] == [1, 2]
    assert "refused run" not in run.stdout
    assert not submitter.elsewhere.exists()
    assert submitter.user is not None
    assert [p for p in (submitter.home, *submitter.home.rglob("*"))
            if p.lstat().st_uid != submitter.user.pw_uid] == []
