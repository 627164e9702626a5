"""A personal entry whose broker message was lost still reaches the device,
with no later event to reveal the gap (the hub's repair pass,
tidings/gateway/hub.py), in both deployment shapes: Redis as the broker and
PostgreSQL alone.

What a lost broker message leaves behind is an entry committed in the store
that no node announced.  The test makes exactly that: it commits through a
store of its own on the cluster's schema, which publishes nothing."""

from __future__ import annotations

import asyncio
import time

import msgspec

from tests.cluster.devices import Device, publish_numbered
from tidings.core.ids import new_id
from tidings.gateway.hub import REPAIR_GRACE, REPAIR_INTERVAL
from tidings.store.base import NewNotification
from tidings.store.postgres import PostgresStore

# the repair pass's bound, and room for a busy machine
BOUND = REPAIR_INTERVAL + REPAIR_GRACE + 3.0


def _unannounced(user: str, n: int) -> NewNotification:
    now = time.time()
    nid = new_id(int(now * 1000))
    body = msgspec.json.encode({"id": nid, "title": f"#{n}", "data": {"n": n}})
    return NewNotification(id=nid, category="default", body=body, created_at=now,
                           expires_at=None, users=[user])


async def _wait_for(device: Device, n: int, timeout: float) -> float | None:
    """Seconds until the device had notification ``n``, or None."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    while loop.time() - start < timeout:
        if len(device.seen) > n and device.seen[n]:
            return loop.time() - start
        await asyncio.sleep(0.05)
    return None


async def test_an_entry_whose_broker_message_was_lost_reaches_the_device(make_cluster, pg_url):
    cluster = make_cluster(nodes=2)
    app = cluster.create_app("repair")
    # devices on node 2, publishes to node 1: every live event crosses the broker
    device = Device(cluster.node("node2").url, app, "u1")
    other = Device(cluster.node("node2").url, app, "u2")  # its user gets nothing here
    store = PostgresStore(pg_url)
    await store.open()
    try:
        for d in (device, other):
            d.start()
            await asyncio.wait_for(d.connected.wait(), 15)
        node1 = cluster.node("node1").url
        await publish_numbered(node1, app["api_key"], {"users": ["u1"]}, [0])
        assert await _wait_for(device, 0, 10) is not None

        # committed, never announced: no node's broker carries it
        await store.publish(app["app"], _unannounced("u1", 1), fanout_threshold=10_000,
                            window=86_400)
        took = await _wait_for(device, 1, BOUND)
        assert took is not None, f"entry 1 did not arrive within {BOUND} s"

        # and the stream goes on in order from there
        await publish_numbered(node1, app["api_key"], {"users": ["u1"]}, [2])
        assert await _wait_for(device, 2, 10) is not None
        assert device.duplicates == 0 and device.out_of_order == 0
        assert device.received == 3 and other.received == 0
    finally:
        for d in (device, other):
            await d.stop()
        await store.close()
