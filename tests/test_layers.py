"""The layers stay apart: fedcore imports no launcher and no Textual; only launcher/tui imports
Textual; the launcher process (launcher/ outside the child-side shim) never loads torch,
torchvision or flwr, nor the shim that runs inside client processes."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def imported_names(path: Path) -> set[str]:
    """Every module `path` imports, anywhere in it (top level, functions, branches), in full."""
    tree = ast.parse(path.read_text())
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def imported_modules(path: Path) -> set[str]:
    return {name.split(".")[0] for name in imported_names(path)}


CHILD_ONLY = ("torch", "torchvision", "flwr")
PARENT_SIDE = sorted(p for p in (ROOT / "launcher").rglob("*.py")
                     if "shim" not in p.relative_to(ROOT / "launcher").parts)


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
    code = "import sys, launcher.network.certs, launcher.network.nodeauth; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize("path", PARENT_SIDE, ids=lambda p: str(p.relative_to(ROOT)))
def test_parent_side_never_imports_the_shim_torch_or_flwr(path: Path) -> None:
    """launcher/ outside launcher/shim runs in the launcher process: no child-side module, at
    module level or inside a function (the shim's processes are started by command line)."""
    names = imported_names(path)
    assert not {n for n in names if n.split(".")[0] in CHILD_ONLY}, names
    assert not {n for n in names if n == "launcher.shim" or n.startswith("launcher.shim.")}, names


def test_parent_side_imports_of_fedcore_are_torch_free() -> None:
    """The fedcore modules the launcher imports (transitively) import no torch or flwr at load."""
    code = ("import sys, importlib, pathlib\n"
            "for p in sorted(pathlib.Path('launcher').rglob('*.py')):\n"
            "    parts = p.with_suffix('').parts\n"
            "    if 'shim' in parts or 'tui' in parts: continue\n"
            "    importlib.import_module('.'.join(parts).removesuffix('.__init__'))\n"
            "import launcher.report\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'torchvision', 'flwr')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=ROOT)
    assert out.stdout.strip() == "[]", out.stdout


def launcher_modules(args: list[str], folder: Path, timeout: float) -> tuple[set[str], str]:
    """Run `fedlaunch ARGS` to its end; the modules its own process had loaded when it exited."""
    from tests.runs import run_cli

    record = folder / "modules.txt"
    result = run_cli(args, folder, timeout=timeout, env={"FEDLAUNCH_MODULES_FILE": str(record)})
    shown = f"exit {result.returncode}: {result.stdout[-2000:]}\n{result.stderr[-2000:]}"
    assert record.exists(), f"the launcher wrote no module list; {shown}"
    return set(record.read_text().split()), shown


def child_side(modules: set[str]) -> list[str]:
    return sorted(m for m in modules if m.split(".")[0] in CHILD_ONLY or m.startswith("launcher.shim"))


def test_dry_run_loads_no_torch_and_no_flwr(tmp_path: Path) -> None:
    modules, shown = launcher_modules(["--dry-run", "--clients", "4", "--gpus", "cpu"], tmp_path, 120)

    assert "launcher.planning.prepare" in modules, shown
    assert child_side(modules) == [], shown
    assert "numpy" not in modules, "a dry run has no data to check, so no numpy either"


@pytest.mark.e2e
def test_a_real_run_loads_no_torch_and_no_flwr_in_the_launcher(tmp_path: Path) -> None:
    """A whole federated run (2 clients, 1 round): the clients and server used torch and flwr,
    the launcher that supervised them did not."""
    from tests.runs import SMALL

    args = [*SMALL, "--clients", "2", "--rounds", "1", "--gpus", "cpu", "--headless",
            "--out", str(tmp_path / "run")]
    modules, shown = launcher_modules(args, tmp_path, 600)

    assert "launcher.supervision.supervisor" in modules, shown
    assert (tmp_path / "run" / "summary.json").exists(), shown
    assert '"exit_reason": "completed"' in (tmp_path / "run" / "summary.json").read_text(), shown
    assert child_side(modules) == [], shown
