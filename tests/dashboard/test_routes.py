"""/dashboard over real HTTP: access control, sessions, scope, data, cache, SSE."""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from datetime import UTC, datetime

import httpx
import pytest

from tests.conftest import run_server
from tests.gateway.live import publish, recv_events, ws_connect
from tidings.dashboard import session
from tidings.dashboard.recorder import Recorder


def _dash(server):
    return server.uvicorn.config.app.state.dashboard


def _freeze(server):
    """Stop the background once-a-second sampling; return a manual ``sample()``."""
    rec = _dash(server).recorder
    rec.sample = lambda: None  # the running loop now samples nothing
    return lambda: Recorder.sample(rec)


def _client(server, **kw) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=server.url, timeout=10, **kw)


async def _login(server, key: str) -> httpx.Response:
    async with _client(server) as http:
        return await http.post("/dashboard/login", data={"key": key})


async def _session(server, key: str | None = None) -> str:
    r = await _login(server, key or server.api_key)
    assert r.status_code == 303, r.text
    return r.cookies[session.COOKIE]


async def _snapshot(server, **headers) -> dict:
    async with _client(server) as http:
        r = await http.get("/dashboard/api/snapshot", headers=headers)
    assert r.status_code == 200, r.text
    return r.json()


# -- no anonymous access ------------------------------------------------------------
async def test_anonymous_gets_the_login_form_and_no_data(server):
    async with _client(server) as http:
        r = await http.get("/dashboard")
        assert r.status_code == 303 and r.headers["location"] == "/dashboard/login"
        form = await http.get("/dashboard/login")
        assert form.status_code == 200 and 'name="key"' in form.text
        assert "default-src 'none'" in form.headers["content-security-policy"]
        for path in ("/dashboard/api/snapshot", "/dashboard/api/history", "/dashboard/events"):
            r = await http.get(path)
            assert r.status_code == 401, path
            assert r.json()["error"]["code"] == "login_required"


@pytest.mark.parametrize("header, status, code", [
    ("Bearer tk_00000000_not-a-real-key", 401, "bad_api_key"),
    ("Bearer garbage", 401, "bad_api_key"),
    ("Basic dXNlcjpwYXNz", 401, "unauthorized"),
])
async def test_wrong_key_header_is_a_clear_error(server, header, status, code):
    async with _client(server) as http:
        for path in ("/dashboard", "/dashboard/api/snapshot", "/dashboard/events"):
            r = await http.get(path, headers={"Authorization": header})
            assert r.status_code == status, (path, r.text)
            assert r.json()["error"]["code"] == code


async def test_a_key_without_the_admin_scope_is_forbidden(server):
    key = await server.service.create_api_key(server.app, {"publish", "read"})
    async with _client(server) as http:
        r = await http.get("/dashboard/api/snapshot", headers={"Authorization": f"Bearer {key}"})
        assert r.status_code == 403 and r.json()["error"]["code"] == "missing_scope"
    r = await _login(server, key)
    assert r.status_code == 403 and session.COOKIE not in r.cookies
    assert "admin" in r.text


async def test_login_with_a_wrong_key_shows_the_form_again(server):
    for key in ("tk_00000000_nope", "", "x" * 500):
        r = await _login(server, key)
        assert r.status_code == 401
        assert session.COOKIE not in r.cookies
        assert 'name="key"' in r.text and 'role="alert"' in r.text
    r = await _login(server, "tk_<script>alert(1)</script>")
    assert r.status_code == 401 and "<script>alert" not in r.text  # input is never echoed


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
async def test_login_with_a_nul_in_the_key_prefix_is_401_on_every_store(tmp_path, kind):
    """The form's key reaches the store's key lookup by its prefix: one that
    cannot be a key's (a NUL, which PostgreSQL cannot compare) is the same
    401 form as any wrong key, not a 500."""
    from tests.api.conftest import store_overrides

    async with store_overrides(kind) as store, run_server(tmp_path, **store) as server:
        for key in ("tk_\x00\x00\x00\x00\x00\x00\x00\x00_secret", "tk_abcdef0\x00_secret",
                    "tk_ghijklmn_secret"):
            r = await _login(server, key)
            assert r.status_code == 401, (key, r.status_code, r.text)
            assert session.COOKIE not in r.cookies and 'role="alert"' in r.text


async def test_bad_login_requests_are_400_not_500(server):
    async with _client(server) as http:
        r = await http.post("/dashboard/login", json={"key": server.api_key})
        assert r.status_code == 400 and r.json()["error"]["code"] == "bad_form"
        r = await http.post("/dashboard/login", content=b"key=\xff\xfe",
                            headers={"Content-Type": "application/x-www-form-urlencoded"})
        assert r.status_code == 400 and r.json()["error"]["code"] == "bad_form"
        r = await http.post("/dashboard/login", content=b"key=" + b"a" * 10_000,
                            headers={"Content-Type": "application/x-www-form-urlencoded"})
        assert r.status_code == 413


# -- sessions -------------------------------------------------------------------------
async def test_login_sets_a_strict_httponly_cookie_that_opens_the_dashboard(server):
    r = await _login(server, server.api_key)
    assert r.status_code == 303 and r.headers["location"] == "/dashboard"
    cookie = r.headers["set-cookie"]
    for attr in ("HttpOnly", "SameSite=strict", "Path=/dashboard", "Max-Age=43200"):
        assert attr.lower() in cookie.lower(), cookie
    assert server.api_key not in cookie  # the key itself is never in the cookie
    value = r.cookies[session.COOKIE]
    async with _client(server, cookies={session.COOKIE: value}) as http:
        page = await http.get("/dashboard")
        assert page.status_code == 200 and "chart-rates" in page.text
        assert page.headers["x-frame-options"] == "DENY"
        assert (await http.get("/dashboard/api/snapshot")).json()["scope"] == "testapp"
        out = await http.post("/dashboard/logout")
        assert out.status_code == 303
        assert 'tidings_dashboard=""' in out.headers["set-cookie"]


async def test_tampered_and_expired_cookies_are_refused(server):
    value = await _session(server)
    secret = _dash(server).secret
    forged = value.replace("v2.testapp.", "v2.otherapp.")
    expired = session.issue(secret, "testapp", "0a1b2c3d", time.time() - 10, ttl=5)
    for bad, code in ((forged, "bad_session"), (value[:-2] + "xx", "bad_session"),
                      ("v2.garbage", "bad_session"), (expired, "session_expired")):
        async with _client(server, cookies={session.COOKIE: bad}) as http:
            r = await http.get("/dashboard/api/snapshot")
            assert r.status_code == 401 and r.json()["error"]["code"] == code, bad
            page = await http.get("/dashboard")
            assert page.status_code == 303
            assert page.headers["location"] == "/dashboard/login?reason=expired"
            assert 'tidings_dashboard=""' in page.headers["set-cookie"]  # dropped


async def test_a_session_and_a_stream_end_when_their_key_is_revoked(server):
    """A cookie names the key it was opened with: revoking the key ends the
    session at once, and an open event stream at its next sample."""
    sample = _freeze(server)
    async with server.http() as http:
        r = await http.post("/v1/keys", json={"scopes": ["admin"], "name": "ops"})
        made = r.json()
    value = await _session(server, made["api_key"])
    async with _client(server, cookies={session.COOKIE: value}) as http:
        assert (await http.get("/dashboard/api/snapshot")).status_code == 200
        async with http.stream("GET", "/dashboard/events") as stream:
            lines = stream.aiter_lines()
            while not (await asyncio.wait_for(lines.__anext__(), 5)).startswith("data: "):
                pass
            async with server.http() as admin:
                r = await admin.delete(f"/v1/keys/{made['prefix']}")
                assert r.status_code == 204
            sample()  # the stream's next tick: it ends instead of sending
            rest = [line async for line in lines]
            assert not [line for line in rest if line.startswith("data: ")], rest
        r = await http.get("/dashboard/api/snapshot")
        assert r.status_code == 401 and r.json()["error"]["code"] == "session_revoked"
        page = await http.get("/dashboard")
        assert page.headers["location"] == "/dashboard/login?reason=expired"
    # the first key's own session is another key's: it goes on
    async with _client(server, cookies={session.COOKIE: await _session(server)}) as http:
        assert (await http.get("/dashboard/api/snapshot")).status_code == 200


# -- scope ------------------------------------------------------------------------------
async def test_another_apps_admin_key_sees_only_its_own_app(server):
    other, other_key = await server.new_app("other")
    token = await server.token("alice")
    ws = await ws_connect(server, token)
    await recv_events(ws, 1)
    await publish(server, {"topic": "testapp-secret-topic"}, 2)
    await publish(server, {"users": ["alice"]}, 1)
    await recv_events(ws, 1)
    async with server.http() as http:
        await http.get("/v1/users/alice/notifications", params={"limit": "zz"})  # an error
    sample = _freeze(server)
    sample()
    value = await _session(server, other_key)
    async with _client(server, cookies={session.COOKIE: value}) as http:
        snap = (await http.get("/dashboard/api/snapshot")).json()
        history = (await http.get("/dashboard/api/history")).json()
    assert snap["scope"] == other
    text = json.dumps(snap) + json.dumps(history)
    assert "testapp" not in text and "secret-topic" not in text and "alice" not in text
    assert snap["totals"]["published"] == 0 and snap["connections"]["total"] == 0
    assert snap["apps"] == [] and snap["topics"] == [] and snap["errors"] == []
    assert max(history["series"]["delivered"]) == 0
    # nodes are listed, without numbers made of other apps' traffic
    (node,) = snap["nodes"]
    assert node["self"] and "connections" not in node and "address" not in node
    # ...while testapp's own admin sees testapp
    mine = await _snapshot(server, Authorization=f"Bearer {server.api_key}")
    assert mine["scope"] == "testapp" and mine["totals"]["published"] == 3
    assert [t["topic"] for t in mine["topics"]] == ["testapp-secret-topic"]
    assert mine["errors"][0]["code"] == "invalid"
    await ws.close()


async def test_an_apps_admin_sees_the_nodes_by_labels_not_their_addresses(server):
    """A node's default name is host:port:pid: an app's admin sees a label
    instead, the same in every document and for every app, and not the name
    hashed plainly (which trying the addresses and pids would undo)."""
    name = server.uvicorn.config.app.state.node
    host = server.url.removeprefix("http://").split(":")[0]
    assert host in name  # the default name carries the address
    other, other_key = await server.new_app("other")
    docs = []
    for key in (server.api_key, other_key):  # neither is the operator app's
        async with _client(server, headers={"Authorization": f"Bearer {key}"}) as http:
            for path in ("/dashboard/api/snapshot", "/dashboard/api/history",
                         "/dashboard/api/snapshot?view=node"):
                r = await http.get(path)
                assert r.status_code == 200, r.text
                assert host not in r.text and name not in r.text, (path, r.text)
                docs.append(r.json())
    rows = [row for doc in docs for row in doc.get("nodes", ())]
    (label,) = {doc["node"] for doc in docs} | {row["node"] for row in rows}
    assert label.startswith("node ") and len(label) == len("node ") + 8, label
    assert label.removeprefix("node ") not in hashlib.sha256(name.encode()).hexdigest()
    assert rows and all(row["self"] for row in rows)


async def test_the_operator_app_sees_every_app_and_the_nodes(tmp_path):
    async with run_server(tmp_path, operator_app="testapp") as server:
        other, other_key = await server.new_app("other")
        async with server.http(other_key) as http:
            r = await http.post("/v1/notifications", json={"to": {"topic": "t1"}, "title": "x"})
            assert r.status_code == 202
        await publish(server, {"users": ["bob"]}, 2)
        _freeze(server)()
        snap = await _snapshot(server, Authorization=f"Bearer {server.api_key}")
        assert snap["scope"] == "*"
        assert snap["totals"]["published"] == 3
        assert {a["app"] for a in snap["apps"]} == {"testapp", other}
        assert {(t["app"], t["topic"]) for t in snap["topics"]} == {(other, "t1")}
        (node,) = snap["nodes"]
        assert node["node"] == server.uvicorn.config.app.state.node
        assert node["address"] and node["connections"] == 0


# -- the numbers, the cache, the stream ------------------------------------------------------
async def test_numbers_move_when_notifications_flow(server):
    sample = _freeze(server)
    sample()
    auth = {"Authorization": f"Bearer {server.api_key}"}
    before = await _snapshot(server, **auth)
    tokens = [await server.token(u) for u in ("u1", "u2")]
    socks = [await ws_connect(server, t) for t in tokens]
    for ws in socks:
        await recv_events(ws, 1)
    await publish(server, {"all": True}, 4)
    for ws in socks:
        await recv_events(ws, 4)
    sample()
    after = await _snapshot(server, **auth)
    assert before["point"]["delivered"] == 0
    assert after["totals"]["delivered"] == 8 and after["totals"]["published"] == 4
    assert after["point"]["delivered"] > 0 and after["point"]["published"] > 0
    assert after["connections"] == {"total": 2, "ws": 2, "sse": 0}
    assert after["latency_10s"]["p99"] is not None and after["latency_10s"]["p99"] >= 0
    assert after["apps"][0]["app"] == "testapp" and after["apps"][0]["connections"] == 2
    for ws in socks:
        await ws.close()


@pytest.mark.parametrize("cache", [True, False])
async def test_the_snapshot_is_built_once_per_second_when_cached(tmp_path, cache):
    async with run_server(tmp_path, cache=cache) as server:
        sample = _freeze(server)
        sample()
        views = _dash(server).views
        auth = {"Authorization": f"Bearer {server.api_key}"}
        builds = views.builds
        first = await _snapshot(server, **auth)
        second = await _snapshot(server, **auth)
        assert views.builds - builds == (1 if cache else 2)
        if cache:
            assert first == second  # the same bytes, shared
        sample()  # a new second: a new document
        await _snapshot(server, **auth)
        assert views.builds - builds == (2 if cache else 3)


async def test_events_push_a_snapshot_every_sample(server):
    sample = _freeze(server)
    value = await _session(server)
    async with _client(server, cookies={session.COOKIE: value}) as http:
        async with http.stream("GET", "/dashboard/events") as r:
            assert r.status_code == 200
            assert r.headers["content-type"].startswith("text/event-stream")
            lines = r.aiter_lines()

            async def next_snapshot() -> dict:
                while True:
                    line = await asyncio.wait_for(lines.__anext__(), 5)
                    if line.startswith("data: "):
                        return json.loads(line[6:])

            first = await next_snapshot()
            assert first["scope"] == "testapp"
            await publish(server, {"users": ["x"]}, 1)
            sample()
            second = await next_snapshot()
            assert second["totals"]["published"] == 1


async def test_events_head_answers_the_headers_and_ends(server):
    """HEAD opens no stream: the connection serves the next request at once."""
    auth = {"Authorization": f"Bearer {server.api_key}"}
    async with _client(server, headers=auth, limits=httpx.Limits(max_connections=1)) as http:
        r = await http.head("/dashboard/events")
        assert r.status_code == 200 and r.content == b""
        assert r.headers["content-type"].startswith("text/event-stream")
        assert (await http.get("/dashboard/api/snapshot")).status_code == 200


async def test_a_broker_outage_empties_the_node_list_only(server, monkeypatch):
    async def down():
        raise ConnectionError("broker unreachable")

    monkeypatch.setattr(server.service.broker, "nodes", down)
    snap = await _snapshot(server, Authorization=f"Bearer {server.api_key}")
    assert snap["nodes"] == [] and snap["scope"] == "testapp"


async def test_history_has_one_column_per_series(server):
    sample = _freeze(server)
    for _ in range(3):
        sample()
    async with _client(server) as http:
        r = await http.get("/dashboard/api/history",
                           headers={"Authorization": f"Bearer {server.api_key}"})
    series = r.json()["series"]
    lengths = {len(v) for v in series.values()}
    assert len(lengths) == 1 and lengths.pop() >= 3
    assert series["t"] == sorted(series["t"])


# -- static files, tidings.js, demo ----------------------------------------------------
async def test_static_files_are_shipped_and_cacheable(server):
    async with _client(server) as http:
        for path, ctype in (("/tidings.js", "text/javascript"),
                            ("/tidings-inbox.js", "text/javascript"),
                            ("/dashboard/static/uPlot.iife.min.js", "text/javascript"),
                            ("/dashboard/static/uPlot.min.css", "text/css"),
                            ("/dashboard/static/uPlot.LICENSE", "text/plain"),
                            ("/dashboard/static/dashboard.js", "text/javascript")):
            r = await http.get(path)
            assert r.status_code == 200 and r.headers["content-type"].startswith(ctype), path
            again = await http.get(path, headers={"If-None-Match": r.headers["etag"]})
            assert again.status_code == 304
        for bad in ("/dashboard/static/nope.js", "/dashboard/static/..%2Fsession.py",
                    "/dashboard/static/__init__.py"):
            r = await http.get(bad)
            assert r.status_code == 404, bad
            assert r.json()["error"]["code"] == "not_found"


async def test_the_inbox_element_is_one_script_built_on_tidings_js(server):
    async with _client(server) as http:
        bundle = (await http.get("/tidings-inbox.js")).text
        client = (await http.get("/tidings.js")).text
    assert bundle.startswith(client)  # tidings.js first: the element is built on it
    parts = [bundle.index(marker) for marker in (
        "tidings-inbox-ui.js:", "tidings-inbox-view.js:", 'define("tidings-inbox"')]
    assert parts == sorted(parts)


async def test_demo_page_keeps_its_token_to_itself(server):
    token = await server.token("alice")
    async with _client(server) as http:
        r = await http.get("/demo", params={"token": token})
    assert r.status_code == 200 and "/tidings.js" in r.text
    assert r.headers["referrer-policy"] == "no-referrer"
    assert r.headers["cache-control"] == "no-store"
    assert token not in r.text  # read by the page's script, never echoed


async def test_the_snapshot_shows_delivery_tracking_and_scheduled(server):
    auth = {"Authorization": f"Bearer {server.api_key}"}
    ws = await ws_connect(server, await server.token("u1"))
    await recv_events(ws, 1)
    (nid,) = await publish(server, {"users": ["u1", "u2"]})
    await recv_events(ws, 1)
    async with server.http() as http:
        r = await http.post("/v1/notifications", json={
            "to": {"users": ["u1"]}, "deliver_at": "2999-01-01T00:00:00Z"})
        assert r.status_code == 422  # beyond the horizon: not counted
        r = await http.post("/v1/notifications", json={
            "to": {"users": ["u1"]},
            "deliver_at": datetime.fromtimestamp(time.time() + 3600, UTC).isoformat()})
        assert r.json()["status"] == "scheduled"
    async with server.http(await server.token("u1")) as http:
        await http.post("/v1/me/notifications/read", json={"ids": [nid]})
    server.service.track(server.app, nid, "webhook", "sent")
    await server.service.flush_tracking()  # the app does it every second
    snap = await _snapshot(server, **auth)
    assert snap["tracking"] == {"in_app": {"delivered": 1, "read": 1}, "webhook": {"sent": 1}}
    assert (snap["totals"]["scheduled"], snap["totals"]["published"]) == (1, 1)
    await ws.close()
