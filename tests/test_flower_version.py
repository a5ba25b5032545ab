"""The start-up check of the installed Flower: read from package metadata (flwr or flwr-nightly),
a one-line warning outside the tested range, a one-line error when an internal is missing."""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys

import pytest

from fedcore.errors import UsageError
from launcher.planning import flower_version
from launcher.planning.flower_version import TESTED


def only(distribution: str, version: str) -> object:
    def lookup(name: str) -> str:
        if name != distribution:
            raise importlib.metadata.PackageNotFoundError(name)
        return version
    return lookup


def test_the_tested_flower_passes_quietly() -> None:
    assert flower_version.check_flower() is None  # this environment's flwr 1.42


def test_a_nightly_is_named_in_one_warning_when_every_internal_is_there(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(importlib.metadata, "version", only("flwr-nightly", "1.43.0.dev20261026"))

    warning = flower_version.check_flower()  # the child really looks each internal up

    assert warning == f"flwr 1.43.0.dev20261026 is installed; fedlaunch is tested with flwr{TESTED}"


def test_a_missing_internal_is_a_one_line_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(importlib.metadata, "version", only("flwr", "1.44.0"))
    monkeypatch.setattr(flower_version, "missing_internals",
                        lambda: ["flwr.supernode.start_client_internal._push_messages"])

    with pytest.raises(UsageError) as error:
        flower_version.check_flower()

    text = str(error.value)
    assert text == ("flwr 1.44.0 lacks what fedlaunch needs (flwr.supernode.start_client_internal."
                    f"_push_messages); install flwr{TESTED}")


def test_no_flower_at_all_is_a_one_line_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(importlib.metadata, "version", only("nothing", ""))
    with pytest.raises(UsageError, match="Flower is not installed"):
        flower_version.check_flower()


@pytest.mark.parametrize(("version", "expected"), [
    ("1.42.0", True), ("1.42.3", True), ("1.43.0", False), ("1.43.0.dev20261026", False),
    ("1.42.0rc1", False), ("1.41.9", False), ("2.42.0", False)])
def test_the_tested_range(version: str, expected: bool) -> None:
    assert flower_version.tested(version) is expected


def test_the_internals_child_says_nothing_is_missing_here() -> None:
    result = subprocess.run([sys.executable, "-m", "launcher.shim.flwr_internals"],
                            capture_output=True, text=True, timeout=120)
    assert (result.returncode, result.stdout.strip()) == (0, "")
