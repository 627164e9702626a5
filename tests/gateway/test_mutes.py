"""In-app mutes hold for feed items (docs/delivery.md, "In-app mutes and feed
items"): a broadcast or a large topic's item of a category the user switched
off in-app is in none of their inbox pages, counts, replays or live streams,
and is back, past ones included, once they switch it on again.  Over real
sockets (WebSocket and SSE), on both stores, and across two nodes.

Each test works the badge out from what the device received, with the rule
every client follows (``tidings.client.badge``), and compares it with the
server's counts.
"""

from __future__ import annotations

import asyncio

from tests.conftest import two_nodes
from tests.gateway.live import (
    Pause,
    SSEReader,
    badge,
    delivery,
    publish,
    recv_events,
    sse_until_counts,
    until_counts,
    ws_connect,
)


async def switch(server, token: str, category: str, on: bool, *, put: bool = False) -> None:
    """The user switches ``category`` in-app on or off, with a PATCH (or a PUT)."""
    body = {"categories": {category: {"in_app": on}}}
    async with server.http(key=token) as http:
        r = await (http.put if put else http.patch)("/v1/me/preferences", json=body)
        assert r.status_code in (200, 204), r.text


async def truth(server, token: str) -> dict:
    """The user's counts, as GET /v1/me/counts answers."""
    async with server.http(key=token) as http:
        r = await http.get("/v1/me/counts")
        assert r.status_code == 200, r.text
        return {k: r.json()[k] for k in ("unread", "unseen")}


async def page(server, token: str) -> list[str]:
    async with server.http(key=token) as http:
        r = await http.get("/v1/me/notifications")
        assert r.status_code == 200, r.text
        return [item["id"] for item in r.json()["items"]]


async def server_page(server, user: str) -> list[str]:
    async with server.http() as http:
        r = await http.get(f"/v1/users/{user}/notifications")
        assert r.status_code == 200, r.text
        return [item["id"] for item in r.json()["items"]]


def ids(events: list[dict]) -> list[str]:
    return [e["notification"]["id"] for e in events if e["type"] == "notification"]


async def test_a_muted_feed_item_is_in_no_page_count_replay_or_stream(store):
    """Mia switched ``promo`` off in-app, Ned did not.  Broadcasts and a large
    topic's items of ``promo``, published before and while they are online:
    Mia's page (hers and the server API's), counts, replay and live streams
    (WebSocket and SSE) hold none of them, and her badge stays what the server
    counts; Ned gets every one."""
    async with store(fanout_threshold=0) as server:
        async with server.http() as http:
            for user in ("mia", "ned"):
                assert (await http.put(f"/v1/topics/big/subscribers/{user}")).status_code < 300
        mia, ned = await server.token("mia"), await server.token("ned")
        await switch(server, mia, "promo", False)
        past = [*await publish(server, {"all": True}, 1, category="promo"),
                *await publish(server, {"topic": "big"}, 1, category="promo")]
        (plain,) = await publish(server, {"all": True}, 1, category="news")
        assert await page(server, mia) == [plain]
        assert await server_page(server, "mia") == [plain]
        assert await page(server, ned) == [plain, *reversed(past)]
        assert await truth(server, mia) == {"unread": 1, "unseen": 1}
        assert await truth(server, ned) == {"unread": 3, "unseen": 3}

        ws = await ws_connect(server, mia)
        other = await ws_connect(server, ned)
        got, theirs = await recv_events(ws, 1), await recv_events(other, 1)
        assert got[0]["counts"] == {"unread": 1, "unseen": 1, "at": {"seq": 0, "feed": 3, "rev": 2}}
        assert theirs[0]["counts"]["unread"] == 3
        async with SSEReader(server, mia) as sse:
            seen = [e for _, e in await sse.events(1)]
            assert seen[0]["counts"] == got[0]["counts"]
            live = [*await publish(server, {"all": True}, 1, category="promo"),
                    *await publish(server, {"topic": "big"}, 1, category="promo")]
            (marker,) = await publish(server, {"topic": "big"}, 1, category="news")
            # the muted ones were skipped: the next event is the one after them
            got += await recv_events(ws, 1)
            seen += [e for _, e in await sse.events(1)]
            theirs += await recv_events(other, 3)
        assert ids(got) == ids(seen) == [marker]
        assert got[-1]["feed"] == 6
        assert ids(theirs) == [*live, marker]
        assert badge(got) == badge(seen) == await truth(server, mia) == {"unread": 2, "unseen": 2}
        assert badge(theirs) == await truth(server, ned) == {"unread": 6, "unseen": 6}
        await ws.close()
        await other.close()

        # a replay from the start brings only what she sees
        ws = await ws_connect(server, mia, cursor=got[0]["cursor"].split(":")[0] + ":0:0")
        replayed = await recv_events(ws, 4)
        assert [e["type"] for e in replayed] == ["hello", "notification", "notification",
                                                 "recovered"]
        assert ids(replayed) == [plain, marker]
        assert badge(replayed[:1]) == {"unread": 2, "unseen": 2}
        await ws.close()
        async with SSEReader(server, mia, cursor=got[0]["cursor"].split(":")[0] + ":0:0") as sse:
            replayed = [e for _, e in await sse.events(4)]
            assert ids(replayed) == [plain, marker]
        assert await page(server, mia) == [marker, plain]


async def test_a_muted_feed_item_counts_as_muted_not_delivered(store):
    """A broadcast and a large topic's item of ``promo`` reach Ann and Ned
    live; Mia muted ``promo``, and her two devices skip both: each counts
    two users delivered and one muted (once, whatever her devices), in
    ``delivery`` and in /metrics."""
    async with store(fanout_threshold=0) as server:
        async with server.http() as http:
            r = await http.post("/v1/topics/big/subscribers",
                                json={"users": ["ann", "mia", "ned"]})
            assert r.status_code == 200, r.text
        mia = await server.token("mia")
        await switch(server, mia, "promo", False)
        streams = [await ws_connect(server, await server.token(user))
                   for user in ("ann", "ned")]
        theirs = [await ws_connect(server, mia), await ws_connect(server, mia)]
        for ws in (*streams, *theirs):
            await recv_events(ws, 1)
        items = [*await publish(server, {"all": True}, 1, category="promo"),
                 *await publish(server, {"topic": "big"}, 1, category="promo")]
        for ws in streams:  # Mia's streams skipped them in the same pass
            assert ids(await recv_events(ws, 2)) == items
        for nid in items:
            assert (await delivery(server, nid))["in_app"] == {
                "delivered": 2, "muted": 1, "seen": 0, "read": 0,
                "acknowledged": 0, "displayed": 0}
        async with server.http() as http:
            text = (await http.get("/metrics")).text
        for field, n in (("delivered", 4), ("muted", 2)):
            assert (f'tidings_delivery_tracking_total{{app="testapp",channel="in_app",'
                    f'field="{field}"}} {n}.0') in text
        for ws in (*streams, *theirs):
            await ws.close()


async def test_muting_and_unmuting_reach_open_streams_with_exact_counts(store):
    """Switched off while her devices are open: each gets counts without the
    category's unread items, read after the change, and no live item of it
    from then on.  Switched on again: counts with every past item of it
    (they are read at read time, so her page shows them again), and live
    items of it arrive again."""
    async with store(fanout_threshold=0) as server:
        mia = await server.token("mia")
        old = await publish(server, {"all": True}, 2, category="promo")
        ws = await ws_connect(server, mia)
        got = await recv_events(ws, 1)
        assert got[0]["counts"]["unread"] == 2
        async with SSEReader(server, mia) as sse:
            seen = [e for _, e in await sse.events(1)]
            # e-mail switched off (an unsubscribe link, say) mutes nothing in-app:
            # no counts read again
            async with server.http(key=mia) as http:
                r = await http.patch("/v1/me/preferences",
                                     json={"categories": {"promo": {"email": False}}})
                assert r.status_code == 200, r.text
            assert server.service.hub.recounts.users_read == 0
            await switch(server, mia, "promo", False)
            counts = await until_counts(ws, got)
            assert counts == {"type": "counts", "unread": 0, "unseen": 0,
                              "at": {"seq": 0, "feed": 2, "rev": 2}}
            assert (await sse_until_counts(sse, seen))["unread"] == 0
            assert badge(got) == badge(seen) == await truth(server, mia)
            assert await page(server, mia) == []

            muted = await publish(server, {"all": True}, 1, category="promo")
            (news,) = await publish(server, {"all": True}, 1, category="news")
            got += await recv_events(ws, 1)
            seen += [e for _, e in await sse.events(1)]
            assert ids(got) == ids(seen) == [news]
            assert badge(got) == badge(seen) == await truth(server, mia) == {
                "unread": 1, "unseen": 1}

            # a PUT that leaves promo out switches it on again
            await switch(server, mia, "other", True, put=True)
            counts = await until_counts(ws, got)
            assert (counts["unread"], counts["at"]) == (4, {"seq": 0, "feed": 4, "rev": 3})
            assert (await sse_until_counts(sse, seen))["unread"] == 4
            assert badge(got) == badge(seen) == await truth(server, mia) == {
                "unread": 4, "unseen": 4}
            assert await page(server, mia) == [news, *muted, *reversed(old)]
            (again,) = await publish(server, {"all": True}, 1, category="promo")
            got += await recv_events(ws, 1)
            seen += [e for _, e in await sse.events(1)]
            assert ids(got)[-1] == ids(seen)[-1] == again
            assert badge(got) == badge(seen) == {"unread": 5, "unseen": 5}
        await ws.close()


async def test_counts_read_as_an_unmute_commits_do_not_outlast_its_recount(store, monkeypatch):
    """A mark-read's counts are read just after Mia switched a category on
    again, before her streams read her mutes anew: they hold the category's
    items, as the unmute's own counts (same position, same revision) do, so
    whichever arrives last, her badge is what the server counts."""
    async with store(fanout_threshold=0) as server:
        mia = await server.token("mia")
        await switch(server, mia, "promo", False)
        await publish(server, {"all": True}, 1, category="promo")
        mine = await publish(server, {"users": ["mia"]}, 2)
        ws = await ws_connect(server, mia)
        got = await recv_events(ws, 1)
        assert got[0]["counts"]["unread"] == 2
        counts = Pause(monkeypatch, server.service.store, "counts", "mia", before=True)
        async with server.http(key=mia) as http:
            marking = asyncio.create_task(
                http.post("/v1/me/notifications/read", json={"ids": [mine[0]]}))
            await counts.reached()  # marked read; its counts not read yet
            try:
                await switch(server, mia, "promo", True)
                recounted = await until_counts(ws, got)  # the unmute's counts
            finally:
                counts.release()
            answer = (await marking).json()
        got += await recv_events(ws, 2)
        await ws.close()
    assert [e["type"] for e in got] == ["hello", "counts", "state", "counts"]
    assert recounted["unread"] == 2
    assert got[-1] == answer["counts"] | {"type": "counts"} == recounted
    assert badge(got) == {"unread": 2, "unseen": 2}


async def test_mutes_changed_on_one_node_hold_on_the_other(tmp_path):
    """The change is made through node a, the devices are on node b: b reads
    the mutes again (its streams hold them) and the counts, and skips the
    category's live items until it is switched on again."""
    async with two_nodes(tmp_path, fanout_threshold=0) as (a, b):
        mia = await b.token("mia")
        ws = await ws_connect(b, mia)
        got = await recv_events(ws, 1)
        async with SSEReader(b, mia) as sse:
            seen = [e for _, e in await sse.events(1)]
            await publish(a, {"all": True}, 1, category="promo")
            got += await recv_events(ws, 1)
            seen += [e for _, e in await sse.events(1)]
            await switch(a, mia, "promo", False)
            assert (await until_counts(ws, got))["unread"] == 0
            assert (await sse_until_counts(sse, seen))["unread"] == 0
            await publish(a, {"all": True}, 1, category="promo")
            (news,) = await publish(a, {"all": True}, 1, category="news")
            got += await recv_events(ws, 1)
            seen += [e for _, e in await sse.events(1)]
            assert ids(got)[-1] == ids(seen)[-1] == news
            assert badge(got) == badge(seen) == await truth(b, mia) == await truth(a, mia) == {
                "unread": 1, "unseen": 1}
            assert await page(b, mia) == await page(a, mia) == [news]

            await switch(a, mia, "promo", True)
            assert (await until_counts(ws, got))["unread"] == 3
            assert (await sse_until_counts(sse, seen))["unread"] == 3
            (promo,) = await publish(a, {"all": True}, 1, category="promo")
            got += await recv_events(ws, 1)
            seen += [e for _, e in await sse.events(1)]
            assert ids(got)[-1] == ids(seen)[-1] == promo
            assert badge(got) == badge(seen) == await truth(b, mia) == {
                "unread": 4, "unseen": 4}
        await ws.close()


async def test_a_muted_feed_item_arriving_as_a_stream_starts_is_skipped(store, monkeypatch):
    """A broadcast Mia muted arrives while her stream starts, after its read
    of the stream head (and her mutes) but before the answer: it is held with
    its category and skipped as it goes out, like one arriving later; the
    next one she sees."""
    async with store(fanout_threshold=0) as server:
        mia = await server.token("mia")
        await switch(server, mia, "promo", False)
        real, gate, waiting = server.service.store.stream_head, asyncio.Event(), asyncio.Event()

        async def slow_head(*args, **kwargs):
            head = await real(*args, **kwargs)  # read before the publishes below
            waiting.set()
            await gate.wait()
            return head

        monkeypatch.setattr(server.service.store, "stream_head", slow_head)
        ws = await ws_connect(server, mia)
        await asyncio.wait_for(waiting.wait(), 5)
        await publish(server, {"all": True}, 1, category="promo")  # held, mutes unknown yet
        (news,) = await publish(server, {"all": True}, 1, category="news")
        await asyncio.sleep(0.2)  # both reached the stream, held
        gate.set()
        hello, *live = await recv_events(ws, 2)
        assert hello["type"] == "hello"
        assert ids(live) == [news]
        assert badge([hello, *live]) == await truth(server, mia)
        await ws.close()


async def test_a_correction_moves_no_category_and_no_counts(store):
    """A PATCH cannot move a notification between a muted category and
    another (``category`` is refused), so what it corrects leaves every
    user's counts, revision included, as they were."""
    async with store(fanout_threshold=0) as server:
        mia = await server.token("mia")
        await switch(server, mia, "promo", False)
        (promo,) = await publish(server, {"all": True}, 1, category="promo")
        before = await truth_at(server, mia)
        async with server.http() as http:
            r = await http.patch(f"/v1/notifications/{promo}", json={"category": "news"})
            assert (r.status_code, r.json()["error"]["field"]) == (422, "category"), r.text
            r = await http.patch(f"/v1/notifications/{promo}", json={"title": "fixed"})
            assert r.status_code == 200, r.text
        assert await truth_at(server, mia) == before == {
            "unread": 0, "unseen": 0, "at": {"seq": 0, "feed": 1, "rev": 1}}


async def truth_at(server, token: str) -> dict:
    async with server.http(key=token) as http:
        r = await http.get("/v1/me/counts")
        assert r.status_code == 200, r.text
        return r.json()
