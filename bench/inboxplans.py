"""The inbox page and counts queries on a loaded PostgreSQL set, one at a time.

    python -m bench.inboxplans --schema bench_inbox_1000000x20_v9 [--rev REV] [--n 300]

``bench inbox`` measures through the server; this measures what the database
does for one request, which the machine's CPU contention hardly moves: for
``--n`` random users of the set (bench/inboxpg.py), ``EXPLAIN (ANALYZE,
BUFFERS)`` of the store's page query (``?limit=20``, newest first) and of its
counts query, as the code of ``--rev`` has them (default: this tree).
Prints, per query, the median shared buffers touched, those not found in
shared_buffers (read from the OS page cache or the disk), and the execution
time p50/p99.  Pass the set that ``--rev``'s schema loaded: main's SQL on a
v8 set, this tree's on a v9 one.
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


def _counts_sql(rev: str | None) -> str:
    """The statement PostgresStore.counts sends (at ``rev``): the first string
    passed to ``self._fetchrow`` in it."""
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
                    return ast.literal_eval(call.args[0])
    raise SystemExit("no counts statement found in tidings/store/postgres/store.py")


async def measure(url: str, schema: str, rev: str | None, n: int, seed: int) -> dict:
    sql = _sql_module(rev)
    queries = {"page": (sql.INBOX[None, False], lambda u: ("bench", u, time.time(), 20)),
               "counts": (_counts_sql(rev), lambda u: ("bench", u, time.time()))}
    conn = await asyncpg.connect(url, server_settings={"search_path": schema})
    users = await conn.fetchval("SELECT count(*) FROM streams")
    rng = random.Random(seed)
    out: dict = {"schema": schema, "rev": rev or "this tree", "n": n}
    try:
        for name, (query, args) in queries.items():
            touched, read, ms = [], [], []
            for _ in range(n):
                user = f"u{rng.randrange(users):07d}"
                doc = json.loads(await conn.fetchval(
                    "EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) " + query, *args(user)))[0]
                plan = doc["Plan"]
                touched.append(plan["Shared Hit Blocks"] + plan["Shared Read Blocks"])
                read.append(plan["Shared Read Blocks"])
                ms.append(doc["Execution Time"])
            ms.sort()
            out[name] = {"buffers": statistics.median(touched),
                         "not_in_shared_buffers": statistics.median(read),
                         "exec_p50_ms": round(statistics.median(ms), 3),
                         "exec_p99_ms": round(ms[min(int(n * 0.99), n - 1)], 3)}
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
