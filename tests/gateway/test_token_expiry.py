"""A live stream ends when its token does: WebSocket and SSE, and a fresh
token sent on an open WebSocket.

Tokens here are minted "in the past" so that they expire a second or two
after the test starts (a token is taken until its ``exp`` plus the clock
leeway, ``tidings.core.auth.LEEWAY``): the tests wait that long, not a
minute.
"""

from __future__ import annotations

import asyncio
import base64
import json
import math
import time

import httpx
import pytest

from tests.gateway.live import SSEReader, closed_with, publish, recv_events, ws_connect
from tidings.client import Subscriber
from tidings.core import auth
from tidings.errors import (
    CLOSE_FORBIDDEN,
    CLOSE_TOKEN_EXPIRED,
    CLOSE_UNAUTHORIZED,
    should_reconnect,
)

pytestmark = pytest.mark.asyncio


def short_token(server, user: str, seconds: float, app: str | None = None,
                secret: str | None = None) -> tuple[str, float]:
    """A token taken for about ``seconds`` more, and the moment it stops being
    taken (``exp`` + leeway)."""
    now = int(time.time())
    exp = now + math.ceil(seconds) - auth.LEEWAY
    token = auth.mint_token(app or server.app, user, secret or server.signing_secret,
                            ttl=exp - (now - 60), now=now - 60)
    return token, exp + auth.LEEWAY


async def test_a_websocket_closes_when_its_token_expires(any_ws_server):
    server = any_ws_server
    token, until = short_token(server, "alice", 2)
    ws = await ws_connect(server, token)
    try:
        (hello,) = await recv_events(ws, 1)
        assert hello["type"] == "hello"
        await publish(server, {"users": ["alice"]})
        (note,) = await recv_events(ws, 1)
        assert note["type"] == "notification"
        code, reason = await closed_with(ws)
        assert (code, reason) == (CLOSE_TOKEN_EXPIRED, "token expired")
        assert time.time() >= until - 0.05  # not before the token stopped being taken
        assert should_reconnect(code)  # a client reconnects (with a new token)
    finally:
        await ws.close()


async def test_the_same_token_cannot_reopen_the_stream(server):
    token, until = short_token(server, "alice", 1)
    ws = await ws_connect(server, token)
    assert (await closed_with(ws))[0] == CLOSE_TOKEN_EXPIRED
    await asyncio.sleep(max(0.0, until + 1.05 - time.time()))  # exp is whole seconds
    again = await ws_connect(server, token)
    code, reason = await closed_with(again)
    assert code == CLOSE_UNAUTHORIZED and "expired" in reason


async def test_a_fresh_token_keeps_the_websocket_open(any_ws_server):
    server = any_ws_server
    token, until = short_token(server, "alice", 2)
    ws = await ws_connect(server, token)
    try:
        (hello,) = await recv_events(ws, 1)
        fresh, fresh_until = short_token(server, "alice", 600)
        await ws.send(json.dumps({"type": "auth", "token": fresh}))
        (answer,) = await recv_events(ws, 1)
        assert answer == {"type": "token", "until": int(fresh_until)}
        await asyncio.sleep(until + 1 - time.time())  # past the first token's end
        await publish(server, {"users": ["alice"]}, title="still here")
        (note,) = await recv_events(ws, 1)
        assert note["notification"]["title"] == "still here"
        assert note["cursor"] == f"{hello['epoch']}:1"
    finally:
        await ws.close()


async def test_a_fresh_token_sent_before_hello_is_answered(any_ws_server):
    """Sent right behind the auth message, it arrives while the stream
    starts: the ASGI path reads it once the stream has started, and the raw
    path hands it over when it detaches (it used to drop it)."""
    server = any_ws_server
    token, _ = short_token(server, "alice", 600)
    ws = await ws_connect(server, token)
    try:
        fresh, fresh_until = short_token(server, "alice", 900)
        await ws.send(json.dumps({"type": "auth", "token": fresh}))
        hello, answer = await recv_events(ws, 2)
        assert hello["type"] == "hello"
        assert answer == {"type": "token", "until": int(fresh_until)}
    finally:
        await ws.close()


@pytest.mark.parametrize("which", ["other user", "other app", "forged", "expired", "garbage"])
async def test_a_bad_fresh_token_closes_the_websocket(server, which):
    token, _ = short_token(server, "alice", 600)
    ws = await ws_connect(server, token)
    try:
        await recv_events(ws, 1)  # hello
        if which == "other user":
            bad = await server.token("bob")
        elif which == "other app":
            other, _ = await server.new_app()
            bad = await server.token("alice", app=other)
        elif which == "forged":
            bad, _ = short_token(server, "alice", 600, secret="not the app's secret" * 2)
        elif which == "expired":
            bad = auth.mint_token(server.app, "alice", server.signing_secret, ttl=60,
                                  now=time.time() - 3600)
        else:
            bad = "x.y.z"
        await ws.send(json.dumps({"type": "auth", "token": bad}))
        code, _ = await closed_with(ws)
        assert code == (CLOSE_FORBIDDEN if which.startswith("other") else CLOSE_UNAUTHORIZED)
    finally:
        await ws.close()


async def test_other_messages_do_not_touch_the_stream(server):
    token, _ = short_token(server, "alice", 600)
    ws = await ws_connect(server, token)
    try:
        await recv_events(ws, 1)
        for junk in ('{"type":"auth"}', '{"type":"auth","token":5}', "[1,2", '"auth"',
                     '{"type":"auth","token":"' + "a" * 3000 + '"}'):
            await ws.send(junk)
        # only the last one is a token (not a valid one): it alone closes the stream
        assert (await closed_with(ws))[0] == CLOSE_UNAUTHORIZED
    finally:
        await ws.close()
    ws = await ws_connect(server, token)
    try:
        await recv_events(ws, 1)
        await ws.send('{"type":"auth","token":5}')
        await ws.send('{"type":"receipts","delivered":[]}')
        await publish(server, {"users": ["alice"]})
        (note,) = await recv_events(ws, 1)
        assert note["type"] == "notification"
    finally:
        await ws.close()


async def test_an_sse_stream_ends_when_its_token_expires(server):
    token, until = short_token(server, "alice", 2)
    async with SSEReader(server, token) as sse:
        ((_, hello),) = await sse.events(1)
        assert hello["type"] == "hello"
        with pytest.raises(StopAsyncIteration):  # the response ends
            await sse.events(1, timeout=10)
        assert time.time() >= until - 0.05
    async with httpx.AsyncClient(base_url=server.url) as http:
        await asyncio.sleep(max(0.0, until + 1.05 - time.time()))
        r = await http.get("/v1/me/events", params={"token": token})
        assert r.status_code == 401 and r.json()["error"]["code"] == "token_expired"


async def test_the_python_subscriber_resumes_across_an_expiry(server):
    """End to end: a subscriber whose token source hands out short tokens
    reconnects when the stream's token expires and misses nothing."""
    minted = []

    def token() -> str:
        minted.append(short_token(server, "carol", 2)[0])
        return minted[-1]

    got: list[str] = []
    async with Subscriber(server.url, token) as sub:
        async def read() -> None:
            async for event in sub:
                if event["type"] == "notification":
                    got.append(event["notification"]["title"])

        reader = asyncio.create_task(read())
        try:
            for i in range(12):  # ~3.6 s: past at least one token's end
                await publish(server, {"users": ["carol"]}, title=f"t{i}")
                await asyncio.sleep(0.3)
            async with asyncio.timeout(10):
                while len(got) < 12:
                    await asyncio.sleep(0.05)
        finally:
            reader.cancel()
    assert got == [f"t{i}" for i in range(12)]
    assert len(minted) >= 2 and sub.reconnects >= 1
    assert sub.last_close_code == CLOSE_TOKEN_EXPIRED


async def test_a_token_without_an_end_leaves_the_stream_open(server):
    """PyJWT takes any integer exp; one past every float gives no timer."""
    import jwt

    token = jwt.encode({"sub": "dave", "app": server.app, "exp": 10**400},
                       server.signing_secret, algorithm="HS256")
    assert (await server.service.token_claims(token))[2] == math.inf
    ws = await ws_connect(server, token)
    try:
        await recv_events(ws, 1)
        await ws.send(json.dumps({"type": "auth", "token": token}))
        (answer,) = await recv_events(ws, 1)
        assert answer == {"type": "token", "until": None}
    finally:
        await ws.close()


async def test_claims_name_the_end_on_a_hit_and_a_miss(server):
    token, until = short_token(server, "erin", 100)
    first = await server.service.token_claims(token)
    second = await server.service.token_claims(token)  # the cache's answer
    claims = json.loads(base64.urlsafe_b64decode(token.split(".")[1] + "=="))
    assert first == second == (server.app, "erin", until, server.signing_secret,
                               claims["iat"], claims["jti"])
    assert await server.service.authenticate_token(token) == (server.app, "erin")



class _Ending:
    def __init__(self, name: str, log: list):
        self.name, self.log = name, log

    def token_expired(self) -> None:
        self.log.append((self.name, time.time()))


async def test_one_timer_ends_streams_by_the_second():
    """StreamEnds: streams end at their second, in order, whatever order they
    were added in; one that left or moved is not ended there."""
    from tidings.gateway.stream import StreamEnds

    ends, log = StreamEnds(), []
    now = math.ceil(time.time())
    late, early, gone, moved = (_Ending(n, log) for n in ("late", "early", "gone", "moved"))
    ends.add(late, now + 2)  # armed for now + 2 ...
    ends.add(early, now + 1)  # ... then re-armed for the earlier second
    ends.add(gone, now + 1)
    ends.add(moved, now + 1)
    ends.discard(gone, now + 1)  # the stream closed
    ends.discard(moved, now + 1)  # a fresh token moved its end
    ends.add(moved, now + 3)
    await asyncio.sleep(now + 3.3 - time.time())
    assert [name for name, _ in log] == ["early", "late", "moved"]
    for (_, at), second in zip(log, (now + 1, now + 2, now + 3), strict=True):
        assert second <= at < second + 0.3
    assert not ends._due and not ends._seconds and ends._timer is None


async def test_the_python_subscriber_renews_its_token_on_the_open_stream(server):
    """A token callable's next token goes over the open stream before the
    first one ends: no reconnect, nothing missed, the answer not yielded."""
    first, until = short_token(server, "fay", 8)  # exp in ~3 s: renewed ~2.4 s in
    tokens = [first, short_token(server, "fay", 600)[0]]
    calls = []

    async def token() -> str:
        calls.append(time.time())
        return tokens[min(len(calls) - 1, 1)]

    got: list[dict] = []
    async with Subscriber(server.url, token, receipts=False) as sub:
        async def read() -> None:
            async for event in sub:
                got.append(event)

        reader = asyncio.create_task(read())
        try:
            await publish(server, {"users": ["fay"]}, title="before")
            await asyncio.sleep(until + 1 - time.time())  # past the first token's end
            await publish(server, {"users": ["fay"]}, title="after")
            async with asyncio.timeout(10):
                while [e for e in got if e["type"] == "notification"][1:] == []:
                    await asyncio.sleep(0.05)
        finally:
            reader.cancel()
    assert [e["notification"]["title"] for e in got if e["type"] == "notification"] == \
        ["before", "after"]
    assert len(calls) == 2 and sub.reconnects == 0 and sub.last_close_code is None
    assert "token" not in [e["type"] for e in got]
