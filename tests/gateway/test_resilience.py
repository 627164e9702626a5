"""Streams under adverse conditions: peers vanishing, old cursors, odd queries."""

from __future__ import annotations

import asyncio
import json
import stat

import httpx
import pytest
import websockets

from tests.conftest import run_server
from tests.gateway.live import publish, recv_events, ws_connect
from tidings.config import Limits


async def _gone(server, user: str, timeout: float = 10.0) -> bool:
    for _ in range(int(timeout / 0.05)):
        if not server.service.hub.users.get((server.app, user)):
            return True
        await asyncio.sleep(0.05)
    return False


async def test_peer_dropping_mid_replay_frees_the_stream(tmp_path):
    limits = Limits(queue_max_events=8, queue_max_bytes=64 * 1024, replay_max=5000)
    async with run_server(tmp_path, limits=limits) as server:
        token = await server.token("gone")
        ws = await ws_connect(server, token)
        (hello,) = await recv_events(ws, 1)
        await ws.close()
        async with server.http() as http:
            for _ in range(3):
                r = await http.post("/v1/notifications/batch", json={"notifications": [
                    {"to": {"users": ["gone"]}, "body": "x" * 8000} for _ in range(200)]})
                assert r.status_code == 202
        ws = await ws_connect(server, token, cursor=hello["cursor"], max_queue=1)
        ws.transport.pause_reading()  # the replay fills every buffer and waits for room
        await asyncio.sleep(0.5)
        assert server.service.hub.users.get((server.app, "gone"))
        ws.transport.abort()  # then the device vanishes without a close frame
        assert await _gone(server, "gone")


async def test_retention_sweep_turns_old_cursors_into_no_recovery(tmp_path):
    async with run_server(tmp_path, retention_days=0, prune_interval=0.05) as server:
        token = await server.token("old")
        ws = await ws_connect(server, token)
        (hello,) = await recv_events(ws, 1)
        await ws.close()
        await publish(server, {"users": ["old"]}, 3)
        await asyncio.sleep(0.3)  # a few sweeps: everything is past retention
        ws = await ws_connect(server, token, cursor=hello["cursor"])
        _, recovered = await recv_events(ws, 2)
        assert recovered == {"type": "recovered", "ok": False, "missed": 0}
        await ws.close()


async def test_too_many_query_parameters_is_a_clear_error(server):
    token = await server.token("q")
    query = "&".join(f"p{i}=1" for i in range(30))
    async with httpx.AsyncClient(base_url=server.url) as http:
        r = await http.get(f"/v1/me/events?token={token}&{query}")
        assert r.status_code == 400 and r.json()["error"]["code"] == "bad_query"
    ws = await websockets.connect(server.ws_url + "/v1/me/stream?" + query)
    try:
        await ws.send(json.dumps({"type": "auth", "token": token}))
        await asyncio.wait_for(ws.recv(), 5)
        raise AssertionError("the stream should have been refused")
    except websockets.ConnectionClosed as exc:
        assert exc.rcvd.code == 4400


async def test_auth_message_must_say_auth(server):
    ws = await websockets.connect(server.ws_url + "/v1/me/stream")
    await ws.send(json.dumps({"type": "hello", "token": await server.token("t")}))
    try:
        await asyncio.wait_for(ws.recv(), 5)
        raise AssertionError("the stream should have been refused")
    except websockets.ConnectionClosed as exc:
        assert exc.rcvd.code == 4401


async def test_the_database_is_private_to_its_owner(server):
    if not hasattr(server.service.store, "path"):
        pytest.skip("the embedded store's file; this run is on PostgreSQL")
    path = server.service.store.path
    assert stat.S_IMODE((await asyncio.to_thread(lambda: __import__("os").stat(path))).st_mode) \
        == 0o600


async def test_user_ids_with_a_slash_are_addressable(server):
    await publish(server, {"users": ["team/ann"]}, 1)
    async with server.http() as http:
        r = await http.get("/v1/users/team%2Fann/notifications")
        assert r.status_code == 200 and len(r.json()["items"]) == 1
        r = await http.put("/v1/topics/t/subscribers/team%2Fann")
        assert r.status_code == 200
        r = await http.get("/v1/topics/t")
        assert r.json()["users"] == ["team/ann"]


async def test_pings_keep_idle_streams_and_cut_dead_ones(tmp_path):
    async with run_server(tmp_path, ping_interval=0.2, ping_timeout=0.3) as server:
        alive = await ws_connect(server, await server.token("alive"))
        dead = await ws_connect(server, await server.token("dead"))
        await recv_events(alive, 1)
        await recv_events(dead, 1)
        dead.transport.pause_reading()  # a vanished device: it answers no ping
        assert await _gone(server, "dead", timeout=5)
        # the idle but responsive one is still open, and still receives
        await asyncio.sleep(0.8)
        assert server.service.hub.users.get((server.app, "alive"))
        await publish(server, {"users": ["alive"]}, 1)
        (ev,) = await recv_events(alive, 1)
        assert ev["type"] == "notification"
        await alive.close()
        dead.transport.abort()  # it never reads the server's close: drop its socket


async def test_a_device_that_answers_no_ping_is_closed_with_4003(tmp_path):
    """A device that still reads but whose pongs never come back (they were
    lost, it hung) is told why: 4003, tidings' "ping timeout, reconnect",
    not the 1011 "server error" uvicorn's keepalive closes with."""
    async with run_server(tmp_path, ping_interval=0.2, ping_timeout=0.3) as server:
        ws = await ws_connect(server, await server.token("mute"))
        await recv_events(ws, 1)
        send_frame = ws.protocol.send_frame

        def no_pongs(frame):
            if frame.opcode is not websockets.frames.Opcode.PONG:
                send_frame(frame)

        ws.protocol.send_frame = no_pongs
        with pytest.raises(websockets.ConnectionClosed) as closed:
            while True:
                await asyncio.wait_for(ws.recv(), 5)
        assert closed.value.rcvd is not None
        assert (closed.value.rcvd.code, closed.value.rcvd.reason) == (4003, "ping timeout")
        assert await _gone(server, "mute", timeout=5)


async def test_sse_sends_ping_comments(tmp_path):
    async with run_server(tmp_path, ping_interval=0.1) as server:
        token = await server.token("s")
        async with httpx.AsyncClient(base_url=server.url, timeout=5) as http:
            async with http.stream("GET", "/v1/me/events", params={"token": token}) as r:
                lines = []
                async for line in r.aiter_lines():
                    lines.append(line)
                    if line == ": ping":
                        break
        assert lines[0].startswith("retry: ") and ": ping" in lines


async def test_sse_reconnect_delays_are_spread(server):
    """Each SSE response asks for its own reconnect delay, so the streams of
    a node that stopped do not all come back at the same moment."""
    token = await server.token("herd")
    delays = []
    async with httpx.AsyncClient(base_url=server.url, timeout=5) as http:
        for _ in range(12):
            async with http.stream("GET", "/v1/me/events", params={"token": token}) as r:
                first = await anext(r.aiter_lines())
                assert first.startswith("retry: ")
                delays.append(int(first.removeprefix("retry: ")))
    assert all(500 <= d <= 3000 for d in delays)
    assert len(set(delays)) > 1
