"""PATCH .../preferences: a JSON merge patch of a user's preferences
(tidings/core/preferences.py), applied in the store's transaction, so what it
does not name is kept, even when changed at the same instant; on both stores."""

from __future__ import annotations

import asyncio

import pytest

ME = "/v1/me/preferences"
USER = "/v1/users/alice/preferences"


async def test_a_patch_changes_what_it_names_and_keeps_the_rest(each_store):
    async with each_store.http() as http:
        r = await http.put(USER, json={
            "categories": {"*": {"email": False}, "promo": {"in_app": False}},
            "quiet_hours": {"start": "22:00", "end": "07:00", "tz": "Europe/Paris"},
            "digests": {"social": {"email": {"every": 3600}, "push": {"daily": "09:00"}}}})
        assert r.status_code == 200, r.text
    async with each_store.http(await each_store.token("alice")) as me:
        # a category not named starts from "*" (e-mail off): only push changes
        r = await me.patch(ME, json={"categories": {"social": {"push": False}}})
        assert r.status_code == 200, r.text
        doc = r.json()
        assert doc["categories"]["social"] == {"push": False, "email": False}
        assert doc["categories"]["promo"] == {"in_app": False}  # untouched
        assert doc["quiet_hours"]["tz"] == "Europe/Paris"
        # switches of a named category: the others stay
        r = await me.patch(ME, json={"categories": {"promo": {"email": False}}})
        assert r.json()["categories"]["promo"] == {"in_app": False, "email": False}
        # null forgets: a category (it follows "*" again), the quiet hours, one rule
        r = await me.patch(ME, json={"categories": {"social": None}, "quiet_hours": None,
                                     "digests": {"social": {"push": None}}})
        doc = r.json()
        assert "social" not in doc["categories"] and "quiet_hours" not in doc
        assert doc["digests"] == {"social": {"email": {"every": 3600}}}
        r = await me.patch(ME, json={"digests": {"social": {"email": None},
                                                 "orders": {"email": {"every": 600}}}})
        assert r.json()["digests"] == {"orders": {"email": {"every": 600}}}
        r = await me.patch(ME, json={"digests": {"orders": None}})
        assert r.json().get("digests", {}) == {}
        # an empty patch changes nothing and answers the preferences
        r = await me.patch(ME, json={})
        assert r.status_code == 200 and r.json() == (await me.get(ME)).json()
    async with each_store.http() as http:
        stored = (await http.get(USER)).json()
        assert stored["categories"] == {"*": {"email": False},
                                        "promo": {"in_app": False, "email": False}}
        # the backend's PATCH is the same change
        r = await http.patch(USER, json={"categories": {"promo": {"in_app": True}}})
        assert r.status_code == 200 and r.json()["categories"]["promo"] == {"email": False}


async def test_an_in_app_switch_patched_takes_effect_on_publish(each_store):
    async with each_store.http(await each_store.token("alice")) as me:
        r = await me.patch(ME, json={"categories": {"promo": {"in_app": False}}})
        assert r.status_code == 200, r.text
    async with each_store.http() as http:
        r = await http.post("/v1/notifications",
                            json={"to": {"users": ["alice"]}, "category": "promo"})
        assert r.json()["muted"] == 1
        assert (await http.patch(USER, json={"categories": {"promo": None}})).status_code == 200
        r = await http.post("/v1/notifications",
                            json={"to": {"users": ["alice"]}, "category": "promo"})
        assert r.json().get("muted", 0) == 0 and r.json()["recipients"] == 1


async def test_patches_made_at_the_same_instant_are_all_kept(each_store):
    """Each device, the backend and a link change one switch of their own at
    once: none undoes another (a read of the whole document, changed and
    written back, would keep only some)."""
    token = await each_store.token("alice")
    async with each_store.http(token) as me, each_store.http() as http:
        async def one(i: int):
            client, path = (me, ME) if i % 2 else (http, USER)
            body = {"categories": {f"c{i}": {"email": False}},
                    "digests": {f"d{i}": {"push": {"every": 60 * (i + 1)}}}}
            r = await client.patch(path, json=body)
            assert r.status_code == 200, r.text

        await asyncio.gather(*(one(i) for i in range(16)))
        doc = (await me.get(ME)).json()
        assert set(doc["categories"]) == {f"c{i}" for i in range(16)}
        assert set(doc["digests"]) == {f"d{i}" for i in range(16)}


@pytest.mark.parametrize(("body", "status", "field"), [
    ({"categories": {"*": {"in_app": False}}}, 422, "categories.*.in_app"),
    ({"quiet_hours": {"start": "22:00", "end": "07:00", "tz": "Mars/Olympus"}}, 422,
     "quiet_hours.tz"),
    ({"quiet_hours": {"start": "25:00", "end": "07:00"}}, 422, None),
    ({"categories": {"bad category": {"email": False}}}, 422, None),
    ({"categories": {"promo": {"sms": False}}}, 422, None),
    ({"categories": {"promo": {"email": "no"}}}, 422, None),
    ({"digests": {"social": {"email": {"every": 1}}}}, 422, None),
    ({"digests": {"social": {"sms": {"every": 600}}}}, 422, None),
    ({"colour": "blue"}, 422, None),
    ([1, 2], 422, None),
])
async def test_a_bad_patch_is_refused_and_changes_nothing(each_store, body, status, field):
    async with each_store.http(await each_store.token("alice")) as me:
        before = {"categories": {"promo": {"email": False}}}
        assert (await me.put(ME, json=before)).status_code == 200
        r = await me.patch(ME, json=body)
        assert r.status_code == status, r.text
        error = r.json()["error"]
        assert error["code"] == "invalid" and error["message"]
        if field is not None:
            assert error["field"] == field
        assert (await me.get(ME)).json() == before


async def test_too_many_categories_by_patch_are_refused(each_store):
    async with each_store.http() as http:
        r = await http.put(USER, json={"categories": {f"c{i}": {} for i in range(200)}})
        assert r.status_code == 200, r.text
        r = await http.patch(USER, json={"categories": {f"n{i}": {} for i in range(57)}})
        assert r.status_code == 422 and r.json()["error"]["field"] == "categories"
        assert len((await http.get(USER)).json()["categories"]) == 200
        r = await http.patch(USER, json={"categories": {f"n{i}": {} for i in range(56)}})
        assert r.status_code == 200 and len(r.json()["categories"]) == 256


async def test_hostile_requests(each_store):
    async with each_store.http(await each_store.token("alice")) as me:
        r = await me.patch(ME, content=b'{"categories": {"promo": {"email": fal',
                           headers={"content-type": "application/json"})
        assert r.status_code == 400 and r.json()["error"]["code"] == "malformed_json"
        big = {"categories": {"promo": {"email": False}}, "x": "y" * 300_000}
        r = await me.patch(ME, json=big)
        assert r.status_code == 413 and r.json()["error"]["code"] == "payload_too_large"
    async with each_store.http("not-a-token") as stranger:
        r = await stranger.patch(ME, json={"categories": {"promo": {"email": False}}})
        assert r.status_code == 401
    other, key = await each_store.new_app()
    async with each_store.http(key) as other_app:  # another app's alice is another user
        r = await other_app.patch(USER, json={"categories": {"promo": {"email": False}}})
        assert r.status_code == 200
    async with each_store.http() as http:
        assert (await http.get(USER)).json().get("categories", {}) == {}


async def test_a_browser_may_send_a_patch(server):
    async with server.http() as http:
        r = await http.options(ME, headers={"Origin": "https://app.example.com",
                                            "Access-Control-Request-Method": "PATCH"})
        assert r.status_code in (200, 204), r.text
        assert "PATCH" in r.headers["access-control-allow-methods"]
