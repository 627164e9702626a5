"""The broker contract (tidings/broker/base.py): at most once, in publish
order per channel, app-scoped channels.

Runs once per backend of ``conftest.BACKENDS``.  Delivery may be
asynchronous (a networked broker), so tests await the messages they expect;
to show that something did *not* arrive, a sentinel is published after it on
a subscribed channel and awaited, and only then is the absence checked.
"""

from __future__ import annotations

import asyncio
import threading

import pytest

from tidings.broker.base import (
    KEYS_CHANNEL,
    Feed,
    Frames,
    KeyRevoked,
    Membership,
    Message,
    Personal,
    Personals,
    SecretRotated,
    SessionEnded,
    TokenRevoked,
    TokensRevoked,
    all_channel,
    topic_channel,
    user_channel,
)
from tidings.store.base import Delivery

TIMEOUT = 5.0


class Recorder:
    """A handler that records what it gets and lets a test await a count."""

    def __init__(self) -> None:
        self.got: list[tuple[str, Message]] = []
        self.threads: set[int] = set()
        self._waiters: list[tuple[int, asyncio.Event]] = []

    def __call__(self, channel: str, message: Message) -> None:
        self.got.append((channel, message))
        self.threads.add(threading.get_ident())
        for n, event in self._waiters:
            if len(self.got) >= n:
                event.set()

    @property
    def messages(self) -> list[Message]:
        return [m for _, m in self.got]

    async def wait_for(self, n: int) -> None:
        if len(self.got) >= n:
            return
        event = asyncio.Event()
        self._waiters.append((n, event))
        try:
            await asyncio.wait_for(event.wait(), TIMEOUT)
        finally:
            self._waiters.remove((n, event))


# Order is kept per channel only, and a Redis Cluster carries each shard's
# channels on connections of their own: the sentinel is a channel on every
# shard (these names cover a three-master cluster: test_redis_cluster.py).
FLUSH = [user_channel("app_sentinel", f"flush{i}") for i in range(16)]


@pytest.fixture
async def sentinel(broker):
    """Subscribed channels used to flush: ``await sentinel()`` returns once
    everything published before it has had its chance to arrive."""
    rec = Recorder()
    for channel in FLUSH:
        broker.subscribe(channel, rec)

    async def flush() -> None:
        n = len(rec.got) + len(FLUSH)
        for channel in FLUSH:
            broker.publish(channel, Frames([b"flush"]))
        await rec.wait_for(n)

    return flush


EXAMPLES = [
    Personal("0a1b2c3d", 7, b'{"id":"x","title":"hi"}'),
    Personal("ffffffff", 2**40, b"\x00\xff\x80 binary"),
    Feed(12, b'{"type":"notification","feed":12}'),
    Frames([b'{"type":"counts"}', b"", b'{"type":"state"}']),
    Frames([]),
    Membership("news.eu:1", True),
    Membership("news", False),
    KeyRevoked("app_a", "0a1b2c3d"),
    SecretRotated("app_a"),
    SessionEnded("3q2-7wEjRjmbx9mMZ2h0Qw"),
    TokensRevoked("app_a", "alice/ü 1", 1_700_000_001.0),
    TokenRevoked("app_a", "alice/ü 1", "Qm9_xY-1abcdefgh", 1_700_003_601.0),
]


@pytest.mark.parametrize("message", EXAMPLES, ids=lambda m: type(m).__name__)
async def test_publish_reaches_the_subscribed_handler_unchanged(broker, message):
    rec = Recorder()
    channel = user_channel("app_a", "alice")
    broker.subscribe(channel, rec)
    broker.publish(channel, message)
    await rec.wait_for(1)
    assert rec.got == [(channel, message)]
    assert type(rec.messages[0]) is type(message)


async def test_handlers_run_on_the_event_loop_thread(broker):
    rec = Recorder()
    broker.subscribe(all_channel("app_a"), rec)
    broker.publish(all_channel("app_a"), Feed(1, b"x"))
    await rec.wait_for(1)
    assert rec.threads == {threading.get_ident()}


async def test_order_is_kept_per_channel(broker):
    one, two = Recorder(), Recorder()
    ch1, ch2 = user_channel("app_a", "u1"), topic_channel("app_a", "t")
    broker.subscribe(ch1, one)
    broker.subscribe(ch2, two)
    for i in range(1000):
        broker.publish(ch1, Personal("e", i + 1, b"%d" % i))
        if i % 3 == 0:
            broker.publish(ch2, Feed(i, b""))
    await one.wait_for(1000)
    await two.wait_for(334)
    assert [m.seq for m in one.messages] == list(range(1, 1001))
    assert [m.body for m in one.messages] == [b"%d" % i for i in range(1000)]
    assert [m.offset for m in two.messages] == list(range(0, 1000, 3))


async def test_a_channel_nobody_subscribed_delivers_nothing(broker, sentinel):
    rec = Recorder()
    broker.subscribe(user_channel("app_a", "alice"), rec)
    broker.publish(user_channel("app_a", "bob"), Personal("e", 1, b"for bob"))
    broker.publish(user_channel("app_b", "alice"), Personal("e", 1, b"other app"))
    broker.publish(topic_channel("app_a", "alice"), Feed(1, b"a topic"))
    broker.publish(all_channel("app_a"), Feed(2, b"broadcast"))
    await sentinel()
    assert rec.got == []


async def test_unsubscribe_stops_delivery(broker, sentinel):
    rec = Recorder()
    channel = user_channel("app_a", "alice")
    broker.subscribe(channel, rec)
    broker.publish(channel, Frames([b"1"]))
    await rec.wait_for(1)
    broker.unsubscribe(channel)
    broker.publish(channel, Frames([b"2"]))
    await sentinel()
    assert rec.messages == [Frames([b"1"])]
    # unsubscribing what is not subscribed is harmless; subscribing again works
    broker.unsubscribe(channel)
    broker.unsubscribe(user_channel("app_a", "never"))
    broker.subscribe(channel, rec)
    broker.publish(channel, Frames([b"3"]))
    await rec.wait_for(2)
    assert rec.messages == [Frames([b"1"]), Frames([b"3"])]


# App ids are minted by the service ("app_" + base32, or "default"): no ":".
APPS = ["app_a", "app_b", "default", "app_u", "app_t"]
# User ids may hold any printable character, ":" and "*" included; topic
# names may hold ":" (tidings/core/models.py).
USERS = ["x", "u", "t", "*", ":", "u:x", "t:x", "x:*", ":u:x", "a b", "ü", "app_a"]
TOPICS = ["x", "u", "t", "u:x", "t:x", "x:", ":x", "app_a"]


def all_channels() -> list[tuple[str, str]]:
    out = [("revoked keys", KEYS_CHANNEL)]  # every node's, no app's
    for app in APPS:
        out.append((f"all {app}", all_channel(app)))
        out += [(f"user {app}/{u}", user_channel(app, u)) for u in USERS]
        out += [(f"topic {app}/{t}", topic_channel(app, t)) for t in TOPICS]
    return out


def test_channel_names_never_collide():
    by_name: dict[str, list[str]] = {}
    for what, channel in all_channels():
        by_name.setdefault(channel, []).append(what)
    assert {c: w for c, w in by_name.items() if len(w) > 1} == {}


async def test_channels_are_independent(broker):
    channels = all_channels()
    recorders = {}
    for what, channel in channels:
        recorders[what] = Recorder()
        broker.subscribe(channel, recorders[what])
    for what, channel in channels:
        broker.publish(channel, Frames([what.encode()]))
    for what, channel in channels:
        rec = recorders[what]
        await rec.wait_for(1)
        assert rec.got == [(channel, Frames([what.encode()]))], what


async def test_heartbeats_list_live_nodes_with_their_info(broker):
    await broker.heartbeat("node-a", {"addr": "127.0.0.1:8001", "connections": 3}, ttl=30)
    await broker.heartbeat("node-b", {"addr": "127.0.0.1:8002", "connections": 0}, ttl=30)
    nodes = await broker.nodes()
    assert nodes["node-a"] == {"addr": "127.0.0.1:8001", "connections": 3}
    assert nodes["node-b"]["addr"] == "127.0.0.1:8002"
    # a later heartbeat replaces the info
    await broker.heartbeat("node-a", {"addr": "127.0.0.1:8001", "connections": 9}, ttl=30)
    assert (await broker.nodes())["node-a"]["connections"] == 9


async def test_a_node_whose_heartbeat_expired_is_gone(broker):
    await broker.heartbeat("node-gone", {"addr": "x"}, ttl=0.2)
    await broker.heartbeat("node-stays", {"addr": "y"}, ttl=30)
    assert "node-gone" in await broker.nodes()
    await asyncio.sleep(0.4)
    nodes = await broker.nodes()
    assert "node-gone" not in nodes
    assert "node-stays" in nodes


# -- rate limits shared by the nodes (take) ---------------------------------
# Rates are chosen so that the time the test itself takes cannot matter:
# 0.01 token/s refills nothing noticeable between two calls.


async def test_take_grants_the_burst_then_says_how_long_to_wait(broker):
    assert [await broker.take("key-a", rate=0.01, burst=3) for _ in range(3)] == [0.0] * 3
    wait = await broker.take("key-a", rate=0.01, burst=3)
    assert 99.0 < wait <= 100.0


async def test_take_with_a_cost(broker):
    assert await broker.take("key-c", rate=0.01, burst=5, cost=4) == 0.0
    wait = await broker.take("key-c", rate=0.01, burst=5, cost=2)
    assert 99.0 < wait <= 100.0  # one token left, one missing
    assert await broker.take("key-c", rate=0.01, burst=5, cost=1) == 0.0


async def test_a_refused_take_takes_nothing(broker):
    assert await broker.take("key-r", rate=0.01, burst=2, cost=2) == 0.0
    first = await broker.take("key-r", rate=0.01, burst=2, cost=2)
    again = await broker.take("key-r", rate=0.01, burst=2, cost=2)
    assert 0 < again <= first <= 200.0


async def test_waiting_what_take_said_is_enough(broker):
    assert await broker.take("key-w", rate=20.0, burst=1) == 0.0
    wait = await broker.take("key-w", rate=20.0, burst=1)
    assert 0 < wait <= 0.05
    await asyncio.sleep(wait + 0.05)
    assert await broker.take("key-w", rate=20.0, burst=1) == 0.0


async def test_take_keys_are_independent(broker):
    keys = ["k", "k{1}", "k%7B1%7D", "{k}", "k:1", "ü", ""]
    for key in keys:
        assert await broker.take(key, rate=0.01, burst=1) == 0.0, key
    for key in keys:
        assert await broker.take(key, rate=0.01, burst=1) > 0, key


@pytest.mark.parametrize("rate, burst, cost", [(0, 1, 1), (-1.0, 5, 1), (1.0, 0, 1), (1.0, 2, 3)])
async def test_take_refuses_impossible_limits(broker, rate, burst, cost):
    with pytest.raises(ValueError):
        await broker.take("key-bad", rate, burst, cost)


async def test_publish_personals_reaches_each_recipients_handler(broker, sentinel):
    """One publish's entries for several users: a networked broker sends one
    ``Personal`` per user's channel, the in-process one the whole message to
    the app channel's handler; either way every entry arrives once, with a
    group entry's ``group`` spliced after the body, and nothing reaches
    another app."""
    app, got = "app_a", Recorder()
    for user in ("alice", "bob", "carol"):
        broker.subscribe(user_channel(app, user), got)
    broker.subscribe(all_channel(app), got)
    other = Recorder()
    broker.subscribe(user_channel("app_b", "alice"), other)
    broker.subscribe(all_channel("app_b"), other)
    body = b'{"id":"n1","title":"hi"}'
    deliveries = [Delivery("alice", "e1", 4), Delivery("bob", "e2", 1, b'{"count":2}'),
                  Delivery("carol", "e3", 9)]
    broker.publish_personals(app, Personals(body, deliveries, 12.5, "tp"))
    await sentinel()
    entries = []
    for channel, msg in got.got:
        if type(msg) is Personal:
            user = channel.split(":", 2)[2]
            entries.append((user, msg.epoch, msg.seq, msg.body, msg.sent_at, msg.trace))
        else:
            assert type(msg) is Personals and channel == all_channel(app)
            entries += [(d.user, d.epoch, d.seq,
                         body if d.group is None else body + b',"group":' + d.group,
                         msg.sent_at, msg.trace) for d in msg.deliveries]
    assert sorted(entries) == [
        ("alice", "e1", 4, body, 12.5, "tp"),
        ("bob", "e2", 1, body + b',"group":{"count":2}', 12.5, "tp"),
        ("carol", "e3", 9, body, 12.5, "tp"),
    ]
    assert other.got == []
