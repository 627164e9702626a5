"""The PostgreSQL store's group entries (aggregation by ``group_key``).

Each function runs on one pooled connection inside the caller's
transaction (store.py).  The data layout is in tidings/store/codec.py.

Why a grouped publish is several statements in one transaction, where a
plain one is a single statement: the merge has to see the entry another
node's publish to the same user committed a moment ago.  The first
statement assigns the seqs, and with them takes every recipient's stream
row lock (in the one lock order, see sql.py); under READ
COMMITTED each later statement takes a fresh snapshot, so the entries it
reads are those of every earlier publish to these users, and no later one
can interleave until this transaction commits.
"""

from __future__ import annotations

from tidings.store.base import Delivery, Entry, NewNotification, PublishOutcome
from tidings.store.codec import group_view, merge_group, new_group, rebuild_group
from tidings.store.postgres.sql import ENTRY_BODY

__all__ = ["fan_out", "members", "personal_entry", "prune", "rebuild", "retract", "state_counts"]

STATE_NAME = ("unseen", "seen", "read", "archived", "snoozed")
_BODY10 = ENTRY_BODY.format("$10::bytea", "$10::bytea")  # the entry's copy of the body


async def fan_out(conn, seqs_sql: str, app_id: str, item: NewNotification, target):
    """A grouped write fan-out (``seqs_sql``: the fan-out statement without
    its inbox insert).  Recipients with an unread, unexpired entry of the key
    get it moved to their new seq, pointing at this notification, merged;
    the others open a group entry."""
    total, users, epochs, seqs = await conn.fetchrow(
        seqs_sql, app_id, item.id, item.category, item.body, item.created_at, item.expires_at,
        target,
    )
    if not users:
        return PublishOutcome(item.id, "accepted", 0, muted=total, body=item.body)
    key = item.group_key
    open_entries = {
        r[0]: (r[1], r[2], r[3]) for r in await conn.fetch(
            "SELECT user_id, seq, gid, grp FROM inbox WHERE app_id = $1 AND group_key = $2 "
            "AND user_id = ANY($3::text[]) AND state < 2 "
            "AND (expires_at IS NULL OR expires_at > $4) ORDER BY user_id FOR UPDATE",
            app_id, key, users, item.created_at,
        )
    }
    fresh = new_group(item)
    deliveries: list[Delivery] = []
    gids: list[str] = []
    grps: list[bytes] = []
    moved_users: list[str] = []
    moved_seqs: list[int] = []
    for user, epoch, seq in zip(users, epochs, seqs, strict=True):
        hit = open_entries.get(user)
        if hit is None:
            gid, grp = item.id, fresh
        else:
            old_seq, gid, grp = hit
            grp = merge_group(grp, item)
            moved_users.append(user)
            moved_seqs.append(old_seq)
        gids.append(gid)
        grps.append(grp)
        deliveries.append(Delivery(user, epoch, seq, group_view(grp, gid)))
    if moved_users:
        await conn.execute(
            "DELETE FROM inbox WHERE app_id = $1 AND (user_id, seq) IN "
            "(SELECT * FROM unnest($2::text[], $3::bigint[]))", app_id, moved_users, moved_seqs,
        )
    await conn.execute(
        "INSERT INTO inbox (app_id, user_id, seq, nid, created_at, expires_at, group_key, gid, "
        f"grp, body) SELECT $1, u, s, $2, $3, $4, $5, g, b, {_BODY10} "
        "FROM unnest($6::text[], $7::bigint[], $8::text[], $9::bytea[]) AS t(u, s, g, b)",
        app_id, item.id, item.created_at, item.expires_at, key, users, seqs, gids, grps,
        item.body,
    )
    await conn.execute(
        "INSERT INTO group_members (app_id, user_id, nid, gid, created_at) "
        "SELECT $1, u, $2, g, $3 FROM unnest($4::text[], $5::text[]) AS t(u, g)",
        app_id, item.id, item.created_at, users, gids,
    )
    return PublishOutcome(item.id, "accepted", len(deliveries), muted=total - len(deliveries),
                          deliveries=deliveries, body=item.body)


async def retract(conn, app_id: str, nid: str,
                  now: float) -> tuple[list[str], list[tuple[str, Entry]], list[str]]:
    """``nid`` is being retracted: take it out of every group entry holding
    it; ``(users, regrouped, unread)`` as the SQLite store's ``retract_tx``,
    which this mirrors.  The holders' stream rows are locked first, in the
    one lock order (sql.py), so that no grouped publish to them merges into
    an entry while it is rebuilt."""
    held = await conn.fetch(
        "DELETE FROM group_members WHERE app_id = $1 AND nid = $2 RETURNING user_id, gid",
        app_id, nid,
    )
    if not held:
        return [], [], []
    await _lock_streams(conn, app_id, sorted({r[0] for r in held}))
    regrouped: list[tuple[str, Entry]] = []
    unread: list[str] = []
    for user, gid in sorted(held):
        rebuilt = await rebuild(conn, app_id, user, gid)
        if rebuilt is None:
            continue
        state, entry, expires = rebuilt
        if entry is not None and (expires is None or expires > now):
            regrouped.append((user, entry))
        elif state < 2:
            unread.append(user)
    return [r[0] for r in held], regrouped, unread


async def _lock_streams(conn, app_id: str, users: list[str]) -> None:
    await conn.execute(
        "SELECT 1 FROM streams WHERE app_id = $1 AND user_id = ANY($2::text[]) "
        "ORDER BY user_id FOR UPDATE", app_id, users,
    )


async def rebuild(conn, app_id: str, user: str,
                  gid: str) -> tuple[int, Entry | None, float | None] | None:
    """The SQLite store's ``rebuild_tx``: the user's group entry ``gid``
    made what its members are now, the entry showing the newest (its id,
    body, time and expiry), or deleted when none is left."""
    entry = await conn.fetchrow(
        "SELECT seq, group_key, state FROM inbox WHERE app_id = $1 AND user_id = $2 "
        "AND gid = $3 FOR UPDATE", app_id, user, gid,
    )
    if entry is None:
        return None
    seq, key, state = entry
    rest = [tuple(r) for r in await conn.fetch(
        "SELECT n.id, n.category, n.body, n.created_at, n.expires_at FROM group_members m "
        "JOIN notifications n ON n.app_id = m.app_id AND n.id = m.nid "
        "WHERE m.app_id = $1 AND m.user_id = $2 AND m.gid = $3 AND NOT n.deleted",
        app_id, user, gid,
    )]
    grp = rebuild_group(key, [r[:3] for r in rest])
    if grp is None:
        await conn.execute("DELETE FROM inbox WHERE app_id = $1 AND user_id = $2 AND seq = $3",
                           app_id, user, seq)
        return state, None, None
    newest, _, body, created_at, expires_at = max(rest)
    await conn.execute(
        "UPDATE inbox SET nid = $4, grp = $5, created_at = $6, expires_at = $7, "
        f"body = {ENTRY_BODY.format('$8::bytea', '$8::bytea')} "
        "WHERE app_id = $1 AND user_id = $2 AND seq = $3",
        app_id, user, seq, newest, grp, created_at, expires_at, body,
    )
    return state, personal_entry(newest, body, state, created_at, seq, gid, grp), expires_at


async def prune(conn, app_id: str | None, older_than: float, now: float,
                timeout: float) -> list[tuple[str, str, Entry]]:
    """Retention for group memberships (the SQLite store's ``prune_tx``):
    members older than ``older_than`` leave their entries, and each entry
    that keeps others is rebuilt from them, one transaction each, under the
    user's stream lock (no grouped publish merges into it meanwhile).
    Returns those entries, ``(app, user, entry)``, the ones live at ``now``."""
    where, args = ("", ()) if app_id is None else (" AND m.app_id = $2", (app_id,))
    touched = await conn.fetch(
        "SELECT DISTINCT m.app_id, m.user_id, m.gid FROM group_members m JOIN inbox i "
        "ON i.app_id = m.app_id AND i.user_id = m.user_id AND i.gid = m.gid "
        "WHERE m.created_at < $1" + where, older_than, *args, timeout=timeout,
    )
    await conn.execute("DELETE FROM group_members m WHERE m.created_at < $1" + where,
                       older_than, *args, timeout=timeout)
    regrouped: list[tuple[str, str, Entry]] = []
    for app, user, gid in touched:
        async with conn.transaction():
            await _lock_streams(conn, app, [user])
            rebuilt = await rebuild(conn, app, user, gid)
        if rebuilt is not None and rebuilt[1] is not None and (
                rebuilt[2] is None or rebuilt[2] > now):
            regrouped.append((app, user, rebuilt[1]))
    return regrouped


async def state_counts(conn, app_id: str, nid: str) -> list:
    """(state, users) of the group entries holding ``nid``."""
    return await conn.fetch(
        "SELECT i.state, count(*) FROM group_members m JOIN inbox i ON i.app_id = m.app_id "
        "AND i.user_id = m.user_id AND i.gid = m.gid WHERE m.app_id = $1 AND m.nid = $2 "
        "GROUP BY i.state", app_id, nid,
    )


def personal_entry(nid, body, state, created, seq, gid, grp, key=None,
                   snoozed_until=None) -> Entry:
    return Entry(nid, body, STATE_NAME[state], created, seq=seq,
                 group=None if gid is None else group_view(grp, gid), key=key,
                 snoozed_until=snoozed_until)


async def members(conn, app_id: str, user: str, nid: str, limit: int, before: str | None,
                  now: float) -> tuple[Entry, list[Entry]] | None:
    head = await conn.fetchrow(
        "SELECT i.nid, n.body, i.state, n.created_at, i.seq, i.gid, i.grp "
        "FROM group_members m JOIN inbox i ON i.app_id = m.app_id AND i.user_id = m.user_id "
        "AND i.gid = m.gid JOIN notifications n ON n.app_id = i.app_id AND n.id = i.nid "
        "WHERE m.app_id = $1 AND m.user_id = $2 AND m.nid = $3 "
        "AND (i.expires_at IS NULL OR i.expires_at > $4)", app_id, user, nid, now,
    )
    if head is None:
        return None
    entry = personal_entry(*head)
    rows = await conn.fetch(
        "SELECT n.id, n.body, n.created_at FROM group_members m JOIN notifications n "
        "ON n.app_id = m.app_id AND n.id = m.nid WHERE m.app_id = $1 AND m.user_id = $2 "
        "AND m.gid = $3 AND NOT n.deleted AND ($5::text IS NULL OR m.nid < $5) "
        "ORDER BY m.nid DESC LIMIT $4", app_id, user, head["gid"], limit, before,
    )
    return entry, [Entry(r[0], r[1], entry.state, r[2]) for r in rows]
