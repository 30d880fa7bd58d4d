"""The gateway's WebSocket server (`websockets`, asyncio): routes, the web page, keys, origins, limits, TLS.

    python -m gateway --triton 127.0.0.1:8001 [--address 127.0.0.1 --port 8080] [--api-key-file F]
        [--allow-origin https://app.example.com] [--tls-cert C --tls-key K] [--max-connections-per-client 16]

`/v1/stream`: the native protocol (gateway.protocol); `/v1/realtime`: the OpenAI-Realtime-compatible
transcription mode (gateway.realtime); `/`: the live web page (gateway/static). Safe by default: loopback only;
with a key, every WebSocket needs it (header `mtasr-api-key` or `Authorization: Bearer`, or the subprotocol token
`mtasr-key.<key>` / `openai-insecure-api-key.<key>` since browsers cannot set headers); a browser's Origin must be
the gateway's own or on the allow-list; connections are capped in all and per client.
"""

from __future__ import annotations

import asyncio
import hmac
import http
import json
import logging
import mimetypes
import ssl
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from websockets.asyncio.server import ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from client.stream import Connection
from gateway.limits import Closed, SessionLimits
from gateway.native import serve_native
from gateway.protocol import (
    KEY_HEADERS,
    KEY_SUBPROTOCOL_PREFIXES,
    NATIVE_PATH,
    PAGE_PATH,
    REALTIME_PATH,
    REALTIME_SUBPROTOCOL,
    STATIC_PREFIX,
    SUBPROTOCOL,
    Close,
    ErrorCode,
    error_event,
)
from gateway.realtime import serve_realtime

log = logging.getLogger("gateway")
STATIC = Path(__file__).resolve().parent / "static"
LOOPBACK = "127.0.0.1"
HEALTH_PATH = "/healthz"
PAGE_HEADERS = {
    # the page talks only to this gateway; the microphone needs a secure context (https, or loopback)
    "Content-Security-Policy": "default-src 'self'; connect-src 'self' ws: wss:; style-src 'self'; "
                               "img-src 'self' data:; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


@dataclass
class GatewaySettings:
    triton: Connection = field(default_factory=lambda: Connection("127.0.0.1:8001"))
    address: str = LOOPBACK
    port: int = 8080
    api_key: str | None = None
    allowed_origins: tuple[str, ...] = ()  # besides the gateway's own origin; "*" allows any
    max_connections: int = 128
    max_connections_per_client: int = 16
    client_ip_header: str | None = None  # e.g. X-Real-IP, set by a trusted edge proxy in front
    tls: tuple[Path, Path] | None = None
    limits: SessionLimits = field(default_factory=SessionLimits)


class _WsTransport:
    def __init__(self, ws: ServerConnection) -> None:
        self.ws = ws

    async def recv(self) -> str | bytes:
        try:
            return await self.ws.recv()
        except ConnectionClosed:
            raise Closed from None

    async def send(self, text: str) -> None:
        try:
            await self.ws.send(text)
        except ConnectionClosed:
            raise Closed from None

    async def close(self, code: int, reason: str) -> None:
        await self.ws.close(int(code), reason[:120])


def offered_subprotocols(headers: Headers) -> list[str]:
    return [p.strip() for v in headers.get_all("Sec-WebSocket-Protocol") for p in v.split(",") if p.strip()]


def presented_keys(headers: Headers) -> list[str]:
    """Every key a handshake carries: the key headers and the subprotocol tokens."""
    keys = []
    for name in KEY_HEADERS:
        for value in headers.get_all(name):
            keys.append(value[7:].strip() if value.lower().startswith("bearer ") else value.strip())
    for proto in offered_subprotocols(headers):
        for prefix in KEY_SUBPROTOCOL_PREFIXES:
            if proto.startswith(prefix):
                keys.append(proto[len(prefix):])
    return keys


def origin_allowed(origin: str | None, host: str | None, allowed: tuple[str, ...]) -> bool:
    """Non-browser clients send no Origin; a browser's must be this gateway's own (same host:port) or allowed."""
    if origin is None:
        return True
    if "*" in allowed or origin in allowed:
        return True
    parts = urlsplit(origin)
    return parts.scheme in ("http", "https") and host is not None and parts.netloc.lower() == host.lower()


class Gateway:
    """The server's state: settings and the live connections per client."""

    def __init__(self, settings: GatewaySettings) -> None:
        self.settings = settings
        self.per_client: Counter[str] = Counter()
        self.total = 0
        self._static = {p.name: p for p in STATIC.iterdir() if p.is_file()} if STATIC.is_dir() else {}

    def client_of(self, connection: ServerConnection, request: Request | None = None) -> str:
        header = self.settings.client_ip_header
        req = request or connection.request
        if header and req is not None and (value := req.headers.get(header)):
            return value.split(",")[0].strip()
        peer = connection.remote_address
        return str(peer[0]) if peer else "?"

    def _response(self, status: http.HTTPStatus, body: bytes, content_type: str,
                  extra: dict[str, str] | None = None) -> Response:
        headers = Headers({"Content-Type": content_type, "Content-Length": str(len(body)), **(extra or {})})
        return Response(status.value, status.phrase, headers, body)

    def _text(self, status: http.HTTPStatus, text: str) -> Response:
        return self._response(status, (text + "\n").encode(), "text/plain; charset=utf-8")

    def process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        path = urlsplit(request.path).path
        if path in (NATIVE_PATH, REALTIME_PATH):
            return self._admit(connection, request)
        if path == HEALTH_PATH:
            return self._text(http.HTTPStatus.OK, "ok")
        if path == PAGE_PATH:
            return self._file("index.html")
        if path.startswith(STATIC_PREFIX):
            return self._file(path[len(STATIC_PREFIX):])
        return self._text(http.HTTPStatus.NOT_FOUND, "not found")

    def _file(self, name: str) -> Response:
        file = self._static.get(name)  # only the files shipped in gateway/static, by exact name
        if file is None:
            return self._text(http.HTTPStatus.NOT_FOUND, "not found")
        ctype = mimetypes.guess_type(file.name)[0] or "application/octet-stream"
        if ctype.startswith("text/") or ctype.endswith("javascript"):
            ctype += "; charset=utf-8"
        return self._response(http.HTTPStatus.OK, file.read_bytes(), ctype, PAGE_HEADERS)

    def _admit(self, connection: ServerConnection, request: Request) -> Response | None:
        s = self.settings
        if not origin_allowed(request.headers.get("Origin"), request.headers.get("Host"), s.allowed_origins):
            return self._text(http.HTTPStatus.FORBIDDEN, "origin not allowed")
        if s.api_key and not any(hmac.compare_digest(k.encode(), s.api_key.encode())
                                 for k in presented_keys(request.headers)):
            return self._text(http.HTTPStatus.UNAUTHORIZED, "missing or wrong API key")
        if self.total >= s.max_connections:
            return self._text(http.HTTPStatus.SERVICE_UNAVAILABLE, "gateway full: try again later")
        if self.per_client[self.client_of(connection, request)] >= s.max_connections_per_client:
            return self._text(http.HTTPStatus.TOO_MANY_REQUESTS, "too many connections from this client")
        return None

    def select_subprotocol(self, connection: ServerConnection, offered) -> str | None:
        want = REALTIME_SUBPROTOCOL if urlsplit(connection.request.path).path == REALTIME_PATH else SUBPROTOCOL
        return want if want in offered else None

    async def handler(self, ws: ServerConnection) -> None:
        client = self.client_of(ws)
        s = self.settings
        transport = _WsTransport(ws)
        if self.total >= s.max_connections or self.per_client[client] >= s.max_connections_per_client:
            # admitted in the handshake, but others took the places meanwhile
            try:
                await transport.send(json.dumps(error_event(ErrorCode.TOO_MANY_CONNECTIONS, "connection limit")))
            except Closed:
                pass
            await transport.close(Close.TRY_AGAIN, "too many connections")
            return
        self.total += 1
        self.per_client[client] += 1
        try:
            path = urlsplit(ws.request.path)
            if path.path == REALTIME_PATH:
                await serve_realtime(transport, s.triton, s.limits, path.query)
            else:
                await serve_native(transport, s.triton, s.limits)
        except Exception:  # noqa: BLE001 - one connection's bug must not take the server down
            log.exception("connection from %s failed", client)
            await transport.close(Close.UPSTREAM, "internal error")
        finally:
            self.total -= 1
            self.per_client[client] -= 1
            if self.per_client[client] <= 0:
                del self.per_client[client]

    def ssl_context(self) -> ssl.SSLContext | None:
        if self.settings.tls is None:
            return None
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_cert_chain(*map(str, self.settings.tls))
        return ctx

    def serve(self):
        """The `websockets` server (an async context manager); permessage-deflate is off (CPU, and compressing
        secrets beside attacker-chosen data is a known risk)."""
        s = self.settings
        return serve(self.handler, s.address, s.port, process_request=self.process_request,
                     select_subprotocol=self.select_subprotocol, compression=None,
                     max_size=2 * s.limits.max_frame_bytes, ssl=self.ssl_context(), server_header=None,
                     ping_interval=20, ping_timeout=20)


async def run(settings: GatewaySettings, ready: asyncio.Event | None = None) -> None:
    gateway = Gateway(settings)
    async with gateway.serve() as server:
        ports = sorted({sock.getsockname()[1] for sock in server.sockets})
        scheme = "https" if settings.tls else "http"
        print(f"gateway ready on {settings.address}:{','.join(map(str, ports))}: page {scheme}://"
              f"{settings.address}:{ports[0]}{PAGE_PATH}  native {NATIVE_PATH}  realtime {REALTIME_PATH}  triton "
              f"{settings.triton.url}; {'API key required' if settings.api_key else 'no API key'}", flush=True)
        if ready is not None:
            ready.set()
        await server.serve_forever()


mimetypes.add_type("text/javascript", ".js")
