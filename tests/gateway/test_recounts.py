"""Counts that change with no event of their own reach every open stream
(tidings/gateway/recount.py, docs/protocol.md "Counts and the badge"): a
retracted feed item, a topic joined or left, an unread notification whose
ttl runs out, an unread one the retention sweep deletes.  Over real
sockets, on both stores, and across two nodes.

Each test works the badge out from what the device received, with the rule
every client follows (``tidings.client.badge``), and compares it with the
server's counts.
"""

from __future__ import annotations

import asyncio
import time

from tests.conftest import run_server, two_nodes
from tests.gateway.live import (
    SSEReader,
    badge,
    publish,
    recv_events,
    sse_until_counts,
    until_counts,
    ws_connect,
)
from tidings.client import Subscriber


async def server_counts(server, token: str) -> dict:
    async with server.http(key=token) as http:
        r = await http.get("/v1/me/counts")
        assert r.status_code == 200, r.text
        return r.json()


# -- a retracted feed item -------------------------------------------------------

async def test_a_retracted_feed_item_sends_its_followers_counts(store):
    """A broadcast and a large topic's item, retracted: each follower's
    streams (a WebSocket and an SSE device) get ``deleted``, then their
    counts without it, read after the retraction."""
    async with store(fanout_threshold=0) as server:
        async with server.http() as http:
            r = await http.put("/v1/topics/news/subscribers/ana")
            assert r.status_code in (200, 201, 204), r.text
        ana, ben = await server.token("ana"), await server.token("ben")
        ws = await ws_connect(server, ana)
        got = await recv_events(ws, 1)
        async with SSEReader(server, ben) as sse:
            seen = [e for _, e in await sse.events(1)]
            (everyone,) = await publish(server, {"all": True}, 1, title="for all")
            (news,) = await publish(server, {"topic": "news"}, 1, title="news")
            got += await recv_events(ws, 2)
            seen += [e for _, e in await sse.events(1)]
            assert badge(got) == {"unread": 2, "unseen": 2}
            assert badge(seen) == {"unread": 1, "unseen": 1}

            async with server.http() as http:
                assert (await http.delete(f"/v1/notifications/{news}")).status_code == 200
            counts = await until_counts(ws, got)
            assert [e["type"] for e in got[-2:]] == ["deleted", "counts"]
            assert counts == {"type": "counts", "unread": 1, "unseen": 1,
                              "at": {"seq": 0, "feed": 2, "rev": 2}}
            assert badge(got) == {"unread": 1, "unseen": 1}

            async with server.http() as http:
                assert (await http.delete(f"/v1/notifications/{everyone}")).status_code == 200
            counts = await until_counts(ws, got)
            assert counts["unread"] == 0 and badge(got) == {"unread": 0, "unseen": 0}
            # ben follows only the broadcast: one deleted for the topic's item
            # (sent to the app's followers here is not his), then his counts
            ben_counts = await sse_until_counts(sse, seen)
            assert ben_counts == {"type": "counts", "unread": 0, "unseen": 0,
                                  "at": {"seq": 0, "feed": 2, "rev": 2}}
            assert badge(seen) == {"unread": 0, "unseen": 0}
        await ws.close()
        for user, token in (("ana", ana), ("ben", ben)):
            truth = await server_counts(server, token)
            assert (truth["unread"], truth["unseen"]) == (0, 0), user


async def test_a_feed_item_retracted_for_many_users_is_counted_in_bounded_batches(store,
                                                                                 monkeypatch):
    """Every device online gets its counts, read ``chunk`` users a query,
    one query at a time (a retraction for 100k users must not send 100k
    queries at once)."""
    async with store() as server:
        server.service.hub.recounts.chunk = 3
        users = [f"u{i}" for i in range(7)]
        devices = [await ws_connect(server, await server.token(u)) for u in users]
        for ws in devices:
            await recv_events(ws, 1)
        (nid,) = await publish(server, {"all": True}, 1)
        for ws in devices:
            await recv_events(ws, 1)
        sizes: list[int] = []
        in_flight = peak = 0
        real = server.service.store.counts_many

        async def counts_many(app, who, now, *muted):
            nonlocal in_flight, peak
            in_flight += 1
            peak = max(peak, in_flight)
            sizes.append(len(who))
            try:
                await asyncio.sleep(0.01)  # long enough for a second one to overlap
                return await real(app, who, now, *muted)
            finally:
                in_flight -= 1

        monkeypatch.setattr(server.service.store, "counts_many", counts_many)
        async with server.http() as http:
            assert (await http.delete(f"/v1/notifications/{nid}")).status_code == 200
        for ws in devices:
            got: list[dict] = []
            counts = await until_counts(ws, got)
            assert got[0] == {"type": "deleted", "id": nid}
            assert (counts["unread"], counts["at"]["feed"]) == (0, 1)
            await ws.close()
        assert sorted(sizes, reverse=True) == [3, 3, 1] and peak == 1


async def test_an_expired_feed_item_retracted_reads_no_counts(tmp_path, monkeypatch):
    async with run_server(tmp_path) as server:
        ws = await ws_connect(server, await server.token("eve"))
        await recv_events(ws, 1)
        (nid,) = await publish(server, {"all": True}, 1, ttl=1)
        await recv_events(ws, 1)
        got: list[dict] = []
        assert (await until_counts(ws, got, timeout=5))["unread"] == 0  # it ran out
        recounts = server.service.hub.recounts
        read = recounts.users_read
        async with server.http() as http:
            assert (await http.delete(f"/v1/notifications/{nid}")).status_code == 200
        assert await recv_events(ws, 1) == [{"type": "deleted", "id": nid}]
        await asyncio.sleep(0.2)
        assert recounts.users_read == read  # counted by nobody: nothing to read
        await ws.close()


# -- topics joined and left -------------------------------------------------------

async def test_joining_and_leaving_a_large_topic_sends_counts(store):
    async with store(fanout_threshold=0) as server:
        async with server.http() as http:
            assert (await http.put("/v1/topics/big/subscribers/other")).status_code < 300
        await publish(server, {"topic": "big"}, 2)  # two feed items, before cy joins
        cy = await server.token("cy")
        ws = await ws_connect(server, cy)
        got = await recv_events(ws, 1)
        assert got[0]["counts"]["unread"] == 0
        async with server.http() as http:
            assert (await http.put("/v1/topics/big/subscribers/cy")).status_code < 300
        counts = await until_counts(ws, got)
        assert counts == {"type": "counts", "unread": 2, "unseen": 2,
                          "at": {"seq": 0, "feed": 2, "rev": 1}}
        await publish(server, {"topic": "big"}, 1)  # and the stream follows it live
        got += await recv_events(ws, 1)
        assert got[-1]["feed"] == 3 and badge(got) == {"unread": 3, "unseen": 3}
        async with server.http() as http:
            r = await http.post("/v1/topics/big/subscribers",
                                json={"action": "remove", "users": ["cy"]})
            assert r.status_code < 300, r.text
        counts = await until_counts(ws, got)
        assert (counts["unread"], counts["unseen"]) == (0, 0)
        assert badge(got) == {"unread": 0, "unseen": 0}
        truth = await server_counts(server, cy)
        assert (truth["unread"], truth["unseen"]) == (0, 0)
        await ws.close()


# -- ttls running out -------------------------------------------------------------

async def test_an_unread_notification_that_expires_sends_counts(store):
    """Arrived live (personal, then a broadcast), or counted in hello: as
    each one runs out, the device gets counts without it, read after it
    expired, and no sooner."""
    async with store() as server:
        token = await server.token("dee")
        await publish(server, {"users": ["dee"]}, 1, title="stays")
        ws = await ws_connect(server, token)
        got = await recv_events(ws, 1)
        # (an expiry writes nothing: the revision stays)
        for to, at in (({"users": ["dee"]}, {"seq": 2, "feed": 0, "rev": 0}),
                       ({"all": True}, {"seq": 2, "feed": 1, "rev": 0})):
            await publish(server, to, 1, title="live", ttl=1)
            got += await recv_events(ws, 1)
            sent = time.time()
            assert badge(got) == {"unread": 2, "unseen": 2}
            counts = await until_counts(ws, got, timeout=5)
            assert time.time() - sent > 0.5  # when it expired, not before
            assert (counts["unread"], counts["at"]) == (1, at)
            assert badge(got) == {"unread": 1, "unseen": 1}
        await ws.close()
        await publish(server, {"users": ["dee"]}, 1, title="counted in hello", ttl=1)
        ws = await ws_connect(server, token)
        got = await recv_events(ws, 1)
        assert got[0]["counts"]["unread"] == 2
        counts = await until_counts(ws, got, timeout=5)
        assert (counts["unread"], counts["at"]) == (1, {"seq": 3, "feed": 1, "rev": 0})
        assert (await server_counts(server, token))["unread"] == 1
        await ws.close()


async def test_users_without_a_ttl_cost_no_timer(tmp_path):
    async with run_server(tmp_path) as server:
        ws = await ws_connect(server, await server.token("fay"))
        await recv_events(ws, 1)
        await publish(server, {"users": ["fay"]}, 3)
        await publish(server, {"all": True}, 1)
        await recv_events(ws, 4)
        async with server.http(key=await server.token("fay")) as http:
            await http.get("/v1/me/counts")
        hub = server.service.hub
        assert len(hub.expiries) == 0 and hub.recounts.users_read == 0
        await ws.close()


async def test_a_group_entry_retracted_down_to_a_sooner_expiry_sends_counts(store):
    """The entry shows the member left, and takes its expiry: sooner than
    the one the device counted it with."""
    async with store() as server:
        token = await server.token("gus")
        await publish(server, {"users": ["gus"]}, 1, group_key="likes", ttl=2)
        (newer,) = await publish(server, {"users": ["gus"]}, 1, group_key="likes", ttl=3600)
        ws = await ws_connect(server, token)
        got = await recv_events(ws, 1)  # hello counts the entry: it expires in an hour
        assert got[0]["counts"]["unread"] == 1
        async with server.http() as http:
            assert (await http.delete(f"/v1/notifications/{newer}")).status_code == 200
        got += await recv_events(ws, 2)  # updated (the entry, older member), deleted
        assert [e["type"] for e in got[-2:]] == ["updated", "deleted"]
        counts = await until_counts(ws, got, timeout=5)  # the older member ran out
        assert counts["unread"] == 0 and badge(got) == {"unread": 0, "unseen": 0}
        await ws.close()


# -- the retention sweep -----------------------------------------------------------

async def mark_read(server, token: str, ids: list[str]) -> None:
    async with server.http(key=token) as http:
        r = await http.post("/v1/me/notifications/read", json={"ids": ids})
        assert r.status_code == 200, r.text


async def past_retention(server) -> float:
    """A cutoff after everything published so far: a sweep at it deletes
    all of that (the sweep's ``retention_days`` ago, now)."""
    cutoff = time.time()
    await asyncio.sleep(0.01)  # what is published next is strictly younger
    return cutoff


async def test_the_retention_sweep_sends_counts_without_the_unread_entries_it_deleted(store):
    """An unread entry and a read one go: the device gets counts without
    the unread one (the read one was not counted); a sweep that deletes only
    read entries reads no counts at all."""
    async with store() as server:
        token = await server.token("ida")
        old_unread, old_read = await publish(server, {"users": ["ida"]}, 2)
        await mark_read(server, token, [old_read])
        cutoff = await past_retention(server)
        (kept,) = await publish(server, {"users": ["ida"]}, 1, title="kept")
        ws = await ws_connect(server, token)
        got = await recv_events(ws, 1)
        assert got[0]["counts"]["unread"] == 2

        await server.service.prune(cutoff)
        counts = await until_counts(ws, got)
        assert counts == {"type": "counts", "unread": 1, "unseen": 1,
                          "at": {"seq": 3, "feed": 0, "rev": 2}}
        assert badge(got) == {"unread": 1, "unseen": 1}
        assert (await server_counts(server, token))["unread"] == 1

        await mark_read(server, token, [kept])
        await recv_events(ws, 2)  # its state, its counts
        recounts = server.service.hub.recounts
        read = recounts.users_read
        await server.service.prune(await past_retention(server))  # a read entry only
        await asyncio.sleep(0.2)
        assert recounts.users_read == read  # nothing counted lower: nothing read
        assert (await server_counts(server, token))["unread"] == 0
        await ws.close()


async def test_the_retention_sweep_sends_counts_without_the_feed_items_it_deleted(store):
    """A broadcast and a large topic's item go: each follower's streams
    get counts without them; one who had read the broadcast is counted
    again too, and keeps the number they had."""
    async with store(fanout_threshold=0) as server:
        async with server.http() as http:
            assert (await http.put("/v1/topics/news/subscribers/ana")).status_code < 300
        ana, ben = await server.token("ana"), await server.token("ben")
        (everyone,) = await publish(server, {"all": True}, 1, title="for all")
        await publish(server, {"topic": "news"}, 1, title="news")
        await mark_read(server, ben, [everyone])
        cutoff = await past_retention(server)
        await publish(server, {"all": True}, 1, title="kept")
        ws = await ws_connect(server, ana)
        got = await recv_events(ws, 1)
        assert got[0]["counts"]["unread"] == 3
        async with SSEReader(server, ben) as sse:
            seen = [e for _, e in await sse.events(1)]
            assert seen[0]["counts"]["unread"] == 1

            await server.service.prune(cutoff)
            counts = await until_counts(ws, got)
            assert counts == {"type": "counts", "unread": 1, "unseen": 1,
                              "at": {"seq": 0, "feed": 3, "rev": 2}}
            assert badge(got) == {"unread": 1, "unseen": 1}
            ben_counts = await sse_until_counts(sse, seen)
            assert (ben_counts["unread"], ben_counts["unseen"]) == (1, 1)
        await ws.close()
        for token in (ana, ben):
            assert (await server_counts(server, token))["unread"] == 1


async def test_a_sweep_past_the_named_users_counts_every_stream_of_the_app(store,
                                                                            monkeypatch):
    """More users lost an unread entry than a sweep names (RECOUNT_MAX):
    the store names their app, and every stream of it is counted again."""
    from tidings.store.postgres import publish as pg_publish
    from tidings.store.sqlite import publish as sqlite_publish

    for module in (sqlite_publish, pg_publish):
        monkeypatch.setattr(module, "RECOUNT_MAX", 1)
    async with store() as server:
        users = ["jo", "kai", "lu"]
        await publish(server, {"users": users[:2]}, 1)
        cutoff = await past_retention(server)
        devices = [await ws_connect(server, await server.token(u)) for u in users]
        for ws in devices:
            await recv_events(ws, 1)
        await server.service.prune(cutoff)
        for ws in devices:  # lu lost nothing: counted again all the same
            assert (await until_counts(ws, []))["unread"] == 0
            await ws.close()


# -- across nodes ------------------------------------------------------------------

async def test_recounts_reach_devices_on_another_node(tmp_path):
    """Publishes, retractions and subscriptions on node a, the device on
    node b: each change crosses the broker, and b reads the counts."""
    async with two_nodes(tmp_path, fanout_threshold=0) as (a, b):
        token = await b.token("hal")
        ws = await ws_connect(b, token)
        got = await recv_events(ws, 1)
        (nid,) = await publish(a, {"all": True}, 1, ttl=3600)
        got += await recv_events(ws, 1)
        async with a.http() as http:
            assert (await http.delete(f"/v1/notifications/{nid}")).status_code == 200
        assert (await until_counts(ws, got))["unread"] == 0
        async with a.http() as http:
            assert (await http.put("/v1/topics/t/subscribers/other")).status_code < 300
            await publish(a, {"topic": "t"}, 1)  # a feed item: above the threshold
            assert (await http.put("/v1/topics/t/subscribers/hal")).status_code < 300
        assert (await until_counts(ws, got))["unread"] == 1
        await publish(a, {"users": ["hal"]}, 1, ttl=1)
        got += await recv_events(ws, 1)
        assert badge(got) == {"unread": 2, "unseen": 2}
        assert (await until_counts(ws, got, timeout=5))["unread"] == 1
        assert badge(got) == {"unread": 1, "unseen": 1}
        await ws.close()


async def test_a_retention_sweep_on_one_node_sends_counts_on_another(tmp_path):
    """The sweep runs on node a (every node runs one): the device on node
    b loses a personal entry and a broadcast, and gets its counts."""
    async with two_nodes(tmp_path) as (a, b):
        await publish(a, {"users": ["max"]}, 1)
        await publish(a, {"all": True}, 1)
        cutoff = await past_retention(a)
        await publish(a, {"users": ["max"]}, 1, title="kept")
        ws = await ws_connect(b, await b.token("max"))
        got = await recv_events(ws, 1)
        assert got[0]["counts"]["unread"] == 3
        await a.service.prune(cutoff)
        counts = await until_counts(ws, got)  # read after the sweep's deletes
        assert (counts["unread"], counts["at"]) == (1, {"seq": 2, "feed": 1, "rev": 1})
        await ws.close()


async def test_the_python_subscribers_badge_follows_them(tmp_path):
    """The SDK takes these counts by the rule, as it takes any (tidings.client.badge)."""
    async with run_server(tmp_path) as server:
        token = await server.token("kit")
        sub = Subscriber(server.url, token, receipts=False)
        badges: list[dict | None] = []

        async def listen():
            async for ev in sub:
                if ev["type"] in ("hello", "notification", "counts"):
                    badges.append(sub.counts)

        listening = asyncio.create_task(listen())
        try:
            while not badges:
                await asyncio.sleep(0.02)
            await publish(server, {"users": ["kit"]}, 1, ttl=1)
            (nid,) = await publish(server, {"all": True}, 1)
            async with asyncio.timeout(5):
                while {"unread": 2, "unseen": 2} not in badges:
                    await asyncio.sleep(0.02)
                while badges[-1] != {"unread": 1, "unseen": 1}:  # the first ran out
                    await asyncio.sleep(0.02)
            async with server.http() as http:
                assert (await http.delete(f"/v1/notifications/{nid}")).status_code == 200
            async with asyncio.timeout(5):
                while badges[-1] != {"unread": 0, "unseen": 0}:
                    await asyncio.sleep(0.02)
        finally:
            await sub.close()
            await listening
