"""The SQLite store's scheduled notifications and delivery counters.

Functions named ``*_tx`` run on the store's writer thread inside its group
commit (store.py); the others are reads on the event loop's connection.
One writer is what makes a scheduled notification fire once on SQLite: the
claim, the frequency caps and outbound plan (``prepare``), the publish with
its jobs and the status change are one transaction of the only connection
that writes, and several processes sharing the file queue on SQLite's write
lock (``BEGIN IMMEDIATE``).
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Callable, Mapping
from typing import Any

from tidings.core.receipts import MAX_DEVICES, Row, per_device
from tidings.store.base import (
    NewNotification,
    PublishOutcome,
    ScheduledEdit,
    ScheduledNotification,
)
from tidings.store.codec import decode_payload, edit_payload, encode_payload
from tidings.store.sqlite.appends import WriterConnection
from tidings.store.sqlite.entries import user_entries
from tidings.store.sqlite.errors import transient

__all__ = ["cancel_tx", "delivery_counts", "edit_tx", "fire_due_tx", "fired_unqueued",
           "get_scheduled", "mark_queued_tx", "next_due", "prune_tx", "receipt_counts",
           "record_deliveries_tx", "record_receipts_tx", "schedule_tx"]

log = logging.getLogger("tidings.store")


def schedule_tx(conn: sqlite3.Connection, app_id: str, item: NewNotification) -> PublishOutcome:
    conn.execute(
        "INSERT INTO scheduled(app_id, id, due_at, status, payload, expires_at, created_at) "
        "VALUES (?,?,?,'pending',?,?,?)",
        (app_id, item.id, item.deliver_at, encode_payload(item), item.expires_at,
         item.created_at),
    )
    return PublishOutcome(item.id, "scheduled", 0, body=item.body)


_DUE = ("SELECT app_id, id, due_at, payload, expires_at FROM scheduled "
        "WHERE status='pending' AND due_at<=? ORDER BY due_at LIMIT ?")


def fire_due_tx(
    conn: WriterConnection, now: float, limit: int, publish: Callable,
    prepare: Callable[[str, NewNotification], None] | None = None,
) -> list[tuple[str, PublishOutcome]]:
    """Claim and publish what is due, each in a savepoint of this one
    transaction: a notification that cannot be published is marked
    ``failed`` alone, and nothing is published twice (one writer, holding
    the file's write lock from the read of the due rows to the commit).
    ``prepare``: as ``Store.fire_due``'s, here a blocking call; it runs
    after the claim, so only the writer that fires a notification prepares
    it, and a cancel or an edit waits for the commit (they are writes)."""
    fired: list[tuple[str, PublishOutcome]] = []
    for app_id, nid, due_at, payload, expires_at in conn.execute(_DUE, (now, limit)).fetchall():
        if expires_at is not None and expires_at <= now:
            status, out = "expired", PublishOutcome(nid, "expired", 0)
        else:
            item = decode_payload(payload, due_at)
            if prepare is not None:
                prepare(app_id, item)  # an error leaves every row of this call pending
            status, out = _publish(conn, app_id, item, publish, prepared=prepare is not None)
        # the claim: only a row still pending changes, so nothing fires twice
        claimed = conn.execute(
            "UPDATE scheduled SET status=?, fired_at=? WHERE app_id=? AND id=? "
            "AND status='pending' RETURNING 1", (status, now, app_id, nid),
        ).fetchone()
        if claimed is None:
            raise RuntimeError("a scheduled notification changed under the writer")
        fired.append((app_id, out))
    return fired


def _publish(conn: WriterConnection, app_id: str, item: NewNotification, publish: Callable,
             *, prepared: bool) -> tuple[str, PublishOutcome]:
    """Publish one claimed notification in a savepoint; its new status and
    outcome.  Its outbound jobs commit with it ("sent"); if they cannot be
    written it is published without them ("fired", for a later pass)."""
    while True:
        # the writer's savepoint: a failed publish also leaves nothing
        # gathered behind and gives back the seqs it took (appends.py)
        heads = conn.savepoint()
        try:
            out = publish(conn, app_id, item)
        except Exception as exc:
            conn.rollback_to(heads)
            if transient(exc):
                raise  # the file, not the notification: it stays pending
            if item.jobs:
                log.exception("outbound jobs of scheduled notification %s/%s could not be "
                              "written; it is published without them", app_id, item.id)
                item.jobs = []
                prepared = False
                continue
            log.exception("scheduled notification %s/%s could not be published",
                          app_id, item.id)
            return "failed", PublishOutcome(item.id, "failed", 0)
        conn.release()
        if not prepared:  # its jobs are queued after the commit (Store.fired_unqueued)
            out.unqueued = True
            return "fired", out
        return "sent", out


def next_due(conn: sqlite3.Connection) -> float | None:
    return conn.execute("SELECT min(due_at) FROM scheduled WHERE status='pending'").fetchone()[0]


def get_scheduled(conn: sqlite3.Connection, app_id: str, nid: str) -> ScheduledNotification | None:
    row = conn.execute(
        "SELECT id, payload, due_at, expires_at, status, created_at, fired_at FROM scheduled "
        "WHERE app_id=? AND id=?", (app_id, nid),
    ).fetchone()
    if row is None:
        return None
    nid, payload, due_at, expires_at, status, created_at, fired_at = row
    body = decode_payload(payload, due_at).body
    return ScheduledNotification(nid, body, due_at, expires_at, status, created_at, fired_at)


def edit_tx(conn: sqlite3.Connection, app_id: str, nid: str,
            change: Callable[[ScheduledNotification], ScheduledEdit],
            ) -> ScheduledNotification | None:
    """Read, change and write a pending notification in one transaction of
    the one writer, which holds the file's write lock (``BEGIN IMMEDIATE``):
    no fire, from this process or another, comes between the two."""
    row: Any = conn.execute(
        "SELECT payload, due_at, expires_at, created_at FROM scheduled "
        "WHERE app_id=? AND id=? AND status='pending'", (app_id, nid)).fetchone()
    if row is None:
        return None
    payload, due_at, expires_at, created_at = row
    before = ScheduledNotification(nid, decode_payload(payload, due_at).body, due_at,
                                   expires_at, "pending", created_at, None)
    edit = change(before)
    conn.execute(
        "UPDATE scheduled SET payload=?, due_at=?, expires_at=? WHERE app_id=? AND id=? "
        "AND status='pending'",
        (edit_payload(payload, edit.body, edit.expires_at), edit.due_at, edit.expires_at,
         app_id, nid))
    return ScheduledNotification(nid, edit.body, edit.due_at, edit.expires_at, "pending",
                                 created_at, None)


def cancel_tx(conn: sqlite3.Connection, app_id: str, nid: str) -> bool:
    return conn.execute(
        "UPDATE scheduled SET status='cancelled', fired_at=NULL WHERE app_id=? AND id=? "
        "AND status='pending' RETURNING 1", (app_id, nid),
    ).fetchone() is not None


def prune_tx(conn: sqlite3.Connection, app_id: str | None, older_than: float, first_id: str):
    """Retention for the tables of this module: finished schedules, and the
    counters of notifications pruned (ids are time-ordered: every id below
    ``first_id`` is older than retention).  Group memberships: groups.py."""
    where, args = ("", ()) if app_id is None else (" AND app_id=?", (app_id,))
    conn.execute("DELETE FROM scheduled WHERE status<>'pending' AND created_at<?" + where,
                 (older_than, *args))
    conn.execute("DELETE FROM delivery_counts WHERE nid<?" + where, (first_id, *args))
    conn.execute("DELETE FROM receipts WHERE nid<?" + where, (first_id, *args))
    conn.execute("DELETE FROM device_receipts WHERE nid<?" + where, (first_id, *args))


def record_deliveries_tx(
    conn: sqlite3.Connection, counts: Mapping[tuple[str, str, str, str], int]
) -> None:
    conn.executemany(
        "INSERT INTO delivery_counts(app_id, nid, channel, field, n) VALUES (?,?,?,?,?) "
        "ON CONFLICT(app_id, nid, channel, field) DO UPDATE SET n = n + excluded.n",
        [(*key, n) for key, n in counts.items() if n],
    )


def delivery_counts(conn: sqlite3.Connection, app_id: str, nid: str) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {}
    for channel, field, n in conn.execute(
        "SELECT channel, field, n FROM delivery_counts WHERE app_id=? AND nid=? "
        "ORDER BY channel, field", (app_id, nid),
    ):
        out.setdefault(channel, {})[field] = n
    return out


# A device's row is kept only for a notification the user can see (an entry
# of their inbox, or a feed item of the app or of a topic they follow), and
# while the user has fewer than MAX_DEVICES devices of that kind (one
# statement per row, so the count sees the rows before it); the user's row
# in receipts comes with it (the trigger of sqlite_009.sql).  The condition
# sits in VALUES and makes ``device`` NULL when it fails, which OR IGNORE
# skips as a NOT NULL violation: an INSERT ... SELECT that reads its own
# table is run through a temporary table first, which costs more than the
# insert itself.
_DEVICE = (
    "INSERT OR IGNORE INTO device_receipts(app_id, nid, kind, user_id, device, label, at) "
    "VALUES (?1, ?2, ?3, ?4, CASE WHEN (EXISTS ("
    f"{user_entries('?1', '?4', '?2')}) OR EXISTS ("
    "SELECT 1 FROM notifications n WHERE n.app_id=?1 AND n.id=?2 AND n.feed_offset IS NOT NULL "
    "AND (n.audience='*' OR n.audience IN "
    "(SELECT topic FROM topic_subs WHERE app_id=?1 AND user_id=?4)))) AND ("
    "SELECT count(*) FROM device_receipts WHERE app_id=?1 AND nid=?2 AND user_id=?4 "
    f"AND kind=?3) < {MAX_DEVICES} THEN ?5 END, ?6, ?7)"
)


def record_receipts_tx(conn: sqlite3.Connection, receipts: list[Row]) -> None:
    conn.executemany(_DEVICE, per_device(receipts))


def receipt_counts(conn: sqlite3.Connection, app_id: str, nid: str) -> dict[str, int]:
    return dict(conn.execute(
        "SELECT kind, count(*) FROM receipts WHERE app_id=? AND nid=? GROUP BY kind",
        (app_id, nid)).fetchall())


def fired_unqueued(conn, before: float, limit: int) -> list[tuple[str, str, float]]:
    return [tuple(r) for r in conn.execute(
        "SELECT app_id, id, fired_at FROM scheduled WHERE status='fired' AND fired_at<? "
        "ORDER BY fired_at LIMIT ?", (before, limit))]


def mark_queued_tx(conn, fired: list[tuple[str, str]]) -> None:
    conn.executemany("UPDATE scheduled SET status='sent' WHERE app_id=? AND id=? "
                     "AND status='fired'", fired)
