"""What one caller may send through the --serve gateway: body (413), head (431), time (408),
connections, and the per-hop headers it names; on the ASGI app, then against a real SuperLink."""

from __future__ import annotations

import asyncio
import errno
import importlib
import inspect
import socket
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from fedcore.errors import UsageError
from launcher.network.gateway import FleetGateway
from launcher.network.gateway_limits import MIB, Limits, limits_from, parse_size
from tests.test_gateway import Stack

GIB = 1024**3


# ---- flags ----------------------------------------------------------------------------------

def test_sizes_read_as_people_write_them() -> None:
    assert parse_size("16MiB", "--x", 1, 2**40) == 16 * MIB
    assert parse_size("64k", "--x", 1, 2**40) == 64 * 1024
    assert parse_size("4096", "--x", 1, 2**40) == 4096
    assert limits_from(None, None, None, None) == Limits()


@pytest.mark.parametrize(("values", "message"), [
    (("1TB", None, None, None), "bad --gateway-max-body '1TB': give bytes"),
    (("12", None, None, None), "bad --gateway-max-body '12': must be from 64KiB to 4GiB"),
    ((None, "1GiB", None, None), "bad --gateway-max-header '1GiB': must be from 4KiB to 1MiB"),
    ((None, None, "many", None), "bad --gateway-max-connections 'many': give a whole number"),
    ((None, None, "3", None), "must be from 8 to 100000"),
    ((None, None, None, "nan"), "bad --gateway-timeout 'nan': must be from 1 to 3600 seconds"),
])
def test_bad_limits_are_one_line_errors(values: tuple[str | None, ...], message: str) -> None:
    with pytest.raises(UsageError) as error:
        limits_from(*values)
    assert message in str(error.value) and "\n" not in str(error.value)


def test_the_flags_reach_the_gateway_and_go_with_serve_only(tmp_path: Path) -> None:
    from tests.runs import run_cli

    served = run_cli(["--serve", "127.0.0.1:9999", "--clients", "2", "--dataset", "synthetic",
                      "--gateway-max-body", "64MiB", "--gateway-timeout", "30", "--dry-run",
                      "--out", str(tmp_path / "a")], cwd=tmp_path)
    alone = run_cli(["--clients", "2", "--gateway-timeout", "30", "--dry-run",
                     "--out", str(tmp_path / "b")], cwd=tmp_path)
    bad = run_cli(["--serve", "127.0.0.1:9999", "--clients", "2", "--gateway-max-body", "1TB",
                   "--dry-run", "--out", str(tmp_path / "c")], cwd=tmp_path)

    assert served.returncode == 0, served.stderr
    assert "--max-body 67108864 --max-header 16384 --max-connections 1024 --request-timeout 30.0" \
        in served.stdout
    assert (alone.returncode, alone.stderr) == (
        2, "fedlaunch: --gateway-timeout: only with --serve (the limits of its gateway)\n")
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "Traceback" not in bad.stderr


# ---- on the ASGI app, with a recording upstream ----------------------------------------------

async def through(app: FleetGateway, headers: list[tuple[bytes, bytes]],
                  chunks: list[bytes]) -> tuple[int, list[httpx.Request], int]:
    """POST `chunks` to push-object; (status, the requests the upstream got, bytes it read)."""
    seen: list[httpx.Request] = []
    read = 0

    class Upstream(httpx.AsyncBaseTransport):
        async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
            nonlocal read
            seen.append(request)
            async for part in request.stream:  # type: ignore[union-attr]
                read += len(part)
            return httpx.Response(200, headers={"connection": "x-secret", "x-secret": "1"},
                                  stream=httpx.ByteStream(b"ok"))

    app.client = httpx.AsyncClient(transport=Upstream())
    messages = [{"type": "http.request", "body": c, "more_body": i < len(chunks) - 1}
                for i, c in enumerate(chunks)]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def send(message: Any) -> None:
        sent.append(dict(message))

    scope = {"type": "http", "method": "POST", "path": "/v1/fleet/push-object", "headers": headers,
             "scheme": "http", "client": ("10.9.9.9", 5000)}
    await app(scope, receive, send)
    await app.client.aclose()
    start = sent[0]
    if start["status"] == 200:
        assert (b"x-secret", b"1") not in start["headers"]  # named in the SuperLink's Connection:
    return start["status"], seen, read


def gateway(log: list[str]) -> FleetGateway:
    return FleetGateway("http://127.0.0.1:9", log=log.append, limits=Limits(max_body=1 * MIB))


def test_a_body_declared_over_the_cap_is_refused_before_anything_is_forwarded() -> None:
    log: list[str] = []
    status, seen, _ = asyncio.run(through(gateway(log), [(b"content-length", str(GIB).encode())],
                                          [b"x" * 1000]))
    assert status == 413 and seen == []
    assert "Content-Length 1073741824 over 1048576 B" in log[0]


def test_a_streamed_body_is_cut_at_the_cap_as_it_arrives() -> None:
    log: list[str] = []
    chunks = [b"x" * 65536] * 40  # 2.5 MiB in 64 KiB pieces, no Content-Length (chunked)
    status, _, read = asyncio.run(through(gateway(log), [], chunks))
    assert status == 413 and read <= 1 * MIB
    assert "body over 1048576 B (cut as it streamed)" in log[0]


def test_headers_named_in_connection_are_not_forwarded() -> None:
    headers = [(b"connection", b"keep-alive, X-Node-Trace , x-other"), (b"x-node-trace", b"a"),
               (b"x-other", b"b"), (b"x-kept", b"c"), (b"content-length", b"2")]
    status, seen, _ = asyncio.run(through(gateway([]), headers, [b"ab"]))
    assert status == 200
    forwarded = {k.lower() for k in seen[0].headers}
    assert "x-kept" in forwarded and "content-length" in forwarded
    assert not forwarded & {"x-node-trace", "x-other", "keep-alive"}
    assert seen[0].headers.get("connection") == "keep-alive"  # the gateway's own hop (httpx's)


# ---- against a real SuperLink ----------------------------------------------------------------

def raw(port: int, head: bytes, timeout: float = 30.0) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    sock.sendall(head)
    return sock


def answer(sock: socket.socket) -> bytes:
    """What the gateway sent back until it closed (or the socket's timeout)."""
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except (ConnectionResetError, TimeoutError):
        pass
    return data


def stream_gib(sock: socket.socket) -> int:
    """Send 1 GiB as chunked pieces of 1 MiB (one buffer, reused) until the gateway stops it."""
    piece = b"%x\r\n" % MIB + b"\0" * MIB + b"\r\n"
    sent = 0
    try:
        while sent < GIB:
            sock.sendall(piece)
            sent += MIB
        sock.sendall(b"0\r\n\r\n")
    except OSError:  # the gateway answered 413 and closed
        pass
    return sent


@pytest.mark.e2e
@pytest.mark.timeout(180)
def test_a_gib_body_gets_413_and_the_superlink_stays_flat(tmp_path: Path) -> None:
    # Prepare
    stack = Stack(tmp_path, None, gateway_args=("--request-timeout", "3"))
    try:
        superlink = psutil.Process(stack.procs[0].pid)
        before = superlink.memory_info().rss
        post = b"POST /v1/fleet/push-object HTTP/1.1\r\nhost: x\r\ncontent-type: application/protobuf\r\n"

        # Execute: 1 GiB streamed; 1 GiB declared; 64 KiB of headers; a half-sent request; idle
        streamed = raw(stack.gate_port, post + b"transfer-encoding: chunked\r\n\r\n")
        sent: dict[str, int] = {}
        sender = threading.Thread(target=lambda: sent.setdefault("bytes", stream_gib(streamed)))
        sender.start()
        cut = answer(streamed)
        sender.join(60)
        declared = answer(raw(stack.gate_port, post + b"content-length: %d\r\n\r\n" % GIB))
        big_head = answer(raw(stack.gate_port, post + b"x-pad: " + b"a" * 65536 + b"\r\n\r\n"))
        started = time.monotonic()
        half = answer(raw(stack.gate_port, post + b"content-length: 100\r\n\r\n" + b"x" * 10))
        half_after = time.monotonic() - started
        started = time.monotonic()
        idle = answer(raw(stack.gate_port, b""))
        idle_after = time.monotonic() - started
        time.sleep(1)
        after = superlink.memory_info().rss
        log = (tmp_path / "gateway.log").read_text()
    finally:
        stack.close()

    # Assert
    assert cut.startswith(b"HTTP/1.1 413"), cut[:200]
    assert sent["bytes"] < GIB / 4, sent  # stopped long before the whole GiB
    assert declared.startswith(b"HTTP/1.1 413"), declared[:200]
    assert big_head.startswith(b"HTTP/1.1 431"), big_head[:200]
    assert half.startswith(b"HTTP/1.1 408") and 2.5 < half_after < 15, (half[:200], half_after)
    assert idle == b"" and 2.5 < idle_after < 15, idle_after  # closed, nothing to answer
    assert after - before < 40 * MIB, f"SuperLink RSS {before / MIB:.0f} -> {after / MIB:.0f} MiB"
    assert "body over 16777216 B (cut as it streamed)" in log and "431 to 127.0.0.1" in log


class Flood:
    """Up to `count` idle connections from 127.0.0.2 to the gateway, reopened as it closes them,
    until stopped (or `limit_s`); counts how many it opened and how many it had to reopen.
    Connects do not wait: those the gateway has not accepted yet keep knocking (SYN retries)."""

    def __init__(self, port: int, count: int, limit_s: float) -> None:
        self.port, self.count, self.limit_s = port, count, limit_s
        self.reopened = 0
        self.opened = 0
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _open(self) -> socket.socket | None:
        sock = socket.socket()
        try:
            sock.bind(("127.0.0.2", 0))
            sock.setblocking(False)
            if sock.connect_ex(("127.0.0.1", self.port)) not in (0, errno.EINPROGRESS):
                raise OSError("not connected")
            self.opened += 1
            return sock
        except OSError:
            sock.close()
            return None

    def _run(self) -> None:
        socks: list[socket.socket] = []
        deadline = time.monotonic() + self.limit_s
        while not self.stopping.is_set() and time.monotonic() < deadline:
            alive = []
            for sock in socks:
                try:
                    closed = sock.recv(1) == b""
                except BlockingIOError:
                    closed = False
                except OSError:
                    closed = True
                if closed:
                    sock.close()
                    self.reopened += 1
                else:
                    alive.append(sock)
            socks = alive
            while len(socks) < self.count and (opened := self._open()) is not None:
                socks.append(opened)
            time.sleep(0.5)
        for sock in socks:
            sock.close()

    def stop(self) -> None:
        self.stopping.set()
        self.thread.join(10)


# File descriptors the flooded gateway may open beyond those it holds at start: room for the
# capped flood (16) and one client with its upstream calls; fewer than its accept queue (64), so
# that, uncapped, the idle connections it drops every 10 s are replaced from the queue at once.
GATEWAY_ROOM = 40
FAILED_CALL = "Connection attempt failed"  # Flower's warning for a call of a SuperNode it retries


def lower_gateway_fds(serve_pid: int, room: int) -> int:
    """Set the serve role's gateway's RLIMIT_NOFILE (as `prlimit` does) to `room` more than the
    file descriptors it has open; the new limit."""
    gateways = [p for p in psutil.Process(serve_pid).children(recursive=True)
                if "launcher.network.gateway" in p.cmdline()]
    assert len(gateways) == 1, gateways
    limit = int(gateways[0].num_fds()) + room
    gateways[0].rlimit(psutil.RLIMIT_NOFILE, (limit, limit))
    return limit


def answers(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


def gave_up(role: Any) -> str | None:
    """Why a role ended before the run it joined did (its exit code), or None while it runs."""
    code = role.proc.poll()
    return None if code in (None, 0) else f"{role.name} exited with code {code}"


@pytest.mark.e2e
@pytest.mark.slow  # a served run, a joined client and a flood: 30-40 s
@pytest.mark.timeout(420)
def test_a_flood_of_idle_connections_does_not_stop_a_joined_client(tmp_path: Path) -> None:
    from tests.runs import wait_until
    from tests.test_remote import Role, free_port, rounds_of

    # Prepare: a served run of 1 round for 1 remote client whose gateway may open only 40 more
    # file descriptors (so that, uncapped, the flood takes them all, each for the 10 s the
    # gateway waits for a request head); 300 idle connections at it
    port = free_port()
    address = f"127.0.0.1:{port}"
    limits = {"max_connections": 64, "request_timeout": 30.0}  # 16 per address
    serve = Role("serve", {"run_dir": str(tmp_path / "serve"), "clients": 1, "rounds": 1,
                           "address": address, "limits": limits})
    join: Role | None = None
    flood: Flood | None = None
    try:
        wait_until(lambda: answers(port), 120, "the gateway", interval=0.5)
        lower_gateway_fds(serve.proc.pid, GATEWAY_ROOM)
        flood = Flood(port, 300, limit_s=240)
        wait_until(lambda: flood is not None and flood.opened >= flood.count, 60, "the flood")

        # Execute: a real client joins through the flooded gateway
        join = Role("join", {"run_dir": str(tmp_path / "join"), "clients": 1, "ids": [0, 1],
                             "address": address, "insecure": True})
        wait_until(lambda: serve.proc.poll() is not None, 300, "the served round",
                   abort=lambda: gave_up(join), detail=lambda: join.out.read_text()[-2000:])
        served = serve.finish(30)
    finally:
        if flood is not None:
            flood.stop()
        for role in (join, serve):
            if role is not None:
                role.stop()

    # Assert: the round completed with the joined client's reply, and not one of the client's
    # calls failed until it had its first message (uncapped, some are dropped, or all for 60 s
    # and its SuperNode gives up); the flood was held off
    assert served["exit_code"] == 0, serve.out.read_text()[-3000:]
    assert [(r["round"], r["replies"]) for r in rounds_of(tmp_path / "serve")] == [(1, 1)]
    client = (tmp_path / "join" / "logs" / "client-0.log").read_text()
    assert FAILED_CALL in inspect.getsource(importlib.import_module("flwr.supercore.retry.http_retry"))
    assert "Received successfully" in client
    assert FAILED_CALL not in client.split("Received successfully")[0], client[-3000:]
    assert flood.reopened >= 300 - 16, flood.reopened
    gateway_log = (tmp_path / "serve" / "logs" / "gateway.log").read_text()
    assert "connection(s) from 127.0.0.2: over 16 from one address" in gateway_log
