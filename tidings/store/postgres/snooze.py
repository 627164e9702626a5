"""The PostgreSQL store's snoozed entries (docs/inbox.md#snooze).

A snoozed entry is its inbox row with state 4 and ``snoozed_until``
(postgres_022.sql).  Coming back is one transaction: the row is locked
(``FOR UPDATE``) and still snoozed, then the user's ``streams`` row hands
out the next seq as a publish's does (its lock orders it with the user's
publishes on every node), and the row takes that seq, state unseen and a
``page_key`` that puts it first in pages.  The scheduler of every node
looks for due rows with ``FOR UPDATE SKIP LOCKED``, one row a transaction
(as ``schedule.fire_one``): a row another node holds is skipped, and a row
it brought back is no longer snoozed, so each comes back once.
"""

from __future__ import annotations

from tidings.core.ids import new_id
from tidings.store.base import Entry, Resurfaced
from tidings.store.codec import group_view
from tidings.store.postgres.sql import BUMP_REV, ON_REV, SNOOZED

__all__ = ["next_snooze", "resurface", "snooze", "wake_one"]

# $1 app, $2 user, $3 until, $4 now, $5 the ids; an older member's id names
# the group entry that holds it now.  Raises the user's counts revision.
_SNOOZE = f"""
WITH changed AS (
  UPDATE inbox SET state = {SNOOZED}, snoozed_until = $3
  WHERE app_id = $1 AND user_id = $2 AND state <> 3
    AND (expires_at IS NULL OR expires_at > $4)
    AND (nid = ANY($5::text[]) OR gid IN (SELECT m.gid FROM group_members m
         WHERE m.app_id = $1 AND m.user_id = $2 AND m.nid = ANY($5::text[])))
  RETURNING nid
), bumped AS (
  {BUMP_REV} SELECT $1, $2, 1 WHERE EXISTS (SELECT FROM changed) {ON_REV}
)
SELECT nid FROM changed
"""
_SNOOZED_SEQS = f"""
SELECT seq FROM inbox WHERE app_id = $1 AND user_id = $2 AND state = {SNOOZED}
  AND (nid = ANY($3::text[]) OR gid IN (SELECT m.gid FROM group_members m
       WHERE m.app_id = $1 AND m.user_id = $2 AND m.nid = ANY($3::text[])))
ORDER BY seq FOR UPDATE
"""
_NEXT_SEQ = ("UPDATE streams SET head_seq = head_seq + 1 WHERE app_id = $1 AND user_id = $2 "
             "RETURNING epoch, head_seq")
_BACK = """
UPDATE inbox i SET seq = $4, state = 0, snoozed_until = NULL, page_key = $5
WHERE i.app_id = $1 AND i.user_id = $2 AND i.seq = $3
RETURNING i.nid, coalesce(i.body, (SELECT n.body FROM notifications n
            WHERE n.app_id = i.app_id AND n.id = i.nid)),
          (SELECT n.created_at FROM notifications n WHERE n.app_id = i.app_id AND n.id = i.nid),
          i.gid, i.grp
"""
_DUE = f"""
SELECT app_id, user_id, seq FROM inbox WHERE snoozed_until <= $1 AND state = {SNOOZED}
ORDER BY snoozed_until LIMIT 1 FOR UPDATE SKIP LOCKED
"""


async def snooze(conn, app_id: str, user: str, ids: list[str], until: float,
                 now: float) -> list[str]:
    return [r[0] for r in await conn.fetch(_SNOOZE, app_id, user, until, now, ids)]


async def _back(conn, app_id: str, user: str, seq: int, now: float) -> Resurfaced:
    """One snoozed row, locked by the caller: the next seq, unseen, first."""
    epoch, new_seq = await conn.fetchrow(_NEXT_SEQ, app_id, user)
    key = new_id(int(now * 1000))
    nid, body, created, gid, grp = await conn.fetchrow(_BACK, app_id, user, seq, new_seq, key)
    entry = Entry(nid, body, "unseen", created, seq=new_seq, key=key,
                  group=None if gid is None else group_view(grp, gid))
    return Resurfaced(app_id, user, epoch, entry)


async def resurface(conn, app_id: str, user: str, ids: list[str],
                    now: float) -> list[Resurfaced]:
    """In the caller's transaction."""
    seqs = [r[0] for r in await conn.fetch(_SNOOZED_SEQS, app_id, user, ids)]
    return [await _back(conn, app_id, user, seq, now) for seq in seqs]


async def wake_one(conn, now: float) -> Resurfaced | None:
    """Claim the snoozed row due first and bring it back, in the caller's
    transaction; None when none is due (or every due one is held)."""
    row = await conn.fetchrow(_DUE, now)
    if row is None:
        return None
    return await _back(conn, row[0], row[1], row[2], now)


async def next_snooze(conn) -> float | None:
    return await conn.fetchval(
        "SELECT min(snoozed_until) FROM inbox WHERE snoozed_until IS NOT NULL")
