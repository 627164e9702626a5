"""A throwaway PostgreSQL schema per test (used by the store and service fixtures)."""

from __future__ import annotations

import contextlib
import secrets

import asyncpg

from tidings.store.postgres import migrate


@contextlib.asynccontextmanager
async def fresh_schema(url: str, *, migrated: bool = True):
    """Create schema ``t_<random>``, migrate it unless told not to, and yield
    the asyncpg ``server_settings`` that put a connection in it; drop it after.

    Every table the store creates lands in the first schema of the
    ``search_path``, so tests running at the same time never share a row.
    """
    schema = "t_" + secrets.token_hex(6)
    settings = {"search_path": schema}
    admin = await asyncpg.connect(url)
    try:
        await admin.execute(f"CREATE SCHEMA {schema}")
        if migrated:
            await migrate(url, server_settings=settings)
        yield settings
    finally:
        await admin.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        await admin.close()
