"""The inbox page and counts queries on a loaded PostgreSQL set, one at a time.

    python -m bench.inboxplans --schema bench_inbox_1000000x20_v9 [--rev REV] [--n 300]

``bench inbox`` measures through the server; this measures what the database
does for one request, which the machine's CPU contention hardly moves: for
``--n`` random users of the set (bench/inboxpg.py), ``EXPLAIN (ANALYZE,
BUFFERS)`` of the store's page query (``?limit=20``, newest first) and of its
counts query, as the code of ``--rev`` has them (default: this tree).
The page is the statement the server sends for a user with no stream open on
the node (the mutes read by the statement, ``INBOX_STORED_MUTES``, where the
revision has it), the counts the one ``PostgresStore.counts`` sends first.
Prints, per query, the median shared buffers touched, those not found in
shared_buffers (read from the OS page cache or the disk), the planning and
execution times p50/p99, then the wall time p50/p99 of the same users'
statements through one prepared statement, as the store sends them (the round
trip included), and how many of those executions ran PostgreSQL's generic plan
and how many a custom one, planned for the call (``plan_cache_mode`` auto
keeps the generic plan after five custom ones when it is not dearer; the
planning columns above are a custom plan's).  Pass a set whose
schema has the columns ``--rev``'s SQL reads: main's SQL on a set of main's
version, or an older revision's on a newer one (migrations only add).
"""

from __future__ import annotations

import argparse
import ast
import asyncio
import importlib.util
import json
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import asyncpg


def _sql_module(rev: str | None):
    """tidings.store.postgres.sql of ``rev`` (None: this tree's)."""
    if rev is None:
        from tidings.store.postgres import sql
        return sql
    text = subprocess.run(["git", "show", f"{rev}:tidings/store/postgres/sql.py"], check=True,
                          capture_output=True, text=True).stdout
    path = Path(tempfile.mkdtemp()) / "sql.py"
    path.write_text(text)
    spec = importlib.util.spec_from_file_location("rev_sql", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _counts_sql(rev: str | None, sql) -> str:
    """The statement PostgresStore.counts sends (at ``rev``): the first
    statement passed to ``self._fetchrow`` in it, a string or the name of one
    of ``sql``'s (the store's statements are composed there)."""
    if rev is None:
        source = Path(__file__).parent.parent.joinpath(
            "tidings/store/postgres/store.py").read_text()
    else:
        source = subprocess.run(
            ["git", "show", f"{rev}:tidings/store/postgres/store.py"], check=True,
            capture_output=True, text=True).stdout
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.AsyncFunctionDef) and node.name == "counts":
            for call in ast.walk(node):
                if (isinstance(call, ast.Call) and isinstance(call.func, ast.Attribute)
                        and call.func.attr == "_fetchrow"):
                    arg = call.args[0]
                    if isinstance(arg, ast.Name):
                        return getattr(sql, arg.id)
                    return ast.literal_eval(arg)
    raise SystemExit("no counts statement found in tidings/store/postgres/store.py")


async def measure(url: str, schema: str, rev: str | None, n: int, seed: int) -> dict:
    sql = _sql_module(rev)
    page = getattr(sql, "INBOX_STORED_MUTES", sql.INBOX)[None, False]
    queries = {"page": (page, lambda u: ("bench", u, time.time(), 20)),
               "counts": (_counts_sql(rev, sql), lambda u: ("bench", u, time.time()))}
    conn = await asyncpg.connect(url, server_settings={"search_path": schema})
    users = await conn.fetchval("SELECT count(*) FROM streams")
    rng = random.Random(seed)
    out: dict = {"schema": schema, "rev": rev or "this tree", "n": n}
    try:
        for name, (query, args) in queries.items():
            touched, read, ms, plan_ms = [], [], [], []
            chosen = [f"u{rng.randrange(users):07d}" for _ in range(n)]
            for user in chosen:
                doc = json.loads(await conn.fetchval(
                    "EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) " + query, *args(user)))[0]
                plan = doc["Plan"]
                touched.append(plan["Shared Hit Blocks"] + plan["Shared Read Blocks"])
                read.append(plan["Shared Read Blocks"])
                ms.append(doc["Execution Time"])
                plan_ms.append(doc["Planning Time"])
            ms.sort()
            plan_ms.sort()
            # then the same users' statements as the store sends them: one
            # prepared statement (the plan cache's generic plan after five),
            # timed from here, round trip included
            stmt = await conn.prepare(query)
            wall = []
            for user in chosen:
                t0 = time.perf_counter()
                await stmt.fetch(*args(user))
                wall.append((time.perf_counter() - t0) * 1e6)
            wall.sort()
            # which plans the plan cache ran them with: the store's pooled
            # connections keep their prepared statements too
            plans = await conn.fetchrow(
                "SELECT generic_plans, custom_plans FROM pg_prepared_statements "
                "WHERE name = $1", stmt.get_name())
            out[name] = {"buffers": statistics.median(touched),
                         "not_in_shared_buffers": statistics.median(read),
                         "exec_p50_ms": round(statistics.median(ms), 3),
                         "exec_p99_ms": round(ms[min(int(n * 0.99), n - 1)], 3),
                         "plan_p50_ms": round(statistics.median(plan_ms), 3),
                         "plan_p99_ms": round(plan_ms[min(int(n * 0.99), n - 1)], 3),
                         "prepared_p50_us": round(statistics.median(wall)),
                         "prepared_p99_us": round(wall[min(int(n * 0.99), n - 1)]),
                         "prepared_generic_plans": plans["generic_plans"],
                         "prepared_custom_plans": plans["custom_plans"]}
    finally:
        await conn.close()
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.inboxplans",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--url", default="postgresql://postgres@127.0.0.1:5432/test")
    p.add_argument("--schema", required=True, help="a set loaded by bench inbox --store")
    p.add_argument("--rev", default=None, help="the queries of this git revision")
    p.add_argument("--n", type=int, default=300, help="random users")
    p.add_argument("--seed", type=int, default=1)
    a = p.parse_args(argv)
    print(json.dumps(asyncio.run(measure(a.url, a.schema, a.rev, a.n, a.seed))))


if __name__ == "__main__":
    sys.exit(main())
