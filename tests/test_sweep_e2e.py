"""`fedlaunch sweep` for real: a 2 x 2 grid of Flower runs, SIGINT mid-sweep, --resume, report."""

from __future__ import annotations

import csv
import json
import signal
import statistics
import subprocess
from pathlib import Path

import pytest

from tests.runs import SMALL, child_env, fedlaunch_argv, processes_mentioning, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

GRID = ("--seeds", "0-1", "--partition", "iid,classes:2", "--clients", "2", "--rounds", "3",
        "--local-epochs", "3", *SMALL, "--gpus", "cpu", "--headless")
NAMES = ["partition-iid_seed-0", "partition-classes2_seed-0", "partition-iid_seed-1",
         "partition-classes2_seed-1"]


def sweep_states(folder: Path) -> list[str]:
    return [c["state"] for c in json.loads((folder / "sweep.json").read_text())["cells"]]


def round_records(run_dir: Path) -> list[dict[str, object]]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r.get("event") == "round"]


@pytest.mark.timeout(900)
def test_sweep_stops_on_sigint_and_resumes_where_it_was(tmp_path: Path) -> None:
    # Prepare
    out = tmp_path / "sweep"
    modules = tmp_path / "modules.txt"
    env = child_env({"FEDLAUNCH_MODULES_FILE": str(modules)})
    proc = subprocess.Popen(fedlaunch_argv("sweep", *GRID, "--out", str(out)), cwd=tmp_path,
                            env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, start_new_session=True)
    cut = out / NAMES[1]
    try:
        # Execute: SIGINT (as Ctrl+C sends it) once the second cell has finished its round 1
        wait_until(lambda: (cut / "metrics.jsonl").exists() and round_records(cut), 400,
                   "the second cell's round 1", interval=0.2)
        proc.send_signal(signal.SIGINT)
        output, _ = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:
            proc.kill()

    # Assert: exit 130, the first cell done, the second stopped with its checkpoint, the rest pending
    assert proc.returncode == 130, output[-3000:]
    assert sweep_states(out) == ["done", "stopped", "pending", "pending"], output[-3000:]
    assert f"go on with: fedlaunch sweep --resume {out}" in output
    assert not (out / NAMES[2]).exists()
    cut_rounds = [r["round"] for r in round_records(cut)]
    assert (cut / "checkpoints" / "last.pt").exists()
    first_metrics = (out / NAMES[0] / "metrics.jsonl").read_bytes()
    loaded = set(modules.read_text().split())
    assert not {"torch", "flwr", "textual"} & loaded, "the sweep process loaded a child's modules"

    # Execute: resume
    result = subprocess.run(fedlaunch_argv("sweep", "--resume", str(out), "--headless"),
                            cwd=tmp_path, env=child_env(), text=True, capture_output=True,
                            timeout=600, stdin=subprocess.DEVNULL, start_new_session=True)

    # Assert: all done; the finished cell untouched, the cut cell continued from its checkpoint
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert sweep_states(out) == ["done"] * 4
    assert (out / NAMES[0] / "metrics.jsonl").read_bytes() == first_metrics
    records = [json.loads(x) for x in (cut / "metrics.jsonl").read_text().splitlines()]
    starts = [r["first_round"] for r in records if r.get("event") == "start"]
    assert starts == [1, max(cut_rounds) + 1], starts
    assert [r["round"] for r in round_records(cut)] == [1, 2, 3]
    assert f"[2/4] {NAMES[1]}: started from its checkpoint on CPU" in result.stdout
    assert NAMES[0] not in result.stdout
    wait_until(lambda: not processes_mentioning(str(out)), 30, "no process of the sweep left")

    # Execute: the report
    report = subprocess.run(fedlaunch_argv("report", str(out)), cwd=tmp_path, env=child_env(),
                            text=True, capture_output=True, timeout=180, stdin=subprocess.DEVNULL)

    # Assert: mean and sd over the seeds, computed here from each cell's metrics.jsonl
    assert report.returncode == 0, report.stderr
    rows = {r["partition"]: r for r in csv.DictReader((out / "sweep-report.csv").open())}
    for partition, names in (("iid", NAMES[0::2]), ("classes:2", NAMES[1::2])):
        accuracy = [[100 * float(r["accuracy"]) for r in round_records(out / n)] for n in names]  # type: ignore[arg-type]
        best = [max(a) for a in accuracy]
        final = [a[-1] for a in accuracy]
        row = rows[partition]
        assert float(row["best_mean"]) == pytest.approx(statistics.mean(best), abs=1e-4)
        assert float(row["best_sd"]) == pytest.approx(statistics.stdev(best), abs=1e-4)
        assert float(row["final_mean"]) == pytest.approx(statistics.mean(final), abs=1e-4)
        assert float(row["final_sd"]) == pytest.approx(statistics.stdev(final), abs=1e-4)
        assert f"| {partition} | 2 of 2 | 3 | {statistics.mean(best):.2f} ± {statistics.stdev(best):.2f} |" \
            in report.stdout
    assert (out / "sweep-curves.png").read_bytes()[:4] == b"\x89PNG"
