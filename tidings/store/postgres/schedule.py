"""The PostgreSQL store's scheduled notifications and delivery counters.

Each function runs on one pooled connection (store.py's ``_call``).
Counters are upserts that add (``n = n + EXCLUDED.n``): the row lock makes
concurrent flushes from several nodes queue, so no increment is lost, and
rows are written in key order so that two flushes never deadlock.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping

from tidings.core.receipts import MAX_DEVICES, Row, first_per_user, per_device
from tidings.store.base import (
    NewNotification,
    PublishOutcome,
    ScheduledEdit,
    ScheduledNotification,
)
from tidings.store.codec import decode_payload, edit_payload, encode_payload
from tidings.store.postgres.errors import CANNOT_WRITE, DOWN, RETRY, STALE

__all__ = ["cancel", "delivery_counts", "edit", "fire_one", "fired_unqueued",
           "get_scheduled", "mark_queued", "next_due", "prune", "record_deliveries", "schedule"]

log = logging.getLogger("tidings.store")


async def schedule(conn, app_id: str, item: NewNotification) -> PublishOutcome:
    await conn.execute(
        "INSERT INTO scheduled (app_id, id, due_at, status, payload, expires_at, created_at) "
        "VALUES ($1, $2, $3, 'pending', $4, $5, $6)",
        app_id, item.id, item.deliver_at, encode_payload(item), item.expires_at,
        item.created_at,
    )
    return PublishOutcome(item.id, "scheduled", 0, body=item.body)


# The claim.  SKIP LOCKED: a row another node is firing (or an edit is
# changing) right now is not waited for but passed over, so nodes polling
# together fire different rows; the row lock lasts until the caller's
# transaction (claim, prepare, publish, status) commits, and a node that dies
# before that commits nothing, so the row is pending again for the next poll.
_CLAIM = """
WITH due AS (
  SELECT app_id, id FROM scheduled WHERE status = 'pending' AND due_at <= $1
  ORDER BY due_at LIMIT 1 FOR UPDATE SKIP LOCKED
)
UPDATE scheduled s SET
  status = CASE WHEN s.expires_at IS NOT NULL AND s.expires_at <= $1
                THEN 'expired' ELSE 'fired' END,
  fired_at = $1
FROM due WHERE s.app_id = due.app_id AND s.id = due.id AND s.status = 'pending'
RETURNING s.app_id, s.id, s.status, s.due_at, s.payload
"""


async def fire_one(conn, now: float, publish, prepare=None) -> tuple[str, PublishOutcome] | None:
    """Claim the oldest due notification and publish it, inside the caller's
    transaction; None when nothing is due.  One per transaction: a publish
    locks its recipients' streams until commit, and several in one
    transaction would take those locks out of the one lock order.
    ``prepare``: as ``Store.fire_due``'s; it runs holding the row's lock, so
    only the node that fires a notification prepares it, and a cancel or an
    edit of it waits for the commit."""
    row = await conn.fetchrow(_CLAIM, now)
    if row is None:
        return None
    app_id, nid, status, due_at, payload = row
    if status == "expired":
        return app_id, PublishOutcome(nid, "expired", 0)
    item = decode_payload(payload, due_at)
    if prepare is not None:
        await prepare(app_id, item)  # an error rolls the claim back: it stays pending
    while True:
        try:
            async with conn.transaction():  # a savepoint: a publish that fails is marked alone
                out = await publish(conn, app_id, item)
        except Exception as exc:
            if isinstance(exc, (*DOWN, *STALE, *RETRY, *CANNOT_WRITE)):
                raise  # the connection, not the notification: the claim rolls back
            if item.jobs:  # published without them, "fired" for a later pass
                log.exception("outbound jobs of scheduled notification %s/%s could not be "
                              "written; it is published without them", app_id, nid)
                item.jobs, prepare = [], None
                continue
            log.exception("scheduled notification %s/%s could not be published", app_id, nid)
            await conn.execute("UPDATE scheduled SET status = 'failed' "
                               "WHERE app_id = $1 AND id = $2", app_id, nid)
            return app_id, PublishOutcome(nid, "failed", 0)
        break
    if prepare is None:  # its jobs are queued after the commit (fired_unqueued)
        out.unqueued = True
    else:  # its jobs committed with it, or it has none
        await conn.execute(MARK_QUEUED, app_id, nid)
    return app_id, out


async def next_due(conn) -> float | None:
    return await conn.fetchval("SELECT min(due_at) FROM scheduled WHERE status = 'pending'")


async def get_scheduled(conn, app_id: str, nid: str) -> ScheduledNotification | None:
    row = await conn.fetchrow(
        "SELECT id, payload, due_at, expires_at, status, created_at, fired_at FROM scheduled "
        "WHERE app_id = $1 AND id = $2", app_id, nid,
    )
    if row is None:
        return None
    nid, payload, due_at, expires_at, status, created_at, fired_at = row
    body = decode_payload(payload, due_at).body
    return ScheduledNotification(nid, body, due_at, expires_at, status, created_at, fired_at)


async def edit(conn, app_id: str, nid: str,
               change: Callable[[ScheduledNotification], ScheduledEdit],
               ) -> ScheduledNotification | None:
    """Read, change and write a pending notification holding its row lock
    (in the caller's transaction).  A fire in progress holds that lock: the
    read waits for its commit, then finds the row no longer pending (READ
    COMMITTED reads the row again once the lock is free) and answers None.
    A fire that comes second skips the locked row (SKIP LOCKED) and takes
    it, edited, at its next poll."""
    row = await conn.fetchrow(
        "SELECT payload, due_at, expires_at, created_at FROM scheduled "
        "WHERE app_id = $1 AND id = $2 AND status = 'pending' FOR UPDATE", app_id, nid)
    if row is None:
        return None
    payload, due_at, expires_at, created_at = row
    before = ScheduledNotification(nid, decode_payload(payload, due_at).body, due_at,
                                   expires_at, "pending", created_at, None)
    new = change(before)
    await conn.execute(
        "UPDATE scheduled SET payload = $3, due_at = $4, expires_at = $5 "
        "WHERE app_id = $1 AND id = $2", app_id, nid,
        edit_payload(payload, new.body, new.expires_at), new.due_at, new.expires_at)
    return ScheduledNotification(nid, new.body, new.due_at, new.expires_at, "pending",
                                 created_at, None)


async def cancel(conn, app_id: str, nid: str) -> bool:
    # A row being fired is locked: this waits for that commit, then finds it
    # no longer pending (the caller retracts the published notification).
    return bool(await conn.fetchval(
        "UPDATE scheduled SET status = 'cancelled' WHERE app_id = $1 AND id = $2 "
        "AND status = 'pending' RETURNING true", app_id, nid,
    ))


async def prune(conn, app_id: str | None, older_than: float, first_id: str, timeout: float):
    """Retention for this module's tables (see the SQLite store's
    ``prune_tx``); group memberships: groups.py."""
    args: tuple[str, ...]
    where, args = "", ()
    if app_id is not None:
        where, args = " AND app_id = $2", (app_id,)
    await conn.execute("DELETE FROM scheduled WHERE status <> 'pending' AND created_at < $1"
                       + where, older_than, *args, timeout=timeout)
    await conn.execute("DELETE FROM delivery_counts WHERE nid < $1" + where, first_id, *args,
                       timeout=timeout)
    await conn.execute("DELETE FROM receipts WHERE nid < $1" + where, first_id, *args,
                       timeout=timeout)
    await conn.execute("DELETE FROM device_receipts WHERE nid < $1" + where, first_id, *args,
                       timeout=timeout)


_RECORD = """
INSERT INTO delivery_counts AS d (app_id, nid, channel, field, n)
SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::bigint[])
  AS t(app_id, nid, channel, field, n)
ORDER BY 1, 2, 3, 4
ON CONFLICT (app_id, nid, channel, field) DO UPDATE SET n = d.n + EXCLUDED.n
"""


async def record_deliveries(conn, counts: Mapping[tuple[str, str, str, str], int]) -> None:
    rows = sorted((key, n) for key, n in counts.items() if n)
    if not rows:
        return
    cols: list[list] = [[], [], [], [], []]
    for (app_id, nid, channel, field), n in rows:
        for col, value in zip(cols, (app_id, nid, channel, field, n), strict=True):
            col.append(value)
    await conn.execute(_RECORD, *cols)


async def delivery_counts(conn, app_id: str, nid: str) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {}
    for channel, field, n in await conn.fetch(
        "SELECT channel, field, n FROM delivery_counts WHERE app_id = $1 AND nid = $2 "
        "ORDER BY channel, field", app_id, nid,
    ):
        out.setdefault(channel, {})[field] = n
    return out


# A receipt is kept only for a notification the user can see (see the SQLite
# store's _RECEIPT); one statement for the whole batch.
_RECEIPTS = """
INSERT INTO receipts (app_id, nid, kind, user_id, at)
SELECT t.app_id, t.nid, t.kind, t.user_id, t.at
FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::float8[])
  AS t(app_id, nid, kind, user_id, at)
WHERE EXISTS (SELECT 1 FROM inbox i
              WHERE i.app_id = t.app_id AND i.nid = t.nid AND i.user_id = t.user_id)
   OR EXISTS (SELECT 1 FROM notifications n
              WHERE n.app_id = t.app_id AND n.id = t.nid AND n.feed_offset IS NOT NULL
                AND (n.audience = '*' OR n.audience IN (
                  SELECT s.topic FROM topic_subs s
                  WHERE s.app_id = t.app_id AND s.user_id = t.user_id)))
ORDER BY 1, 2, 3, 4
ON CONFLICT DO NOTHING
"""
# Each device's row, for a user the statement above kept, within the first
# MAX_DEVICES devices per notification, kind and user: the devices new to the
# table, numbered in the batch by time, each counted after those stored.
_DEVICES = f"""
WITH t AS (
  SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[],
                       $6::text[], $7::float8[]) AS t(app_id, nid, kind, user_id, device, label, at)
), fresh AS (
  SELECT t.*, row_number() OVER (PARTITION BY t.app_id, t.nid, t.user_id, t.kind
                                 ORDER BY t.at, t.device) AS n
  FROM t
  WHERE EXISTS (SELECT 1 FROM receipts r WHERE r.app_id = t.app_id AND r.nid = t.nid
                AND r.kind = t.kind AND r.user_id = t.user_id)
    AND NOT EXISTS (SELECT 1 FROM device_receipts d WHERE d.app_id = t.app_id
                    AND d.nid = t.nid AND d.user_id = t.user_id AND d.kind = t.kind
                    AND d.device = t.device)
)
INSERT INTO device_receipts (app_id, nid, user_id, kind, device, label, at)
SELECT f.app_id, f.nid, f.user_id, f.kind, f.device, f.label, f.at FROM fresh f
WHERE f.n + (SELECT count(*) FROM device_receipts d WHERE d.app_id = f.app_id
             AND d.nid = f.nid AND d.user_id = f.user_id AND d.kind = f.kind) <= {MAX_DEVICES}
ORDER BY 1, 2, 3, 4, 5
ON CONFLICT DO NOTHING
"""


async def record_receipts(conn, receipts: list[Row]) -> None:
    """Both statements in one transaction (the caller's)."""
    users = first_per_user(receipts)
    if users:
        await conn.execute(_RECEIPTS, *[list(col) for col in zip(*users, strict=True)])
        await conn.execute(_DEVICES, *[list(col) for col in zip(*per_device(receipts),
                                                                strict=True)])


async def receipt_counts(conn, app_id: str, nid: str) -> dict[str, int]:
    return {kind: n for kind, n in await conn.fetch(
        "SELECT kind, count(*) FROM receipts WHERE app_id = $1 AND nid = $2 GROUP BY kind",
        app_id, nid)}


async def fired_unqueued(conn, before: float, limit: int) -> list[tuple[str, str, float]]:
    rows = await conn.fetch(
        "SELECT app_id, id, fired_at FROM scheduled WHERE status = 'fired' AND fired_at < $1 "
        "ORDER BY fired_at LIMIT $2", before, limit)
    return [tuple(r) for r in rows]


MARK_QUEUED = ("UPDATE scheduled SET status = 'sent' WHERE app_id = $1 AND id = $2 "
               "AND status = 'fired'")


async def mark_queued(conn, fired: list[tuple[str, str]]) -> None:
    await conn.executemany(MARK_QUEUED, fired)
