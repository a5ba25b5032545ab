"""Shared fixtures: Flower's environment switches, and paths of this checkout."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from launcher.supervision.startup import brief_omp_spin

ROOT = Path(__file__).resolve().parents[1]
SHARED_TAR = ROOT.parent / "shared" / "data" / "cifar10-images.tar"

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")
# as the launcher gives its children (child_base_env): torch in the test process too spins
# briefly, so a busy core elsewhere does not stall it
brief_omp_spin(os.environ)


@pytest.fixture(autouse=True)
def _private_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep tests away from the user's ~/.cache and ~/.flwr."""
    home = tmp_path_factory.getbasetemp() / "home"
    home.mkdir(exist_ok=True)
    monkeypatch.setenv("XDG_CACHE_HOME", str(home / ".cache"))
    monkeypatch.setenv("FLWR_HOME", str(home / ".flwr"))
