"""A replay holds a bounded amount in memory (tidings/gateway/replay.py): it
reads the store a page at a time, the next page once the writer has taken
the last one's frames, and the node runs a bounded number of replay reads at
once.  Over real sockets, on both stores; the store's ``replay`` is wrapped
by spies that call through."""

from __future__ import annotations

import asyncio
import contextlib

from tests.gateway.live import publish, recv_events, ws_connect
from tidings.gateway.replay import REPLAY_PAGE, REPLAY_READS


async def _cursor(server, token: str) -> str:
    ws = await ws_connect(server, token)
    (hello,) = await recv_events(ws, 1)
    await ws.close()
    return hello["cursor"]


async def _batch(server, to: dict, n: int) -> list[str]:
    async with server.http() as http:
        r = await http.post("/v1/notifications/batch", json={
            "notifications": [{"to": to, "title": f"b{i}"} for i in range(n)]})
        assert r.status_code == 202, r.text
        return [x["id"] for x in r.json()["results"]]


async def test_a_replay_of_many_pages_arrives_whole_and_reads_a_page_at_a_time(
        store, monkeypatch):
    """1.5 pages of personal entries and 1.5 of feed items missed: they all
    arrive once, personal ones in seq order then feed items in offset order,
    and the last cursor is the head.  No store read returned more than a
    page of a kind, and each page after the first was read with the
    stream's queue empty (the writer had taken the page before).  The first
    read takes a page of both kinds."""
    async with store() as server:
        token = await server.token("pat")
        cursor = await _cursor(server, token)
        extra = REPLAY_PAGE // 2
        mine = await _batch(server, {"users": ["pat"]}, REPLAY_PAGE + extra)
        broadcasts = await _batch(server, {"all": True}, REPLAY_PAGE + extra)
        hub, real = server.service.hub, server.service.store.replay
        reads: list[tuple[int, int, list[int]]] = []  # (personal, feed, queued frames)

        async def spy(app, user, *args, **kw):
            queued = [len(s.queue.frames) for s in hub.users.get((app, user), ())]
            personal, feed = await real(app, user, *args, **kw)
            reads.append((len(personal), len(feed), queued))
            return personal, feed

        monkeypatch.setattr(server.service.store, "replay", spy)
        ws = await ws_connect(server, token, cursor=cursor)
        missed = len(mine) + len(broadcasts)
        hello, *got, recovered = await recv_events(ws, missed + 2, timeout=20)
        (stream,) = hub.users[(server.app, "pat")]
        end, pages = stream.position(), list(reads)
        await ws.close()
        # resumed from where the replay left it, nothing is missing
        ws = await ws_connect(server, token, cursor=end)
        again = await recv_events(ws, 2)
        await ws.close()
    assert hello["type"] == "hello"
    assert recovered == {"type": "recovered", "ok": True, "missed": missed}
    personal, feed = got[:len(mine)], got[len(mine):]
    assert sorted(e["notification"]["id"] for e in personal) == sorted(mine)
    assert sorted(e["notification"]["id"] for e in feed) == sorted(broadcasts)
    epoch, seqs = hello["epoch"], [e["cursor"] for e in personal]
    assert seqs == [f"{epoch}:{seq}" for seq in range(1, len(mine) + 1)]
    offsets = [e["feed"] for e in feed]
    assert offsets == sorted(set(offsets))  # in order, none twice
    assert end == f"{epoch}:{len(mine)}:{offsets[-1]}"
    assert again[1] == {"type": "recovered", "ok": True, "missed": 0}
    assert [(p, f) for p, f, _ in pages] == [
        (REPLAY_PAGE, REPLAY_PAGE), (extra, 0), (0, extra)]
    assert all(queued == [0] for _, _, queued in pages[1:])


async def test_the_node_runs_a_bounded_number_of_replay_reads_at_once(store, monkeypatch):
    """Many devices resume at the same moment (their node died): every one
    gets hello at once, but no more than ``REPLAY_READS`` of their replays
    read the store at a time; the others wait their turn, and all recover."""
    users = [f"u{i}" for i in range(REPLAY_READS * 2 + 3)]
    async with store() as server:
        tokens = {u: await server.token(u) for u in users}
        cursors = {u: await _cursor(server, tokens[u]) for u in users}
        (nid,) = await publish(server, {"users": users}, 1)
        real, gate, full = server.service.store.replay, asyncio.Event(), asyncio.Event()
        inside: list[str] = []

        async def held(app, user, *args, **kw):
            inside.append(user)
            if len(inside) >= REPLAY_READS:
                full.set()
            await gate.wait()
            return await real(app, user, *args, **kw)

        monkeypatch.setattr(server.service.store, "replay", held)
        socks = await asyncio.gather(*(ws_connect(server, tokens[u], cursor=cursors[u])
                                       for u in users))
        try:
            # hello is pushed just before the replay starts: every stream
            # has asked for its turn at the store by now
            for ws in socks:
                (hello,) = await recv_events(ws, 1)
                assert hello["type"] == "hello"
            await asyncio.wait_for(full.wait(), 5)  # (one may still be in its first read)
            assert len(inside) == REPLAY_READS  # each holds a turn: none can start
            gate.set()
            for ws in socks:
                note, recovered = await recv_events(ws, 2)
                assert note["notification"]["id"] == nid
                assert recovered == {"type": "recovered", "ok": True, "missed": 1}
        finally:
            gate.set()
            for ws in socks:
                with contextlib.suppress(Exception):
                    await ws.close()
    assert set(inside) == set(users)  # a read of each kind each


async def test_a_short_replay_is_one_read(store, monkeypatch):
    """A device back after missing a few notifications of each kind: one
    read of the store brings them all, with no question of how many there
    are (``replay_exceeds``) and no second page."""
    async with store() as server:
        token = await server.token("pat")
        cursor = await _cursor(server, token)
        mine = await _batch(server, {"users": ["pat"]}, 3)
        broadcasts = await _batch(server, {"all": True}, 2)
        store_, calls = server.service.store, []
        for name in ("replay", "replay_exceeds"):
            real = getattr(store_, name)

            async def counted(*args, _real=real, _name=name, **kw):
                calls.append(_name)
                return await _real(*args, **kw)

            monkeypatch.setattr(store_, name, counted)
        ws = await ws_connect(server, token, cursor=cursor)
        hello, *got, recovered = await recv_events(ws, 3 + 2 + 2)
        await ws.close()
    ids = [e["notification"]["id"] for e in got]
    assert ids[:3] == mine and sorted(ids[3:]) == sorted(broadcasts), (got, mine)  # feed: by offset
    assert recovered == {"type": "recovered", "ok": True, "missed": 5}
    assert calls == ["replay"]
