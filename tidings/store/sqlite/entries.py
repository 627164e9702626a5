"""Finding a notification's plain inbox entries without an index on ``nid``.

Up to v22 the inbox had a full index ``inbox_nid (app_id, nid)``: one more
B-tree entry for every recipient of every publish, and under write fan-out
about 45% of SQLite's work per row (the entries of a group's publishes land
in as many places in the index's tail, which splits there again and again).
Since v23 (sqlite_023.sql) a notification's row carries ``seqs`` instead:
the JSON object ``{user: seq}`` of the plain entries (``gid IS NULL``) its
publish wrote, written once per notification.  A plain entry keeps its
``nid``; only a snoozed entry coming back moves to a new seq, and it then has
a ``page_key`` and is found through the small partial index ``inbox_back``.
Group entries are found through ``group_members`` (each member is listed
there) and ``inbox_gid``, as before.  So an entry of (user, nid) is one of

* the row at the seq ``seqs`` names for the user, still showing ``nid`` and
  without a ``page_key``;
* a row with a ``page_key`` showing ``nid`` (``inbox_back``);
* a group entry showing ``nid`` (``group_members``, ``inbox_gid``),

and no row is two of them.  The PostgreSQL store keeps its index.
"""

from __future__ import annotations

import sqlite3

import msgspec

__all__ = ["BACK", "BACK_WHERE", "PLAIN", "entry_seqs", "one_seq", "register", "seq_of",
           "seqs_json", "user_entries"]

_CHUNK = 400  # ids per IN (...) list (each is named twice or three times)
_str = msgspec.json.encode


def seqs_json(users: list[str], seqs: list[int]) -> str:
    """The ``seqs`` column of a publish to ``users`` (distinct) at ``seqs``."""
    return _str(dict(zip(users, seqs, strict=True))).decode()


def one_seq(user: str, seq: int) -> str:
    """:func:`seqs_json` of one user (the usual publish)."""
    return "{" + _str(user).decode() + ":" + str(seq) + "}"


def seq_of(seqs: str | None, user: str) -> int | None:
    """SQL function ``seq_of(seqs, user)``: the seq ``seqs`` names for ``user``.

    A search for ``{"user":`` or ``,"user":`` in the text, not a parse: one
    lookup in a 1,000-recipient object costs a microsecond or two, where
    parsing it would cost tens.  The key as the encoder writes it can only
    match a key there: inside a key, a quote is escaped, and the values are
    integers."""
    if seqs is None:
        return None
    key = _str(user).decode() + ":"
    at = seqs.find("{" + key)
    if at < 0:
        at = seqs.find("," + key)
        if at < 0:
            return None
    start = at + 1 + len(key)
    end = seqs.find(",", start)
    return int(seqs[start:end if end >= 0 else -1])


def register(conn: sqlite3.Connection) -> None:
    """Make ``seq_of`` known to ``conn`` (every connection of the store)."""
    conn.create_function("seq_of", 2, seq_of, deterministic=True)


# Where notification ?2 of app ?1 has its plain entries: the rows ``seqs``
# names (the subquery is a list of keys, each one search of the primary
# key), and the few back from a snooze.  INDEXED BY: without statistics the
# planner would rather walk the user's rows, or the app's, than a partial
# index, and INDEXED BY fails the statement instead of walking them.
PLAIN = ("app_id=?1 AND (user_id, seq) IN (SELECT j.key, j.value FROM notifications n, "
         "json_each(n.seqs) j WHERE n.app_id=?1 AND n.id=?2) AND nid=?2 AND page_key IS NULL")
BACK = "inbox INDEXED BY inbox_back"
BACK_WHERE = "app_id=?1 AND nid=?2 AND page_key IS NOT NULL AND gid IS NULL"


def user_entries(app: str, user: str, nids: str, *, groups: bool = True) -> str:
    """SQL selecting the seqs of user ``user``'s entries (app ``app``) that
    show one of the notifications ``nids`` (each a placeholder or a list of
    them): plain entries, then those back from a snooze, then (``groups``)
    group entries."""
    sql = (
        f"SELECT i.seq FROM notifications n JOIN inbox i ON i.app_id=n.app_id "
        f"AND i.user_id={user} AND i.seq=seq_of(n.seqs, {user}) AND i.nid=n.id "
        f"AND i.page_key IS NULL WHERE n.app_id={app} AND n.id IN ({nids}) "
        f"UNION ALL SELECT seq FROM {BACK} WHERE app_id={app} AND nid IN ({nids}) "
        f"AND user_id={user} AND page_key IS NOT NULL AND gid IS NULL"
    )
    if groups:
        sql += (
            f" UNION ALL SELECT i.seq FROM group_members m JOIN inbox i INDEXED BY inbox_gid "
            f"ON i.app_id=m.app_id AND i.user_id=m.user_id AND i.gid=m.gid AND i.nid=m.nid "
            f"WHERE m.app_id={app} AND m.user_id={user} AND m.nid IN ({nids})"
        )
    return sql


def entry_seqs(conn: sqlite3.Connection, app_id: str, user: str, ids: list[str],
               *, groups: bool = True) -> list[int]:
    """The seqs of the user's entries that show one of ``ids``."""
    found: list[int] = []
    for i in range(0, len(ids), _CHUNK):
        part = ids[i:i + _CHUNK]
        marks = ",".join(f"?{k}" for k in range(3, len(part) + 3))
        found += [r[0] for r in conn.execute(
            user_entries("?1", "?2", marks, groups=groups), (app_id, user, *part))]
    return found
