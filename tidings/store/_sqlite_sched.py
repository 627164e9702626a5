"""The SQLite store's scheduled notifications and delivery counters.

Functions named ``*_tx`` run on the store's writer thread inside its group
commit (sqlite.py); the others are reads on the event loop's connection.
One writer is what makes a scheduled notification fire once on SQLite: the
claim, the publish and the status change are one transaction of the only
connection that writes, and several processes sharing the file queue on
SQLite's write lock (``BEGIN IMMEDIATE``).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping

__all__ = ["delivery_counts", "record_deliveries_tx"]


def record_deliveries_tx(
    conn: sqlite3.Connection, counts: Mapping[tuple[str, str, str, str], int]
) -> None:
    conn.executemany(
        "INSERT INTO delivery_counts(app_id, nid, channel, field, n) VALUES (?,?,?,?,?) "
        "ON CONFLICT(app_id, nid, channel, field) DO UPDATE SET n = n + excluded.n",
        [(*key, n) for key, n in counts.items() if n],
    )


def delivery_counts(conn: sqlite3.Connection, app_id: str, nid: str) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {}
    for channel, field, n in conn.execute(
        "SELECT channel, field, n FROM delivery_counts WHERE app_id=? AND nid=? "
        "ORDER BY channel, field", (app_id, nid),
    ):
        out.setdefault(channel, {})[field] = n
    return out
