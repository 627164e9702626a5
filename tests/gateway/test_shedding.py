"""Draining a node without stopping it, and shedding streams (tidings/gateway/shedding.py),
over real sockets: the operator's requests, real WebSocket and SSE devices."""

from __future__ import annotations

import asyncio
import contextlib
import time

import pytest

from tests.conftest import run_server
from tests.gateway.live import SSEReader, closed_with, publish, recv_events, ws_connect
from tidings.errors import CLOSE_SHUTDOWN

pytestmark = pytest.mark.timeout(60)


def test_the_ends_fall_evenly_inside_the_spread():
    from tidings.gateway.shedding import shed_count, spread

    assert spread(4, 2.0) == [0.0, 0.5, 1.0, 1.5]
    assert spread(3, 0) == [0, 0, 0]
    assert spread(0, 30) == []
    assert [shed_count(6, f) for f in (0, 0.5, 1)] == [0, 3, 6]
    assert shed_count(5, 0.5) == 2 and shed_count(7, 0.5) == 4  # halves to the even one


@contextlib.asynccontextmanager
async def operated(tmp_path):
    """A server whose own app is the operator app: its admin key drains it."""
    async with run_server(tmp_path, operator_app="testapp") as server:
        yield server


async def open_ws(server, user: str):
    ws = await ws_connect(server, await server.token(user))
    (hello, *_) = await recv_events(ws, 1)
    assert hello["type"] == "hello"
    return ws


@contextlib.asynccontextmanager
async def open_sse(server, user: str):
    async with SSEReader(server, await server.token(user)) as sse:
        (_, hello), = await sse.events(1)
        assert hello["type"] == "hello"
        yield sse


async def ended_at(ws) -> float:
    """When the server ended ``ws`` with 4001 (loop time)."""
    code, _ = await closed_with(ws)
    assert code == CLOSE_SHUTDOWN
    return asyncio.get_running_loop().time()


async def sse_ended_at(sse) -> float:
    with pytest.raises(StopAsyncIteration):
        await sse.events(1, timeout=10)
    return asyncio.get_running_loop().time()


async def still_live(server, ws, user: str) -> None:
    """``ws`` is open: a notification to ``user`` reaches it."""
    await publish(server, {"users": [user]})
    got = await recv_events(ws, 1)
    while got[-1]["type"] != "notification":
        got += await recv_events(ws, 1)


async def test_a_drain_ends_streams_over_the_spread_and_the_node_keeps_serving(tmp_path):
    async with operated(tmp_path) as server, server.http() as http:
        socks = [await open_ws(server, f"u{i}") for i in range(3)]
        async with open_sse(server, "u3") as sse:
            loop = asyncio.get_running_loop()
            start = loop.time()
            r = await http.post("/v1/node/drain", json={"over": 1})
            assert r.status_code == 202, r.text
            state = r.json()
            assert state["draining"] is True and state["streams"] == 4
            assert state["plan"]["kind"] == "drain" and state["plan"]["planned"] == 4
            ready = await http.get("/readyz")
            assert ready.status_code == 503 and ready.json()["ready"] is False
            ends = await asyncio.gather(*(ended_at(ws) for ws in socks), sse_ended_at(sse))
        # spread: the first at once, the last at 3/4 of the second (never early)
        assert min(ends) - start < 0.5
        assert 0.7 <= max(ends) - start < 4

        # new streams are refused as during the SIGTERM drain
        ws = await ws_connect(server, await server.token("new"))
        assert (await closed_with(ws))[0] == CLOSE_SHUTDOWN
        r = await http.get("/v1/me/events", params={"token": await server.token("new")})
        assert r.status_code == 503 and r.headers["Retry-After"] == "1"
        # HTTP goes on: a publish is taken and reads back
        (nid,) = await publish(server, {"users": ["u0"]})
        inbox = await http.get("/v1/users/u0/notifications")
        assert [n["id"] for n in inbox.json()["items"]] == [nid]
        state = (await http.get("/v1/node")).json()
        assert state["streams"] == 0 and state["plan"]["ended"] == 4 and state["plan"]["done"]

        r = await http.post("/v1/node/undrain")
        assert r.status_code == 200 and r.json()["draining"] is False
        assert (await http.get("/readyz")).status_code == 200
        ws = await open_ws(server, "u0")
        await still_live(server, ws, "u0")
        async with open_sse(server, "u1"):
            assert server.service.hub.connections == 2
        await ws.close()


async def test_an_undrain_stops_the_drain_and_its_streams_stay_open(tmp_path):
    async with operated(tmp_path) as server, server.http() as http:
        socks = [await open_ws(server, f"u{i}") for i in range(2)]
        r = await http.post("/v1/node/drain")  # no body: 30 s, the second at 15 s
        assert r.status_code == 202 and r.json()["plan"]["over"] == 30
        done, pending = await asyncio.wait(
            [asyncio.ensure_future(closed_with(ws)) for ws in socks], timeout=10,
            return_when=asyncio.FIRST_COMPLETED)
        assert len(done) == 1 and done.pop().result()[0] == CLOSE_SHUTDOWN
        assert (await http.post("/v1/node/undrain")).status_code == 200
        for task in pending:
            task.cancel()
        survivor = next(ws for ws in socks if ws.close_code is None)
        user = f"u{socks.index(survivor)}"
        await still_live(server, survivor, user)
        plan = (await http.get("/v1/node")).json()["plan"]
        assert plan["ended"] == 1 and plan["done"] is True
        await survivor.close()


async def test_a_shed_ends_that_fraction_and_readiness_stays_green(tmp_path):
    async with operated(tmp_path) as server, server.http() as http:
        users = [f"u{i}" for i in range(6)]
        socks = [await open_ws(server, u) for u in users]
        ends = {asyncio.ensure_future(closed_with(ws)): ws for ws in socks}
        r = await http.post("/v1/node/shed", json={"fraction": 0.5, "over": 0.5})
        assert r.status_code == 202, r.text
        assert r.json()["draining"] is False and r.json()["plan"]["planned"] == 3
        assert (await http.get("/readyz")).status_code == 200
        late = await open_ws(server, "late")  # the node takes streams meanwhile
        deadline = time.monotonic() + 10
        while not (await http.get("/v1/node")).json()["plan"]["done"]:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
        done, _ = await asyncio.wait(ends, timeout=1)
        assert len(done) == 3  # exactly round(0.5 x 6)
        assert all(t.result()[0] == CLOSE_SHUTDOWN for t in done)
        for task, ws in ends.items():
            if task not in done:
                task.cancel()
                await still_live(server, ws, users[socks.index(ws)])
        assert (await http.get("/readyz")).status_code == 200
        assert server.service.hub.connections == 4  # three left and the late one

        # everything at once
        r = await http.post("/v1/node/shed", json={"fraction": 1, "over": 0})
        assert r.json()["plan"]["planned"] == 4
        assert (await closed_with(late))[0] == CLOSE_SHUTDOWN
