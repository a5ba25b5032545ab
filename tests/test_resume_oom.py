"""Resume after an interruption, a simulated CUDA out-of-memory client, and executor equivalence."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest

from fedcore.rundir import drop_torn_tail
from tests.runs import SMALL, Run, read_metrics, rounds, run_cli

pytestmark = pytest.mark.e2e


ENGINES = ["simulation", pytest.param("deployment", marks=pytest.mark.slow)]
SERVER_LOG = {"simulation": "simulation.log", "deployment": "server.log"}


@pytest.mark.timeout(240)
@pytest.mark.parametrize("engine", ENGINES)
def test_interrupted_run_resumes_from_its_last_checkpoint(tmp_path: Path, engine: str) -> None:
    # Prepare: a 4-round run stopped with SIGINT once round 2 is done
    out = tmp_path / "run"
    with Run(["--clients", "2", "--rounds", "4", "--headless", "--engine", engine, *SMALL], out,
             tmp_path) as run:
        run.wait_for_event("round", round=2)
        run.send(signal.SIGINT)
        assert run.wait() == 130
        run.assert_no_orphans()
    done_before = [r["round"] for r in rounds(out)]
    assert done_before[:2] == [1, 2]
    torn = b'{"event": "round", "round": 3, "accur'  # a record cut short by a crash mid-write
    with (out / "metrics.jsonl").open("ab") as fh:
        fh.write(torn)

    # Execute
    resumed = run_cli(["--resume", str(out), "--headless", "--engine", engine], tmp_path,
                      timeout=180)

    # Assert: the torn line is dropped, and said so; every line after it is whole
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr
    assert (f"fedlaunch: --resume: dropped the torn last line of metrics.jsonl ({len(torn)} bytes"
            in resumed.stdout), resumed.stdout[:2000]
    assert [r["event"] for r in read_metrics(out)].count("launch") == 2  # each line parses
    # rounds go on after the checkpoint, at most the interrupted round is redone
    assert "resuming after round" in (out / "logs" / SERVER_LOG[engine]).read_text()
    records = rounds(out)
    last_of = {r["round"]: r for r in records}
    assert sorted(last_of) == [1, 2, 3, 4]
    assert len(records) - 4 <= 1, [r["round"] for r in records]
    assert records[-1]["train_images"] > records[1]["train_images"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["exit_reason"] == "completed"
    assert summary["rounds_completed"] == 4


@pytest.mark.parametrize(("content", "kept"), [
    (b'{"a": 1}\n{"b": 2}\n', b'{"a": 1}\n{"b": 2}\n'),
    (b'{"a": 1}\n{"b": 2}\n{"c"', b'{"a": 1}\n{"b": 2}\n'),
    (b'{"only": "torn', b""),
    (b"", b""),
    (b'{"a": 1}\n' + b"x" * 200_000, b'{"a": 1}\n'),  # a torn line longer than a read block
])
def test_drop_torn_tail_keeps_the_whole_lines(tmp_path: Path, content: bytes, kept: bytes) -> None:
    path = tmp_path / "metrics.jsonl"
    path.write_bytes(content)

    dropped = drop_torn_tail(path)

    assert path.read_bytes() == kept
    assert dropped == len(content) - len(kept)


def test_drop_torn_tail_of_no_file_is_nothing(tmp_path: Path) -> None:
    assert drop_torn_tail(tmp_path / "metrics.jsonl") == 0
    assert not (tmp_path / "metrics.jsonl").exists()


def test_resume_of_a_folder_that_is_not_a_run_is_refused(tmp_path: Path) -> None:
    (tmp_path / "keep.txt").write_text("mine")

    result = run_cli(["--resume", str(tmp_path)], tmp_path)

    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"fedlaunch: --resume {tmp_path}: not a fedlaunch run folder (no config.json)"]
    assert (tmp_path / "keep.txt").read_text() == "mine"


def test_resume_refuses_changed_training_settings(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"mode": "federated"}))

    result = run_cli(["--resume", str(tmp_path), "--lr", "0.5"], tmp_path)

    assert result.returncode == 2
    assert "drop --lr" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.timeout(180)
@pytest.mark.parametrize("engine", ENGINES)
def test_out_of_memory_client_is_named_with_its_device_and_a_hint(tmp_path: Path, engine: str) -> None:
    out = tmp_path / "run"

    result = run_cli(["--clients", "2", "--rounds", "2", "--batch-size", "64", "--headless",
                      "--engine", engine, "--out", str(out), *SMALL], tmp_path, timeout=170,
                     env={"FEDLAUNCH_SIMULATE_OOM": "1"})

    # Out of memory repeats every round with the same settings: the run stops at once, exit 1.
    assert result.returncode == 1, result.stdout[-3000:]
    assert all(r["round"] == 1 for r in rounds(out))
    assert json.loads((out / "summary.json").read_text())["exit_reason"] == "failed"
    assert "client-1 ran out of memory on the CPU in round 1" in result.stdout
    assert "smaller --batch-size (now 64)" in result.stdout
    assert "Traceback" not in result.stdout.split("client-1 ran out of memory")[1].splitlines()[0]
    assert "fedlaunch: run failed: client-1\n" in result.stdout


@pytest.mark.slow  # two federated runs side by side
@pytest.mark.timeout(240)
def test_warm_and_stock_executors_give_the_same_results(tmp_path: Path) -> None:
    results = {}
    for executor in ("warm", "stock"):
        out = tmp_path / executor
        done = run_cli(["--clients", "2", "--rounds", "2", "--headless", "--engine", "deployment",
                        "--executor", executor, "--out", str(out), *SMALL], tmp_path, timeout=200)
        assert done.returncode == 0, done.stdout[-3000:]
        results[executor] = [(r["round"], r["accuracy"], r["loss"], r["train_loss"])
                             for r in rounds(out)]

    assert results["warm"] == results["stock"]
