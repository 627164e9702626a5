"""Revoking a user's tokens (POST /v1/users/{user}/tokens/revoke): every token
of the user issued until then is refused on every node, a token minted after
it is taken, and the streams the old tokens opened end with 4401.

docs/security.md#revoking-a-users-tokens; tidings/service/revocations.py.
Over real sockets, on both stores; the cluster tests run two nodes over the
test PostgreSQL with Redis, or with PostgreSQL as the broker too.
"""

from __future__ import annotations

import asyncio
import json
import math
import time

import jwt
import pytest

from tests.api.test_hostile import assert_error
from tests.conftest import run_server, two_nodes
from tests.gateway.live import SSEReader, closed_with, publish, recv_events, ws_connect
from tidings.broker.base import KEYS_CHANNEL
from tidings.client import AsyncClient, StreamClosed, Subscriber
from tidings.config import Limits
from tidings.errors import CLOSE_UNAUTHORIZED, should_reconnect
from tidings.service.revocations import REFRESH_INTERVAL


def revoke_path(user: str) -> str:
    return f"/v1/users/{user}/tokens/revoke"


def signed(server, user: str, iat: int | None, app: str | None = None,
           secret: str | None = None) -> str:
    """A token the app's backend signed itself, with ``iat`` (None: none)."""
    claims = {"sub": user, "app": app or server.app, "exp": int(time.time()) + 3600}
    if iat is not None:
        claims["iat"] = iat
    return jwt.encode(claims, secret or server.signing_secret, algorithm="HS256")


async def status(server, token: str, path: str = "/v1/me/counts") -> int:
    async with server.http() as http:
        r = await http.get(path, headers={"Authorization": f"Bearer {token}"})
        if r.status_code == 401:
            assert_error(r, 401, "token_revoked")
        return r.status_code


async def revoke(server, user: str, key: str | None = None) -> dict:
    async with server.http(key) as http:
        r = await http.post(revoke_path(user))
    assert r.status_code == 200, r.text
    return r.json()


async def until_refused(server, token: str, within: float) -> float:
    """Ask with ``token`` until it is refused (401 token_revoked); the seconds that took."""
    start = time.monotonic()
    async with server.http() as http:
        while True:
            r = await http.get("/v1/me/counts", headers={"Authorization": f"Bearer {token}"})
            if r.status_code == 401:
                assert_error(r, 401, "token_revoked")
                return time.monotonic() - start
            assert r.status_code == 200, r.text
            assert time.monotonic() - start < within, f"the token still works after {within} s"
            await asyncio.sleep(0.02)


# -- the route ---------------------------------------------------------------------------

async def test_old_tokens_are_refused_and_new_ones_taken(each_store):
    """The user's tokens from before the answer are refused, the cached one
    and the direct inbox reads included, and so is a token without iat; a
    token minted after the answer is taken, as is every other user's."""
    server = each_store
    old = await server.token("ann")
    no_iat = signed(server, "ann", None)
    bob = await server.token("bob")
    for token in (old, no_iat, bob):
        assert await status(server, token) == 200  # verified, and cached
    asked = time.time()
    out = await revoke(server, "ann")
    assert set(out) == {"user", "revoked_before"} and out["user"] == "ann"
    before = out["revoked_before"]
    # the whole second after the request, and answered once it has come
    assert isinstance(before, int) and asked < before <= time.time()
    for path in ("/v1/me/counts", "/v1/me/notifications", "/v1/me/preferences"):
        assert await status(server, old, path) == 401, path
    assert await status(server, no_iat) == 401
    assert await status(server, bob) == 200
    async with server.http() as http:
        minted = (await http.post("/v1/users/ann/tokens", json={"ttl": 60})).json()["token"]
        r = await http.get("/v1/me/counts", headers={"Authorization": f"Bearer {old}"})
    assert r.json()["error"]["message"] == "token revoked"
    assert await status(server, minted) == 200
    # the cutoff is iat's whole second: from it on a token is taken, before it not
    assert await status(server, signed(server, "ann", before)) == 200
    assert await status(server, signed(server, "ann", before - 1)) == 401
    # the same user of another app is another user
    other, _ = await server.new_app("other")
    assert await status(server, await server.token("ann", app=other)) == 200


async def test_a_second_revocation_moves_the_cutoff_later(server):
    first = (await revoke(server, "ann"))["revoked_before"]
    between = await server.token("ann")
    assert await status(server, between) == 200
    second = (await revoke(server, "ann"))["revoked_before"]
    assert second > first
    assert await status(server, between) == 401


async def test_a_token_tidings_mints_before_the_cutoff_has_come_is_taken(server):
    """In the second of a revocation (its answer waits for the cutoff, its
    streams end then), a token tidings mints carries the cutoff as its iat:
    a client refused then gets a token that is taken; one the backend signs
    itself in that second is refused."""
    cutoff = math.floor(time.time()) + 1
    server.service.revocations.apply(server.app, "ann", cutoff)  # as revoke, before its wait
    async with server.http() as http:
        minted = (await http.post("/v1/users/ann/tokens", json={"ttl": 60})).json()
    assert jwt.decode(minted["token"], options={"verify_signature": False})["iat"] == cutoff
    assert await status(server, minted["token"]) == 200
    if time.time() < cutoff:
        assert await status(server, signed(server, "ann", cutoff - 1)) == 401


async def test_the_publisher_client_revokes(server):
    old = await server.token("ann")
    async with AsyncClient(server.url, server.api_key) as client:
        out = await client.revoke_tokens("team/ann")  # a user id holding "/"
        assert out["user"] == "team/ann"
        assert (await client.revoke_tokens("ann"))["user"] == "ann"
        assert await status(server, old) == 401
        fresh = await client.mint_token("ann")
    assert await status(server, fresh) == 200
    assert server.service.revocations.refuses(server.app, "team/ann", int(time.time()) - 5)


async def test_cutoffs_past_token_max_ttl_are_forgotten(each_store):
    """Every token a cutoff older than token_max_ttl (and the clock leeway)
    refused has expired: a node's refresh drops it from memory, the app's
    next revocation from the store; a younger one stays in both."""
    server = each_store
    store, rev = server.service.store, server.service.revocations
    now = time.time()
    old, young = now - rev.horizon - 1, now - rev.horizon + 60
    for user, before in (("old", old), ("young", young)):
        assert await store.revoke_tokens(server.app, user, before, forget_before=0) == before
        rev.apply(server.app, user, before)  # as a node that read them then
    await rev.refresh()
    assert set(rev.before) == {(server.app, "young")}
    assert len(await store.token_revocations(0)) == 2
    await revoke(server, "ann")
    assert sorted(u for _, u, _ in await store.token_revocations(0)) == ["ann", "young"]


# -- open streams ------------------------------------------------------------------------

async def test_open_streams_of_the_user_end_and_other_users_stay(any_ws_server):
    server = any_ws_server
    old = await server.token("ann")
    ws = await ws_connect(server, old)
    bob = await ws_connect(server, await server.token("bob"))
    other_app, _ = await server.new_app("other")
    theirs = await ws_connect(server, await server.token("ann", app=other_app))
    try:
        async with SSEReader(server, old) as sse:
            assert (await sse.events(1))[0][1]["type"] == "hello"
            for sock in (ws, bob, theirs):
                assert (await recv_events(sock, 1))[0]["type"] == "hello"
            start = time.monotonic()
            await revoke(server, "ann")
            code, reason = await closed_with(ws, timeout=2)
            assert (code, reason) == (CLOSE_UNAUTHORIZED, "token revoked")
            assert not should_reconnect(code)  # not with that token
            with pytest.raises(StopAsyncIteration):  # the response ended
                await sse.events(1, timeout=2)
            assert time.monotonic() - start < 2
        await publish(server, {"users": ["bob"]})
        assert (await recv_events(bob, 1))[0]["type"] == "notification"
        with pytest.raises(TimeoutError):
            await recv_events(theirs, 1, timeout=0.5)  # still open, nothing for it
    finally:
        for sock in (ws, bob, theirs):
            await sock.close()
    # reconnecting with the old token: refused, on both transports
    again = await ws_connect(server, old)
    assert await closed_with(again) == (CLOSE_UNAUTHORIZED, "token revoked")
    async with server.http() as http:
        r = await http.get("/v1/me/events", params={"token": old})
        assert_error(r, 401, "token_revoked")
    fresh = await ws_connect(server, await server.token("ann"))
    try:
        assert (await recv_events(fresh, 1))[0]["type"] == "hello"
    finally:
        await fresh.close()


async def test_a_revoked_token_sent_on_an_open_stream_closes_it(server):
    """An open stream takes a fresh token; a revoked one closes it (4401)."""
    old = await server.token("ann")
    await revoke(server, "ann")
    ws = await ws_connect(server, await server.token("ann"))
    try:
        assert (await recv_events(ws, 1))[0]["type"] == "hello"
        await ws.send(json.dumps({"type": "auth", "token": old}))
        assert await closed_with(ws) == (CLOSE_UNAUTHORIZED, "token revoked")
    finally:
        await ws.close()


async def test_the_subscriber_gets_a_new_token_or_stops(server):
    """With a token callable the Subscriber reconnects once with a fresh
    token and misses nothing; with a fixed token it stops (StreamClosed).
    The callable signs tokens as an app's backend may, iat the current
    second: the stream ends when the cutoff has come, so the new one is taken."""
    minted: list[str] = []

    def fresh() -> str:
        minted.append(signed(server, "ann", int(time.time())))
        return minted[-1]

    events: list[dict] = []

    async def follow(sub: Subscriber) -> None:
        async for event in sub:
            events.append(event)

    sub = Subscriber(server.url, fresh, receipts=False)
    task = asyncio.create_task(follow(sub))
    fixed = Subscriber(server.url, await server.token("ann"), receipts=False)
    fixed_events: list[dict] = []

    async def follow_fixed() -> None:
        async for event in fixed:
            fixed_events.append(event)

    fixed_task = asyncio.create_task(follow_fixed())
    try:
        async with asyncio.timeout(10):
            while not (sub.connected and fixed.connected):
                await asyncio.sleep(0.02)
        await revoke(server, "ann")
        with pytest.raises(StreamClosed) as err:
            await asyncio.wait_for(fixed_task, 5)
        assert err.value.close_code == CLOSE_UNAUTHORIZED
        async with asyncio.timeout(10):
            while not (sub.connected and len(minted) == 2):
                await asyncio.sleep(0.02)
        (nid,) = await publish(server, {"users": ["ann"]}, title="after")
        async with asyncio.timeout(10):
            while not any(e.get("notification", {}).get("id") == nid for e in events):
                await asyncio.sleep(0.02)
        assert sub.last_close_code == CLOSE_UNAUTHORIZED
    finally:
        await sub.close()
        await asyncio.wait_for(task, 5)
        fixed_task.cancel()


# -- who may revoke, and bad input ---------------------------------------------------------

async def test_another_apps_key_revokes_only_its_own_users(server):
    """Users are app-scoped: another app's key revoking "ann" revokes its own
    ann, never this app's, whose token and stream go on."""
    other_app, other_key = await server.new_app("other")
    mine = await server.token("ann")
    theirs = await server.token("ann", app=other_app)
    ws = await ws_connect(server, mine)
    try:
        assert (await recv_events(ws, 1))[0]["type"] == "hello"
        out = await revoke(server, "ann", key=other_key)
        assert out["user"] == "ann"
        assert await status(server, theirs) == 401
        assert await status(server, mine) == 200
        with pytest.raises(TimeoutError):
            await recv_events(ws, 1, timeout=1)  # still open
    finally:
        await ws.close()


BAD_USERS = [("a%01b", "user"), ("a%7Fb", "user"), ("x" * 129, "user"), ("%00", "user")]


async def test_bad_requests_are_clear_errors_and_revoke_nothing(each_store):
    server = each_store
    token = await server.token("ann")
    reader = await server.service.create_api_key(server.app, {"read"})
    async with server.http() as http:
        for user, field in BAD_USERS:
            assert_error(await http.post(revoke_path(user)), 422, "invalid", field, case=user)
        assert_error(await http.get(revoke_path("ann")), 405)
        r = await http.post(revoke_path("ann"), headers={"Authorization": "Basic x"})
        assert_error(r, 401, "unauthorized")
        r = await http.post(revoke_path("ann"), headers={"Authorization": ""})
        assert_error(r, 401, "unauthorized")
    async with server.http("tk_0123abcd_not-a-key") as http:
        assert_error(await http.post(revoke_path("ann")), 401, "bad_api_key")
    async with server.http(token) as http:  # a user token is no API key
        assert_error(await http.post(revoke_path("ann")), 401, "bad_api_key")
    async with server.http(reader) as http:
        err = assert_error(await http.post(revoke_path("ann")), 403, "missing_scope")
        assert "publish" in err["message"]
    assert await status(server, token) == 200
    assert server.service.revocations.before == {}


async def test_an_app_has_at_most_max_token_revocations_users(tmp_path):
    async with run_server(tmp_path, limits=Limits(max_token_revocations=2)) as server:
        await revoke(server, "ann")
        await revoke(server, "bob")
        async with server.http() as http:
            err = assert_error(await http.post(revoke_path("cy")), 409, "limit_reached")
        assert "2" in err["message"] and "signing secret" in err["message"]
        assert (await revoke(server, "ann"))["user"] == "ann"  # ann has one already
        assert await status(server, await server.token("cy")) == 200


# -- every node ----------------------------------------------------------------------------

@pytest.mark.timeout(60)
@pytest.mark.parametrize("broker", ["redis", "postgres"])
async def test_a_revocation_reaches_the_other_node_within_a_second(tmp_path, broker):
    """Node B verified the token and holds a stream opened with it; its own
    reads of the store find nothing (its last read is set in the future), so
    only the broker's message can make it refuse the token and end the
    stream within a second."""
    overrides = {} if broker == "redis" else {"broker": None}  # the store's LISTEN/NOTIFY
    async with two_nodes(tmp_path, **overrides) as (a, b):
        b.service.revocations._read_at = time.time() + 10**6
        old = await b.token("ann")
        assert await status(b, old) == 200  # cached on B
        ws = await ws_connect(b, old)
        bob = await ws_connect(b, await b.token("bob"))
        try:
            for sock in (ws, bob):
                assert (await recv_events(sock, 1))[0]["type"] == "hello"
            await revoke(a, "ann")
            start = time.monotonic()
            assert await until_refused(b, old, within=2) < 1
            assert await closed_with(ws, timeout=2) == (CLOSE_UNAUTHORIZED, "token revoked")
            assert time.monotonic() - start < 1.5
            assert await status(b, await b.token("ann")) == 200
            await publish(a, {"users": ["bob"]})
            assert (await recv_events(bob, 1))[0]["type"] == "notification"
        finally:
            await ws.close()
            await bob.close()


@pytest.mark.timeout(60)
async def test_a_lost_revocation_message_still_ends_within_the_refresh(tmp_path):
    """Node B misses the broker's message: its next read of the store, at most
    REFRESH_INTERVAL later, refuses the token and ends the stream."""
    async with two_nodes(tmp_path) as (a, b):
        b.service.broker.unsubscribe(KEYS_CHANNEL)  # deaf to revocations
        old = await b.token("ann")
        ws = await ws_connect(b, old)
        try:
            assert (await recv_events(ws, 1))[0]["type"] == "hello"
            assert await status(b, old) == 200
            await revoke(a, "ann")
            start = time.monotonic()
            await until_refused(b, old, within=REFRESH_INTERVAL + 2)
            code, _ = await closed_with(ws, timeout=2)
            assert code == CLOSE_UNAUTHORIZED
            assert time.monotonic() - start <= REFRESH_INTERVAL + 1.5
        finally:
            await ws.close()


async def test_a_node_started_after_the_revocation_refuses_the_old_tokens(tmp_path):
    """Cutoffs are read at start: a restarted node knows them."""
    async with run_server(tmp_path) as server:
        old = await server.token("ann")
        await revoke(server, "ann")
        key = server.api_key
    async with run_server(tmp_path, api_key=key) as again:
        assert await status(again, old) == 401
        assert await status(again, await again.token("ann")) == 200
