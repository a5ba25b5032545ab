"""The gateway's limits on what one caller may send: body and header size, connections, time.

Sized from what a real SuperNode sends (`python bench/fleet_message_sizes.py`, flwr 1.42): a
train reply of resnet18 (11.2 M parameters, 42.7 MiB as one float32 Array) is a push-messages
body of 1,105 B and 14 push-object bodies, the largest 5,243,059 B (Flower cuts an Array into
5 MiB chunks, FLWR_PRIVATE_MAX_ARRAY_CHUNK_SIZE); mobilenetv2's largest is the same 5 MiB chunk,
the tutorial CNN's 248,329 B. A signed Fleet call's request head is 739 B. Hence the defaults:
bodies up to 16 MiB (3x the largest), heads up to 16 KiB (20x), 1,024 connections (a quarter
of them from one address), a request head within 10 s and a whole request within 120 s (a 5 MiB
chunk at 45 KB/s). Each is settable (`fedlaunch --serve ... --gateway-max-body 64MiB`).

The size, connection and time checks run in the HTTP protocol, below the ASGI app, so an
oversized head or an idle connection costs the gateway at most one read buffer and never
reaches the SuperLink. They subclass uvicorn's `HttpToolsProtocol` (uvicorn 0.49, which Flower
installs with httptools), using its `connections`, `client`, `cycle`, `transport` and `loop`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import re
from collections import Counter
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar

from fedcore.errors import UsageError

if TYPE_CHECKING:  # imported where the gateway runs, not in the launcher that plans it
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

KIB, MIB, GIB = 1024, 1024**2, 1024**3
HEAD_TIMEOUT_S = 10.0  # at most; never longer than the request timeout


@dataclasses.dataclass(frozen=True)
class Limits:
    max_body: int = 16 * MIB
    max_header: int = 16 * KIB
    max_connections: int = 1024
    request_timeout: float = 120.0

    @property
    def per_address(self) -> int:
        """Connections one caller address may hold: a quarter, so one flood leaves room."""
        return max(1, self.max_connections // 4)

    @property
    def head_timeout(self) -> float:
        return min(HEAD_TIMEOUT_S, self.request_timeout)

    def argv(self) -> tuple[str, ...]:
        """As the gateway process's flags."""
        return ("--max-body", str(self.max_body), "--max-header", str(self.max_header),
                "--max-connections", str(self.max_connections),
                "--request-timeout", str(self.request_timeout))


DEFAULT_LIMITS = Limits()
_SIZE = re.compile(r"(\d+)\s*(B|KIB|MIB|GIB|K|M|G)?", re.IGNORECASE)
_UNITS = {"": 1, "B": 1, "K": KIB, "KIB": KIB, "M": MIB, "MIB": MIB, "G": GIB, "GIB": GIB}


def parse_size(text: str, flag: str, low: int, high: int) -> int:
    """`16MiB`, `64KiB`, `1G`, `4096` -> bytes, within [low, high]; else a one-line UsageError."""
    match = _SIZE.fullmatch(text.strip())
    if not match:
        raise UsageError(f"bad {flag} '{text}': give bytes, e.g. 16MiB, 64KiB or 4096")
    size = int(match.group(1)) * _UNITS[(match.group(2) or "").upper()]
    if not low <= size <= high:
        raise UsageError(f"bad {flag} '{text}': must be from {_human(low)} to {_human(high)}")
    return size


def parse_count(text: str, flag: str, low: int, high: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise UsageError(f"bad {flag} '{text}': give a whole number") from None
    if not low <= value <= high:
        raise UsageError(f"bad {flag} '{text}': must be from {low} to {high}")
    return value


def parse_seconds(text: str, flag: str, low: float, high: float) -> float:
    try:
        value = float(text)
    except ValueError:
        raise UsageError(f"bad {flag} '{text}': give seconds, e.g. 120") from None
    if not low <= value <= high:  # also refuses nan
        raise UsageError(f"bad {flag} '{text}': must be from {low:g} to {high:g} seconds")
    return value


def _human(size: int) -> str:
    for unit, scale in (("GiB", GIB), ("MiB", MIB), ("KiB", KIB)):
        if size >= scale and size % scale == 0:
            return f"{size // scale}{unit}"
    return f"{size}B"


# Bounds of each setting: a body must hold one 5 MiB chunk; a head one signed call.
BODY_RANGE = (64 * KIB, 4 * GIB)
HEADER_RANGE = (4 * KIB, 1 * MIB)
CONNECTIONS_RANGE = (8, 100_000)
TIMEOUT_RANGE = (1.0, 3600.0)


def limits_from(max_body: str | None, max_header: str | None, max_connections: str | None,
                request_timeout: str | None) -> Limits:
    """The limits the flags name (the defaults for those not given); UsageError on a bad one."""
    base = Limits()
    return Limits(
        max_body=parse_size(max_body, "--gateway-max-body", *BODY_RANGE)
        if max_body is not None else base.max_body,
        max_header=parse_size(max_header, "--gateway-max-header", *HEADER_RANGE)
        if max_header is not None else base.max_header,
        max_connections=parse_count(max_connections, "--gateway-max-connections",
                                    *CONNECTIONS_RANGE)
        if max_connections is not None else base.max_connections,
        request_timeout=parse_seconds(request_timeout, "--gateway-timeout", *TIMEOUT_RANGE)
        if request_timeout is not None else base.request_timeout,
    )


def _plain(status: bytes, text: bytes) -> bytes:
    return (b"HTTP/1.1 " + status + b"\r\ncontent-type: text/plain; charset=utf-8\r\n"
            b"content-length: " + str(len(text)).encode() + b"\r\nconnection: close\r\n\r\n" + text)


def guarded_protocol(limits: Limits, log: Callable[[str], None]) -> type[HttpToolsProtocol]:
    """uvicorn's HTTP protocol with `limits` enforced per connection (a class, as uvicorn wants)."""
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    class GuardedProtocol(HttpToolsProtocol):
        by_address: ClassVar[Counter[str]] = Counter()
        refused: ClassVar[Counter[str]] = Counter()  # logged at 1, 10, 100, ... per address

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._address = str(self.client[0]) if self.client else "?"
            self._in_head, self._head_bytes, self._refused = True, 0, False
            self._timer: asyncio.TimerHandle | None = None
            self.by_address[self._address] += 1
            if (len(self.connections) > limits.max_connections
                    or self.by_address[self._address] > limits.per_address):
                self.refused[self._address] += 1
                if _power_of_ten(self.refused[self._address]):
                    log(f"refused {self.refused[self._address]} connection(s) from {self._address}: "
                        f"over {limits.per_address} from one address or {limits.max_connections} "
                        "in all")
                transport.close()
                return
            self._arm(limits.head_timeout, "its request head")

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            self.by_address[self._address] -= 1
            if self.by_address[self._address] <= 0:
                del self.by_address[self._address]
            super().connection_lost(exc)

        def data_received(self, data: bytes) -> None:
            if self._refused:
                return
            super().data_received(data)
            if self._in_head and not self.transport.is_closing():
                self._head_bytes += len(data)  # a head still incomplete after this read
                if self._head_bytes > limits.max_header:
                    self._head_too_large()

        def _head_too_large(self) -> None:
            self._refused = True
            log(f"431 to {self._address}: request head over {limits.max_header} B")
            self._close_with(b"431 Request Header Fields Too Large",
                             b"fedlaunch: request head too large\n")

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._in_head, self._head_bytes = True, 0
            self._arm(limits.head_timeout, "its request head")

        def on_headers_complete(self) -> None:
            self._in_head = False
            head = len(self.url) + sum(len(k) + len(v) + 4 for k, v in self.headers)
            if head > limits.max_header:  # a whole head that came in one read
                self._head_too_large()
                return
            self._arm(limits.request_timeout, "its request")
            super().on_headers_complete()

        def on_body(self, body: bytes) -> None:
            if not self._refused:
                super().on_body(body)

        def on_message_complete(self) -> None:
            self._disarm()
            if not self._refused:
                super().on_message_complete()

        def _arm(self, seconds: float, what: str) -> None:
            self._disarm()
            self._timer = self.loop.call_later(seconds, self._too_slow, seconds, what)

        def _disarm(self) -> None:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None

        def _too_slow(self, seconds: float, what: str) -> None:
            self._timer = None
            if self.transport.is_closing():
                return
            if self._in_head and self._head_bytes == 0 and self.cycle is None:
                self.transport.close()  # an idle connection: nothing to answer
                return
            log(f"408 to {self._address}: {what} did not arrive within {seconds:g} s")
            if self.cycle is None or not self.cycle.response_started:
                self._close_with(b"408 Request Timeout", b"fedlaunch: request too slow\n")
            else:
                self.transport.close()

        def _close_with(self, status: bytes, text: bytes) -> None:
            self.transport.write(_plain(status, text))
            self.transport.close()

    return GuardedProtocol


def _power_of_ten(n: int) -> bool:
    return n > 0 and 10 ** (len(str(n)) - 1) == n


def content_length(headers: list[tuple[bytes, bytes]]) -> int | None:
    for key, value in headers:
        if key.lower() == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


def connection_named(headers: Any) -> frozenset[bytes]:
    """The header names a `Connection:` header lists (per-hop by RFC 9110 7.6.1: never forwarded)."""
    named: set[bytes] = set()
    for key, value in headers:
        if key.lower() == b"connection":
            named.update(t.strip().lower() for t in value.split(b",") if t.strip())
    return frozenset(named)
