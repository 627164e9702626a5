"""The disk's floor of ``bench latency``: durable commits at the publish rate.

A 2xx from tidings means the notification is committed and would survive a
power loss (docs/design.md §2.1), so no publish reaches a device sooner than
this machine's disk can make a commit durable.  This process does only that:
on the same open-loop schedule as the publisher (``--rate`` a second), it
commits one row per notification due, with SQLite in WAL mode and
``synchronous=FULL`` as tidings' SQLite store runs, grouping the rows that came
due while the previous commit was in flight into one transaction (as the
store's writer does) and checkpointing between groups at most every 0.2 s.
Each row's latency runs from its intended time to the end of its commit.

Run pinned like the server, in a fresh folder of the same file system as the
server's data (the system's temporary folder); it prints one JSON object:
the commit latency's p50 / p99 / max in ms and the process's CPU per row.
``bench latency`` runs it after each single-node SQLite run: where the disk
alone misses a latency target, so does any durable service on this machine.

Run as ``python -m bench.diskfloor --rate 1000 --duration 10``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sqlite3
import tempfile
import time

CHECKPOINT_INTERVAL = 0.2  # as tidings' writer (tidings/store/sqlite/store.py)


def measure(rate: float, duration: float, size: int, warmup: float = 1.0) -> dict:
    folder = tempfile.mkdtemp(prefix="tidings-diskfloor-")
    try:
        conn = sqlite3.connect(os.path.join(folder, "floor.db"), isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA wal_autocheckpoint=0")
        conn.execute("CREATE TABLE inbox(id INTEGER PRIMARY KEY, user TEXT, body BLOB)")
        conn.execute("CREATE INDEX inbox_user ON inbox(user, id)")
        body = os.urandom(size)
        return _run(conn, rate, duration, warmup, body)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _run(conn: sqlite3.Connection, rate: float, duration: float, warmup: float,
         body: bytes) -> dict:
    interval = 1.0 / rate
    start = time.monotonic() + 0.1
    measured_from = start + warmup
    total = int((warmup + duration) * rate)
    latencies: list[float] = []
    done = 0
    next_checkpoint = 0.0
    cpu0 = time.process_time()
    counted = 0
    while done < total:
        now = time.monotonic()
        due = min(math.floor((now - start) / interval) + 1, total) - done
        if due <= 0:
            time.sleep(max(start + done * interval - now, 0.0))
            continue
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany("INSERT INTO inbox(user, body) VALUES(?, ?)",
                         [(f"u{(done + k) % 2000:06d}", body) for k in range(due)])
        conn.execute("COMMIT")
        end = time.monotonic()
        for k in range(done, done + due):
            intended = start + k * interval
            if intended >= measured_from:
                latencies.append(end - intended)
                counted += 1
        done += due
        if end >= next_checkpoint:
            next_checkpoint = end + CHECKPOINT_INTERVAL
            conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
    cpu = time.process_time() - cpu0
    latencies.sort()
    n = len(latencies)

    def ms(q: float) -> float:
        return round(latencies[min(int(n * q), n - 1)] * 1000, 3) if n else 0.0

    return {"disk_floor_p50_ms": ms(0.5), "disk_floor_p99_ms": ms(0.99),
            "disk_floor_max_ms": round(latencies[-1] * 1000, 3) if n else 0.0,
            "disk_floor_cpu_us_per_row": round(cpu / max(total, 1) * 1e6, 2),
            "disk_floor_rows": counted}


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.diskfloor", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=float, default=1000.0, help="rows per second")
    parser.add_argument("--duration", type=float, default=10.0, help="measured seconds")
    parser.add_argument("--warmup", type=float, default=1.0, help="seconds before measuring")
    parser.add_argument("--size", type=int, default=100, help="bytes of each row's body")
    opts = parser.parse_args()
    print(json.dumps(measure(opts.rate, opts.duration, opts.size, opts.warmup)))


if __name__ == "__main__":
    main()
