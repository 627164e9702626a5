"""One user's timeline of one notification, and the outbound attempt log (PostgreSQL).

The attempt log is written by the statement that records an attempt's
result (``complete_job``, ``retry_job``, ``kill_job``: a CTE of theirs, one
transaction); ``prune_jobs`` drops it with the dead letters.
"""

from __future__ import annotations

from tidings.store.base import Attempt, DeviceReceipt, UserTimeline

__all__ = ["log_attempt", "outbound_users", "timeline"]


def log_attempt(result: str, at: str, error: str, next_at: str) -> str:
    """A CTE that logs the attempt of queued job ``$1`` that just ended (its
    row's ``attempts`` counts the failures before this one); the other
    arguments are SQL expressions (parameters) for its columns."""
    return (
        "WITH logged AS (INSERT INTO job_attempts (app_id, nid, user_id, job_id, attempt, "
        "channel, at, result, error, next_at) SELECT app_id, nid, user_id, id, attempts + 1, "
        f"channel, {at}, '{result}', {error}, {next_at} FROM jobs "
        "WHERE id = $1 AND status = 'queued') "
    )


_NOTIFICATION = """
SELECT coalesce(s.created_at, n.created_at), n.committed_at, n.feed_offset, n.audience
FROM notifications n LEFT JOIN scheduled s ON s.app_id = n.app_id AND s.id = n.id
WHERE n.app_id = $1 AND n.id = $2 AND NOT n.deleted
"""
# a notification merged into a group entry is that entry's now
_PERSONAL = """
SELECT seen_at, read_at, archived_at FROM inbox
WHERE app_id = $1 AND user_id = $3 AND (nid = $2 OR gid IN (
  SELECT gid FROM group_members WHERE app_id = $1 AND user_id = $3 AND nid = $2))
LIMIT 1
"""


async def timeline(conn, app_id: str, nid: str, user: str) -> UserTimeline | None:
    row = await conn.fetchrow(_NOTIFICATION, app_id, nid)
    if row is None:
        return None
    accepted, committed, feed_offset, audience = row
    out = UserTimeline(accepted, committed, recipient=False)
    if feed_offset is not None:
        out.recipient = audience == "*" or await conn.fetchval(
            "SELECT EXISTS (SELECT 1 FROM topic_subs WHERE app_id = $1 AND topic = $2 "
            "AND user_id = $3)", app_id, audience, user)
        times = await conn.fetchrow(
            "SELECT seen_at, read_at, archived_at FROM feed_state "
            "WHERE app_id = $1 AND user_id = $3 AND nid = $2", app_id, nid, user)
    else:
        times = await conn.fetchrow(_PERSONAL, app_id, nid, user)
        out.recipient = times is not None
    if times is not None:
        out.seen_at, out.read_at, out.archived_at = times
    out.receipts = {kind: at for kind, at in await conn.fetch(
        "SELECT kind, at FROM receipts WHERE app_id = $1 AND nid = $2 AND user_id = $3",
        app_id, nid, user)}
    out.devices = [DeviceReceipt(*r) for r in await conn.fetch(
        "SELECT kind, device, label, at FROM device_receipts "
        "WHERE app_id = $1 AND nid = $2 AND user_id = $3 ORDER BY at, kind, device",
        app_id, nid, user)]
    out.attempts = [Attempt(*r) for r in await conn.fetch(
        "SELECT job_id, channel, attempt, at, result, error, next_at FROM job_attempts "
        "WHERE app_id = $1 AND nid = $2 AND user_id = $3 ORDER BY at, job_id, attempt",
        app_id, nid, user)]
    return out


# Unique users per channel, from the queue (waiting and dead jobs) and the
# attempt log (a sent job is gone from the queue).
_USERS = """
WITH j (channel, user_id, r) AS (
  SELECT channel, user_id, status FROM jobs WHERE app_id = $1 AND nid = $2
  UNION ALL SELECT channel, user_id, result FROM job_attempts WHERE app_id = $1 AND nid = $2)
SELECT channel, count(DISTINCT user_id), count(DISTINCT user_id) FILTER (WHERE r = 'sent'),
       count(DISTINCT user_id) FILTER (WHERE r = 'dead')
FROM j GROUP BY channel
"""


async def outbound_users(conn, app_id: str, nid: str) -> dict[str, dict[str, int]]:
    return {channel: {"queued": q, "sent": s, "failed": f} for channel, q, s, f in
            await conn.fetch(_USERS, app_id, nid)}
