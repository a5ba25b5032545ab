"""`fedlaunch report` on run folders written by hand the way fedcore writes them."""

from __future__ import annotations

import io
import json
import struct
from pathlib import Path

import pytest

from fedcore.errors import UsageError
from launcher.cli import main
from launcher.report import format_table, print_table, report

CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(autouse=True)
def in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`report` writes report.png into the current folder by default: keep it in tmp_path."""
    monkeypatch.chdir(tmp_path)


def write_lines(path: Path, records: list[dict[str, object]]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))


def federated_run(root: Path) -> Path:
    run = root / "fed-cnn"
    run.mkdir()
    records: list[dict[str, object]] = [
        {"event": "launch", "mode": "federated", "resumed": False},
        {"event": "start", "mode": "federated", "total": 3, "model": "cnn", "dataset": "cifar10"},
    ]
    accuracy = [0.32, 0.45, 0.51]
    for r, acc in enumerate(accuracy, start=1):
        records.append({"event": "round_start", "round": r, "total": 3})
        records.append({
            "event": "round", "round": r, "total": 3, "accuracy": acc, "loss": 2.0 - acc,
            "train_loss": 2.1 - acc, "replies": 2, "failures": 0, "seconds": 20.0,
            "train_images": 50_000 * r, "best_accuracy": max(accuracy[:r]),
        })
    records.append({"event": "end", "exit_reason": "completed"})
    write_lines(run / "metrics.jsonl", records)
    (run / "summary.json").write_text(json.dumps({
        "mode": "federated", "rounds_completed": 3, "rounds_planned": 3, "final_accuracy": 0.51,
        "best_accuracy": 0.51, "final_loss": 1.49, "wall_seconds": 64.5, "train_images": 150_000,
        "train_images_per_second": 2325.6, "exit_reason": "completed", "model": "cnn",
        "dataset": "cifar10",
    }))
    counts = [[900, 100, 450, 0, 2500, 30, 700, 1200, 5, 600], [4100, 4900, 4550, 5000, 2500,
                                                                4970, 4300, 3800, 4995, 4400]]
    (run / "partitions.json").write_text(json.dumps({
        "spec": "dirichlet:0.5", "num_clients": 2, "num_samples": 50_000,
        "clients": [{"client": k, "samples": sum(row), "labels": dict(zip(CLASSES, row, strict=True))}
                    for k, row in enumerate(counts)],
        "label_counts": counts,
    }))
    return run


def local_run(root: Path) -> Path:
    run = root / "local-resnet"
    run.mkdir()
    records: list[dict[str, object]] = [
        {"event": "start", "mode": "local", "total": 4, "model": "resnet18", "dataset": "cifar10"},
    ]
    for e, acc in enumerate([0.41, 0.55, 0.62, 0.60], start=1):
        records.append({
            "event": "epoch", "epoch": e, "total": 4, "accuracy": acc, "loss": 1.8 - acc,
            "train_loss": 1.9 - acc, "seconds": 30.0, "train_images": 50_000 * e,
            "best_accuracy": 0.62 if e >= 3 else acc,
        })
    write_lines(run / "metrics.jsonl", records)
    (run / "summary.json").write_text(json.dumps({
        "mode": "local", "epochs_completed": 4, "final_accuracy": 0.60, "best_accuracy": 0.62,
        "wall_seconds": 125.0, "train_images": 200_000, "train_images_per_second": 1600.0,
        "exit_reason": "completed", "model": "resnet18", "dataset": "cifar10",
    }))
    return run


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def test_report_writes_curves_heatmap_and_table(tmp_path: Path) -> None:
    # Prepare
    fed, local = federated_run(tmp_path), local_run(tmp_path)
    # Execute
    result = report([fed, local])
    # Assert
    assert result.report_png == Path("report.png")
    width, height = png_size(result.report_png)
    assert width >= 800 and height >= 300
    assert result.report_png.stat().st_size > 20_000
    assert result.partition_pngs == [Path("report-partitions-fed-cnn.png")]
    assert min(png_size(result.partition_pngs[0])) >= 300
    assert not (fed / "partitions.png").exists() and not (local / "partitions.png").exists()
    fed_row, local_row = result.rows
    assert fed_row.cells() == ("fed-cnn", "federated", "cnn", "3", "0.5100", "0.5100", "64.5", "2326")
    assert local_row.cells() == ("local-resnet", "local", "resnet18", "4", "0.6000", "0.6200", "125.0",
                                 "1600")


def test_report_to_given_path_and_printed_table(tmp_path: Path) -> None:
    fed, local = federated_run(tmp_path), local_run(tmp_path)
    out = tmp_path / "out" / "compare.png"
    result = report([local, fed], out=out)
    assert result.report_png == out and png_size(out)[0] >= 800
    stream = io.StringIO()
    print_table(result.rows, stream)
    lines = stream.getvalue().splitlines()
    assert lines[0].split() == ["run", "mode", "model", "rounds/epochs", "final", "acc", "best", "acc",
                                "wall", "s", "images/s"]
    assert lines[1].split() == ["local-resnet", "local", "resnet18", "4", "0.6000", "0.6200", "125.0",
                                "1600"]
    assert lines[2].split()[:4] == ["fed-cnn", "federated", "cnn", "3"]
    assert format_table(result.rows) == stream.getvalue().rstrip("\n")


def test_run_without_summary_uses_metrics(tmp_path: Path) -> None:
    fed = federated_run(tmp_path)
    (fed / "summary.json").unlink()
    with (fed / "metrics.jsonl").open("a") as fh:
        fh.write('{"event": "round", "round": 4, "acc')  # torn last line of a killed run
    row = report([fed]).rows[0]
    assert row.cells()[:6] == ("fed-cnn", "federated", "cnn", "3", "0.5100", "0.5100")
    assert row.wall_seconds == 60.0


@pytest.mark.parametrize("make", ["missing", "empty", "file"])
def test_bad_run_folder_is_usage_error(tmp_path: Path, make: str) -> None:
    bad = tmp_path / "nope"
    if make == "empty":
        bad.mkdir()
    elif make == "file":
        bad.write_text("x")
    with pytest.raises(UsageError, match="not a fedlaunch run folder: .*nope"):
        report([bad])


def test_invalid_summary_is_usage_error(tmp_path: Path) -> None:
    fed = federated_run(tmp_path)
    (fed / "summary.json").write_text("{not json")
    with pytest.raises(UsageError, match="summary.json"):
        report([fed])


def tree(root: Path) -> dict[str, tuple[bytes, int]]:
    """Every file under root: its bytes and its modification time in ns."""
    return {str(p.relative_to(root)): (p.read_bytes(), p.stat().st_mtime_ns)
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_report_leaves_the_run_folders_it_reads_unchanged(tmp_path: Path) -> None:
    # Prepare
    runs = tmp_path / "runs"
    runs.mkdir()
    fed, local = federated_run(runs), local_run(runs)
    before = tree(runs)
    # Execute
    result = report([fed, local])
    # Assert: the curves and the heatmap are beside each other here, nothing in the runs
    assert tree(runs) == before
    assert result.report_png.resolve() == tmp_path / "report.png"
    assert [p.resolve() for p in result.partition_pngs] == [tmp_path / "report-partitions-fed-cnn.png"]


def test_report_into_runs_writes_each_heatmap_in_its_run(tmp_path: Path) -> None:
    fed, local = federated_run(tmp_path), local_run(tmp_path)
    result = report([fed, local], out=tmp_path / "cmp.png", into_runs=True)
    assert result.partition_pngs == [fed / "partitions.png"]
    assert png_size(fed / "partitions.png")[0] >= 300 and not (local / "partitions.png").exists()


def test_runs_with_the_same_folder_name_are_told_apart(tmp_path: Path) -> None:
    # Prepare: two sweeps, each with a run folder called fed-cnn
    first, second = tmp_path / "sweep-a", tmp_path / "sweep-b"
    first.mkdir()
    second.mkdir()
    a, b = federated_run(first), federated_run(second)
    (b / "summary.json").unlink()
    # Execute
    result = report([a, b, a])
    # Assert: parent/name in the table and in the heatmap files; one folder named twice stays one
    assert [row.run for row in result.rows] == ["sweep-a/fed-cnn", "sweep-b/fed-cnn", "sweep-a/fed-cnn"]
    table = format_table(result.rows).splitlines()
    assert table[1].startswith("sweep-a/fed-cnn ") and table[2].startswith("sweep-b/fed-cnn ")
    names = {p.name for p in result.partition_pngs}
    assert names == {"report-partitions-sweep-a-fed-cnn.png", "report-partitions-sweep-b-fed-cnn.png"}
    # different folder names keep the short name
    c = local_run(first)
    assert [row.run for row in report([a, c]).rows] == ["fed-cnn", "local-resnet"]


def test_report_command_prints_the_file_it_wrote(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # Prepare
    fed = federated_run(tmp_path)
    # Execute: --out without a suffix
    code = main(["report", str(fed), "--out", str(tmp_path / "compare")])
    # Assert: matplotlib writes compare.png, and that is the path printed
    out = capsys.readouterr().out
    assert code == 0
    assert f"wrote {tmp_path / 'compare.png'}\n" in out
    assert png_size(tmp_path / "compare.png")[0] >= 800
    assert not (tmp_path / "compare").exists()
    assert f"wrote {tmp_path / 'compare-partitions-fed-cnn.png'}\n" in out
