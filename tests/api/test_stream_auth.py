"""Hostile stream handshakes (docs/design.md §2.7, §2.8, §4): WebSocket and SSE.

A refused WebSocket is accepted and then closed with a code from the
"do not reconnect" range (4400-4499, tidings.errors); a refused SSE request
is an ordinary JSON error response.  The 10 s auth-message timeout is not
exercised here (too slow for the suite).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time

import httpx
import jwt
import pytest
import websockets
from conftest import run_server

from tidings.config import Limits
from tidings.core import auth
from tidings.errors import (
    CLOSE_BAD_REQUEST,
    CLOSE_FORBIDDEN,
    CLOSE_TOO_MANY,
    CLOSE_UNAUTHORIZED,
    should_reconnect,
)

STREAM = "/v1/me/stream"
EVENTS = "/v1/me/events"


async def first_event(ws, timeout: float = 5.0) -> dict:
    doc = json.loads(await asyncio.wait_for(ws.recv(), timeout))
    return doc[0] if isinstance(doc, list) else doc


async def close_code(ws, timeout: float = 5.0) -> int | None:
    """Wait until the server closes ``ws``; return the close code it sent."""
    with pytest.raises(websockets.ConnectionClosed) as info:
        while True:
            await asyncio.wait_for(ws.recv(), timeout)
    rcvd = info.value.rcvd
    return rcvd.code if rcvd is not None else None


async def ws_refused(url: str, first: str | bytes | None = None, **kw) -> int | None:
    async with websockets.connect(url, **kw) as ws:
        if first is not None:
            # The server may refuse before reading it (origin, cursor).
            with contextlib.suppress(websockets.ConnectionClosed):
                await ws.send(first)
        return await close_code(ws)


async def ws_hello(url: str, token: str, **kw):
    ws = await websockets.connect(url, **kw)
    await ws.send(json.dumps({"type": "auth", "token": token}))
    hello = await first_event(ws)
    assert hello["type"] == "hello", hello
    return ws


def sse_error(r: httpx.Response, status: int, code: str | None = None) -> dict:
    assert r.status_code == status, (r.status_code, r.text)
    assert r.headers["content-type"].startswith("application/json")
    err = r.json()["error"]
    assert err["code"] and err["message"]
    if code is not None:
        assert err["code"] == code, err
    return err


# -- WebSocket ------------------------------------------------------------------------


async def test_ws_first_message_not_json(server):
    url = server.ws_url + STREAM
    deep = '{"type": "auth", "token": "x", "extra": ' + "[" * 1500 + "]" * 1500 + "}"
    for first in ["hello", "{", b"\x00\xff\x10", "[]", json.dumps({"type": "auth"}),
                  json.dumps({"type": "auth", "token": 42}), deep]:
        code = await ws_refused(url, first)
        assert code == CLOSE_UNAUTHORIZED, (first, code)
        assert not should_reconnect(code)


async def test_a_malformed_upgrade_is_a_json_error(server):
    """An upgrade the WebSocket handshake refuses (no key, another version,
    not GET) is answered in the API's JSON error shape, not plain text."""
    upgrade = {"Upgrade": "websocket", "Connection": "Upgrade"}
    key = {"Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==", "Sec-WebSocket-Version": "13"}
    async with httpx.AsyncClient(base_url=server.url, timeout=5) as http:
        for headers, status in [(upgrade, 400),
                                ({**upgrade, **key, "Sec-WebSocket-Version": "8"}, 400),
                                ({**upgrade, **key, "Sec-WebSocket-Key": "short"}, 400)]:
            r = await http.get(STREAM, headers=headers)
            err = sse_error(r, status, "bad_request")
            assert "WebSocket" in err["message"], err
            assert "\n" not in err["message"]
        sse_error(await http.post(STREAM, headers={**upgrade, **key}), 405,
                  "method_not_allowed")
        # an upgrade to no route: uvicorn's refusal, in the same shape
        sse_error(await http.get("/v1/nope", headers={**upgrade, **key}), 403, "forbidden")


async def test_ws_bad_tokens(server):
    url = server.ws_url + STREAM
    now = int(time.time())
    claims = {"sub": "alice", "app": server.app, "iat": now, "exp": now + 600}
    bad = {
        "garbage": "not.a.token",
        "empty": "",
        "forged": jwt.encode(claims, "x" * 64, algorithm="HS256"),
        "expired": auth.mint_token(server.app, "alice", server.signing_secret, ttl=1,
                                   now=time.time() - 100),
        "api key": server.api_key,
    }
    for name, token in bad.items():
        code = await ws_refused(url, json.dumps({"type": "auth", "token": token}))
        assert code == CLOSE_UNAUTHORIZED, (name, code)
        # The same through the Authorization header (non-browser clients).
        if token:
            code = await ws_refused(url, additional_headers={"Authorization": f"Bearer {token}"})
            assert code == CLOSE_UNAUTHORIZED, (name, code)


async def test_ws_bad_cursor(server):
    token = await server.token("alice")
    for cursor in ("garbage", "abc:", ":5", "x" * 100, "a:b:c:d", "%00"):
        code = await ws_refused(f"{server.ws_url}{STREAM}?cursor={cursor}",
                                json.dumps({"type": "auth", "token": token}))
        assert code == CLOSE_BAD_REQUEST, (cursor, code)
        assert not should_reconnect(code)


async def test_ws_good_auth_still_works(server):
    token = await server.token("alice")
    ws = await ws_hello(server.ws_url + STREAM, token)
    await ws.close()
    async with websockets.connect(server.ws_url + STREAM,
                                  additional_headers={"Authorization": f"Bearer {token}"}) as ws:
        assert (await first_event(ws))["type"] == "hello"


async def test_ws_origin_allowlist(tmp_path):
    async with run_server(tmp_path, allowed_origins=("https://good.example",)) as srv:
        token = await srv.token("alice")
        url = srv.ws_url + STREAM
        code = await ws_refused(url, json.dumps({"type": "auth", "token": token}),
                                origin="https://evil.example")
        assert code == CLOSE_FORBIDDEN
        assert not should_reconnect(code)
        code = await ws_refused(url, json.dumps({"type": "auth", "token": token}),
                                origin="https://good.example.evil.example")
        assert code == CLOSE_FORBIDDEN
        ws = await ws_hello(url, token, origin="https://good.example")
        await ws.close()


async def test_ws_oversized_auth_message(server):
    """A first message over the WebSocket message limit closes the socket,
    and the server keeps serving."""
    async with websockets.connect(server.ws_url + STREAM) as ws:
        with contextlib.suppress(websockets.ConnectionClosed):
            await ws.send(json.dumps({"type": "auth", "token": "x" * 10_000}))
        code = await close_code(ws)
        assert code is None or code >= 1000
    async with httpx.AsyncClient(base_url=server.url) as http:
        assert (await http.get("/healthz")).status_code == 200


# -- SSE ------------------------------------------------------------------------------------


async def test_sse_bad_token_is_401_json(server):
    now = int(time.time())
    expired = auth.mint_token(server.app, "alice", server.signing_secret, ttl=1,
                              now=time.time() - 100)
    forged = jwt.encode({"sub": "alice", "app": server.app, "iat": now, "exp": now + 60},
                        "y" * 64, algorithm="HS256")
    async with httpx.AsyncClient(base_url=server.url, timeout=5) as http:
        sse_error(await http.get(EVENTS), 401)
        for token in ("garbage", expired, forged, server.api_key):
            sse_error(await http.get(EVENTS, params={"token": token}), 401)
            sse_error(await http.get(EVENTS, headers={"Authorization": f"Bearer {token}"}), 401)
        err = sse_error(await http.get(EVENTS, params={"token": expired}), 401)
        assert err["code"] == "token_expired"


async def test_sse_bad_cursor_is_400_json(server):
    token = await server.token("alice")
    async with httpx.AsyncClient(base_url=server.url, timeout=5) as http:
        for cursor in ("garbage", "1:2:3:4", "z" * 100):
            r = await http.get(EVENTS, params={"token": token, "cursor": cursor})
            sse_error(r, 400, "bad_cursor")
            r = await http.get(EVENTS, params={"token": token},
                               headers={"Last-Event-ID": cursor})
            sse_error(r, 400, "bad_cursor")


async def test_sse_head_answers_the_headers_and_ends(server):
    """HEAD has the GET's status and headers and no body (RFC 9110 §9.3.2):
    it opens no stream, so the connection serves the next request at once
    instead of hanging under a stream nobody reads."""
    token = await server.token("alice")
    async with httpx.AsyncClient(base_url=server.url, timeout=5,
                                 limits=httpx.Limits(max_connections=1)) as http:
        r = await http.head(EVENTS, params={"token": token})
        assert r.status_code == 200 and r.content == b""
        assert r.headers["content-type"].startswith("text/event-stream")
        r = await http.head(EVENTS, params={"token": "garbage"})
        assert r.status_code == 401 and r.content == b""
        # the same connection (one in the pool) answers the next request
        assert (await http.get("/healthz")).status_code == 200
    assert server.service.hub.users.get((server.app, "alice")) is None


# -- connection cap ---------------------------------------------------------------------------


async def test_too_many_streams_per_user(tmp_path):
    async with run_server(tmp_path, limits=Limits(max_connections_per_user=2)) as srv:
        url = srv.ws_url + STREAM
        token = await srv.token("alice")
        first = await ws_hello(url, token)
        second = await ws_hello(url, token)
        try:
            code = await ws_refused(url, json.dumps({"type": "auth", "token": token}))
            assert code == CLOSE_TOO_MANY
            async with httpx.AsyncClient(base_url=srv.url, timeout=5) as http:
                r = await http.get(EVENTS, params={"token": token})
                sse_error(r, 429, "too_many_connections")
                assert int(r.headers["retry-after"]) >= 1
            # Another user is not affected.
            bob = await ws_hello(url, await srv.token("bob"))
            await bob.close()
        finally:
            await second.close()

        # A closed stream frees its slot.
        for _ in range(100):
            if len(srv.service.hub.users.get((srv.app, "alice"), ())) < 2:
                break
            await asyncio.sleep(0.02)
        third = await ws_hello(url, token)
        await third.close()
        await first.close()


async def test_too_many_sse_streams_per_user(tmp_path):
    async with run_server(tmp_path, limits=Limits(max_connections_per_user=2)) as srv, \
            httpx.AsyncClient(base_url=srv.url, timeout=5) as http:
        token = await srv.token("alice")
        async with contextlib.AsyncExitStack() as stack:
            for _ in range(2):
                r = await stack.enter_async_context(
                    http.stream("GET", EVENTS, params={"token": token}))
                assert r.status_code == 200
                assert r.headers["content-type"].startswith("text/event-stream")
            # wait until both are registered with the hub
            for _ in range(100):
                if len(srv.service.hub.users.get((srv.app, "alice"), ())) == 2:
                    break
                await asyncio.sleep(0.02)
            sse_error(await http.get(EVENTS, params={"token": token}), 429)
            code = await ws_refused(srv.ws_url + STREAM,
                                    json.dumps({"type": "auth", "token": token}))
            assert code == CLOSE_TOO_MANY
