"""The PostgreSQL store's multi-statement writes and reads (store.py runs them).

Each function runs on one pooled connection (``PostgresStore._call``),
inside a transaction when the caller asks for one.  The lock-order rules
they follow are in store.py's module docstring and in sql.py.
"""

from __future__ import annotations

import time

import msgspec

from tidings.core.ids import id_floor
from tidings.store.base import (
    RECOUNT_MAX,
    Delivery,
    NewNotification,
    Pruned,
    PublishOutcome,
    StoredNotification,
)
from tidings.store.postgres import groups as _groups
from tidings.store.postgres import schedule as _sched
from tidings.store.postgres.outbound import insert_jobs
from tidings.store.postgres.sql import (
    BUMP_REV,
    FANOUT_TOPIC,
    FANOUT_USERS,
    FEED,
    ON_REV,
    SEQS_TOPIC,
    SEQS_USERS,
    STATE_NAME,
)

__all__ = ["count", "get_notification", "prune", "publish", "publish_once"]

# The retention sweep scans whole tables: it gets longer than the 60 s that
# any other statement gets before it is cancelled and answered 503.
SWEEP_TIMEOUT = 3600.0

_encode = msgspec.json.encode


async def publish(conn, app_id: str, item: NewNotification, threshold: int) -> PublishOutcome:
    out = await _publish(conn, app_id, item, threshold)
    if item.jobs and out.feed_offset is None and out.status == "accepted":
        # in the caller's transaction, with the inbox rows (docs/design.md §2.1)
        out.replaced = await insert_jobs(conn, item.jobs)
    return out


async def _publish(conn, app_id: str, item: NewNotification, threshold: int) -> PublishOutcome:
    if item.deliver_at is not None:
        return await _sched.schedule(conn, app_id, item)
    if item.users is not None:
        users = list(dict.fromkeys(item.users))
        if item.group_key is not None:
            return await _groups.fan_out(conn, SEQS_USERS, app_id, item, users)
        return await _fan_out(conn, FANOUT_USERS, app_id, item, users)
    if item.topic is not None:
        # Counting stops past the threshold: a topic of a million costs the same.
        size = await conn.fetchval(
            "SELECT count(*) FROM (SELECT 1 FROM topic_subs WHERE app_id = $1 AND topic = $2 "
            "LIMIT $3) AS capped", app_id, item.topic, threshold + 1,
        )
        if size <= threshold:
            if item.group_key is not None:
                return await _groups.fan_out(conn, SEQS_TOPIC, app_id, item, item.topic)
            return await _fan_out(conn, FANOUT_TOPIC, app_id, item, item.topic)
        audience = item.topic
    else:
        audience = "*"
    offset = await conn.fetchval(
        FEED, app_id, item.id, item.category, item.body, audience, item.created_at,
        item.expires_at,
    )
    return PublishOutcome(item.id, "accepted", 0, feed_offset=offset, audience=audience,
                          body=item.body, category=item.category)


async def _fan_out(conn, sql: str, app_id: str, item: NewNotification, target) -> PublishOutcome:
    total, users, epochs, seqs = await conn.fetchrow(
        sql, app_id, item.id, item.category, item.body, item.created_at, item.expires_at, target,
    )
    deliveries = list(map(Delivery, users, epochs, seqs)) if users else []
    n = len(deliveries)
    return PublishOutcome(item.id, "accepted", n, muted=total - n, deliveries=deliveries,
                          body=item.body)


async def publish_once(conn, app_id, item: NewNotification, threshold: int, window: float):
    """Publish with an idempotency key (inside a transaction)."""
    key = item.idempotency_key
    # Claim the key: insert it, or take over a record older than the window.
    # A concurrent claim of the same key waits here until the first commits.
    claimed = await conn.fetchval(
        "INSERT INTO idempotency AS i (app_id, key, result, created_at) VALUES ($1, $2, '', $3) "
        "ON CONFLICT (app_id, key) DO UPDATE SET result = '', created_at = EXCLUDED.created_at "
        "WHERE i.created_at <= EXCLUDED.created_at - $4 RETURNING true",
        app_id, key, item.created_at, window,
    )
    if not claimed:
        first = msgspec.json.decode(await conn.fetchval(
            "SELECT result FROM idempotency WHERE app_id = $1 AND key = $2", app_id, key))
        return PublishOutcome(first["id"], "duplicate", first["recipients"], first.get("muted", 0),
                              fingerprint=first.get("fp", ""))
    out = await publish(conn, app_id, item, threshold)
    await conn.execute(
        "UPDATE idempotency SET result = $3 WHERE app_id = $1 AND key = $2", app_id, key,
        _encode({"id": out.id, "recipients": out.recipients, "muted": out.muted,
                 "fp": item.fingerprint}),
    )
    return out


async def get_notification(conn, app_id: str, nid: str) -> StoredNotification | None:
    row = await conn.fetchrow(
        "SELECT id, body, category, created_at, expires_at, audience, feed_offset, recipients "
        "FROM notifications WHERE app_id = $1 AND id = $2 AND NOT deleted", app_id, nid,
    )
    if row is None:
        return None
    if row["feed_offset"] is None:
        # plain entries of nid, and the group entries holding it
        counts = await conn.fetch(
            "SELECT state, count(*) FROM inbox WHERE app_id = $1 AND nid = $2 AND gid IS NULL "
            "GROUP BY state", app_id, nid,
        ) + await _groups.state_counts(conn, app_id, nid)
    else:
        counts = await conn.fetch(
            "SELECT state, count(*) FROM feed_state WHERE app_id = $1 AND nid = $2 "
            "GROUP BY state", app_id, nid,
        )
    stats = dict.fromkeys(STATE_NAME[:4], 0)
    for code, n in counts:
        # a snoozed entry (4) is back unseen: counted so until then
        stats[STATE_NAME[code if code < 4 else 0]] += n
    return StoredNotification(**row, stats=stats)  # the columns are named as the fields


# What a sweep deletes that counts dropped with, as counts count them
# (store.py): unread entries, feed items; live until then.  (The column that
# names whose, the table, what else makes a row count.)
_LOST = (("user_id", "inbox", "state < 2"),
         ("audience", "notifications", "feed_offset > 0 AND NOT deleted"))


async def _lost(conn, where: str, args: tuple, now: float) -> Pruned:
    """Whose counts the sweep's deletes will lower (``Pruned.unread``,
    ``feeds`` and ``apps``): at most RECOUNT_MAX users and feeds named,
    past that their apps (store/base.py).  Read before the deletes, which
    commit one by one: a row read meanwhile names one user too many."""
    lost = Pruned(0)
    apps: set[str] = set()
    n = len(args)
    for (column, table, counted), named in zip(_LOST, (lost.unread, lost.feeds), strict=True):
        sql = (f"SELECT DISTINCT app_id{{}} FROM {table} WHERE created_at < $1{where} "
               f"AND {counted} AND (expires_at IS NULL OR expires_at > ${n + 1})")
        rows = await conn.fetch(sql.format(f", {column}") + f" LIMIT ${n + 2}",
                                *args, now, RECOUNT_MAX + 1, timeout=SWEEP_TIMEOUT)
        named += [tuple(r) for r in rows]
        if len(named) > RECOUNT_MAX:
            named.clear()
            rows = await conn.fetch(sql.format(""), *args, now, timeout=SWEEP_TIMEOUT)
            apps.update(r[0] for r in rows)
    lost.apps = sorted(apps)
    return lost


async def prune(conn, app_id: str | None, older_than: float) -> Pruned:
    args: tuple[float | str, ...]
    where, args = "", (older_than,)
    if app_id is not None:
        where, args = " AND app_id = $2", (older_than, app_id)
    pruned = await _lost(conn, where, args, time.time())
    # The floors rise first, in a short transaction of their own: from then
    # on a cursor below a floor is answered "reload" (recovered: false), so
    # the entries can go afterwards without a replay ever seeing a hole, and
    # the long deletes hold no stream's lock that a publish would wait for.
    async with conn.transaction():
        # Stream rows are locked in the order publishes lock them (app, then
        # user, byte order), so a sweep never deadlocks a fan-out.
        await conn.execute(
            "SELECT 1 FROM streams WHERE (app_id, user_id) IN "
            "(SELECT app_id, user_id FROM inbox WHERE created_at < $1" + where + ") "
            "ORDER BY app_id, user_id FOR UPDATE", *args, timeout=SWEEP_TIMEOUT,
        )
        await conn.execute(
            "UPDATE streams s SET floor_seq = greatest(s.floor_seq, old.top) "
            "FROM (SELECT app_id, user_id, max(seq) AS top FROM inbox WHERE created_at < $1"
            + where + " GROUP BY app_id, user_id) AS old "
            "WHERE s.app_id = old.app_id AND s.user_id = old.user_id", *args,
            timeout=SWEEP_TIMEOUT,
        )
        await conn.execute(
            "UPDATE feed_heads h SET floor = greatest(h.floor, old.top) "
            "FROM (SELECT app_id, max(feed_offset) AS top FROM notifications "
            "      WHERE feed_offset IS NOT NULL AND created_at < $1" + where +
            "      GROUP BY app_id) AS old WHERE h.app_id = old.app_id", *args,
            timeout=SWEEP_TIMEOUT,
        )
    n = 0
    for table in ("inbox", "notifications", "idempotency"):
        status = await conn.execute(
            f"DELETE FROM {table} WHERE created_at < $1" + where, *args, timeout=SWEEP_TIMEOUT)
        if table != "idempotency":  # entries and feed items, as SQLite counts them
            n += count(status)
    pruned.regrouped = await _groups.prune(conn, app_id, older_than, time.time(),
                                           SWEEP_TIMEOUT)
    await _sched.prune(conn, app_id, older_than, id_floor(int(older_than * 1000)), SWEEP_TIMEOUT)
    # The apps' revisions, after the deletes (each committed on its own): a
    # read between the two is at the old revision with lower counts, and at
    # an equal revision the lower counts are the later (Counts.rev).
    await conn.execute(
        f"{BUMP_REV} SELECT a, '', 1 FROM unnest($1::text[]) AS t(a) {ON_REV}", pruned.moved())
    pruned.removed = n
    return pruned


def count(status: str) -> int:
    """Rows affected, from a command tag such as ``DELETE 12``."""
    return int(status.rsplit(" ", 1)[1])
