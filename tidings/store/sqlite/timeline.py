"""One user's timeline of one notification, and the outbound attempt log (SQLite).

The attempt log is written by the statements that record an attempt's
result (``complete_job``, ``retry_job``, ``kill_job``), in the same
transaction; ``prune_jobs`` drops it with the dead letters.
"""

from __future__ import annotations

import sqlite3

from tidings.store.base import Attempt, DeviceReceipt, UserTimeline
from tidings.store.sqlite.entries import user_entries

__all__ = ["log_attempt_tx", "outbound_users", "prune_attempts_tx", "timeline"]


def timeline(conn: sqlite3.Connection, app_id: str, nid: str, user: str) -> UserTimeline | None:
    row = conn.execute(
        "SELECT coalesce(s.created_at, n.created_at), n.committed_at, n.feed_offset, n.audience "
        "FROM notifications n LEFT JOIN scheduled s ON s.app_id=n.app_id AND s.id=n.id "
        "WHERE n.app_id=? AND n.id=? AND n.deleted=0", (app_id, nid)).fetchone()
    if row is None:
        return None
    accepted, committed, feed_offset, audience = row
    out = UserTimeline(accepted, committed, recipient=False)
    if feed_offset is not None:
        out.recipient = audience == "*" or conn.execute(
            "SELECT 1 FROM topic_subs WHERE app_id=? AND topic=? AND user_id=?",
            (app_id, audience, user)).fetchone() is not None
        times = conn.execute(
            "SELECT seen_at, read_at, archived_at FROM feed_state "
            "WHERE app_id=? AND user_id=? AND nid=?", (app_id, user, nid)).fetchone()
    else:
        # a notification merged into a group entry is that entry's now
        times = conn.execute(
            "SELECT seen_at, read_at, archived_at FROM inbox WHERE app_id=?1 AND user_id=?2 "
            f"AND seq IN ({user_entries('?1', '?2', '?3', groups=False)}) "
            "UNION ALL SELECT seen_at, read_at, archived_at FROM inbox INDEXED BY inbox_gid "
            "WHERE app_id=?1 AND user_id=?2 AND gid IN (SELECT gid FROM group_members "
            "WHERE app_id=?1 AND user_id=?2 AND nid=?3) LIMIT 1",
            (app_id, user, nid)).fetchone()
        out.recipient = times is not None
    if times is not None:
        out.seen_at, out.read_at, out.archived_at = times
    out.receipts = dict(conn.execute(
        "SELECT kind, at FROM receipts WHERE app_id=? AND nid=? AND user_id=?",
        (app_id, nid, user)).fetchall())
    out.devices = [DeviceReceipt(*r) for r in conn.execute(
        "SELECT kind, device, label, at FROM device_receipts "
        "WHERE app_id=? AND nid=? AND user_id=? ORDER BY at, kind, device", (app_id, nid, user))]
    out.attempts = [Attempt(*r) for r in conn.execute(
        "SELECT job_id, channel, attempt, at, result, error, next_at FROM job_attempts "
        "WHERE app_id=? AND nid=? AND user_id=? ORDER BY at, job_id, attempt",
        (app_id, nid, user))]
    return out


# Unique users per channel, from the queue (waiting and dead jobs) and the
# attempt log (a sent job is gone from the queue).
_USERS = """
WITH j (channel, user_id, r) AS (
  SELECT channel, user_id, status FROM jobs WHERE app_id=? AND nid=?
  UNION ALL SELECT channel, user_id, result FROM job_attempts WHERE app_id=? AND nid=?)
SELECT channel, count(DISTINCT user_id), count(DISTINCT CASE WHEN r='sent' THEN user_id END),
       count(DISTINCT CASE WHEN r='dead' THEN user_id END)
FROM j GROUP BY channel
"""


def outbound_users(conn: sqlite3.Connection, app_id: str, nid: str) -> dict[str, dict[str, int]]:
    return {channel: {"queued": q, "sent": s, "failed": f} for channel, q, s, f in
            conn.execute(_USERS, (app_id, nid, app_id, nid))}


def log_attempt_tx(conn: sqlite3.Connection, job_id: str, at: float, result: str,
                   error: str | None, next_at: float | None) -> None:
    """Log the attempt of queued job ``job_id`` that just ended: call it
    before the row is deleted or changed (the row's ``attempts`` counts the
    failures before this one)."""
    conn.execute(
        "INSERT INTO job_attempts(app_id, nid, user_id, job_id, attempt, channel, at, result, "
        "error, next_at) SELECT app_id, nid, user_id, id, attempts + 1, channel, ?, ?, ?, ? "
        "FROM jobs WHERE id=? AND status='queued'",
        (at, result, error, next_at, job_id))


def prune_attempts_tx(conn: sqlite3.Connection, older_than: float) -> int:
    return conn.execute("DELETE FROM job_attempts WHERE at<?", (older_than,)).rowcount
