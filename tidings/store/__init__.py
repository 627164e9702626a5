"""Durable state behind one contract (base.py); SQLite is the embedded default."""

from __future__ import annotations

from tidings.store.base import Store


def open_store(url: str | None, sqlite_path) -> Store:
    """The store for ``--store URL`` (None: the embedded SQLite file)."""
    if url is None or url.startswith("sqlite:"):
        from tidings.store.sqlite import SQLiteStore

        return SQLiteStore(sqlite_path)
    raise ValueError(f"unsupported store URL {url!r}: this build has sqlite:///PATH")
