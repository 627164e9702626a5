"""Broker faults on a live cluster that are not outages: a frozen Redis, and
a planned switchover of a Redis Cluster master to its replica.

A frozen Redis (``SIGSTOP``, then ``SIGCONT``) is nastier than a dead one:
its connections stay open, what is written to it is buffered and what is
read from it never comes, so every wait on it lasts until a timeout.  The
switchover is ``CLUSTER FAILOVER`` sent to a replica: the graceful promotion,
after which the old master is a replica and answers ``MOVED``.  Both run
two nodes behind HAProxy (scripts/cluster.py) with devices on each, and
count what every device's application saw (tests/cluster/devices.py).
"""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
from functools import partial

import httpx
import pytest
from redis.crc import key_slot

from bench.faultkit import PrivateRedis
from scripts.cluster import free_port_block
from tests.cluster.devices import (
    Device,
    connections,
    counter,
    eventually,
    publish_numbered,
    tally,
    wait_all,
)
from tests.cluster.test_outages import _broker_outage_mid_stream
from tests.rediscluster import LocalRedisCluster
from tests.services import require_haproxy
from tidings.broker.base import topic_channel
from tidings.broker.redis_cluster import RedisClusterBroker

# Longer than the broker's 5 s command timeout, shorter than its 30 s
# silence check (docs/delivery.md, When the broker is down): the nodes' pub/sub
# connections outlive the freeze, and only its timeouts end waits on Redis.
FREEZE = 8.0
# Publishes while Redis is frozen: more than two API-key leases of 50
# (docs/operations.md, Hot-path cache), so that each node needs a fresh one
# from the frozen Redis whichever way HAProxy spreads them.
DURING = 110


async def _routed(node, app: dict, want: float) -> bool:
    return await counter(node.url, "tidings_deliveries", app["app"]) >= want


async def _complete(devices: list[Device], numbers: range) -> bool:
    return all(len(d.seen) >= numbers.stop and all(d.seen[n] for n in numbers)
               for d in devices)


@pytest.mark.timeout(120)
async def test_a_frozen_redis_mid_stream_loses_nothing_and_holds_no_publish(pg_url, tmp_path):
    """Redis is stopped (SIGSTOP) after notification 10 and continued after
    ``FREEZE`` seconds and ``DURING`` more publishes.  Every publish is
    acknowledged on its first try, through the balancer, within the
    publisher's 5 s: the store is the source of truth, readiness does not
    wait for the broker, and a rate-limit take does not wait for it past its
    first second.  /readyz says the broker is down and the node ready, and a
    device that connects meanwhile gets its hello (a stream's start does not
    wait for the broker past 2 s either).  Every
    device ends with every notification exactly once (the repair pass
    catches streams up from the store while the broker carries nothing),
    and once Redis runs again, live delivery between the nodes resumes."""
    from scripts.cluster import Cluster

    require_haproxy()
    base = free_port_block(4)
    redis = PrivateRedis(base + 3, tmp_path)
    redis.start()
    cluster = Cluster(pg_url, redis.url(), nodes=2, base_port=base, workdir=tmp_path / "c")
    devices: list[Device] = []
    late: list[Device] = []
    frozen = False
    try:
        cluster.start()
        app = cluster.create_app("frozen")
        users = [f"f{i}" for i in range(20)]
        headers = {"Authorization": f"Bearer {app['api_key']}"}
        async with httpx.AsyncClient(base_url=cluster.url, timeout=30, headers=headers) as http:
            r = await http.post("/v1/topics/room/subscribers",
                                json={"users": [*users, "late0", "late1"]})
            assert r.status_code == 200, r.text
        devices = [Device(cluster.url, app, u) for u in users for _ in range(2)]
        for d in devices:
            d.start()
        await asyncio.wait_for(asyncio.gather(*(d.connected.wait() for d in devices)), 60)
        split = [await connections(n.url) for n in cluster.members]
        assert min(split) > 0, split
        room = {"topic": "room"}
        stats = await publish_numbered(cluster.url, app["api_key"], room, range(10), pause=0.02)
        assert stats["retries"] == 0, stats

        loop = asyncio.get_running_loop()
        os.kill(redis.proc.pid, signal.SIGSTOP)
        frozen, thaw_at = True, loop.time() + FREEZE
        # what /readyz says while Redis is frozen: ready, broker down
        async with httpx.AsyncClient(timeout=10) as http:
            for node in cluster.members:
                r = await http.get(node.url + "/readyz")
                assert r.status_code == 200, (node.name, r.text)
                assert r.json() == {"ready": True, "store": True, "broker": False}, node.name
        # a device that connects while Redis is frozen, on each node (a user
        # with no stream there yet: a new channel to subscribe), gets its
        # hello while it is still frozen
        late = [Device(node.url, app, f"late{i}") for i, node in enumerate(cluster.members)]
        for d in late:
            d.start()
        try:
            await asyncio.wait_for(asyncio.gather(*(d.connected.wait() for d in late)),
                                   thaw_at - loop.time())
        except TimeoutError:
            raise AssertionError("no hello while Redis was frozen") from None
        stats = await publish_numbered(cluster.url, app["api_key"], room, range(10, 10 + DURING))
        # no publish waited for the frozen Redis: each was acknowledged on its
        # first try (a 503 from a balancer that took the nodes out, or a
        # client timeout, is a retry)
        assert stats["retries"] == 0, stats
        assert redis.proc.poll() is None
        await asyncio.sleep(max(0.0, thaw_at - loop.time()))
        os.kill(redis.proc.pid, signal.SIGCONT)
        frozen = False

        total = 10 + DURING
        await wait_all(devices, total, timeout=30)
        assert tally(devices, total) == {"lost": 0, "duplicated": 0, "out_of_order": 0}

        # Live delivery between the nodes resumes: each node routes to its
        # streams the notifications the other took, which only the broker
        # brings it (as in test_outages.py).
        routed = [await counter(n.url, "tidings_deliveries", app["app"])
                  for n in cluster.members]
        more = range(total, total + 2 * len(cluster.members))
        for i, node in enumerate(cluster.members):
            await publish_numbered(node.url, app["api_key"], room, more[2 * i:2 * i + 2])
        for i, node in enumerate(cluster.members):
            want = routed[i] + len(more) * split[i]
            await eventually(partial(_routed, node, app, want), 20,
                             f"{node.name} to route every later notification live")
        await wait_all(devices, more.stop, timeout=30)
        assert tally(devices, more.stop) == {"lost": 0, "duplicated": 0, "out_of_order": 0}
        # the late devices got everything published after their hello
        after = range(10, more.stop)
        await eventually(partial(_complete, late, after), 30, "the late devices' notifications")
        assert sum(d.duplicates + d.out_of_order for d in late) == 0
        # every device kept the connection it had
        assert sum(d.sub.reconnects for d in devices + late) == 0
    finally:
        if frozen:
            os.kill(redis.proc.pid, signal.SIGCONT)
        await asyncio.gather(*(d.stop() for d in devices + late))
        cluster.stop()
        redis.kill()


@pytest.mark.timeout(240)
async def test_a_planned_redis_cluster_switchover_mid_stream_loses_nothing(pg_url, tmp_path):
    """``CLUSTER FAILOVER`` to the replica of the master that serves the
    topic's channel, mid-stream: the replica takes the slots over with the
    old master's agreement, the old master becomes its replica and answers
    ``MOVED`` for them, and unsubscribes their channels itself.  No node is
    restarted: every publish is acknowledged on its first try, every device
    gets everything exactly once on the connection it had, and live
    delivery between the nodes resumes through the new master."""
    from scripts.cluster import Cluster

    require_haproxy()
    redis = LocalRedisCluster(tmp_path, replicas=True)
    prefix = f"tidings-test-{secrets.token_hex(5)}"
    cluster = Cluster(pg_url, f"{redis.url}?prefix={prefix}", nodes=2,
                      base_port=free_port_block(3), workdir=tmp_path / "c")
    shard: list[int] = []

    def switch(app: dict) -> None:
        channel = RedisClusterBroker(redis.url, prefix=prefix).channel_name(
            topic_channel(app["app"], "room"))
        shard.append(redis.master_of(key_slot(channel)))
        assert redis.replicas[shard[0]].command("CLUSTER", "FAILOVER")  # graceful: no FORCE

    def done(app: dict) -> None:
        redis.wait_promoted(shard[0])

    try:
        redis.start()
        cluster.start()
        await _broker_outage_mid_stream(cluster, switch, done)
        old, new = redis.servers[shard[0]], redis.replicas[shard[0]]
        assert new.command("INFO", "replication")["role"] == "master"
        assert old.proc is not None  # never killed: a replica of the new master now
        assert old.command("INFO", "replication")["role"] == "slave"
    finally:
        cluster.stop()
        redis.stop()
