"""/dashboard/notification and its data over real HTTP: access, scope, errors.
(The page itself is tested in Chromium: tests/browser/test_notification_page.py.)"""

from __future__ import annotations

import httpx

from tests.conftest import run_server
from tests.gateway.live import publish

API = "/dashboard/api/notification"


def _client(server, key: str | None = None) -> httpx.AsyncClient:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.AsyncClient(base_url=server.url, timeout=10, headers=headers)


async def test_anonymous_gets_no_data_and_the_page_needs_a_login(server):
    (nid,) = await publish(server, {"users": ["alice"]})
    async with _client(server) as http:
        r = await http.get(API, params={"id": nid})
        assert r.status_code == 401 and r.json()["error"]["code"] == "login_required"
        r = await http.get("/dashboard/notification")
        assert r.status_code == 303 and r.headers["location"] == "/dashboard/login"
    async with _client(server, server.api_key) as http:
        r = await http.get("/dashboard/notification")
        assert r.status_code == 200 and 'id="search"' in r.text


async def test_counts_recipients_and_a_users_timeline(server):
    (nid,) = await publish(server, {"users": ["bob", "alice"]})
    async with _client(server, server.api_key) as http:
        doc = (await http.get(API, params={"id": nid})).json()
        assert (doc["app"], doc["notification"]["id"], doc["timeline"]) == (server.app, nid, None)
        assert doc["recipient_sample"] == ["alice", "bob"]
        assert doc["delivery"]["in_app"]["recipients"] == 2 and doc["outbound_users"] == {}
        doc = (await http.get(API, params={"id": nid, "user": "alice"})).json()
        assert [e["event"] for e in doc["timeline"]["events"]] == ["accepted", "committed"]
        for params, status, field in (({"id": "nope"}, 404, "id"), ({}, 404, "id"),
                                      ({"id": nid, "user": "x" * 129}, 422, "user")):
            r = await http.get(API, params=params)
            assert (r.status_code, r.json()["error"]["field"]) == (status, field), params


async def test_an_app_sees_only_its_own_notifications_the_operator_any(tmp_path):
    async with run_server(tmp_path, operator_app="testapp") as server:
        other, other_key = await server.new_app("other")
        (mine,) = await publish(server, {"users": ["alice"]})
        async with _client(server, other_key) as http:
            r = await http.post("/v1/notifications", json={"to": {"users": ["o"]}, "title": "x"})
            theirs = r.json()["id"]
            for params in ({"id": mine}, {"id": mine, "app": "testapp"}):
                r = await http.get(API, params=params)
                assert r.status_code == 404, params
            assert (await http.get(API, params={"id": theirs})).status_code == 200
        async with _client(server, server.api_key) as http:
            assert (await http.get(API, params={"id": theirs})).status_code == 404  # not its app
            r = await http.get(API, params={"id": theirs, "app": other, "user": "o"})
            assert r.status_code == 200 and r.json()["app"] == other
            assert r.json()["timeline"]["recipient"] is True
