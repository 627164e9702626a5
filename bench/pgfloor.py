"""The database's own ceiling for durable publishes: tidings' statements under pgbench.

    python -m bench.pgfloor [--store postgresql://...] [--clients 16] [--group 16] [--seconds 10]

Runs the PostgreSQL store's own publish statements (tidings/store/postgres/sql.py)
with ``pgbench``, no tidings process and no HTTP in the way, in a fresh
schema, each transaction one committed statement as the store runs it:

* ``single``: ``FANOUT_USERS``, one notification to one user per statement,
  ``--clients`` sessions (what each publish cost before group commit);
* ``grouped``: ``PUBLISH_MANY``, ``--group`` notifications to one user each
  per statement, ``--clients // --group`` sessions (the same number of
  publishes in flight, gathered as the committer does);
* ``store``: tidings' own ``PostgresStore.publish`` from ``--clients``
  coroutines in this process (group commit, no HTTP), with this process's
  CPU and its backends' CPU per publish.

Recipients are drawn from 1,000 users as in ``python -m bench publish``.
Prints publishes/s, the statement latency, and the WAL flushes (fsyncs) per
second and publishes per flush from ``pg_stat_wal`` (the whole server's:
other sessions' commits count too).  A durable commit waits for its WAL
flush, so with P publishes in flight the rate is at most P / the flush time;
``pg_test_fsync`` shows what one flush costs on the disk.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import secrets
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit

import asyncpg
import psutil

from tidings.core.ids import new_id
from tidings.store.base import NewNotification
from tidings.store.postgres import PostgresStore, migrate
from tidings.store.postgres.sql import FANOUT_USERS, PUBLISH_MANY

USERS = 1000
_ID = "md5(random()::text || clock_timestamp()::text)"
_NOW = "extract(epoch FROM clock_timestamp())"
_USER = f"'u' || lpad((random() * {USERS - 1})::int::text, 6, '0')"
_BODY = "convert_to(repeat('x', 150), 'UTF8')"


def _bind(sql: str, args: dict[int, str]) -> str:
    """``sql`` with each ``$n`` replaced by the SQL expression ``args[n]``."""
    return re.sub(r"\$(\d+)", lambda m: f"({args[int(m.group(1))]})", sql)


def single_script() -> str:
    return _bind(FANOUT_USERS, {
        1: "'app'", 2: _ID, 3: "'default'", 4: _BODY, 5: _NOW, 6: "NULL::float8",
        7: f"ARRAY[{_USER}]",
    }) + ";\n"


def grouped_script(group: int) -> str:
    def each(expr: str, typ: str) -> str:
        return f"ARRAY(SELECT ({expr})::{typ} FROM generate_series(1, {group}))"

    return _bind(PUBLISH_MANY, {
        1: "'app'", 2: "86400", 3: each(_ID, "text"), 4: each("'default'", "text"),
        5: each(_BODY, "bytea"), 6: each(_NOW, "float8"), 7: each("NULL", "float8"),
        8: each("NULL", "text"), 9: each("''", "text"),
        10: f"ARRAY(SELECT generate_series(1, {group}))", 11: each(_USER, "text"),
    }) + ";\n"


async def _schema(url: str, name: str, drop: bool = False) -> None:
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(f"DROP SCHEMA IF EXISTS {name} CASCADE")
        if not drop:
            await conn.execute(f"CREATE SCHEMA {name}")
    finally:
        await conn.close()
    if not drop:
        await migrate(url, server_settings={"search_path": name})


async def _wal_syncs(url: str) -> int:
    conn = await asyncpg.connect(url)
    try:
        return await conn.fetchval("SELECT wal_sync FROM pg_stat_wal")
    finally:
        await conn.close()


def pgbench_path() -> str | None:
    """pgbench from PATH or from Debian's PostgreSQL server package."""
    found = shutil.which("pgbench")
    if found:
        return found
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin/pgbench"), reverse=True)
    return str(versions[0]) if versions else None


def pgbench(url: str, schema: str, script: str, clients: int, seconds: int) -> dict:
    exe = pgbench_path()
    if exe is None:
        raise SystemExit("pgbench is not installed (Debian: the postgresql package)")
    parts = urlsplit(url)
    env = {**os.environ, "PGOPTIONS": f"-c search_path={schema}"}
    with tempfile.NamedTemporaryFile("w", suffix=".sql", delete=False) as f:
        f.write(script)
    try:
        cmd = [exe, "-n", "-M", "prepared", "-f", f.name, "-c", str(clients),
               "-j", str(min(clients, 2)), "-T", str(seconds),
               "-h", parts.hostname or "127.0.0.1", "-p", str(parts.port or 5432),
               "-U", parts.username or "postgres", (parts.path or "/postgres").lstrip("/")]
        out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout
    finally:
        os.unlink(f.name)
    tps = float(re.search(r"tps = ([\d.]+)", out).group(1))  # type: ignore[union-attr]
    lat = float(re.search(r"latency average = ([\d.]+) ms", out).group(1))  # type: ignore[union-attr]
    return {"tps": tps, "latency_ms": lat}


async def store_publishes(url: str, schema: str, clients: int, seconds: float) -> dict:
    """``clients`` coroutines publishing through one PostgresStore for ``seconds``."""
    name = "bench-pgfloor-" + secrets.token_hex(4)
    store = PostgresStore(url, server_settings={"search_path": schema, "application_name": name})
    await store.open()
    admin = await asyncpg.connect(url)
    try:
        await store.create_app("app", "app", "secret")
        done, deadline = 0, 0.0
        loop = asyncio.get_running_loop()

        async def publisher(i: int) -> None:
            nonlocal done
            while loop.time() < deadline:
                item = NewNotification(id=new_id(), category="default", body=b"x" * 150,
                                       created_at=time.time(), expires_at=None,
                                       users=[f"u{(done * clients + i) % USERS:06d}"])
                await store.publish("app", item, fanout_threshold=100, window=86400)
                done += 1

        deadline = loop.time() + 1  # warm-up: the pool's sessions and plans
        await asyncio.gather(*(publisher(i) for i in range(clients)))
        pids = [r[0] for r in await admin.fetch(
            "SELECT pid FROM pg_stat_activity WHERE application_name = $1", name)]

        def backends_cpu() -> float:
            return sum(sum(psutil.Process(p).cpu_times()[:2]) for p in pids)

        done, own0, pg0, t0 = 0, time.process_time(), backends_cpu(), time.monotonic()
        deadline = loop.time() + seconds
        await asyncio.gather(*(publisher(i) for i in range(clients)))
        wall = time.monotonic() - t0
        own, pg = time.process_time() - own0, backends_cpu() - pg0
    finally:
        await admin.close()
        await store.close()
    return {"publishes_per_s": round(done / wall), "node_cpu_us": round(own / done * 1e6, 1),
            "pg_cpu_us": round(pg / done * 1e6, 1),
            "per_statement": round(store.committer.items / max(store.committer.groups, 1), 1)}


def run(url: str, clients: int, group: int, seconds: int) -> list[dict]:
    rows = []
    for mode, script, sessions, per_tx in (
        ("single", single_script(), clients, 1),
        ("grouped", grouped_script(group), max(clients // group, 1), group),
    ):
        schema = "bench_pgfloor_" + secrets.token_hex(4)
        asyncio.run(_schema(url, schema))
        try:
            syncs0 = asyncio.run(_wal_syncs(url))
            res = pgbench(url, schema, script, sessions, seconds)
            syncs = asyncio.run(_wal_syncs(url)) - syncs0
        finally:
            asyncio.run(_schema(url, schema, drop=True))
        per_s = res["tps"] * per_tx
        rows.append({"mode": mode, "sessions": sessions, "per_statement": per_tx,
                     "publishes_per_s": round(per_s), "statement_ms": res["latency_ms"],
                     "wal_flushes_per_s": round(syncs / seconds),
                     "publishes_per_flush": round(per_s * seconds / max(syncs, 1), 1)})
    schema = "bench_pgfloor_" + secrets.token_hex(4)
    asyncio.run(_schema(url, schema))
    try:
        got = asyncio.run(store_publishes(url, schema, clients, seconds))
    finally:
        asyncio.run(_schema(url, schema, drop=True))
    rows.append({"mode": "store", "sessions": clients, **got})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.pgfloor", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--store", default="postgresql://postgres@127.0.0.1:5432/test")
    ap.add_argument("--clients", type=int, default=16, help="publishes in flight")
    ap.add_argument("--group", type=int, default=16, help="publishes per grouped statement")
    ap.add_argument("--seconds", type=int, default=10)
    a = ap.parse_args()
    for row in run(a.store, a.clients, a.group, a.seconds):
        print(row, flush=True)


if __name__ == "__main__":
    main()
