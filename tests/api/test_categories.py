"""An app's categories (tidings/api/categories.py), on both stores: declared
with the admin key, read back with a read key, and by a user's device with
the app's digest defaults; each app its own; bad documents refused whole."""

from __future__ import annotations

import pytest

from tidings.core import auth

DECLARED = {"categories": [
    {"id": "social", "label": "Replies and mentions",
     "description": "When someone answers you or mentions you"},
    {"id": "ci", "label": "Builds"},
    {"id": "billing", "label": "Facturation — reçus"},
]}


async def test_declared_then_read_by_keys_and_by_users(each_store):
    server = each_store
    token = await server.token("alice")
    async with server.http() as http, server.http(token) as me:
        assert (await http.get("/v1/categories")).json() == {"categories": []}
        assert (await me.get("/v1/me/categories")).json() == {"categories": [], "digests": {}}
        r = await http.put("/v1/categories", json=DECLARED)
        assert r.status_code == 200, r.text
        assert r.json() == DECLARED
        r = await http.put("/v1/caps", json={"digests": {
            "social": {"email": {"every": 3600}, "push": {"daily": "09:00", "tz": "Europe/Paris"}},
            "other": {"email": {}}}})
        assert r.status_code == 200, r.text
        read = await server.service.create_api_key(server.app, ["read"])
        async with server.http(read) as reader:
            assert (await reader.get("/v1/categories")).json() == DECLARED
        r = await me.get("/v1/me/categories")
        assert r.status_code == 200, r.text
        assert r.json() == {"categories": DECLARED["categories"], "digests": {
            "social": {"email": {"every": 3600}, "push": {"daily": "09:00", "tz": "Europe/Paris"}},
            "other": {"email": {}}}}
        # replaced whole, in the order given
        r = await http.put("/v1/categories", json={"categories": [{"id": "ci", "label": "CI"}]})
        assert r.status_code == 200, r.text
        assert (await me.get("/v1/me/categories")).json()["categories"] == [
            {"id": "ci", "label": "CI"}]


async def test_only_the_admin_key_declares_and_each_app_reads_its_own(each_store):
    server = each_store
    async with server.http() as http:
        assert (await http.put("/v1/categories", json=DECLARED)).status_code == 200
    publish = await server.service.create_api_key(server.app, ["publish"])
    async with server.http(publish) as http:
        r = await http.put("/v1/categories", json={"categories": []})
        assert r.status_code == 403, r.text
    async with server.http(await server.token("alice")) as me:
        assert (await me.put("/v1/categories", json={"categories": []})).status_code == 401
        assert (await me.get("/v1/categories")).status_code == 401
    record, key = await server.service.create_app("other", app_id="other")
    other = auth.mint_token("other", "alice", record.signing_secret, 600)
    async with server.http(other) as me, server.http(key) as http:
        assert (await me.get("/v1/me/categories")).json()["categories"] == []
        assert (await http.get("/v1/categories")).json()["categories"] == []
    async with server.http() as http:
        assert (await http.get("/v1/categories")).json() == DECLARED


def _many(n: int) -> list[dict]:
    return [{"id": f"c{i}", "label": f"C {i}"} for i in range(n)]


@pytest.mark.parametrize("body, status, field", [
    ({"categories": [{"id": "ci", "label": "A"}, {"id": "ci", "label": "B"}]}, 422,
     "categories[1].id"),
    ({"categories": [{"id": "c" * 65, "label": "A"}]}, 422, "categories[0].id"),
    ({"categories": [{"id": "*", "label": "All"}]}, 422, "categories[0].id"),
    ({"categories": [{"id": "a b", "label": "A"}]}, 422, "categories[0].id"),
    ({"categories": [{"id": "ci", "label": ""}]}, 422, "categories[0].label"),
    ({"categories": [{"id": "ci", "label": "L" * 129}]}, 422, "categories[0].label"),
    ({"categories": [{"id": "ci", "label": "a\nb"}]}, 422, "categories[0].label"),
    ({"categories": [{"id": "ci", "label": "A", "description": "d" * 513}]}, 422,
     "categories[0].description"),
    ({"categories": [{"id": "ci", "label": "A", "description": "\x00"}]}, 422,
     "categories[0].description"),
    ({"categories": [{"id": "ci", "label": "A", "channels": {}}]}, 422,
     "categories[0].channels"),
    ({"categories": [{"id": 7, "label": "A"}]}, 422, "categories[0].id"),
    ({"categories": _many(257)}, 422, "categories"),
    ({"categories": {"ci": "Builds"}}, 422, "categories"),
    ({}, 422, None),  # "Object missing required field `categories`"
    (None, 400, None),
])
async def test_bad_documents_are_refused_and_change_nothing(each_store, body, status, field):
    server = each_store
    async with server.http() as http:
        assert (await http.put("/v1/categories", json=DECLARED)).status_code == 200
        if body is None:
            r = await http.put("/v1/categories", content=b'{"categories": [')
        else:
            r = await http.put("/v1/categories", json=body)
        assert r.status_code == status, r.text
        assert r.json()["error"].get("field") == field, r.text
        assert (await http.get("/v1/categories")).json() == DECLARED
        # 256 is the most
        assert (await http.put("/v1/categories", json={"categories": _many(256)})).status_code \
            == 200
