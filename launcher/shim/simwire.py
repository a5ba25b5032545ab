"""The simulation engine's wire: frames of a JSON header and Flower protobufs over a Unix socket.

A frame is a count of parts, then each part's length and bytes. Part 0 is a JSON header
(never data, and a Context's ids and node config); the others are Flower Messages as protobufs,
written by `flwr.common.serde` (a node's Context.state travels as the content of one), so nothing
received is unpickled.
"""

from __future__ import annotations

import json
import socket
import struct
import time
from typing import Any

from launcher.shim import flwr_internals as fi

COUNT = struct.Struct("!I")
LENGTH = struct.Struct("!Q")
MAX_PARTS = 8


class Closed(ConnectionError):
    """The peer closed the socket (or died)."""


def send_frame(sock: socket.socket, header: dict[str, Any], *parts: bytes,
               deadline: float | None = None) -> None:
    """Send one frame; TimeoutError when the peer has not taken it all by `deadline` (a peer
    that does not read fills the socket's buffer)."""
    blobs = [json.dumps(header, separators=(",", ":")).encode(), *parts]
    chunks = [COUNT.pack(len(blobs))]
    for blob in blobs:
        chunks.append(LENGTH.pack(len(blob)))
        chunks.append(blob)
    if deadline is None:
        sock.sendall(b"".join(chunks))
        return
    sock.settimeout(max(1e-3, deadline - time.monotonic()))  # for the whole of sendall
    try:
        sock.sendall(b"".join(chunks))
    finally:
        sock.settimeout(None)


def _exactly(sock: socket.socket, size: int, deadline: float | None = None) -> bytes:
    view = bytearray(size)
    got = 0
    while got < size:
        if deadline is not None:  # TimeoutError (an OSError) once the deadline has passed
            sock.settimeout(max(1e-3, deadline - time.monotonic()))
        n = sock.recv_into(memoryview(view)[got:], size - got)
        if n == 0:
            raise Closed("peer closed the connection")
        got += n
    return bytes(view)


def recv_frame(sock: socket.socket,
               deadline: float | None = None) -> tuple[dict[str, Any], list[bytes]]:
    """The next frame's header and parts; Closed when the peer is gone, TimeoutError when the
    whole frame has not come by `deadline` (time.monotonic())."""
    try:
        (count,) = COUNT.unpack(_exactly(sock, COUNT.size, deadline))
        if not 1 <= count <= MAX_PARTS:
            raise Closed(f"a frame of {count} parts: not this wire")
        blobs = []
        for _ in range(count):
            (size,) = LENGTH.unpack(_exactly(sock, LENGTH.size, deadline))
            blobs.append(_exactly(sock, size, deadline))
    finally:
        if deadline is not None:
            sock.settimeout(None)
    header = json.loads(blobs[0])
    if not isinstance(header, dict):
        raise Closed("a frame header that is not a JSON object")
    return header, blobs[1:]


def pack_message(message: Any) -> bytes:
    return bytes(fi.message_to_proto(message).SerializeToString())


def unpack_message(data: bytes) -> Any:
    return fi.message_from_proto(fi.ProtoMessage.FromString(data))


def context_header(context: Any) -> dict[str, Any]:
    """A Context but its state: ids and the node config (Flower's simulation gives the node's
    partition-id and num-partitions), as JSON."""
    return {"run_id": int(context.run_id), "node_id": int(context.node_id),
            "node_config": dict(context.node_config)}


def pack_state(context: Any, task: Any) -> bytes:
    """The node's Context.state, carried as a Message (a reply to the task's message, Flower's
    public API) so that it crosses as a Flower protobuf too."""
    from flwr.app import Message

    return pack_message(Message(context.state, reply_to=task))


def with_state(header: dict[str, Any], state: bytes, run_config: dict[str, Any]) -> Any:
    """The Context made of `header` (context_header's), a packed state and `run_config`."""
    from flwr.app import Context

    return Context(run_id=int(header["run_id"]), node_id=int(header["node_id"]),
                   node_config=dict(header["node_config"]), state=unpack_message(state).content,
                   run_config=dict(run_config))
