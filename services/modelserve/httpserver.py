"""A small HTTP/1.1 server for the V2 REST face: asyncio protocol + httptools' parser.

Chosen for speed over uvicorn and aiohttp (figures in ``docs/architecture.md`` and
``bench/http_bench.py``): a request is parsed by httptools (llhttp, C) straight into an
``HttpRequest``, one handler call answers it, and the reply is written as one buffer. No ASGI
scope dicts, no middleware, no per-request object graph. What it does and does not do:

- keep-alive and pipelining (answers in request order, one handler at a time per connection);
  a connection idle for ``idle_timeout_s`` (300 s) is closed, and a request line plus headers
  over 64 KiB is refused 400 (nothing grows without bound on a slow or hostile client);
- ``Content-Length`` and chunked request bodies (httptools decodes chunks); bodies over
  ``max_body_bytes`` are refused 413 before they are buffered;
- graceful stop: ``close(grace)`` stops accepting, closes idle connections at once, lets
  requests in progress finish for up to ``grace`` seconds, then closes the rest;
- no TLS, no HTTP/2, no compression (clients that ask get identity).

``start_aiohttp_server`` (aiohttp's low-level server) and ``start_uvicorn_server`` (a minimal
ASGI app on uvicorn + httptools) serve the same handler: the candidates the benchmark compares
against (``http_server = aiohttp | uvicorn``); each is imported only when chosen.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any, Protocol, cast

import httptools

log = logging.getLogger(__name__)


@dataclass(slots=True)
class HttpRequest:
    method: str
    path: str  # percent-decoding is the handler's business
    query: str
    headers: dict[str, str]  # names lower-cased; a repeated header keeps its last value
    body: bytes


@dataclass(slots=True)
class HttpResponse:
    status: int
    body: bytes = b""
    content_type: str = "application/json"
    headers: list[tuple[str, str]] = field(default_factory=list)


Handler = Callable[[HttpRequest], Awaitable[HttpResponse]]


class HttpListener(Protocol):
    """What the Runtime needs of a started HTTP server."""

    @property
    def port(self) -> int: ...

    async def close(self, grace: float) -> None: ...


_REASONS = {s.value: s.phrase for s in HTTPStatus}
MAX_HEADER_BYTES = 64 << 10  # request line + headers; more is refused 400
IDLE_TIMEOUT_S = 300.0  # a keep-alive connection with nothing in flight is closed after this


def _head(status: int, length: int, content_type: str, extra: list[tuple[str, str]]) -> bytes:
    lines = [
        f"HTTP/1.1 {status} {_REASONS.get(status, 'Unknown')}",
        f"Content-Length: {length}",
    ]
    if length or content_type != "application/json":
        lines.append(f"Content-Type: {content_type}")
    lines += [f"{k}: {v}" for k, v in extra]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def _error(status: int, message: str) -> HttpResponse:
    # The same body Triton's EVBufferAddErrorJson writes.
    return HttpResponse(status, json.dumps({"error": message}, separators=(",", ":")).encode())


class _Connection(asyncio.Protocol):
    def __init__(self, server: HttpServer) -> None:
        self._server = server
        self._parser = httptools.HttpRequestParser(self)
        self._transport: asyncio.Transport | None = None
        self._url = b""
        self._headers: dict[str, str] = {}
        self._body: list[bytes] = []
        self._size = 0
        self._too_large = False
        self._queue: deque[tuple[HttpRequest | HttpResponse, bool]] = deque()
        self._worker: asyncio.Task[None] | None = None
        self._closing = False
        self._header_bytes = 0
        self.last_active = time.monotonic()

    # --- asyncio.Protocol ---
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but behave as one.
        self._transport = cast(asyncio.Transport, transport)
        self._server.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self._server.connections.discard(self)
        self._transport = None
        if self._worker is not None and not self._worker.done():
            self._worker.cancel()  # the caller left: its request stops (and its hops)

    def data_received(self, data: bytes) -> None:
        self.last_active = time.monotonic()
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._reply_and_close(_error(400, "protocol upgrade is not supported"))
        except httptools.HttpParserError as exc:
            self._reply_and_close(_error(400, f"malformed HTTP request: {exc}"))

    # --- httptools callbacks ---
    def on_message_begin(self) -> None:
        self._url = b""
        self._headers = {}
        self._body = []
        self._size = 0
        self._too_large = False
        self._header_bytes = 0

    def on_url(self, url: bytes) -> None:
        self._url += url
        self._count_header_bytes(len(url))

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count_header_bytes(len(name) + len(value))
        self._headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        # curl and others wait (1 s for curl) for this before sending a body over 1 KiB.
        if self._headers.get("expect", "").lower() == "100-continue" and self._transport:
            self._transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def _count_header_bytes(self, n: int) -> None:
        self._header_bytes += n
        if self._header_bytes > MAX_HEADER_BYTES:
            # Raised inside feed_data: data_received answers it and closes the connection.
            raise httptools.HttpParserError(
                f"request line and headers over {MAX_HEADER_BYTES} bytes"
            )

    def on_body(self, body: bytes) -> None:
        self._size += len(body)
        if self._size > self._server.max_body_bytes:
            self._too_large = True
            self._body = []
        elif not self._too_large:
            self._body.append(body)

    def on_message_complete(self) -> None:
        keep_alive = bool(self._parser.should_keep_alive())
        item: HttpRequest | HttpResponse
        if self._too_large:
            item = _error(
                413, f"request body over {self._server.max_body_bytes} bytes is not accepted"
            )
            keep_alive = False
        else:
            path, _, query = self._url.decode("latin-1").partition("?")
            item = HttpRequest(
                self._parser.get_method().decode("latin-1"),
                path,
                query,
                self._headers,
                b"".join(self._body) if len(self._body) != 1 else self._body[0],
            )
        self._queue.append((item, keep_alive))
        if self._worker is None or self._worker.done():
            self._worker = asyncio.get_running_loop().create_task(self._serve())

    # --- answering ---
    @property
    def worker(self) -> asyncio.Task[None] | None:
        return self._worker

    @property
    def busy(self) -> bool:
        return bool(self._queue) or (self._worker is not None and not self._worker.done())

    async def _serve(self) -> None:
        while self._queue and self._transport is not None:
            item, keep_alive = self._queue.popleft()
            if isinstance(item, HttpResponse):
                response = item
            else:
                self._server.in_flight += 1
                try:
                    response = await self._server.handler(item)
                except asyncio.CancelledError:
                    raise
                except Exception:
                    log.exception("HTTP handler failed")
                    response = _error(500, "internal error")
                finally:
                    self._server.in_flight -= 1
            if self._closing or self._server.stopping:
                keep_alive = False
            self._write(response, keep_alive)
            if not keep_alive:
                self._close()
                return

    def _write(self, response: HttpResponse, keep_alive: bool) -> None:
        if self._transport is None:
            return
        extra = response.headers if keep_alive else [*response.headers, ("Connection", "close")]
        head = _head(response.status, len(response.body), response.content_type, extra)
        self._transport.write(head + response.body if response.body else head)

    def _reply_and_close(self, response: HttpResponse) -> None:
        self._write(response, keep_alive=False)
        self._close()

    def _close(self) -> None:
        self._closing = True
        if self._transport is not None:
            self._transport.close()

    def close_if_idle_since(self, before: float) -> None:
        if not self.busy and self.last_active < before:
            self._close()

    def close_when_idle(self) -> None:
        self._closing = True
        if not self.busy:
            self._close()


class HttpServer:
    """The listening socket and its connections."""

    def __init__(
        self, handler: Handler, max_body_bytes: int, idle_timeout_s: float = IDLE_TIMEOUT_S
    ) -> None:
        self.handler = handler
        self.max_body_bytes = max_body_bytes
        self.idle_timeout_s = idle_timeout_s
        self._sweeper: asyncio.Task[None] | None = None
        self.connections: set[_Connection] = set()
        self.in_flight = 0
        self.stopping = False
        self._server: asyncio.Server | None = None
        self._port = 0

    @property
    def port(self) -> int:
        return self._port

    async def start(self, host: str, port: int) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: _Connection(self), host, port, reuse_address=True, backlog=1024
        )
        self._port = self._server.sockets[0].getsockname()[1]
        self._sweeper = loop.create_task(self._sweep())

    async def _sweep(self) -> None:
        """Close keep-alive connections idle for ``idle_timeout_s`` (and half-sent requests
        that stalled that long), as gRPC's max_connection_idle does on the other port."""
        period = min(max(self.idle_timeout_s / 4, 0.01), 10.0)
        while True:
            await asyncio.sleep(period)
            before = time.monotonic() - self.idle_timeout_s
            for conn in list(self.connections):
                conn.close_if_idle_since(before)

    async def close(self, grace: float) -> None:
        """Stop accepting; idle connections close now, busy ones after their answer or
        ``grace`` seconds."""
        self.stopping = True
        if self._sweeper is not None:
            self._sweeper.cancel()
        if self._server is not None:
            self._server.close()
        for conn in list(self.connections):
            conn.close_when_idle()
        busy = [c.worker for c in self.connections if c.worker is not None and not c.worker.done()]
        if busy:
            await asyncio.wait(busy, timeout=grace)
        for conn in list(self.connections):
            conn._close()
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 1.0)


async def start_http_server(
    handler: Handler,
    host: str,
    port: int,
    *,
    max_body_bytes: int,
    idle_timeout_s: float = IDLE_TIMEOUT_S,
) -> HttpServer:
    server = HttpServer(handler, max_body_bytes, idle_timeout_s)
    await server.start(host, port)
    return server


class _AiohttpListener:
    def __init__(self, runner: Any, port: int) -> None:
        self._runner = runner
        self._port = port

    @property
    def port(self) -> int:
        return self._port

    async def close(self, grace: float) -> None:
        await self._runner.shutdown()
        await self._runner.cleanup()


async def start_aiohttp_server(
    handler: Handler, host: str, port: int, *, max_body_bytes: int
) -> HttpListener:
    """The same handler behind aiohttp's low-level server (benchmark candidate)."""
    from aiohttp import web

    async def handle(request: web.BaseRequest) -> web.StreamResponse:
        if request.content_length is not None and request.content_length > max_body_bytes:
            reply = _error(413, f"request body over {max_body_bytes} bytes is not accepted")
        else:
            reply = await handler(
                HttpRequest(
                    request.method,
                    request.raw_path.partition("?")[0],
                    request.query_string,
                    {k.lower(): v for k, v in request.headers.items()},
                    await request.read(),
                )
            )
        return web.Response(
            status=reply.status,
            body=reply.body,
            headers={"Content-Type": reply.content_type, **dict(reply.headers)},
        )

    runner = web.ServerRunner(web.Server(handle), handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, host, port, reuse_address=True)
    await site.start()
    server = site._server
    assert server is not None
    sockets = getattr(server, "sockets", None) or []
    return _AiohttpListener(runner, sockets[0].getsockname()[1])


class _UvicornListener:
    def __init__(self, server: Any, port: int) -> None:
        self._server = server
        self._port = port

    @property
    def port(self) -> int:
        return self._port

    async def close(self, grace: float) -> None:
        self._server.should_exit = True
        self._server.config.timeout_graceful_shutdown = grace
        await self._server.shutdown()


async def start_uvicorn_server(
    handler: Handler, host: str, port: int, *, max_body_bytes: int
) -> HttpListener:
    """The same handler as a minimal ASGI app on uvicorn + httptools (benchmark candidate)."""
    import uvicorn

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        parts: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            chunk = message.get("body", b"")
            size += len(chunk)
            if size <= max_body_bytes:
                parts.append(chunk)
            if not message.get("more_body"):
                break
        if size > max_body_bytes:
            reply = _error(413, f"request body over {max_body_bytes} bytes is not accepted")
        else:
            reply = await handler(
                HttpRequest(
                    scope["method"],
                    scope["raw_path"].decode("latin-1"),
                    scope["query_string"].decode("latin-1"),
                    {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]},
                    b"".join(parts),
                )
            )
        headers = [
            (b"content-type", reply.content_type.encode()),
            (b"content-length", str(len(reply.body)).encode()),
        ]
        headers += [(k.lower().encode(), v.encode()) for k, v in reply.headers]
        await send({"type": "http.response.start", "status": reply.status, "headers": headers})
        await send({"type": "http.response.body", "body": reply.body})

    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        http="httptools",
        loop="none",
        lifespan="off",
        log_level="warning",
        access_log=False,
    )
    config.load()
    server = uvicorn.Server(config)
    server.lifespan = config.lifespan_class(config)
    await server.startup()  # not serve(): that would install its own signal handlers
    return _UvicornListener(server, server.servers[0].sockets[0].getsockname()[1])


SERVERS: dict[str, Callable[..., Awaitable[HttpListener]]] = {
    "asyncio": start_http_server,
    "aiohttp": start_aiohttp_server,
    "uvicorn": start_uvicorn_server,
}
