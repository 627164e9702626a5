"""Rate limits through the API: per API key (429 + Retry-After), shared by
every node through the broker; per user on the client API, per node, its
requests, stream connects and WebSocket messages alike; and frequency caps
per user and category.

The buckets refill at 0.01 tokens a second, so nothing refills during a test
and every outcome follows from counting requests, not from timing.
"""

from __future__ import annotations

import asyncio
import contextlib
import json

import httpx
import pytest
import websockets

from tests.conftest import run_server
from tests.gateway.live import publish as publish_to
from tests.gateway.live import recv_events, ws_connect
from tidings.cli import HTTP_PROTOCOL, WS_PROTOCOL
from tidings.client import Subscriber
from tidings.config import Settings, from_env
from tidings.core.backoff import Backoff
from tidings.errors import CLOSE_RATE_LIMITED, should_reconnect
from tidings.service.ratelimits import RateLimits

SLOW = 0.01  # tokens a second: one every 100 s


async def test_a_key_over_its_rate_gets_429_with_retry_after(tmp_path):
    async with run_server(tmp_path, key_rate=SLOW, key_burst=3) as server:
        async with server.http() as http:
            for _ in range(3):
                assert (await http.get("/v1/topics/t")).status_code == 200
            r = await http.post("/v1/notifications", json={"to": {"users": ["a"]}})
        assert r.status_code == 429
        assert r.json()["error"]["code"] == "rate_limited"
        assert 1 <= int(r.headers["retry-after"]) <= 100
        # The limit is per key: another key of the same app has its own bucket.
        other = await server.service.create_api_key(server.app, {"publish", "read"})
        async with server.http(other) as http:
            assert (await http.get("/v1/topics/t")).status_code == 200
        # Refused requests did nothing.
        async with server.http(other) as http:
            inbox = (await http.get("/v1/users/a/notifications")).json()["items"]
        assert inbox == []


async def test_a_batch_costs_one_token_per_notification(tmp_path):
    async with run_server(tmp_path, key_rate=SLOW, key_burst=5) as server:
        batch = {"notifications": [{"to": {"users": ["a"]}, "title": str(i)} for i in range(4)]}
        async with server.http() as http:
            assert (await http.post("/v1/notifications/batch", json=batch)).status_code == 202
            assert (await http.get("/v1/topics/t")).status_code == 200  # the fifth token
        async with run_server(tmp_path / "again", key_rate=SLOW, key_burst=5) as server:
            async with server.http() as http:
                assert (await http.get("/v1/topics/t")).status_code == 200
                assert (await http.get("/v1/topics/t")).status_code == 200
                r = await http.post("/v1/notifications/batch", json=batch)
                assert r.status_code == 429  # 2 + 4 > 5: nothing is published
                assert r.json()["error"]["code"] == "rate_limited"
                # The refused batch cost its first token only: two are left.
                inbox = await http.get("/v1/users/a/notifications")
                assert inbox.status_code == 200 and inbox.json()["items"] == []
                assert (await http.get("/v1/topics/t")).status_code == 200
                assert (await http.get("/v1/topics/t")).status_code == 429


async def test_key_rate_zero_turns_the_limit_off(tmp_path):
    async with run_server(tmp_path, key_rate=0, key_burst=1) as server:
        async with server.http() as http:
            for _ in range(10):
                assert (await http.get("/v1/topics/t")).status_code == 200


async def test_the_default_limit_is_generous(server):
    settings = server.service.settings
    assert (settings.key_rate, settings.key_burst) == (1000.0, 2000)
    async with server.http() as http:
        for _ in range(50):
            assert (await http.get("/v1/topics/t")).status_code == 200


@contextlib.asynccontextmanager
async def two_nodes(tmp_path, **settings):
    """Two nodes over one PostgreSQL schema and one Redis prefix: a cluster."""
    from tests.broker.conftest import delete_prefixed, unique_prefix
    from tests.services import require_postgres, require_redis
    from tests.store.pg import fresh_schema

    pg, redis = require_postgres(), require_redis()
    prefix = unique_prefix()
    try:
        async with fresh_schema(pg) as schema:
            common = {"store": f"{pg}?search_path={schema['search_path']}",
                      "broker": f"{redis}?prefix={prefix}", **settings}
            async with run_server(tmp_path / "a", **common) as a:
                async with run_server(tmp_path / "b", **common) as b:
                    yield a, b
    finally:
        await delete_prefixed(redis, prefix)


@pytest.mark.timeout(60)
async def test_the_key_bucket_is_shared_by_two_nodes_on_redis(tmp_path):
    async with two_nodes(tmp_path, key_rate=SLOW, key_burst=4) as (a, b):
        async with a.http() as on_a, b.http(a.api_key) as on_b:
            for node in (on_a, on_b, on_a, on_b):
                assert (await node.get("/v1/topics/t")).status_code == 200
            # Four tokens taken on two nodes: the key is out on both.
            assert (await on_a.get("/v1/topics/t")).status_code == 429
            assert (await on_b.get("/v1/topics/t")).status_code == 429
        async with b.http() as b_key:  # b's own key is untouched
            assert (await b_key.get("/v1/topics/t")).status_code == 200


# -- per user: the client API ------------------------------------------------------------
# A bucket per user on each node, in memory (tidings/service/ratelimits.py).  The
# tests that need time to pass move the node's bucket clock instead of sleeping.

# "raw": tidings serve's WebSocket protocol, whose streams read messages
# without an ASGI task; "asgi": any other ASGI server, a task reading them.
WS_PATHS = pytest.mark.parametrize("ws", [WS_PROTOCOL, "websockets-sansio"], ids=["raw", "asgi"])
NID = "01HZZZZZZZZZZZZZZZZZZZZZZZ"  # a notification id nobody can see: receipts of it are dropped


def receipt(i: int) -> str:
    return json.dumps({"type": "receipts", "device": f"tab{i}", "delivered": [NID]})


def fresh(token: str) -> str:
    return json.dumps({"type": "auth", "token": token})


async def until_closed(sock) -> tuple[list[dict], int | None, str]:
    """What the server sent until it closed the socket, and its close code and reason."""
    seen: list[dict] = []
    with pytest.raises(websockets.ConnectionClosed) as info:
        async with asyncio.timeout(10):
            while True:
                doc = json.loads(await sock.recv())
                seen.extend(doc if isinstance(doc, list) else [doc])
    rcvd = info.value.rcvd
    return seen, (rcvd.code if rcvd is not None else None), (rcvd.reason if rcvd else "")


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def me(server, token: str, origin: str | None = None) -> httpx.AsyncClient:
    headers = {"Authorization": f"Bearer {token}"}
    if origin is not None:
        headers["Origin"] = origin
    return httpx.AsyncClient(base_url=server.url, headers=headers, timeout=10)


def refused(r: httpx.Response, most: int = 100) -> None:
    assert r.status_code == 429, (r.status_code, r.text)
    assert r.json()["error"]["code"] == "rate_limited", r.text
    assert 1 <= int(r.headers["retry-after"]) <= most


# "direct": tidings serve's HTTP protocol answers the inbox page and counts
# itself; "cors": the same server, but a request with an Origin goes the ASGI
# way, through the CORS middleware; "asgi": any other ASGI server (uvicorn's
# own httptools protocol), every route a Starlette route.
@pytest.mark.parametrize("path", ["direct", "cors", "asgi"])
async def test_a_user_over_the_rate_gets_429_on_every_path(tmp_path, path):
    http = "httptools" if path == "asgi" else HTTP_PROTOCOL
    origin = "https://app.example" if path == "cors" else None
    async with run_server(tmp_path, http=http, user_rate=SLOW, user_burst=3) as server:
        async with me(server, await server.token("alice"), origin) as alice:
            for _ in range(3):
                assert (await alice.get("/v1/me/counts")).status_code == 200
            for route in ("/v1/me/counts", "/v1/me/notifications"):
                r = await alice.get(route)
                refused(r)
                if origin is not None:  # a page can read the answer, and when to retry
                    assert r.headers["access-control-allow-origin"] == "*"
                    assert "retry-after" in r.headers["access-control-expose-headers"].lower()
            refused(await alice.post("/v1/me/notifications/seen", json={"all": True}))
        # Another user of the same app has a bucket of their own.
        async with me(server, await server.token("bob"), origin) as bob:
            for _ in range(3):
                assert (await bob.get("/v1/me/notifications")).status_code == 200


ME_ROUTES = [
    ("GET", "/v1/me/notifications", None),
    ("GET", "/v1/me/counts", None),
    ("GET", "/v1/me/notifications/01HZZZZZZZZZZZZZZZZZZZZZZZ/group", None),
    ("POST", "/v1/me/notifications/read", {"all": True}),
    ("POST", "/v1/me/notifications/seen", {"all": True}),
    ("POST", "/v1/me/notifications/archive", {"ids": []}),
    ("POST", "/v1/me/receipts", {"delivered": []}),
    ("GET", "/v1/me/preferences", None),
    ("PUT", "/v1/me/preferences", {}),
    ("POST", "/v1/me/push-subscriptions", {}),
    ("GET", "/v1/me/push-subscriptions", None),
    ("DELETE", "/v1/me/push-subscriptions/nosuch", None),
]


async def test_every_client_route_takes_a_token(tmp_path):
    """Each route of the client API, with a bucket of one: the first call
    (answered whatever it answers) leaves nothing for the second."""
    async with run_server(tmp_path, user_rate=SLOW, user_burst=1) as server:
        for i, (method, route, body) in enumerate(ME_ROUTES):
            async with me(server, await server.token(f"u{i}")) as user:
                first = await user.request(method, route, json=body)
                assert first.status_code != 429, (route, first.text)
                refused(await user.request(method, route, json=body))


async def test_the_bucket_refills(tmp_path):
    async with run_server(tmp_path, user_rate=10.0, user_burst=2) as server:
        clock = server.service.limits.users.clock = Clock()
        async with me(server, await server.token("alice")) as alice:
            assert [(await alice.get("/v1/me/counts")).status_code for _ in range(2)] == [200, 200]
            refused(await alice.get("/v1/me/counts"), most=1)  # 0.1 s, rounded up to 1
            clock.now += 0.1  # one token back
            assert (await alice.get("/v1/me/counts")).status_code == 200
            refused(await alice.get("/v1/me/counts"), most=1)
            clock.now += 60  # refilled to the burst, not beyond
            assert [(await alice.get("/v1/me/counts")).status_code for _ in range(3)] == [
                200, 200, 429]


@WS_PATHS
async def test_user_rate_zero_turns_the_limit_off(tmp_path, ws):
    async with run_server(tmp_path, ws=ws, user_rate=0, user_burst=1) as server:
        token = await server.token("alice")
        async with me(server, token) as alice:
            for _ in range(10):
                assert (await alice.get("/v1/me/counts")).status_code == 200
                assert (await alice.get("/v1/me/preferences")).status_code == 200
        for _ in range(3):
            sock = await ws_connect(server, token)
            assert (await recv_events(sock, 1))[0]["type"] == "hello"
            await sock.close()
        # and messages on an open WebSocket, as many as a client sends
        sock = await ws_connect(server, token)
        assert (await recv_events(sock, 1))[0]["type"] == "hello"
        for i in range(1000):
            await sock.send(receipt(i))
        await sock.send(fresh(token))
        assert (await recv_events(sock, 1))[0]["type"] == "token"
        await publish_to(server, {"users": ["alice"]}, title="still live")
        (note,) = await recv_events(sock, 1)
        assert note["notification"]["title"] == "still live"
        await sock.close()


async def test_a_refused_request_changes_nothing(tmp_path):
    async with run_server(tmp_path, user_rate=SLOW, user_burst=1) as server:
        async with server.http() as http:
            r = await http.post("/v1/notifications", json={"to": {"users": ["alice"]},
                                                           "title": "hi"})
            nid = r.json()["id"]
        async with me(server, await server.token("alice")) as alice:
            assert (await alice.get("/v1/me/counts")).json() == {
                "unread": 1, "unseen": 1, "at": {"seq": 1, "feed": 0, "rev": 0}}
            refused(await alice.post("/v1/me/notifications/read", json={"ids": [nid]}))
            refused(await alice.post("/v1/me/notifications/archive", json={"all": True}))
            refused(await alice.put("/v1/me/preferences", json={
                "categories": {"social": {"in_app": False}}}))
        async with server.http() as http:
            items = (await http.get("/v1/users/alice/notifications")).json()["items"]
            assert [(i["id"], i["state"]) for i in items] == [(nid, "unseen")]
            assert (await http.get("/v1/users/alice/preferences")).json().get(
                "categories", {}) == {}


async def test_a_stream_connect_takes_a_token_and_a_refused_websocket_may_reconnect(tmp_path):
    """Over the rate a WebSocket closes with 4005, a "reconnect" code (4429,
    too many streams, tells clients to stop for good); SSE answers 429."""
    async with run_server(tmp_path, user_rate=1.0, user_burst=2) as server:
        clock = server.service.limits.users.clock = Clock()
        token = await server.token("alice")
        ws = await ws_connect(server, token)
        assert (await recv_events(ws, 1))[0]["type"] == "hello"
        async with me(server, token) as alice:
            assert (await alice.get("/v1/me/counts")).status_code == 200
            refused(await alice.get("/v1/me/events", params={"token": token}), most=1)
        refused_ws = await ws_connect(server, token)
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await recv_events(refused_ws, 1)
        assert closed.value.rcvd is not None
        assert closed.value.rcvd.code == CLOSE_RATE_LIMITED and should_reconnect(CLOSE_RATE_LIMITED)
        assert "rate limit" in closed.value.rcvd.reason
        clock.now += 1.0  # the reconnect, after its backoff
        again = await ws_connect(server, token)
        assert (await recv_events(again, 1))[0]["type"] == "hello"
        await again.close()
        await ws.close()


# -- per user: messages on an open WebSocket ---------------------------------------------
# Every message a device sends after its auth message takes a token from the
# user's bucket, the one requests and connects take from; a message over the
# rate closes the stream with 4005 (tidings/gateway/transports.py, _Device).


@WS_PATHS
async def test_a_websocket_flooding_messages_is_closed_with_4005(tmp_path, ws):
    """Receipts at socket speed against the defaults (50 a second, bursts of
    200), the bucket's clock standing still so that nothing refills: the
    stream closes with 4005 once the burst is spent, a reconnect is refused
    until tokens are back, and another user's stream goes on."""
    async with run_server(tmp_path, ws=ws) as server:
        clock = server.service.limits.users.clock = Clock()
        token = await server.token("alice")
        flood = await ws_connect(server, token)
        calm = await ws_connect(server, await server.token("bob"))
        for sock in (flood, calm):
            assert (await recv_events(sock, 1))[0]["type"] == "hello"
        with contextlib.suppress(websockets.ConnectionClosed):
            for i in range(2000):
                await flood.send(receipt(i))
        _, code, reason = await until_closed(flood)
        assert code == CLOSE_RATE_LIMITED and should_reconnect(code)
        assert reason == "this user is over the client API's rate limit"
        assert server.service.hub.metrics.app(server.app).errors["rate_limited"] == 1
        # Closed, the client must back off: its connect takes a token too.
        again = await ws_connect(server, token)
        _, code, reason = await until_closed(again)
        assert code == CLOSE_RATE_LIMITED and "rate limit" in reason
        clock.now += 1.0  # after its backoff: 50 tokens back
        again = await ws_connect(server, token)
        assert (await recv_events(again, 1))[0]["type"] == "hello"
        await again.close()
        await publish_to(server, {"users": ["bob"]}, title="still here")
        (note,) = await recv_events(calm, 1)
        assert note["notification"]["title"] == "still here"
        await calm.close()


@WS_PATHS
async def test_a_websocket_sending_at_the_rate_is_never_closed(tmp_path, ws):
    """Eight times the burst in messages, receipts and fresh tokens, each a
    token's refill after the one before (the bucket's clock moves instead of
    the test sleeping; each fresh token's answer says the server read up to
    it before the clock moves again)."""
    async with run_server(tmp_path, ws=ws, user_rate=10.0, user_burst=5) as server:
        clock = server.service.limits.users.clock = Clock()
        token = await server.token("alice")
        sock = await ws_connect(server, token)
        assert (await recv_events(sock, 1))[0]["type"] == "hello"
        for i in range(20):
            clock.now += 0.1
            await sock.send(receipt(i))
            clock.now += 0.1
            await sock.send(fresh(token))
            assert (await recv_events(sock, 1))[0]["type"] == "token"
        await publish_to(server, {"users": ["alice"]}, title="still live")
        (note,) = await recv_events(sock, 1)
        assert note["notification"]["title"] == "still live"
        # The same stream, faster: its bucket held four tokens all along (one
        # came back before each message took one); five messages at once
        # take them, and the fifth closes it unread.
        for i in range(4):
            await sock.send(receipt(i))
        await sock.send(fresh(token))
        seen, code, _ = await until_closed(sock)
        assert (seen, code) == ([], CLOSE_RATE_LIMITED)


@WS_PATHS
async def test_requests_and_websocket_messages_share_the_users_budget(tmp_path, ws):
    async with run_server(tmp_path, ws=ws, user_rate=SLOW, user_burst=4) as server:
        token = await server.token("alice")
        sock = await ws_connect(server, token)  # one token
        assert (await recv_events(sock, 1))[0]["type"] == "hello"
        async with me(server, token) as alice:
            for _ in range(2):  # two more
                assert (await alice.get("/v1/me/counts")).status_code == 200
            await sock.send(fresh(token))  # the last one
            assert (await recv_events(sock, 1))[0]["type"] == "token"
            refused(await alice.get("/v1/me/counts"))  # the message took it
            # Over the rate, a message is not read: this fresh token gets no
            # answer, the stream closes.
            await sock.send(fresh(token))
            seen, code, reason = await until_closed(sock)
            assert (seen, code) == ([], CLOSE_RATE_LIMITED) and "rate limit" in reason
        # Another user's budget is their own.
        bob = await ws_connect(server, await server.token("bob"))
        assert (await recv_events(bob, 1))[0]["type"] == "hello"
        await bob.send(fresh(await server.token("bob")))
        assert (await recv_events(bob, 1))[0]["type"] == "token"
        await bob.close()


@WS_PATHS
async def test_messages_sent_before_hello_take_tokens_on_both_paths(tmp_path, ws):
    """A message sent right behind the auth message, while the stream starts,
    counts as one sent after hello."""
    async with run_server(tmp_path, ws=ws, user_rate=SLOW, user_burst=2) as server:
        token = await server.token("alice")
        sock = await ws_connect(server, token)  # the connect, then a receipt: two tokens
        await sock.send(receipt(0))
        assert (await recv_events(sock, 1))[0]["type"] == "hello"
        await sock.send(receipt(1))
        seen, code, _ = await until_closed(sock)
        assert (seen, code) == ([], CLOSE_RATE_LIMITED)


async def test_the_python_subscriber_backs_off_and_resumes_after_a_4005(tmp_path):
    """A Subscriber whose receipts find the user's bucket empty (the user's
    requests spent it) is closed with 4005 in the middle of its stream: it
    backs off, connects again once the bucket has tokens, and misses
    nothing that was published meanwhile."""
    async with run_server(tmp_path, user_rate=SLOW, user_burst=3) as server:
        clock = server.service.limits.users.clock = Clock()
        token = await server.token("carol")
        retries: list[str] = []
        got: list[str] = []
        sub = Subscriber(server.url, token, backoff=Backoff(base=0.05),
                         on_retry=lambda reason, delay: retries.append(reason))

        async def read() -> None:
            async for event in sub:
                if event["type"] == "notification":
                    got.append(event["notification"]["title"])

        async def until(check) -> None:
            async with asyncio.timeout(10):
                while not check():
                    await asyncio.sleep(0.02)

        async with sub:
            reader = asyncio.create_task(read())
            try:
                await until(lambda: sub.connected)  # the connect: one token
                async with me(server, token) as carol:  # two more: none left
                    for _ in range(2):
                        assert (await carol.get("/v1/me/counts")).status_code == 200
                await publish_to(server, {"users": ["carol"]}, title="n1")
                # yielded, then acknowledged a second later: the receipt closes it
                await until(lambda: retries)
                assert retries[0] == f"stream closed (code {CLOSE_RATE_LIMITED})"
                await publish_to(server, {"users": ["carol"]}, title="n2")
                clock.now += 1000.0  # the bucket refills while the subscriber waits
                await until(lambda: len(got) == 2)
            finally:
                reader.cancel()
        assert got == ["n1", "n2"] and sub.reconnects >= 1


async def test_the_defaults_hold_twenty_tabs_opening_at_once(tmp_path):
    """What a session restore of 20 tabs (the most streams a user may hold
    on a node) sends at once, each tab as tidings.js and <tidings-inbox> do:
    its stream, the first page, counts, preferences, a receipt (a message on
    its WebSocket; SSE tabs post it, at the same cost), marking the page
    seen.  The default burst takes it all: every tab is still live after."""
    async with run_server(tmp_path) as server:
        assert (server.service.settings.user_rate, server.service.settings.user_burst) == (
            50.0, 200)
        token = await server.token("alice")

        async def tab(i: int, alice: httpx.AsyncClient):
            ws = await ws_connect(server, token)
            assert (await recv_events(ws, 1))[0]["type"] == "hello"
            for method, route, body in [
                    ("GET", "/v1/me/notifications?limit=20", None), ("GET", "/v1/me/counts", None),
                    ("GET", "/v1/me/preferences", None)]:
                r = await alice.request(method, route, json=body)
                assert r.status_code < 300, (route, r.text)
            await ws.send(receipt(i))
            r = await alice.post("/v1/me/notifications/seen", json={"all": True})
            assert r.status_code < 300, r.text
            return ws

        async with me(server, token) as alice:
            tabs = await asyncio.gather(*(tab(i, alice) for i in range(20)))
        await publish_to(server, {"users": ["alice"]}, title="to every tab")
        for ws in tabs:
            (note,) = await recv_events(ws, 1)
            assert note["notification"]["title"] == "to every tab"
            await ws.close()


@pytest.mark.timeout(60)
async def test_the_user_bucket_is_per_node(tmp_path):
    """docs/security.md: behind a load balancer with N nodes a user can make
    N times the rate; each node holds one user to it."""
    async with two_nodes(tmp_path, user_rate=SLOW, user_burst=2) as (a, b):
        token = await a.token("alice")
        async with me(a, token) as on_a, me(b, token) as on_b:
            for _ in range(2):
                assert (await on_a.get("/v1/me/counts")).status_code == 200
            refused(await on_a.get("/v1/me/counts"))
            for _ in range(2):
                assert (await on_b.get("/v1/me/counts")).status_code == 200
            refused(await on_b.get("/v1/me/counts"))


def test_the_user_limit_is_set_like_the_key_limit(monkeypatch):
    monkeypatch.delenv("TIDINGS_USER_BURST", raising=False)
    monkeypatch.setenv("TIDINGS_USER_RATE", "7.5")
    settings = from_env({"user_rate": 3.0, "user_burst": 30})  # a file, then the variables
    assert (settings.user_rate, settings.user_burst) == (7.5, 30)
    monkeypatch.setenv("TIDINGS_USER_RATE", "0")
    assert from_env().user_rate == 0  # off


def test_a_user_burst_no_bucket_can_honour_is_refused_at_start():
    with pytest.raises(ValueError, match="user_burst"):
        RateLimits(Settings(user_rate=5.0, user_burst=0), None, None)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="user_rate"):
        RateLimits(Settings(user_rate=float("nan")), None, None)  # type: ignore[arg-type]
    RateLimits(Settings(user_rate=0, user_burst=0), None, None)  # type: ignore[arg-type]  # off


# -- frequency caps ---------------------------------------------------------------------


async def publish(http, **fields) -> dict:
    r = await http.post("/v1/notifications", json={"to": {"users": ["alice"]}, **fields})
    assert r.status_code == 202, r.text
    return r.json()


async def test_caps_drop_the_excess_or_aggregate_it_when_grouped(server):
    async with server.http() as http:
        r = await http.put("/v1/caps", json={"categories": {"social": {"per": 3600, "max": 2}}})
        assert r.status_code == 200
        assert (await http.get("/v1/caps")).json() == {
            "categories": {"social": {"per": 3600, "max": 2}}}
        ok = [await publish(http, category="social", title=str(i)) for i in range(2)]
        assert all("rate_limited" not in res and res["recipients"] == 1 for res in ok)

        over = await publish(http, category="social", title="third")
        assert (over["recipients"], over["rate_limited"], over["rate_limit"]) == (
            0, 1, "dropped")
        grouped = await publish(http, category="social", title="fourth", group_key="post:1")
        assert (grouped["recipients"], grouped["rate_limited"], grouped["rate_limit"]) == (
            1, 1, "aggregated")
        # Other categories and other users have their own buckets.
        assert "rate_limited" not in await publish(http, category="orders")
        both = await http.post("/v1/notifications", json={
            "to": {"users": ["alice", "bob"]}, "category": "social", "title": "fifth"})
        assert (both.json()["recipients"], both.json()["rate_limited"]) == (1, 1)
        titles = [i["notification"].get("title") for i in
                  (await http.get("/v1/users/alice/notifications")).json()["items"]]
        assert "third" not in titles and "fifth" not in titles
        bob = (await http.get("/v1/users/bob/notifications")).json()["items"]
        assert [i["notification"]["title"] for i in bob] == ["fifth"]


async def test_a_retried_publish_spends_no_cap_and_says_what_the_first_said(server):
    """A publisher's retry (the same Idempotency-Key) is answered duplicate;
    it must not take the recipient's cap tokens again, or the next real
    notification would be dropped for a notification the user got once."""
    async with server.http() as http:
        await http.put("/v1/caps", json={"categories": {"social": {"per": 3600, "max": 2}}})
        key = {"Idempotency-Key": "like-42"}
        body = {"to": {"users": ["alice"]}, "category": "social", "title": "liked"}
        first = (await http.post("/v1/notifications", json=body, headers=key)).json()
        for _ in range(3):  # a flaky network: the same publish three more times
            again = (await http.post("/v1/notifications", json=body, headers=key)).json()
            assert again == {**first, "status": "duplicate"}
        second = await publish(http, category="social", title="commented")
        assert "rate_limited" not in second and second["recipients"] == 1
        third = await publish(http, category="social", title="followed")
        assert third["rate_limited"] == 1  # the cap is 2: "liked" and "commented"
        titles = [i["notification"].get("title") for i in
                  (await http.get("/v1/users/alice/notifications")).json()["items"]]
        assert titles == ["commented", "liked"]


async def test_caps_apply_to_topics_fanned_out_on_write(server):
    async with server.http() as http:
        await http.post("/v1/topics/guild/subscribers", json={"users": ["alice", "bob"]})
        await http.put("/v1/caps", json={"categories": {"raid": {"per": 60, "max": 1}}})
        await http.post("/v1/notifications", json={"to": {"users": ["alice"]},
                                                   "category": "raid"})
        r = await http.post("/v1/notifications", json={"to": {"topic": "guild"},
                                                       "category": "raid", "title": "go"})
        res = r.json()
        assert (res["recipients"], res["rate_limited"], res["rate_limit"]) == (1, 1, "dropped")
        alice = (await http.get("/v1/users/alice/notifications")).json()["items"]
        assert "go" not in [i["notification"].get("title") for i in alice]


async def test_caps_are_per_app(server):
    _, other_key = await server.new_app()
    async with server.http() as http:
        await http.put("/v1/caps", json={"categories": {"social": {"per": 60, "max": 1}}})
    async with server.http(other_key) as http:
        assert (await http.get("/v1/caps")).json() == {}
        for _ in range(3):
            assert "rate_limited" not in await publish(http, category="social")
