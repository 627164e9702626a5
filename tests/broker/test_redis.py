"""What only the Redis broker has: channel names and hash tags, outages and
reconnection, the bounded outgoing queue, several nodes, the Lua scripts'
keys.  (Everything both brokers promise is in test_contract.py.)

Outages are made for real: ``CLIENT KILL`` of this broker's own connections
on the shared Redis, or a private ``redis-server`` on a free port that is
stopped, frozen (SIGSTOP) and restarted.  The shared Redis is never stopped.
"""

from __future__ import annotations

import asyncio
import gc
import shutil
import signal
import socket
import subprocess
import time
import warnings
from urllib.parse import unquote

import msgspec
import pytest
import redis
import redis.asyncio as aioredis
from hypothesis import given
from hypothesis import strategies as st

from tests.broker.conftest import delete_prefixed, unique_prefix
from tests.broker.test_contract import USERS, Recorder, all_channels
from tests.services import missing, require_redis
from tidings.broker import open_broker
from tidings.broker.base import (
    BrokerUnavailable,
    Feed,
    Frames,
    Personal,
    all_channel,
    topic_channel,
    user_channel,
)
from tidings.broker.redis import RedisBroker, hash_tag

TIMEOUT = 10.0


# -- fixtures -------------------------------------------------------------------
@pytest.fixture
async def url():
    return require_redis()


@pytest.fixture
async def make(url):
    """Opened brokers sharing one prefix (nodes of one cluster), closed and
    cleaned up after the test."""
    prefix = unique_prefix()
    made: list[RedisBroker] = []

    async def factory(**options) -> RedisBroker:
        b = RedisBroker(options.pop("url", url), prefix=prefix, **options)
        await b.open()
        made.append(b)
        return b

    yield factory
    for b in made:
        await b.close()
    await delete_prefixed(url, prefix)


@pytest.fixture
async def client(url):
    c = aioredis.Redis.from_url(url)
    yield c
    await c.aclose()


async def kill(client, broker: RedisBroker, role: str) -> None:
    """CLIENT KILL this broker's ``role`` connection ("sub" or "pub") only."""
    name = f"{broker.client_name}:{role}"
    for _ in range(200):
        ids = [c["id"] for c in await client.client_list() if c.get("name") == name]
        if ids:
            for cid in ids:
                await client.client_kill_filter(_id=cid)
            return
        await asyncio.sleep(0.02)  # the connection is (re)connecting
    raise AssertionError(f"no connection named {name}")


def reconnected(broker: RedisBroker) -> asyncio.Event:
    event = asyncio.Event()
    broker.on_reconnect(event.set)
    return event


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PrivateRedis:
    """A redis-server of our own, to stop, freeze and restart at will."""

    def __init__(self, directory, *extra: str):
        self.port = free_port()
        self.dir = directory
        self.extra = extra
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.dir), *self.extra],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        c = redis.Redis(port=self.port, socket_connect_timeout=1, retry=None)
        try:
            for _ in range(500):
                if self.proc.poll() is not None:
                    raise AssertionError(f"redis-server exited with {self.proc.returncode}")
                try:
                    if c.ping():
                        return
                except redis.ConnectionError:
                    time.sleep(0.01)
            raise AssertionError("private redis-server did not start")
        finally:
            c.close()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.kill()
            self.proc.wait(10)
        self.proc = None

    def command(self, *args):
        c = redis.Redis(port=self.port)
        try:
            return c.execute_command(*args)
        finally:
            c.close()


@pytest.fixture
def private_redis(tmp_path):
    if shutil.which("redis-server") is None:
        missing("redis-server is not installed")
    server = PrivateRedis(tmp_path)
    server.start()
    yield server
    server.stop()


async def until(predicate, what: str) -> None:
    for _ in range(int(TIMEOUT / 0.02)):
        if predicate():
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


# -- channel names and hash tags ----------------------------------------------------
NASTY = ["{", "}", "{}", "}{", "%", "%7B", "%7D", "%25", "a{b}c", "{x}:u:y", "a b", "ü", "🙂",
         "*", "::", "x%7By%7D"]


def names() -> list[str]:
    out = [c for _, c in all_channels()]
    for u in NASTY + USERS:
        out += [user_channel("app_a", u), topic_channel("app_a", u)]
    return out + [all_channel("app_a")]


def test_the_hash_tag_is_exactly_the_logical_channel():
    b = RedisBroker("redis://127.0.0.1:6379/0", prefix="tidings")
    for channel in names():
        name = b.channel_name(channel)
        assert name.startswith(b"tidings:{") and name.endswith(b"}")
        tag = hash_tag(name)
        assert b"{" not in tag and b"}" not in tag
        assert unquote(tag.decode()) == channel


@given(st.text(min_size=1, max_size=40), st.text(min_size=1, max_size=40))
def test_channel_names_are_injective(a, b):
    """(Logical channels are never empty: they hold the app and a separator.)"""
    broker = RedisBroker("redis://127.0.0.1:6379/0", prefix="p")
    assert (broker.channel_name(a) == broker.channel_name(b)) == (a == b)
    assert unquote(hash_tag(broker.channel_name(a)).decode("utf-8", "surrogatepass")) == a


def test_all_names_are_distinct_and_keys_are_tagged_too():
    b = RedisBroker("redis://127.0.0.1:6379/0", prefix="tidings")
    assert len({b.channel_name(c) for c in names()}) == len(set(names()))
    assert hash_tag(b.key("rl", "api:{k}").encode()) == b"api:%7Bk%7D"


def test_prefix_from_the_url_and_bad_prefixes():
    b = RedisBroker("redis://127.0.0.1:6379/2?prefix=blue&socket_keepalive=true")
    assert b.prefix == "blue"
    assert b.url == "redis://127.0.0.1:6379/2?socket_keepalive=true"
    for bad in ["", "a{b", "a}b", "a b", "x" * 65]:
        with pytest.raises(ValueError):
            RedisBroker("redis://127.0.0.1:6379/0", prefix=bad)


def test_open_broker_takes_redis_urls():
    assert isinstance(open_broker("redis://127.0.0.1:6379/0"), RedisBroker)
    assert isinstance(open_broker("rediss://cache.example:6380/0"), RedisBroker)
    with pytest.raises(ValueError, match="redis://"):
        open_broker("amqp://127.0.0.1")


async def test_redis_cluster_computes_the_same_slots(tmp_path, private_redis):
    """A one-node Redis Cluster (cluster mode enforces the slot rules) hashes
    each channel exactly as its logical name, and the broker works on it."""
    private_redis.stop()
    # the bus port defaults to port + 10000, which may not exist: pick one
    cluster = PrivateRedis(tmp_path, "--cluster-enabled", "yes", "--cluster-port",
                           str(free_port()), "--cluster-config-file", str(tmp_path / "nodes.conf"))
    cluster.start()
    try:
        cluster.command("CLUSTER", "ADDSLOTSRANGE", 0, 16383)
        await until(lambda: b"cluster_state:ok" in cluster.command("CLUSTER", "INFO"),
                    "the cluster to be up")
        b = RedisBroker(cluster.url, prefix="tidings")
        for channel in names():
            tag = hash_tag(b.channel_name(channel))
            assert (cluster.command("CLUSTER", "KEYSLOT", b.channel_name(channel))
                    == cluster.command("CLUSTER", "KEYSLOT", tag)), channel
        await b.open()
        try:
            rec = Recorder()
            channels = [user_channel("app_a", u) for u in NASTY] + [all_channel("app_a")]
            for ch in channels:
                b.subscribe(ch, rec)
            for ch in channels:
                b.publish(ch, Frames([ch.encode()]))
            await rec.wait_for(len(channels))
            assert sorted(c for c, _ in rec.got) == sorted(channels)
            await b.heartbeat("n1", {"addr": "x"}, ttl=30)
            assert await b.nodes() == {"n1": {"addr": "x"}}
            assert await b.take("api:{k}", rate=0.01, burst=1) == 0.0
        finally:
            await b.close()
    finally:
        cluster.stop()


# -- several nodes ---------------------------------------------------------------------
async def test_a_message_from_another_node_after_settle_arrives(make):
    a, b = await make(), await make()
    rec = Recorder()
    for i in range(20):
        channel = user_channel("app_a", f"user{i}")
        a.subscribe(channel, rec)
        await a.settle()  # in effect: another node's very next publish arrives
        b.publish(channel, Personal("e", i, b"x"))
        await rec.wait_for(i + 1)
    assert [m.seq for m in rec.messages] == list(range(20))


async def test_every_node_subscribed_gets_the_message(make):
    nodes = [await make() for _ in range(3)]
    recs = [Recorder() for _ in nodes]
    for node, rec in zip(nodes, recs, strict=True):
        node.subscribe(all_channel("app_a"), rec)
        await node.settle()
    nodes[0].publish(all_channel("app_a"), Feed(1, b"to everyone"))
    for rec in recs:
        await rec.wait_for(1)
        assert rec.messages == [Feed(1, b"to everyone")]


# -- robustness ------------------------------------------------------------------------
async def test_a_failing_handler_does_not_stop_delivery(make):
    b = await make()
    rec = Recorder()

    def bad(channel, message):
        raise RuntimeError("handler bug")

    b.subscribe(user_channel("app_a", "bad"), bad)
    b.subscribe(user_channel("app_a", "good"), rec)
    b.publish(user_channel("app_a", "bad"), Frames([b"1"]))
    b.publish(user_channel("app_a", "good"), Frames([b"2"]))
    await rec.wait_for(1)
    assert rec.messages == [Frames([b"2"])]


async def test_garbage_on_a_channel_is_counted_and_skipped(make, client):
    b = await make()
    rec = Recorder()
    channel = user_channel("app_a", "alice")
    b.subscribe(channel, rec)
    await b.settle()
    await client.execute_command("SPUBLISH", b.channel_name(channel), b"\xc1 not msgpack")
    await client.execute_command("SPUBLISH", b.channel_name(channel),
                                 msgspec.msgpack.encode(["?", 1]))
    b.publish(channel, Frames([b"fine"]))
    await rec.wait_for(1)
    assert rec.messages == [Frames([b"fine"])]
    assert b.undecodable == 2


async def test_open_fails_fast_when_redis_is_unreachable():
    b = RedisBroker(f"redis://127.0.0.1:{free_port()}/0", timeout=1.0)
    with pytest.raises(BrokerUnavailable):
        await b.open()


# -- reconnection ----------------------------------------------------------------------
async def test_a_killed_subscriber_reconnects_resubscribes_and_says_so(make, client):
    b = await make()
    other = await make()  # another node keeps publishing throughout
    rec = Recorder()
    channels = [user_channel("app_a", u) for u in USERS] + [topic_channel("app_a", "t")]
    for ch in channels:
        b.subscribe(ch, rec)
    await b.settle()
    event = reconnected(b)
    await kill(client, b, "sub")
    await asyncio.wait_for(event.wait(), TIMEOUT)
    assert b.reconnects == 1
    got = len(rec.got)
    for ch in channels:
        other.publish(ch, Frames([b"after"]))
    await rec.wait_for(got + len(channels))
    assert {c for c, _ in rec.got[got:]} == set(channels)


async def test_subscriptions_made_during_the_outage_are_made_on_reconnect(make, client):
    b = await make()
    rec = Recorder()
    b.subscribe(user_channel("app_a", "early"), rec)
    await b.settle()
    event = reconnected(b)
    await kill(client, b, "sub")
    b.subscribe(user_channel("app_a", "late"), rec)
    b.unsubscribe(user_channel("app_a", "early"))
    await asyncio.wait_for(event.wait(), TIMEOUT)
    await b.settle()
    b.publish(user_channel("app_a", "early"), Frames([b"no"]))
    b.publish(user_channel("app_a", "late"), Frames([b"yes"]))
    await rec.wait_for(1)
    assert rec.messages == [Frames([b"yes"])]


async def test_a_killed_publisher_reconnects_and_keeps_order(make, client):
    b = await make()
    rec = Recorder()
    channel = user_channel("app_a", "alice")
    b.subscribe(channel, rec)
    b.publish(channel, Personal("e", 0, b""))
    await rec.wait_for(1)
    await kill(client, b, "pub")
    # The first batch after the kill may be lost (at most once); keep going
    # until one gets through, then everything after it arrives in order.
    seq = 0
    while len(rec.got) < 2:
        seq += 1
        assert seq < 500, "the publisher never came back"
        b.publish(channel, Personal("e", seq, b""))
        await asyncio.sleep(0.02)
    for i in range(seq + 1, seq + 301):
        b.publish(channel, Personal("e", i, b""))
    await until(lambda: rec.messages and rec.messages[-1].seq == seq + 300, "the burst")
    seqs = [m.seq for m in rec.messages]
    assert seqs == sorted(set(seqs))  # in order, no duplicates
    assert seqs[-300:] == list(range(seq + 1, seq + 301))


async def test_close_leaves_no_connection_behind(url, client):
    b = RedisBroker(url, prefix=unique_prefix())
    await b.open()
    rec = Recorder()
    b.subscribe(user_channel("app_a", "alice"), rec)
    b.publish(user_channel("app_a", "alice"), Personal("e", 1, b""))
    await rec.wait_for(1)  # the publishing connection is up too
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        await b.close()
        gc.collect()  # a connection nobody closed warns as it is collected
    assert not [w for w in caught if issubclass(w.category, ResourceWarning)]

    async def mine() -> list[str]:
        return [c["name"] for c in await client.client_list()
                if c.get("name", "").startswith(b.client_name)]

    for _ in range(200):  # Redis drops a closed client at its next event-loop turn
        if not await mine():
            break
        await asyncio.sleep(0.02)
    assert await mine() == []


async def test_a_redis_restart(private_redis, make):
    b = await make(url=private_redis.url)
    rec = Recorder()
    channel = topic_channel("app_a", "news")
    b.subscribe(channel, rec)
    assert await b.take("key", rate=0.01, burst=1) == 0.0
    event = reconnected(b)

    private_redis.stop()
    await until(lambda: b._sub is None, "the broker to notice")
    assert not await b.ping()
    for i in range(10):
        b.publish(channel, Feed(i, b"lost or late"))  # never raises, never blocks
    with pytest.raises(BrokerUnavailable):
        await b.take("key", rate=0.01, burst=1)

    private_redis.start()  # empty: no subscriptions, no scripts, no buckets
    await asyncio.wait_for(event.wait(), TIMEOUT)
    assert await b.ping()
    b.publish(channel, Feed(100, b"after"))
    await until(lambda: any(m.offset == 100 for m in rec.messages), "delivery after restart")
    assert await b.take("key", rate=0.01, burst=1) == 0.0  # script reloaded
    await b.heartbeat("n", {}, ttl=30)
    assert await b.nodes() == {"n": {}}


async def test_a_frozen_redis_is_detected_by_the_health_check(private_redis, make):
    b = await make(url=private_redis.url, health_interval=0.2, timeout=0.5)
    rec = Recorder()
    b.subscribe(user_channel("app_a", "x"), rec)
    await b.settle()
    event = reconnected(b)
    private_redis.proc.send_signal(signal.SIGSTOP)  # silent: no reset, no close
    try:
        await until(lambda: b._sub is None, "the health check to give up")
    finally:
        private_redis.proc.send_signal(signal.SIGCONT)
    await asyncio.wait_for(event.wait(), TIMEOUT)
    b.publish(user_channel("app_a", "x"), Frames([b"back"]))
    await rec.wait_for(1)


async def test_the_outgoing_queue_is_bounded_while_redis_is_down(private_redis, make):
    b = await make(url=private_redis.url, max_pending=50, max_pending_bytes=100_000)
    private_redis.stop()
    before = b.dropped
    for _ in range(1000):
        b.publish(user_channel("app_a", "u"), Frames([b"x" * 10]))
    assert len(b._queue) <= 50
    assert b.dropped - before >= 950
    for _ in range(1000):
        b.publish(user_channel("app_a", "u"), Frames([b"x" * 5000]))
    assert b._queued_bytes <= 100_000


async def test_the_outgoing_queue_is_bounded_while_redis_is_frozen(private_redis, make):
    """A frozen Redis takes what is written to it and answers nothing: the
    writer's batch times out, and its next connection waits for a handshake
    reply.  What is published meanwhile waits in the bounded queue (or is
    dropped), nowhere else; once Redis runs again, delivery resumes."""
    b = await make(url=private_redis.url, max_pending=50, max_pending_bytes=100_000,
                   timeout=0.5)
    rec = Recorder()
    channel = user_channel("app_a", "u")
    b.subscribe(channel, rec)
    await b.settle()
    before = b.dropped
    private_redis.proc.send_signal(signal.SIGSTOP)
    try:
        for _ in range(3):  # before, during and after the writer's batch timed out
            for _ in range(1000):
                b.publish(channel, Frames([b"x" * 1000]))
            assert len(b._queue) <= 50 and b._queued_bytes <= 100_000
            await asyncio.sleep(0.6)
        assert b.dropped - before >= 3000 - 2 * 50
    finally:
        private_redis.proc.send_signal(signal.SIGCONT)
    await until(lambda: not b._queue, "the queue to go out")  # a full queue drops "after"
    b.publish(channel, Frames([b"after"]))
    await until(lambda: any(m.frames == [b"after"] for m in rec.messages), "delivery after")


# -- the Lua scripts' keys -------------------------------------------------------------
async def test_heartbeat_prunes_dead_nodes_and_the_registry_expires(make, client):
    b = await make()
    expiry, info = (k.encode() for k in b._node_keys)
    await b.heartbeat("alive", {"n": 1}, ttl=30)
    await b.heartbeat("gone", {"n": 2}, ttl=0.05)
    await asyncio.sleep(0.1)
    assert await client.hlen(info) == 2  # nodes() skips it but leaves it
    assert await b.nodes() == {"alive": {"n": 1}}
    await b.heartbeat("alive", {"n": 3}, ttl=30)  # prunes in the same step
    assert await client.zrange(expiry, 0, -1) == [b"alive"]
    assert await client.hkeys(info) == [b"alive"]
    for key in (expiry, info):
        assert 0 < await client.pttl(key) <= 30_000
    # the registry goes away with its last node
    await b.heartbeat("alive", {"n": 4}, ttl=0.05)
    await asyncio.sleep(0.1)
    assert await client.exists(expiry, info) == 0


async def test_a_bucket_key_lives_only_until_it_is_full(make, client):
    b = await make()
    await b.take("api:k", rate=10.0, burst=5, cost=5)
    ttl = await client.pttl(b.key("rl", "api:k"))
    assert 0 < ttl <= 501
