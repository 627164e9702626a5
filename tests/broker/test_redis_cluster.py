"""The Redis broker on a real three-master Redis Cluster
(tests/rediscluster.py): messages and buckets on every shard, a
master killed and started again, a master killed and replaced by its
replica, a slot moved to another master.

What every broker promises runs on the cluster too, in test_contract.py
(the ``redis-cluster`` backend, on the session's cluster).
"""

from __future__ import annotations

import asyncio

import pytest

from tests.broker.conftest import unique_prefix
from tests.broker.test_contract import FLUSH, Recorder
from tests.broker.test_redis import TIMEOUT, reconnected, until
from tests.rediscluster import LocalRedisCluster
from tidings.broker import open_broker
from tidings.broker.base import (
    BrokerUnavailable,
    Feed,
    Frames,
    Personal,
    Personals,
    all_channel,
    topic_channel,
    user_channel,
)
from tidings.broker.redis import RedisBroker
from tidings.broker.redis_cluster import RedisClusterBroker, parse_cluster_url
from tidings.store.base import Delivery


@pytest.fixture
def private_cluster(tmp_path):
    """A cluster of this test's own, to kill masters of and move slots in."""
    cluster = LocalRedisCluster(tmp_path).start()
    yield cluster
    cluster.stop()


def opener(cluster: LocalRedisCluster):
    """Opened brokers sharing one prefix (nodes of one deployment)."""
    prefix = unique_prefix()
    made: list[RedisClusterBroker] = []

    async def make(**options) -> RedisClusterBroker:
        b = RedisClusterBroker(cluster.url, prefix=prefix, **options)
        await b.open()
        made.append(b)
        return b

    async def close() -> None:
        for b in made:
            await b.close()

    return make, close


@pytest.fixture
def replicated_cluster(tmp_path):
    """A cluster of this test's own whose masters each have a replica."""
    cluster = LocalRedisCluster(tmp_path, replicas=True).start()
    yield cluster
    cluster.stop()


@pytest.fixture
async def make(redis_cluster):
    factory, close = opener(redis_cluster)
    yield factory
    await close()


@pytest.fixture
async def make_private(private_cluster):
    factory, close = opener(private_cluster)
    yield factory
    await close()


@pytest.fixture
async def make_replicated(replicated_cluster):
    factory, close = opener(replicated_cluster)
    yield factory
    await close()


def one_per_shard(cluster: LocalRedisCluster, name, kind=lambda b, n: b.channel_name(n)):
    """For each master, a ``name(i)`` whose channel (or key) it serves."""
    probe = RedisClusterBroker(cluster.url, prefix="p")
    found: dict[int, str] = {}
    for i in range(1000):
        found.setdefault(cluster.owner(kind(probe, name(i))), name(i))
        if len(found) == len(cluster.servers):
            return [found[s] for s in sorted(found)]
    raise AssertionError("no name for some shard")


# -- the URL ------------------------------------------------------------------------
def test_cluster_urls():
    seeds, options = parse_cluster_url(
        "redis+cluster://u:p%40ss@10.0.0.1:7000,10.0.0.2,[::1]:7002/0?socket_keepalive=true")
    assert seeds == [("10.0.0.1", 7000), ("10.0.0.2", 6379), ("::1", 7002)]
    assert options["username"] == "u" and options["password"] == "p@ss"
    assert options["socket_keepalive"] is True
    assert parse_cluster_url("rediss+cluster://h:1")[1]["ssl"] is True
    b = open_broker("redis+cluster://h:1,h:2?prefix=blue")
    assert isinstance(b, RedisClusterBroker)
    assert (b.prefix, b.seeds) == ("blue", [("h", 1), ("h", 2)])
    for bad in ["redis+cluster://h:1/3", "redis+cluster://h:x", "redis+cluster://h:1,,h:2"]:
        with pytest.raises(ValueError):
            RedisClusterBroker(bad)


async def test_a_redis_url_naming_one_shard_says_to_use_redis_cluster(redis_cluster):
    for address in redis_cluster.addresses:
        b = RedisBroker(f"redis://{address}", prefix=unique_prefix())
        with pytest.raises(BrokerUnavailable, match=r"redis\+cluster://"):
            await b.open()


# -- delivery across shards ----------------------------------------------------------
def test_the_contract_suites_flush_channels_cover_every_shard(redis_cluster):
    b = RedisClusterBroker(redis_cluster.url)
    shards = {redis_cluster.owner(b.channel_name(c)) for c in FLUSH}
    assert shards == set(range(len(redis_cluster.servers)))


async def test_personal_topic_and_broadcast_messages_cross_every_shard(redis_cluster, make):
    a, b = await make(), await make()
    users = one_per_shard(redis_cluster, lambda i: user_channel("app_a", f"user{i}"))
    topics = one_per_shard(redis_cluster, lambda i: topic_channel("app_a", f"topic{i}"))
    apps = one_per_shard(redis_cluster, lambda i: all_channel(f"app{i}"))
    channels = users + topics + apps
    rec_a, rec_b = Recorder(), Recorder()
    for ch in channels:
        a.subscribe(ch, rec_a)
        b.subscribe(ch, rec_b)
    await a.settle()
    await b.settle()
    assert len(a._sub.conns) == 3
    for ch in users:
        b.publish(ch, Personal("e", 1, ch.encode()))
    for i, ch in enumerate(topics + apps):
        b.publish(ch, Feed(i, ch.encode()))
    await rec_a.wait_for(len(channels))
    await rec_b.wait_for(len(channels))  # a node hears its own messages too
    for rec in (rec_a, rec_b):
        assert sorted(c for c, _ in rec.got) == sorted(channels)
        assert all(getattr(m, "body", getattr(m, "frame", None)) == c.encode()
                   for c, m in rec.got)


async def test_order_per_channel_on_every_shard(redis_cluster, make):
    a, b = await make(), await make()
    users = one_per_shard(redis_cluster, lambda i: user_channel("app_a", f"user{i}"))
    recs = {ch: Recorder() for ch in users}
    for ch, rec in recs.items():
        a.subscribe(ch, rec)
    await a.settle()
    for seq in range(300):
        for ch in users:
            b.publish(ch, Personal("e", seq, b""))
    for rec in recs.values():
        await rec.wait_for(300)
        assert [m.seq for m in rec.messages] == list(range(300))


async def test_publish_personals_reaches_users_on_every_shard(redis_cluster, make):
    a, b = await make(), await make()
    users = one_per_shard(redis_cluster, lambda i: f"user{i}",
                          kind=lambda br, u: br.channel_name(user_channel("app_a", u)))
    rec = Recorder()
    for u in users:
        a.subscribe(user_channel("app_a", u), rec)
    await a.settle()
    b.publish_personals("app_a", Personals(
        b"{}", [Delivery(u, "e", i + 1, None) for i, u in enumerate(users)]))
    await rec.wait_for(len(users))
    assert sorted((c, m.seq) for c, m in rec.got) == sorted(
        (user_channel("app_a", u), i + 1) for i, u in enumerate(users))


# -- the Lua scripts on every shard --------------------------------------------------
async def test_close_just_after_a_publish_returns(redis_cluster):
    """A short-lived process (a CLI command that revokes a key) publishes and
    closes at once.  The writer may then be cancelled while it connects to
    every master, where the cancellation can be swallowed: close used to wait
    for it forever, about one close in eight."""
    for i in range(40):
        b = RedisClusterBroker(redis_cluster.url, prefix=unique_prefix())
        await b.open()
        for channel in FLUSH:
            b.publish(channel, Frames([b"bye"]))
        await asyncio.sleep((i % 20) * 0.0005)
        closing = asyncio.ensure_future(b.close())
        await asyncio.wait({closing}, timeout=TIMEOUT)  # not wait_for: close ate its cancel
        assert closing.done(), f"close {i} hung"


async def test_take_buckets_on_every_shard(redis_cluster, make):
    a, b = await make(), await make()
    keys = one_per_shard(redis_cluster, lambda i: f"api:k{i}",
                         kind=lambda br, k: br.key("rl", k).encode())
    for key in keys:
        assert await a.take(key, rate=0.01, burst=2) == 0.0
        assert await b.take(key, rate=0.01, burst=2) == 0.0  # one bucket for both nodes
        assert await a.take(key, rate=0.01, burst=2) > 0
    for i, key in enumerate(keys):  # each bucket on the shard of its key
        server = redis_cluster.servers[i]
        assert server.command("EXISTS", a.key("rl", key)) == 1
    await a.heartbeat("n1", {"addr": "a"}, ttl=30)
    await b.heartbeat("n2", {"addr": "b"}, ttl=30)
    assert await a.nodes() == {"n1": {"addr": "a"}, "n2": {"addr": "b"}}


# -- outages and slot moves -------------------------------------------------------------
async def _on_every_shard(cluster, a) -> tuple[list[str], list[str], Recorder]:
    """A user channel and a rate-limit key on each shard of ``cluster``: ``a``
    subscribed to every channel (what it gets recorded), the bucket of the
    second shard's key taken."""
    users = one_per_shard(cluster, lambda i: user_channel("app_a", f"user{i}"))
    keys = one_per_shard(cluster, lambda i: f"k{i}",
                         kind=lambda br, k: br.key("rl", k).encode())
    rec = Recorder()
    for ch in users:
        a.subscribe(ch, rec)
    await a.settle()
    assert await a.take(keys[1], rate=0.01, burst=1) == 0.0
    return users, keys, rec


async def test_a_master_killed_and_restarted(private_cluster, make_private):
    a, b = await make_private(), await make_private()
    users, keys, rec = await _on_every_shard(private_cluster, a)
    event = reconnected(a)

    victim = private_cluster.servers[1]
    victim.stop()
    await until(lambda: a._sub is None, "the broker to notice")
    assert not await a.ping()
    with pytest.raises(BrokerUnavailable):
        await a.take(keys[1], rate=0.01, burst=1)
    for ch in users:
        b.publish(ch, Frames([b"lost or late"]))  # never raises, never blocks

    victim.start()  # same port, same nodes.conf: the same slots, no data, no scripts
    await asyncio.wait_for(event.wait(), 30)
    private_cluster.wait_ok()
    assert a.reconnects == 1
    got = len(rec.got)
    for ch in users:
        b.publish(ch, Frames([b"after"]))
    await until(lambda: {c for c, m in rec.got[got:] if m == Frames([b"after"])} == set(users),
                "delivery on every shard after the restart")
    assert await a.take(keys[1], rate=0.01, burst=1) == 0.0  # script loaded again
    assert await a.ping()


async def test_a_master_killed_fails_over_to_its_replica(replicated_cluster, make_replicated):
    """SIGKILL to a master that is never started again: the cluster promotes
    its replica, and the broker connects to it from a fresh slot map, without
    being opened again."""
    cluster = replicated_cluster
    a, b = await make_replicated(), await make_replicated()
    users, keys, rec = await _on_every_shard(cluster, a)
    victim = cluster.servers[1]
    assert victim.command("WAIT", 1, 5000) == 1  # the bucket is on the replica too
    event = reconnected(a)

    victim.stop()
    await until(lambda: a._sub is None, "the broker to notice")
    for ch in users:
        b.publish(ch, Frames([b"lost or late"]))  # never raises, never blocks

    cluster.wait_promoted(1)
    await asyncio.wait_for(event.wait(), 30)
    assert a.reconnects == 1
    await a.settle()
    name = a.channel_name(users[1])
    assert a._sub.conns[a._sub.owner(name)].port == cluster.replicas[1].port
    got = len(rec.got)
    n = 0
    while {c for c, m in rec.got[got:] if m == Frames([b"after"])} != set(users):
        n += 1  # b's own link may still be on its way to the promoted replica
        assert n < 200, "no delivery on every shard after the failover"
        for ch in users:
            b.publish(ch, Frames([b"after"]))
        await asyncio.sleep(0.05)
    assert await a.take(keys[1], rate=0.01, burst=1) > 0  # the replica kept the bucket
    assert await a.ping()


async def test_a_slot_moved_to_another_master(private_cluster, make_private):
    """Redis unsubscribes the moved channel on its old master; the publisher
    gets MOVED.  Both make their connections again from the new slot map."""
    a, b = await make_private(), await make_private()
    channel = user_channel("app_a", "mover")
    name = a.channel_name(channel)
    key = "mover"
    src = private_cluster.owner(name)
    dst = (src + 1) % len(private_cluster.servers)
    rec = Recorder()
    a.subscribe(channel, rec)
    await a.settle()
    b.publish(channel, Frames([b"before"]))
    await rec.wait_for(1)
    assert await b.take(key, rate=0.01, burst=1) == 0.0
    event = reconnected(a)

    for moved in (name, a.key("rl", key).encode()):
        private_cluster.move_slot(moved, dst)
    await asyncio.wait_for(event.wait(), TIMEOUT)
    await a.settle()
    assert a._sub.conns[a._sub.owner(name)].port == private_cluster.servers[dst].port
    n = 0
    while not any(m == Frames([b"after"]) for m in rec.messages):
        n += 1  # the first batch after the move may answer MOVED and be lost
        assert n < 200, "nothing arrived after the move"
        b.publish(channel, Frames([b"after"]))
        await asyncio.sleep(0.05)
    assert await b.take(key, rate=0.01, burst=1) > 0  # MOVED followed: the same bucket
