"""The audit log over HTTP (tidings/api/audit.py, docs/security.md#audit-log):
each change an admin makes leaves exactly one record naming who made it and
what it touched, none holds a secret, only the app's admin keys read it, its
pages and filters, its retention, and a refused change leaves nothing.

Over real sockets, on both stores.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime

import pytest

from tests.api.conftest import allow_inserts, refuse_inserts, store_overrides
from tests.api.test_hostile import assert_error
from tests.api.test_outbound_api import hooked, publish, until
from tests.conftest import run_server
from tests.dashboard.test_logout import _logout, _session, _snapshot
from tidings.core.audit import CLI, new_entry
from tidings.errors import Unavailable

AUDIT = "/v1/audit"


async def _records(http, **params) -> list[dict]:
    r = await http.get(AUDIT, params=params)
    assert r.status_code == 200, r.text
    return r.json()["records"]


async def _one(http, action: str) -> dict:
    found = await _records(http, action=action)
    assert len(found) == 1, (action, found)
    return found[0]


async def _all_rows(server) -> str:
    """Every column of every row of the audit table, as the database holds
    them (not as the API shows them), in one text."""
    store = server.service.store
    if hasattr(store, "path"):
        rows = store._q("SELECT * FROM audit_log")
    else:
        rows = await store._fetch("SELECT * FROM audit_log")
    assert rows
    return "\n".join(repr(tuple(row)) for row in rows)


def _key_actor(server, name: str | None = None) -> str:
    prefix = server.api_key.split("_")[1]
    return f"key {prefix}" + (f" ({name})" if name else "")


@pytest.fixture(params=["sqlite", "postgres"])
async def kind(request):
    return request.param


async def test_each_change_leaves_one_record_with_its_actor_and_target(tmp_path, kind):
    async with store_overrides(kind) as store, \
            hooked(tmp_path, fail_first=1000, operator_app="testapp", **store) as (server, _):
        me = _key_actor(server)
        async with server.http() as http:
            made = (await http.post("/v1/keys", json={"scopes": ["publish"],
                                                      "name": "ci"})).json()
            rotated = (await http.post(f"/v1/keys/{made['prefix']}/rotate",
                                       json={"grace": 60})).json()
            assert (await http.delete(f"/v1/keys/{rotated['prefix']}")).status_code == 204
            assert (await http.post("/v1/signing-secret/rotate")).status_code == 200
            (hook,) = (await http.get("/v1/webhooks")).json()["endpoints"]
            assert (await http.post(f"/v1/webhooks/{hook['id']}/rotate")).status_code == 200
            assert (await http.put("/v1/caps", json={"categories": {
                "promo": {"max": 2, "per": 86400}}})).status_code == 200
            assert (await http.put("/v1/categories", json={"categories": [
                {"id": "promo", "label": "Promotions"}]})).status_code == 200
            assert (await http.post("/v1/users/ann/tokens/revoke")).status_code == 200
            minted = (await http.post("/v1/users/bob/tokens")).json()
            assert (await http.post("/v1/users/bob/tokens/revoke",
                                    json={"jti": minted["jti"]})).status_code == 200
            for path, body in [("/v1/node/drain", {"over": 0}), ("/v1/node/undrain", None),
                               ("/v1/node/shed", {"fraction": 0.5, "over": 0})]:
                assert (await http.post(path, json=body)).status_code in (200, 202)
            await publish(server)

            async def dead():
                return (await http.get("/v1/outbound/dead")).json()["jobs"]

            (job,) = await until(dead)
            r = await http.post(f"/v1/outbound/dead/{job['id']}/retry")
            assert r.status_code == 202
            assert (await http.delete(f"/v1/webhooks/{hook['id']}")).status_code == 200

            node = (await http.get("/v1/node")).json()["node"]
            expected = {
                "webhook.create": hook["id"],
                "key.create": made["prefix"],
                "key.rotate": made["prefix"],
                "key.revoke": rotated["prefix"],
                "signing_secret.rotate": "testapp",
                "webhook.rotate_secret": hook["id"],
                "caps.update": None,
                "categories.update": None,
                "tokens.revoke": "ann",
                "token.revoke": "bob",
                "node.drain": node,
                "node.undrain": node,
                "node.shed": node,
                "dead_letter.retry": job["id"],
                "webhook.delete": hook["id"],
            }
            for action, target in expected.items():
                record = await _one(http, action)
                assert (record["app"], record["actor"], record["address"], record["target"]) \
                    == ("testapp", me, "127.0.0.1", target), record
            # the test's app was made by the service itself: not recorded
            assert await _records(http, action="app.create") == []
            assert len(await _records(http, limit=500)) == len(expected)
            details = {r["action"]: r["details"] for r in await _records(http, limit=500)}
            assert details["key.create"] == {"scopes": ["publish"], "name": "ci"}
            assert details["key.rotate"] == {"new_prefix": rotated["prefix"], "grace": 60}
            assert details["token.revoke"]["jti"] == minted["jti"]
            assert details["node.shed"] == {"fraction": 0.5, "over": 0}
            assert details["categories.update"] == {"categories": ["promo"], "count": 1}
            assert details["webhook.create"]["origin"].startswith("http://127.0.0.1:")


async def test_no_record_holds_a_secret(each_store):
    """Make a key, rotate it, rotate the signing secret, make and rotate a
    webhook, revoke a token by itself: none of the secrets those shown is in
    any column of any row of the table."""
    server = each_store
    secrets = [server.api_key, server.signing_secret]
    async with server.http() as http:
        made = (await http.post("/v1/keys", json={"scopes": ["admin"], "name": "ops"})).json()
        rotated = (await http.post(f"/v1/keys/{made['prefix']}/rotate")).json()
        secret = (await http.post("/v1/signing-secret/rotate")).json()["signing_secret"]
        hook = await http.post("/v1/webhooks", json={
            "url": "https://user:hunter2@hooks.example/T0/B0/capability?sig=abc"})
        assert hook.status_code == 201, hook.text
        again = (await http.post(f"/v1/webhooks/{hook.json()['id']}/rotate")).json()
        token = await server.token("carol")
        r = await http.post("/v1/users/carol/tokens/revoke", json={"token": token})
        assert r.status_code == 200, r.text
        secrets += [made["api_key"], rotated["api_key"], secret, hook.json()["secret"],
                    again["secret"], token, "hunter2", "capability", "sig=abc"]
        # the key and the token without their prefixes too
        secrets += [made["api_key"].split("_", 2)[2], rotated["api_key"].split("_", 2)[2],
                    token.split(".")[1]]
        assert len(await _records(http, limit=500)) == 6
    table = await _all_rows(server)
    for value in secrets:
        assert value not in table, value


def test_a_record_refuses_details_named_like_a_secret():
    for name in ("api_key", "secret", "signing_secret", "token", "key_hash"):
        with pytest.raises(ValueError, match="never holds a secret"):
            new_entry("a", CLI, "key.create", "x", time.time(), **{name: "v"})


async def test_only_the_apps_admin_keys_read_its_log(each_store):
    server = each_store
    async with server.http() as http:
        assert (await http.post("/v1/keys", json={"scopes": ["read"]})).status_code == 201
        assert len(await _records(http)) == 1
    other_app, other_key = await server.new_app("other")
    async with server.http(other_key) as http:
        assert await _records(http) == []  # its own log: nothing of testapp's
        assert (await http.post("/v1/keys", json={"scopes": ["read"]})).status_code == 201
        (own,) = await _records(http)
        assert own["app"] == other_app
    narrow = await server.service.create_api_key(server.app, {"publish", "read"})
    async with server.http(narrow) as http:
        assert_error(await http.get(AUDIT), 403, "missing_scope")
    async with server.http("tk_00000000_nope") as http:
        assert (await http.get(AUDIT)).status_code == 401


async def test_pages_filters_and_bad_cursors(each_store):
    server = each_store
    async with server.http() as http:
        made = []
        for i in range(5):
            r = await http.post("/v1/keys", json={"scopes": ["read"], "name": f"k{i}"})
            made.append(r.json()["prefix"])
        assert (await http.delete(f"/v1/keys/{made[0]}")).status_code == 204
        first = (await http.get(AUDIT, params={"limit": 4})).json()
        assert [r["action"] for r in first["records"]] == ["key.revoke"] + ["key.create"] * 3
        assert [r["target"] for r in first["records"][1:]] == made[4:1:-1]  # newest first
        rest = (await http.get(AUDIT, params={"limit": 4,
                                              "before": first["next_before"]})).json()
        assert [r["target"] for r in rest["records"]] == made[1::-1]
        assert rest["next_before"] is None
        created = await _records(http, action="key.create")
        assert [r["target"] for r in created] == made[::-1]
        assert await _records(http, action="key.rotate") == []
        at = datetime.fromisoformat(created[1]["at"])
        since = await _records(http, since=at.isoformat(), action="key.create")
        assert since == [r for r in created if datetime.fromisoformat(r["at"]) >= at]
        targets = [r["target"] for r in since]
        assert made[3] in targets and made[0] not in targets
        assert await _records(http, since=datetime.fromtimestamp(
            time.time() + 60, UTC).isoformat()) == []
        for params, status, code, field in [
            ({"before": "nope"}, 400, "bad_cursor", "before"),
            ({"before": "0" * 27}, 400, "bad_cursor", "before"),
            ({"action": "key.explode"}, 422, "invalid", "action"),
            ({"since": "yesterday"}, 422, "invalid", "since"),
            ({"since": "2030-01-01T00:00:00"}, 422, "invalid", "since"),  # no zone
            ({"limit": "0"}, 422, "invalid", "limit"),
        ]:
            r = await http.get(AUDIT, params=params)
            assert_error(r, status, code)
            assert r.json()["error"]["field"] == field, params


async def test_a_since_before_1970_finds_every_record(each_store):
    """A time before the epoch is a time like any other: every record is
    after it.  Its milliseconds were negative, and the lowest id of that
    time, which the query starts from, wrapped round to above every id: an
    empty log (on both stores, the API's and the dashboard's page alike)."""
    server = each_store
    async with server.http() as http:
        for _ in range(2):
            assert (await http.post("/v1/keys", json={"scopes": ["read"]})).status_code == 201
        every = await _records(http)
        assert len(every) == 2
        for since in ("1969-12-31T23:59:59.999Z", "1900-01-01T00:00:00Z",
                      "0001-01-01T00:00:00+14:00", "1970-01-01T00:00:00+01:00"):
            assert await _records(http, since=since) == every, since
            r = await http.get("/dashboard/api/audit", params={"since": since})
            assert r.status_code == 200 and r.json()["records"] == every, since
        # the other end: the latest time there is, after every record
        assert await _records(http, since="9999-12-31T23:59:59.999-14:00") == []


async def test_the_retention_sweep_deletes_old_records(tmp_path, kind):
    async with store_overrides(kind) as store, \
            run_server(tmp_path, audit_retention_days=30, **store) as server:
        service = server.service
        now = time.time()
        for days in (400, 31, 29, 0):
            await service.store.add_audit(new_entry(server.app, CLI, "key.revoke",
                                                    f"{days}d", now - days * 86400))
        await service.prune(now - 30 * 86400)
        async with server.http() as http:
            assert [r["target"] for r in await _records(http)] == ["0d", "29d"]


async def test_a_refused_change_records_nothing(each_store):
    """409 last_admin_key, 404 no such key, 409 limit_reached: nothing changed,
    nothing recorded (docs/security.md#audit-log)."""
    server = each_store
    prefix = server.api_key.split("_")[1]
    async with server.http() as http:
        assert_error(await http.delete(f"/v1/keys/{prefix}"), 409, "last_admin_key")
        assert (await http.delete("/v1/keys/0badc0de")).status_code == 404
        assert (await http.post("/v1/keys/0badc0de/rotate")).status_code == 404
        assert (await http.delete("/v1/webhooks/wh_0000000000000000")).status_code == 404
        assert await _records(http) == []


async def test_a_key_is_not_made_without_its_record(each_store):
    """The key's insert and its record commit together: a store that refuses
    the record keeps no key either."""
    server = each_store
    await refuse_inserts(server, "audit_log")
    async with server.http() as http:
        before = (await http.get("/v1/keys")).json()["keys"]
        r = await http.post("/v1/keys", json={"scopes": ["read"]})
        assert_error(r, 503, "unavailable")
        assert (await http.get("/v1/keys")).json()["keys"] == before


async def test_each_change_commits_with_its_record_or_not_at_all(tmp_path, kind):
    """Webhooks, caps, categories, the dead-letter list and users' tokens
    write their record in the change's transaction: a store that refuses the
    record makes none of the changes, each answered with a 503 (and, refusing
    no more, makes them with their records)."""
    async with store_overrides(kind) as store, \
            hooked(tmp_path, fail_first=1000, **store) as (server, _):
        db = server.service.store
        async with server.http() as http:
            await publish(server)

            async def dead():
                return (await http.get("/v1/outbound/dead")).json()["jobs"]

            (job,) = await until(dead)
            (hook,) = (await http.get("/v1/webhooks")).json()["endpoints"]

            async def state():
                return ((await http.get("/v1/webhooks")).json()["endpoints"], await dead(),
                        await db.get_caps(server.app), await db.get_categories(server.app),
                        await db.token_revocations(0),
                        await db.token_id_revocations(0, time.time()))

            before, recorded = await state(), await _records(http)
            changes = [
                ("post", "/v1/webhooks", {"url": hook["url"]}),
                ("post", f"/v1/webhooks/{hook['id']}/rotate", None),
                ("put", "/v1/caps", {"categories": {"promo": {"max": 2, "per": 86400}}}),
                ("put", "/v1/categories", {"categories": [{"id": "promo", "label": "P"}]}),
                ("post", f"/v1/outbound/dead/{job['id']}/retry", None),
                ("delete", f"/v1/webhooks/{hook['id']}", None),
                ("post", "/v1/users/ann/tokens/revoke", None),
                ("post", "/v1/users/bob/tokens/revoke", {"jti": "j-1"}),
            ]
            await refuse_inserts(server, "audit_log")
            for method, path, body in changes:
                r = await http.request(method, path, json=body)
                assert_error(r, 503, "unavailable")
            assert await state() == before
            assert await _records(http) == recorded
            await allow_inserts(server, "audit_log")
            for method, path, body in changes:
                r = await http.request(method, path, json=body)
                assert r.status_code < 300, (path, r.text)
            assert [r["action"] for r in await _records(http)] == [
                "token.revoke", "tokens.revoke",
                "webhook.delete", "dead_letter.retry", "categories.update", "caps.update",
                "webhook.rotate_secret", "webhook.create", *(r["action"] for r in recorded)]


async def test_an_app_and_a_logout_commit_with_their_record_or_not_at_all(tmp_path, kind):
    """An app's creation and a dashboard logout write their record in their
    transaction too: refused, no app is made (the CLI's error is the 503's)
    and the session goes on working."""
    async with store_overrides(kind) as store, run_server(tmp_path, **store) as server:
        service, db = server.service, server.service.store
        cookie = await _session(server)
        await refuse_inserts(server, "audit_log")
        with pytest.raises(Unavailable, match="audit record of app.create"):
            await service.create_app("shop", app_id="shop", actor=CLI)
        assert await db.get_app("shop") is None
        assert_error(await _logout(server, cookie), 503, "unavailable")
        assert (await _snapshot(server, cookie)).status_code == 200
        await allow_inserts(server, "audit_log")
        record, _ = await service.create_app("shop", app_id="shop", actor=CLI)
        assert (await _logout(server, cookie)).status_code == 303
        assert (await _snapshot(server, cookie)).status_code == 401
        shop = await db.audit_log("shop", limit=10)
        assert [(r.action, r.target) for r in shop] == [("app.create", "shop")]
        assert shop[0].details["prefix"] in [k.prefix for k in await db.list_api_keys("shop")]
        async with server.http() as http:
            assert [r["action"] for r in await _records(http)] == ["dashboard.logout",
                                                                   "dashboard.login"]


async def test_the_sweep_records_each_expired_key_it_deletes(each_store):
    """A key's expiry writes nothing (it is refused from its expires_at on);
    the retention sweep's deletion of it is a change, recorded in the same
    transaction as ``key.drop`` by the operator."""
    server = each_store
    keys = server.service.keys
    async with server.http() as http:
        soon = datetime.fromtimestamp(time.time() + 60, UTC).isoformat()
        made = (await http.post("/v1/keys", json={"scopes": ["read"],
                                                   "expires_at": soon})).json()

        async def listed() -> list[str]:
            return [k["prefix"] for k in (await http.get("/v1/keys")).json()["keys"]]

        await refuse_inserts(server, "audit_log")
        with pytest.raises(Unavailable, match="audit record of key.drop"):
            await keys.prune(time.time() + 120)  # as if it expired long ago
        assert made["prefix"] in await listed()
        await allow_inserts(server, "audit_log")
        assert await keys.prune(time.time() + 120) == 1
        assert made["prefix"] not in await listed()
        record = await _one(http, "key.drop")
        assert (record["actor"], record["address"], record["target"]) == (
            "operator", None, made["prefix"])
        assert record["details"]["expires_at"] == pytest.approx(time.time() + 60, abs=5)
