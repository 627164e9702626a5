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


# -- one token, by its jti or itself -------------------------------------------------------

async def minted(server, user: str, ttl: int = 3600, app_key: str | None = None) -> dict:
    """``POST /v1/users/{user}/tokens``: ``{"token", "user", "expires_at", "jti"}``."""
    async with server.http(app_key) as http:
        r = await http.post(f"/v1/users/{user}/tokens", json={"ttl": ttl})
    assert r.status_code == 201, r.text
    return r.json()


async def revoke_one(server, user: str, body: dict, key: str | None = None) -> dict:
    async with server.http(key) as http:
        r = await http.post(revoke_path(user), json=body)
    assert r.status_code == 200, r.text
    return r.json()


async def test_one_token_is_refused_and_the_users_others_are_taken(each_store):
    """By its jti (from the minting answer) or by the token itself: that token
    is refused, cached or not and on the direct routes too; the user's other
    tokens, and a new one, are taken; the answer says until when."""
    server = each_store
    phone, laptop, tablet = [await minted(server, "ann") for _ in range(3)]
    assert len({phone["jti"], laptop["jti"], tablet["jti"]}) == 3
    claims = jwt.decode(phone["token"], options={"verify_signature": False})
    assert claims["jti"] == phone["jti"]
    for t in (phone, laptop, tablet):
        assert await status(server, t["token"]) == 200  # verified, and cached
    out = await revoke_one(server, "ann", {"jti": phone["jti"]})
    # a jti alone: kept as long as a token tidings mints can live
    assert set(out) == {"user", "jti", "revoked_until"}
    assert (out["user"], out["jti"]) == ("ann", phone["jti"])
    limit = server.service.revocations.horizon
    assert time.time() + limit - 5 < out["revoked_until"] <= time.time() + limit + 1
    for path in ("/v1/me/counts", "/v1/me/notifications", "/v1/me/preferences"):
        assert await status(server, phone["token"], path) == 401, path
    assert await status(server, laptop["token"]) == 200
    # by the token itself: kept until the token expires (its exp and the leeway)
    out = await revoke_one(server, "ann", {"token": tablet["token"]})
    assert out == {"user": "ann", "jti": tablet["jti"], "revoked_until": tablet["expires_at"] + 5}
    assert await status(server, tablet["token"]) == 401
    assert await status(server, laptop["token"]) == 200
    assert await status(server, (await minted(server, "ann"))["token"]) == 200
    # again: taken, the same answer
    assert (await revoke_one(server, "ann", {"jti": tablet["jti"]}))["jti"] == tablet["jti"]
    # the per-user cutoff is untouched: nothing else of ann's is refused
    assert server.service.revocations.before == {}


async def test_a_jti_names_a_token_of_that_user_of_that_app_only(server):
    """The same jti in another user's or another app's token is another
    token (a backend signing its own may reuse one): untouched."""
    mine = signed_with_jti(server, "ann", "j-1")
    bobs = signed_with_jti(server, "bob", "j-1")
    other_app, other_key = await server.new_app("other")
    secret = (await server.service.app(other_app)).signing_secret
    theirs = signed_with_jti(server, "ann", "j-1", app=other_app, secret=secret)
    await revoke_one(server, "ann", {"jti": "j-1"})
    assert await status(server, mine) == 401
    assert await status(server, bobs) == 200
    assert await status(server, theirs) == 200
    await revoke_one(server, "ann", {"jti": "j-1"}, key=other_key)
    assert await status(server, theirs) == 401


def signed_with_jti(server, user: str, jti: str, app: str | None = None,
                    secret: str | None = None, exp: int | None = None) -> str:
    claims = {"sub": user, "app": app or server.app, "iat": int(time.time()),
              "exp": exp or int(time.time()) + 3600, "jti": jti}
    return jwt.encode(claims, secret or server.signing_secret, algorithm="HS256")


BAD_ONES = [
    ({}, "jti"),  # neither: never "every token" by accident
    ({"jti": None}, "jti"),
    ({"jti": "a", "token": "b"}, "jti"),
    ({"jti": ""}, "jti"),
    ({"jti": "a\x01b"}, "jti"),
    ({"jti": "x" * 129}, "jti"),
    ({"jti": 7}, "jti"),
    ({"token": ""}, "token"),
    ({"token": "x" * 4097}, "token"),
    ({"token": "not.a.token"}, "token"),
    ({"jtii": "a"}, "jtii"),
]


async def test_bad_revocations_of_one_token_are_clear_errors_and_revoke_nothing(each_store):
    server = each_store
    token = (await minted(server, "ann"))["token"]
    forged = signed_with_jti(server, "ann", "j", secret="another-secret-another-secret-xx")
    no_jti = signed(server, "ann", int(time.time()))
    odd_jti = signed_with_jti(server, "ann", "a\x01b")
    async with server.http() as http:
        for body, field in BAD_ONES:
            assert_error(await http.post(revoke_path("ann"), json=body), 422, "invalid", field,
                         case=body)
        for bad, says in ((forged, "not a token of this app"),
                          (token, "not a token of this user"),  # revoking it as bob's
                          (no_jti, "has no jti"), (odd_jti, "jti is not")):
            user = "bob" if bad is token else "ann"
            err = assert_error(await http.post(revoke_path(user), json={"token": bad}), 422,
                               "invalid", "token", case=says)
            assert says in err["message"], err
        r = await http.post(revoke_path("ann"), content=b"{nope")
        assert_error(r, 400, "malformed_json")
        r = await http.post(revoke_path("ann"), content=b"x" * 9000)
        assert_error(r, 413, "payload_too_large")
    assert await status(server, token) == 200
    assert server.service.revocations.ids == {} and server.service.revocations.before == {}
    assert await server.service.store.token_id_revocations(0, 0) == []


async def test_an_expired_token_is_revoked_without_being_kept(server):
    """It is refused anyway: the answer says when it stopped, nothing is stored."""
    gone = signed_with_jti(server, "ann", "old", exp=int(time.time()) - 60)
    out = await revoke_one(server, "ann", {"token": gone})
    assert out["jti"] == "old" and out["revoked_until"] <= time.time()
    assert server.service.revocations.ids == {}
    assert await server.service.store.token_id_revocations(0, 0) == []


async def test_a_token_of_the_previous_secret_can_be_revoked_while_it_is_taken(server):
    old = (await minted(server, "ann"))
    async with server.http() as http:
        r = await http.post("/v1/signing-secret/rotate", json={"overlap": 600})
        assert r.status_code == 200, r.text
    assert await status(server, old["token"]) == 200
    assert (await revoke_one(server, "ann", {"token": old["token"]}))["jti"] == old["jti"]
    assert await status(server, old["token"]) == 401


async def test_tokens_revoked_one_by_one_are_forgotten_once_expired(each_store):
    """A node's refresh drops those whose end has passed, the app's next
    revocation of a token deletes them from the store; a live one stays."""
    server = each_store
    store, rev = server.service.store, server.service.revocations
    now = time.time()
    assert await store.revoke_token_id(server.app, "ann", "gone", now + 0.2, now) == now + 0.2
    rev.apply_one(server.app, "ann", "gone", now + 0.2)
    await revoke_one(server, "ann", {"jti": "live"})
    await asyncio.sleep(0.3)
    await rev.refresh()
    assert set(rev.ids) == {(server.app, "ann", "live")}
    await revoke_one(server, "bob", {"jti": "next"})
    assert sorted(j for _, _, j, _ in await store.token_id_revocations(0, 0)) == ["live", "next"]


async def test_an_app_has_at_most_max_revoked_tokens(tmp_path):
    async with run_server(tmp_path, limits=Limits(max_revoked_tokens=2)) as server:
        await revoke_one(server, "ann", {"jti": "a"})
        await revoke_one(server, "bob", {"jti": "b"})
        async with server.http() as http:
            err = assert_error(await http.post(revoke_path("cy"), json={"jti": "c"}), 409,
                               "limit_reached")
        assert "2" in err["message"]
        assert (await revoke_one(server, "ann", {"jti": "a"}))["jti"] == "a"  # again: taken
        await revoke(server, "cy")  # every token of a user: its own limit


async def test_the_publisher_client_revokes_one_token(server):
    async with AsyncClient(server.url, server.api_key) as client:
        phone = await client.create_token("ann")
        laptop = await client.create_token("ann")
        assert set(phone) == {"token", "user", "expires_at", "jti"}
        out = await client.revoke_tokens("ann", jti=phone["jti"])
        assert out["jti"] == phone["jti"]
        assert await status(server, phone["token"]) == 401
        assert await status(server, laptop["token"]) == 200
        assert (await client.revoke_tokens("ann", token=laptop["token"]))["jti"] == laptop["jti"]
        with pytest.raises(ValueError):
            await client.revoke_tokens("ann", jti="a", token="b")
    assert await status(server, laptop["token"]) == 401


async def test_only_the_streams_of_the_revoked_token_end(any_ws_server):
    """The WebSocket and SSE streams opened with the revoked token close
    (4401, "token revoked"; the response ends) at once; the user's streams
    of another token, and a stream that took a fresh token since, go on."""
    server = any_ws_server
    phone, laptop, moved = [await minted(server, "ann") for _ in range(3)]
    ws = await ws_connect(server, phone["token"])
    other = await ws_connect(server, laptop["token"])
    refreshed = await ws_connect(server, phone["token"])
    try:
        async with SSEReader(server, phone["token"]) as sse, \
                SSEReader(server, laptop["token"]) as other_sse:
            for reader in (sse, other_sse):
                assert (await reader.events(1))[0][1]["type"] == "hello"
            for sock in (ws, other, refreshed):
                assert (await recv_events(sock, 1))[0]["type"] == "hello"
            await refreshed.send(json.dumps({"type": "auth", "token": moved["token"]}))
            assert (await recv_events(refreshed, 1))[0]["type"] == "token"
            start = time.monotonic()
            await revoke_one(server, "ann", {"jti": phone["jti"]})
            assert await closed_with(ws, timeout=2) == (CLOSE_UNAUTHORIZED, "token revoked")
            with pytest.raises(StopAsyncIteration):
                await sse.events(1, timeout=2)
            assert time.monotonic() - start < 1  # no second to wait for
            (nid,) = await publish(server, {"users": ["ann"]})
            for sock in (other, refreshed):
                got = await recv_events(sock, 1)
                assert got[0]["notification"]["id"] == nid
            assert (await other_sse.events(1))[0][1]["notification"]["id"] == nid
    finally:
        for sock in (ws, other, refreshed):
            await sock.close()
    again = await ws_connect(server, phone["token"])
    assert await closed_with(again) == (CLOSE_UNAUTHORIZED, "token revoked")
    async with server.http() as http:
        assert_error(await http.get("/v1/me/events", params={"token": phone["token"]}), 401,
                     "token_revoked")


async def test_a_revoked_token_sent_on_an_open_stream_closes_it_alone(server):
    phone, laptop = [await minted(server, "ann") for _ in range(2)]
    await revoke_one(server, "ann", {"jti": phone["jti"]})
    ws = await ws_connect(server, laptop["token"])
    try:
        assert (await recv_events(ws, 1))[0]["type"] == "hello"
        await ws.send(json.dumps({"type": "auth", "token": phone["token"]}))
        assert await closed_with(ws) == (CLOSE_UNAUTHORIZED, "token revoked")
    finally:
        await ws.close()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("broker", ["redis", "postgres"])
async def test_a_token_revocation_reaches_the_other_node_within_a_second(tmp_path, broker):
    """As a user's revocation: node B's own reads find nothing, so only the
    broker's message can make it refuse the token and end its stream; the
    user's other token and stream on B go on."""
    overrides = {} if broker == "redis" else {"broker": None}
    async with two_nodes(tmp_path, **overrides) as (a, b):
        b.service.revocations._read_at = time.time() + 10**6
        phone, laptop = [await minted(b, "ann") for _ in range(2)]
        assert await status(b, phone["token"]) == 200  # cached on B
        ws = await ws_connect(b, phone["token"])
        other = await ws_connect(b, laptop["token"])
        try:
            for sock in (ws, other):
                assert (await recv_events(sock, 1))[0]["type"] == "hello"
            await revoke_one(a, "ann", {"jti": phone["jti"]})
            start = time.monotonic()
            assert await until_refused(b, phone["token"], within=2) < 1
            assert await closed_with(ws, timeout=2) == (CLOSE_UNAUTHORIZED, "token revoked")
            assert time.monotonic() - start < 1.5
            assert await status(b, laptop["token"]) == 200
            await publish(a, {"users": ["ann"]})
            assert (await recv_events(other, 1))[0]["type"] == "notification"
        finally:
            await ws.close()
            await other.close()


@pytest.mark.timeout(60)
async def test_a_lost_token_revocation_message_still_ends_within_the_refresh(tmp_path):
    async with two_nodes(tmp_path) as (a, b):
        b.service.broker.unsubscribe(KEYS_CHANNEL)  # deaf to revocations
        phone, laptop = [await minted(b, "ann") for _ in range(2)]
        ws = await ws_connect(b, phone["token"])
        try:
            assert (await recv_events(ws, 1))[0]["type"] == "hello"
            await revoke_one(a, "ann", {"token": phone["token"]})
            start = time.monotonic()
            await until_refused(b, phone["token"], within=REFRESH_INTERVAL + 2)
            assert (await closed_with(ws, timeout=2))[0] == CLOSE_UNAUTHORIZED
            assert time.monotonic() - start <= REFRESH_INTERVAL + 1.5
            assert await status(b, laptop["token"]) == 200
        finally:
            await ws.close()


async def test_a_node_started_after_a_token_revocation_refuses_it(tmp_path):
    async with run_server(tmp_path) as server:
        phone, laptop = [await minted(server, "ann") for _ in range(2)]
        await revoke_one(server, "ann", {"jti": phone["jti"]})
        key = server.api_key
    async with run_server(tmp_path, api_key=key) as again:
        assert await status(again, phone["token"]) == 401
        assert await status(again, laptop["token"]) == 200
