"""Run profiles: TOML files of settings, found in the installed `profiles` package or by path."""

from __future__ import annotations

import tomllib
from importlib import resources
from pathlib import Path
from typing import Any

from fedcore.errors import UsageError

# Keys a profile may hold beyond the run settings: launcher choices.
LAUNCHER_KEYS = {"local": bool, "gpus": str, "max-restarts": int}


def profile_names() -> list[str]:
    folder = resources.files("profiles")
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".toml"))


def profile_text(name_or_path: str) -> tuple[str, str]:
    """(where, text) of a profile given by name (e.g. `seed`) or by a path to a .toml file."""
    path = Path(name_or_path).expanduser()
    if name_or_path.endswith(".toml") or path.exists():
        try:
            return str(path), path.read_bytes().decode("utf-8")
        except OSError as exc:
            raise UsageError(f"cannot read profile {path}: {exc.strerror}") from None
        except UnicodeDecodeError as exc:
            raise UsageError(f"profile {path} is not UTF-8 text (byte {exc.start}); "
                             "TOML files are UTF-8") from None
    entry = resources.files("profiles") / f"{name_or_path}.toml"
    if not entry.is_file():
        raise UsageError(
            f"unknown --profile '{name_or_path}': use one of {', '.join(profile_names())} "
            "or a path to a .toml file"
        )
    return f"profile '{name_or_path}'", entry.read_text()


def load_profile(name_or_path: str) -> tuple[str, dict[str, Any]]:
    """The profile's settings as kebab-case keys; a TOML syntax error is one line naming the file."""
    where, text = profile_text(name_or_path)
    try:
        values = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"{where} is not valid TOML: {exc}") from None
    for key, value in values.items():
        if isinstance(value, dict):
            raise UsageError(f"{where}: '{key}' is a table; a profile holds plain settings only")
    return where, values


def describe_profiles() -> str:
    lines = []
    for name in profile_names():
        text = (resources.files("profiles") / f"{name}.toml").read_text()
        first = text.splitlines()[0] if text else ""
        lines.append(f"{name:<12} {first.lstrip('# ').strip()}")
    return "\n".join(lines)
