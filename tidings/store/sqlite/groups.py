"""The SQLite store's group entries (aggregation by ``group_key``).

``*_tx`` functions run on the writer thread inside a publish, delete or
state change (store.py); the others are reads on the event loop's
connection.  The data layout is described in tidings/store/codec.py.
"""

from __future__ import annotations

import sqlite3

from tidings.store.base import Delivery, Entry, NewNotification
from tidings.store.codec import group_view, merge_group, new_group, rebuild_group

__all__ = ["current_ids", "insert_entries_tx", "members", "personal_entries", "prune_tx",
           "rebuild_tx", "retract_tx", "state_counts"]

_CHUNK = 500
STATE_NAME = ("unseen", "seen", "read", "archived", "snoozed")


def _chunks(items: list, n: int = _CHUNK):
    for i in range(0, len(items), n):
        yield items[i:i + n]


def insert_entries_tx(
    conn: sqlite3.Connection, app_id: str, item: NewNotification, rows: list[tuple],
    deliveries: list[Delivery],
) -> None:
    """Write the inbox entries of a grouped publish.

    ``rows`` are the plain entries ``(app, user, seq, nid, created, expires)``
    with the seqs just assigned.  A recipient with an unread, unexpired
    entry of the key has that entry moved to the new seq, pointing at the new
    notification, with the merged summary; the others open a group entry.
    """
    key, now = item.group_key, item.created_at
    open_entries: dict[str, tuple[int, str, bytes]] = {}
    users = [r[1] for r in rows]
    for part in _chunks(users):
        marks = ",".join("?" * len(part))
        for user, seq, gid, grp in conn.execute(
            "SELECT user_id, seq, gid, grp FROM inbox WHERE app_id=? AND group_key=? "
            f"AND user_id IN ({marks}) AND state<2 AND (expires_at IS NULL OR expires_at>?)",
            (app_id, key, *part, now),
        ):
            open_entries[user] = (seq, gid, grp)
    fresh = new_group(item)
    by_user = {d.user: d for d in deliveries}
    entries, members, moved = [], [], []
    for app, user, seq, nid, created, expires in rows:
        hit = open_entries.get(user)
        if hit is None:
            gid, grp = nid, fresh
        else:
            old_seq, gid, grp = hit
            grp = merge_group(grp, item)
            moved.append((app, user, old_seq))
        entries.append((app, user, seq, nid, created, expires, key, gid, grp))
        members.append((app, user, nid, gid, created))
        by_user[user].group = group_view(grp, gid)
    conn.executemany("DELETE FROM inbox WHERE app_id=? AND user_id=? AND seq=?", moved)
    conn.executemany(
        "INSERT INTO inbox(app_id, user_id, seq, nid, created_at, expires_at, group_key, gid, "
        "grp) VALUES (?,?,?,?,?,?,?,?,?)", entries,
    )
    conn.executemany(
        "INSERT INTO group_members(app_id, user_id, nid, gid, created_at) VALUES (?,?,?,?,?)",
        members,
    )


def retract_tx(
    conn: sqlite3.Connection, app_id: str, nid: str, now: float
) -> tuple[list[str], list[tuple[str, Entry]], list[str]]:
    """``nid`` is being retracted: take it out of every group entry holding
    it.  Returns ``(users, regrouped, unread)``: the users whose entries held
    it, the entries left with members as they are now (live at ``now``), and
    the users whose unread entry went (emptied, or now expired)."""
    held = conn.execute(
        "DELETE FROM group_members WHERE app_id=? AND nid=? RETURNING user_id, gid",
        (app_id, nid),
    ).fetchall()
    regrouped: list[tuple[str, Entry]] = []
    unread: list[str] = []
    for user, gid in sorted(held):
        rebuilt = rebuild_tx(conn, app_id, user, gid)
        if rebuilt is None:
            continue
        state, entry, expires = rebuilt
        if entry is not None and (expires is None or expires > now):
            regrouped.append((user, entry))
        elif state < 2:
            unread.append(user)
    return [u for u, _ in held], regrouped, unread


def rebuild_tx(
    conn: sqlite3.Connection, app_id: str, user: str, gid: str
) -> tuple[int, Entry | None, float | None] | None:
    """Make the user's group entry ``gid`` what its members are now (after
    one was retracted or pruned): its summary rebuilt from them, the entry
    showing the newest (its id, time and expiry; same seq).  An entry left
    with none is deleted.  Returns ``(state, entry or None when deleted,
    expires_at)``, or None when the user has no such entry."""
    found = conn.execute(
        "SELECT seq, group_key, state FROM inbox WHERE app_id=? AND user_id=? AND gid=?",
        (app_id, user, gid),
    ).fetchone()
    if found is None:
        return None
    seq, key, state = found
    rest = conn.execute(
        "SELECT n.id, n.category, n.body, n.created_at, n.expires_at FROM group_members m "
        "JOIN notifications n ON n.app_id=m.app_id AND n.id=m.nid "
        "WHERE m.app_id=? AND m.user_id=? AND m.gid=? AND n.deleted=0", (app_id, user, gid),
    ).fetchall()
    grp = rebuild_group(key, [r[:3] for r in rest])
    if grp is None:
        conn.execute("DELETE FROM inbox WHERE app_id=? AND user_id=? AND seq=?",
                     (app_id, user, seq))
        return state, None, None
    newest, _, body, created_at, expires_at = max(rest)
    conn.execute(
        "UPDATE inbox SET nid=?, grp=?, created_at=?, expires_at=? "
        "WHERE app_id=? AND user_id=? AND seq=?",
        (newest, grp, created_at, expires_at, app_id, user, seq),
    )
    entry = Entry(newest, body, STATE_NAME[state], created_at, seq=seq, group=group_view(grp, gid))
    return state, entry, expires_at


def prune_tx(conn: sqlite3.Connection, app_id: str | None, older_than: float,
             now: float) -> list[tuple[str, str, Entry]]:
    """Retention for group memberships (after the entries and notifications
    older than ``older_than`` went): members that old leave their entries,
    and each entry that keeps others is rebuilt from them, so that its
    count, actors and ``first_id`` claim no member it no longer holds.
    Returns those entries as they are now, ``(app, user, entry)``, the ones
    live at ``now``."""
    where, args = ("", ()) if app_id is None else (" AND m.app_id=?", (app_id,))
    touched = conn.execute(
        "SELECT DISTINCT m.app_id, m.user_id, m.gid FROM group_members m JOIN inbox i "
        "ON i.app_id=m.app_id AND i.user_id=m.user_id AND i.gid=m.gid "
        "WHERE m.created_at<?" + where, (older_than, *args),
    ).fetchall()
    conn.execute("DELETE FROM group_members WHERE created_at<?" + where.replace("m.", ""),
                 (older_than, *args))
    regrouped: list[tuple[str, str, Entry]] = []
    for app, user, gid in touched:
        rebuilt = rebuild_tx(conn, app, user, gid)
        if rebuilt is not None and rebuilt[1] is not None and (
                rebuilt[2] is None or rebuilt[2] > now):
            regrouped.append((app, user, rebuilt[1]))
    return regrouped


def current_ids(conn: sqlite3.Connection, app_id: str, user: str, ids: list[str]) -> list[str]:
    """The ids the user's group entries show now, for any member ``ids``:
    marking an older member read marks the entry that holds it."""
    found: list[str] = []
    for part in _chunks(ids):
        marks = ",".join("?" * len(part))
        found += [r[0] for r in conn.execute(
            "SELECT i.nid FROM group_members m JOIN inbox i ON i.app_id=m.app_id "
            "AND i.user_id=m.user_id AND i.gid=m.gid "
            f"WHERE m.app_id=? AND m.user_id=? AND m.nid IN ({marks})",
            (app_id, user, *part),
        )]
    return found


def state_counts(conn: sqlite3.Connection, app_id: str, nid: str) -> list[tuple[int, int]]:
    """(state, users) of the group entries holding ``nid``."""
    return conn.execute(
        "SELECT i.state, count(*) FROM group_members m JOIN inbox i ON i.app_id=m.app_id "
        "AND i.user_id=m.user_id AND i.gid=m.gid WHERE m.app_id=? AND m.nid=? GROUP BY i.state",
        (app_id, nid),
    ).fetchall()


def members(
    conn: sqlite3.Connection, app_id: str, user: str, nid: str, limit: int,
    before: str | None, now: float,
) -> tuple[Entry, list[Entry]] | None:
    head = conn.execute(
        "SELECT i.nid, n.body, i.state, n.created_at, i.seq, i.gid, i.grp "
        "FROM group_members m JOIN inbox i ON i.app_id=m.app_id AND i.user_id=m.user_id "
        "AND i.gid=m.gid JOIN notifications n ON n.app_id=i.app_id AND n.id=i.nid "
        "WHERE m.app_id=? AND m.user_id=? AND m.nid=? "
        "AND (i.expires_at IS NULL OR i.expires_at>?)", (app_id, user, nid, now),
    ).fetchone()
    if head is None:
        return None
    hid, body, state, created, seq, gid, grp = head
    entry = Entry(hid, body, STATE_NAME[state], created, seq=seq, group=group_view(grp, gid))
    bound, args = ("", ()) if before is None else (" AND m.nid<?", (before,))
    rows = conn.execute(
        "SELECT n.id, n.body, n.created_at FROM group_members m JOIN notifications n "
        "ON n.app_id=m.app_id AND n.id=m.nid WHERE m.app_id=? AND m.user_id=? AND m.gid=? "
        "AND n.deleted=0" + bound + " ORDER BY m.nid DESC LIMIT ?",
        (app_id, user, gid, *args, limit),
    ).fetchall()
    return entry, [Entry(r[0], r[1], entry.state, r[2]) for r in rows]


def personal_entries(rows) -> list[Entry]:
    """Entries from ``(id, body, state, created_at, seq, gid, grp)`` rows,
    perhaps followed by the entry's ``page_key`` and ``snoozed_until``."""
    width = len(rows[0]) if rows else 0  # one statement's rows: all alike
    return [
        Entry(r[0], r[1], STATE_NAME[r[2]], r[3], seq=r[4],
              group=None if r[5] is None else group_view(r[6], r[5]),
              key=r[7] if width > 7 else None, snoozed_until=r[8] if width > 8 else None)
        for r in rows
    ]
