"""Backend outages on a live cluster: PostgreSQL unreachable, Redis restarted,
a master of a Redis Cluster restarted or replaced by its replica, one node cut
off from PostgreSQL.

PostgreSQL is cut off by killing a TCP forwarder between the nodes and the
database (a network partition; the shared server keeps running).  Redis is a
private ``redis-server`` of the test, killed and restarted on the same port;
so is one master of a private three-master Redis Cluster (tests/rediscluster.py),
or it is killed for good and the cluster promotes its replica.
The PostgreSQL outage runs in both deployment shapes (``broker_url``: with
Redis, and on PostgreSQL alone, where the outage takes the broker away too).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import signal
import subprocess
import sys
from functools import partial
from urllib.parse import urlsplit, urlunsplit

import httpx
import pytest
from redis.crc import key_slot

from bench.faultkit import PrivateRedis
from scripts.cluster import free_port_block, wait_until
from tests.cluster.devices import (
    Device,
    connections,
    counter,
    eventually,
    publish_numbered,
    tally,
    wait_all,
)
from tests.rediscluster import LocalRedisCluster
from tests.services import require_haproxy
from tidings.broker.base import topic_channel
from tidings.broker.redis_cluster import RedisClusterBroker


class Proxy:
    def __init__(self, port: int, target_host: str, target_port: int):
        self.args = [sys.executable, "-m", "tests.cluster.tcpproxy", str(port), target_host,
                     str(target_port)]
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(self.args, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout.readline().strip() == "ready"

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
            self.proc.stdout.close()


def _via(url: str, port: int) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(netloc=f"{parts.username or 'postgres'}@127.0.0.1:{port}"))


@contextlib.contextmanager
def _one_node_behind_forwarder(pg_url: str, broker_url: str | None, tmp_path):
    """One node whose path to PostgreSQL runs through a forwarder of the
    test's: ``(cluster, node, proxy)``, everything stopped after."""
    from scripts.cluster import Cluster

    require_haproxy()
    target = urlsplit(pg_url)
    base = free_port_block(3)
    proxy = Proxy(base + 2, target.hostname, target.port or 5432)
    proxy.start()
    cluster = Cluster(_via(pg_url, base + 2), broker_url, nodes=1, base_port=base,
                      workdir=tmp_path / "c")
    try:
        cluster.start()
        yield cluster, cluster.members[0], proxy
    finally:
        cluster.stop()
        proxy.kill()


@pytest.mark.timeout(240)
async def test_postgres_unreachable_gives_503_then_recovers_by_itself(pg_url, broker_url,
                                                                      tmp_path):
    with _one_node_behind_forwarder(pg_url, broker_url, tmp_path) as (cluster, node, proxy):
        app = cluster.create_app("outage")
        user = "pat"
        device = Device(cluster.url, app, user)
        device.start()
        await asyncio.wait_for(device.connected.wait(), 30)
        key = {"Authorization": f"Bearer {app['api_key']}"}
        async with httpx.AsyncClient(base_url=node.url, headers=key, timeout=10) as http:
            await publish_numbered(node.url, app["api_key"], {"users": [user]}, [0])

            proxy.kill()
            answers = []
            for n in range(1, 6):
                r = await http.post("/v1/notifications", json={
                    "to": {"users": [user]}, "title": "during", "data": {"n": n}})
                answers.append(r)
            assert all(r.status_code == 503 for r in answers), [r.text for r in answers]
            assert all(int(r.headers["Retry-After"]) >= 1 for r in answers)
            assert answers[0].json()["error"]["code"] == "unavailable"
            r = await http.get("/readyz")
            assert r.status_code == 503 and r.json()["store"] is False
            r = await http.get(f"/v1/users/{user}/notifications")
            assert r.status_code == 503

            proxy.start()
            # no restart, no operator: the node's pool reconnects by itself

            async def ready() -> bool:
                return (await http.get("/readyz")).status_code == 200

            for _ in range(200):
                if await ready():
                    break
                await asyncio.sleep(0.1)
            assert await ready()
            await publish_numbered(node.url, app["api_key"], {"users": [user]}, [1, 2])
            await wait_all([device], 3, timeout=30)
            assert tally([device], 3) == {"lost": 0, "duplicated": 0, "out_of_order": 0}
            inbox = (await http.get(f"/v1/users/{user}/notifications")).json()
            # exactly the acknowledged ones: nothing from the outage was half-written
            numbers = sorted(item["notification"]["data"]["n"] for item in inbox["items"])
            assert numbers == [0, 1, 2]
        await device.stop()


async def _logged(node, line: str) -> bool:
    return line in node.log.read_text()


async def _routed(node, app: dict, want: float) -> bool:
    return await counter(node.url, "tidings_deliveries", app["app"]) >= want


async def _broker_outage_mid_stream(cluster, down, up) -> None:
    """50 users with two devices each, spread over the nodes, follow a topic;
    the broker goes ``down(app)`` after notification 10 of 40 and comes
    ``up(app)`` after 25.  Every device must end with every notification
    exactly once, on the connection it had: publishing never waited for the
    broker, and the nodes' sweep caught the streams up from the store.  Then
    live delivery between the nodes resumes."""
    devices: list[Device] = []
    try:
        app = cluster.create_app("broker-outage")
        users = [f"r{i}" for i in range(50)]
        async with httpx.AsyncClient(base_url=cluster.url, timeout=30, headers={
                "Authorization": f"Bearer {app['api_key']}"}) as http:
            r = await http.post("/v1/topics/room/subscribers", json={"users": users})
            assert r.status_code == 200, r.text
        devices = [Device(cluster.url, app, u) for u in users for _ in range(2)]
        for d in devices:
            d.start()
        await asyncio.wait_for(asyncio.gather(*(d.connected.wait() for d in devices)), 60)
        split = [await connections(n.url) for n in cluster.members]
        assert min(split) > 0, split
        total = 40

        async def outage(n: int) -> None:
            if n == 10:
                down(app)
            elif n == 25:
                up(app)

        stats = await publish_numbered(cluster.url, app["api_key"], {"topic": "room"},
                                       range(total), pause=0.05, on_sent=outage)
        # every publish was acknowledged on the first try: the broker is not
        # on the durable path
        assert stats["retries"] == 0, stats
        await wait_all(devices, total, timeout=60)
        assert tally(devices, total) == {"lost": 0, "duplicated": 0, "out_of_order": 0}
        # the catch-up came from the store, not from reconnecting devices
        assert sum(d.sub.reconnects for d in devices) == 0

        # Live delivery resumes once every node has resubscribed: each node
        # routes to its streams the notifications the others took, which only
        # the broker brings it (the repair pass would fill a device too).
        for node in cluster.members:
            await eventually(partial(_logged, node, "reconnected and resubscribed"), 30,
                             f"{node.name} to resubscribe")
        routed = [await counter(n.url, "tidings_deliveries", app["app"])
                  for n in cluster.members]
        more = range(total, total + 2 * len(cluster.members))
        for i, node in enumerate(cluster.members):
            await publish_numbered(node.url, app["api_key"], {"topic": "room"},
                                   more[2 * i:2 * i + 2])
        for i, node in enumerate(cluster.members):
            want = routed[i] + len(more) * split[i]
            await eventually(partial(_routed, node, app, want), 20,
                             f"{node.name} to route every later notification live")
        await wait_all(devices, more.stop, timeout=30)
        assert tally(devices, more.stop) == {"lost": 0, "duplicated": 0, "out_of_order": 0}
    finally:
        await asyncio.gather(*(d.stop() for d in devices))


@pytest.mark.timeout(240)
async def test_redis_restart_mid_stream_loses_nothing_and_delivery_resumes(
        pg_url, tmp_path):
    from scripts.cluster import Cluster

    require_haproxy()
    base = free_port_block(4)
    redis = PrivateRedis(base + 3, tmp_path)
    redis.start()
    cluster = Cluster(pg_url, redis.url(), nodes=2, base_port=base, workdir=tmp_path / "c")
    try:
        cluster.start()
        await _broker_outage_mid_stream(cluster, lambda app: redis.kill(),
                                        lambda app: redis.start())
    finally:
        cluster.stop()
        redis.kill()


@pytest.mark.timeout(240)
async def test_a_redis_cluster_master_restart_mid_stream_loses_nothing(pg_url, tmp_path):
    """The master that serves the topic's channel, of a three-master Redis
    Cluster, is killed and started again on its port, empty.  Without a
    replica the cluster refuses commands on every shard meanwhile; then every
    node connects to every master again (docs/deploy.md, On a Redis Cluster)."""
    await _redis_cluster_master_outage(pg_url, tmp_path, replicas=False)


@pytest.mark.timeout(240)
async def test_a_redis_cluster_master_failover_mid_stream_loses_nothing(pg_url, tmp_path):
    """The same master, of a cluster whose masters each have a replica, is
    killed (SIGKILL) and never started again: the cluster promotes its
    replica, and the nodes, never restarted, connect to it from a fresh slot
    map and catch their streams up."""
    await _redis_cluster_master_outage(pg_url, tmp_path, replicas=True)


async def _redis_cluster_master_outage(pg_url, tmp_path, *, replicas: bool) -> None:
    from scripts.cluster import Cluster

    require_haproxy()
    redis = LocalRedisCluster(tmp_path, replicas=replicas)
    prefix = f"tidings-test-{secrets.token_hex(5)}"
    base = free_port_block(3)
    cluster = Cluster(pg_url, f"{redis.url}?prefix={prefix}", nodes=2, base_port=base,
                      workdir=tmp_path / "c")
    victim: list[int] = []

    def down(app: dict) -> None:
        channel = RedisClusterBroker(redis.url, prefix=prefix).channel_name(
            topic_channel(app["app"], "room"))
        victim.append(redis.master_of(key_slot(channel)))
        redis.servers[victim[0]].stop()

    def up(app: dict) -> None:
        if not replicas:  # else the cluster promotes the replica by itself
            redis.servers[victim[0]].start()

    try:
        redis.start()
        cluster.start()
        await _broker_outage_mid_stream(cluster, down, up)
        if replicas:  # live delivery came back through the promoted replica
            assert redis.replicas[victim[0]].command("INFO", "replication")["role"] == "master"
            assert redis.servers[victim[0]].proc is None
    finally:
        cluster.stop()
        redis.stop()


@pytest.mark.timeout(240)
async def test_a_node_cut_off_from_postgresql_catches_up_when_it_returns(pg_url, tmp_path):
    """PostgreSQL alone: node1 reaches the database through a forwarder that
    dies mid-stream and comes back; its devices miss the live events of the
    gap (its listener is gone) and must end with every one, exactly once."""
    from scripts.cluster import Cluster

    require_haproxy()
    base = free_port_block(4)
    target = urlsplit(pg_url)
    proxy = Proxy(base + 3, target.hostname, target.port or 5432)
    proxy.start()
    cluster = Cluster(pg_url, None, nodes=2, base_port=base, workdir=tmp_path / "c")
    cut = cluster.members[0]
    cut.args[cut.args.index("--store") + 1] = _via(pg_url, base + 3)
    devices: list[Device] = []
    try:
        cluster.start()
        app = cluster.create_app("cut-off")
        users = [f"c{i}" for i in range(50)]
        async with httpx.AsyncClient(base_url=cluster.url, timeout=30, headers={
                "Authorization": f"Bearer {app['api_key']}"}) as http:
            r = await http.post("/v1/topics/room/subscribers", json={"users": users})
            assert r.status_code == 200, r.text
        devices = [Device(cluster.url, app, u) for u in users for _ in range(2)]
        for d in devices:
            d.start()
        await asyncio.wait_for(asyncio.gather(*(d.connected.wait() for d in devices)), 60)
        split = [await connections(n.url) for n in cluster.members]
        assert min(split) > 0, split
        total = 40

        async def outage(n: int) -> None:
            if n == 10:
                proxy.kill()
            elif n == 25:
                proxy.start()

        await publish_numbered(cluster.url, app["api_key"], {"topic": "room"}, range(total),
                               pause=0.05, on_sent=outage)
        await wait_all(devices, total, timeout=60)
        assert tally(devices, total) == {"lost": 0, "duplicated": 0, "out_of_order": 0}
    finally:
        await asyncio.gather(*(d.stop() for d in devices))
        cluster.stop()
        proxy.kill()


@pytest.mark.timeout(120)
async def test_readiness_answers_not_ready_while_postgresql_is_silent(pg_url, broker_url,
                                                                      tmp_path):
    """A silent partition: the path to PostgreSQL drops everything without a
    reset (the forwarder is stopped, not killed).  /readyz must still answer,
    'not ready', so that a load balancer takes the node out, instead of
    hanging with the database's connection."""
    with _one_node_behind_forwarder(pg_url, broker_url, tmp_path) as (cluster, node, proxy):
        async with httpx.AsyncClient(base_url=node.url, timeout=8) as http:
            assert (await http.get("/readyz")).status_code == 200
            os.kill(proxy.proc.pid, signal.SIGSTOP)  # packets go nowhere, nothing is reset
            try:
                r = await http.get("/readyz")  # a hang here is an httpx ReadTimeout
                assert r.status_code == 503 and r.json()["store"] is False, r.text
            finally:
                os.kill(proxy.proc.pid, signal.SIGCONT)
            wait_until(lambda: httpx.get(f"{node.url}/readyz").status_code == 200, 30,
                       "ready again once the path heals")
