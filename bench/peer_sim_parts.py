"""bench/peer_sim.py's parts that start nothing: process accounting, run figures, config files."""

from __future__ import annotations

import json
import os
import signal
import time
import tomllib
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from launcher.planning.bundle import APP_PYPROJECT, toml_table

PROC = Path("/proc")
MARKER = "FEDLAUNCH_PEER_SIM_RUN"
TICKS = os.sysconf("SC_CLK_TCK")


def pss_kb(pid: int, proc: Path = PROC) -> int:
    """Proportional set size of one process in kB, from smaps_rollup (0 once it is gone)."""
    try:
        for line in (proc / str(pid) / "smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0


def stat_of(pid: int, proc: Path = PROC) -> tuple[int, int, float] | None:
    """(parent pid, start time in clock ticks since boot, CPU seconds) of a process, or None when
    it is gone or has exited (a zombie holds no memory and is no longer running).

    /proc/PID/stat's second field is the command name in parentheses, which may itself hold
    spaces and parentheses: the fields after it are split from the last ')'.
    """
    try:
        text = (proc / str(pid) / "stat").read_text()
        rest = text[text.rindex(")") + 2:].split()
        if rest[0] in ("Z", "X"):
            return None
        return int(rest[1]), int(rest[19]), (int(rest[11]) + int(rest[12])) / TICKS
    except (OSError, ValueError, IndexError):
        return None


def has_marker(pid: int, marker: bytes, proc: Path = PROC) -> bool:
    """Whether the process's environment holds the exact entry `marker` (b"NAME=value")."""
    try:
        return marker in (proc / str(pid) / "environ").read_bytes().split(b"\0")
    except OSError:
        return False


def name_of(pid: int, proc: Path = PROC) -> str:
    """A short name for a process: its program, the module of `python -m`, or `python -c`."""
    try:
        argv = (proc / str(pid) / "cmdline").read_bytes().split(b"\0")
        words = [w.decode(errors="replace") for w in argv if w]
    except OSError:
        return "?"
    if not words:
        return "?"
    if Path(words[0]).name.startswith("python") and len(words) > 1:
        if words[1] == "-m" and len(words) > 2:
            return words[2]
        if words[1] == "-c":
            return "python -c"
        return Path(words[1]).name
    return Path(words[0]).name if "/" in words[0] else words[0]


def live_pids(proc: Path = PROC) -> list[int]:
    return [int(p.name) for p in proc.iterdir() if p.name.isdigit()]


class ProcessSet:
    """Every process one run started: its root, their descendants, and any process started after
    the root whose environment carries the run's marker (daemons that left the tree, such as Ray's
    and Flower's detached local SuperLink). `sample()` sums their PSS and keeps the peak."""

    def __init__(self, root: int, marker: str, proc: Path = PROC) -> None:
        self.root, self.marker, self.proc = root, marker.encode(), proc
        found = stat_of(root, proc)
        self.since = found[1] if found else 0
        self.members: dict[int, int] = {}  # pid -> start ticks (a reused pid is another process)
        self.names: dict[int, str] = {}
        self.cpu: dict[int, float] = {}  # pid -> CPU seconds when last seen
        self.foreign: set[tuple[int, int]] = set()
        self.peak_pss_kb = 0
        self.peak_procs = 0

    def scan(self) -> list[int]:
        """The run's live processes now; new ones are found and remembered."""
        stats = {pid: s for pid in live_pids(self.proc) if (s := stat_of(pid, self.proc))}
        live, pending = [], {}
        for pid, (ppid, start, cpu) in stats.items():
            if self.members.get(pid) == start:
                live.append(pid)
                self.cpu[pid] = cpu
            elif (pid, start) not in self.foreign:
                if start < self.since:
                    self.foreign.add((pid, start))
                else:
                    pending[pid] = (ppid, start, cpu)
        changed = True
        while changed:  # a child may be listed before its parent joins the set
            changed = False
            for pid, (ppid, start, cpu) in list(pending.items()):
                if pid == self.root or ppid in self.members or has_marker(pid, self.marker,
                                                                          self.proc):
                    del pending[pid]
                    self.members[pid], self.cpu[pid] = start, cpu
                    self.names[pid] = name_of(pid, self.proc)
                    live.append(pid)
                    changed = True
        self.foreign.update((pid, start) for pid, (_, start, _) in pending.items())
        return live

    def sample(self) -> int:
        """The summed PSS (kB) of the run's live processes now; updates the peak."""
        live = self.scan()
        total = sum(pss_kb(pid, self.proc) for pid in live)
        if total > self.peak_pss_kb:
            self.peak_pss_kb, self.peak_procs = total, len(live)
        return total

    def cpu_seconds(self) -> float:
        """CPU seconds of every member, each as last seen (a short-lived one counts until then)."""
        return sum(self.cpu.values())

    def alive(self) -> list[int]:
        return [pid for pid, start in self.members.items()
                if (s := stat_of(pid, self.proc)) and s[1] == start]

    def stop(self, grace: float = 5.0) -> list[str]:
        """SIGTERM to every member still alive, SIGKILL to those alive after `grace` seconds;
        the names of those that were still there."""
        left = self.alive()
        names = [self.names.get(pid, "?") for pid in left]
        for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 2.0)):
            for pid in left:
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
            deadline = time.monotonic() + wait
            while (left := self.alive()) and time.monotonic() < deadline:
                time.sleep(0.1)
            if not left:
                break
        return names


def read_records(path: Path) -> list[dict[str, Any]]:
    """The JSON objects of a JSON-lines file (metrics.jsonl); a torn or foreign line is skipped."""
    try:
        lines = path.read_bytes().splitlines()
    except OSError:
        return []
    out = []
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict):
            out.append(record)
    return out


def run_figures(records: Iterable[dict[str, Any]], launched: float) -> dict[str, Any]:
    """What one run's metrics.jsonl says, in seconds since `launched` where a time.

    first_training: round 1's first client started training (the ServerApp's `train_started`);
    round_seconds: each round's `seconds` (its start to the next round's start: the server
    evaluates a round while the clients train the next; the last round until its evaluation).
    """
    records = list(records)
    rounds: dict[int, dict[str, Any]] = {}
    for r in records:
        if r.get("event") == "round" and isinstance(r.get("round"), int):
            rounds[r["round"]] = r  # a resumed run's repeat replaces the first
    ordered = [rounds[k] for k in sorted(rounds)]
    starts = [r["time"] for r in records if r.get("event") == "round_start" and r.get("round") == 1]
    ends = [r["time"] for r in records if r.get("event") == "end"]
    first = ordered[0].get("train_started") if ordered and ordered[0].get("round") == 1 else None
    later = [float(r["seconds"]) for r in ordered[1:] if "seconds" in r]
    return {
        "rounds": len(ordered),
        "first_round_start_s": round(starts[0] - launched, 2) if starts else None,
        "first_training_s": round(float(first) - launched, 2) if first else None,
        "round_seconds": [float(r.get("seconds", 0.0)) for r in ordered],
        "later_round_mean_s": round(sum(later) / len(later), 3) if later else None,
        "accuracy": [float(r["accuracy"]) for r in ordered if "accuracy" in r],
        "replies": [int(r.get("replies", 0)) for r in ordered],
        "end_s": round(ends[-1] - launched, 2) if ends else None,
    }


def read_run_config(run_dir: Path) -> dict[str, Any]:
    """The run config fedlaunch gave its ServerApp: run_config.toml (what it passes to `flwr run
    --run-config`), else config.json (the run's saved settings, less its `mode`)."""
    toml_path, json_path = run_dir / "run_config.toml", run_dir / "config.json"
    if toml_path.is_file():
        return tomllib.loads(toml_path.read_text(encoding="utf-8"))
    if json_path.is_file():
        values = json.loads(json_path.read_text(encoding="utf-8"))
        return {k: v for k, v in values.items() if k != "mode"}
    raise FileNotFoundError(f"{run_dir} has neither run_config.toml nor config.json")


def peer_run_config(base: dict[str, Any], out_dir: Path) -> dict[str, Any]:
    """fedlaunch's run config, writing its run folder (metrics, partitions) to `out_dir`."""
    config = {**base, "out-dir": str(out_dir)}
    if config.get("progress-dir"):
        config["progress-dir"] = str(out_dir / "progress")
    return config


def flwr_home_config(name: str, num_supernodes: int, num_cpus: float, num_gpus: float) -> str:
    """$FLWR_HOME/config.toml: a local-simulation SuperLink connection named `name` (Flower's
    managed local SuperLink runs the Simulation Engine with the Ray backend). A whole number is
    written as an integer (Flower refuses `num-cpus = 1.0`); num-gpus only when not 0."""
    text = (f'[superlink]\ndefault = "{name}"\n\n[superlink.{name}]\naddress = ":local:"\n'
            f"options.num-supernodes = {int(num_supernodes)}\n"
            f"options.backend.client-resources.num-cpus = {_number(num_cpus)}\n")
    if num_gpus:
        text += f"options.backend.client-resources.num-gpus = {_number(num_gpus)}\n"
    return text


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def write_peer_app(folder: Path, fedcore_dir: Path, run_config: dict[str, Any]) -> Path:
    """A Flower app folder: a copy of `fedcore_dir` (the package fedlaunch runs) beside the
    pyproject fedlaunch writes, its config defaults `run_config`; and run_config.toml beside it."""
    import shutil

    folder.mkdir(parents=True, exist_ok=True)
    shutil.copytree(fedcore_dir, folder / "fedcore",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    (folder / "pyproject.toml").write_text(APP_PYPROJECT.format(config=toml_table(run_config)),
                                           encoding="utf-8")
    (folder.parent / "run_config.toml").write_text(toml_table(run_config), encoding="utf-8")
    return folder


def fmt(values: Iterable[float], spec: str = ".2f") -> str:
    return ", ".join(format(v, spec) for v in values)


def table(rows: list[dict[str, Any]]) -> str:
    """The Markdown table of every run, in run order."""
    head = ("| run | side | clients | load | rc | wall s | first training s | s/round, rounds 2+: mean "
            "[each] | peak PSS MB (procs) | CPU s | left after exit | accuracy per round |\n"
            "|---|---|---|---|---|---|---|---|---|---|---|---|")
    lines = [head]
    for r in rows:
        later = r["round_seconds"][1:]
        mean = f"{r['later_round_mean_s']:.2f} [{fmt(later, '.1f')}]" if later else "-"
        first = f"{r['first_training_s']:.1f}" if r.get("first_training_s") is not None else "-"
        left = ", ".join(r.get("left_after_exit", [])) or "none"
        lines.append(
            f"| {r['run']} | {r['side']} | {r['clients']} | {r['load']:.1f} | {r['rc']} | "
            f"{r['wall_s']:.1f} | {first} | {mean} | {r['peak_pss_kb'] / 1000:,.0f} ({r['peak_procs']}) | "
            f"{r['cpu_s']:.0f} | {left} | {fmt(r['accuracy'], '.4f')} |")
    return "\n".join(lines)


def span(values: list[float], spec: str) -> str:
    """`lo-hi` of the values (one value alone), or '-' for none."""
    if not values:
        return "-"
    lo, hi = format(min(values), spec), format(max(values), spec)
    return lo if lo == hi else f"{lo}-{hi}"


def summary(rows: list[dict[str, Any]]) -> str:
    """Per side and client count, the range over its completed runs."""
    lines = ["| side | clients | runs | wall s | first training s | s/round, rounds 2+ | "
             "peak PSS MB | CPU s | accuracy, last round |", "|---|---|---|---|---|---|---|---|---|"]
    keys = list(dict.fromkeys((r["side"], r["clients"]) for r in rows))
    for side, clients in keys:
        ok = [r for r in rows if (r["side"], r["clients"]) == (side, clients) and r["rc"] == 0]
        failed = sum(1 for r in rows if (r["side"], r["clients"]) == (side, clients)) - len(ok)
        runs = f"{len(ok)}" + (f" (+{failed} failed)" if failed else "")
        lines.append(
            f"| {side} | {clients} | {runs} | {span([r['wall_s'] for r in ok], '.1f')} | "
            f"{span([r['first_training_s'] for r in ok if r['first_training_s'] is not None], '.1f')}"
            f" | {span([r['later_round_mean_s'] for r in ok if r['later_round_mean_s']], '.2f')} | "
            f"{span([r['peak_pss_kb'] / 1000 for r in ok], ',.0f')} | "
            f"{span([r['cpu_s'] for r in ok], '.0f')} | "
            f"{span([r['accuracy'][-1] for r in ok if r['accuracy']], '.4f')} |")
    return "\n".join(lines)
