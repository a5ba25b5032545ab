"""Which clients' nodes the ServerApp should stop waiting for, and when to wait for them again.

When a client process dies, its node ids (the one its SuperNode recorded at sign-in and the one
in its last progress file) go to the run's departed-nodes file, and the ServerApp drops the
replies it was waiting for from them. A restarted client normally signs in under a new id; an
authenticated one signs in under the same id (the id belongs to its key), so when its node id
file is rewritten after the death with a departed id, that id is marked back (`+ID`).
"""

from __future__ import annotations

import json
import time

from fedcore.rundir import RunDir
from launcher.planning.plan import node_id_file


class Departures:
    """The departed-nodes file's writer: `died(client)` when a client process dies, `poll()` in
    the supervisor's loop to notice it signing in again."""

    def __init__(self, rundir: RunDir) -> None:
        self.rundir = rundir
        self.waiting: dict[int, tuple[set[int], float]] = {}  # client: its node ids, death time

    def died(self, client: int) -> None:
        ids: set[int] = set()
        try:
            ids.add(int(node_id_file(self.rundir.path, client).read_text()))
        except (OSError, ValueError):
            pass
        try:
            path = self.rundir.progress_dir / f"client-{client}.json"
            ids.add(int(json.loads(path.read_text()).get("node_id", 0)))
        except (OSError, ValueError, AttributeError):
            pass
        ids.discard(0)
        for node_id in sorted(ids):
            self.rundir.add_departed_node(node_id)
        self.waiting[client] = (ids, time.time())

    def poll(self) -> None:
        """Mark back each departed node id a restarted client signed in with again."""
        for client, (ids, died) in list(self.waiting.items()):
            path = node_id_file(self.rundir.path, client)
            try:
                if path.stat().st_mtime < died:
                    continue
                node_id = int(path.read_text())
            except (OSError, ValueError):
                continue
            del self.waiting[client]
            if node_id in ids:
                self.rundir.add_returned_node(node_id)
