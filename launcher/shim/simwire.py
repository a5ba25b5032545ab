"""The simulation engine's wire: frames of a JSON header and Flower protobufs over a Unix socket.

A frame is a count of parts, then each part's length and bytes. Part 0 is a JSON header
(never data); the others are Flower's own protobufs (a Message, a Context) as
`flwr.common.serde` writes them, so nothing received is unpickled.
"""

from __future__ import annotations

import json
import socket
import struct
from typing import Any

from launcher.shim import flwr_internals as fi

COUNT = struct.Struct("!I")
LENGTH = struct.Struct("!Q")
MAX_PARTS = 8


class Closed(ConnectionError):
    """The peer closed the socket (or died)."""


def send_frame(sock: socket.socket, header: dict[str, Any], *parts: bytes) -> None:
    blobs = [json.dumps(header, separators=(",", ":")).encode(), *parts]
    chunks = [COUNT.pack(len(blobs))]
    for blob in blobs:
        chunks.append(LENGTH.pack(len(blob)))
        chunks.append(blob)
    sock.sendall(b"".join(chunks))


def _exactly(sock: socket.socket, size: int) -> bytes:
    view = bytearray(size)
    got = 0
    while got < size:
        n = sock.recv_into(memoryview(view)[got:], size - got)
        if n == 0:
            raise Closed("peer closed the connection")
        got += n
    return bytes(view)


def recv_frame(sock: socket.socket) -> tuple[dict[str, Any], list[bytes]]:
    """The next frame's header and parts; Closed when the peer is gone."""
    (count,) = COUNT.unpack(_exactly(sock, COUNT.size))
    if not 1 <= count <= MAX_PARTS:
        raise Closed(f"a frame of {count} parts: not this wire")
    blobs = []
    for _ in range(count):
        (size,) = LENGTH.unpack(_exactly(sock, LENGTH.size))
        blobs.append(_exactly(sock, size))
    header = json.loads(blobs[0])
    if not isinstance(header, dict):
        raise Closed("a frame header that is not a JSON object")
    return header, blobs[1:]


def pack_message(message: Any) -> bytes:
    return bytes(fi.message_to_proto(message).SerializeToString())


def unpack_message(data: bytes) -> Any:
    proto = fi.ProtoMessage()
    proto.ParseFromString(data)
    return fi.message_from_proto(proto)


def pack_context(context: Any) -> bytes:
    return bytes(fi.context_to_proto(context).SerializeToString())


def unpack_context(data: bytes) -> Any:
    proto = fi.ProtoContext()
    proto.ParseFromString(data)
    return fi.context_from_proto(proto)
