"""One rule for control characters, on both stores (docs/security.md#input).

Identifiers a client chooses (user ids, topics, group keys, actors, tags,
URLs, push endpoints, ids in a body) refuse control characters with a 422
naming the field, before any store sees them; ids the server minted, in a
path, answer 404 when they are not of that id's form.  Free text (title,
body, data) keeps whatever it holds, NUL included, and reads back the same.
PostgreSQL cannot hold U+0000 in a text column, SQLite can: validating at
the edge makes both answer alike.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime

import pytest

from tests.api.test_hostile import assert_error
from tidings.config import WebhookConfig

PUBLISH = "/v1/notifications"


def _in(seconds: float) -> str:
    return datetime.fromtimestamp(time.time() + seconds, UTC).isoformat()

CONTROL = ["\x00", "\x01", "\n", "\x1f", "\x7f"]


@pytest.mark.parametrize("ch", CONTROL)
async def test_control_characters_in_identifiers_are_422_naming_the_field(each_store, ch):
    server = each_store
    async with server.http() as http:
        for extra, field in [
            ({"group_key": f"g{ch}"}, "group_key"),
            ({"actor": f"a{ch}"}, "actor"),
            ({"tags": ["ok", f"t{ch}"]}, "tags[1]"),
            ({"url": f"https://x.test/{ch}"}, "url"),
        ]:
            body = {"to": {"users": ["u1"]}, "title": "t", **extra}
            assert_error(await http.post(PUBLISH, json=body), 422, "invalid", field, case=extra)
            # the same item inside a batch: refused alone, nothing kept
            r = await http.post(f"{PUBLISH}/batch", json={"notifications": [body]})
            assert r.status_code == 202, r.text
            (result,) = r.json()["results"]
            assert result["status"] == "error" and result["error"]["field"] == field, result
            # and scheduled for later: refused now, not failed later
            r = await http.post(PUBLISH, json={**body, "deliver_at": _in(3600)})
            assert_error(r, 422, "invalid", field, case=extra)
        patch = await http.patch("/v1/notifications/01HZZZZZZZZZZZZZZZZZZZZZZZ",
                                 json={"tags": [f"t{ch}"]})
        assert_error(patch, 422, "invalid", "tags[0]")
        r = await http.get("/v1/users/u1/notifications", params={"state": "all"})
        assert r.json()["items"] == []
    async with server.http(await server.token("u1")) as me:
        for verb in ("read", "seen", "archive"):
            r = await me.post(f"/v1/me/notifications/{verb}", json={"ids": ["ok", f"a{ch}"]})
            assert_error(r, 422, "invalid", "ids[1]", case=verb)
        r = await me.post("/v1/me/push-subscriptions", json={
            "endpoint": f"https://push.example.test/{ch}x",
            "keys": {"p256dh": "BNcRdreALRFXTkOOUHK1EtK2wtaz5Ry4YfYCA_0QTpQtUbVlUls0VJXg7A8u-Ts1"
                               "XbjhazAkj7I99e8QcYP7DkM", "auth": "tBHItJI5svbpez7KI4CCXg"}})
        assert_error(r, 422, "invalid", "endpoint")


async def test_minted_ids_in_paths_that_cannot_exist_are_404(each_store):
    server = each_store
    async with server.http() as http:
        for method, path in [("POST", "/v1/webhooks/%00/rotate"), ("DELETE", "/v1/webhooks/%00"),
                             ("POST", "/v1/webhooks/wh%0A/rotate"),
                             ("GET", "/v1/notifications/%00/outbound"),
                             ("POST", "/v1/outbound/dead/%00/retry")]:
            r = await http.request(method, path)
            assert r.status_code in (404, 422), (method, path, r.status_code, r.text)
            assert_error(r, r.status_code, field="id", case=path)
    async with server.http(await server.token("u1")) as me:
        r = await me.delete("/v1/me/push-subscriptions/%00")
        assert_error(r, 404, "not_found", "id")


async def test_webhook_urls_with_control_characters_are_refused(tmp_path):
    from tests.api.conftest import store_overrides
    from tests.conftest import run_server

    for kind in ("sqlite", "postgres"):
        async with store_overrides(kind) as store:
            async with run_server(tmp_path / kind, webhook=WebhookConfig(allow_insecure=True),
                                  **store) as server:
                async with server.http() as http:
                    for url in ("https://hooks.example.test/\x00", "http://127.0.0.1:9/a\nb",
                                "https://hooks.example.test/\x7f"):
                        r = await http.post("/v1/webhooks", json={"url": url})
                        assert_error(r, 422, "invalid", "url", case=(kind, url))
                    assert (await http.get("/v1/webhooks")).json()["endpoints"] == []


async def test_nul_in_free_text_is_stored_and_read_back_unchanged(each_store):
    server = each_store
    text = "a\x00b\x01c\u2028d\U0001f600"
    async with server.http() as http:
        body = {"to": {"users": ["u1"]}, "title": text, "body": text,
                "data": {text: [text, {"k": text}]}}
        r = await http.post(PUBLISH, json=body)
        assert r.status_code == 202, r.text
        nid = r.json()["id"]
        r = await http.post(f"{PUBLISH}/batch", json={"notifications": [body]})
        assert r.json()["results"][0]["status"] == "accepted", r.text
        r = await http.patch(f"/v1/notifications/{nid}", json={"body": text + "!"})
        assert r.status_code == 200, r.text
        note = (await http.get(f"/v1/notifications/{nid}")).json()["notification"]
        assert (note["title"], note["body"], note["data"]) == (text, text + "!",
                                                               {text: [text, {"k": text}]})
    async with server.http(await server.token("u1")) as me:
        items = (await me.get("/v1/me/notifications")).json()["items"]
        assert [i["notification"]["title"] for i in items] == [text, text]
