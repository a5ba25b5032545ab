"""`fedlaunch --version` and `--help`: what a user reads before any run."""

from __future__ import annotations

import re
from importlib.metadata import version

import pytest

from launcher.arguments import build_parser
from launcher.cli import main


def test_version_names_fedlaunch_and_flower(capsys: pytest.CaptureFixture[str]) -> None:
    # Execute
    with pytest.raises(SystemExit) as exited:
        main(["--version"])
    # Assert
    assert exited.value.code == 0
    assert capsys.readouterr().out == f"fedlaunch {version('fedlaunch')} (flwr {version('flwr')})\n"


def test_help_prints_each_default_once() -> None:
    # Prepare: --help as the terminal shows it, cut into one entry per option
    text = build_parser().format_help()
    entries = re.split(r"\n  (?=-)", text.split("examples:")[0])
    # Assert
    options = [e for e in entries if e.startswith("--")]
    assert len(options) > 30
    for entry in options:
        assert len(re.findall(r"\(default", entry)) <= 1, entry
    assert text.count("dirichlet:0.5") == 1
    partition = next(e for e in options if e.startswith("--partition "))
    assert "(default dirichlet:0.5)" in " ".join(partition.split())
