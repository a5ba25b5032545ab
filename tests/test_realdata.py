"""Real CIFAR-10 (the shared image-folder tar): one local epoch of the tutorial CNN beats chance."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import pytest

from tests.conftest import SHARED_TAR
from tests.runs import run_cli

pytestmark = [
    pytest.mark.realdata,
    pytest.mark.skipif(not SHARED_TAR.exists(), reason=f"{SHARED_TAR} is not here"),
]


@pytest.fixture(scope="module")
def cifar_images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("cifar10-images")
    with tarfile.open(SHARED_TAR) as tar:
        tar.extractall(folder, filter="data")
    return folder


@pytest.mark.timeout(600)
def test_local_cnn_epoch_on_real_cifar10_is_well_above_chance(cifar_images: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"

    result = run_cli(["--local", "--model", "cnn", "--epochs", "1", "--data-dir", str(cifar_images),
                      "--headless", "--out", str(out)], tmp_path, timeout=580)

    assert result.returncode == 0, result.stdout[-3000:] + result.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["train_images"] == 50_000
    assert summary["final_accuracy"] > 0.30, summary
    assert "accuracy" in result.stdout
    assert list(cifar_images.glob("fedlaunch-cifar10-*.npz")), "the decoded cache was not written"
