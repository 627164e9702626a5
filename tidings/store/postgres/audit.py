"""The PostgreSQL store's audit log (contract: tidings/store/audit.py;
schema: sql/postgres_021.sql).  ``insert_audit`` runs on the connection of a
transaction: the methods of the changes recorded with them call it there."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from asyncpg import PostgresError

from tidings.core.audit import AuditEntry
from tidings.core.ids import id_floor
from tidings.store.audit import audit_row, entry_of, refused
from tidings.store.postgres.errors import CANNOT_WRITE, DOWN, RETRY

__all__ = ["PostgresAudit", "insert_audit"]

_COLUMNS = "app_id, id, at, actor, address, action, target, details"


async def insert_audit(conn: Any, entry: AuditEntry | None) -> None:
    if entry is None:
        return
    try:
        await conn.execute(f"INSERT INTO audit_log ({_COLUMNS}) "
                           "VALUES ($1, $2, $3, $4, $5, $6, $7, $8)", *audit_row(entry))
    except PostgresError as exc:
        if isinstance(exc, (*DOWN, *CANNOT_WRITE, *RETRY)):  # the store's own 503 or retry
            raise
        raise refused(entry, exc) from exc


class PostgresAudit:
    # Provided by PostgresStore.
    _call: Callable[..., Awaitable[Any]]
    _fetch: Callable[..., Awaitable[list]]
    _execute: Callable[..., Awaitable[str]]

    async def add_audit(self, entry: AuditEntry) -> None:
        await self._call(insert_audit, entry)

    async def audit_log(self, app_id, *, limit, before=None, action=None,
                        since=None) -> list[AuditEntry]:
        where, args = ["app_id = $1"], [app_id]
        if before is not None:
            args.append(before)
            where.append(f"id < ${len(args)}")
        if action is not None:
            args.append(action)
            where.append(f"action = ${len(args)}")
        if since is not None:  # the id first: the primary key's range
            args += [id_floor(int(since * 1000)), since]
            where += [f"id >= ${len(args) - 1}", f"at >= ${len(args)}"]
        args.append(limit)
        rows = await self._fetch(f"SELECT {_COLUMNS} FROM audit_log WHERE "
                                 f"{' AND '.join(where)} ORDER BY id DESC LIMIT ${len(args)}",
                                 *args)
        return [entry_of(row) for row in rows]

    async def prune_audit(self, older_than: float) -> int:
        status = await self._execute("DELETE FROM audit_log WHERE at < $1", older_than)
        return int(status.split()[-1])  # "DELETE <n>"
