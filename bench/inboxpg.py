"""The ``inbox`` data set in PostgreSQL (``python -m bench inbox --store postgresql://...``).

The same rows as bench/inboxdata.py, in a schema of their own
(``bench_inbox_<users>x<per_user>``, selected with ``?search_path=`` in the
store URL, which asyncpg passes on as a server setting), so that a shared
test database is not disturbed: ``tidings migrate`` and ``tidings app
create`` (the code under test) make the tables and the app, then COPY
(asyncpg ``copy_records_to_table``) writes the rows in primary-key order with
the secondary indexes dropped and rebuilt from their own definitions, and
ANALYZE gives the planner the statistics autovacuum would gather on a live
database.  Metadata (credentials, timings) is cached next to the SQLite sets.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from bench.inboxdata import MAX_AGE_S, Rows, default_cache_dir
from bench.progress import bar
from bench.server import APP_NAME, code_env, python_cmd, tidings_cmd


def schema_name(users: int, per_user: int) -> str:
    """One set per size and schema version of the code under test: a set
    loaded in one layout is not measured in another (v10 copies small bodies
    into the entries, which a migration does not do for existing rows)."""
    return f"bench_inbox_{users}x{per_user}_v{_code_schema()}"


def _code_schema() -> int:
    out = subprocess.run(
        [*python_cmd(), "-c", "from tidings.store import migrations; "
         "print(migrations.latest('postgres'))"],
        check=True, capture_output=True, text=True, timeout=60, env=code_env()).stdout
    return int(out.strip())


def with_schema(url: str, schema: str) -> str:
    parts = urlsplit(url)
    query = [(k, v) for k, v in parse_qsl(parts.query) if k != "search_path"]
    query.append(("search_path", schema))
    return urlunsplit(parts._replace(query=urlencode(query)))


def base_url(url: str) -> str:
    parts = urlsplit(url)
    query = [(k, v) for k, v in parse_qsl(parts.query) if k != "search_path"]
    return urlunsplit(parts._replace(query=urlencode(query)))


def dataset(url: str, users: int, per_user: int, cache_dir: Path | None = None,
            rebuild: bool = False) -> tuple[str, dict]:
    """(the store URL with the set's search_path, metadata)."""
    schema = schema_name(users, per_user)
    store_url = with_schema(base_url(url), schema)
    cache_dir = cache_dir or default_cache_dir()
    cache_dir.mkdir(parents=True, exist_ok=True)
    meta_path = cache_dir / f"pg-{schema}.json"
    if meta_path.exists() and not rebuild:
        meta = json.loads(meta_path.read_text())
        fresh = time.time() - meta["loaded_at"] < MAX_AGE_S
        if fresh and meta.get("url") == base_url(url) and asyncio.run(_has_app(store_url, meta)):
            _migrate(store_url)
            return store_url, meta
    meta = asyncio.run(_load(url, store_url, schema, users, per_user))
    meta_path.write_text(json.dumps(meta))
    return store_url, meta


def _migrate(store_url: str) -> None:
    subprocess.run([*tidings_cmd(), "migrate", "--store", store_url], check=True,
                   capture_output=True, timeout=1800, env=code_env())


async def _has_app(store_url: str, meta: dict) -> bool:
    import asyncpg

    try:
        conn = await asyncpg.connect(store_url)
    except (OSError, asyncpg.PostgresError):
        return False
    try:
        return bool(await conn.fetchval(
            "SELECT count(*) FROM apps WHERE id = $1", meta["credentials"]["app"]))
    except asyncpg.PostgresError:
        return False
    finally:
        await conn.close()


async def _load(url: str, store_url: str, schema: str, users: int, per_user: int) -> dict:
    import asyncpg

    t0 = time.monotonic()
    conn = await asyncpg.connect(base_url(url))
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        await conn.execute(f'CREATE SCHEMA "{schema}"')
    finally:
        await conn.close()
    _migrate(store_url)
    out = subprocess.run(
        [*tidings_cmd(), "app", "create", APP_NAME, "--json", "--store", store_url],
        check=True, capture_output=True, text=True, timeout=60, env=code_env()).stdout
    creds = json.loads(out.strip().splitlines()[-1])
    conn = await asyncpg.connect(store_url)
    try:
        counts = await _fill(conn, schema, creds["app"], users, per_user)
        size = await conn.fetchval(
            "SELECT sum(pg_total_relation_size(c.oid)) FROM pg_class c "
            "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = $1 "
            "AND c.relkind = 'r'", schema)
    finally:
        await conn.close()
    return {"credentials": {k: creds[k] for k in ("app", "api_key", "signing_secret")},
            "users": users, "per_user": per_user, "rows": counts, "url": base_url(url),
            "schema": schema, "load_s": round(time.monotonic() - t0, 1),
            "loaded_at": time.time(), "db_bytes": int(size or 0)}


async def _fill(conn, schema: str, app: str, users: int, per_user: int) -> dict:
    indexes = await conn.fetch(
        "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = $1 "
        "AND tablename IN ('notifications', 'inbox', 'streams') "
        "AND indexname NOT LIKE '%\\_pkey'", schema)
    for ix in indexes:
        await conn.execute(f'DROP INDEX "{schema}"."{ix["indexname"]}"')
    rows = Rows(app, users, per_user)
    with bar(rows.n, "notifications", unit="row") as progress:
        for chunk in rows.notifications():
            await conn.copy_records_to_table(
                "notifications", schema_name=schema,
                columns=["app_id", "id", "category", "body", "recipients", "created_at"],
                records=chunk)
            progress.update(len(chunk))
    # From schema v10 on an entry carries a copy of its (small) body, as the
    # store writes it (tidings/store/postgres/sql.py INLINE_BODY).
    columns = ["app_id", "user_id", "seq", "nid", "state", "created_at"]
    bodies = bool(await conn.fetchval(
        "SELECT count(*) FROM information_schema.columns WHERE table_schema = $1 "
        "AND table_name = 'inbox' AND column_name = 'body'", schema))
    with bar(rows.n, "inbox", unit="row") as progress:
        for chunk in rows.inbox(bodies=bodies):
            await conn.copy_records_to_table(
                "inbox", schema_name=schema, columns=columns + ["body"] * bodies,
                records=chunk)
            progress.update(len(chunk))
    await conn.execute(
        "INSERT INTO streams (app_id, user_id, epoch, head_seq) "
        "SELECT $1, user_id, substr(md5(user_id), 1, 8), max(seq) FROM inbox "
        "WHERE app_id = $1 GROUP BY user_id", app)
    with bar(len(indexes), "indexes", unit="index") as progress:
        for ix in indexes:
            await conn.execute(ix["indexdef"])
            progress.update(1)
    # autovacuum would gather these statistics, and mark the pages all-visible
    # (which index-only scans rely on), on a live database
    for table in ("notifications", "inbox", "streams"):
        await conn.execute(f'VACUUM (ANALYZE) "{schema}"."{table}"')
    await conn.execute("ANALYZE")  # the set's other (empty) tables, as before
    return {t: await conn.fetchval(f"SELECT count(*) FROM {t}")
            for t in ("notifications", "inbox", "streams")}


def table_counts(store_url: str) -> dict[str, int]:
    async def count() -> dict[str, int]:
        import asyncpg

        conn = await asyncpg.connect(store_url)
        try:
            schema = await conn.fetchval("SELECT current_schema()")
            tables = [r["tablename"] for r in await conn.fetch(
                "SELECT tablename FROM pg_tables WHERE schemaname = $1 ORDER BY tablename",
                schema)]
            return {t: await conn.fetchval(f'SELECT count(*) FROM "{t}"') for t in tables}
        finally:
            await conn.close()

    return asyncio.run(count())


def remove_feed_items(store_url: str) -> int:
    async def remove() -> int:
        import asyncpg

        conn = await asyncpg.connect(store_url)
        try:
            async with conn.transaction():
                status = await conn.execute(
                    "DELETE FROM notifications WHERE feed_offset IS NOT NULL")
                await conn.execute("DELETE FROM feed_heads")
                await conn.execute("DELETE FROM feed_state")
            return int(status.split()[-1])
        finally:
            await conn.close()

    return asyncio.run(remove())
