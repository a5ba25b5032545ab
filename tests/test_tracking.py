"""--track: recorded metrics fed through the tracking code, read back with each library's reader."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

from fedcore.errors import UsageError
from launcher.cli import main
from launcher.tracking.feed import parse_track, point
from launcher.tracking.tracker import STATE, Tracking, backends
from tests.tracking_readers import (
    expected,
    mlflow_history,
    mlflow_run,
    tensorboard_hparams,
    tensorboard_scalars,
    wandb_history,
    wandb_records,
)

ALL = ("tensorboard", "wandb", "mlflow")
CONFIG = {"mode": "federated", "model": "cnn", "lr": 0.05, "rounds": 3, "clients": 2,
          "partition": "dirichlet:0.5", "pretrained": False, "out-dir": "/elsewhere/run",
          "data-dir": "/home/someone/cifar"}


def round_record(r: int, rejected: int | None = None) -> dict[str, Any]:
    record: dict[str, Any] = {
        "event": "round", "round": r, "total": 3, "accuracy": 0.2 + 0.1 * r, "loss": 2.2 - 0.3 * r,
        "train_loss": 2.0 - 0.25 * r, "train_accuracy": 0.25 + 0.1 * r, "replies": 2,
        "failures": 0, "clients": [0, 1], "client_train_loss": [2.1 - 0.2 * r, 1.9 - 0.3 * r],
        "client_examples": [310, 290], "seconds": 4.5 + r, "train_images": 600 * r,
    }
    if rejected is not None:
        record["rejected"] = rejected
    return record


def recorded_run(root: Path, rounds: range) -> Path:
    """A run folder as fedcore writes one: config.json and metrics.jsonl."""
    run = root / "run"
    run.mkdir(exist_ok=True)
    (run / "config.json").write_text(json.dumps(CONFIG))
    records = [{"event": "launch", "mode": "federated", "resumed": rounds.start > 1},
               {"event": "start", "mode": "federated", "total": 3}]
    for r in rounds:
        records += [{"event": "round_start", "round": r, "total": 3},
                    round_record(r, rejected=1 if r == 2 else None)]
    with (run / "metrics.jsonl").open("a") as fh:
        fh.writelines(json.dumps(r) + "\n" for r in records)
    return run


def track(run: Path, names: tuple[str, ...] = ALL, reason: str = "completed") -> list[str]:
    """Feed metrics.jsonl through Tracking as the supervisor does, line by line; its notices."""
    tracking = Tracking(run, names)
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    for record in lines:
        tracking.feed([record])
    tracking.close(reason)
    return tracking.notices()


def assert_holds(got: dict[str, dict[int, float]], want: dict[str, dict[int, float]], tol: float) -> None:
    assert set(got) == set(want), sorted(set(got) ^ set(want))
    for key, steps in want.items():
        assert got[key] == pytest.approx(steps, rel=tol), key


def test_parse_track_takes_repeats_and_comma_lists() -> None:
    assert parse_track(["tensorboard", "WandB, mlflow", "tensorboard"]) == ALL
    assert parse_track(None) == ()
    with pytest.raises(UsageError, match="--track neptune: choose from tensorboard, wandb, mlflow"):
        parse_track(["tensorboard,neptune"])


def test_a_record_becomes_a_point_with_rejected_and_per_client_values() -> None:
    p = point(round_record(2, rejected=3))
    assert p is not None and (p.unit, p.step) == ("round", 2)
    assert p.values["rejected"] == 3 and p.values["client-1/examples"] == 290
    assert p.values["client-0/train_loss"] == pytest.approx(1.7)
    unsaid = point(round_record(1))  # a metrics.jsonl without the field: 0 rejected
    assert unsaid is not None and unsaid.values["rejected"] == 0
    assert point({"event": "round_start", "round": 1}) is None


def test_the_trackers_hold_what_metrics_jsonl_says_across_a_resume(tmp_path: Path) -> None:
    # Prepare: a run stopped after round 2 (interrupted; round 2 had a rejected reply)
    run = recorded_run(tmp_path, range(1, 3))
    assert track(run, reason="interrupted") == []
    first = json.loads((run / STATE).read_text())
    client, mlrun = mlflow_run(run)
    assert mlrun.info.status == "KILLED"
    recorded_run(tmp_path, range(3, 4))  # the resumed launch appends round 3 to metrics.jsonl
    # Execute: the whole file is read again, as the follower of a resumed run does
    assert track(run) == []
    # Assert: the same W&B and MLflow runs; each library's own reader finds every value of
    # every round in metrics.jsonl, once (rounds 1-2 not logged again)
    state = json.loads((run / STATE).read_text())
    assert state["wandb"]["id"] == first["wandb"]["id"]
    assert state["mlflow"]["run_id"] == first["mlflow"]["run_id"]
    assert {name: state[name]["step"] for name in ALL} == dict.fromkeys(ALL, 3)
    unit, want = expected(run)
    assert want["rejected"] == {1: 0.0, 2: 1.0, 3: 0.0} and "client-1/examples" in want
    assert_holds(tensorboard_scalars(run), want, 1e-6)  # float32 in event files
    records = wandb_records(run)
    assert {r["run"]["run_id"] for r in records if r["type"] == "run"} == {first["wandb"]["id"]}
    assert_holds(wandb_history(records, unit), want, 1e-12)
    assert [r["exit"].get("exit_code", 0) for r in records if r["type"] == "exit"] == [1, 0]
    client, mlrun = mlflow_run(run)
    assert mlrun.info.run_id == first["mlflow"]["run_id"] and mlrun.info.status == "FINISHED"
    assert_holds(mlflow_history(client, mlrun), want, 1e-12)
    # the config as hyperparameters, without this machine's paths
    hparams = {"mode": "federated", "model": "cnn", "lr": 0.05, "rounds": 3, "clients": 2,
               "partition": "dirichlet:0.5", "pretrained": False}
    assert tensorboard_hparams(run) == pytest.approx(hparams)
    wandb_config: dict[str, Any] = {}
    for r in records:
        if r["type"] == "config":
            wandb_config.update(r["config"]["update"])
        if r["type"] == "run":
            wandb_config.update(r["run"].get("config", {}).get("update", {}))
    assert {k: v for k, v in wandb_config.items() if k != "_wandb"} == hparams
    assert mlrun.data.params == {k: str(v) for k, v in hparams.items()}


def test_local_epochs_are_tracked_per_epoch(tmp_path: Path) -> None:
    run = tmp_path / "local"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({**CONFIG, "mode": "local"}))
    epochs = [{"event": "epoch", "epoch": e, "total": 2, "accuracy": 0.3 * e, "loss": 2.0 / e,
               "train_loss": 1.8 / e, "train_accuracy": 0.35 * e, "replies": 1, "failures": 0,
               "seconds": 3.0 * e} for e in (1, 2)]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in epochs))
    assert track(run, ("tensorboard", "mlflow")) == []
    unit, want = expected(run)
    assert unit == "epoch" and want["accuracy"] == {1: 0.3, 2: 0.6}
    assert_holds(tensorboard_scalars(run), want, 1e-6)
    client, mlrun = mlflow_run(run)
    assert_holds(mlflow_history(client, mlrun), want, 1e-12)


def test_a_writer_that_fails_is_dropped_with_one_warning(tmp_path: Path) -> None:
    run = recorded_run(tmp_path, range(1, 3))
    (run / "tensorboard").write_text("a file where the event folder goes")
    notices = track(run, ("tensorboard", "mlflow"))
    assert len(notices) == 1 and notices[0].startswith("tracking: tensorboard did not start")
    client, mlrun = mlflow_run(run)
    assert set(mlflow_history(client, mlrun)["accuracy"]) == {1, 2}


@pytest.mark.parametrize("name", ALL)
def test_a_missing_extra_is_one_line_naming_pip(name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    # Prepare: the library not importable, as where the extra was not installed
    monkeypatch.setitem(sys.modules, name, None)
    out = tmp_path / "run"
    # Execute
    code = main(["--dataset", "synthetic", "--gpus", "cpu", "--track", name, "--out", str(out)])
    # Assert: exit 2, one line, nothing started or created
    err = capsys.readouterr().err
    assert code == 2
    assert err == f"fedlaunch: --track {name} needs the '{name}' extra: pip install 'fedlaunch[{name}]'\n"
    assert not out.exists()


def test_resume_tracks_with_the_runs_own_backends_and_any_new_one(tmp_path: Path) -> None:
    (tmp_path / STATE).write_text(json.dumps({"wandb": {"id": "abc", "step": 2}}))
    assert backends(None, tmp_path, "federated") == ("wandb",)
    assert backends(["tensorboard", "wandb"], tmp_path, "federated") == ("wandb", "tensorboard")
    assert backends(None, None, "federated") == ()


def test_track_with_join_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["--join", "127.0.0.1:9092", "--partition-ids", "0-0", "--num-partitions", "1",
                 "--insecure", "--track", "tensorboard"])
    assert code == 2 and "--track" in capsys.readouterr().err


def test_the_supervisor_feeds_the_tracking_and_publishes_its_warnings(tmp_path: Path) -> None:
    """The Supervisor with stand-in processes (tests/test_supervisor.py): each round the app
    writes reaches TensorBoard by the run's end; a backend that cannot start is a warning."""
    from launcher.events import Notice
    from launcher.network.ports import free_port
    from tests.test_supervisor import CLIENT, LINK, SUBMIT, federated_plan, scripts, supervise

    # Prepare
    (tmp_path / "config.json").write_text(json.dumps(CONFIG))
    (tmp_path / "mlruns").write_text("a file where MLflow's store goes")
    port = free_port()
    factory = scripts(tmp_path, port, superlink=(LINK, str(port), "0", "600", "0"),
                      client_0=(CLIENT, "serve"), client_1=(CLIENT, "serve"),
                      server=(SUBMIT, str(tmp_path / "metrics.jsonl"), "3", "linger"))
    tracking = Tracking(tmp_path, ("tensorboard", "mlflow"))
    # Execute
    code, events, _ = supervise(federated_plan(tmp_path, port), factory, finish_grace=0.3,
                                tracking=tracking)
    # Assert
    assert code == 0
    unit, want = expected(tmp_path)
    assert set(want["accuracy"]) == {1, 2, 3}
    assert_holds(tensorboard_scalars(tmp_path), want, 1e-6)
    warnings = [n.text for n in events.of(Notice) if n.text.startswith("tracking:")]
    assert len(warnings) == 1 and warnings[0].startswith("tracking: mlflow did not start"), warnings
    assert json.loads((tmp_path / STATE).read_text()) == {
        "tensorboard": {"logdir": "tensorboard", "step": 3}}


@pytest.mark.e2e
@pytest.mark.slow
def test_a_real_run_is_tracked_live_by_a_launcher_without_torch(tmp_path: Path) -> None:
    """A whole federated run (2 clients, 1 round) with the three trackers: what the ServerApp
    wrote to metrics.jsonl is in each one, and the launcher still loaded no torch and no flwr."""
    from tests.runs import SMALL
    from tests.test_layers import child_side, launcher_modules

    # Prepare
    run = tmp_path / "run"
    args = [*SMALL, "--clients", "2", "--rounds", "1", "--gpus", "cpu", "--headless",
            "--track", "tensorboard,wandb", "--track", "mlflow", "--out", str(run)]
    # Execute
    modules, shown = launcher_modules(args, tmp_path, 600)
    # Assert
    assert '"exit_reason": "completed"' in (run / "summary.json").read_text(), shown
    assert child_side(modules) == [], shown
    unit, want = expected(run)
    assert set(want["accuracy"]) == {1} and {"client-0/train_loss", "client-1/examples"} <= set(want)
    assert_holds(tensorboard_scalars(run), want, 1e-6)
    assert_holds(wandb_history(wandb_records(run), unit), want, 1e-12)
    client, mlrun = mlflow_run(run)
    assert_holds(mlflow_history(client, mlrun), want, 1e-12)
    assert not [p for p in run.rglob("*") if p.is_symlink()]  # --resume and report accept it
