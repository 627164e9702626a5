"""The hot-path cache (Settings.cache): what it keeps, and that switching it
off changes performance only, never answers."""

from __future__ import annotations

import asyncio

import pytest

from tests.conftest import run_server, two_nodes
from tests.gateway.live import recv_events, ws_connect
from tidings.broker.base import Personal
from tidings.core import auth
from tidings.errors import Unauthorized


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize("cache", [True, False])
async def test_answers_are_the_same_with_the_cache_on_or_off(tmp_path, cache):
    async with run_server(tmp_path, cache=cache) as server:
        token = await server.token("ann")
        async with server.http() as http:
            for _ in range(2):  # the second round is served from the cache when on
                r = await http.post("/v1/notifications",
                                    json={"to": {"users": ["ann"]}, "title": "hi"})
                assert r.status_code == 202
                me = {"Authorization": f"Bearer {token}"}
                r = await http.get("/v1/me/counts", headers=me)
                assert r.status_code == 200
            assert r.json()["unread"] == 2
            bad = await http.get("/v1/me/counts", headers={"Authorization": "Bearer x.y.z"})
            assert bad.status_code == 401
            bad_key = await http.get("/v1/users/ann/notifications",
                                     headers={"Authorization": "Bearer tk_nope_nope"})
            assert bad_key.status_code == 401
        service = server.service
        assert service.caching is cache
        assert (len(service._tokens) > 0) is cache
        assert (len(service._keys) > 0) is cache


async def test_a_cached_token_still_expires(tmp_path):
    async with run_server(tmp_path) as server:
        service = server.service
        record = await service.app(server.app)
        token = auth.mint_token(server.app, "bob", record.signing_secret, 60)
        assert await service.authenticate_token(token) == (server.app, "bob")
        assert len(service._tokens) == 1
        # the cache's clock moves past the token's lifetime
        clock = Clock(service._tokens.clock())
        service._tokens.clock = clock
        clock.now += 61
        with pytest.raises(Unauthorized) as err:
            # now verified again, and PyJWT's own clock has not moved: to prove
            # the cache does not answer, the token must also fail verification
            service._apps.put(server.app, type(record)(record.id, record.name,
                                                        "rotated-" * 8, record.created_at))
            await service.authenticate_token(token)
        assert err.value.code == "bad_token"


# -- the per-user cache across two nodes (PostgreSQL + Redis) -------------------


async def _counts(server, token: str) -> int:
    async with server.http() as http:
        r = await http.get("/v1/me/counts", headers={"Authorization": f"Bearer {token}"})
        assert r.status_code == 200
        return r.json()["unread"]


async def _eventually(check, timeout: float = 10.0):
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        value = await check()
        if value or loop.time() > deadline:
            return value
        await asyncio.sleep(0.02)


@pytest.mark.timeout(60)
async def test_counts_are_cached_where_the_user_streams_and_invalidated_across_nodes(tmp_path):
    async with two_nodes(tmp_path) as (a, b):
        token = await a.token("cat")
        ws = await ws_connect(a, token)
        await recv_events(ws, 1)  # hello: the user's channel is live on node a
        cache = a.service.hub.cache
        assert await _counts(a, token) == 0
        hits = cache.hits
        assert await _counts(a, token) == 0
        assert cache.hits == hits + 1  # served from the cache

        # published through the *other* node: node a learns from the broker
        async with b.http() as http:
            r = await http.post("/v1/notifications",
                                json={"to": {"users": ["cat"]}, "title": "elsewhere"})
            assert r.status_code == 202
        await recv_events(ws, 1)  # the notification reached the stream on node a
        assert await _counts(a, token) == 1

        # marked read on node b: node a's cached counts follow
        async with b.http() as http:
            r = await http.post("/v1/me/notifications/read", json={"all": True},
                                headers={"Authorization": f"Bearer {token}"})
            assert r.status_code == 200
        await recv_events(ws, 2)  # state + counts
        assert await _counts(a, token) == 0

        # node b has no stream of this user: it never caches them
        assert await _counts(b, token) == 0
        assert await _counts(b, token) == 0
        assert b.service.hub.cache.hits == 0
        await ws.close()


@pytest.mark.timeout(60)
async def test_the_first_inbox_page_is_cached_and_follows_changes(tmp_path):
    async with run_server(tmp_path) as server:
        token = await server.token("dot")
        ws = await ws_connect(server, token)
        await recv_events(ws, 1)
        me = {"Authorization": f"Bearer {token}"}
        async with server.http() as http:
            async def page() -> list[str]:
                r = await http.get("/v1/me/notifications", headers=me)
                assert r.status_code == 200
                return [i["notification"]["title"] for i in r.json()["items"]]

            assert await page() == []
            for title in ("one", "two"):
                r = await http.post("/v1/notifications",
                                    json={"to": {"users": ["dot"]}, "title": title})
                assert r.status_code == 202
                # read-your-writes on the node that took the publish
                assert (await page())[0] == title
            hits = server.service.hub.cache.hits
            assert await page() == ["two", "one"]
            assert server.service.hub.cache.hits == hits + 1
            # a broadcast (read fan-out) changes every user's first page
            r = await http.post("/v1/notifications", json={"to": {"all": True}, "title": "all"})
            assert r.status_code == 202
            assert await page() == ["all", "two", "one"]
        await ws.close()


def test_users_changed_invalidates_exactly_the_named_live_users():
    from tidings.gateway.cache import UserCache

    cache = UserCache(True)
    for key in [("a", "ann"), ("a", "bob"), ("a", "cy"), ("b", "ann")]:
        cache.live(key)
        cache.put("counts", key, cache.version(key), (1, 1))
    cache.users_changed("a", ["ann", "cy", "nobody"])  # a publish's recipients in app "a"
    assert cache.get("counts", ("a", "ann")) is None
    assert cache.get("counts", ("a", "cy")) is None
    assert cache.get("counts", ("a", "bob")) == (1, 1)
    assert cache.get("counts", ("b", "ann")) == (1, 1)  # same user id, other app
    cache.gone(("a", "bob"))
    assert cache.get("counts", ("a", "bob")) is None
    assert cache.version(("a", "bob")) is None  # not live: not cacheable
    cache.users_changed("c", ["ann"])  # an app with nobody live here


@pytest.mark.timeout(60)
@pytest.mark.parametrize("cache", [True, False])
async def test_devices_on_the_publishing_node_get_each_seq_once_in_order(tmp_path, cache):
    """With the cache on, a node hands what it commits to its own live
    devices at once (Hub.deliver_here) and drops the broker's copy when it
    comes back; publishes to the same user through the other node at the same
    time arrive over the broker, possibly ahead or behind: the device still
    sees every seq once, in order, and the node counts each delivery once."""
    async with two_nodes(tmp_path, cache=cache) as (a, b):
        token = await a.token("eve")
        ws = await ws_connect(a, token)
        await recv_events(ws, 1)  # hello: eve is live on node a

        async def publish(server, title: str) -> None:
            async with server.http() as http:
                r = await http.post("/v1/notifications",
                                    json={"to": {"users": ["eve"]}, "title": title})
                assert r.status_code == 202

        await asyncio.gather(*(publish(a if i % 2 else b, f"n{i}") for i in range(30)))
        await publish(b, "last")
        seen: list[int] = []
        while len(seen) < 31:
            seen += [int(e["cursor"].rsplit(":", 1)[1]) for e in await recv_events(ws, 1)
                     if e["type"] == "notification"]
        assert seen == list(range(1, 32))
        hub = a.service.hub
        assert await _eventually(lambda: _settled(hub))  # the broker's copies came back
        assert hub.metrics.app(a.app).delivered == 31
        await ws.close()


@pytest.mark.timeout(60)
async def test_the_broker_copy_of_a_delivery_made_here_leaves_the_cache_alone(tmp_path):
    """The node that commits a publish invalidates its recipients then; the
    broker's copy that comes back later carries nothing new, so a read
    filled in between is still served from memory.  A copy from another
    node still invalidates (the cross-node test above)."""
    async with two_nodes(tmp_path) as (a, _):
        hub, cache = a.service.hub, a.service.hub.cache
        held: list = []
        on_user = hub._on_user

        def hold(channel: str, msg) -> None:  # the copy waits until the read below
            if type(msg) is Personal:
                held.append((channel, msg))
            else:
                on_user(channel, msg)

        hub._on_user = hold  # subscribed when the stream opens
        token = await a.token("fay")
        ws = await ws_connect(a, token)
        await recv_events(ws, 1)  # hello
        async with a.http() as http:
            r = await http.post("/v1/notifications",
                                json={"to": {"users": ["fay"]}, "title": "here"})
            assert r.status_code == 202
        assert [e["type"] for e in await recv_events(ws, 1)] == ["notification"]
        assert await _counts(a, token) == 1  # read after the commit: filled
        assert await _eventually(lambda: _true(held))  # the broker's copy is back
        filled = cache.get("counts", (a.app, "fay"))
        assert filled is not None
        for channel, msg in held:
            on_user(channel, msg)
        assert not hub._here  # recognised as the copy of a delivery made here
        assert cache.get("counts", (a.app, "fay")) == filled  # still served from memory
        assert await _counts(a, token) == 1
        await ws.close()


async def _true(value) -> bool:
    return bool(value)


async def _settled(hub) -> bool:
    return not hub._here
