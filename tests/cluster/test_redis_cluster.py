"""Two tidings nodes on a three-master Redis Cluster (tests/rediscluster.py):
users whose channels hash to the slots of every master each have a device
on both nodes, and every notification reaches every device live, through
the broker, never from a catch-up out of the store.

The failover test (test_failover.py) runs on a Redis Cluster too, and so do
a master's restart and a master's failover to its replica, mid-stream
(test_outages.py).
"""

from __future__ import annotations

import asyncio

import pytest
from redis.crc import key_slot

from tests.cluster.devices import Device, counter, publish_numbered, tally, wait_all
from tidings.broker.base import user_channel
from tidings.broker.redis_cluster import RedisClusterBroker

USERS_PER_SHARD = 2
TOTAL = 20


def users_on_every_shard(redis_cluster, broker_url: str, app: str) -> list[list[str]]:
    """For each master, ``USERS_PER_SHARD`` user ids whose channel's slot (CRC16
    of its hash tag, as redis-py computes it) that master serves."""
    broker = RedisClusterBroker(broker_url)  # channel names under the nodes' prefix
    shards: list[list[str]] = [[] for _ in redis_cluster.servers]
    for i in range(1000):
        user = f"s{i}"
        shard = shards[redis_cluster.master_of(key_slot(
            broker.channel_name(user_channel(app, user))))]
        if len(shard) < USERS_PER_SHARD:
            shard.append(user)
        if all(len(s) == USERS_PER_SHARD for s in shards):
            return shards
    raise AssertionError(f"no {USERS_PER_SHARD} users on every shard: {shards}")


@pytest.mark.timeout(120)
@pytest.mark.parametrize("broker_url", ["redis-cluster"], indirect=True)
async def test_users_on_every_shard_receive_live_across_nodes(make_cluster, broker_url,
                                                              redis_cluster):
    cluster = make_cluster(nodes=2)
    app = cluster.create_app("shards")
    shards = users_on_every_shard(redis_cluster, broker_url, app["app"])
    users = [u for shard in shards for u in shard]
    nodes = cluster.members
    devices = [Device(node.url, app, u) for u in users for node in nodes]
    try:
        for d in devices:
            d.start()
        await asyncio.wait_for(asyncio.gather(*(d.connected.wait() for d in devices)), 30)
        # each publish is one message per user, on each user's shard; half
        # are published on each node
        half = TOTAL // 2
        for node, numbers in ((nodes[0], range(half)), (nodes[1], range(half, TOTAL))):
            await publish_numbered(node.url, app["api_key"], {"users": users}, numbers,
                                   pause=0.02)
        await wait_all(devices, TOTAL, timeout=30)
        assert tally(devices, TOTAL) == {"lost": 0, "duplicated": 0, "out_of_order": 0}
        for node in nodes:
            # every one routed live to the node's stream of each user; none
            # caught up from the store (the repair pass would, a few seconds on)
            assert await counter(node.url, "tidings_deliveries", app["app"]) \
                == TOTAL * len(users), node.name
            assert await counter(node.url, "tidings_replayed", app["app"]) == 0, node.name
    finally:
        await asyncio.gather(*(d.stop() for d in devices))
