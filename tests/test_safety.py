"""Safe defaults: no unpickling of data that crossed a process boundary, loopback listeners,
atomic checkpoints, and run folders that stay where the user put them."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from fedcore.config import RunConfig
from fedcore.rundir import RunDir
from launcher.planning.placement import Placement
from launcher.planning.plan import federated_plan

ROOT = Path(__file__).resolve().parents[1]
SOURCES = sorted(p for d in ("fedcore", "launcher", "bench") for p in (ROOT / d).rglob("*.py"))
# The one reader of pickles: CIFAR-10's own batch files, read from local disk by an Unpickler that
# allows numpy arrays and nothing else (tests/test_data.py feeds it a malicious pickle).
ALLOWED_PICKLE = {ROOT / "fedcore" / "cifar_files.py"}


def test_sources_are_found() -> None:
    assert len(SOURCES) > 15


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_unsafe_deserialisation(path: Path) -> None:
    text = path.read_text()

    if path not in ALLOWED_PICKLE:
        assert not re.search(r"\bpickle\b|\bdill\b|\bcloudpickle\b|marshal\.loads", text), path
    for call in re.finditer(r"torch\.load\(([^)]*)\)", text):
        assert "weights_only=True" in call.group(1), f"{path}: {call.group(0)}"
    assert "allow_pickle=True" not in text, path


def test_cifar_files_unpickles_only_through_the_restricted_unpickler() -> None:
    text = (ROOT / "fedcore" / "cifar_files.py").read_text()

    assert "pickle.load(" not in text and "pickle.loads(" not in text
    assert re.search(r"class \w+\(pickle\.Unpickler\)", text)
    assert "def find_class" in text


def test_every_listener_of_a_local_run_is_bound_to_loopback(tmp_path: Path) -> None:
    placement = Placement(gpus=(), client_gpu=(None, None, None), notes=(), warnings=())

    plan = federated_plan(RunConfig(clients=3), tmp_path, placement)

    for spec in plan.processes:
        argv = list(spec.argv)
        for flag in ("--host", "--superlink"):
            if flag in argv:
                assert argv[argv.index(flag) + 1].startswith("127.0.0.1"), spec
    assert plan.superlink_address.startswith("127.0.0.1:")
    assert all(spec.env.get("FLWR_TELEMETRY_ENABLED") == "0" for spec in plan.processes
               if spec.role != "local")


def test_a_crash_while_writing_a_checkpoint_keeps_the_previous_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = RunDir(tmp_path).create()
    run.save_checkpoint("last", {"round": 1, "state_dict": {"w": torch.ones(3)}})

    def crash(obj: object, path: str) -> None:
        Path(path).write_bytes(b"half a checkpo")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(KeyboardInterrupt):
        run.save_checkpoint("last", {"round": 2, "state_dict": {"w": torch.zeros(3)}})

    state = run.load_checkpoint("last")
    assert state is not None and state["round"] == 1
    assert torch.equal(state["state_dict"]["w"], torch.ones(3))
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["last.pt"]


def test_metrics_reader_skips_a_torn_last_line(tmp_path: Path) -> None:
    run = RunDir(tmp_path).create()
    run.append_metric("round", round=1, accuracy=0.5)
    with run.metrics_path.open("a") as fh:
        fh.write('{"event": "round", "round": 2, "accu')

    assert [m["round"] for m in run.metrics()] == [1]
