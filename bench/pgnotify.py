"""How to carry broker messages over PostgreSQL LISTEN/NOTIFY: measured.

    python -m bench.pgnotify [--store postgresql://...] [--messages 20000] [--listeners 2]

Three ways to move ``--messages`` broker messages of a given size from one
publisher to ``--listeners`` listening connections (the nodes), each
publishing transaction carrying up to 100 messages as tidings' broker does:

* ``one``: one ``pg_notify`` per message (payload = the message);
* ``packed``: messages packed into notifications of up to 7,800 bytes,
  messages larger than that split over several (what tidings/broker/postgres.py does);
* ``reference``: the message bodies inserted into an UNLOGGED table, only
  their ids notified, every listener reading the bodies back.

Prints messages per second delivered to every listener, for message sizes
200 B (a personal event), 2 kB and 12 kB (near the 16 kB notification cap).
The numbers decide the design (docs/deploy.md).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import time

import asyncpg

BATCH = 100
CHUNK = 7800
CHANNEL = "bench_pgnotify"


async def _listeners(url: str, n: int, on_payload):
    conns = []
    for i in range(n):
        conn = await asyncpg.connect(url)
        await conn.add_listener(CHANNEL, lambda c, pid, ch, p, i=i: on_payload(i, c, p))
        conns.append(conn)
    return conns


async def run(url: str, mode: str, messages: int, size: int, listeners: int) -> float:
    body = base64.b64encode(b"x" * (size * 3 // 4))  # text, as the broker sends
    got = [0] * listeners
    done = asyncio.Event()
    fetches: list[asyncio.Task] = []
    # each node reads the bodies back over its own connections
    readers = [await asyncpg.create_pool(url, min_size=4, max_size=4) for _ in range(listeners)] \
        if mode == "reference" else []

    def count(i: int, n: int) -> None:
        got[i] += n
        if all(g >= messages for g in got):
            done.set()

    def on_payload(i, conn, payload: str) -> None:
        if mode == "one":
            count(i, 1)
        elif mode == "packed":
            count(i, int(payload.split(":", 2)[1]))
        else:
            ids = [int(x) for x in payload.split(",")]

            async def fetch() -> None:
                rows = await readers[i].fetch(
                    "SELECT body FROM bench_pgnotify_ref WHERE id = ANY($1::bigint[])", ids)
                count(i, len(rows))

            fetches.append(asyncio.get_running_loop().create_task(fetch()))

    conns = await _listeners(url, listeners, on_payload)
    pub = await asyncpg.connect(url, server_settings={"synchronous_commit": "off"})
    if mode == "reference":
        await pub.execute("CREATE UNLOGGED TABLE IF NOT EXISTS bench_pgnotify_ref "
                          "(id bigserial PRIMARY KEY, body text NOT NULL)")
        await pub.execute("TRUNCATE bench_pgnotify_ref")
    text = body.decode()
    start = time.perf_counter()
    for first in range(0, messages, BATCH):
        n = min(BATCH, messages - first)
        if mode == "one":
            await pub.execute(f"SELECT pg_notify('{CHANNEL}', p) FROM unnest($1::text[]) p",
                              [f"{first + k}:{text}" for k in range(n)])
        elif mode == "packed":
            payloads, current, count_in = [], [], 0
            for _ in range(n):
                if current and sum(map(len, current)) + len(text) > CHUNK:
                    payloads.append(f"{len(payloads)}:{count_in}:" + "".join(current))
                    current, count_in = [], 0
                if len(text) > CHUNK:  # split: counted on its last part
                    parts = [text[i:i + CHUNK] for i in range(0, len(text), CHUNK)]
                    # (a unique prefix: PostgreSQL folds equal payloads of one transaction)
                    payloads += [f"{len(payloads) + k}:0:{p}" for k, p in enumerate(parts[:-1])]
                    payloads.append(f"{len(payloads)}:1:{parts[-1]}")
                    continue
                current.append(text)
                count_in += 1
            if current:
                payloads.append(f"{len(payloads)}:{count_in}:" + "".join(current))
            await pub.execute(f"SELECT pg_notify('{CHANNEL}', p) FROM unnest($1::text[]) p",
                              payloads)
        else:
            await pub.execute(
                "WITH ins AS (INSERT INTO bench_pgnotify_ref (body) SELECT unnest($1::text[]) "
                f"RETURNING id) SELECT pg_notify('{CHANNEL}', string_agg(id::text, ',')) "
                "FROM ins", [text] * n)
    await asyncio.wait_for(done.wait(), 300)
    elapsed = time.perf_counter() - start
    await asyncio.gather(*fetches)
    if mode == "reference":
        await pub.execute("DROP TABLE bench_pgnotify_ref")
    for c in (*conns, *readers, pub):
        await c.close()
    return messages / elapsed


async def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.pgnotify", description=__doc__)
    ap.add_argument("--store", default="postgresql://postgres@127.0.0.1:5432/test")
    ap.add_argument("--messages", type=int, default=20000)
    ap.add_argument("--listeners", type=int, default=2)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    print(f"messages/s delivered to each of {args.listeners} listeners "
          f"(median of {args.runs} runs)")
    for size in (200, 2000, 12000):
        row = []
        for mode in ("one", "packed", "reference"):
            if mode == "one" and size > CHUNK:
                row.append(f"{mode}: n/a (over 8000 B)")
                continue
            rates = sorted([await run(args.store, mode, args.messages, size, args.listeners)
                            for _ in range(args.runs)])
            row.append(f"{mode}: {rates[len(rates) // 2]:,.0f}")
        print(f"{size:>6} B  " + "  ".join(row))


if __name__ == "__main__":
    asyncio.run(main())
