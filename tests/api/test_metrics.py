"""/metrics: per-app counters, latency histogram, connections and errors by code."""

from __future__ import annotations

import re

import httpx

from tests.gateway.live import publish, recv_events, ws_connect


def _samples(text: str) -> dict[str, float]:
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


async def _scrape(server) -> dict[str, float]:
    """Every app's series: the test app is made the operator's."""
    server.service.settings.operator_app = server.app
    async with server.http() as http:
        r = await http.get("/metrics")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain")
    return _samples(r.text)


async def test_counters_per_app_and_latency_once_per_message(server):
    other, other_key = await server.new_app("other")
    token = await server.token("alice")
    ws1 = await ws_connect(server, token)
    ws2 = await ws_connect(server, token)  # two devices of one user
    await recv_events(ws1, 1)
    await recv_events(ws2, 1)

    await publish(server, {"users": ["alice", "bob"]}, 3)
    await publish(server, {"all": True}, 2)
    await recv_events(ws1, 5)
    await recv_events(ws2, 5)
    async with server.http(other_key) as http:
        r = await http.post("/v1/notifications", json={"to": {"users": ["zed"]}, "title": "x"})
        assert r.status_code == 202

    m = await _scrape(server)
    app = 'app="testapp"'
    assert m[f"tidings_publishes_total{{{app}}}"] == 5
    assert m[f"tidings_publishes_total{{app=\"{other}\"}}"] == 1
    assert m[f"tidings_recipients_total{{{app}}}"] == 3 * 2  # broadcasts: no inbox rows
    # 5 notifications reached the user's 2 open streams; bob and zed have none
    assert m[f"tidings_deliveries_total{{{app}}}"] == 10
    assert m[f"tidings_deliveries_total{{app=\"{other}\"}}"] == 0
    # latency is observed once per broker message that reached a stream, not per stream
    assert m[f"tidings_delivery_latency_seconds_count{{{app}}}"] == 5
    assert m[f'tidings_delivery_latency_seconds_bucket{{{app},le="+Inf"}}'] == 5
    assert 0 < m[f"tidings_delivery_latency_seconds_sum{{{app}}}"] < 5
    assert m[f'tidings_connections{{{app},transport="ws"}}'] == 2
    assert m[f"tidings_queue_depth_max{{{app}}}"] >= 0
    await ws1.close()
    await ws2.close()


async def test_errors_by_code_with_and_without_an_app(server):
    token = await server.token("alice")
    async with httpx.AsyncClient(base_url=server.url) as http:
        r = await http.get("/v1/me/counts", headers={"Authorization": "Basic x"})
        assert r.status_code == 401
        r = await http.get("/v1/me/notifications", params={"limit": "x"},
                           headers={"Authorization": f"Bearer {token}"})
        assert r.status_code == 422
        r = await http.get("/v1/me/events", params={"token": "nope"})
        assert r.status_code == 401
    m = await _scrape(server)
    assert m['tidings_errors_total{app="",code="unauthorized"}'] == 1
    assert m['tidings_errors_total{app="",code="bad_token"}'] == 1
    assert m['tidings_errors_total{app="testapp",code="invalid"}'] == 1


async def test_replays_and_no_topic_names(server):
    token = await server.token("carol")
    ws = await ws_connect(server, token)
    (hello,) = await recv_events(ws, 1)
    await ws.close()
    await publish(server, {"topic": "secret-topic-name"}, 1)
    await publish(server, {"users": ["carol"]}, 2)
    ws = await ws_connect(server, token, cursor=hello["cursor"])
    await recv_events(ws, 4)  # hello, 2 replayed, recovered
    await ws.close()
    server.service.settings.operator_app = server.app
    async with server.http() as http:
        text = (await http.get("/metrics")).text
    assert _samples(text)['tidings_replayed_total{app="testapp"}'] == 2
    assert "secret-topic-name" not in text
    assert re.search(r"^tidings_streams_opened_total 2\.0$", text, re.M)


async def test_metrics_take_an_admin_key_and_show_other_apps_only_to_the_operator(server):
    other, other_key = await server.new_app("other")
    publisher = await server.service.create_api_key(server.app, ["publish"])
    async with server.http(other_key) as http:
        r = await http.post("/v1/notifications", json={"to": {"users": ["zed"]}, "title": "x"})
        assert r.status_code == 202
    await publish(server, {"users": ["alice"]}, 1)
    async with httpx.AsyncClient(base_url=server.url) as anonymous:
        r = await anonymous.get("/metrics")
        assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized"
    async with server.http(publisher) as http:
        assert (await http.get("/metrics")).status_code == 403
    # an app's own admin key: its own series, no other app's id nor node-wide counts
    async with server.http(other_key) as http:
        text = (await http.get("/metrics")).text
    assert _samples(text)[f'tidings_publishes_total{{app="{other}"}}'] == 1
    assert "testapp" not in text and "tidings_streams_opened" not in text
    # the operator app's admin key: everything
    m = await _scrape(server)
    assert m['tidings_publishes_total{app="testapp"}'] == 1
    assert m[f'tidings_publishes_total{{app="{other}"}}'] == 1


async def test_metrics_can_be_made_public(tmp_path):
    from tests.conftest import run_server

    async with run_server(tmp_path, metrics_public=True) as server:
        async with httpx.AsyncClient(base_url=server.url) as anonymous:
            r = await anonymous.get("/metrics")
        assert r.status_code == 200 and "tidings_node_info" in r.text


async def test_a_retried_publish_is_not_counted_again(server):
    async with server.http() as http:
        for _ in range(3):  # the first attempt and two retries with its key
            r = await http.post("/v1/notifications", headers={"Idempotency-Key": "k-1"},
                                json={"to": {"users": ["ann", "bo"]}, "title": "once"})
            assert r.status_code == 202
    m = await _scrape(server)
    assert m['tidings_publishes_total{app="testapp"}'] == 1
    assert m['tidings_recipients_total{app="testapp"}'] == 2
