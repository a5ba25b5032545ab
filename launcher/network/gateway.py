"""The only door of a served SuperLink: the Fleet API routes a SuperNode uses, forwarded to loopback.

Flower 1.42 serves its Control API (start a run with an app bundle, stop runs, register node keys),
its Runtime API and its Fleet API on one HTTP port. With `--serve` that port stays on 127.0.0.1 and
this gateway, a plain ASGI app on uvicorn forwarding with httpx (both come with Flower), faces the
network: POSTs to the routes of `flwr/supernode/fleet_http_client.py` pass through intact (body,
content type, the node signature headers, streamed responses); everything else gets 403 (Control,
Runtime) or 404, and never reaches the SuperLink. What one caller may send is capped
(launcher.network.gateway_limits: body 413, head 431, connections, time 408); a body is counted
as it streams and cut at the cap, and one that declares a larger Content-Length is refused
before anything is forwarded.

`python -m launcher.network.gateway --listen HOST:PORT --upstream 127.0.0.1:PORT
[--certfile PEM --keyfile KEY] [--upstream-ca CA] [--max-body B] [--max-header B]
[--max-connections N] [--request-timeout S]`
"""

from __future__ import annotations

import argparse
import ssl
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from typing import Any

from launcher.network.gateway_limits import (
    DEFAULT_LIMITS,
    Limits,
    connection_named,
    content_length,
    guarded_protocol,
)

# What a SuperNode calls (flwr/supernode/fleet_http_client.py; flwr/superlink/routers/fleet).
FLEET_ROUTES = frozenset(f"/v1/fleet/{name}" for name in (
    "register-node", "activate-node", "deactivate-node", "unregister-node",
    "send-node-heartbeat", "pull-messages", "push-messages", "get-run", "get-fab",
    "push-object", "pull-object", "confirm-message-received",
))
# Per connection, never forwarded (RFC 9110 7.6.1), plus what the gateway itself sets.
HOP_BY_HOP = frozenset({
    b"connection", b"keep-alive", b"proxy-authenticate", b"proxy-authorization", b"te",
    b"trailer", b"transfer-encoding", b"upgrade", b"proxy-connection", b"host",
    b"content-length", b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host", b"forwarded",
})
FORBIDDEN = (b"fedlaunch: this address serves the Fleet API only (SuperNodes); the Control and "
             b"Runtime APIs are on the server's loopback interface\n")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


class ClientGone(Exception):
    """The caller disconnected while its request body was being forwarded."""


class BodyTooLarge(Exception):
    """The request body grew past the cap while it was being forwarded."""


class FleetGateway:
    """ASGI app: forward allowed Fleet calls to `upstream` (http[s]://127.0.0.1:PORT), refuse the rest."""

    def __init__(self, upstream: str, verify: ssl.SSLContext | bool = True,
                 log: Callable[[str], None] = lambda _: None, limits: Limits = DEFAULT_LIMITS) -> None:
        self.upstream = upstream.rstrip("/")
        self.verify = verify
        self.log = log
        self.limits = limits
        self.client: Any = None  # httpx.AsyncClient, made at startup in the server's event loop

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
        elif scope["type"] == "http":
            await self._http(scope, receive, send)
        elif scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await self.start()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.close()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def start(self) -> None:
        import httpx

        # trust_env=False: a proxy from the environment must never see loopback traffic.
        self.client = httpx.AsyncClient(
            verify=self.verify, trust_env=False, follow_redirects=False,
            timeout=httpx.Timeout(30.0, read=None, write=None, pool=None),
            limits=httpx.Limits(max_connections=None, max_keepalive_connections=64))

    async def close(self) -> None:
        if self.client is not None:
            await self.client.aclose()
            self.client = None

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        path, method = scope["path"], scope["method"]
        peer = scope.get("client") or ("?", 0)
        if path not in FLEET_ROUTES or method != "POST":
            status = 403 if path.startswith("/v1/") or path in ("/docs", "/openapi.json") else 404
            self.log(f"refused {method} {path} from {peer[0]} ({status})")
            await _respond(send, status, FORBIDDEN if status == 403 else b"not found\n")
            return
        await self._forward(path, scope, receive, send, str(peer[0]))

    async def _forward(self, path: str, scope: Scope, receive: Receive, send: Send,
                       peer: str) -> None:
        import httpx

        cap = self.limits.max_body
        length = content_length(scope["headers"])
        if length is not None and length > cap:
            self.log(f"413 to {peer} for {path}: Content-Length {length} over {cap} B")
            await _respond(send, 413, b"fedlaunch: request body too large\n")
            return
        drop = HOP_BY_HOP | connection_named(scope["headers"])
        headers = [(k, v) for k, v in scope["headers"] if k.lower() not in drop]
        if length is not None:
            headers.append((b"content-length", str(length).encode()))
        headers += [(b"x-forwarded-for", peer.encode()),
                    (b"x-forwarded-proto", scope.get("scheme", "http").encode())]
        request = self.client.build_request("POST", self.upstream + path, headers=headers,
                                            content=_body(receive, cap))
        try:
            response = await self.client.send(request, stream=True)
        except ClientGone:
            return
        except BodyTooLarge:
            self.log(f"413 to {peer} for {path}: body over {cap} B (cut as it streamed)")
            await _respond(send, 413, b"fedlaunch: request body too large\n")
            return
        except httpx.HTTPError as exc:
            self.log(f"SuperLink unreachable for {path}: {type(exc).__name__}: {exc}")
            await _respond(send, 502, b"fedlaunch: the SuperLink behind this gateway did not answer\n")
            return
        drop = (HOP_BY_HOP - {b"content-length"}) | connection_named(response.headers.raw)
        try:
            await send({"type": "http.response.start", "status": response.status_code,
                        "headers": [(k, v) for k, v in response.headers.raw
                                    if k.lower() not in drop]})
            async for chunk in response.aiter_raw():
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            await response.aclose()


async def _body(receive: Receive, cap: int) -> AsyncIterator[bytes]:
    """The request body as it arrives; BodyTooLarge before the chunk that would pass `cap`."""
    seen = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone
        if chunk := message.get("body", b""):
            seen += len(chunk)
            if seen > cap:
                raise BodyTooLarge
            yield chunk
        if not message.get("more_body", False):
            return


async def _respond(send: Send, status: int, body: bytes) -> None:
    """The gateway's own answer; the connection closes after it (uvicorn reads `connection:
    close`), so the rest of a refused body is never read."""
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"text/plain; charset=utf-8"),
                            (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body, "more_body": False})


def split_address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host.removeprefix("[").removesuffix("]"), int(port)


def upstream_tls(ca: str | None) -> ssl.SSLContext | bool:
    """Plain HTTP to an --insecure SuperLink; else trust only the run's CA (127.0.0.1 is in it)."""
    return ssl.create_default_context(cafile=ca) if ca else False


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m launcher.network.gateway")
    parser.add_argument("--listen", required=True, help="HOST:PORT the SuperNodes reach")
    parser.add_argument("--upstream", required=True, help="the SuperLink's 127.0.0.1:PORT")
    parser.add_argument("--certfile")
    parser.add_argument("--keyfile")
    parser.add_argument("--upstream-ca", help="CA of the SuperLink's certificate (TLS upstream)")
    defaults = Limits()
    parser.add_argument("--max-body", type=int, default=defaults.max_body, help="bytes (413)")
    parser.add_argument("--max-header", type=int, default=defaults.max_header, help="bytes (431)")
    parser.add_argument("--max-connections", type=int, default=defaults.max_connections)
    parser.add_argument("--request-timeout", type=float, default=defaults.request_timeout,
                        help="seconds for a whole request (408)")
    args = parser.parse_args(argv)
    limits = Limits(args.max_body, args.max_header, args.max_connections, args.request_timeout)
    import uvicorn

    host, port = split_address(args.listen)
    scheme = "https" if args.upstream_ca else "http"

    def log(text: str) -> None:
        print(f"gateway: {text}", file=sys.stderr, flush=True)

    app = FleetGateway(f"{scheme}://{args.upstream}", upstream_tls(args.upstream_ca), log, limits)
    log(f"{'TLS' if args.certfile else 'plain HTTP'} on {args.listen}: forwarding the "
        f"{len(FLEET_ROUTES)} Fleet API routes to {scheme}://{args.upstream}; refusing the rest; "
        f"bodies up to {limits.max_body} B, heads {limits.max_header} B, "
        f"{limits.max_connections} connections ({limits.per_address} per address), "
        f"requests within {limits.request_timeout:g} s")
    uvicorn.run(app, host=host, port=port, ssl_certfile=args.certfile, ssl_keyfile=args.keyfile,
                http=guarded_protocol(limits, log), backlog=limits.max_connections,
                lifespan="on", access_log=False, proxy_headers=False, server_header=False,
                log_level="warning", timeout_graceful_shutdown=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
