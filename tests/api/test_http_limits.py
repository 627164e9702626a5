"""What a connection may cost before it has sent a request (docs/security.md,
named limits): the request head's size and header count are bounded, the
head must arrive within ``header_timeout`` and the body within
``body_timeout`` of it, and an idle keep-alive connection is closed after
``keep_alive_timeout``.  Over raw sockets, as an
attacker would send them."""

from __future__ import annotations

import asyncio
import json
import logging

import httpx

from tests.conftest import run_server
from tidings.config import Limits

LIMITS = Limits(max_header_bytes=8192, max_headers=20, header_timeout=0.5,
                body_timeout=0.5, keep_alive_timeout=0.5)


async def _connect(server):
    host, port = server.url.removeprefix("http://").split(":")
    return await asyncio.open_connection(host, int(port))


async def _answer(reader, timeout: float = 10) -> tuple[int, dict, bool]:
    """(status, JSON body, closed after it) of the one answer the server sends."""
    data = await asyncio.wait_for(reader.read(65536), timeout)
    head, _, body = data.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    rest = await asyncio.wait_for(reader.read(65536), timeout)
    return status, json.loads(body), rest == b""


async def _closed(reader, timeout: float = 10) -> bytes:
    """Everything the server sent until it closed (a timeout fails the test)."""
    out = b""
    while chunk := await asyncio.wait_for(reader.read(65536), timeout):
        out += chunk
    return out


async def test_an_oversized_request_head_is_431_and_closed(tmp_path):
    async with run_server(tmp_path, limits=LIMITS) as server:
        # one huge header, sent in pieces and never finished
        reader, writer = await _connect(server)
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: ")
        for _ in range(8):  # just over 8 KiB in pieces (writing on after the 431 resets)
            writer.write(b"a" * 1024)
            await writer.drain()
            await asyncio.sleep(0.01)
        status, body, closed = await _answer(reader)
        assert (status, body["error"]["code"], closed) == (431, "headers_too_large", True)
        writer.close()
        # too many small headers
        reader, writer = await _connect(server)
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n"
                     + b"".join(b"X-%d: 1\r\n" % i for i in range(30)) + b"\r\n")
        status, body, closed = await _answer(reader)
        assert (status, body["error"]["code"], closed) == (431, "headers_too_large", True)
        writer.close()
        # a huge URL
        reader, writer = await _connect(server)
        writer.write(b"GET /" + b"a" * 12000)
        status, body, closed = await _answer(reader)
        assert status == 431 and closed
        writer.close()
        # within the limits, a large body is fine
        reader, writer = await _connect(server)
        note = json.dumps({"to": {"users": ["u"]}, "title": "t", "body": "b" * 8000}).encode()
        writer.write(b"POST /v1/notifications HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                     b"Authorization: Bearer " + server.api_key.encode() + b"\r\n"
                     b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(note)
                     + note)
        assert (await _closed(reader)).startswith(b"HTTP/1.1 202")
        writer.close()


async def test_a_head_that_never_finishes_is_cut_after_header_timeout(tmp_path):
    async with run_server(tmp_path, limits=LIMITS) as server:
        reader, writer = await _connect(server)
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")  # ...and nothing more
        out = await _closed(reader)
        assert out.startswith(b"HTTP/1.1 408"), out
        writer.close()
        # a connection that never sends a byte
        reader, writer = await _connect(server)
        assert await _closed(reader) == b""
        writer.close()


def _post(server, path: str, *headers: bytes, method: bytes = b"POST") -> bytes:
    return (method + b" " + path.encode() + b" HTTP/1.1\r\nHost: x\r\n"
            b"Authorization: Bearer " + server.api_key.encode() + b"\r\n"
            b"Content-Type: application/json\r\n" + b"".join(h + b"\r\n" for h in headers)
            + b"\r\n")


async def test_a_body_that_never_finishes_is_cut_after_body_timeout(tmp_path, caplog):
    """A complete head, then a body that stops short (a slowloris on the
    body): 408 and close, whatever way the request takes, and nothing of it
    is processed."""
    note = json.dumps({"to": {"users": ["slow"]}, "title": "t", "body": "b"}).encode()
    async with run_server(tmp_path, limits=LIMITS) as server:
        sent = [
            # a publish (answered by the protocol itself): the whole note,
            # one byte short of its Content-Length
            (_post(server, "/v1/notifications", b"Content-Length: %d" % (len(note) + 1)), note),
            # the same, chunked, without the last chunk
            (_post(server, "/v1/notifications", b"Transfer-Encoding: chunked"),
             b"%x\r\n%s\r\n" % (len(note), note)),
            # a route the ASGI app answers, its handler waiting for the body
            (_post(server, "/v1/categories", b"Content-Length: 100000", method=b"PUT"),
             b'{"categories": ['),
            # a head that arrived alone, and no byte of its body
            (_post(server, "/v1/notifications", b"Content-Length: 10"), b""),
        ]
        with caplog.at_level(logging.WARNING):
            for head, body in sent:
                reader, writer = await _connect(server)
                writer.write(head)
                await writer.drain()
                await asyncio.sleep(0.05)  # the body in a later read than the head
                writer.write(body)
                out = await _closed(reader)
                assert out.startswith(b"HTTP/1.1 408"), (head, out)
                error = json.loads(out.partition(b"\r\n\r\n")[2])["error"]
                assert error["code"] == "request_timeout", error
                assert "body" in error["message"], error
                writer.close()
        async with httpx.AsyncClient(base_url=server.url) as http:
            got = await http.get("/v1/users/slow/notifications",
                                 headers={"Authorization": f"Bearer {server.api_key}"})
            assert got.status_code == 200 and got.json()["items"] == [], got.text
            got = await http.get("/v1/categories",
                                 headers={"Authorization": f"Bearer {server.api_key}"})
            assert got.status_code == 200 and got.json()["categories"] == [], got.text
        assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.records


async def test_a_body_that_comes_after_its_head_in_time_is_answered(tmp_path):
    note = json.dumps({"to": {"users": ["u"]}, "title": "t", "body": "b"}).encode()
    async with run_server(tmp_path, limits=LIMITS) as server:
        reader, writer = await _connect(server)
        for _ in range(3):  # the body in two later reads, on one keep-alive connection
            writer.write(_post(server, "/v1/notifications", b"Content-Length: %d" % len(note)))
            await writer.drain()
            await asyncio.sleep(0.01)
            writer.write(note[:5])
            await writer.drain()
            await asyncio.sleep(0.01)
            writer.write(note[5:])
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            assert head.startswith(b"HTTP/1.1 202"), head
            length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
            await reader.readexactly(length)
        writer.close()


async def test_an_idle_keep_alive_connection_is_closed(tmp_path):
    async with run_server(tmp_path, limits=LIMITS) as server:
        reader, writer = await _connect(server)
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        out = await _closed(reader)  # the answer, then the close once idle
        assert out.startswith(b"HTTP/1.1 200") and out.endswith(b'{"status":"ok"}'), out
        writer.close()


async def test_a_request_the_http_parser_refuses_is_a_json_400(tmp_path):
    async with run_server(tmp_path) as server:
        for head in (b"GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: Fx[$\r\n\r\n",
                     b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Bad\x01Name: 1\r\n\r\n",
                     b"NOT HTTP AT ALL\r\n\r\n"):
            reader, writer = await _connect(server)
            writer.write(head)
            status, body, closed = await _answer(reader)
            assert (status, body["error"]["code"], closed) == (400, "bad_request", True), head
            assert body["error"]["message"].startswith("invalid HTTP request")
            writer.close()


def _upgrade(*extra: bytes) -> bytes:
    """A WebSocket upgrade to the stream, with ``extra`` header lines, in one write."""
    return (b"GET /v1/me/stream HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
            b"Sec-WebSocket-Version: 13\r\n" + b"".join(line + b"\r\n" for line in extra)
            + b"\r\n")


async def test_a_websocket_upgrade_has_the_same_head_limits_as_any_request(tmp_path):
    """The handshake parser's own line limit (8 KiB) does not refuse what
    HTTP takes (a browser's long Cookie line), and a head over the limits,
    arriving in one read, is the same JSON 431 and close, not a crash of the
    connection's protocol that leaves it open and unanswered."""
    async with run_server(tmp_path) as server:  # the default limits: 32 KiB, 100 headers
        reader, writer = await _connect(server)
        writer.write(_upgrade(b"Cookie: session=" + b"c" * 20_000))
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        assert head.startswith(b"HTTP/1.1 101"), head
        writer.close()
        await _upgrade_refused(server, b"Cookie: session=" + b"c" * 40_000)
        await _upgrade_refused(server, *(b"X-%d: 1" % i for i in range(150)))
    async with run_server(tmp_path / "small", limits=LIMITS) as server:  # 8 KiB, 20 headers
        await _upgrade_refused(server, b"Cookie: session=" + b"c" * 9_000)
        await _upgrade_refused(server, *(b"X-%d: 1" % i for i in range(25)))


async def _upgrade_refused(server, *extra: bytes) -> None:
    reader, writer = await _connect(server)
    writer.write(_upgrade(*extra))
    status, body, closed = await _answer(reader)
    assert (status, body["error"]["code"], closed) == (431, "headers_too_large", True)
    writer.close()
