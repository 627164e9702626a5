"""``failover``: lost and duplicated notifications when a node is killed.

Two nodes over PostgreSQL and Redis behind HAProxy (scripts/cluster.py, the
same harness the failover tests drive), ``--users`` users with two devices
each (the Python SDK's Subscriber, which reconnects and drops duplicates),
``--msgs`` numbered notifications to a topic they all follow; node 1 gets
``--signal`` (KILL or TERM) after a third of them.  Reported: lost,
duplicated and out-of-order notifications summed over every device (each
must be 0), how many devices reconnected, publish retries, and the seconds
from the kill until every device had everything.
"""

from __future__ import annotations

import asyncio
import secrets
import shutil
import signal
import tempfile
import time
from pathlib import Path

import httpx

from bench.pgschema import fresh_schema
from scripts.cluster import Cluster, free_port_block

# the devices and the numbered publisher are the failover tests' own
from tests.cluster.devices import Device, connections, publish_numbered, tally, wait_all

TOPIC = "bench:failover"


async def _measure(cluster: Cluster, opts) -> dict:
    app = cluster.create_app("failover")
    async with httpx.AsyncClient(base_url=cluster.url, timeout=30, headers={
            "Authorization": f"Bearer {app['api_key']}"}) as http:
        r = await http.post(f"/v1/topics/{TOPIC}/subscribers",
                            json={"users": [f"u{i}" for i in range(opts.users)]})
        r.raise_for_status()
    devices = [Device(cluster.url, app, f"u{i // 2}") for i in range(2 * opts.users)]
    for d in devices:
        d.start()
    try:
        await asyncio.wait_for(asyncio.gather(*(d.connected.wait() for d in devices)), 120)
        victim = cluster.members[0]
        split = [await connections(n.url) for n in cluster.members]
        sig = getattr(signal, f"SIG{opts.signal}")
        killed_at: list[float] = []

        async def maybe_kill(n: int) -> None:
            if n == opts.msgs // 3:
                killed_at.append(time.monotonic())
                victim.signal(sig)

        stats = await publish_numbered(cluster.url, app["api_key"], {"topic": TOPIC},
                                       range(opts.msgs), pause=opts.pause, on_sent=maybe_kill)
        await wait_all(devices, opts.msgs, timeout=opts.timeout)
        done = time.monotonic()
        counts = tally(devices, opts.msgs)
        complete = sum(1 for d in devices if sum(d.seen[:opts.msgs]) == opts.msgs)
        return {
            **counts, "devices": len(devices), "devices_complete": complete,
            "split_before": split, "reconnected": sum(1 for d in devices if d.sub.reconnects),
            "publish_retries": stats["retries"], "duplicate_answers": stats["duplicate"],
            "recovery_s": round(done - killed_at[0], 2) if killed_at else None,
            "signal": opts.signal, "users": opts.users, "msgs": opts.msgs,
        }
    finally:
        await asyncio.gather(*(d.stop() for d in devices))


def run_once(opts, cpus) -> dict:
    workdir = Path(tempfile.mkdtemp(prefix="tidings-failover-"))
    # "none": PostgreSQL alone (its LISTEN/NOTIFY carries the live events)
    broker = None if opts.broker == "none" else \
        f"{opts.broker}?prefix=bench-failover-{secrets.token_hex(4)}"
    with fresh_schema(opts.store, "bench_failover") as store:
        cluster = Cluster(store, broker, nodes=2, base_port=free_port_block(3), workdir=workdir)
        try:
            cluster.start()
            return asyncio.run(_measure(cluster, opts))
        finally:
            cluster.stop()
            shutil.rmtree(workdir, ignore_errors=True)
