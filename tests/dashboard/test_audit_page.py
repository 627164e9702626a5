"""Dashboard logins, failed logins and logouts in the audit log, and the
audit page's data (tidings/dashboard/audit.py), on both stores."""

from __future__ import annotations

import pytest

from tests.api.conftest import store_overrides
from tests.conftest import run_server
from tests.dashboard.test_logout import _client, _logout, _session


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
async def test_logins_failures_and_logouts_are_recorded(tmp_path, kind):
    async with store_overrides(kind) as store, \
            run_server(tmp_path, operator_app="testapp", **store) as server:
        prefix = server.api_key.split("_")[1]
        other, other_key = await server.new_app("other")
        async with _client(server) as http:
            r = await http.post("/dashboard/login", data={"key": "tk_0badc0de_not-a-key"})
            assert r.status_code == 401
            r = await http.post("/dashboard/login", data={"key": "my password"})
            assert r.status_code == 401
        cookie = await _session(server)
        assert (await _logout(server, cookie)).status_code == 303
        async with _client(server) as http:  # another app's admin: its own log
            r = await http.post("/dashboard/login", data={"key": other_key})
            assert r.status_code == 303
        async with server.http() as http:
            records = (await http.get("/v1/audit")).json()["records"]
        assert [(r["action"], r["actor"], r["target"], r["details"]) for r in records] == [
            ("dashboard.logout", f"dashboard session of key {prefix}", prefix, {}),
            ("dashboard.login", f"key {prefix}", prefix, {}),
            ("dashboard.login_failed", "login form", None, {"reason": "bad_api_key"}),
            ("dashboard.login_failed", "login form", "0badc0de", {"reason": "bad_api_key"}),
        ]
        assert all(r["address"] == "127.0.0.1" for r in records)
        async with server.http(other_key) as http:
            (login,) = (await http.get("/v1/audit")).json()["records"]
        assert (login["app"], login["action"]) == (other, "dashboard.login")


async def test_the_audit_page_reads_the_sessions_app_log(server):
    async with server.http() as http:
        assert (await http.post("/v1/keys", json={"scopes": ["read"]})).status_code == 201
    cookie = await _session(server)
    async with _client(server, cookie) as http:
        page = await http.get("/dashboard/audit")
        assert page.status_code == 200 and "audit.js" in page.text
        doc = (await http.get("/dashboard/api/audit", params={"action": "key.create"})).json()
        assert doc["app"] == server.app
        assert [r["action"] for r in doc["records"]] == ["key.create"]
        r = await http.get("/dashboard/api/audit", params={"before": "x"})
        assert r.status_code == 400 and r.json()["error"]["code"] == "bad_cursor"
    async with _client(server) as http:  # no session: the login form
        r = await http.get("/dashboard/audit")
        assert r.status_code == 303 and r.headers["location"].startswith("/dashboard/login")
        assert (await http.get("/dashboard/api/audit")).status_code == 401
