"""What only the PostgreSQL broker has: packed and split notifications, one
channel per schema, several nodes, lost connections, the bounded queue, the
registry and buckets in UNLOGGED tables.  (Everything every broker promises
is in test_contract.py.)

Outages are real: ``pg_terminate_backend`` of this broker's own sessions on
the shared server (found by their application_name), or a TCP forwarder
(tests/cluster/tcpproxy.py) between the broker and PostgreSQL that is
killed.  The shared server is never stopped."""

from __future__ import annotations

import asyncio
import gc
import subprocess
import sys
import warnings
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

from scripts.cluster import free_port_block
from tests.broker.test_contract import Recorder
from tests.conftest import two_nodes
from tests.gateway.live import publish, recv_events, ws_connect
from tests.services import require_postgres
from tests.store.pg import fresh_schema
from tidings.broker import open_broker
from tidings.broker.base import BrokerUnavailable, Feed, Frames, Personal, user_channel
from tidings.broker.local import LocalBroker
from tidings.broker.postgres import CHUNK, PostgresBroker, channel_for, pack

TIMEOUT = 15.0


@pytest.fixture
async def schema_url():
    base = require_postgres()
    async with fresh_schema(base) as settings:
        yield f"{base}?search_path={settings['search_path']}"


@pytest.fixture
async def make(schema_url):
    """Opened brokers over one schema (the nodes of one cluster), closed after."""
    made: list[PostgresBroker] = []

    async def factory(url: str | None = None, **options) -> PostgresBroker:
        b = PostgresBroker(url or schema_url, **options)
        await b.open()
        made.append(b)
        return b

    yield factory
    for b in made:
        await b.close()


@pytest.fixture
def sentinel_pair():
    """``await flush(a, b)``: returns once everything each of two brokers
    published before it has reached the other (and itself)."""
    async def flush(*brokers: PostgresBroker) -> None:
        recs = []
        for i, broker in enumerate(brokers):
            rec = Recorder()
            broker.subscribe(user_channel("app_sentinel", f"s{i}"), rec)
            recs.append(rec)
        for broker in brokers:
            for i in range(len(brokers)):
                broker.publish(user_channel("app_sentinel", f"s{i}"), Frames([b"flush"]))
        for rec in recs:
            await rec.wait_for(len(brokers))
    return flush


async def terminate(broker: PostgresBroker, role: str) -> None:
    """pg_terminate_backend this broker's ``role`` session ("listen" or "notify")."""
    admin = await asyncpg.connect(require_postgres())
    try:
        for _ in range(500):
            killed = await admin.fetchval(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE application_name = $1", f"{broker.client_name}:{role}")
            if killed:
                return
            await asyncio.sleep(0.02)  # (re)connecting
    finally:
        await admin.close()
    raise AssertionError(f"no {role} session of {broker.client_name}")


def reconnected(broker: PostgresBroker) -> asyncio.Event:
    event = asyncio.Event()
    broker.on_reconnect(event.set)
    return event


# -- packing --------------------------------------------------------------------

def test_pack_keeps_every_payload_under_the_limit_and_splits_big_items():
    items = [b"a" * 100] * 500 + [b"b" * 50_000] + [b"c" * 10]
    payloads = pack(items, 7)
    assert all(len(p.encode()) <= CHUNK for p in payloads)
    numbers = [int(p.split(":")[0]) for p in payloads]
    assert numbers == list(range(7, 7 + len(payloads)))  # no two alike in a transaction
    # "k": parts still to come; a batch ends on 0
    rest = [int(p.split(":")[1]) for p in payloads]
    assert rest[-1] == 0 and max(rest) >= 50_000 // CHUNK
    # a broker's payloads start with its origin (letters), then the same
    marked = pack(items, 7, "qwertzui")
    assert all(p.startswith("qwertzui") for p in marked)
    assert [p[8:] for p in marked] == payloads
    assert all(len(p.encode()) <= CHUNK for p in marked)


async def test_messages_of_every_size_arrive_whole_and_in_order(make):
    a, b = await make(), await make()
    rec = Recorder()
    channel = user_channel("app_a", "ann")
    b.subscribe(channel, rec)
    sizes = [10, 7_000, 7_900, 8_000, 16_000, 40_000, 0, 3]
    sent = [Personal("e", i + 1, bytes([65 + i]) * n) for i, n in enumerate(sizes)]
    for m in sent:
        a.publish(channel, m)
    await rec.wait_for(len(sent))
    assert rec.messages == sent
    assert b.undecodable == 0


async def test_thousands_of_messages_across_nodes_keep_order(make):
    a, b = await make(), await make()
    ra, rb = Recorder(), Recorder()
    a.subscribe(user_channel("app_a", "x"), ra)
    b.subscribe(user_channel("app_a", "x"), rb)
    for i in range(5000):
        a.publish(user_channel("app_a", "x"), Personal("e", i + 1, b"%d" % i))
    await ra.wait_for(5000)
    await rb.wait_for(5000)
    assert [m.seq for m in ra.messages] == [m.seq for m in rb.messages] == list(range(1, 5001))


async def test_each_node_gets_its_own_messages_and_the_others_once(make, sentinel_pair):
    a, b = await make(), await make()
    assert a.origin != b.origin and a.origin.isalpha() and len(a.origin) == 8
    ra, rb = Recorder(), Recorder()
    for broker, rec in ((a, ra), (b, rb)):
        broker.subscribe(user_channel("app_a", "x"), rec)
    for i in range(1, 301):  # interleaved, and some large enough to be split
        body = b"%d" % i * (3000 if i % 50 == 0 else 1)
        (a if i % 2 else b).publish(user_channel("app_a", "x"), Personal("e", i, body))
    await ra.wait_for(300)
    await rb.wait_for(300)
    await sentinel_pair(a, b)
    for rec in (ra, rb):
        seqs = [m.seq for m in rec.messages]
        assert sorted(seqs) == list(range(1, 301))  # each once
        # in publish order per publisher
        assert [s for s in seqs if s % 2] == list(range(1, 301, 2))
        assert [s for s in seqs if not s % 2] == list(range(2, 301, 2))
    assert a.undecodable == b.undecodable == 0


async def test_a_node_cut_off_from_postgresql_still_gets_its_own_messages(make, schema_url):
    """Its own messages never go through PostgreSQL: they reach its handlers
    while it cannot notify (the others' are lost meanwhile, at most once)."""
    port = free_port_block(1)
    target = urlsplit(schema_url)
    args = [sys.executable, "-m", "tests.cluster.tcpproxy", str(port), target.hostname,
            str(target.port or 5432)]
    proxy = subprocess.Popen(args, stdout=subprocess.PIPE, text=True)
    try:
        assert proxy.stdout.readline().strip() == "ready"
        cut = await make(_via(schema_url, port), health_interval=0.5, timeout=2)
        rec = Recorder()
        cut.subscribe(user_channel("app_a", "ann"), rec)
        back = reconnected(cut)
        proxy.kill()
        proxy.wait(10)
        proxy.stdout.close()
        for seq in range(1, 11):
            cut.publish(user_channel("app_a", "ann"), Personal("e", seq, b"mine"))
        await rec.wait_for(10)
        assert [m.seq for m in rec.messages] == list(range(1, 11))
        # reachable again, for the broker's close
        proxy = subprocess.Popen(args, stdout=subprocess.PIPE, text=True)
        assert proxy.stdout.readline().strip() == "ready"
        await asyncio.wait_for(back.wait(), TIMEOUT)
    finally:
        proxy.kill()
        proxy.wait(10)
        proxy.stdout.close()


async def test_a_schema_is_a_deployment_of_its_own(make):
    async with fresh_schema(require_postgres()) as other:
        base = require_postgres()
        stranger = await make(f"{base}?search_path={other['search_path']}")
        ours = await make()
        assert stranger.channel != ours.channel
        heard, sentinel = Recorder(), Recorder()
        stranger.subscribe(user_channel("app_a", "ann"), heard)
        ours.subscribe(user_channel("app_a", "ann"), sentinel)
        ours.publish(user_channel("app_a", "ann"), Frames([b"ours"]))
        await sentinel.wait_for(1)
        await asyncio.sleep(0.2)
        assert heard.got == []
        await ours.heartbeat("n1", {}, ttl=30)
        assert "n1" not in await stranger.nodes()


def test_channel_names_fit_postgresql_identifiers():
    assert channel_for("t_abc") == "tidings:t_abc"
    long = channel_for("s" * 63)
    assert len(long.encode()) <= 63 and long != channel_for("s" * 62 + "t")


# -- life cycle and outages -------------------------------------------------------

async def test_open_refuses_a_schema_that_is_not_migrated():
    base = require_postgres()
    async with fresh_schema(base, migrated=False) as settings:
        broker = PostgresBroker(f"{base}?search_path={settings['search_path']}")
        with pytest.raises(BrokerUnavailable, match="tidings migrate"):
            await broker.open()


async def test_open_fails_fast_when_postgresql_is_unreachable():
    port = free_port_block(1)
    broker = PostgresBroker(f"postgresql://postgres@127.0.0.1:{port}/test", timeout=2)
    with pytest.raises(BrokerUnavailable):
        await broker.open()


async def test_a_killed_listener_reconnects_and_says_so(make):
    a, b = await make(), await make(health_interval=0.5)
    rec = Recorder()
    b.subscribe(user_channel("app_a", "ann"), rec)
    back = reconnected(b)
    await terminate(b, "listen")
    await asyncio.wait_for(back.wait(), TIMEOUT)
    assert b.reconnects == 1
    a.publish(user_channel("app_a", "ann"), Frames([b"after"]))
    await rec.wait_for(1)
    assert await b.ping()


async def test_a_killed_publisher_reconnects_and_keeps_order(make):
    a, b = await make(), await make()  # b hears what a's notifying session sent
    rec = Recorder()
    b.subscribe(user_channel("app_a", "ann"), rec)
    a.publish(user_channel("app_a", "ann"), Personal("e", 1, b"1"))
    await rec.wait_for(1)
    await terminate(a, "notify")
    for seq in range(2, 50):
        a.publish(user_channel("app_a", "ann"), Personal("e", seq, b""))
    await asyncio.sleep(0.5)
    for seq in range(50, 60):
        a.publish(user_channel("app_a", "ann"), Personal("e", seq, b""))
    for _ in range(200):  # the last ones, sent after the reconnection, arrive
        if rec.messages[-1].seq == 59:
            break
        await asyncio.sleep(0.05)
    seqs = [m.seq for m in rec.messages]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)  # at most once, in order
    assert seqs[-10:] == list(range(50, 60))
    for _ in range(100):  # the writer counts once PostgreSQL has answered
        if a.published + a.dropped == 59:
            break
        await asyncio.sleep(0.05)
    assert a.published + a.dropped == 59


async def test_a_publisher_connection_lost_while_idle_drops_nothing(make):
    a, b = await make(), await make()  # b hears what a's notifying session sent
    rec = Recorder()
    b.subscribe(user_channel("app_a", "ann"), rec)
    a.publish(user_channel("app_a", "ann"), Personal("e", 1, b""))
    await rec.wait_for(1)
    await terminate(a, "notify")
    await asyncio.sleep(0.5)  # idle: the reset is noticed before anything is sent
    for seq in range(2, 12):
        a.publish(user_channel("app_a", "ann"), Personal("e", seq, b""))
    await rec.wait_for(11)
    assert [m.seq for m in rec.messages] == list(range(1, 12))
    assert a.dropped == 0


async def test_close_leaves_no_session_behind(schema_url):
    b = PostgresBroker(schema_url)
    await b.open()
    rec = Recorder()
    b.subscribe(user_channel("app_a", "ann"), rec)
    b.publish(user_channel("app_a", "ann"), Personal("e", 1, b""))
    await rec.wait_for(1)
    for _ in range(200):  # the notifying session is up too
        if b.published:
            break
        await asyncio.sleep(0.02)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        await b.close()
        gc.collect()  # a connection nobody closed warns as it is collected
    assert not [w for w in caught if issubclass(w.category, ResourceWarning)]
    admin = await asyncpg.connect(require_postgres())
    try:
        for _ in range(200):  # a backend leaves pg_stat_activity once it has exited
            left = await admin.fetch(
                "SELECT application_name FROM pg_stat_activity WHERE application_name LIKE $1",
                b.client_name + ":%")
            if not left:
                break
            await asyncio.sleep(0.02)
    finally:
        await admin.close()
    assert left == []


def _via(url: str, port: int) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(netloc=f"{parts.username or 'postgres'}@127.0.0.1:{port}"))


async def test_a_partition_drops_at_most_once_and_heals_by_itself(make, schema_url):
    port = free_port_block(1)
    target = urlsplit(schema_url)
    args = [sys.executable, "-m", "tests.cluster.tcpproxy", str(port), target.hostname,
            str(target.port or 5432)]
    proxy = subprocess.Popen(args, stdout=subprocess.PIPE, text=True)
    try:
        assert proxy.stdout.readline().strip() == "ready"
        cut = await make(_via(schema_url, port), health_interval=0.5, timeout=2,
                         max_pending=100)
        peer = await make()
        rec = Recorder()
        cut.subscribe(user_channel("app_a", "ann"), rec)
        back = reconnected(cut)
        proxy.kill()
        proxy.wait(10)
        proxy.stdout.close()
        for i in range(500):  # while cut off: queued up to the bound, the rest dropped
            cut.publish(user_channel("app_a", "bob"), Feed(i, b""))
        assert cut.dropped >= 400
        with pytest.raises(BrokerUnavailable):
            await cut.take("k", rate=1.0, burst=1)
        assert not await cut.ping()
        proxy = subprocess.Popen(args, stdout=subprocess.PIPE, text=True)
        assert proxy.stdout.readline().strip() == "ready"
        await asyncio.wait_for(back.wait(), TIMEOUT)
        peer.publish(user_channel("app_a", "ann"), Frames([b"healed"]))
        await rec.wait_for(1)
        assert rec.messages[-1] == Frames([b"healed"])
    finally:
        proxy.kill()
        proxy.wait(10)
        proxy.stdout.close()


async def test_two_nodes_on_postgresql_alone_deliver_each_event_once(tmp_path):
    """A node's own announcements reach its streams from publish, the other
    node's through LISTEN: every stream gets each once, from either node."""
    async with two_nodes(tmp_path, via="postgres") as (a, b):
        streams = {}
        for name, node in (("ann", a), ("bob", b), ("cy", a), ("cy2", b)):
            user = name[:2] if name.startswith("cy") else name
            streams[name] = await ws_connect(node, await node.token(user))
            await recv_events(streams[name], 1)  # hello
        sent = []
        for i in range(6):  # personal entries and broadcasts, from both nodes
            node = (a, b)[i % 2]
            to = {"all": True} if i % 3 == 2 else {"users": ["ann", "bob", "cy"]}
            sent += await publish(node, to, title=f"n{i}")
        async def notifications(ws, n):
            got: list[dict] = []
            while len(got) < n:
                got += [e for e in await recv_events(ws, 1, timeout=10)
                        if e["type"] == "notification"]
            return [e["notification"]["id"] for e in got]

        for ws in streams.values():
            assert sorted(await notifications(ws, len(sent))) == sorted(sent)
        # nothing more: the next notification each stream gets is the next one
        (last,) = await publish(a, {"users": ["ann", "bob", "cy"]}, title="last")
        for ws in streams.values():
            assert await notifications(ws, 1) == [last]
            await ws.close()
        assert a.service.broker.undecodable == b.service.broker.undecodable == 0


# -- registry and buckets -------------------------------------------------------

async def test_nodes_see_each_others_heartbeats_and_full_buckets_are_swept(make, schema_url):
    a, b = await make(), await make()
    await a.heartbeat("node-a", {"connections": 1}, ttl=30)
    await b.heartbeat("node-b", {"connections": 2}, ttl=30)
    assert await a.nodes() == await b.nodes() == {"node-a": {"connections": 1},
                                                  "node-b": {"connections": 2}}
    assert await a.take("fast", rate=1000.0, burst=1) == 0.0  # full again in 1 ms
    assert await a.take("slow", rate=0.01, burst=1) == 0.0
    assert await b.take("slow", rate=0.01, burst=1) > 99  # shared by the nodes
    await asyncio.sleep(0.05)
    await a.heartbeat("node-a", {}, ttl=30)  # sweeps
    conn = await asyncpg.connect(schema_url)
    try:
        keys = await conn.fetch("SELECT key FROM broker_buckets")
        assert [k["key"] for k in keys] == ["slow"]
        assert await conn.fetchval(
            "SELECT relpersistence FROM pg_class WHERE relname = 'broker_buckets' "
            "AND relnamespace = current_schema()::regnamespace") == b"u"
    finally:
        await conn.close()


def test_open_broker_takes_the_postgresql_store_when_no_broker_is_given():
    store = "postgresql://tidings@db/tidings"
    assert isinstance(open_broker(None, store), PostgresBroker)
    assert isinstance(open_broker("postgresql://tidings@db/other", None), PostgresBroker)
    assert isinstance(open_broker("local", store), LocalBroker)
    assert isinstance(open_broker(None, None), LocalBroker)
    assert isinstance(open_broker(None, "sqlite:///x.db"), LocalBroker)
