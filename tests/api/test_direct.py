"""The direct routes (publish, batch, a device's inbox page and counts) over
raw HTTP/1.1, on both paths.

``tidings serve`` answers them from its HTTP protocol without ASGI
(tidings/api/uvicorn_http.py); any other ASGI server reaches the same
handlers as Starlette routes.  Every case here runs on both and must answer
the same: status, JSON error vocabulary, keep-alive, pipelining, 100-continue,
bodies over the limit, HTTP/1.0.
"""

from __future__ import annotations

import asyncio
import json
import re

import pytest

from tests.conftest import run_server
from tidings.cli import HTTP_PROTOCOL
from tidings.config import Limits

LIMIT = 4096


@pytest.fixture(params=["direct", "asgi"])
async def live(request, tmp_path):
    http = HTTP_PROTOCOL if request.param == "direct" else "httptools"
    async with run_server(tmp_path, http=http, limits=Limits(max_body_bytes=LIMIT)) as s:
        yield s


class Conn:
    """One raw keep-alive connection; reads Content-Length responses."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, live) -> Conn:
        host, port = live.url.removeprefix("http://").split(":")
        return cls(*await asyncio.open_connection(host, int(port)))

    def send(self, data: bytes) -> None:
        self.writer.write(data)

    async def response(self) -> tuple[int, dict[str, str], bytes]:
        head = await asyncio.wait_for(self.reader.readuntil(b"\r\n\r\n"), 10)
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {}
        for line in lines[1:]:
            if line:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
        n = int(headers.get("content-length", 0))
        body = await asyncio.wait_for(self.reader.readexactly(n), 10) if n else b""
        return status, headers, body

    async def closed(self) -> bool:
        return await asyncio.wait_for(self.reader.read(1), 10) == b""

    def close(self) -> None:
        self.writer.close()


def request(live, body: bytes, *, path: str = "/v1/notifications", key: str | None = None,
            extra: str = "", version: str = "1.1") -> bytes:
    return (f"POST {path} HTTP/{version}\r\nHost: test\r\n"
            f"Authorization: Bearer {key or live.api_key}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n{extra}\r\n"
            ).encode() + body


def doc(user: str = "alice", **more) -> bytes:
    return json.dumps({"to": {"users": [user]}, "title": "hi", **more}).encode()


def error_of(status_body: tuple, status: int, code: str) -> dict:
    got, headers, body = status_body
    assert got == status, body
    assert headers["content-type"] == "application/json"
    err = json.loads(body)["error"]
    assert err["code"] == code, err
    return err


async def test_publish_and_keep_alive(live):
    c = await Conn.open(live)
    try:
        for user in ("alice", "bob"):
            c.send(request(live, doc(user)))
            status, headers, body = await c.response()
            assert status == 202, body
            assert headers["content-type"] == "application/json"
            assert "date" in headers
            answer = json.loads(body)
            assert answer["recipients"] == 1 and answer["status"] == "accepted"
        inbox = await live.service.store.inbox(live.app, "bob", limit=5, before=None,
                                               state=None, now=2e9)
        assert [e.id for e in inbox] == [answer["id"]]
    finally:
        c.close()


async def test_errors_are_the_json_vocabulary(live):
    c = await Conn.open(live)
    try:
        c.send(request(live, doc(), key="tk_nope_nope"))
        error_of(await c.response(), 401, "bad_api_key")
        c.send(request(live, b'{"to": '))
        error_of(await c.response(), 400, "malformed_json")
        c.send(request(live, b""))
        error_of(await c.response(), 400, "empty_body")
        c.send(request(live, doc(tittle="typo")))
        err = error_of(await c.response(), 422, "invalid")
        assert err["field"] == "tittle"
        c.send(request(live, doc(), extra=f"Idempotency-Key: {'k' * 256}\r\n"))
        err = error_of(await c.response(), 422, "invalid")
        assert err["field"] == "Idempotency-Key"
        c.send(request(live, doc()))  # the connection is still good
        assert (await c.response())[0] == 202
    finally:
        c.close()
    errors = live.service.hub.metrics.app(live.app).errors
    assert sum(errors.values()) >= 4  # counted for the app once its key was checked


async def test_body_over_the_limit(live):
    big = doc(body="x" * LIMIT)
    c = await Conn.open(live)
    try:
        c.send(request(live, big))
        error_of(await c.response(), 413, "payload_too_large")
        # the key is checked first: a bad key is a 401 whatever the body
        c.send(request(live, big, key="tk_nope_nope"))
        error_of(await c.response(), 401, "bad_api_key")
        # without a Content-Length: chunks, refused once past the limit
        chunk = b"x" * 1000
        head = (f"POST /v1/notifications HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer "
                f"{live.api_key}\r\nTransfer-Encoding: chunked\r\n\r\n").encode()
        c.send(head + b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for _ in range(6))
               + b"0\r\n\r\n")
        error_of(await c.response(), 413, "payload_too_large")
        c.send(request(live, doc()))
        assert (await c.response())[0] == 202
    finally:
        c.close()


async def test_expect_continue(live):
    c = await Conn.open(live)
    try:
        body = doc()
        c.send(request(live, b"", extra="Expect: 100-continue\r\n")
               .replace(b"Content-Length: 0", b"Content-Length: %d" % len(body)))
        status, _, _ = await c.response()
        assert status == 100
        c.send(body)
        assert (await c.response())[0] == 202
    finally:
        c.close()


async def test_pipelined_requests_answer_in_order(live):
    c = await Conn.open(live)
    try:
        c.send(request(live, doc("p1")) + request(live, b"{") + request(live, doc("p2"))
               + b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n" + request(live, doc("p3")))
        answers = [await c.response() for _ in range(5)]
        assert [a[0] for a in answers] == [202, 400, 202, 200, 202]
        ids = [json.loads(a[2])["id"] for a in answers if a[0] == 202]
        assert ids == sorted(ids)  # published in the order sent
    finally:
        c.close()


async def test_connection_close_and_http_10(live):
    for extra, version in (("Connection: close\r\n", "1.1"), ("", "1.0")):
        c = await Conn.open(live)
        try:
            c.send(request(live, doc(), extra=extra, version=version))
            status, headers, _ = await c.response()
            assert status == 202
            assert headers.get("connection") == "close"
            assert await c.closed()
        finally:
            c.close()


async def test_batch_and_idempotency(live):
    c = await Conn.open(live)
    try:
        batch = json.dumps({"notifications": [
            {"to": {"users": ["a"]}}, {"to": {}}, {"to": {"users": ["b"]}}]}).encode()
        for _ in range(2):
            c.send(request(live, batch, path="/v1/notifications/batch",
                           extra="Idempotency-Key: k1\r\n"))
            status, _, body = await c.response()
            assert status == 202
            results = json.loads(body)["results"]
            assert [r["status"] for r in results][1] == "error"
            assert results[1]["error"]["field"] == "to"
        assert results[0]["status"] == "duplicate"
        c.send(request(live, b'{"notifications": []}', path="/v1/notifications/batch"))
        error_of(await c.response(), 422, "invalid")
    finally:
        c.close()


async def test_query_string_and_other_methods(live):
    c = await Conn.open(live)
    try:
        c.send(request(live, doc(), path="/v1/notifications?x=1"))
        assert (await c.response())[0] == 202
        c.send(b"PUT /v1/notifications HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\n")
        error_of(await c.response(), 405, "method_not_allowed")
    finally:
        c.close()


async def test_keep_alive_timeout(live):
    live.uvicorn.config.timeout_keep_alive = 0.4  # read by each new connection
    busy, idle = await Conn.open(live), await Conn.open(live)
    try:
        for _ in range(6):  # 1.2 s of requests, never 0.4 s apart: stays open
            busy.send(request(live, doc()))
            assert (await busy.response())[0] == 202
            await asyncio.sleep(0.2)
        idle.send(request(live, doc()))
        assert (await idle.response())[0] == 202
        assert await idle.closed()  # closed once idle for the timeout
        assert await busy.closed()  # and so is the other, idle since
    finally:
        busy.close()
        idle.close()


async def test_request_ids(live):
    c = await Conn.open(live)
    try:
        c.send(request(live, doc(), extra="X-Request-Id: order-42.retry-1\r\n"))
        status, headers, _ = await c.response()
        assert status == 202 and headers["x-request-id"] == "order-42.retry-1"
        fresh = set()
        for extra in ("", "X-Request-Id: no spaces!\r\n"):
            c.send(request(live, b"{", extra=extra))  # errors carry one too
            status, headers, _ = await c.response()
            assert status == 400 and re.fullmatch(r"[0-9a-f]{32}", headers["x-request-id"])
            fresh.add(headers["x-request-id"])
        assert len(fresh) == 2
    finally:
        c.close()


# -- a device's inbox page and counts ------------------------------------------


def get(path: str, token: str | None, extra: str = "") -> bytes:
    auth = f"Authorization: Bearer {token}\r\n" if token is not None else ""
    return f"GET {path} HTTP/1.1\r\nHost: test\r\n{auth}{extra}\r\n".encode()


async def _fill(c: Conn, live, user: str, n: int) -> list[str]:
    ids = []
    for i in range(n):
        c.send(request(live, doc(user, title=f"n{i}")))
        status, _, body = await c.response()
        assert status == 202, body
        ids.append(json.loads(body)["id"])
    return ids


async def test_inbox_page_and_counts(live):
    c = await Conn.open(live)
    try:
        ids = await _fill(c, live, "dana", 3)
        token = await live.token("dana")
        c.send(get("/v1/me/notifications", token))
        status, headers, body = await c.response()
        assert status == 200 and headers["content-type"] == "application/json"
        page = json.loads(body)
        assert [item["id"] for item in page["items"]] == ids[::-1]
        assert page["items"][0]["notification"]["title"] == "n2"
        assert page["next_before"] is None
        c.send(get("/v1/me/counts", token))
        status, _, body = await c.response()
        assert status == 200
        assert json.loads(body) == {"unread": 3, "unseen": 3, "at": {"seq": 3, "feed": 0, "rev": 0}}
        # the query: percent-decoded, and the last of a repeated name wins (as Starlette)
        c.send(get("/v1/me/notifications?limit=1&limit=2&state=un%72ead", token))
        status, _, body = await c.response()
        page = json.loads(body)
        assert status == 200 and [i["id"] for i in page["items"]] == ids[:0:-1]
        assert page["next_before"] == ids[1]
        c.send(get(f"/v1/me/notifications?limit=2&before={ids[1]}", token))
        assert [i["id"] for i in json.loads((await c.response())[2])["items"]] == ids[:1]
    finally:
        c.close()


@pytest.mark.parametrize("query,field", [
    ("limit=abc", "limit"), ("limit=0", "limit"), ("limit=", "limit"),
    ("before=nope", "before"), ("state=gone", "state"), ("limit=99999999999999999999", "limit"),
])
async def test_inbox_page_bad_query(live, query, field):
    c = await Conn.open(live)
    try:
        c.send(get(f"/v1/me/notifications?{query}", await live.token("dana")))
        assert error_of(await c.response(), 422, "invalid")["field"] == field
    finally:
        c.close()


async def test_inbox_reads_refuse_bad_tokens(live):
    import jwt

    expired = jwt.encode({"sub": "dana", "app": live.app, "exp": 1_000_000},
                         live.signing_secret, algorithm="HS256")
    c = await Conn.open(live)
    try:
        for path in ("/v1/me/notifications", "/v1/me/counts"):
            c.send(get(path, None))
            error_of(await c.response(), 401, "unauthorized")
            c.send(get(path, "junk"))
            error_of(await c.response(), 401, "bad_token")
            c.send(get(path, expired))
            error_of(await c.response(), 401, "token_expired")
            c.send(get(path, live.api_key))  # a server key is not a user token
            error_of(await c.response(), 401, "bad_token")
            c.send(get(path, await live.token("dana"), extra="Authorization: Basic x\r\n"))
            assert (await c.response())[0] == 200  # the first header wins, as in Starlette
        c.send(get("/v1/me/counts", await live.token("dana")))  # still good
        assert (await c.response())[0] == 200
    finally:
        c.close()


async def test_inbox_reads_across_origins_answer_cors(live):
    """A browser's cross-origin request goes through the CORS middleware on
    both paths; one without an Origin is answered directly."""
    c = await Conn.open(live)
    try:
        token = await live.token("dana")
        c.send(get("/v1/me/counts", token, extra="Origin: https://app.example\r\n"))
        status, headers, _ = await c.response()
        assert status == 200 and headers["access-control-allow-origin"] == "*"
        assert "x-request-id" in headers["access-control-expose-headers"].lower()
        c.send(get("/v1/me/counts", token, extra="X-Request-Id: r-7\r\n"))
        status, headers, _ = await c.response()
        assert status == 200 and "access-control-allow-origin" not in headers
        assert headers["x-request-id"] == "r-7"
        c.send(b"HEAD /v1/me/counts HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer "
               + token.encode() + b"\r\n\r\n")
        head = await asyncio.wait_for(c.reader.readuntil(b"\r\n\r\n"), 10)
        assert head.startswith(b"HTTP/1.1 200")
    finally:
        c.close()
