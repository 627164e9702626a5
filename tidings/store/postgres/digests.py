"""The PostgreSQL store's digest windows (contract: tidings/store/outbound.py,
schema: sql/postgres_006.sql).

Closing a window is one transaction: ``DELETE ... RETURNING`` its due items,
then insert the digest jobs made of them.  Two nodes closing the same window
at once serialize on the items' row locks; the second finds them deleted
and queues nothing, so a digest is sent once across a cluster.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import msgspec

from tidings.core import retime
from tidings.core.models import Preferences
from tidings.store.outbound import DigestBuilder, DigestItem, NewJob

__all__ = ["PostgresDigests", "held", "hold", "move"]

_encode = msgspec.json.encode
_decode = msgspec.json.decode
_decode_prefs = msgspec.json.Decoder(Preferences).decode

# Each row takes its window's closing time when the window is open.
_HOLD = """
INSERT INTO digest_items (app_id, user_id, channel, rule, nid, destination, notification,
                          created_at, expires_at, due_at)
SELECT t.app_id, t.user_id, t.channel, t.rule, t.nid, t.destination, t.notification,
       t.created_at, t.expires_at,
       COALESCE((SELECT min(d.due_at) FROM digest_items d WHERE d.app_id = t.app_id
                 AND d.user_id = t.user_id AND d.channel = t.channel AND d.rule = t.rule),
                t.due_at)
FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::bytea[],
            $7::bytea[], $8::float8[], $9::float8[], $10::float8[])
  AS t(app_id, user_id, channel, rule, nid, destination, notification, created_at,
       expires_at, due_at)
ON CONFLICT DO NOTHING
"""
_QUEUE = """
INSERT INTO jobs (id, app_id, user_id, nid, channel, destination, notification, created_at,
                  expires_at, not_before, updated_at)
SELECT *, t.created_at FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[],
  $6::bytea[], $7::bytea[], $8::float8[], $9::float8[], $10::float8[])
  AS t(id, app_id, user_id, nid, channel, destination, notification, created_at, expires_at,
       not_before)
ON CONFLICT (id) DO NOTHING
"""


async def hold(conn: Any, held: list[NewJob]) -> None:
    """Put ``held`` (jobs with a ``digest`` key) in their windows, inside the
    caller's transaction."""
    cols = [list(c) for c in zip(*[
        (j.app, j.user, j.channel, n.digest, n.nid, _encode(j.destination), j.notification,
         j.created_at, j.expires_at, n.not_before)
        for n in held for j in (n.job,)], strict=True)]
    await conn.execute(_HOLD, *cols)


async def held(conn: Any, app_id: str, user: str) -> list[retime.HeldItem]:
    """The user's held items, oldest first, up to ``retime.MAX_ITEMS``."""
    return [retime.HeldItem(*r) for r in await conn.fetch(
        "SELECT channel, rule, nid, created_at, due_at, notification FROM digest_items "
        "WHERE app_id = $1 AND user_id = $2 ORDER BY created_at, nid LIMIT $3",
        app_id, user, retime.MAX_ITEMS)]


async def move(conn: Any, app_id: str, user: str, out: retime.Retimed) -> None:
    """Items to the windows of their new rules, then the windows' closing times."""
    if out.moves:
        await conn.execute(
            "UPDATE digest_items d SET rule = m.new FROM unnest($3::text[], $4::text[], "
            "$5::text[], $6::text[]) AS m(channel, rule, nid, new) WHERE d.app_id = $1 "
            "AND d.user_id = $2 AND d.channel = m.channel AND d.rule = m.rule AND d.nid = m.nid",
            app_id, user, *map(list, zip(*[(*k, new) for k, new in out.moves.items()],
                                         strict=True)))
    if out.windows:
        await conn.execute(
            "UPDATE digest_items d SET due_at = w.due FROM unnest($3::text[], $4::text[], "
            "$5::float8[]) AS w(channel, rule, due) WHERE d.app_id = $1 AND d.user_id = $2 "
            "AND d.channel = w.channel AND d.rule = w.rule",
            app_id, user, *map(list, zip(*[(*k, due) for k, due in out.windows.items()],
                                         strict=True)))


class PostgresDigests:
    # Provided by PostgresStore.
    _call: Callable[..., Awaitable[Any]]
    _fetch: Callable[..., Awaitable[list]]

    async def flush_digests(self, now: float, limit: int, build: DigestBuilder) -> list[str]:
        windows = await self._fetch(
            "SELECT DISTINCT app_id, user_id, channel, rule FROM digest_items "
            "WHERE due_at <= $1 LIMIT $2", now, limit)
        channels: set[str] = set()
        for window in windows:
            channels.update(await self._call(self._close, tuple(window), now, build, tx=True))
        return sorted(channels)

    @staticmethod
    async def _close(conn: Any, window: tuple[str, str, str, str], now: float,
                     build: DigestBuilder) -> list[str]:
        app, user, channel, rule = window
        rows = await conn.fetch(
            "DELETE FROM digest_items WHERE app_id = $1 AND user_id = $2 AND channel = $3 "
            "AND rule = $4 AND due_at <= $5 RETURNING nid, destination, notification, "
            "created_at, expires_at", app, user, channel, rule, now)
        items = sorted((DigestItem(r[0], _decode(r[1]), r[2], r[3], r[4])
                        for r in rows if r[4] is None or r[4] > now),
                       key=lambda i: (i.nid, i.created_at))
        if not items:
            return []
        # As they are now, in the closing transaction: a channel the user
        # switched off while the window was open sends nothing.
        prefs = await conn.fetchval(
            "SELECT doc FROM prefs WHERE app_id = $1 AND user_id = $2", app, user)
        jobs = build(app, user, channel, rule, items,
                     _decode_prefs(prefs) if prefs is not None else None)
        if jobs:
            await conn.execute(_QUEUE, *[list(c) for c in zip(*[
                (j.id, j.app, j.user, n.nid, j.channel, _encode(j.destination), j.notification,
                 j.created_at, j.expires_at, n.not_before)
                for n in jobs for j in (n.job,)], strict=True)])
        return [n.job.channel for n in jobs]
