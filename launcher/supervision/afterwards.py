"""After the run, off the command's critical path: the accuracy and loss plots.

matplotlib takes seconds to import on a small machine, so the plots are drawn by a background
process started once every process of the run is down; the command returns without waiting.
Its output goes to logs/plots.log. It carries no run token (the watchdog leaves it alone).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

PLOT = ("import os, sys; os.nice(10); from fedcore.rundir import RunDir, plot_curves; "
        "plot_curves(RunDir(sys.argv[1]))")  # niced in the child: no preexec, a cheap spawn


def start_plots(run_dir: Path) -> subprocess.Popen[bytes] | None:
    """Draw accuracy.png and loss.png in the background; None when there is nothing to plot."""
    metrics = run_dir / "metrics.jsonl"
    try:
        text = metrics.read_text(errors="replace")
    except OSError:
        return None
    if '"event": "round"' not in text and '"event": "epoch"' not in text:
        return None
    (run_dir / "logs").mkdir(parents=True, exist_ok=True)
    with (run_dir / "logs" / "plots.log").open("ab") as log:
        return subprocess.Popen(
            [sys.executable, "-c", PLOT, str(run_dir)], stdin=subprocess.DEVNULL, stdout=log,
            stderr=subprocess.STDOUT, start_new_session=True,
            env={**os.environ, "MPLBACKEND": "Agg"},
        )
