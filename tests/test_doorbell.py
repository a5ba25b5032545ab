"""The pool's doorbell: which clients the host rings when a round's messages are sent."""

from __future__ import annotations

import json
from pathlib import Path

from launcher.shim.hostparts import Doorbell


def append(path: Path, text: str) -> None:
    with path.open("a") as fh:
        fh.write(text)


def test_rings_the_clients_of_each_sent_records_nodes_once(tmp_path: Path) -> None:
    metrics, progress = tmp_path / "metrics.jsonl", tmp_path / "progress"
    progress.mkdir()
    for client, node in ((0, 11), (1, 22), (2, 33)):
        (progress / f"client-{client}.node").write_text(f"{node}\n")
    append(metrics, json.dumps({"event": "sent", "round": 1, "nodes": [11]}) + "\n")
    bell = Doorbell(metrics, progress)  # records before it started are an earlier launch's

    assert bell.due() == []
    append(metrics, json.dumps({"event": "round_start", "round": 2}) + "\n")
    line = json.dumps({"event": "sent", "round": 2, "nodes": [33, 22, 99]}) + "\n"
    append(metrics, line[:20])  # a record half written is read once it is whole
    assert bell.due() == []
    append(metrics, line[20:] + "not json\n")
    assert bell.due() == [1, 2]  # node 99 is no client of this host (joined from elsewhere)
    assert bell.due() == []


def test_no_metrics_file_yet_rings_nobody(tmp_path: Path) -> None:
    bell = Doorbell(tmp_path / "metrics.jsonl", tmp_path / "progress")
    assert bell.due() == []
    append(tmp_path / "metrics.jsonl", json.dumps({"event": "sent", "nodes": [1]}) + "\n")
    assert bell.due() == []  # no node files: nobody to ring


def test_a_host_without_the_doorbell_rings_nobody(tmp_path: Path) -> None:
    """A join's client host: the ServerApp writes another machine's run folder."""
    metrics, progress = tmp_path / "metrics.jsonl", tmp_path / "progress"
    progress.mkdir()
    (progress / "client-0.node").write_text("11\n")
    bell = Doorbell(metrics, progress, enabled=False)
    append(metrics, json.dumps({"event": "sent", "round": 1, "nodes": [11]}) + "\n")
    assert bell.due() == []
