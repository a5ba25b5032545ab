"""The layers stay apart: fedcore imports no launcher and no Textual; only launcher/tui imports Textual."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("path", sorted((ROOT / "fedcore").rglob("*.py")), ids=lambda p: p.name)
def test_fedcore_imports_no_launcher_and_no_textual(path: Path) -> None:
    assert not imported_modules(path) & {"launcher", "textual"}


@pytest.mark.parametrize(
    "path",
    sorted(p for p in (ROOT / "launcher").rglob("*.py") if "tui" not in p.relative_to(ROOT).parts),
    ids=lambda p: p.name,
)
def test_launcher_outside_tui_never_imports_textual(path: Path) -> None:
    imports = imported_modules(path)
    assert "textual" not in imports
    if path.name != "runner.py":  # the one place that starts the view, lazily, when asked to
        assert "launcher.tui" not in path.read_text()


def test_fedlaunch_certs_starts_without_torch() -> None:
    """`fedlaunch certs` makes keys and certificates: it must not pay torch's import (seconds)."""
    import subprocess
    import sys

    code = "import sys, launcher.network.certs, launcher.network.nodeauth; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
