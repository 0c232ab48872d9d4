"""The floor's HTTP/1.1 server (modelserve/httpserver.py) on real loopback sockets."""

from __future__ import annotations

import asyncio
import json

import pytest

from modelserve.httpserver import (
    MAX_HEADER_BYTES,
    SERVERS,
    HttpRequest,
    HttpResponse,
    start_http_server,
)

LIMIT = 1024


async def echo(request: HttpRequest) -> HttpResponse:
    if request.path == "/slow":
        await asyncio.sleep(0.3)
    doc = {
        "method": request.method,
        "path": request.path,
        "query": request.query,
        "id": request.headers.get("x-request-id", ""),
        "body": request.body.decode(),
    }
    return HttpResponse(200, json.dumps(doc).encode(), headers=[("X-Seen", "1")])


async def exchange(port: int, raw: bytes, answers: int = 1) -> list[tuple[int, dict, bytes]]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(raw)
    out = []
    try:
        for _ in range(answers):
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode().split("\r\n")
            pairs = [line.split(": ", 1) for line in lines[1:] if ": " in line]
            headers = {k.lower(): v for k, v in pairs}  # uvicorn writes them lower-case
            body = await reader.readexactly(int(headers.get("content-length", "0")))
            out.append((int(lines[0].split()[1]), headers, body))
    finally:
        writer.close()
    return out


def post(path: str, body: bytes, *extra: str) -> bytes:
    head = [f"POST {path} HTTP/1.1", "Host: x", f"Content-Length: {len(body)}", *extra]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


@pytest.mark.parametrize("kind", sorted(SERVERS))
async def test_each_server_answers_the_handler(kind: str) -> None:
    server = await SERVERS[kind](echo, "127.0.0.1", 0, max_body_bytes=LIMIT)
    try:
        [(status, headers, body)] = await exchange(
            server.port, post("/v2/x?a=1", b"hello", "X-Request-Id: r7")
        )
        assert status == 200 and headers["x-seen"] == "1"
        assert json.loads(body) == {
            "method": "POST",
            "path": "/v2/x",
            "query": "a=1",
            "id": "r7",
            "body": "hello",
        }
    finally:
        await server.close(1.0)


async def test_pipelined_requests_are_answered_in_order_on_one_connection() -> None:
    server = await start_http_server(echo, "127.0.0.1", 0, max_body_bytes=LIMIT)
    try:
        answers = await exchange(server.port, post("/slow", b"1") + post("/fast", b"2"), 2)
        assert [json.loads(b)["body"] for _, _, b in answers] == ["1", "2"]
        assert all("connection" not in h for _, h, _ in answers)  # kept alive
    finally:
        await server.close(1.0)


async def test_chunked_bodies_are_joined() -> None:
    server = await start_http_server(echo, "127.0.0.1", 0, max_body_bytes=LIMIT)
    raw = (
        b"POST /c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"
    )
    try:
        [(status, _, body)] = await exchange(server.port, raw)
        assert status == 200 and json.loads(body)["body"] == "abcde"
    finally:
        await server.close(1.0)


async def test_a_body_over_the_limit_is_413_and_the_connection_closes() -> None:
    server = await start_http_server(echo, "127.0.0.1", 0, max_body_bytes=LIMIT)
    try:
        [(status, headers, body)] = await exchange(server.port, post("/big", b"x" * (LIMIT + 1)))
        assert status == 413 and headers["connection"] == "close"
        assert json.loads(body) == {"error": f"request body over {LIMIT} bytes is not accepted"}
    finally:
        await server.close(1.0)


async def test_malformed_http_is_400() -> None:
    server = await start_http_server(echo, "127.0.0.1", 0, max_body_bytes=LIMIT)
    try:
        [(status, _, body)] = await exchange(server.port, b"NOT HTTP AT ALL\r\n\r\n")
        assert status == 400 and json.loads(body)["error"].startswith("malformed HTTP request")
    finally:
        await server.close(1.0)


async def test_close_lets_the_request_in_progress_finish_then_refuses() -> None:
    server = await start_http_server(echo, "127.0.0.1", 0, max_body_bytes=LIMIT)
    answer = asyncio.create_task(exchange(server.port, post("/slow", b"late")))
    await asyncio.sleep(0.1)  # the handler is running
    await server.close(5.0)
    [(status, headers, body)] = await answer
    assert status == 200 and json.loads(body)["body"] == "late"
    assert headers["connection"] == "close"
    with pytest.raises(OSError):
        await asyncio.open_connection("127.0.0.1", server.port)


async def test_a_client_that_hangs_up_cancels_its_handler() -> None:
    started, cancelled = asyncio.Event(), asyncio.Event()

    async def wait_forever(request: HttpRequest) -> HttpResponse:
        started.set()
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return HttpResponse(200)

    server = await start_http_server(wait_forever, "127.0.0.1", 0, max_body_bytes=LIMIT)
    try:
        _, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(post("/x", b""))
        await asyncio.wait_for(started.wait(), 5)
        writer.close()
        await asyncio.wait_for(cancelled.wait(), 5)
    finally:
        await server.close(1.0)


async def test_headers_over_the_limit_are_refused() -> None:
    server = await start_http_server(echo, "127.0.0.1", 0, max_body_bytes=LIMIT)
    huge = "X-Junk: " + "j" * (MAX_HEADER_BYTES + 1)
    try:
        [(status, headers, body)] = await exchange(server.port, post("/x", b"", huge))
        assert status == 400 and headers["connection"] == "close"
        assert "malformed HTTP request" in json.loads(body)["error"]
    finally:
        await server.close(1.0)


async def test_an_idle_keep_alive_connection_is_closed() -> None:
    server = await start_http_server(echo, "127.0.0.1", 0, max_body_bytes=LIMIT, idle_timeout_s=0.2)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(post("/x", b"1"))
        await reader.readuntil(b"\r\n\r\n")
        # Then nothing: the server hangs up within a few sweep periods.
        rest = await asyncio.wait_for(reader.read(), 5)
        assert rest == b'{"method": "POST", "path": "/x", "query": "", "id": "", "body": "1"}'
        assert reader.at_eof()
        writer.close()
    finally:
        await server.close(1.0)


async def test_expect_100_continue_is_answered_before_the_body() -> None:
    server = await start_http_server(echo, "127.0.0.1", 0, max_body_bytes=LIMIT)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(
            b"POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nExpect: 100-continue\r\n\r\n"
        )
        interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 2)
        assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
        writer.write(b"abc")
        head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 OK")
        writer.close()
    finally:
        await server.close(1.0)
