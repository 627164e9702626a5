"""The badge stays exact when counts and notifications cross (docs/protocol.md,
"Counts and the badge"), on both stores, over real sockets.

Counts say where they were read (``at``: the user's head seq and the app's
feed head, in the same snapshot), so a device adds to them exactly the
notifications past that position.  Each test makes a race happen for sure:
it pauses a store read with a hook of its own (``Pause``, before or after
the real call), commits a notification while the read waits, and waits for
that notification to reach the stream before letting the read go on.  The
device's badge is then worked out from what it received, with the rule
every client follows (``tidings.client.badge``), and compared with the
server's counts.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

import pytest

from tests.client.badge_scenarios import play
from tests.conftest import run_server
from tests.gateway.live import Held, Pause, SSEReader, publish, recv_events, ws_connect
from tidings.client import Subscriber
from tidings.store.base import NewNotification


@pytest.fixture(params=["sqlite", "postgres"])
async def server(request, tmp_path):
    if request.param == "sqlite":
        async with run_server(tmp_path, store=None) as live:
            yield live
        return
    from tests.services import require_postgres
    from tests.store.pg import fresh_schema

    url = require_postgres()
    async with fresh_schema(url) as pg:
        async with run_server(tmp_path, store=f"{url}?search_path={pg['search_path']}",
                              broker="local") as live:
            yield live




def badge_of(events: list[dict], resumed: bool = False) -> dict | None:
    """The badge a client following the rule shows after ``events`` (a
    notification the server sent twice counts twice: none should be)."""
    return play(events, resumed, drop_repeats=False).counts


async def server_counts(server, token: str) -> dict:
    async with server.http(key=token) as http:
        r = await http.get("/v1/me/counts")
        assert r.status_code == 200, r.text
        return r.json()


@contextlib.asynccontextmanager
async def _subscribed(server, token: str):
    """The Python Subscriber on ``token``'s stream: itself, the events it got,
    and a wait for its n-th."""
    sub = Subscriber(server.url, token, receipts=False)
    seen: list[dict] = []
    arrived = asyncio.Event()

    async def listen():
        async for ev in sub:
            seen.append(ev)
            arrived.set()

    async def wait_sub(n: int) -> None:
        while len(seen) < n:
            arrived.clear()
            await asyncio.wait_for(arrived.wait(), 5)

    listening = asyncio.create_task(listen())
    try:
        yield sub, seen, wait_sub
    finally:
        await sub.close()
        await listening


async def test_counts_overtaken_by_a_notification(server, monkeypatch):
    """A mark-read's counts are read, then a notification commits and reaches
    the devices before those counts do: they are one short of the badge."""
    token = await server.token("rae")
    ids = await publish(server, {"users": ["rae"]}, 2)
    ws = await ws_connect(server, token)
    got = await recv_events(ws, 1)
    assert got[0]["counts"] == {"unread": 2, "unseen": 2, "at": {"seq": 2, "feed": 0, "rev": 0}}
    async with _subscribed(server, token) as (sub, seen, wait_sub):
        await wait_sub(1)  # its hello
        counts = Pause(monkeypatch, server.service.store, "counts", "rae")
        async with server.http(key=token) as http:
            marking = asyncio.create_task(
                http.post("/v1/me/notifications/read", json={"ids": [ids[0]]}))
            await counts.reached()  # read: one unread, at seq 2; not sent yet
            try:
                await publish(server, {"users": ["rae"]}, 1, title="third")
                got += await recv_events(ws, 1)  # seq 3 reached the device first
                await wait_sub(2)
            finally:
                counts.release()
            answer = (await marking).json()
        got += await recv_events(ws, 2)
        await wait_sub(4)
    await ws.close()
    assert [e["type"] for e in got] == ["hello", "notification", "state", "counts"]
    assert got[1]["cursor"].endswith(":3")
    assert got[3] == {"type": "counts", "unread": 1, "unseen": 1,
                      "at": {"seq": 2, "feed": 0, "rev": 1}}
    assert answer["counts"] == {"unread": 1, "unseen": 1, "at": {"seq": 2, "feed": 0, "rev": 1}}
    truth = await server_counts(server, token)
    assert truth == {"unread": 2, "unseen": 2, "at": {"seq": 3, "feed": 0, "rev": 1}}
    assert badge_of(got) == {"unread": 2, "unseen": 2}
    assert [e["type"] for e in seen] == ["hello", "notification", "state", "counts"]
    assert sub.counts == {"unread": 2, "unseen": 2}


async def test_counts_of_two_changes_made_at_once_arrive_crossed(server, monkeypatch):
    """Two devices mark an entry read each at the same moment: the first
    change's counts are read (one unread), then the second commits, and its
    counts (none) reach the devices before the first's.  Both are read at
    the same position: their revisions tell which was read last."""
    token = await server.token("kai")
    ids = await publish(server, {"users": ["kai"]}, 2)
    ws = await ws_connect(server, token)
    got = await recv_events(ws, 1)
    assert got[0]["counts"] == {"unread": 2, "unseen": 2, "at": {"seq": 2, "feed": 0, "rev": 0}}
    async with _subscribed(server, token) as (sub, seen, wait_sub):
        await wait_sub(1)  # its hello
        first = Pause(monkeypatch, server.service.store, "counts", "kai")
        async with server.http(key=token) as http:
            marking = asyncio.create_task(
                http.post("/v1/me/notifications/read", json={"ids": [ids[0]]}))
            await first.reached()  # read: one unread; not sent yet
            try:
                second = await http.post("/v1/me/notifications/read", json={"ids": [ids[1]]})
                assert second.status_code == 200, second.text
                got += await recv_events(ws, 2)  # the second's state and counts, first
                await wait_sub(3)
            finally:
                first.release()
            answer = (await marking).json()
        got += await recv_events(ws, 2)
        await wait_sub(5)
    await ws.close()
    assert [e["type"] for e in got] == ["hello", "state", "counts", "state", "counts"]
    assert got[2] == {"type": "counts", "unread": 0, "unseen": 0,
                      "at": {"seq": 2, "feed": 0, "rev": 2}}
    assert got[4] == {"type": "counts", "unread": 1, "unseen": 1,
                      "at": {"seq": 2, "feed": 0, "rev": 1}}
    assert answer["counts"] == {"unread": 1, "unseen": 1, "at": {"seq": 2, "feed": 0, "rev": 1}}
    assert (await server_counts(server, token))["unread"] == 0
    assert badge_of(got) == {"unread": 0, "unseen": 0}
    assert sub.counts == {"unread": 0, "unseen": 0}


async def test_hello_counts_a_notification_that_then_arrives_live(server, monkeypatch):
    """No cursor: a notification commits after the stream read the head (where
    it starts) and before it read hello's counts, which hold it; the stream
    then sends it live, and the device must not count it twice."""
    token = await server.token("sol")
    counts = Pause(monkeypatch, server.service.store, "counts", "sol", before=True)
    held = Held(monkeypatch)
    async with SSEReader(server, token) as sse:
        try:
            await counts.reached()  # the head is read (seq 0); the counts not yet
            await publish(server, {"users": ["sol"]}, 1)
            await held.wait(1)  # it is at the stream, held until hello is out
        finally:
            counts.release()
        got = [e for _, e in await sse.events(2)]
    assert got[0]["cursor"].endswith(":0:0")  # the stream starts before it...
    assert got[0]["counts"] == {"unread": 1, "unseen": 1, "at": {"seq": 1, "feed": 0, "rev": 0}}
    assert got[1]["cursor"].endswith(":1")  # ...so it comes live, already counted
    assert badge_of(got) == {"unread": 1, "unseen": 1}
    assert (await server_counts(server, token))["unread"] == 1


async def test_a_replay_past_hello_counts_what_it_brings_after_them(server, monkeypatch):
    """A resume: hello's counts are read, then a notification commits before
    the replay reads the store; the replay brings it, and it is one more."""
    token = await server.token("ned")
    ws = await ws_connect(server, token)
    (hello,) = await recv_events(ws, 1)
    await ws.close()
    await publish(server, {"users": ["ned"]}, 1, title="missed")
    replay = Pause(monkeypatch, server.service.store, "replay", "ned", before=True)
    held = Held(monkeypatch)
    sub = Subscriber(server.url, token, cursor=hello["cursor"], receipts=False)
    seen: list[dict] = []

    async def listen():
        async for ev in sub:
            seen.append(ev)
            if ev["type"] == "recovered":
                return

    listening = asyncio.create_task(listen())
    try:
        await replay.reached()  # hello is out, with counts read at seq 1
        await publish(server, {"users": ["ned"]}, 1, title="meanwhile")
        await held.wait(1)
    finally:
        replay.release()
    await asyncio.wait_for(listening, 5)
    await sub.close()
    assert [e["type"] for e in seen] == ["hello", "notification", "notification", "recovered"]
    assert seen[0]["counts"] == {"unread": 1, "unseen": 1, "at": {"seq": 1, "feed": 0, "rev": 0}}
    assert [e["notification"]["title"] for e in seen[1:3]] == ["missed", "meanwhile"]
    assert badge_of(seen, resumed=True) == {"unread": 2, "unseen": 2}
    assert sub.counts == {"unread": 2, "unseen": 2}
    assert (await server_counts(server, token))["unread"] == 2


async def test_hello_never_counts_from_before_where_the_stream_starts(server, monkeypatch):
    """A cached answer read before a commit whose broker message has not come
    yet is older than the head the stream starts from: hello reads the
    counts again rather than miss what lies between."""
    token = await server.token("kai")
    first = await ws_connect(server, token)  # kai's counts are cached on this node now
    await recv_events(first, 1)
    head = Pause(monkeypatch, server.service.store, "stream_head", "kai", before=True)
    second = await ws_connect(server, token)
    try:
        await head.reached()
        # an answer read now is cached (this node hears of every change to kai)
        assert (await server_counts(server, token))["at"] == {"seq": 0, "feed": 0, "rev": 0}
        # committed without a broker message: as if it were still on its way
        nid = "01" + "0" * 23 + "2"
        await server.service.store.publish(server.app, NewNotification(
            id=nid, category="default", body=b'{"id":"%s"}' % nid.encode(),
            created_at=time.time(), expires_at=None, users=["kai"]),
            fanout_threshold=10_000, window=86400)
    finally:
        head.release()
    (hello,) = await recv_events(second, 1)
    assert hello["cursor"].endswith(":1:0")  # the stream starts after it
    assert hello["counts"] == {"unread": 1, "unseen": 1, "at": {"seq": 1, "feed": 0, "rev": 0}}
    for ws in (first, second):
        with contextlib.suppress(Exception):
            await ws.close()
