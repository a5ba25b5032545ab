"""Ports for the run's own listeners: below the kernel's ephemeral range, never one in use."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from launcher.network import ports


def test_a_free_port_is_below_the_range_of_outgoing_source_ports() -> None:
    # Prepare: 20 outgoing connections, as the run's SuperNodes make, hold source ports
    low, high = ports.ephemeral_range()
    if low - 1 - ports.LOWEST < 1_000:
        pytest.skip(f"this machine's ephemeral range ({low}-{high}) leaves no room below it")
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(32)
        clients = [socket.create_connection(server.getsockname()) for _ in range(20)]
        try:
            sources = {c.getsockname()[1] for c in clients}

            # Execute
            chosen = [ports.free_port() for _ in range(50)]
        finally:
            for c in clients:
                c.close()

    # Assert: every source port came from the ephemeral range, no chosen port did
    assert all(low <= s <= high for s in sources), (sources, low, high)
    assert all(ports.LOWEST <= p < low for p in chosen), (chosen, low)
    assert not set(chosen) & sources


def test_a_port_someone_listens_on_is_passed_over(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen(1)
        taken = held.getsockname()[1]
        offered = iter([taken, taken, 23_456])

        class Picks:
            def randint(self, _low: int, _high: int) -> int:
                return next(offered)

        monkeypatch.setattr(ports.random, "SystemRandom", Picks)

        assert ports.free_port() == 23_456


def test_without_room_below_the_range_the_os_picks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    narrow = tmp_path / "ip_local_port_range"
    narrow.write_text("10500\t65535\n")
    monkeypatch.setattr(ports, "EPHEMERAL", narrow)

    port = ports.free_port()

    assert port >= 10_500 and not ports.port_in_use(port)


def test_an_unreadable_range_means_linux_s_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ports, "EPHEMERAL", tmp_path / "absent")

    assert ports.ephemeral_range() == (32768, 60999)
