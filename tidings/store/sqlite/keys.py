"""The SQLite store's API keys (contract: tidings/store/base.py; schema:
sql/sqlite_001.sql, _010 for names, _017 for expiry and last use).

Every write runs on the one writer thread inside ``BEGIN IMMEDIATE``, which
holds the file's write lock: no other process adds, rotates or revokes a key
of the app between the count (or the read of its admin keys) and the write,
so the limit and the app's last admin key hold across processes.
"""

from __future__ import annotations

import asyncio
import hmac
import time
from collections.abc import Callable, Iterable
from typing import Any

from tidings.store.base import (
    LIMIT_REACHED,
    NO_SUCH_KEY,
    REVOKED,
    KeyInfo,
    KeyRecord,
    Rotated,
)
from tidings.store.codec import revocation, scopes_of, scopes_text
from tidings.store.sqlite.audit import insert_audit

__all__ = ["SQLiteKeys"]

_INFO = "prefix, scopes, name, created_at, expires_at, last_used_at"


def _info(row: Any) -> KeyInfo:
    prefix, scopes, name, created_at, expires_at, last_used_at = row
    return KeyInfo(prefix, scopes_of(scopes), name, created_at, expires_at, last_used_at)


def _full(conn: Any, app_id: str, limit: int | None, now: float) -> bool:
    """The app has ``limit`` keys that have not expired at ``now`` (an
    expired one is listed until it is revoked or pruned, but takes no place)."""
    if limit is None:
        return False
    (n,) = conn.execute("SELECT count(*) FROM api_keys WHERE app_id=? "
                        "AND (expires_at IS NULL OR expires_at > ?)", (app_id, now)).fetchone()
    return n >= limit


class SQLiteKeys:
    # Provided by SQLiteStore: _write (the writer thread), _q and _q1 (reads).
    _write: Callable[..., asyncio.Future]
    _q: Callable[..., list]
    _q1: Callable[..., Any]

    async def add_api_key(self, app_id, prefix, key_hash, scopes, name=None, *,
                          limit=None, created_at=None, expires_at=None, audit=None) -> bool:
        now = time.time() if created_at is None else created_at

        def insert(conn):
            if _full(conn, app_id, limit, now):
                return False
            conn.execute(
                "INSERT INTO api_keys(prefix, app_id, hash, scopes, created_at, name, "
                "expires_at) VALUES (?,?,?,?,?,?,?)",
                (prefix, app_id, key_hash, scopes_text(scopes), now, name, expires_at),
            )
            insert_audit(conn, audit)
            return True

        return await self._write(insert)

    async def find_api_key(self, prefix: str, key_hash: str) -> KeyRecord | None:
        row = self._q1("SELECT app_id, hash, scopes, expires_at, name FROM api_keys "
                       "WHERE prefix=?", (prefix,))
        if not row or not hmac.compare_digest(row[1].encode(), key_hash.encode()):
            return None
        return KeyRecord(row[0], prefix, scopes_of(row[2]), row[3], row[4])

    async def list_api_keys(self, app_id: str) -> list[KeyInfo]:
        rows = self._q(f"SELECT {_INFO} FROM api_keys WHERE app_id=? "
                       "ORDER BY created_at, prefix", (app_id,))
        return [_info(row) for row in rows]

    async def revoke_api_key(self, app_id: str, prefix: str, *, audit=None) -> str:
        def revoke(conn):
            keys = conn.execute("SELECT prefix, scopes, expires_at FROM api_keys "
                                "WHERE app_id=?", (app_id,)).fetchall()
            outcome = revocation(keys, prefix)
            if outcome == REVOKED:
                conn.execute("DELETE FROM api_keys WHERE app_id=? AND prefix=?", (app_id, prefix))
                insert_audit(conn, audit)
            return outcome

        return await self._write(revoke)

    async def rotate_api_key(self, app_id, prefix, new_prefix, new_hash, *, expires_at,
                             limit=None, created_at=None, audit=None) -> Rotated | str:
        now = time.time() if created_at is None else created_at

        def rotate(conn):
            old = conn.execute("SELECT scopes, name FROM api_keys WHERE app_id=? AND prefix=?",
                               (app_id, prefix)).fetchone()
            if old is None:
                return NO_SUCH_KEY
            if _full(conn, app_id, limit, now):
                return LIMIT_REACHED
            conn.execute("INSERT INTO api_keys(prefix, app_id, hash, scopes, created_at, name) "
                         "VALUES (?,?,?,?,?,?)", (new_prefix, app_id, new_hash, old[0], now,
                                                  old[1]))
            # the sooner of the two: a rotation never lengthens a key's life
            conn.execute("UPDATE api_keys SET expires_at=min(coalesce(expires_at, ?), ?) "
                         "WHERE app_id=? AND prefix=?", (expires_at, expires_at, app_id, prefix))
            insert_audit(conn, audit)
            return Rotated(*(_info(conn.execute(
                f"SELECT {_INFO} FROM api_keys WHERE prefix=?", (p,)).fetchone())
                for p in (prefix, new_prefix)))

        return await self._write(rotate)

    async def drop_expired_api_keys(self, before: float, *, audit=None) -> int:
        def drop(conn):
            rows = conn.execute("DELETE FROM api_keys WHERE expires_at < ? "
                                "RETURNING app_id, prefix, expires_at", (before,)).fetchall()
            if audit is not None:
                for row in rows:
                    insert_audit(conn, audit(*row))
            return len(rows)

        return await self._write(drop)

    async def note_api_keys_used(self, used: Iterable[tuple[str, str, float]]) -> None:
        rows = [(at, at, app, prefix) for app, prefix, at in used]
        if not rows:
            return

        def note(conn):
            conn.executemany("UPDATE api_keys SET last_used_at=max(coalesce(last_used_at, ?), ?) "
                             "WHERE app_id=? AND prefix=?", rows)

        await self._write(note)
