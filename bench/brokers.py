"""The cluster brokers side by side: PostgreSQL LISTEN/NOTIFY against Redis.

    python -m bench.brokers [--rates 1000,5000,20000] [--seconds 5] [--size 300]

One node (this process) publishes personal events to 1,000 users' channels at
each rate for ``--seconds``; another node (a second process) is subscribed to
all of them.  Per broker and rate: what arrived, publish -> receive latency
p50/p99 (from the message's ``sent_at``, same machine clock), and the CPU
each node's process spent per message; for PostgreSQL also the CPU of the
two broker sessions' backends (notify, listen) per message, for Redis the
CPU of redis-server (shared with whatever else uses it).  Each run uses a
fresh schema / key prefix.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import resource
import secrets
import time

import asyncpg
import psutil

from tidings.broker.base import Personal, user_channel

USERS = 1000


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _make(kind: str, url: str):
    if kind == "postgres":
        from tidings.broker.postgres import PostgresBroker

        return PostgresBroker(url)
    from tidings.broker.redis import RedisBroker

    return RedisBroker(url)


def _receiver(kind: str, url: str, expect: int, deadline: float, conn) -> None:
    async def run() -> dict:
        broker = _make(kind, url)
        await broker.open()
        lat: list[float] = []

        def handler(channel, message) -> None:
            lat.append(time.time() - message.sent_at)

        for i in range(USERS):
            broker.subscribe(user_channel("app_b", f"u{i}"), handler)
        conn.send(getattr(broker, "client_name", ""))
        cpu0 = _cpu()
        while len(lat) < expect and time.time() < deadline:
            await asyncio.sleep(0.05)
        cpu = _cpu() - cpu0
        await broker.close()
        lat.sort()
        pick = lambda q: round(lat[min(len(lat) - 1, int(q * len(lat)))] * 1000, 2) if lat else None  # noqa: E731
        return {"received": len(lat), "p50_ms": pick(0.5), "p99_ms": pick(0.99),
                "recv_cpu_us": round(cpu / max(1, len(lat)) * 1e6, 1)}

    conn.send(asyncio.run(run()))


async def _publish(kind: str, url: str, rate: int, seconds: float, size: int) -> dict:
    total = int(rate * seconds)
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=_receiver,
                       args=(kind, url, total, time.time() + seconds + 30, child))
    proc.start()
    peer = parent.recv()
    broker = _make(kind, url)
    await broker.open()
    # the writer connects on its first message: let it, before looking it up
    broker.publish(user_channel("app_b", "nobody"), Personal("e", 1, b"", time.time()))
    await asyncio.sleep(0.5)
    servers = await _server_processes(kind, url, [peer, getattr(broker, "client_name", "")])
    server0 = sum(_proc_cpu(p) for p in servers)
    body = b"x" * size
    cpu0, start = _cpu(), time.perf_counter()
    sent = 0
    while sent < total:
        due = min(total, int((time.perf_counter() - start) * rate) + 1)
        while sent < due:
            broker.publish(user_channel("app_b", f"u{sent % USERS}"),
                           Personal("e", sent + 1, body, time.time()))
            sent += 1
        await asyncio.sleep(0.001)
    pub_cpu = _cpu() - cpu0
    result = await asyncio.to_thread(parent.recv)
    server_cpu = sum(_proc_cpu(p) for p in servers) - server0
    await broker.close()
    proc.join(10)
    return {"broker": kind, "rate": rate, "sent": total, **result,
            "pub_cpu_us": round(pub_cpu / total * 1e6, 1),
            "server_cpu_us": round(server_cpu / total * 1e6, 1)}


def _proc_cpu(p: psutil.Process) -> float:
    try:
        t = p.cpu_times()
        return t.user + t.system
    except psutil.Error:
        return 0.0


async def _server_processes(kind: str, url: str, names: list[str]) -> list[psutil.Process]:
    if kind == "redis":
        return [p for p in psutil.process_iter(["name"]) if p.info["name"] == "redis-server"]
    conn = await asyncpg.connect(url)
    try:
        pids = await conn.fetch(
            "SELECT pid FROM pg_stat_activity WHERE application_name = ANY($1::text[])",
            [f"{n}:{role}" for n in names for role in ("listen", "notify")])
    finally:
        await conn.close()
    return [psutil.Process(r["pid"]) for r in pids]


async def _fresh_schema(base: str) -> tuple[str, str]:
    from tidings.store.postgres import migrate

    schema = "bench_brokers_" + secrets.token_hex(4)
    admin = await asyncpg.connect(base)
    await admin.execute(f"CREATE SCHEMA {schema}")
    await admin.close()
    await migrate(base, server_settings={"search_path": schema})
    return f"{base}?search_path={schema}", schema


async def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.brokers", description=__doc__)
    ap.add_argument("--store", default="postgresql://postgres@127.0.0.1:5432/test")
    ap.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    ap.add_argument("--rates", default="1000,5000,20000")
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--size", type=int, default=300, help="bytes of each event's body")
    args = ap.parse_args()
    for rate in (int(r) for r in args.rates.split(",")):
        for kind in ("postgres", "redis"):
            if kind == "postgres":
                url, schema = await _fresh_schema(args.store)
            else:
                url, schema = f"{args.redis}?prefix=bench-brokers-{secrets.token_hex(4)}", ""
            try:
                print(await _publish(kind, url, rate, args.seconds, args.size), flush=True)
            finally:
                if schema:
                    admin = await asyncpg.connect(args.store)
                    await admin.execute(f"DROP SCHEMA {schema} CASCADE")
                    await admin.close()


if __name__ == "__main__":
    asyncio.run(main())
