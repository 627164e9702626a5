"""Failover on loopback (issue: "a node can die without losing a notification").

Two nodes behind HAProxy, over PostgreSQL with Redis as the broker and on
PostgreSQL alone (the SIGKILL on a three-master Redis Cluster too); 1,000
devices (500 users, two devices each) split across the nodes receive a stream
of numbered notifications.  One node is killed with SIGKILL (or stopped with
SIGTERM) mid-stream.  Every device must reconnect through the balancer and end with
every notification exactly once, in order: lost == duplicated == 0.
"""

from __future__ import annotations

import asyncio
import signal

import httpx
import pytest

from tests.cluster.conftest import BROKERS
from tests.cluster.devices import Device, connections, publish_numbered, tally, wait_all

USERS = 500
# Enough that the kill lands mid-stream with notifications before and after it;
# `python -m bench failover` runs the 60 of docs/deploy.md's figures.
TOTAL = 30
TOPIC = "match:7"


async def _setup(cluster, users: int = USERS):
    app = cluster.create_app("failover")
    async with httpx.AsyncClient(base_url=cluster.url, timeout=30, headers={
            "Authorization": f"Bearer {app['api_key']}"}) as http:
        r = await http.post(f"/v1/topics/{TOPIC}/subscribers",
                            json={"users": [f"u{i}" for i in range(users)]})
        assert r.status_code == 200, r.text
    devices = [Device(cluster.url, app, f"u{i // 2}") for i in range(2 * users)]
    for d in devices:
        d.start()
    await asyncio.wait_for(asyncio.gather(*(d.connected.wait() for d in devices)), 60)
    return app, devices


async def _kill_mid_stream(cluster, sig: int) -> None:
    app, devices = await _setup(cluster)
    victim, survivor = cluster.members
    try:
        split = [await connections(victim.url), await connections(survivor.url)]
        assert sum(split) == len(devices) and min(split) > 0, split

        async def maybe_kill(n: int) -> None:
            if n == TOTAL // 3:
                victim.signal(sig)

        stats = await publish_numbered(cluster.url, app["api_key"], {"topic": TOPIC},
                                       range(TOTAL), pause=0.02, on_sent=maybe_kill)
        await wait_all(devices, TOTAL, timeout=90)
        counts = tally(devices, TOTAL)
        assert counts == {"lost": 0, "duplicated": 0, "out_of_order": 0}, (counts, stats)
        moved = sum(1 for d in devices if d.sub.reconnects > 0)
        # every device of the victim moved (and only a few others, if any)
        assert moved >= split[0], (moved, split)
        assert await connections(survivor.url) == len(devices)
    finally:
        await asyncio.gather(*(d.stop() for d in devices))


@pytest.mark.timeout(300)
@pytest.mark.parametrize("broker_url", [*BROKERS, "redis-cluster"], indirect=True)
async def test_sigkill_a_node_mid_stream_loses_and_duplicates_nothing(make_cluster):
    cluster = make_cluster(nodes=2)
    await _kill_mid_stream(cluster, signal.SIGKILL)


@pytest.mark.timeout(300)
async def test_sigterm_drains_a_node_and_its_devices_resume_elsewhere(make_cluster):
    cluster = make_cluster(nodes=2)
    await _kill_mid_stream(cluster, signal.SIGTERM)
