"""The SQLite store's audit log (contract: tidings/store/audit.py; schema:
sql/sqlite_021.sql).  ``insert_audit`` runs inside a writer's transaction:
the methods of the changes recorded with them call it there."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable

from tidings.core.audit import AuditEntry
from tidings.core.ids import id_floor
from tidings.store.audit import audit_row, entry_of, refused
from tidings.store.sqlite.errors import transient

__all__ = ["SQLiteAudit", "insert_audit"]

_COLUMNS = "app_id, id, at, actor, address, action, target, details"


def insert_audit(conn, entry: AuditEntry | None) -> None:
    if entry is None:
        return
    try:
        conn.execute(f"INSERT INTO audit_log({_COLUMNS}) VALUES (?,?,?,?,?,?,?,?)",
                     audit_row(entry))
    except sqlite3.Error as exc:
        if transient(exc):  # the file or its lock: the writer's own 503
            raise
        raise refused(entry, exc) from exc


class SQLiteAudit:
    # Provided by SQLiteStore: _write (the writer thread), _q (reads).
    _write: Callable[..., asyncio.Future]
    _q: Callable[..., list]

    async def add_audit(self, entry: AuditEntry) -> None:
        await self._write(insert_audit, entry)

    async def audit_log(self, app_id, *, limit, before=None, action=None,
                        since=None) -> list[AuditEntry]:
        where, args = ["app_id=?"], [app_id]
        if before is not None:
            where.append("id<?")
            args.append(before)
        if action is not None:
            where.append("action=?")
            args.append(action)
        if since is not None:  # the id first: the primary key's range
            where += ["id>=?", "at>=?"]
            args += [id_floor(int(since * 1000)), since]
        rows = self._q(f"SELECT {_COLUMNS} FROM audit_log WHERE {' AND '.join(where)} "
                       "ORDER BY id DESC LIMIT ?", (*args, limit))
        return [entry_of(row) for row in rows]

    async def prune_audit(self, older_than: float) -> int:
        def prune(conn):
            return conn.execute("DELETE FROM audit_log WHERE at<?", (older_than,)).rowcount

        return await self._write(prune)
