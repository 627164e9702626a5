"""Durable state behind one contract (base.py); SQLite is the embedded default."""

from __future__ import annotations

import asyncio

from tidings.store.base import Store

_POSTGRES = ("postgresql://", "postgres://")
_SUPPORTED = "this build has sqlite:///PATH and postgresql://USER@HOST:PORT/DB"


def open_store(url: str | None, sqlite_path) -> Store:
    """The store for ``--store URL`` (None: the embedded SQLite file)."""
    if url is None or url.startswith("sqlite:"):
        from tidings.store.sqlite import SQLiteStore

        return SQLiteStore(sqlite_path)
    if url.startswith(_POSTGRES):
        from tidings.store.postgres import PostgresStore

        return PostgresStore(url)
    raise ValueError(f"unsupported store URL {url!r}: {_SUPPORTED}")


async def migrate(url: str | None, sqlite_path) -> tuple[list[int], int]:
    """Apply the store's pending schema migrations (docs/operations.md).

    Returns ``(versions applied, version now)``."""
    from tidings.store import migrations

    if url is None or url.startswith("sqlite:"):
        from tidings.store import sqlite

        return await asyncio.to_thread(sqlite.migrate, sqlite_path), migrations.latest("sqlite")
    if url.startswith(_POSTGRES):
        from tidings.store import postgres

        return await postgres.migrate(url), migrations.latest("postgres")
    raise ValueError(f"unsupported store URL {url!r}: {_SUPPORTED}")
