"""Live delivery over real sockets: order, replay, recovery, devices, fan-out."""

from __future__ import annotations

import asyncio
import time

import websockets

from tests.conftest import run_server
from tests.gateway.live import SSEReader, publish, recv_events, ws_connect
from tidings.config import Limits
from tidings.store.base import NewNotification
from tidings.store.sqlite import SQLiteStore


async def test_live_then_resume_replays_exactly_the_missed_ones(any_ws_server):
    server = any_ws_server
    token = await server.token("alice")
    ws = await ws_connect(server, token)
    (hello,) = await recv_events(ws, 1)
    assert hello["type"] == "hello"
    assert hello["counts"] == {"unread": 0, "unseen": 0, "at": {"seq": 0, "feed": 0, "rev": 0}}
    await publish(server, {"users": ["alice"]}, 3)
    live = await recv_events(ws, 3)
    assert [e["notification"]["title"] for e in live] == ["n0", "n1", "n2"]
    cursor = live[-1]["cursor"]
    await ws.close()

    missed = await publish(server, {"users": ["alice"]}, 5)
    ws = await ws_connect(server, token, cursor=cursor)
    hello, *replayed, recovered = await recv_events(ws, 7)
    assert hello["type"] == "hello"
    assert [e["notification"]["id"] for e in replayed] == missed
    seqs = [int(e["cursor"].split(":")[1]) for e in replayed]
    assert seqs == [4, 5, 6, 7, 8]
    assert recovered == {"type": "recovered", "ok": True, "missed": 5}
    # ...then live again, with no gap
    await publish(server, {"users": ["alice"]}, 1)
    (ev,) = await recv_events(ws, 1)
    assert ev["cursor"].endswith(":9")
    await ws.close()


async def test_resume_with_current_cursor_replays_nothing(server):
    token = await server.token("bob")
    await publish(server, {"users": ["bob"]}, 2)
    ws = await ws_connect(server, token)
    (hello,) = await recv_events(ws, 1)
    await ws.close()
    ws = await ws_connect(server, token, cursor=hello["cursor"])
    hello2, recovered = await recv_events(ws, 2)
    assert recovered == {"type": "recovered", "ok": True, "missed": 0}
    assert hello2["cursor"] == hello["cursor"]
    await ws.close()


async def test_wrong_epoch_is_not_recovered(server):
    token = await server.token("carol")
    await publish(server, {"users": ["carol"]}, 2)
    ws = await ws_connect(server, token, cursor="deadbeef:1")
    hello, recovered = await recv_events(ws, 2)
    assert recovered == {"type": "recovered", "ok": False, "missed": 0}
    assert hello["cursor"].split(":")[1] == "2"  # continues live from the head
    await ws.close()


async def test_cursor_ahead_of_head_is_not_recovered(server):
    token = await server.token("dan")
    ws = await ws_connect(server, token)
    (hello,) = await recv_events(ws, 1)
    await ws.close()
    ws = await ws_connect(server, token, cursor=f"{hello['epoch']}:50")
    _, recovered = await recv_events(ws, 2)
    assert recovered["ok"] is False
    await ws.close()


async def test_gap_beyond_replay_limit_is_not_partially_recovered(tmp_path):
    async with run_server(tmp_path, limits=Limits(replay_max=3)) as server:
        token = await server.token("erin")
        ws = await ws_connect(server, token)
        (hello,) = await recv_events(ws, 1)
        await ws.close()
        await publish(server, {"users": ["erin"]}, 5)
        ws = await ws_connect(server, token, cursor=hello["cursor"])
        hello2, recovered = await recv_events(ws, 2)
        assert recovered == {"type": "recovered", "ok": False, "missed": 0}
        assert hello2["cursor"].split(":")[1] == "5"
        await ws.close()


async def test_sse_resumes_with_last_event_id(server):
    token = await server.token("fay")
    async with SSEReader(server, token) as sse:
        ((hello_id, hello),) = await sse.events(1)
        assert hello["type"] == "hello" and hello_id == hello["cursor"]
        await publish(server, {"users": ["fay"]}, 2)
        got = await sse.events(2)
        assert [e["notification"]["title"] for _, e in got] == ["n0", "n1"]
        last_id = got[-1][0]
        assert last_id == f"{hello['epoch']}:2:0"
    missed = await publish(server, {"users": ["fay"]}, 3)
    async with SSEReader(server, token, last_event_id=last_id) as sse:
        _hello, *replayed, (_, recovered) = await sse.events(5)
        assert [e["notification"]["id"] for _, e in replayed] == missed
        assert [i for i, _ in replayed] == [f"{hello['epoch']}:{s}:0" for s in (3, 4, 5)]
        assert recovered == {"type": "recovered", "ok": True, "missed": 3}


async def test_marking_read_on_one_device_reaches_the_other(server):
    token = await server.token("gus")
    ids = await publish(server, {"users": ["gus"]}, 3)
    phone = await ws_connect(server, token)
    laptop = await ws_connect(server, token)
    await recv_events(phone, 1)
    (hello,) = await recv_events(laptop, 1)
    assert hello["counts"] == {"unread": 3, "unseen": 3, "at": {"seq": 3, "feed": 0, "rev": 0}}
    async with server.http(key=token) as http:  # the phone marks one read
        r = await http.post("/v1/me/notifications/read", json={"ids": [ids[0]]})
        assert r.status_code == 200, r.text
        assert r.json()["counts"] == {"unread": 2, "unseen": 2,
                                      "at": {"seq": 3, "feed": 0, "rev": 1}}
    state, counts = await recv_events(laptop, 2)
    assert state == {"type": "state", "ids": [ids[0]], "all": False, "state": "read"}
    assert counts == {"type": "counts", "unread": 2, "unseen": 2,
                      "at": {"seq": 3, "feed": 0, "rev": 1}}
    await phone.close()
    await laptop.close()


async def _arrive_in_order_in_fewer_frames(ws, titles: list[str]) -> None:
    """All of ``titles`` arrive, in stream order, in fewer frames than events."""
    frames: list = []
    got = await recv_events(ws, len(titles), frames=frames)
    assert sorted(e["notification"]["title"] for e in got) == sorted(titles)
    seqs = [int(e["cursor"].split(":")[1]) for e in got]
    assert seqs == sorted(seqs)
    assert len(frames) < len(titles) and any(isinstance(f, list) for f in frames)


async def test_burst_leaves_in_one_frame(any_ws_server):
    server = any_ws_server
    token = await server.token("hal")
    ws = await ws_connect(server, token)
    await recv_events(ws, 1)
    async with server.http() as http:
        r = await http.post("/v1/notifications/batch", json={
            "notifications": [{"to": {"users": ["hal"]}, "title": f"b{i}"} for i in range(20)]
        })
        assert r.status_code == 202
    await _arrive_in_order_in_fewer_frames(ws, [f"b{i}" for i in range(20)])
    await ws.close()


async def test_concurrent_publishes_committed_together_leave_in_fewer_frames(any_ws_server):
    """Single publishes that one commit settles reach a device in that loop
    tick's frame, not one frame each (a route that flushed its own devices
    before answering cost write fan-out twice the CPU)."""
    server = any_ws_server
    token = await server.token("ida")
    ws = await ws_connect(server, token)
    await recv_events(ws, 1)
    async with server.http() as http:
        rs = await asyncio.gather(*(http.post("/v1/notifications", json={
            "to": {"users": ["ida"]}, "title": f"c{i}"}) for i in range(20)))
    assert all(r.status_code == 202 for r in rs), [r.text for r in rs]
    await _arrive_in_order_in_fewer_frames(ws, [f"c{i}" for i in range(20)])
    await ws.close()


async def test_gap_from_a_lost_broker_message_is_filled_from_the_store(server):
    token = await server.token("ivy")
    ws = await ws_connect(server, token)
    await recv_events(ws, 1)
    # Commit one entry without telling the broker: as if the broker dropped it.
    store = server.service.store
    lost = await store.publish(server.app, NewNotification(
        id="01" + "0" * 23 + "1", category="default", body=b'{"id":"lost","title":"lost"}',
        created_at=time.time(), expires_at=None, users=["ivy"]),
        fanout_threshold=10_000, window=86400)
    assert lost.deliveries[0].seq == 1
    await publish(server, {"users": ["ivy"]}, 1)  # seq 2 arrives live: a jump
    first, second = await recv_events(ws, 2)
    assert first["notification"]["title"] == "lost" and first["cursor"].endswith(":1")
    assert second["cursor"].endswith(":2")
    await ws.close()


async def test_broadcast_is_one_row_and_reaches_everyone(server):
    tokens = [await server.token(f"u{i}") for i in range(3)]
    conns = [await ws_connect(server, t) for t in tokens]
    for c in conns:
        await recv_events(c, 1)
    async with server.http() as http:
        r = await http.post("/v1/notifications", json={"to": {"all": True}, "title": "all"})
        assert r.status_code == 202 and r.json()["fanout"] == "read"
    for c in conns:
        (ev,) = await recv_events(c, 1)
        assert ev["feed"] == 1 and ev["notification"]["title"] == "all"
        await c.close()
    # a user never seen before finds it in the inbox, and can resume past it
    async with server.http(key=await server.token("newcomer")) as http:
        items = (await http.get("/v1/me/notifications")).json()["items"]
        assert [i["feed"] for i in items] == [1]


async def test_large_topic_fans_out_on_read_to_subscribers_only(tmp_path):
    async with run_server(tmp_path, fanout_threshold=1) as server:
        async with server.http() as http:
            r = await http.post("/v1/topics/guild/subscribers", json={"users": ["a", "b"]})
            assert r.status_code == 200
        a = await ws_connect(server, await server.token("a"))
        outsider = await ws_connect(server, await server.token("z"))
        await recv_events(a, 1)
        await recv_events(outsider, 1)
        await publish(server, {"topic": "guild"}, 1)
        (ev,) = await recv_events(a, 1)
        assert ev["feed"] == 1
        # the outsider receives nothing; a direct message still arrives after it
        await publish(server, {"users": ["z"]}, 1)
        (ev,) = await recv_events(outsider, 1)
        assert "cursor" in ev and ev["notification"]["title"] == "n0"
        await a.close()
        await outsider.close()


async def test_updates_and_retractions_are_pushed_live(server):
    token = await server.token("jo")
    ws = await ws_connect(server, token)
    await recv_events(ws, 1)
    (nid,) = await publish(server, {"users": ["jo"]}, 1)
    await recv_events(ws, 1)
    async with server.http() as http:
        r = await http.patch(f"/v1/notifications/{nid}", json={"title": "fixed"})
        assert r.status_code == 200
        (ev,) = await recv_events(ws, 1)
        assert ev == {"type": "updated", "notification": {**ev["notification"], "title": "fixed"}}
        r = await http.delete(f"/v1/notifications/{nid}")
        assert r.status_code == 200
        # one frame: the retraction, and the badge without the unread entry it took
        frames: list = []
        evs = await recv_events(ws, 2, frames=frames)
        assert evs == [{"type": "deleted", "id": nid},
                       {"type": "counts", "unread": 0, "unseen": 0,
                        "at": {"seq": 1, "feed": 0, "rev": 1}}]
        assert len(frames) == 1
    await ws.close()


async def test_slow_reader_is_cut_with_reconnect_code_and_resumes(tmp_path):
    # a replay far larger than the queue: it must flow, not overflow
    limits = Limits(queue_max_events=8, queue_max_bytes=64 * 1024, replay_max=10_000)
    async with run_server(tmp_path, limits=limits) as server:
        token = await server.token("slow")
        # max_queue=1 and tiny buffers: the client stops reading almost at once
        ws = await ws_connect(server, token, max_queue=1, max_size=2**20)
        (hello,) = await recv_events(ws, 1)
        ws.transport.pause_reading()
        fat = "x" * 8000
        ids = []
        async with server.http() as http:
            for _ in range(20):  # up to 32 MB: more than loopback's socket buffers
                r = await http.post("/v1/notifications/batch", json={"notifications": [
                    {"to": {"users": ["slow"]}, "body": fat} for _ in range(200)]})
                ids += [x["id"] for x in r.json()["results"]]
                if not server.service.hub.users.get((server.app, "slow")):
                    break
        assert server.service.hub.metrics.slow_consumers == 1
        ws.transport.resume_reading()
        got = []
        try:
            while True:
                got.extend(await recv_events(ws, 1))
        except websockets.ConnectionClosed as exc:
            assert exc.rcvd.code == 4000
        notes = [e for e in got if e.get("type") == "notification"]
        last = notes[-1]["cursor"] if notes else hello["cursor"]
        ws = await ws_connect(server, token, cursor=last)
        need = len(ids) - int(last.split(":")[1])
        events = await recv_events(ws, need + 2, timeout=20)
        delivered = [e for e in got + events if e.get("type") == "notification"]
        # every notification once, in seq order, with no gap
        assert [int(e["cursor"].split(":")[1]) for e in delivered] == list(range(1, len(ids) + 1))
        delivered_ids = [e["notification"]["id"] for e in delivered]
        assert sorted(delivered_ids) == sorted(ids)
        if isinstance(server.service.store, SQLiteStore):
            # SQLite commits a batch's items in request order; PostgreSQL
            # publishes them on several connections at once, and seq order
            # is whichever order they take the user's stream lock in
            # (docs/operations.md, "Order of concurrent publishes")
            assert delivered_ids == ids
        assert events[-1] == {"type": "recovered", "ok": True, "missed": need}
        await ws.close()
