"""Which Flower is installed, against the range fedlaunch was tested with; read without importing it.

The launcher never imports flwr: the version comes from the package metadata of the `flwr` or
`flwr-nightly` distribution. Outside TESTED (the releases the internals in
launcher/shim/flwr_internals.py were read from and tested with) the run gets a one-line warning,
and a child process looks each required Flower internal up: one that is missing stops the launch
with a one-line error naming it.
"""

from __future__ import annotations

import importlib.metadata
import re
import subprocess
import sys

from fedcore.errors import UsageError

TESTED = ">=1.42,<1.43"
TESTED_RELEASE = (1, 42)

DISTRIBUTIONS = ("flwr", "flwr-nightly")


def installed() -> str | None:
    """The installed Flower's version (either distribution), or None."""
    for name in DISTRIBUTIONS:
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def tested(version: str) -> bool:
    """A release of the tested MAJOR.MINOR (a pre-release or nightly of it is not)."""
    match = re.match(r"(\d+)\.(\d+)\.(\d+)$", version)
    return match is not None and (int(match[1]), int(match[2])) == TESTED_RELEASE


def missing_internals() -> list[str]:
    """The required internals this Flower lacks, looked up in a child (which imports flwr)."""
    result = subprocess.run([sys.executable, "-m", "launcher.shim.flwr_internals"],
                            capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=120)
    if result.returncode == 0:
        return []
    listed = result.stdout.strip()
    if result.returncode == 1 and listed:
        return listed.split(", ")
    tail = (result.stderr.strip().splitlines() or ["no output"])[-1]
    return [f"(the check itself failed: {tail})"]


def check_flower() -> str | None:
    """A one-line warning when the installed Flower is outside the tested range (None inside it);
    UsageError when Flower is missing or lacks an internal fedlaunch needs."""
    version = installed()
    if version is None:
        raise UsageError("Flower is not installed: pip install 'flwr" + TESTED + "'")
    if tested(version):
        return None
    gone = missing_internals()
    if gone:
        raise UsageError(f"flwr {version} lacks what fedlaunch needs ({', '.join(gone)}); "
                         f"install flwr{TESTED}")
    return f"flwr {version} is installed; fedlaunch is tested with flwr{TESTED}"
