"""Server API (docs/design.md §4, app backends with an API key), over a real server."""

from __future__ import annotations

import pytest
from conftest import run_server


async def publish(http, **body):
    r = await http.post("/v1/notifications", json=body)
    assert r.status_code == 202, r.text
    return r.json()


async def inbox(http, user, **params):
    r = await http.get(f"/v1/users/{user}/notifications", params=params)
    assert r.status_code == 200, r.text
    return r.json()


def titles(page):
    return [item["notification"]["title"] for item in page["items"]]


# -- publishing ---------------------------------------------------------------


async def test_publish_to_users(server):
    async with server.http() as http:
        res = await publish(http, to={"users": ["alice", "bob"]}, title="hi", category="social",
                            data={"post": 42}, priority="high", tags=["a"])
        assert res["status"] == "accepted"
        assert res["recipients"] == 2
        assert len(res["id"]) == 26
        assert "muted" not in res
        for user in ("alice", "bob"):
            page = await inbox(http, user)
            assert [i["id"] for i in page["items"]] == [res["id"]]
            item = page["items"][0]
            assert item["state"] == "unseen"
            assert item["seq"] == 1
            note = item["notification"]
            assert note["title"] == "hi" and note["category"] == "social"
            assert note["data"] == {"post": 42} and note["priority"] == "high"
        assert (await inbox(http, "carol"))["items"] == []


async def test_publish_to_topic_fans_out_on_write_below_threshold(server):
    async with server.http() as http:
        r = await http.post("/v1/topics/guild:7/subscribers",
                            json={"users": ["u1", "u2", "u3"]})
        assert r.status_code == 200, r.text
        res = await publish(http, to={"topic": "guild:7"}, title="raid")
        assert res["status"] == "accepted"
        assert res["recipients"] == 3
        assert res.get("fanout", "write") == "write"
        r = await http.get(f"/v1/notifications/{res['id']}")
        assert r.json()["fanout"] == "write"
        for user in ("u1", "u2", "u3"):
            page = await inbox(http, user)
            assert titles(page) == ["raid"]
            assert "seq" in page["items"][0]
        assert titles(await inbox(http, "u4")) == []


async def test_publish_to_topic_fans_out_on_read_above_threshold(tmp_path):
    async with run_server(tmp_path, fanout_threshold=2) as srv, srv.http() as http:
        r = await http.post("/v1/topics/big/subscribers", json={"users": ["u1", "u2", "u3"]})
        assert r.status_code == 200, r.text
        r = await http.get("/v1/topics/big")
        assert r.json()["fanout"] == "read"
        res = await publish(http, to={"topic": "big"}, title="news")
        assert res["status"] == "accepted"
        assert res["fanout"] == "read"
        r = await http.get(f"/v1/notifications/{res['id']}")
        assert r.status_code == 200 and r.json()["fanout"] == "read"
        for user in ("u1", "u2", "u3"):
            page = await inbox(http, user)
            assert [i["id"] for i in page["items"]] == [res["id"]]
            assert page["items"][0]["notification"]["title"] == "news"
        assert titles(await inbox(http, "outsider")) == []


async def test_publish_to_all(server):
    async with server.http() as http:
        await publish(http, to={"users": ["alice"]}, title="warm-up")
        res = await publish(http, to={"all": True}, title="maintenance")
        assert res["status"] == "accepted"
        for user in ("alice", "never-seen-before"):
            assert "maintenance" in titles(await inbox(http, user))


# -- batch ----------------------------------------------------------------------


async def test_batch_results_per_item(server):
    async with server.http() as http:
        r = await http.post("/v1/notifications/batch", json={"notifications": [
            {"to": {"users": ["alice"]}, "title": "one"},
            {"to": {"users": ["alice"]}, "priority": "extreme"},
            {"to": {"users": ["alice"], "topic": "t"}},
            {"to": {"users": ["bob"]}, "title": "two"},
        ]})
        assert r.status_code == 202, r.text
        results = r.json()["results"]
        assert len(results) == 4
        assert results[0]["status"] == "accepted" and results[0]["recipients"] == 1
        assert results[1]["status"] == "error"
        assert results[1]["error"]["code"] == "invalid"
        assert results[1]["error"]["field"] == "priority"
        assert results[2]["status"] == "error" and results[2]["error"]["field"] == "to"
        assert results[3]["status"] == "accepted"
        assert titles(await inbox(http, "alice")) == ["one"]
        assert titles(await inbox(http, "bob")) == ["two"]


async def test_batch_over_limit_is_422(server):
    async with server.http() as http:
        item = {"to": {"users": ["alice"]}, "title": "x"}
        r = await http.post("/v1/notifications/batch", json={"notifications": [item] * 1001})
        assert r.status_code == 422, r.text
        assert r.json()["error"]["field"] == "notifications"
        assert titles(await inbox(http, "alice")) == []
        r = await http.post("/v1/notifications/batch", json={"notifications": []})
        assert r.status_code == 422


async def test_batch_with_idempotency_key(server):
    async with server.http() as http:
        body = {"notifications": [{"to": {"users": ["alice"]}, "title": f"n{i}"}
                                  for i in range(3)]}
        headers = {"Idempotency-Key": "batch-1"}
        first = (await http.post("/v1/notifications/batch", json=body, headers=headers)).json()
        again = (await http.post("/v1/notifications/batch", json=body, headers=headers)).json()
        assert [x["id"] for x in first["results"]] == [x["id"] for x in again["results"]]
        assert {x["status"] for x in again["results"]} == {"duplicate"}
        assert len((await inbox(http, "alice"))["items"]) == 3


# -- idempotency ------------------------------------------------------------------


async def test_idempotency_key_retry_is_a_duplicate(server):
    async with server.http() as http:
        body = {"to": {"users": ["alice"]}, "title": "once"}
        headers = {"Idempotency-Key": "order-123-shipped"}
        r1 = await http.post("/v1/notifications", json=body, headers=headers)
        r2 = await http.post("/v1/notifications", json=body, headers=headers)
        assert r1.status_code == r2.status_code == 202
        assert r1.json()["status"] == "accepted"
        assert r2.json()["status"] == "duplicate"
        assert r2.json()["id"] == r1.json()["id"]
        assert r2.json()["recipients"] == r1.json()["recipients"]
        assert titles(await inbox(http, "alice")) == ["once"]
        # Another key is another notification.
        r3 = await http.post("/v1/notifications", json=body, headers={"Idempotency-Key": "x"})
        assert r3.json()["status"] == "accepted" and r3.json()["id"] != r1.json()["id"]


async def test_idempotency_keys_are_per_app(server):
    other_app, other_key = await server.new_app()
    body = {"to": {"users": ["alice"]}, "title": "t"}
    headers = {"Idempotency-Key": "shared"}
    async with server.http() as a, server.http(other_key) as b:
        ra = (await a.post("/v1/notifications", json=body, headers=headers)).json()
        rb = (await b.post("/v1/notifications", json=body, headers=headers)).json()
        assert ra["status"] == rb["status"] == "accepted"
        assert ra["id"] != rb["id"]


# -- one notification -------------------------------------------------------------


async def test_get_patch_delete_notification(server):
    async with server.http() as http:
        res = await publish(http, to={"users": ["alice", "bob"]}, title="typo", body="b")
        nid = res["id"]
        r = await http.get(f"/v1/notifications/{nid}")
        assert r.status_code == 200, r.text
        doc = r.json()
        assert doc["notification"]["id"] == nid
        assert doc["notification"]["title"] == "typo"
        assert doc["recipients"] == 2
        assert isinstance(doc["stats"], dict)

        r = await http.patch(f"/v1/notifications/{nid}", json={"title": "fixed"})
        assert r.status_code == 200, r.text
        assert r.json()["title"] == "fixed" and r.json()["body"] == "b"
        assert (await http.get(f"/v1/notifications/{nid}")).json()["notification"][
            "title"] == "fixed"
        assert titles(await inbox(http, "alice")) == ["fixed"]

        r = await http.delete(f"/v1/notifications/{nid}")
        assert r.status_code == 200, r.text
        r = await http.get(f"/v1/notifications/{nid}")
        assert r.status_code == 404
        assert r.json()["error"]["code"] == "not_found"
        assert titles(await inbox(http, "alice")) == []
        assert titles(await inbox(http, "bob")) == []
        assert (await http.delete(f"/v1/notifications/{nid}")).status_code == 404
        assert (await http.patch(f"/v1/notifications/{nid}", json={"title": "x"})
                ).status_code == 404


async def test_delete_broadcast_hides_it(server):
    async with server.http() as http:
        res = await publish(http, to={"all": True}, title="oops")
        assert titles(await inbox(http, "alice")) == ["oops"]
        assert (await http.delete(f"/v1/notifications/{res['id']}")).status_code == 200
        assert titles(await inbox(http, "alice")) == []


async def test_unknown_notification_is_404(server):
    async with server.http() as http:
        for nid in ("01HZZZZZZZZZZZZZZZZZZZZZZZ", "nope"):
            r = await http.get(f"/v1/notifications/{nid}")
            assert r.status_code == 404
            assert r.json()["error"]["code"] == "not_found"


# -- topics -------------------------------------------------------------------------


async def test_topic_subscribers(server):
    async with server.http() as http:
        r = await http.put("/v1/topics/post:42:followers/subscribers/alice")
        assert r.status_code == 200 and r.json() == {"added": 1}
        r = await http.put("/v1/topics/post:42:followers/subscribers/alice")
        assert r.json() == {"added": 0}
        r = await http.post("/v1/topics/post:42:followers/subscribers",
                            json={"users": ["bob", "carol", "bob"]})
        assert r.status_code == 200 and r.json() == {"added": 2}
        r = await http.get("/v1/topics/post:42:followers")
        assert r.status_code == 200
        doc = r.json()
        assert doc["topic"] == "post:42:followers"
        assert doc["subscribers"] == 3
        assert sorted(doc["users"]) == ["alice", "bob", "carol"]
        assert doc["fanout"] == "write"

        r = await http.delete("/v1/topics/post:42:followers/subscribers/alice")
        assert r.status_code == 200 and r.json() == {"removed": 1}
        r = await http.post("/v1/topics/post:42:followers/subscribers",
                            json={"users": ["carol"], "action": "remove"})
        assert r.json() == {"removed": 1}
        doc = (await http.get("/v1/topics/post:42:followers")).json()
        assert doc["subscribers"] == 1 and doc["users"] == ["bob"]

        res = await publish(http, to={"topic": "post:42:followers"}, title="reply")
        assert res["recipients"] == 1
        assert titles(await inbox(http, "bob")) == ["reply"]
        assert titles(await inbox(http, "alice")) == []


async def test_unknown_topic_is_empty(server):
    async with server.http() as http:
        r = await http.get("/v1/topics/nobody-here")
        assert r.status_code == 200
        assert r.json()["subscribers"] == 0 and r.json()["users"] == []
        res = await publish(http, to={"topic": "nobody-here"}, title="void")
        assert res["recipients"] == 0


# -- a user's inbox --------------------------------------------------------------------


async def test_inbox_pagination_with_before(server):
    async with server.http() as http:
        ids = [(await publish(http, to={"users": ["alice"]}, title=f"n{i}"))["id"]
               for i in range(7)]
        seen: list[str] = []
        page = await inbox(http, "alice", limit=3)
        pages = 0
        while True:
            pages += 1
            seen += [i["id"] for i in page["items"]]
            if page["next_before"] is None:
                break
            assert page["next_before"] == page["items"][-1]["id"]
            page = await inbox(http, "alice", limit=3, before=page["next_before"])
        assert seen == ids[::-1]  # newest first, each once
        assert pages == 3
        page = await inbox(http, "alice", limit=3, before=ids[2])
        assert [i["id"] for i in page["items"]] == [ids[1], ids[0]]
        assert page["next_before"] is None
        assert len((await inbox(http, "alice"))["items"]) == 7


async def test_inbox_state_filter(server):
    async with server.http() as http:
        ids = [(await publish(http, to={"users": ["alice"]}, title=f"n{i}"))["id"]
               for i in range(4)]
    token = await server.token("alice")
    async with server.http(token) as me:
        assert (await me.post("/v1/me/notifications/read", json={"ids": [ids[0]]})
                ).status_code == 200
        assert (await me.post("/v1/me/notifications/seen", json={"ids": [ids[1]]})
                ).status_code == 200
        assert (await me.post("/v1/me/notifications/archive", json={"ids": [ids[2]]})
                ).status_code == 200
    async with server.http() as http:
        def ids_of(page):
            return {i["id"] for i in page["items"]}

        assert ids_of(await inbox(http, "alice", state="read")) == {ids[0]}
        assert ids_of(await inbox(http, "alice", state="seen")) == {ids[1]}
        assert ids_of(await inbox(http, "alice", state="unseen")) == {ids[3]}
        assert ids_of(await inbox(http, "alice", state="unread")) == {ids[1], ids[3]}
        assert ids_of(await inbox(http, "alice", state="archived")) == {ids[2]}
        assert ids_of(await inbox(http, "alice")) == {ids[0], ids[1], ids[3]}
        page = await inbox(http, "alice", state="read")
        assert page["items"][0]["state"] == "read"


# -- preferences ----------------------------------------------------------------------------


async def test_user_preferences_roundtrip(server):
    async with server.http() as http:
        r = await http.get("/v1/users/alice/preferences")
        assert r.status_code == 200 and r.json().get("categories", {}) == {}
        prefs = {"categories": {"promo": {"in_app": False, "email": False}},
                 "quiet_hours": {"start": "22:00", "end": "07:00", "tz": "Europe/Paris"}}
        r = await http.put("/v1/users/alice/preferences", json=prefs)
        assert r.status_code == 200, r.text
        got = (await http.get("/v1/users/alice/preferences")).json()
        assert got["categories"]["promo"]["in_app"] is False
        assert got["categories"]["promo"]["email"] is False
        assert got["categories"]["promo"].get("push", True) is True
        assert got["quiet_hours"] == prefs["quiet_hours"]
        # Replacing, not merging.
        r = await http.put("/v1/users/alice/preferences", json={"categories": {}})
        assert r.status_code == 200
        assert (await http.get("/v1/users/alice/preferences")).json().get("categories",
                                                                           {}) == {}
        r = await http.put("/v1/users/alice/preferences",
                           json={"quiet_hours": {"start": "22:00", "end": "07:00",
                                                 "tz": "Mars/Olympus"}})
        assert r.status_code == 422 and r.json()["error"]["field"] == "quiet_hours.tz"


async def test_star_in_preferences_switches_outbound_channels_only(server):
    """"*" (every category not named) takes outbound switches, not in_app,
    and comes on top of the 256 categories; it is never a category's name."""
    async with server.http() as http:
        r = await http.put("/v1/users/alice/preferences",
                           json={"categories": {"*": {"in_app": False}}})
        assert r.status_code == 422 and r.json()["error"]["field"] == "categories.*.in_app"
        r = await http.put("/v1/users/alice/preferences",
                           json={"categories": {f"c{i}": {} for i in range(257)}})
        assert r.status_code == 422 and r.json()["error"]["field"] == "categories"
        r = await http.put("/v1/users/alice/preferences",
                           json={"categories": {f"c{i}": {} for i in range(256)} | {"*": {}}})
        assert r.status_code == 200, r.text
        r = await http.post("/v1/notifications", json={"to": {"users": ["alice"]},
                                                       "category": "*"})
        assert r.status_code == 422  # never a category's name


async def test_muted_category_is_not_delivered(server):
    async with server.http() as http:
        r = await http.put("/v1/users/alice/preferences",
                           json={"categories": {"promo": {"in_app": False}}})
        assert r.status_code == 200, r.text
        res = await publish(http, to={"users": ["alice", "bob"]}, category="promo", title="sale")
        assert res["status"] == "accepted"
        assert res["muted"] == 1
        assert titles(await inbox(http, "alice")) == []
        assert titles(await inbox(http, "bob")) == ["sale"]
        # Other categories still arrive.
        await publish(http, to={"users": ["alice"]}, category="social", title="hello")
        assert titles(await inbox(http, "alice")) == ["hello"]


# -- tokens and scopes -------------------------------------------------------------------------


async def test_minted_token_works_on_client_api(server):
    async with server.http() as http:
        await publish(http, to={"users": ["alice"]}, title="x")
        r = await http.post("/v1/users/alice/tokens", json={"ttl": 600})
        assert r.status_code == 201, r.text
        doc = r.json()
        assert doc["user"] == "alice" and doc["token"]
        r = await http.post("/v1/users/alice/tokens")  # empty body: default ttl
        assert r.status_code == 201
        r = await http.post("/v1/users/alice/tokens", json={"ttl": 10 ** 9})
        assert r.status_code == 422 and r.json()["error"]["field"] == "ttl"
    async with server.http(doc["token"]) as me:
        r = await me.get("/v1/me/counts")
        assert r.status_code == 200
        assert r.json() == {"unread": 1, "unseen": 1, "at": {"seq": 1, "feed": 0, "rev": 0}}


async def test_read_only_key_cannot_publish(server):
    async with server.http() as http:
        nid = (await publish(http, to={"users": ["alice"]}, title="x"))["id"]
    key = await server.service.create_api_key(server.app, {"read"})
    async with server.http(key) as ro:
        r = await ro.post("/v1/notifications", json={"to": {"users": ["alice"]}})
        assert r.status_code == 403
        assert r.json()["error"]["code"] == "missing_scope"
        for method, path, body in [
            ("POST", "/v1/notifications/batch", {"notifications": [{"to": {"all": True}}]}),
            ("PATCH", f"/v1/notifications/{nid}", {"title": "y"}),
            ("DELETE", f"/v1/notifications/{nid}", None),
            ("PUT", "/v1/topics/t/subscribers/alice", None),
            ("PUT", "/v1/users/alice/preferences", {}),
            ("POST", "/v1/users/alice/tokens", {}),
        ]:
            r = await ro.request(method, path, json=body)
            assert r.status_code == 403, (method, path, r.text)
        # but it may read
        assert (await ro.get(f"/v1/notifications/{nid}")).status_code == 200
        assert (await ro.get("/v1/users/alice/notifications")).status_code == 200
        assert (await ro.get("/v1/topics/t")).status_code == 200
    async with server.http() as http:
        doc = (await http.get(f"/v1/notifications/{nid}")).json()
        assert doc["notification"]["title"] == "x"


@pytest.mark.parametrize("scopes", [{"publish"}, {"admin"}])
async def test_publish_scope_and_admin_can_publish(server, scopes):
    key = await server.service.create_api_key(server.app, scopes)
    async with server.http(key) as http:
        r = await http.post("/v1/notifications", json={"to": {"users": ["alice"]}})
        assert r.status_code == 202, r.text
