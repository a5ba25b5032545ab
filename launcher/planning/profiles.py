"""Run profiles: TOML files of settings, found in the installed `profiles` package or by path."""

from __future__ import annotations

import tomllib
from importlib import resources
from pathlib import Path
from typing import Any

from fedcore.errors import UsageError

# Keys a profile may hold beyond the run settings: launcher choices.
LAUNCHER_KEYS = {"local": bool, "gpus": str, "max-restarts": int}
# The profile's published figures: a table `[published]` with `source`, `metric` ("best" or
# "final" test accuracy), `setting` (the run setting that tells cells apart, e.g. "partition")
# and `[published.values]`: setting value -> [mean, sd] in percent.
PUBLISHED = "published"
PUBLISHED_METRICS = ("best", "final")


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
    values.pop(PUBLISHED, None)  # what the source reports, for `fedlaunch report`: not a setting
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


def published_of(name_or_path: str) -> dict[str, Any] | None:
    """The profile's `[published]` table, checked; None when it has none."""
    where, text = profile_text(name_or_path)
    try:
        table = tomllib.loads(text).get(PUBLISHED)
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"{where} is not valid TOML: {exc}") from None
    if table is None:
        return None
    bad = UsageError(f"{where}: [published] needs source, metric ({' or '.join(PUBLISHED_METRICS)}), "
                     "setting and a [published.values] table of [mean, sd] pairs in percent")
    if not isinstance(table, dict):
        raise bad
    values = table.get("values")
    if (not isinstance(table.get("source"), str) or table.get("metric") not in PUBLISHED_METRICS
            or not isinstance(table.get("setting"), str) or not isinstance(values, dict)):
        raise bad
    for pair in values.values():
        if (not isinstance(pair, list) or len(pair) != 2
                or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in pair)):
            raise bad
    profile_value = tomllib.loads(text).get(table["setting"])
    return {"source": table["source"], "metric": table["metric"], "setting": table["setting"],
            "profile_value": profile_value if isinstance(profile_value, str) else None,
            "values": {str(k): [float(v[0]), float(v[1])] for k, v in values.items()}}
