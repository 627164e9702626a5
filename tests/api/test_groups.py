"""Aggregation by group_key over HTTP and live streams (docs/design.md §3).

A notification whose group_key matches an unread entry of the user updates
that entry: in the inbox one row with a ``group`` object, live one
``notification`` event carrying the new notification (a new id, so SDKs
that drop duplicates by id show it) and the ``group``, at the user's next
seq (so a device that missed it replays it).
"""

from __future__ import annotations

import asyncio
import time

from tests.gateway.live import SSEReader, publish, recv_events, ws_connect
from tidings.client import Subscriber


def like(actor: str, post: int = 1) -> dict:
    return {"group_key": f"post:{post}:likes", "actor": actor, "title": f"{actor} liked your post"}


async def test_the_inbox_lists_one_entry_per_group(server):
    token = await server.token("alice")
    first = (await publish(server, {"users": ["alice"]}, **like("user_1")))[0]
    await publish(server, {"users": ["alice"]}, **like("user_2"))
    last = (await publish(server, {"users": ["alice"]}, **like("user_1")))[0]
    other = (await publish(server, {"users": ["alice"]}, **like("user_3", post=2)))[0]
    plain = (await publish(server, {"users": ["alice"]}))[0]
    async with server.http(token) as http:
        page = (await http.get("/v1/me/notifications")).json()
        counts = (await http.get("/v1/me/counts")).json()
    items = page["items"]
    assert [i["id"] for i in items] == [plain, other, last]
    assert "group" not in items[0]
    group = items[2]["group"]
    assert group == {"id": first, "key": "post:1:likes", "count": 3, "actor_count": 2,
                     "actors": ["user_1", "user_2"], "latest_at": group["latest_at"],
                     "first_id": first}
    assert items[2]["notification"]["id"] == last  # the row shows the newest
    assert items[2]["notification"]["title"] == "user_1 liked your post"
    assert items[1]["group"]["count"] == 1
    # a group is one unread entry (its last update took seq 3; then 4 and 5)
    assert counts == {"unread": 3, "unseen": 3, "at": {"seq": 5, "feed": 0, "rev": 0}}


async def test_members_of_a_group_and_reading_it(server):
    token = await server.token("alice")
    ids = [(await publish(server, {"users": ["alice", "bob"]}, **like(f"user_{i}")))[0]
           for i in range(4)]
    async with server.http(token) as http:
        r = await http.get(f"/v1/me/notifications/{ids[0]}/group")
        assert r.status_code == 200, r.text
        doc = r.json()
        assert (doc["id"], doc["state"], doc["group"]["count"]) == (ids[3], "unseen", 4)
        assert [m["id"] for m in doc["items"]] == ids[::-1]
        assert doc["next_before"] is None
        r = await http.get(f"/v1/me/notifications/{ids[3]}/group",
                           params={"limit": 2, "before": ids[3]})
        assert [m["id"] for m in r.json()["items"]] == [ids[2], ids[1]]
        assert r.json()["next_before"] == ids[1]
        # marking an older member (a device that showed it) reads the group
        r = await http.post("/v1/me/notifications/read", json={"ids": [ids[1]]})
        assert r.json() == {"changed": 1, "counts": {
            "unread": 0, "unseen": 0, "at": {"seq": 4, "feed": 0, "rev": 1}}}
    # the server API sees the same; bob's group is bob's
    async with server.http() as http:
        r = await http.get(f"/v1/users/bob/notifications/{ids[2]}/group")
        assert (r.json()["state"], r.json()["group"]["count"]) == ("unseen", 4)
        r = await http.get(f"/v1/notifications/{ids[0]}")
        assert r.json()["stats"]["read"] == 1 and r.json()["stats"]["unseen"] == 1


async def test_group_lookups_with_bad_or_foreign_ids_are_4xx(server):
    mine = (await publish(server, {"users": ["alice"]}, **like("user_1")))[0]
    plain = (await publish(server, {"users": ["alice"]}))[0]
    token = await server.token("alice")
    mallory = await server.token("mallory")
    async with server.http(token) as http:
        for nid, status in [("01HZZZZZZZZZZZZZZZZZZZZZZZ", 404), ("nope", 404), (plain, 404)]:
            r = await http.get(f"/v1/me/notifications/{nid}/group")
            assert r.status_code == status, (nid, r.text)
            assert r.json()["error"]["code"] == "not_found"
        r = await http.get(f"/v1/me/notifications/{mine}/group", params={"before": "x"})
        assert (r.status_code, r.json()["error"]["field"]) == (422, "before")
        r = await http.get(f"/v1/me/notifications/{mine}/group", params={"limit": "0"})
        assert r.status_code == 422
    async with server.http(mallory) as http:
        assert (await http.get(f"/v1/me/notifications/{mine}/group")).status_code == 404
    other_app, key = await server.new_app()
    async with server.http(key) as http:
        r = await http.get(f"/v1/users/alice/notifications/{mine}/group")
        assert r.status_code == 404


async def test_a_group_update_arrives_live_with_a_new_id_and_replays(any_ws_server):
    server = any_ws_server
    token = await server.token("alice")
    ws = await ws_connect(server, token)
    (hello,) = await recv_events(ws, 1)
    first = (await publish(server, {"users": ["alice"]}, **like("user_1")))[0]
    (e1,) = await recv_events(ws, 1)
    assert (e1["notification"]["id"], e1["group"]["count"], e1["group"]["id"]) == (first, 1, first)
    cursor_after_first = e1["cursor"]
    second = (await publish(server, {"users": ["alice"]}, **like("user_2")))[0]
    (e2,) = await recv_events(ws, 1)
    assert e2["type"] == "notification"
    assert e2["notification"]["id"] == second != first  # new id: SDKs do not drop it
    assert e2["cursor"].endswith(":2")  # the entry moved to the next seq
    g = e2["group"]
    assert (g["id"], g["first_id"], g["count"], g["actors"]) == (
        first, first, 2, ["user_2", "user_1"])
    await ws.close()
    # a device that saw only the first event replays the update
    ws = await ws_connect(server, token, cursor=cursor_after_first)
    hello, replayed, recovered = await recv_events(ws, 3)
    assert (replayed["notification"]["id"], replayed["cursor"]) == (second, e2["cursor"])
    assert replayed["group"] == g
    assert recovered == {"type": "recovered", "ok": True, "missed": 1}
    await ws.close()


async def test_sse_and_the_python_subscriber_get_group_updates(server):
    token = await server.token("alice")
    async with SSEReader(server, token) as sse:
        await sse.events(1)  # hello
        await publish(server, {"users": ["alice"]}, **like("user_1"))
        await publish(server, {"users": ["alice"]}, **like("user_2"))
        (_, a), (eid, b) = await sse.events(2)
    assert (a["group"]["count"], b["group"]["count"]) == (1, 2)
    assert eid.split(":")[1] == "2"
    got: list[dict] = []
    async with Subscriber(server.ws_url, token) as sub:
        async def read():
            async for ev in sub:
                if ev["type"] == "hello":
                    await publish(server, {"users": ["alice"]}, **like("user_3"))
                    await publish(server, {"users": ["alice"]}, **like("user_4"))
                elif ev["type"] == "notification":
                    got.append(ev)
                    if len(got) == 2:
                        return
        await asyncio.wait_for(read(), 10)
    assert [e["group"]["count"] for e in got] == [3, 4]  # nothing dropped as a duplicate


async def test_broadcasts_do_not_aggregate(server):
    ids = [(await publish(server, {"all": True}, **like(f"user_{i}")))[0] for i in range(2)]
    token = await server.token("alice")
    async with server.http(token) as http:
        items = (await http.get("/v1/me/notifications")).json()["items"]
    assert [i["id"] for i in items] == ids[::-1]
    assert all("group" not in i for i in items)


async def test_the_group_object_matches_its_openapi_schema(server):
    await publish(server, {"users": ["alice"]}, **like("user_1"))
    async with server.http() as http:
        schema = (await http.get("/openapi.json")).json()["components"]["schemas"]
        item = (await http.get("/v1/users/alice/notifications")).json()["items"][0]
    assert schema["InboxItem"]["properties"]["group"]["anyOf"][0]["$ref"].endswith("/Group")
    assert set(item["group"]) == set(schema["Group"]["properties"]) == set(
        schema["Group"]["required"])


def assemble(rows: dict[str, dict], evs: list[dict]) -> dict[str, dict]:
    """What a device shows after ``evs``, from ``rows`` (inbox items by id),
    by the client rules of docs/protocol.md#group-entries-group_key."""
    rows = {k: dict(v) for k, v in rows.items()}

    def of_group(gid: str) -> str | None:
        return next((k for k, r in rows.items() if r.get("group", {}).get("id") == gid), None)

    for ev in evs:
        if ev["type"] == "notification":
            n, g = ev["notification"], ev.get("group")
            if g and of_group(g["id"]):
                del rows[of_group(g["id"])]
            rows[n["id"]] = {"id": n["id"], "state": "unseen", "notification": n,
                             **({"group": g} if g else {})}
        elif ev["type"] == "updated" and "group" in ev:
            old = of_group(ev["group"]["id"])
            if old is not None:
                del rows[old]
                n = ev["notification"]
                rows[n["id"]] = {"id": n["id"], "state": ev["state"], "notification": n,
                                 "group": ev["group"]}
        elif ev["type"] == "updated":
            if ev["notification"]["id"] in rows:
                rows[ev["notification"]["id"]]["notification"] = ev["notification"]
        elif ev["type"] == "deleted":
            rows.pop(ev["id"], None)
    return rows


async def page_rows(server, token: str) -> dict[str, dict]:
    """The inbox page as a device keeps it: by id, without the seq."""
    async with server.http(token) as http:
        items = (await http.get("/v1/me/notifications")).json()["items"]
    return {i["id"]: {k: v for k, v in i.items() if k != "seq"} for i in items}


async def test_retracting_members_changes_the_entry_live_on_both_transports(each_store):
    server = each_store
    alice, bob = await server.token("alice"), await server.token("bob")
    a, b, c = [(await publish(server, {"users": ["alice", "bob"]}, **like(f"user_{i}")))[0]
               for i in (1, 2, 3)]
    async with server.http(bob) as http:
        await http.post("/v1/me/notifications/read", json={"ids": [c]})
    ws = await ws_connect(server, alice)
    await recv_events(ws, 1)  # hello
    async with SSEReader(server, bob) as sse:
        await sse.events(1)  # hello
        shown = {"alice": await page_rows(server, alice), "bob": await page_rows(server, bob)}

        async def retract(nid: str, n_alice: int, n_bob: int) -> tuple[list, list]:
            async with server.http() as http:
                r = await http.delete(f"/v1/notifications/{nid}")
                assert r.json() == {"deleted": True, "status": "retracted"}
            frames: list = []
            on_ws = await recv_events(ws, n_alice, frames=frames)
            assert len(frames) == 1  # one frame: the device never shows a half-done change
            on_sse = [e for _, e in await sse.events(n_bob)]
            for user, token, evs in (("alice", alice, on_ws), ("bob", bob, on_sse)):
                shown[user] = assemble(shown[user], evs)
                assert shown[user] == await page_rows(server, token)  # as the server has it
            return on_ws, on_sse

        # the member the entry shows: it shows the next newest, one fewer
        on_ws, on_sse = await retract(c, 2, 2)
        updated, deleted = on_ws
        assert deleted == {"type": "deleted", "id": c}
        assert (updated["type"], updated["state"], updated["notification"]["id"]) == (
            "updated", "unseen", b)
        assert updated["notification"]["title"] == "user_2 liked your post"
        g = updated["group"]
        assert (g["id"], g["count"], g["actor_count"], g["actors"]) == (
            a, 2, 2, ["user_2", "user_1"])
        assert on_sse == [{**updated, "state": "read"}, deleted]  # bob's is read
        # an older member: the same head, one fewer
        on_ws, _ = await retract(a, 2, 2)
        assert (on_ws[0]["notification"]["id"], on_ws[0]["group"]["count"],
                on_ws[0]["group"]["first_id"]) == (b, 1, b)
        # the last member: the entry goes, and the unread one takes the badge with it
        on_ws, on_sse = await retract(b, 2, 1)
        assert on_ws == [{"type": "deleted", "id": b},
                         {"type": "counts", "unread": 0, "unseen": 0,
                          "at": {"seq": 3, "feed": 0, "rev": 3}}]
        assert on_sse == [{"type": "deleted", "id": b}]  # bob's was read: counts unchanged
        assert shown == {"alice": {}, "bob": {}}
    await ws.close()


async def test_pruning_old_members_changes_the_entry_live_on_both_transports(each_store):
    """Retention takes the members older than its horizon out of the entry:
    each holder's devices get the entry as the inbox page now shows it (the
    same notification, a smaller group), as for a retracted member."""
    server = each_store
    alice, bob = await server.token("alice"), await server.token("bob")
    a = (await publish(server, {"users": ["alice", "bob"]}, **like("user_1")))[0]
    await asyncio.sleep(0.05)
    horizon = time.time()  # the sweep's horizon, between the members
    await asyncio.sleep(0.05)
    b, c = [(await publish(server, {"users": ["alice", "bob"]}, **like(f"user_{i}")))[0]
            for i in (2, 3)]
    ws = await ws_connect(server, alice)
    await recv_events(ws, 1)  # hello
    async with SSEReader(server, bob) as sse:
        await sse.events(1)  # hello
        async with server.http(bob) as http:
            await http.post("/v1/me/notifications/seen", json={"ids": [c]})
        assert [e["type"] for _, e in await sse.events(2)] == ["state", "counts"]
        shown = {"alice": await page_rows(server, alice), "bob": await page_rows(server, bob)}
        assert shown["alice"][c]["group"]["count"] == 3

        assert await server.service.prune(horizon) >= 1  # what the hourly sweep runs
        frames: list = []
        (on_ws,) = await recv_events(ws, 1, frames=frames)
        (_, on_sse), = await sse.events(1)
        assert (on_ws["type"], on_ws["state"], on_ws["notification"]["id"]) == (
            "updated", "unseen", c)
        g = on_ws["group"]
        assert (g["id"], g["count"], g["actor_count"], g["actors"], g["first_id"]) == (
            a, 2, 2, ["user_3", "user_2"], b)
        assert on_sse == {**on_ws, "state": "seen"}
        for user, token, ev in (("alice", alice, on_ws), ("bob", bob, on_sse)):
            shown[user] = assemble(shown[user], [ev])
            assert shown[user] == await page_rows(server, token)  # as the server has it
    await ws.close()


async def test_correcting_an_older_member_changes_its_members_list_not_the_entry(server):
    alice = await server.token("alice")
    a, b = [(await publish(server, {"users": ["alice"]}, **like(f"user_{i}")))[0]
            for i in (1, 2)]
    ws = await ws_connect(server, alice)
    await recv_events(ws, 1)
    before = await page_rows(server, alice)
    async with server.http() as http:
        r = await http.patch(f"/v1/notifications/{a}", json={"title": "user_1 loved it"})
        assert r.status_code == 200, r.text
    (ev,) = await recv_events(ws, 1)
    # every holder hears of it (a members list on screen shows it); the entry shows b
    assert (ev["type"], ev["notification"]["id"], "group" in ev) == ("updated", a, False)
    assert assemble(before, [ev]) == before == await page_rows(server, alice)
    async with server.http(alice) as http:
        doc = (await http.get(f"/v1/me/notifications/{b}/group")).json()
    assert [(m["id"], m["notification"]["title"]) for m in doc["items"]] == [
        (b, "user_2 liked your post"), (a, "user_1 loved it")]
    assert doc["group"] == before[b]["group"]
    # once the newer member is retracted, the entry shows the corrected one, live too
    async with server.http() as http:
        await http.delete(f"/v1/notifications/{b}")
    updated, deleted = await recv_events(ws, 2)
    assert (updated["notification"]["id"], updated["notification"]["title"]) == (
        a, "user_1 loved it")
    assert assemble(before, [updated, deleted]) == await page_rows(server, alice)
    await ws.close()


async def test_the_subscriber_asks_the_counts_when_an_update_makes_an_entry_unseen(server):
    """Whether an update made a seen entry unseen again only the server
    knows: the Subscriber's badge asks GET /v1/me/counts, and is exact."""
    token = await server.token("uma")
    (first,) = await publish(server, {"users": ["uma"]}, **like("user_1"))
    async with server.http(token) as http:
        r = await http.post("/v1/me/notifications/seen", json={"ids": [first]})
        assert r.json()["counts"] == {"unread": 1, "unseen": 0,
                                      "at": {"seq": 1, "feed": 0, "rev": 1}}
    sub = Subscriber(server.url, token, receipts=False)
    events = sub.__aiter__()
    hello = await asyncio.wait_for(events.__anext__(), 5)
    assert hello["type"] == "hello" and sub.counts == {"unread": 1, "unseen": 0}
    await publish(server, {"users": ["uma"]}, **like("user_2"))
    update = await asyncio.wait_for(events.__anext__(), 5)
    assert update["group"]["count"] == 2
    asking = sub._asking  # the badge cannot tell: it asks
    assert asking is not None
    await asyncio.wait_for(asking, 5)
    assert sub.counts == {"unread": 1, "unseen": 1}
    await sub.close()
