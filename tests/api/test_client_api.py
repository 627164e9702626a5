"""Client API (docs/design.md §4, end-user devices with a user token), over a real server."""

from __future__ import annotations


async def seed(server, user: str, n: int, **fields) -> list[str]:
    async with server.http() as http:
        ids = []
        for i in range(n):
            r = await http.post("/v1/notifications",
                                json={"to": {"users": [user]}, "title": f"n{i}", **fields})
            assert r.status_code == 202, r.text
            ids.append(r.json()["id"])
        return ids


async def me_ids(me, **params) -> list[str]:
    r = await me.get("/v1/me/notifications", params=params)
    assert r.status_code == 200, r.text
    return [i["id"] for i in r.json()["items"]]


async def counts(me) -> dict:
    r = await me.get("/v1/me/counts")
    assert r.status_code == 200, r.text
    return r.json()


async def test_my_notifications_newest_first_and_paged(server):
    ids = await seed(server, "alice", 5)
    await seed(server, "bob", 2)
    async with server.http(await server.token("alice")) as me:
        r = await me.get("/v1/me/notifications")
        assert r.status_code == 200
        doc = r.json()
        assert [i["id"] for i in doc["items"]] == ids[::-1]
        assert doc["next_before"] is None
        assert doc["items"][0]["notification"]["title"] == "n4"
        assert doc["items"][0]["state"] == "unseen"
        r = await me.get("/v1/me/notifications", params={"limit": 2})
        page = r.json()
        assert [i["id"] for i in page["items"]] == [ids[4], ids[3]]
        assert page["next_before"] == ids[3]
        assert await me_ids(me, limit=2, before=page["next_before"]) == [ids[2], ids[1]]


async def test_counts(server):
    async with server.http(await server.token("alice")) as me:
        # before alice has any notification: position 0
        assert await counts(me) == {"unread": 0, "unseen": 0, "at": {"seq": 0, "feed": 0, "rev": 0}}
        await seed(server, "alice", 3)
        # they count her notifications up to seq 3, read with them
        assert await counts(me) == {"unread": 3, "unseen": 3, "at": {"seq": 3, "feed": 0, "rev": 0}}


async def test_read_seen_archive_by_ids(server):
    ids = await seed(server, "alice", 4)
    async with server.http(await server.token("alice")) as me:
        r = await me.post("/v1/me/notifications/seen", json={"ids": [ids[0], ids[1]]})
        assert r.status_code == 200, r.text
        assert r.json() == {"changed": 2, "counts": {
            "unread": 4, "unseen": 2, "at": {"seq": 4, "feed": 0, "rev": 1}}}

        r = await me.post("/v1/me/notifications/read", json={"ids": [ids[0]]})
        assert r.json() == {"changed": 1, "counts": {
            "unread": 3, "unseen": 2, "at": {"seq": 4, "feed": 0, "rev": 2}}}
        # Never backwards: marking a read item seen changes nothing.
        r = await me.post("/v1/me/notifications/seen", json={"ids": [ids[0]]})
        assert r.json()["changed"] == 0
        # Idempotent.
        r = await me.post("/v1/me/notifications/read", json={"ids": [ids[0]]})
        assert r.json()["changed"] == 0

        r = await me.post("/v1/me/notifications/archive", json={"ids": [ids[3]]})
        assert r.status_code == 200
        assert r.json() == {"changed": 1, "counts": {
            "unread": 2, "unseen": 1, "at": {"seq": 4, "feed": 0, "rev": 3}}}
        assert await counts(me) == {"unread": 2, "unseen": 1, "at": {"seq": 4, "feed": 0, "rev": 3}}

        states = {i["id"]: i["state"] for i in
                  (await me.get("/v1/me/notifications", params={"state": "all"})).json()[
                      "items"]}
        assert states == {ids[0]: "read", ids[1]: "seen", ids[2]: "unseen",
                          ids[3]: "archived"}
        # Unknown ids change nothing.
        r = await me.post("/v1/me/notifications/read",
                          json={"ids": ["01HZZZZZZZZZZZZZZZZZZZZZZZ"]})
        assert r.status_code == 200 and r.json()["changed"] == 0


async def test_mark_all(server):
    await seed(server, "alice", 3)
    async with server.http(await server.token("alice")) as me:
        r = await me.post("/v1/me/notifications/seen", json={"all": True})
        assert r.status_code == 200
        assert r.json() == {"changed": 3, "counts": {
            "unread": 3, "unseen": 0, "at": {"seq": 3, "feed": 0, "rev": 1}}}
        r = await me.post("/v1/me/notifications/read", json={"all": True})
        assert r.json() == {"changed": 3, "counts": {
            "unread": 0, "unseen": 0, "at": {"seq": 3, "feed": 0, "rev": 2}}}
        r = await me.post("/v1/me/notifications/archive", json={"all": True})
        assert r.json()["changed"] == 3
        assert await me_ids(me) == []
        assert len(await me_ids(me, state="archived")) == 3


async def test_mark_all_covers_broadcasts(server):
    async with server.http() as http:
        r = await http.post("/v1/notifications", json={"to": {"all": True}, "title": "b"})
        bid = r.json()["id"]
    await seed(server, "alice", 1)
    async with server.http(await server.token("alice")) as me:
        assert await counts(me) == {"unread": 2, "unseen": 2, "at": {"seq": 1, "feed": 1, "rev": 0}}
        r = await me.post("/v1/me/notifications/read", json={"all": True})
        assert r.json()["counts"] == {"unread": 0, "unseen": 0,
                                      "at": {"seq": 1, "feed": 1, "rev": 1}}
        r = await me.get("/v1/me/notifications")
        states = {i["id"]: i["state"] for i in r.json()["items"]}
        assert states[bid] == "read"


async def test_archive_hides_from_default_listing(server):
    ids = await seed(server, "alice", 3)
    async with server.http(await server.token("alice")) as me:
        r = await me.post("/v1/me/notifications/archive", json={"ids": [ids[1]]})
        assert r.json()["changed"] == 1
        assert await me_ids(me) == [ids[2], ids[0]]
        assert await me_ids(me, state="archived") == [ids[1]]
        assert set(await me_ids(me, state="all")) == set(ids)


async def test_state_request_needs_ids_or_all(server):
    async with server.http(await server.token("alice")) as me:
        for body in ({}, {"ids": ["x"], "all": True}, {"all": False}):
            r = await me.post("/v1/me/notifications/read", json=body)
            assert r.status_code == 422, (body, r.text)
            assert r.json()["error"]["field"] == "ids"


async def test_my_preferences(server):
    async with server.http(await server.token("alice")) as me:
        r = await me.get("/v1/me/preferences")
        assert r.status_code == 200 and r.json().get("categories", {}) == {}
        prefs = {"categories": {"promo": {"in_app": False}}}
        r = await me.put("/v1/me/preferences", json=prefs)
        assert r.status_code == 200, r.text
        got = (await me.get("/v1/me/preferences")).json()
        assert got["categories"]["promo"]["in_app"] is False
    async with server.http() as http:
        # The app backend sees the same preferences, and they take effect.
        got = (await http.get("/v1/users/alice/preferences")).json()
        assert got["categories"]["promo"]["in_app"] is False
        r = await http.post("/v1/notifications",
                            json={"to": {"users": ["alice"]}, "category": "promo"})
        assert r.json()["muted"] == 1
    async with server.http(await server.token("bob")) as bob:
        assert (await bob.get("/v1/me/preferences")).json().get("categories", {}) == {}


async def test_user_state_is_per_user(server):
    async with server.http() as http:
        r = await http.post("/v1/notifications",
                            json={"to": {"users": ["alice", "bob"]}, "title": "both"})
        nid = r.json()["id"]
    async with server.http(await server.token("alice")) as alice:
        await alice.post("/v1/me/notifications/read", json={"ids": [nid]})
        assert await counts(alice) == {"unread": 0, "unseen": 0,
                                       "at": {"seq": 1, "feed": 0, "rev": 1}}
    async with server.http(await server.token("bob")) as bob:
        assert await counts(bob) == {"unread": 1, "unseen": 1,
                                     "at": {"seq": 1, "feed": 0, "rev": 0}}
