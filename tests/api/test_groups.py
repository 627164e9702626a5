"""Aggregation by group_key over HTTP and live streams (docs/design.md §3).

A notification whose group_key matches an unread entry of the user updates
that entry: in the inbox one row with a ``group`` object, live one
``notification`` event carrying the new notification (a new id, so SDKs
that drop duplicates by id show it) and the ``group``, at the user's next
seq (so a device that missed it replays it).
"""

from __future__ import annotations

import asyncio

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
    assert counts == {"unread": 3, "unseen": 3}  # a group is one unread entry


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
        assert r.json() == {"changed": 1, "counts": {"unread": 0, "unseen": 0}}
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
