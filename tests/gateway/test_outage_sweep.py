"""The sweep after a broker outage (tidings/gateway/sweep.py), on both stores:
every stream gets what the broker lost and exact counts, the store is read
in batches, and a stream that missed nothing is not replayed.

The outage is the hub told that its broker reconnected, as a Redis restart
tells it (tests/gateway/test_broker_outage.py has the real one over Redis);
what the broker lost meanwhile is committed with its message never sent.
Each device's badge, worked out from what it received, is the server's.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib

from tests.gateway.live import badge, publish, recv_events, until_counts, ws_connect
from tidings.core.models import ChannelPrefs, Preferences

BATCHED = ("topics_many", "muted_many", "counts_many")
ONE_USER = ("user_topics", "muted")


def spy(monkeypatch, store, names) -> collections.Counter:
    """Count the calls of ``store``'s methods ``names``, each calling through."""
    calls: collections.Counter = collections.Counter()
    for name in names:
        real = getattr(store, name)

        async def counted(*args, _real=real, _name=name, **kwargs):
            calls[_name] += 1
            return await _real(*args, **kwargs)

        monkeypatch.setattr(store, name, counted)
    return calls


def replays(monkeypatch, store) -> list[str]:
    """The users a stream replays for, one entry a stream: the calls of
    ``store.replay`` with both positions, a replay's first read (its later
    pages read one kind, the other's position None: tidings/gateway/replay.py)."""
    users: list[str] = []
    real = store.replay

    async def first_read(app, user, after_seq, after_feed, *args, **kwargs):
        if after_seq is not None and after_feed is not None:
            users.append(user)
        return await real(app, user, after_seq, after_feed, *args, **kwargs)

    monkeypatch.setattr(store, "replay", first_read)
    return users


async def lost(server, monkeypatch, to: dict, **fields) -> None:
    """Publish with the broker message never sent: lost in the outage."""
    with monkeypatch.context() as m:
        m.setattr(server.service, "_announce", lambda *args, **kwargs: None)
        await publish(server, to, title="lost", **fields)


async def outage_ends(server) -> None:
    """The broker is back: the hub's sweep runs to its end."""
    hub = server.service.hub
    hub._on_broker_reconnect()
    await hub._resync


async def truth(server, user: str) -> dict:
    async with server.http(key=await server.token(user)) as http:
        r = await http.get("/v1/me/counts")
        assert r.status_code == 200, r.text
        return {k: r.json()[k] for k in ("unread", "unseen")}


async def test_only_the_streams_behind_replay_and_the_store_is_read_in_batches(
        store, monkeypatch):
    """Seven users online, three a batch; u1 (two devices) and u5 missed a
    notification, u3 missed that they now follow a topic.  Every device gets
    fresh counts, u1's and u5's after what they missed; only their three
    streams replay, and the sweep reads topics, mutes and counts once per
    batch (none of them user by user).  u3's stream follows the topic."""
    async with store(fanout_threshold=0) as server:
        service = server.service
        service.store.counts_batch = 3
        users = [f"u{i}" for i in range(7)]
        devices = [(u, await ws_connect(server, await server.token(u)))
                   for u in [*users, "u1"]]
        got = {ws: await recv_events(ws, 1) for _, ws in devices}
        await publish(server, {"users": users}, title="live")
        for _, ws in devices:
            got[ws] += await recv_events(ws, 1)

        await lost(server, monkeypatch, {"users": ["u1", "u5"]})
        await service.store.subscribe(server.app, "news", ["u3"])
        calls = spy(monkeypatch, service.store, BATCHED + ONE_USER)
        replayed = replays(monkeypatch, service.store)
        await outage_ends(server)

        for user, ws in devices:
            before = len(got[ws])
            counts = await until_counts(ws, got[ws])
            titles = [e["notification"]["title"] for e in got[ws][before:-1]]
            missed = user in ("u1", "u5")
            assert titles == (["lost"] if missed else []), user
            assert counts["at"]["seq"] == 1 + missed, user
            assert badge(got[ws]) == await truth(server, user) == {
                "unread": 1 + missed, "unseen": 1 + missed}, user
        assert sorted(replayed) == ["u1", "u1", "u5"]
        assert calls == {name: 3 for name in BATCHED}

        ws3 = dict(devices)["u3"]
        await publish(server, {"topic": "news"}, title="news")
        (news,) = await recv_events(ws3, 1)
        assert news["notification"]["title"] == "news"
        for _, ws in devices:
            await ws.close()


async def test_a_broadcast_lost_reaches_every_stream_without_what_it_muted(
        store, monkeypatch):
    """A broadcast of ``promo`` and one of ``news`` lost, and Bea's switching
    ``promo`` off in-app lost too: every stream replays, Ann gets both, Bea
    only ``news`` (the sweep read her mutes), each with exact counts, in
    one batch; from then on Bea's stream skips live ``promo`` items."""
    async with store(fanout_threshold=0) as server:
        service = server.service
        devices = {u: await ws_connect(server, await server.token(u)) for u in ("ann", "bea")}
        got = {u: await recv_events(ws, 1) for u, ws in devices.items()}

        await lost(server, monkeypatch, {"all": True}, category="promo")
        await lost(server, monkeypatch, {"all": True}, category="news")
        await service.store.put_preferences(server.app, "bea", Preferences(categories={
            "promo": ChannelPrefs(in_app=False)}))
        calls = spy(monkeypatch, service.store, BATCHED + ONE_USER)
        replayed = replays(monkeypatch, service.store)
        await outage_ends(server)

        for user, ws in devices.items():
            before = len(got[user])
            counts = await until_counts(ws, got[user])
            categories = [e["notification"]["category"] for e in got[user][before:-1]]
            assert categories == (["promo", "news"] if user == "ann" else ["news"])
            assert counts["at"] == {"seq": 0, "feed": 2, "rev": 0 if user == "ann" else 1}
            assert badge(got[user]) == await truth(server, user) == {
                "unread": len(categories), "unseen": len(categories)}
        assert sorted(replayed) == ["ann", "bea"]
        assert calls == {name: 1 for name in BATCHED}

        await publish(server, {"all": True}, title="promo", category="promo")
        await publish(server, {"all": True}, title="news", category="news")
        (first,) = await recv_events(devices["bea"], 1)
        assert first["notification"]["title"] == "news"
        for ws in devices.values():
            await ws.close()


async def test_a_newer_outage_does_not_strand_a_replay_under_way(store, monkeypatch):
    """The broker drops again while a stream's replay waits on the store:
    the newer sweep cancels the first, not that replay, which finishes and
    goes once more.  The device gets what it missed once, exact counts, and
    live notifications after (a stranded stream would hold them)."""
    async with store() as server:
        service = server.service
        ws = await ws_connect(server, await server.token("ann"))
        got = await recv_events(ws, 1)
        await lost(server, monkeypatch, {"users": ["ann"]})

        real, release, waiting = service.store.replay, asyncio.Event(), asyncio.Event()

        async def slow_replay(*args, **kwargs):
            waiting.set()
            await release.wait()
            return await real(*args, **kwargs)

        monkeypatch.setattr(service.store, "replay", slow_replay)
        hub = service.hub
        hub._on_broker_reconnect()
        await asyncio.wait_for(waiting.wait(), 10)
        first = hub._resync
        hub._on_broker_reconnect()  # the broker dropped again
        assert first is not None
        with contextlib.suppress(asyncio.CancelledError):
            await first
        assert first.cancelled()
        release.set()
        await hub._resync

        counts = await until_counts(ws, got)
        # what was missed, once, then counts only: the newer sweep's counts
        # may share the frame of the first's
        _, missed, *after = got
        assert missed["notification"]["title"] == "lost"
        assert {e["type"] for e in after} == {"counts"}
        assert counts["at"]["seq"] == 1
        await publish(server, {"users": ["ann"]}, title="live")
        more = await recv_events(ws, 1)
        while more[-1]["type"] == "counts":  # the newer sweep's counts, held with the first's
            more += await recv_events(ws, 1)
        *_, live = more
        assert live["notification"]["title"] == "live"
        got += more
        assert badge(got) == await truth(server, "ann")
        await ws.close()
