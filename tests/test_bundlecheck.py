"""Clients refuse app bundles whose code is not the installed fedcore: real FABs built by Flower."""

from __future__ import annotations

import io
import logging
import zipfile
from pathlib import Path
from typing import Any

import pytest

from fedcore.config import RunConfig
from launcher.network.bundlecheck import BundleRefused, check_bundle, installed_manifest
from launcher.planning.bundle import make_app


def build_fab(app: Path) -> bytes:
    from flwr.cli.build import build_fab_from_disk

    return build_fab_from_disk(app)


@pytest.fixture(scope="module")
def trusted() -> dict[str, str]:
    return installed_manifest()


@pytest.fixture
def app(tmp_path: Path) -> Path:
    return make_app(tmp_path / "app", RunConfig(dataset="synthetic", clients=2, rounds=1))


def with_extra(fab: bytes, name: str, data: bytes) -> bytes:
    """The FAB with one more file, as a hand-made bundle would carry it."""
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(fab)) as src, zipfile.ZipFile(out, "w") as dst:
        for info in src.infolist():
            dst.writestr(info, src.read(info))
        dst.writestr(name, data)
    return out.getvalue()


def test_the_bundle_fedlaunch_builds_passes(app: Path, trusted: dict[str, str]) -> None:
    fab = build_fab(app)

    check_bundle(fab, trusted)  # raises if refused

    names = zipfile.ZipFile(io.BytesIO(fab)).namelist()
    assert "fedcore/client_app.py" in names and ".info/CONTENT" in names


@pytest.mark.parametrize(("change", "reason"), [
    ("edit", "fedcore/client_app.py differs from the installed fedcore's"),
    ("new_module", "fedcore/evil.py is not part of the installed fedcore"),
    ("other_package", "evil/__init__.py is outside the fedcore package"),
    ("components", "pyproject.toml names clientapp 'evil.client:app'"),
    ("missing", "fedcore/train.py of the installed fedcore is not in it"),
])
def test_foreign_code_is_refused(app: Path, trusted: dict[str, str], change: str, reason: str) -> None:
    # Prepare: the app folder `flwr run` would submit, changed the way a foreign run would be
    if change == "edit":
        path = app / "fedcore" / "client_app.py"
        path.write_text(path.read_text() + "\nimport os  # a foreign line\n")
    elif change == "new_module":
        (app / "fedcore" / "evil.py").write_text("print('hi')\n")
    elif change == "other_package":
        (app / "evil").mkdir()
        (app / "evil" / "__init__.py").write_text("print('hi')\n")
    elif change == "components":
        pyproject = app / "pyproject.toml"
        pyproject.write_text(pyproject.read_text().replace("fedcore.client_app:app", "evil.client:app"))
    elif change == "missing":
        (app / "fedcore" / "train.py").unlink()
    fab = build_fab(app)

    # Execute / Assert
    with pytest.raises(BundleRefused, match=reason.replace("(", r"\(").replace(")", r"\)")):
        check_bundle(fab, trusted)


@pytest.mark.parametrize(("name", "reason"), [
    ("fedcore/__pycache__/client_app.cpython-311.pyc", "not part of the installed fedcore"),
    ("fedcore/../evil.py", "not a plain relative path"),
    ("evil.pth", "outside the fedcore package"),
])
def test_files_flower_would_not_pack_are_refused_too(app: Path, trusted: dict[str, str],
                                                    name: str, reason: str) -> None:
    fab = with_extra(build_fab(app), name, b"\x00" * 16)

    with pytest.raises(BundleRefused, match=reason):
        check_bundle(fab, trusted)


def test_the_executor_refuses_before_installing_and_names_the_file(
        app: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A refused bundle never reaches the app folder; the refusal names the changed file."""
    import hashlib

    from flwr.common.config import get_project_dir

    from launcher.shim.executor import Executor

    # Prepare: a foreign FAB as the SuperNode would hand it over
    monkeypatch.setenv("FLWR_HOME", str(tmp_path / "flwr-home"))
    path = app / "fedcore" / "server_app.py"
    path.write_text(path.read_text() + "\n# changed\n")
    content = build_fab(app)

    class Fab:
        hash_str = hashlib.sha256(content).hexdigest()

    Fab.content = content  # type: ignore[attr-defined]

    class Run:
        fab_id, fab_version, run_id = "fedlaunch/fedlaunch-app", "1.0.0", 7

    lines: list[str] = []

    def log(level: int, text: str, *args: Any, **_: Any) -> None:
        lines.append(f"{logging.getLevelName(level)} {text % args}")

    executor = Executor("127.0.0.1:1", log)

    # Execute
    with pytest.raises(BundleRefused, match="fedcore/server_app.py differs"):
        executor._app(Run, Fab)

    # Assert
    assert not Path(get_project_dir(Run.fab_id, Run.fab_version, Fab.hash_str)).exists()
    assert executor.apps == {}


def test_the_warm_serverapp_refuses_a_foreign_bundle_before_flower_installs_it(
        app: Path, trusted: dict[str, str]) -> None:
    """launcher.shim.serverhost wraps the install of Flower's ServerApp runtime: the installed
    fedcore's bundle goes through, a changed one never reaches the install."""
    from types import SimpleNamespace

    from launcher.shim.serverhost import guard_bundle

    installed: list[bytes] = []
    runtime = SimpleNamespace(install_from_fab=lambda fab, skip_prompt: installed.append(fab))
    guard_bundle(runtime, trusted)
    ours = build_fab(app)
    runtime.install_from_fab(ours, skip_prompt=True)
    path = app / "fedcore" / "train.py"
    path.write_text(path.read_text() + "\nimport os  # someone else's code\n")
    foreign = build_fab(app)

    with pytest.raises(BundleRefused, match="fedcore/train.py differs"):
        runtime.install_from_fab(foreign, skip_prompt=True)
    assert installed == [ours]


def test_the_warm_serverapp_runs_only_the_run_this_launch_submitted(
        tmp_path: Path, trusted: dict[str, str], capsys: pytest.CaptureFixture[str]) -> None:
    """Issue 21 item 3: a bundle of the installed fedcore that lacks this launch's key (another
    local user's run, submitted first through the loopback Control API) is refused and named,
    before Flower installs it; the launch's own bundle goes through."""
    from types import SimpleNamespace

    from launcher.network.runtime_secret import LAUNCH_KEY, launch_key, write_secret
    from launcher.shim.serverhost import guard_bundle

    # Prepare: this launch's secret and key; its bundle, and a stranger's without the key
    key = launch_key(write_secret(tmp_path).read_bytes())
    cfg = RunConfig(dataset="synthetic", clients=2, rounds=1)
    ours = build_fab(make_app(tmp_path / "ours", cfg, {LAUNCH_KEY: key}))
    stranger = build_fab(make_app(tmp_path / "theirs", cfg.replace(out_dir="/tmp/elsewhere")))
    guessed = build_fab(make_app(tmp_path / "guessed", cfg, {LAUNCH_KEY: "0" * 32}))
    installed: list[bytes] = []
    claimed = {"run_id": 4242}
    runtime = SimpleNamespace(install_from_fab=lambda fab, skip_prompt: installed.append(fab))
    guard_bundle(runtime, trusted, key, claimed)

    # Execute / Assert
    for foreign in (stranger, guessed):
        with pytest.raises(BundleRefused, match="lacks this launch's key"):
            runtime.install_from_fab(foreign, skip_prompt=True)
    runtime.install_from_fab(ours, skip_prompt=True)
    assert installed == [ours]
    lines = capsys.readouterr().err.splitlines()
    assert lines == ["fedlaunch: the ServerApp refused run 4242: it lacks this launch's key: "
                     "someone else submitted it to the SuperLink"] * 2
    assert oct((tmp_path / "ours").stat().st_mode & 0o777) == oct(0o700)  # the key stays ours


def test_the_launcher_names_the_refused_run_in_one_line() -> None:
    from launcher.supervision.outcome import serverapp_folder_failure

    failed = serverapp_folder_failure("serverapp", (
        "fedlaunch: the ServerApp refused run 4242: it lacks this launch's key: someone else "
        "submitted it to the SuperLink", "Traceback (most recent call last):", "..."))

    assert failed is not None and str(failed) == (
        "serverapp (the ServerApp) refused run 4242: it lacks this launch's key: someone else "
        "submitted it to the SuperLink; this launch's own run cannot start: launch again")
