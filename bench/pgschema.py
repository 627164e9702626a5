"""A throwaway PostgreSQL schema for one benchmark run.

Scenarios that run the server on PostgreSQL (``--store postgresql://...``)
give each run a fresh, migrated schema, selected with ``?search_path=`` in
the store URL, and drop it afterwards so runs never see each other's rows.
The schema is migrated by the ``tidings`` that will serve it (the ``--code``
revision's, bench/server.py), so an older revision is measured on its own
schema rather than refused for a newer one.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import subprocess
from collections.abc import Iterator

import asyncpg

from bench.server import code_env, tidings_cmd


async def _create(url: str, name: str) -> None:
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(f"DROP SCHEMA IF EXISTS {name} CASCADE")
        await conn.execute(f"CREATE SCHEMA {name}")
    finally:
        await conn.close()
    subprocess.run([*tidings_cmd(), "migrate", "--store", f"{url}?search_path={name}"],
                   check=True, capture_output=True, timeout=120, env=code_env())


async def _drop(url: str, name: str) -> None:
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(f"DROP SCHEMA IF EXISTS {name} CASCADE")
    finally:
        await conn.close()


@contextlib.contextmanager
def fresh_schema(url: str, prefix: str) -> Iterator[str]:
    """Yield the store URL of a new migrated schema ``<prefix>_<random>``."""
    name = f"{prefix}_{secrets.token_hex(4)}"
    asyncio.run(_create(url, name))
    try:
        yield f"{url}?search_path={name}"
    finally:
        asyncio.run(_drop(url, name))


@contextlib.contextmanager
def maybe_fresh_schema(url: str | None, prefix: str) -> Iterator[str | None]:
    """``fresh_schema`` for a PostgreSQL URL; None (the embedded SQLite) as is."""
    if not url:
        yield None
        return
    with fresh_schema(url, prefix) as store:
        yield store
