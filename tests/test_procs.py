"""Process start, log capture and the stop path, with tiny child scripts instead of Flower."""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path

import psutil

from launcher.supervision.procs import ManagedProcess, ProcessSpec, stop_all

SPEW = r"""
import sys
print("\x1b[92mINFO \x1b[0m: coloured")
sys.stdout.write("progress 1\rprogress 2\rdone\n")
print("x" * 200_000)
for i in range(2000):
    print(f"line {i}")
"""

STUBBORN = r"""
import signal, subprocess, sys, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"],
                         start_new_session=True)
print(f"grandchild {child.pid}", flush=True)
time.sleep(600)
"""


def managed(tmp_path: Path, name: str, code: str, lines: list[tuple[str, str]]) -> ManagedProcess:
    spec = ProcessSpec(name=name, role="test", argv=(sys.executable, "-c", code))
    return ManagedProcess(spec, tmp_path / f"{name}.log", lambda n, t: lines.append((n, t)), {})


def test_every_line_reaches_the_log_file_and_the_listener(tmp_path: Path) -> None:
    lines: list[tuple[str, str]] = []
    proc = managed(tmp_path, "spew", SPEW, lines)

    async def go() -> int:
        await proc.start()
        return await proc.wait()

    code = asyncio.run(go())

    log = (tmp_path / "spew.log").read_text().splitlines()
    assert code == 0
    assert log[0] == "INFO : coloured"
    assert log[1:4] == ["progress 1", "progress 2", "done"]
    assert len(log[4]) == 200_000
    assert log[-1] == "line 1999" and len(log) == 2005
    assert [t for _, t in lines] == log


def test_stop_kills_a_child_that_ignores_sigterm_and_sweeps_its_escaped_grandchild(
    tmp_path: Path,
) -> None:
    lines: list[tuple[str, str]] = []
    proc = managed(tmp_path, "stubborn", STUBBORN, lines)

    async def go() -> float:
        await proc.start()
        while not any("grandchild" in t for _, t in lines):
            await asyncio.sleep(0.05)
        proc.remember_descendants()
        started = time.monotonic()
        await stop_all([proc], timeout=1.0)
        return time.monotonic() - started

    seconds = asyncio.run(go())

    grandchild = int(next(t for _, t in lines if "grandchild" in t).split()[1])
    assert proc.returncode == -9
    assert 1.0 <= seconds < 8.0
    assert not psutil.pid_exists(grandchild) or psutil.Process(grandchild).status() == "zombie"
