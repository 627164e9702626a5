"""How fast the outbox consumer drains ``tidings_outbox``: measured.

    python -m bench.outbox [--store postgresql://...] [--rows 5000] [--consumers 1,2] [--batch 100]

A fresh schema holds the store and the outbox; ``--rows`` rows (each to one
of 100 users) are inserted in one statement, then ``--consumers`` consumers
(each with its own store pool, in this process, as nodes would be) drain
them.  Prints rows per second from the first claim to an empty outbox, and
this process's CPU per row (consumer and publish path together).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import resource
import secrets
import tempfile
import time

import asyncpg

from tidings import outbox
from tidings.api.app import build_service
from tidings.config import Settings
from tidings.outbox.consumer import OutboxConsumer
from tidings.store.postgres import migrate


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


async def run(base: str, rows: int, consumers: int, batch: int) -> dict:
    schema = "bench_outbox_" + secrets.token_hex(4)
    admin = await asyncpg.connect(base)
    await admin.execute(f"CREATE SCHEMA {schema}")
    url = f"{base}?search_path={schema}"
    await migrate(base, server_settings={"search_path": schema})
    conn = await asyncpg.connect(url)
    services = []
    try:
        await conn.execute(outbox.SCHEMA)
        async with contextlib.AsyncExitStack() as stack:
            for _ in range(consumers):
                data = stack.enter_context(tempfile.TemporaryDirectory())
                service = build_service(Settings(store=url, broker="local", data=data))
                await service.open()
                stack.push_async_callback(service.close)
                services.append(service)
            app, _ = await services[0].create_app("bench")
            await conn.execute(
                "INSERT INTO tidings_outbox (app, payload) SELECT $1, jsonb_build_object("
                "'to', jsonb_build_object('users', jsonb_build_array('u' || (i % 100))), "
                "'title', 't' || i) FROM generate_series(1, $2) AS i", app.id, rows)
            cpu0, start = _cpu(), time.perf_counter()
            for service in services:
                consumer = OutboxConsumer(service, url, batch=batch)
                await consumer.start()
                stack.push_async_callback(consumer.stop)
            while await conn.fetchval("SELECT count(*) FROM tidings_outbox"):
                await asyncio.sleep(0.02)
            elapsed, cpu = time.perf_counter() - start, _cpu() - cpu0
            published = await conn.fetchval("SELECT count(*) FROM notifications")
        return {"consumers": consumers, "rows": rows, "published": published,
                "rows_per_s": round(rows / elapsed), "cpu_us_per_row": round(cpu / rows * 1e6)}
    finally:
        await conn.close()
        await admin.execute(f"DROP SCHEMA {schema} CASCADE")
        await admin.close()


async def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.outbox", description=__doc__)
    ap.add_argument("--store", default="postgresql://postgres@127.0.0.1:5432/test")
    ap.add_argument("--rows", type=int, default=5000)
    ap.add_argument("--consumers", default="1,2")
    ap.add_argument("--batch", type=int, default=100)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    for n in (int(c) for c in args.consumers.split(",")):
        results = [await run(args.store, args.rows, n, args.batch) for _ in range(args.runs)]
        rates = sorted(r["rows_per_s"] for r in results)
        cpus = sorted(r["cpu_us_per_row"] for r in results)
        print({"consumers": n, "rows": args.rows, "batch": args.batch,
               "published": [r["published"] for r in results],
               "rows_per_s_median": rates[len(rates) // 2],
               "cpu_us_per_row_median": cpus[len(cpus) // 2]}, flush=True)


if __name__ == "__main__":
    asyncio.run(main())
