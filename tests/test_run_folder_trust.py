"""Run folders from elsewhere are not trusted (issue 11, items 5, 6 and 8): checkpoints, symlinks,
what --resume rebuilds or refuses to reuse, the data folder of joined clients, the environment."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from fedcore.errors import UsageError
from fedcore.rundir import RunDir, refuse_symlinks

STATE = {"round": 3, "train_images": 300, "best_accuracy": 0.5, "state_dict": {"w": torch.ones(2)}}


def test_a_damaged_last_checkpoint_falls_back_to_best_with_a_warning(tmp_path: Path) -> None:
    # Prepare: best.pt from round 2, then last.pt cut short (a crash or a bad copy)
    run = RunDir(tmp_path).create()
    run.save_checkpoint("best", {**STATE, "round": 2})
    run.save_checkpoint("last", STATE)
    last = tmp_path / "checkpoints" / "last.pt"
    last.write_bytes(last.read_bytes()[:40])
    warnings: list[str] = []

    # Execute
    state = run.resume_checkpoint(warn=warnings.append)

    # Assert
    assert state is not None and state["round"] == 2
    assert torch.equal(state["state_dict"]["w"], torch.ones(2))
    assert len(warnings) == 1 and "last.pt is damaged" in warnings[0] and "best.pt" in warnings[0]


def test_an_intact_last_checkpoint_is_used_without_a_warning(tmp_path: Path) -> None:
    run = RunDir(tmp_path).create()
    run.save_checkpoint("best", {**STATE, "round": 2})
    run.save_checkpoint("last", STATE)
    warnings: list[str] = []

    state = run.resume_checkpoint(warn=warnings.append)

    assert state is not None and state["round"] == 3 and warnings == []
    assert RunDir(tmp_path / "fresh").resume_checkpoint(warn=warnings.append) is None


@pytest.mark.parametrize("best", ["missing", "damaged"])
def test_no_usable_checkpoint_is_an_error_naming_last_pt(tmp_path: Path, best: str) -> None:
    run = RunDir(tmp_path).create()
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "last.pt").write_bytes(b"not a checkpoint")
    if best == "damaged":
        (tmp_path / "checkpoints" / "best.pt").write_bytes(b"nor this")

    with pytest.raises(ValueError, match="last.pt"):
        run.resume_checkpoint(warn=lambda _: None)


def test_a_checkpoint_is_fsynced_before_the_rename_and_the_rename_after(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prepare: record fsync and replace calls, in order, with what they touched
    calls: list[str] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        target = os.readlink(f"/proc/self/fd/{fd}")
        calls.append(f"fsync {Path(target).name}")
        real_fsync(fd)

    def replace(src: str, dst: str) -> None:
        calls.append(f"replace {Path(dst).name}")
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)

    # Execute
    RunDir(tmp_path).save_checkpoint("last", STATE)

    # Assert: the temporary file's data, then the rename, then the folder's entry
    assert len(calls) == 3, calls
    assert calls[0].startswith("fsync .last.") and calls[0].endswith(".tmp"), calls
    assert calls[1:] == ["replace last.pt", "fsync checkpoints"], calls


def test_metrics_are_never_appended_through_a_symlink(tmp_path: Path) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_text("mine\n")
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "metrics.jsonl").symlink_to(victim)
    (tmp_path / "run" / "departed-nodes.txt").symlink_to(victim)
    run = RunDir(tmp_path / "run")

    with pytest.raises(OSError):
        run.append_metric("round", round=1)
    with pytest.raises(OSError):
        run.add_departed_node(7)

    assert victim.read_text() == "mine\n"


def test_symlinks_anywhere_in_a_run_folder_are_refused(tmp_path: Path) -> None:
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    (tmp_path / "run" / "checkpoints" / "best.pt").symlink_to("/etc/passwd")

    with pytest.raises(UsageError, match=r"checkpoints/best.pt in .* is a symbolic link"):
        refuse_symlinks(tmp_path / "run", "--resume run")


def test_resume_rebuilds_app_flwr_and_progress(tmp_path: Path) -> None:
    """What a received run folder brings in app/ (code), flwr/ (Flower's state) and progress/ is
    thrown away; the launch makes them afresh."""
    from launcher.planning.prepare import prepare_resume

    # Prepare: a run folder as someone else left it
    run = tmp_path / "run"
    for name in ("app/fedcore/client_app.py", "flwr/superlink/state.db", "progress/client-0.json"):
        (run / name).parent.mkdir(parents=True, exist_ok=True)
        (run / name).write_text("import os; os.system('do harm')\n")
    (run / "config.json").write_text("{}")
    (run / "metrics.jsonl").write_text("")

    # Execute
    prepare_resume(run)

    # Assert
    assert sorted(p.name for p in run.iterdir()) == ["config.json", "metrics.jsonl"]


def resume_args(run: Path, *extra: str) -> object:
    from launcher.arguments import build_parser

    return build_parser().parse_args(["--resume", str(run), *extra])


def test_resume_does_not_reuse_saved_data_and_progress_folders(tmp_path: Path) -> None:
    import json

    from launcher.cli import resume_config

    # Prepare: config.json written on another machine (or by someone else)
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({
        "mode": "federated", "dataset": "synthetic", "data-dir": "/home/alice/cifar",
        "progress-dir": "/home/alice/.ssh", "out-dir": "/home/alice/runs/x"}))

    # Execute
    cfg, opts, run_dir = resume_config(resume_args(run))  # type: ignore[arg-type]
    given, _, _ = resume_config(resume_args(run, "--data-dir", str(tmp_path)))  # type: ignore[arg-type]

    # Assert
    assert cfg.data_dir == "" and cfg.progress_dir == "" and cfg.out_dir == str(run)
    assert run_dir == run and opts.resume and opts.mode == "federated"
    assert given.data_dir == str(tmp_path)


def test_children_do_not_inherit_flower_internal_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    from launcher.supervision.startup import child_base_env

    monkeypatch.setenv("FLWR_INTERNAL_APP_ID", "stranger")
    monkeypatch.setenv("FLWR_TELEMETRY_ENABLED", "0")

    env = child_base_env()

    assert not [k for k in env if k.startswith("FLWR_INTERNAL_")]
    assert env["FLWR_TELEMETRY_ENABLED"] == "0"


# --- joined clients: their own data ---------------------------------------------------------------

def join_plan_for(tmp_path: Path, *extra: str) -> object:
    """`fedlaunch --join ... EXTRA --out run` planned for real (config.json written)."""
    from launcher.arguments import build_parser
    from launcher.cli import resolve_config
    from launcher.network.flags import network_plan
    from launcher.planning.gpus import Nvml
    from launcher.planning.prepare import make_plan
    from tests.fake_nvml import FakeNvml

    args = build_parser().parse_args([
        "--join", "127.0.0.1:9092", "--insecure", "--partition-ids", "0-1", "--num-partitions", "2",
        "--gpus", "cpu", "--out", str(tmp_path / "run"), *extra])
    cfg, opts = resolve_config(args)
    local_clients, remote = network_plan(args, opts)
    return make_plan(cfg, tmp_path / "run", opts, nvml=Nvml(lib=FakeNvml([])),
                     local_clients=local_clients, remote=remote)


def test_a_join_without_dataset_starts_without_cifar10_here(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The server may run synthetic data: a join does not refuse to start for a missing CIFAR-10,
    and its clients read this machine's default data folder, not a server's path."""
    monkeypatch.setenv("FEDLAUNCH_DATA_DIR", str(tmp_path / "nothing-here"))

    plan = join_plan_for(tmp_path)

    assert plan.mode == "join"  # type: ignore[attr-defined]
    dirs = {s.env["FEDLAUNCH_CLIENT_DATA_DIR"] for s in plan.processes}  # type: ignore[attr-defined]
    assert dirs == {str(tmp_path / "nothing-here")}
    assert '"mode": "join"' in (tmp_path / "run" / "config.json").read_text()


def test_a_join_with_dataset_checks_that_data_here(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "empty").mkdir()
    for proxy in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY"):
        monkeypatch.setenv(proxy, "http://127.0.0.1:9")  # a download fails at once
    with pytest.raises(UsageError, match="CIFAR-10 into .*empty"):
        join_plan_for(tmp_path, "--dataset", "cifar10", "--data-dir", str(tmp_path / "empty"))
    assert not (tmp_path / "run").exists()

    plan = join_plan_for(tmp_path, "--dataset", "synthetic", "--data-dir", str(tmp_path / "empty"))
    assert {s.env["FEDLAUNCH_CLIENT_DATA_DIR"] for s in plan.processes} == {  # type: ignore[attr-defined]
        str(tmp_path / "empty")}


def test_a_joined_client_without_the_runs_data_fails_with_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The first task says CIFAR-10 (at the server's path); this machine has none in its own folder."""
    import json

    from fedcore import client_app
    from fedcore.config import RunConfig

    server_data = tmp_path / "server-data"
    server_data.mkdir()  # exists here too, but is not this client's folder
    (tmp_path / "mine").mkdir()
    monkeypatch.setenv("FEDLAUNCH_CLIENT_DATA_DIR", str(tmp_path / "mine"))
    for proxy in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY"):
        monkeypatch.setenv(proxy, "http://127.0.0.1:9")  # a download fails at once
    cfg = RunConfig(dataset="cifar10", data_dir=str(server_data), out_dir=str(tmp_path / "run"))
    progress = client_app.ProgressFile(cfg, 1)

    with pytest.raises(client_app.ClientDataError) as caught:
        client_app.state_or_fail(cfg, 1, 2, progress, server_round=1)

    line = str(caught.value)
    assert "\n" not in line and line.startswith("client 1: ") and str(tmp_path / "mine") in line
    assert f"fedlaunch: {line}" in capsys.readouterr().err
    state = json.loads((tmp_path / "run" / "progress" / "client-1.json").read_text())
    assert state["state"] == "failed" and state["error"] == "no data"
