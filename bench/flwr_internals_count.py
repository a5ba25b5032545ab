"""Count the places in fedcore/ and launcher/ that rely on Flower internals (non-public API).

    python bench/flwr_internals_count.py [PROJECT_ROOT]

A place is a source line (outside launcher/shim/flwr_internals.py, the registry) that uses a
registry entry (`fi.Name`), looks a Flower module up in sys.modules, imports a Flower module that
is not public API (public: flwr.app, flwr.clientapp, flwr.serverapp, flwr.simulation and the
flwr.common package itself), or names a Flower module in a string (a patch target). Also prints
the registry's entries (NAMES). Compare two commits with `git worktree` or `git archive`.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

PUBLIC = ("flwr.app", "flwr.clientapp", "flwr.serverapp", "flwr.simulation")
PUBLIC_EXACT = ("flwr.common",)
USE = re.compile(r"\bfi\.(?!NAMES\b|missing\b|RAYBACKEND_MODULE\b|BACKEND_IMPORT\b)[A-Za-z_]+")
LOOKUP = re.compile(r'sys\.modules(\.get\(|\[)\s*"flwr|NAMES\["')
IMPORT = re.compile(r"^\s*(from|import)\s+(flwr\.[\w.]+)")
NAMED = re.compile(r'"flwr\.[\w.]+"')


def relies(line: str) -> bool:
    imported = IMPORT.match(line)
    if imported:
        module = imported.group(2)
        return not (module.startswith(PUBLIC) or module in PUBLIC_EXACT)
    return bool(USE.search(line) or LOOKUP.search(line) or NAMED.search(line))


def main() -> int:
    root = Path(sys.argv[1] if len(sys.argv) > 1 else ".")
    per_file = {}
    for path in sorted([*(root / "fedcore").rglob("*.py"), *(root / "launcher").rglob("*.py")]):
        if path.name == "flwr_internals.py":
            continue
        count = sum(1 for line in path.read_text().splitlines() if relies(line))
        if count:
            per_file[str(path.relative_to(root))] = count
    registry = (root / "launcher" / "shim" / "flwr_internals.py").read_text()
    names = len(re.findall(r'^    "\w+": \(', registry, re.M))
    print(f"places: {sum(per_file.values())}  registry entries: {names}")
    for name, count in per_file.items():
        print(f"  {count:3d}  {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
