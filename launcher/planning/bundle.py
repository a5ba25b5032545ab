"""The Flower app folder `flwr run` submits, made in the run folder from the installed fedcore."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import fedcore
from fedcore.config import RunConfig

APP_PYPROJECT = """\
[build-system]
requires = ["hatchling"]
build-backend = "hatchling.build"

[project]
name = "fedlaunch-app"
version = "1.0.0"
description = "fedlaunch's Flower app: CIFAR-10 federated training"
license = "Apache-2.0"
dependencies = []

[tool.flwr.app]
publisher = "fedlaunch"

[tool.flwr.app.components]
serverapp = "fedcore.server_app:app"
clientapp = "fedcore.client_app:app"

[tool.flwr.app.config]
{config}
"""


def toml_value(value: Any) -> str:
    """A flat TOML scalar: bool, int, float or a basic string."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    return toml_string(str(value))


def toml_string(text: str) -> str:
    """A TOML basic string holding `text` exactly (a path with quotes, backslashes, newlines or
    emoji). Quotes are written as \\u0022, so the string also survives Flower's `key="value"`
    node-config parser, which ends a value at the first quote."""
    escaped = "".join(
        "\\\\" if ch == "\\" else
        f"\\u{ord(ch):04x}" if ch == '"' or ord(ch) < 0x20 or ord(ch) == 0x7F else ch
        for ch in text)
    return f'"{escaped}"'


def toml_table(values: dict[str, Any]) -> str:
    return "\n".join(f"{key} = {toml_value(value)}" for key, value in values.items()) + "\n"


def make_app(folder: Path, cfg: RunConfig, extra: dict[str, str] | None = None) -> Path:
    """Copy the fedcore package beside a pyproject whose config defaults are `cfg` (and `extra`:
    the launch's key). Only its owner may read it: the key must not leak before it is submitted."""
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    folder.chmod(0o700)
    source = Path(fedcore.__file__).parent
    target = folder / "fedcore"
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    config = toml_table({**cfg.to_run_config(), **(extra or {})})
    (folder / "pyproject.toml").write_text(APP_PYPROJECT.format(config=config), encoding="utf-8")
    return folder


def write_flwr_config(flwr_home: Path, address: str, root_certificates: Path | None = None,
                      name: str = "fedlaunch") -> Path:
    """FLWR_HOME/config.toml naming this run's SuperLink, so the user's ~/.flwr stays untouched.

    With `root_certificates` the connection is TLS trusting that CA (flwr wants an absolute
    path); without, `insecure = true`.
    """
    flwr_home.mkdir(parents=True, exist_ok=True)
    path = flwr_home / "config.toml"
    tls = (f"root-certificates = {toml_string(str(root_certificates.resolve()))}\n"
           if root_certificates is not None else "insecure = true\n")
    path.write_text(f'[superlink]\ndefault = "{name}"\n\n[superlink.{name}]\n'
                    f"address = {toml_string(address)}\n{tls}", encoding="utf-8")
    return path
