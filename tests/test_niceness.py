"""A niced launcher's children stay niced, though each starts a new session (its own autogroup)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(not Path("/proc/self/autogroup").exists(),
                                reason="this kernel has no autogroups")

CHILD = """
import os, subprocess, sys
from launcher.supervision.procs import die_with_parent
os.nice(7)
arm = die_with_parent(os.getpid()) if sys.argv[1] == "armed" else None
child = subprocess.Popen(["sleep", "30"], start_new_session=True, preexec_fn=arm)
try:
    print(open(f"/proc/{child.pid}/autogroup").read().strip())
finally:
    child.kill()
"""


def autogroup_of_child(mode: str) -> str:
    done = subprocess.run([sys.executable, "-c", CHILD, mode], capture_output=True, text=True,
                          timeout=60, check=True)
    return done.stdout.strip()


def test_a_child_in_a_new_session_keeps_the_launchers_niceness() -> None:
    # Prepare / Execute: a launcher at nice 7 starts a child in a new session, as procs.py does
    armed = autogroup_of_child("armed")
    plain = autogroup_of_child("plain")
    # Assert: the new session's autogroup has the launcher's niceness; without die_with_parent's
    # preexec it would have 0 (and take a full CPU share against everything else on the machine)
    assert armed.endswith("nice 7"), armed
    assert plain.endswith("nice 0"), plain
