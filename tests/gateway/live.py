"""Helpers for live-stream tests over real sockets."""

from __future__ import annotations

import asyncio
import contextlib
import json

import httpx
import pytest
import websockets
from websockets.exceptions import ConnectionClosed

from tidings.gateway.stream import Stream


async def ws_connect(server, token: str, cursor: str | None = None, **kw):
    url = server.ws_url + "/v1/me/stream" + (f"?cursor={cursor}" if cursor else "")
    ws = await websockets.connect(url, **kw)
    await ws.send(json.dumps({"type": "auth", "token": token}))
    return ws


async def recv_events(ws, n: int, timeout: float = 5.0, frames: list | None = None) -> list[dict]:
    """Read frames until ``n`` events arrived (a frame may hold a JSON array)."""
    out: list[dict] = []
    while len(out) < n:
        raw = await asyncio.wait_for(ws.recv(), timeout)
        doc = json.loads(raw)
        if frames is not None:
            frames.append(doc)
        out.extend(doc if isinstance(doc, list) else [doc])
    return out


async def closed_with(ws, timeout: float = 10.0) -> tuple[int | None, str]:
    """Read until the server closes; its close code and reason."""
    with pytest.raises(ConnectionClosed) as info:
        async with asyncio.timeout(timeout):
            while True:
                await ws.recv()
    rcvd = info.value.rcvd
    return (rcvd.code, rcvd.reason) if rcvd is not None else (None, "")


async def publish(server, to: dict, n: int = 1, **fields) -> list[str]:
    ids = []
    async with server.http() as http:
        for i in range(n):
            r = await http.post("/v1/notifications",
                                json={"to": to, "title": f"n{i}", **fields})
            assert r.status_code == 202, r.text
            ids.append(r.json()["id"])
    return ids


async def delivery(server, nid: str) -> dict:
    """The notification's ``delivery`` as GET /v1/notifications/{id} answers
    it (after this node's tracking flush, which the call makes)."""
    async with server.http() as http:
        r = await http.get(f"/v1/notifications/{nid}")
    assert r.status_code == 200, r.text
    return r.json()["delivery"]


async def until_counts(ws, got: list[dict], timeout: float = 5.0) -> dict:
    """Read WebSocket events into ``got`` until a ``counts`` event; return it."""
    while True:
        raw = await recv_events(ws, 1, timeout)
        got += raw
        for ev in raw:
            if ev["type"] == "counts":
                return ev


async def sse_until_counts(sse, got: list[dict], timeout: float = 5.0) -> dict:
    """:func:`until_counts` on an :class:`SSEReader`."""
    while True:
        (_, ev), = await sse.events(1, timeout)
        got.append(ev)
        if ev["type"] == "counts":
            return ev


def badge(events: list[dict]) -> dict | None:
    """The badge a device works out from ``events`` (tidings.client.badge's rule)."""
    from tests.client.badge_scenarios import play

    return play(events, False, drop_repeats=False).counts


@contextlib.asynccontextmanager
async def serve_on(kind: str, tmp_path, **overrides):
    """A server on ``kind`` ("sqlite", or "postgres": a fresh schema, the
    in-process broker)."""
    from tests.conftest import run_server

    if kind == "sqlite":
        async with run_server(tmp_path, store=None, **overrides) as live:
            yield live
        return
    from tests.services import require_postgres
    from tests.store.pg import fresh_schema

    url = require_postgres()
    async with fresh_schema(url) as pg:
        async with run_server(tmp_path, store=f"{url}?search_path={pg['search_path']}",
                              broker="local", **overrides) as live:
            yield live


class SSEReader:
    """A minimal SSE client over httpx streaming: yields (id, event dict)."""

    def __init__(self, server, token: str, cursor: str | None = None,
                 last_event_id: str | None = None):
        params = {"token": token}
        if cursor:
            params["cursor"] = cursor
        headers = {"Last-Event-ID": last_event_id} if last_event_id else {}
        self._client = httpx.AsyncClient(base_url=server.url, timeout=10)
        self._req = self._client.stream("GET", "/v1/me/events", params=params, headers=headers)

    async def __aenter__(self):
        self.response = await self._req.__aenter__()
        self._lines = self.response.aiter_lines()
        return self

    async def __aexit__(self, *exc):
        await self._req.__aexit__(*exc)
        await self._client.aclose()

    async def events(self, n: int, timeout: float = 5.0) -> list[tuple[str | None, dict]]:
        out = []
        eid, data = None, None
        while len(out) < n:
            line = await asyncio.wait_for(self._lines.__anext__(), timeout)
            if line.startswith("id: "):
                eid = line[4:]
            elif line.startswith("data: "):
                data = json.loads(line[6:])
            elif line == "":
                if data is not None:
                    out.append((eid, data))
                eid, data = None, None
        return out


class Pause:
    """Holds the first call of ``obj.name(app, user, ...)`` for ``user`` until
    :meth:`release`: after the real call (a replay that has read the store
    and not sent anything yet), or before it (``before=True``)."""

    def __init__(self, monkeypatch, obj, name: str, user: str, *, before: bool = False):
        self.entered = asyncio.Event()
        self._go = asyncio.Event()
        real = getattr(obj, name)

        async def paused(app, who, *args, **kw):
            if who != user or self.entered.is_set():
                return await real(app, who, *args, **kw)
            if before:
                self.entered.set()
                await self._go.wait()
                return await real(app, who, *args, **kw)
            result = await real(app, who, *args, **kw)
            self.entered.set()
            await self._go.wait()
            return result

        monkeypatch.setattr(obj, name, paused)

    async def reached(self) -> None:
        await asyncio.wait_for(self.entered.wait(), 5)

    def release(self) -> None:
        self._go.set()


class Held:
    """Counts the live events streams hold back while they start (what a
    ``publish`` made while a stream's read was paused has reached it)."""

    def __init__(self, monkeypatch):
        self.n = 0
        self._more = asyncio.Event()
        real = Stream._hold

        def hold(stream, kind, pos, payload):
            real(stream, kind, pos, payload)
            self.n += 1
            self._more.set()

        monkeypatch.setattr(Stream, "_hold", hold)

    async def wait(self, n: int) -> None:
        while self.n < n:
            self._more.clear()
            await asyncio.wait_for(self._more.wait(), 5)
