"""The SQLite store's group entries (aggregation by ``group_key``).

``*_tx`` functions run on the writer thread inside a publish, delete or
state change (store.py); the others are reads on the event loop's
connection.  The data layout is described in tidings/store/codec.py.
"""

from __future__ import annotations

import sqlite3

from tidings.store.base import Delivery, Entry, NewNotification
from tidings.store.codec import group_view, merge_group, new_group, rebuild_group

__all__ = ["current_ids", "insert_entries_tx", "members", "personal_entries", "retract_tx",
           "state_counts"]

_CHUNK = 500
STATE_NAME = ("unseen", "seen", "read", "archived")


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


def retract_tx(conn: sqlite3.Connection, app_id: str, nid: str) -> None:
    """``nid`` is being retracted: take it out of every group entry holding
    it.  An entry left with members points at the newest one (same seq,
    summary rebuilt); an entry left empty is deleted with the other entries
    of ``nid`` by the caller."""
    held = conn.execute(
        "SELECT user_id, gid FROM group_members WHERE app_id=? AND nid=?", (app_id, nid)
    ).fetchall()
    conn.execute("DELETE FROM group_members WHERE app_id=? AND nid=?", (app_id, nid))
    for user, gid in held:
        entry = conn.execute(
            "SELECT seq, group_key FROM inbox WHERE app_id=? AND user_id=? AND gid=?",
            (app_id, user, gid),
        ).fetchone()
        if entry is None:
            continue
        rest = conn.execute(
            "SELECT n.id, n.category, n.body FROM group_members m JOIN notifications n "
            "ON n.app_id=m.app_id AND n.id=m.nid WHERE m.app_id=? AND m.user_id=? AND m.gid=? "
            "AND n.deleted=0 AND n.id<>?", (app_id, user, gid, nid),
        ).fetchall()
        grp = rebuild_group(entry[1], rest)
        if grp is None:
            conn.execute("DELETE FROM inbox WHERE app_id=? AND user_id=? AND seq=?",
                         (app_id, user, entry[0]))
        else:
            conn.execute("UPDATE inbox SET nid=?, grp=? WHERE app_id=? AND user_id=? AND seq=?",
                         (max(r[0] for r in rest), grp, app_id, user, entry[0]))


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
    """Entries from ``(id, body, state, created_at, seq, gid, grp)`` rows."""
    return [
        Entry(r[0], r[1], STATE_NAME[r[2]], r[3], seq=r[4],
              group=None if r[5] is None else group_view(r[6], r[5]))
        for r in rows
    ]
