"""The PostgreSQL store's API keys (contract: tidings/store/base.py; schema:
sql/postgres_001.sql, _011 for names, _017 for expiry and last use).

The app's row, locked ``FOR UPDATE``, serialises the writes that count an
app's keys (add, rotate) or read its admin keys (revoke): two at once on two
nodes cannot both pass the limit, nor each leave the other's key as the last
admin key and both go.
"""

from __future__ import annotations

import hmac
import time
from collections.abc import Awaitable, Callable, Iterable
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
from tidings.store.postgres.audit import insert_audit

__all__ = ["PostgresKeys"]

_INFO = "prefix, scopes, name, created_at, expires_at, last_used_at"

# One statement for every key noted: the later of the two times, so notes
# written by several nodes in any order never set a key's last use back.
_NOTE = """
UPDATE api_keys k SET last_used_at = GREATEST(k.last_used_at, u.at)
FROM unnest($1::text[], $2::text[], $3::float8[]) AS u(app_id, prefix, at)
WHERE k.app_id = u.app_id AND k.prefix = u.prefix
"""


def _info(row: Any) -> KeyInfo:
    prefix, scopes, name, created_at, expires_at, last_used_at = row
    return KeyInfo(prefix, scopes_of(scopes), name, created_at, expires_at, last_used_at)


async def _lock_app(conn: Any, app_id: str) -> None:
    await conn.execute("SELECT 1 FROM apps WHERE id = $1 FOR UPDATE", app_id)


async def _full(conn: Any, app_id: str, limit: int | None, now: float) -> bool:
    """The app has ``limit`` keys that have not expired at ``now`` (an
    expired one is listed until it is revoked or pruned, but takes no place)."""
    if limit is None:
        return False
    n = await conn.fetchval("SELECT count(*) FROM api_keys WHERE app_id = $1 "
                            "AND (expires_at IS NULL OR expires_at > $2)", app_id, now)
    return n >= limit


class PostgresKeys:
    # Provided by PostgresStore.
    _call: Callable[..., Awaitable[Any]]
    _fetch: Callable[..., Awaitable[list]]
    _fetchrow: Callable[..., Awaitable[Any]]
    _execute: Callable[..., Awaitable[str]]

    async def add_api_key(self, app_id, prefix, key_hash, scopes, name=None, *,
                          limit=None, created_at=None, expires_at=None, audit=None) -> bool:
        now = time.time() if created_at is None else created_at

        async def add(conn):
            if limit is not None:
                await _lock_app(conn, app_id)
                if await _full(conn, app_id, limit, now):
                    return False
            await conn.execute(
                "INSERT INTO api_keys (prefix, app_id, hash, scopes, created_at, name, "
                "expires_at) VALUES ($1, $2, $3, $4, $5, $6, $7)",
                prefix, app_id, key_hash, scopes_text(scopes), now, name, expires_at,
            )
            await insert_audit(conn, audit)
            return True

        return await self._call(add, tx=limit is not None or audit is not None)

    async def find_api_key(self, prefix: str, key_hash: str) -> KeyRecord | None:
        row = await self._fetchrow(
            "SELECT app_id, hash, scopes, expires_at, name FROM api_keys WHERE prefix = $1",
            prefix)
        if not row or not hmac.compare_digest(row[1].encode(), key_hash.encode()):
            return None
        return KeyRecord(row[0], prefix, scopes_of(row[2]), row[3], row[4])

    async def list_api_keys(self, app_id: str) -> list[KeyInfo]:
        rows = await self._fetch(
            f"SELECT {_INFO} FROM api_keys WHERE app_id = $1 ORDER BY created_at, prefix",
            app_id)
        return [_info(row) for row in rows]

    async def revoke_api_key(self, app_id: str, prefix: str, *, audit=None) -> str:
        async def revoke(conn):
            await _lock_app(conn, app_id)
            keys = await conn.fetch(
                "SELECT prefix, scopes, expires_at FROM api_keys WHERE app_id = $1", app_id)
            outcome = revocation([tuple(k) for k in keys], prefix)
            if outcome == REVOKED:
                await conn.execute("DELETE FROM api_keys WHERE app_id = $1 AND prefix = $2",
                                   app_id, prefix)
                await insert_audit(conn, audit)
            return outcome

        return await self._call(revoke, tx=True)

    async def rotate_api_key(self, app_id, prefix, new_prefix, new_hash, *, expires_at,
                             limit=None, created_at=None, audit=None) -> Rotated | str:
        now = time.time() if created_at is None else created_at

        async def rotate(conn):
            await _lock_app(conn, app_id)
            old = await conn.fetchrow(
                "SELECT scopes, name FROM api_keys WHERE app_id = $1 AND prefix = $2",
                app_id, prefix)
            if old is None:
                return NO_SUCH_KEY
            if await _full(conn, app_id, limit, now):
                return LIMIT_REACHED
            await conn.execute(
                "INSERT INTO api_keys (prefix, app_id, hash, scopes, created_at, name) "
                "VALUES ($1, $2, $3, $4, $5, $6)", new_prefix, app_id, new_hash, old[0], now,
                old[1])
            # the sooner of the two: a rotation never lengthens a key's life
            # (LEAST ignores a NULL: a key without an expiry gets this one)
            before = await conn.fetchrow(
                "UPDATE api_keys SET expires_at = LEAST(expires_at, $3) "
                f"WHERE app_id = $1 AND prefix = $2 RETURNING {_INFO}", app_id, prefix,
                expires_at)
            after = await conn.fetchrow(f"SELECT {_INFO} FROM api_keys WHERE prefix = $1",
                                        new_prefix)
            await insert_audit(conn, audit)
            return Rotated(_info(before), _info(after))

        return await self._call(rotate, tx=True)

    async def drop_expired_api_keys(self, before: float, *, audit=None) -> int:
        async def drop(conn):
            rows = await conn.fetch("DELETE FROM api_keys WHERE expires_at < $1 "
                                    "RETURNING app_id, prefix, expires_at", before)
            if audit is not None:
                for row in rows:
                    await insert_audit(conn, audit(*row))
            return len(rows)

        return await self._call(drop, tx=True)

    async def note_api_keys_used(self, used: Iterable[tuple[str, str, float]]) -> None:
        notes = list(used)
        if not notes:
            return
        apps, prefixes, times = (list(column) for column in zip(*notes, strict=True))
        await self._execute(_NOTE, apps, prefixes, times)
