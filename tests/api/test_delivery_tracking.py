"""Delivery tracking: GET /v1/notifications/{id} "delivery", and /metrics.

"Delivered" for in_app counts users a live stream of theirs wrote the
notification to (not devices); seen and read come from the inbox states;
the outbound channels add their own counters through Service.track.
"""

from __future__ import annotations

import asyncio
import contextlib
import json

from tests.gateway.live import delivery, publish, recv_events, ws_connect


async def test_in_app_counts_users_reached_then_seen_and_read(server):
    alice = await server.token("alice")
    phone = await ws_connect(server, alice)
    laptop = await ws_connect(server, alice)
    await recv_events(phone, 1)
    hello, = await recv_events(laptop, 1)
    (nid,) = await publish(server, {"users": ["alice", "bob", "carol"]})
    await recv_events(phone, 1)
    await recv_events(laptop, 1)
    # two devices, one user: delivered once; bob and carol are offline
    assert await delivery(server, nid) == {
        "in_app": {"recipients": 3, "delivered": 1, "seen": 0, "read": 0,
                   "acknowledged": 0, "displayed": 0}}
    # the laptop drops and replays it: alice's phone already had it
    await laptop.close()
    laptop = await ws_connect(server, alice, cursor=hello["cursor"])
    await recv_events(laptop, 3)  # hello, the replayed one, recovered
    # bob comes online with a cursor from before it and replays it: a user reached
    head = await server.service.store.stream_head(server.app, "bob", 0)
    bob = await ws_connect(server, await server.token("bob"), cursor=f"{head.epoch}:0")
    await recv_events(bob, 3)
    async with server.http(alice) as http:
        await http.post("/v1/me/notifications/read", json={"ids": [nid]})
    async with server.http(await server.token("carol")) as http:
        await http.post("/v1/me/notifications/seen", json={"ids": [nid]})
    assert (await delivery(server, nid))["in_app"] == {
        "recipients": 3, "delivered": 2, "seen": 2, "read": 1, "acknowledged": 0, "displayed": 0}
    for ws in (phone, laptop, bob):
        await ws.close()


async def test_a_broadcast_counts_each_connected_user_once(server):
    streams = []
    for user in ("alice", "alice", "bob"):
        ws = await ws_connect(server, await server.token(user))
        await recv_events(ws, 1)
        streams.append(ws)
    (nid,) = await publish(server, {"all": True})
    for ws in streams:
        await recv_events(ws, 1)
    assert (await delivery(server, nid))["in_app"] == {
        "delivered": 2, "seen": 0, "read": 0, "acknowledged": 0, "displayed": 0}
    for ws in streams:
        await ws.close()


async def test_channels_report_into_the_same_structure_and_metrics(server):
    (nid,) = await publish(server, {"users": ["alice"]})
    service = server.service
    service.track(server.app, nid, "webhook", "queued")
    service.track(server.app, nid, "webhook", "sent")
    service.track(server.app, nid, "email", "failed", 2)
    got = await delivery(server, nid)
    assert got["webhook"] == {"queued": 1, "sent": 1}
    assert got["email"] == {"failed": 2}
    await service.store.record_delivery(server.app, nid, "push", "delivered")
    assert (await delivery(server, nid))["push"] == {"delivered": 1}
    async with server.http() as http:
        text = (await http.get("/metrics")).text
    assert ('tidings_delivery_tracking_total{app="testapp",channel="webhook",field="sent"} 1.0'
            in text)
    assert 'tidings_delivery_tracking_total{app="testapp",channel="email",field="failed"} 2.0' \
        in text


async def test_a_read_waits_for_the_flush_under_way(server, monkeypatch):
    """The 1 s task took the counters and is writing them when GET
    /v1/notifications/{id} comes: the read waits for that write instead of
    reading the store without them."""
    (nid,) = await publish(server, {"users": ["alice"]})
    service, store = server.service, server.service.store
    write, count = store.record_deliveries, store.delivery_counts
    writing, go, counted = asyncio.Event(), asyncio.Event(), asyncio.Event()

    async def slow_write(counts):
        writing.set()
        await go.wait()
        await write(counts)

    async def counts(app, nid):
        counted.set()
        return await count(app, nid)

    monkeypatch.setattr(store, "record_deliveries", slow_write)
    monkeypatch.setattr(store, "delivery_counts", counts)
    service.track(server.app, nid, "webhook", "sent")
    flush = asyncio.create_task(service.flush_tracking())
    await asyncio.wait_for(writing.wait(), 5)
    read = asyncio.create_task(delivery(server, nid))
    with contextlib.suppress(TimeoutError):  # a read that does not wait reads now
        await asyncio.wait_for(counted.wait(), 0.5)
    go.set()
    assert (await read)["webhook"] == {"sent": 1}
    await flush


async def test_a_large_topic_counts_its_connected_followers_once(tmp_path):
    from tests.conftest import run_server

    async with run_server(tmp_path, fanout_threshold=1) as server:  # topics go to the feed
        async with server.http() as http:
            r = await http.post("/v1/topics/big/subscribers",
                                json={"users": ["alice", "bob", "carol"]})
            assert r.status_code == 200
        streams = []
        # dave does not follow "big"; carol leaves before it is published
        for user in ("alice", "alice", "alice", "bob", "carol", "dave"):
            ws = await ws_connect(server, await server.token(user))
            await recv_events(ws, 1)
            streams.append(ws)
        for ws in (streams[2], streams[4]):  # one of alice's three, and carol's only one
            await ws.close()
        hub = server.service.hub
        for _ in range(500):  # the server notices the closes a moment later
            if len(hub.users.get((server.app, "alice"), ())) == 2 and \
                    (server.app, "carol") not in hub.users:
                break
            await asyncio.sleep(0.01)
        (nid,) = await publish(server, {"topic": "big"})
        for ws in (streams[0], streams[1], streams[3]):
            (ev,) = await recv_events(ws, 1)
            assert ev["notification"]["id"] == nid
        # three streams reached two users
        assert (await delivery(server, nid))["in_app"]["delivered"] == 2
        for ws in streams:
            await ws.close()


# -- receipts from devices (tidings.core.receipts) ------------------------------------


async def test_devices_acknowledge_over_the_websocket_and_over_http(server):
    alice, bob = await server.token("alice"), await server.token("bob")
    phone = await ws_connect(server, alice)
    laptop = await ws_connect(server, alice)
    await recv_events(phone, 1)
    await recv_events(laptop, 1)
    (nid,) = await publish(server, {"users": ["alice", "bob", "carol"]})
    (other,) = await publish(server, {"users": ["dave"]})
    await recv_events(phone, 1)
    await recv_events(laptop, 1)
    # two devices of alice say delivered (one of them twice), one displayed;
    # bob, on SSE or plain HTTP, posts his; acks for dave's are not alice's
    msg = {"type": "receipts", "delivered": [nid]}
    for ws in (phone, laptop, phone):
        await ws.send(json.dumps(msg))
    await phone.send(json.dumps({"type": "receipts", "displayed": [nid], "delivered": [other]}))
    await laptop.send('{"type": "nonsense"}')     # anything else is ignored, as ever
    await laptop.send("not json at all")
    async with server.http(bob) as http:
        r = await http.post("/v1/me/receipts", json={"delivered": [nid, other]})
        assert r.status_code == 202 and r.json() == {"held": 2}
    await server.service.flush_tracking()
    assert await _in_app(server, nid) == (2, 1)
    assert await _in_app(server, other) == (0, 0)
    # the streams still work after all that
    (again,) = await publish(server, {"users": ["alice"]})
    (event,) = await recv_events(laptop, 1)
    assert event["notification"]["id"] == again
    for ws in (phone, laptop):
        await ws.close()


async def test_receipts_posted_badly_are_clear_errors(server):
    async with server.http(await server.token("alice")) as http:
        for body, field in (({"delivered": ["nope"]}, "delivered"),
                            ({"displayed": [1]}, "displayed"),
                            ({"delivered": ["01J" + "0" * 23] * 1001}, "delivered"),
                            ({"seen": []}, None)):
            r = await http.post("/v1/me/receipts", json=body)
            assert r.status_code in (400, 422), r.text
            error = r.json()["error"]
            assert error["code"] and error["message"]
            if field:
                assert error["field"].startswith(field), error
    async with server.http() as http:      # an API key is not a user
        r = await http.post("/v1/me/receipts", json={"delivered": []})
        assert r.status_code == 401


async def _in_app(server, nid: str) -> tuple[int, int]:
    in_app = (await delivery(server, nid))["in_app"]
    return in_app["acknowledged"], in_app["displayed"]
