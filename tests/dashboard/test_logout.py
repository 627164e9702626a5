"""Logging out of the dashboard ends the session on the server, on every
node: the cookie's value stops working, even a copy taken before."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest

from tests.api.conftest import store_overrides
from tests.conftest import run_server, two_nodes
from tidings.broker.base import KEYS_CHANNEL
from tidings.dashboard import session
from tidings.dashboard.recorder import Point, Recorder
from tidings.service.sessions import SESSION_CACHE_TTL


def _client(server, cookie: str | None = None) -> httpx.AsyncClient:
    cookies = {session.COOKIE: cookie} if cookie else None
    return httpx.AsyncClient(base_url=server.url, timeout=10, cookies=cookies)


async def _session(server) -> str:
    async with _client(server) as http:
        r = await http.post("/dashboard/login", data={"key": server.api_key})
    assert r.status_code == 303, r.text
    return r.cookies[session.COOKIE]


async def _logout(server, cookie: str | None) -> httpx.Response:
    async with _client(server, cookie) as http:
        return await http.post("/dashboard/logout")


async def _snapshot(server, cookie: str) -> httpx.Response:
    async with _client(server, cookie) as http:
        return await http.get("/dashboard/api/snapshot")


async def _assert_logged_out(server, cookie: str) -> None:
    """The cookie's value answers as a logged-out session, everywhere."""
    async with _client(server, cookie) as http:
        for path in ("/dashboard/api/snapshot", "/dashboard/api/history", "/dashboard/events",
                     "/dashboard/api/notification?id=x"):
            r = await http.get(path)
            assert r.status_code == 401, (path, r.text)
            assert r.json()["error"]["code"] == "session_ended"
        page = await http.get("/dashboard")
        assert page.status_code == 303
        assert page.headers["location"] == "/dashboard/login?reason=logout"
        assert 'tidings_dashboard=""' in page.headers["set-cookie"]  # dropped
        form = await http.get(page.headers["location"])
        assert "Logged out." in form.text


@pytest.mark.parametrize("cache", [True, False])
async def test_logout_ends_the_session_and_a_copy_of_its_cookie(tmp_path, cache):
    async with run_server(tmp_path, cache=cache) as server:
        cookie = await _session(server)
        other = await _session(server)  # another browser, the same key
        assert (await _snapshot(server, cookie)).status_code == 200  # known open now
        out = await _logout(server, cookie)
        assert out.status_code == 303
        assert out.headers["location"] == "/dashboard/login?reason=logout"
        assert 'tidings_dashboard=""' in out.headers["set-cookie"]
        await _assert_logged_out(server, cookie)  # the value copied before the logout
        # that session only: the other goes on
        assert (await _snapshot(server, other)).status_code == 200
        # logging out twice, or with no session or a bad one, only drops the cookie
        assert (await _logout(server, cookie)).status_code == 303
        r = await _logout(server, None)
        assert r.status_code == 303 and "set-cookie" not in r.headers
        expired = session.issue(server.uvicorn.config.app.state.dashboard.secret, "testapp",
                                "0a1b2c3d", time.time() - 10, ttl=5)
        for bad in ("v2.garbage", expired):
            r = await _logout(server, bad)
            assert r.status_code == 303 and 'tidings_dashboard=""' in r.headers["set-cookie"]
        async with _client(server, other) as http:
            assert (await http.get("/dashboard/logout")).status_code == 405  # POST only
            assert (await http.get("/dashboard/api/snapshot")).status_code == 200


async def test_logout_ends_an_open_event_stream(server):
    rec = server.uvicorn.config.app.state.dashboard.recorder
    rec.sample = lambda: Point(t=time.time(), dt=1.0)  # the stream's ticks come from the test
    cookie = await _session(server)
    async with _client(server, cookie) as http, http.stream("GET", "/dashboard/events") as r:
        lines = r.aiter_lines()
        while not (await asyncio.wait_for(lines.__anext__(), 5)).startswith("data: "):
            pass
        assert (await _logout(server, cookie)).status_code == 303
        Recorder.sample(rec)  # the stream's next tick: it ends instead of sending
        rest = [line async for line in lines]
        assert not [line for line in rest if line.startswith("data: ")], rest


async def test_a_logout_outlives_a_restart(tmp_path):
    async with run_server(tmp_path) as server:
        cookie = await _session(server)
        assert (await _logout(server, cookie)).status_code == 303
        key = server.api_key
    async with run_server(tmp_path, api_key=key) as again:
        await _assert_logged_out(again, cookie)


async def test_a_logout_the_store_cannot_record_is_a_503_and_keeps_the_cookie(tmp_path):
    """A session that still works is not answered "logged out"."""
    async with store_overrides("postgres") as store:
        async with run_server(tmp_path, **store) as server:
            key, cookie = server.api_key, await _session(server)
        # a session that may not write, as on a standby after a failover gone wrong
        read_only = store["store"] + "&default_transaction_read_only=on"
        async with run_server(tmp_path, store=read_only, api_key=key) as server:
            r = await _logout(server, cookie)
            assert r.status_code == 503 and r.json()["error"]["code"] == "unavailable"
            assert int(r.headers["retry-after"]) >= 1
            assert "set-cookie" not in r.headers
            assert (await _snapshot(server, cookie)).status_code == 200
        async with run_server(tmp_path, **store, api_key=key) as server:
            assert (await _logout(server, cookie)).status_code == 303
            await _assert_logged_out(server, cookie)


@pytest.mark.parametrize("broker", ["redis", "postgres"])
async def test_a_logout_reaches_the_other_node_at_once(tmp_path, broker):
    """Node B found the session open and would trust that for an hour: only
    the broker's message can make it refuse the cookie within a second."""
    overrides = {} if broker == "redis" else {"broker": None}  # the store's LISTEN/NOTIFY
    async with two_nodes(tmp_path, **overrides) as (a, b):
        b.service.sessions._open.ttl = 3600
        cookie = await _session(a)
        assert (await _snapshot(b, cookie)).status_code == 200  # a session works on any node
        assert (await _logout(a, cookie)).status_code == 303
        started = time.monotonic()
        while (await _snapshot(b, cookie)).status_code == 200:
            assert time.monotonic() - started < 2, "node B still takes the session"
            await asyncio.sleep(0.02)
        assert time.monotonic() - started < 1
        await _assert_logged_out(b, cookie)


async def test_a_lost_logout_message_still_ends_the_session_within_the_cache_ttl(tmp_path):
    async with two_nodes(tmp_path) as (a, b):
        b.service.broker.unsubscribe(KEYS_CHANNEL)  # deaf to logouts
        cookie = await _session(a)
        assert (await _snapshot(b, cookie)).status_code == 200
        cached_at = time.monotonic()
        assert (await _logout(a, cookie)).status_code == 303
        while (await _snapshot(b, cookie)).status_code == 200:
            assert time.monotonic() - cached_at < SESSION_CACHE_TTL + 2
            await asyncio.sleep(0.1)
        assert time.monotonic() - cached_at <= SESSION_CACHE_TTL + 1.5
        await _assert_logged_out(b, cookie)
