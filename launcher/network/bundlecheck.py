"""Clients run only fedcore's own code: an app bundle (FAB) must hold exactly the installed fedcore.

A warm executor installs and imports whatever bundle a task names, so a run submitted to the
SuperLink by anyone who reaches its Control API would execute code on every client machine.
Before a bundle is installed, `check_bundle` compares it file by file (SHA-256) with the fedcore
package this Python imports: every file under `fedcore/` must equal the installed one, every
installed `.py` file must be there, the pyproject must name fedcore's ServerApp and ClientApp,
and nothing else may be in it (no other package, no compiled `.pyc`, no `.pth`).
"""

from __future__ import annotations

import hashlib
import hmac
import importlib.util
import io
import tomllib
import zipfile
from pathlib import Path, PurePosixPath

PACKAGE = "fedcore"
COMPONENTS = {"serverapp": "fedcore.server_app:app", "clientapp": "fedcore.client_app:app"}
MAX_FILE = 64 * 2**20  # a source file larger than this is no fedcore file


class BundleRefused(Exception):
    """The bundle's code is not the installed fedcore's; the message says which file and why."""


def installed_manifest(package: str = PACKAGE) -> dict[str, str]:
    """`relative path -> sha256` of every file of the installed package (caches left out).

    Found without importing the package, so an app folder on sys.path cannot stand in for it;
    call it before any app is loaded.
    """
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise BundleRefused(f"the {package} package is not installed here")
    root = Path(next(iter(spec.submodule_search_locations)))
    manifest = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root)
        if path.is_file() and "__pycache__" not in rel.parts and path.suffix != ".pyc":
            manifest[rel.as_posix()] = hashlib.sha256(path.read_bytes()).hexdigest()
    return manifest


def check_bundle(content: bytes, trusted: dict[str, str], package: str = PACKAGE) -> None:
    """Raise BundleRefused unless the FAB `content` is the trusted package plus its pyproject."""
    try:
        archive = zipfile.ZipFile(io.BytesIO(content))
    except zipfile.BadZipFile as exc:
        raise BundleRefused(f"not a FAB (zip) file: {exc}") from None
    seen: set[str] = set()
    with archive:
        for info in archive.infolist():
            name = info.filename
            if info.is_dir():
                continue
            parts = PurePosixPath(name).parts
            if name.startswith("/") or "\\" in name or any(p in ("", ".", "..") for p in parts):
                raise BundleRefused(f"file name {name!r} is not a plain relative path")
            if parts[0] == ".info":  # Flower's manifest; removed before the app is installed
                continue
            if info.file_size > MAX_FILE:
                raise BundleRefused(f"{name} is {info.file_size} bytes")
            data = archive.read(info)
            if name == "pyproject.toml":
                check_components(data)
            elif parts[0] == package and len(parts) > 1:
                rel = "/".join(parts[1:])
                if rel not in trusted:
                    raise BundleRefused(f"{name} is not part of the installed {package}")
                if hashlib.sha256(data).hexdigest() != trusted[rel]:
                    raise BundleRefused(f"{name} differs from the installed {package}'s")
                seen.add(rel)
            else:
                raise BundleRefused(f"{name} is outside the {package} package")
    missing = sorted(rel for rel in trusted if rel.endswith(".py") and rel not in seen)
    if missing:
        raise BundleRefused(f"{package}/{missing[0]} of the installed {package} is not in it "
                            f"({len(missing)} file(s) missing)")


def check_launch_key(content: bytes, key: str, name: str) -> None:
    """Raise BundleRefused unless the FAB's app config holds `name` = `key`: the mark of the run
    this launch submitted (launcher.network.runtime_secret)."""
    try:
        with zipfile.ZipFile(io.BytesIO(content)) as archive:
            config = tomllib.loads(archive.read("pyproject.toml").decode())
    except (KeyError, zipfile.BadZipFile, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise BundleRefused(f"its pyproject.toml cannot be read ({exc})") from None
    given = config.get("tool", {}).get("flwr", {}).get("app", {}).get("config", {}).get(name)
    if not isinstance(given, str) or not hmac.compare_digest(given, key):
        raise BundleRefused("it lacks this launch's key: someone else submitted it to the "
                            "SuperLink")


def check_components(pyproject: bytes) -> None:
    try:
        config = tomllib.loads(pyproject.decode())
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise BundleRefused(f"pyproject.toml does not parse: {exc}") from None
    components = config.get("tool", {}).get("flwr", {}).get("app", {}).get("components", {})
    for key, expected in COMPONENTS.items():
        if components.get(key) != expected:
            raise BundleRefused(f"pyproject.toml names {key} {components.get(key)!r}, "
                                f"not {expected!r}")
