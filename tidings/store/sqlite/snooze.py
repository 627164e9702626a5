"""The SQLite store's snoozed entries (docs/inbox.md#snooze).

A snoozed entry is its inbox row with state 4 and ``snoozed_until``
(sqlite_022.sql).  Coming back takes the next seq of the user's stream from
the writer's heads (appends.py), as a publish does, so the entry is replayed
past any cursor older than that seq; ``page_key``, a time-ordered id of the
moment it came back, puts it first in pages.  Every ``*_tx`` runs on the one
writer, so an entry comes back once however many callers ask.
"""

from __future__ import annotations

from tidings.core.ids import new_id
from tidings.store.base import Entry, Resurfaced
from tidings.store.codec import group_view
from tidings.store.sqlite import groups as _groups
from tidings.store.sqlite.appends import WriterConnection
from tidings.store.sqlite.entries import entry_seqs
from tidings.store.sqlite.publish import bump_revs_tx

__all__ = ["SNOOZED", "next_snooze", "resurface_tx", "snooze_tx", "wake_tx"]

SNOOZED = 4  # the state code (sqlite_001.sql: 0 unseen .. 3 archived)
_CHUNK = 500


def snooze_tx(conn: WriterConnection, app_id: str, user: str, ids: list[str], until: float,
              now: float) -> list[str]:
    # an older member's id names the group entry that holds it now
    ids = list(dict.fromkeys(ids + _groups.current_ids(conn, app_id, user, ids)))
    changed: list[str] = []
    seqs = entry_seqs(conn, app_id, user, ids)
    for i in range(0, len(seqs), _CHUNK):
        part = seqs[i:i + _CHUNK]
        changed += [r[0] for r in conn.execute(
            f"UPDATE inbox SET state={SNOOZED}, snoozed_until=? WHERE app_id=? AND user_id=? "
            f"AND state<>3 AND (expires_at IS NULL OR expires_at>?) "
            f"AND seq IN ({','.join('?' * len(part))}) RETURNING nid",
            (until, app_id, user, now, *part))]
    if changed:
        bump_revs_tx(conn, app_id, [user])  # counts moved without a position
    return changed


def _back(conn: WriterConnection, app_id: str, user: str, seq: int, now: float) -> Resurfaced:
    """One snoozed row (found by its seq) back: the next seq, unseen, first."""
    (epoch,), (new_seq,) = conn.next_seqs(app_id, [user])
    key = new_id(int(now * 1000))
    nid, body, created, gid, grp = conn.execute(
        "UPDATE inbox SET seq=?, state=0, snoozed_until=NULL, page_key=? "
        "WHERE app_id=? AND user_id=? AND seq=? RETURNING nid, "
        "(SELECT body FROM notifications n WHERE n.app_id=inbox.app_id AND n.id=inbox.nid), "
        "(SELECT created_at FROM notifications n WHERE n.app_id=inbox.app_id AND n.id=inbox.nid), "
        "gid, grp", (new_seq, key, app_id, user, seq)).fetchone()
    entry = Entry(nid, body, "unseen", created, seq=new_seq, key=key,
                  group=None if gid is None else group_view(grp, gid))
    return Resurfaced(app_id, user, epoch, entry)


def resurface_tx(conn: WriterConnection, app_id: str, user: str, ids: list[str],
                 now: float) -> list[Resurfaced]:
    ids = list(dict.fromkeys(ids + _groups.current_ids(conn, app_id, user, ids)))
    seqs: list[int] = []
    found = entry_seqs(conn, app_id, user, ids)
    for i in range(0, len(found), _CHUNK):
        part = found[i:i + _CHUNK]
        seqs += [r[0] for r in conn.execute(
            f"SELECT seq FROM inbox WHERE app_id=? AND user_id=? AND state={SNOOZED} "
            f"AND seq IN ({','.join('?' * len(part))})", (app_id, user, *part))]
    return [_back(conn, app_id, user, seq, now) for seq in sorted(seqs)]


def wake_tx(conn: WriterConnection, now: float, limit: int) -> list[Resurfaced]:
    due = conn.execute(
        f"SELECT app_id, user_id, seq FROM inbox WHERE snoozed_until<=? AND state={SNOOZED} "
        "ORDER BY snoozed_until LIMIT ?", (now, limit)).fetchall()
    return [_back(conn, app_id, user, seq, now) for app_id, user, seq in due]


def next_snooze(conn) -> float | None:
    return conn.execute(
        f"SELECT min(snoozed_until) FROM inbox WHERE snoozed_until IS NOT NULL "
        f"AND state={SNOOZED}").fetchone()[0]
