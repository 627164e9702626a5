"""The SQLite store's outbound half: destinations and the job queue
(the contract is tidings/store/outbound.py; the schema sql/sqlite_003.sql).

Mixed into :class:`~tidings.store.sqlite.SQLiteStore`, whose one writer
thread runs every write: a claim's select-and-lease is one transaction on
the only writer, so two claims never hand out one job.  Several processes on
one file (``tidings serve --workers N``) serialise on SQLite's write lock
(``BEGIN IMMEDIATE``) the same way.  An idle worker polls: the claim first
looks on the read connection and takes the writer only when a job is due,
so polling costs no commit.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import msgspec

from tidings.channels.base import Job
from tidings.core import retime
from tidings.core.models import Preferences
from tidings.core.seal import Seal
from tidings.store.outbound import (
    Destinations,
    EmailAddress,
    JobRecord,
    NewJob,
    OutboundStore,
    PushSubscription,
    QueueStats,
    WebhookEndpoint,
)
from tidings.store.sealed import open_webhook, webhook_place
from tidings.store.sqlite.audit import insert_audit
from tidings.store.sqlite.digests import held_tx, hold_tx, move_tx
from tidings.store.sqlite.timeline import log_attempt_tx, prune_attempts_tx

__all__ = ["SQLiteOutbound", "insert_jobs_tx", "retime_tx"]

_encode = msgspec.json.encode
_decode = msgspec.json.decode
_decode_prefs = msgspec.json.Decoder(Preferences).decode
_CHUNK = 500  # host parameters per IN (...) list

_JOB = ("id, channel, app_id, user_id, notification, destination, created_at, expires_at, "
        "attempts, last_error")
_RECORD = ("id, app_id, user_id, nid, channel, destination, status, not_before, attempts, "
           "last_error, created_at, updated_at, expires_at, fallback")
# Both halves scan an index that holds every column they read (jobs_due,
# jobs_dead_age; sql/sqlite_011.sql): no row is read, blobs and all.
_STATS = ("SELECT channel, 0, count(*), count(*) FILTER (WHERE not_before <= ?), "
          "min(not_before) FROM jobs WHERE status = 'queued' GROUP BY channel UNION ALL "
          "SELECT channel, 1, count(*), 0, NULL FROM jobs WHERE status = 'dead' GROUP BY channel")
_DUE = ("status = 'queued' AND channel = ? AND not_before <= ? "
        "AND (lease_until IS NULL OR lease_until <= ?)")


def _job(row) -> Job:
    return Job(id=row[0], channel=row[1], app=row[2], user=row[3], notification=row[4],
               destination=_decode(row[5]), created_at=row[6], expires_at=row[7],
               attempts=row[8], last_error=row[9])


def _record(row) -> JobRecord:
    return JobRecord(id=row[0], app=row[1], user=row[2], nid=row[3], channel=row[4],
                     destination=_decode(row[5]), status=row[6], not_before=row[7],
                     attempts=row[8], last_error=row[9], created_at=row[10],
                     updated_at=row[11], expires_at=row[12], fallback=bool(row[13]))


class SQLiteOutbound(OutboundStore):
    # Provided by SQLiteStore: _write (the writer thread), _q and _q1 (reads).
    _write: Callable[..., asyncio.Future]
    _q: Callable[..., list]
    _q1: Callable[..., Any]
    seal: Seal  # the store's (tidings/store/base.py)

    # -- webhook endpoints ------------------------------------------------------------
    async def add_webhook(self, app_id, endpoint, limit, *, audit=None) -> bool:
        stored = self.seal.wrap(endpoint.secret, webhook_place(app_id, endpoint.id), "secret")

        def add(conn):
            (n,) = conn.execute("SELECT count(*) FROM webhooks WHERE app_id=?",
                                (app_id,)).fetchone()
            if n >= limit:
                return False
            conn.execute(
                "INSERT INTO webhooks(app_id, id, url, secret, created_at) VALUES (?,?,?,?,?)",
                (app_id, endpoint.id, endpoint.url, stored, endpoint.created_at),
            )
            insert_audit(conn, audit)
            return True

        return await self._write(add)

    async def list_webhooks(self, app_id) -> list[WebhookEndpoint]:
        rows = self._q(
            "SELECT id, url, secret, created_at, previous_secret, previous_until FROM webhooks "
            "WHERE app_id=? ORDER BY created_at, id", (app_id,),
        )
        return [open_webhook(self.seal, app_id, r) for r in rows]

    async def rotate_webhook(self, app_id, wid, secret, overlap_until, *, audit=None):
        where = webhook_place(app_id, wid)
        stored = self.seal.wrap(secret, where, "secret")

        def rotate(conn):
            row = conn.execute("SELECT secret FROM webhooks WHERE app_id=? AND id=?",
                               (app_id, wid)).fetchone()
            if row is None:
                return None
            previous = self.seal.moved(row[0], where, "secret", "previous_secret")
            row = conn.execute(
                "UPDATE webhooks SET previous_secret=?, previous_until=?, secret=? "
                "WHERE app_id=? AND id=? "
                "RETURNING id, url, secret, created_at, previous_secret, previous_until",
                (previous, overlap_until, stored, app_id, wid),
            ).fetchone()
            insert_audit(conn, audit)
            return row

        row = await self._write(rotate)
        return open_webhook(self.seal, app_id, row) if row else None

    async def delete_webhook(self, app_id, wid, *, audit=None) -> bool:
        def delete(conn):
            if not conn.execute("DELETE FROM webhooks WHERE app_id=? AND id=?",
                                (app_id, wid)).rowcount:
                return False
            insert_audit(conn, audit)
            return True

        return bool(await self._write(delete))

    # -- push subscriptions and e-mail ------------------------------------------------
    async def add_push_subscription(self, app_id, user, sub, keep) -> None:
        def add(conn):
            conn.execute(
                "INSERT INTO push_subscriptions(app_id, user_id, id, endpoint, p256dh, auth, "
                "created_at) VALUES (?,?,?,?,?,?,?) ON CONFLICT(app_id, user_id, id) DO UPDATE "
                "SET endpoint=excluded.endpoint, p256dh=excluded.p256dh, auth=excluded.auth, "
                "created_at=excluded.created_at",
                (app_id, user, sub.id, sub.endpoint, sub.p256dh, sub.auth, sub.created_at),
            )
            conn.execute(
                "DELETE FROM push_subscriptions WHERE app_id=? AND user_id=? AND id NOT IN "
                "(SELECT id FROM push_subscriptions WHERE app_id=? AND user_id=? "
                " ORDER BY created_at DESC, id LIMIT ?)",
                (app_id, user, app_id, user, keep),
            )

        await self._write(add)

    async def list_push_subscriptions(self, app_id, user) -> list[PushSubscription]:
        rows = self._q(
            "SELECT id, endpoint, p256dh, auth, created_at FROM push_subscriptions "
            "WHERE app_id=? AND user_id=? ORDER BY created_at DESC, id", (app_id, user),
        )
        return [PushSubscription(*r) for r in rows]

    async def delete_push_subscription(self, app_id, user, sid) -> bool:
        def delete(conn):
            return conn.execute(
                "DELETE FROM push_subscriptions WHERE app_id=? AND user_id=? AND id=?",
                (app_id, user, sid),
            ).rowcount

        return bool(await self._write(delete))

    async def set_email(self, app_id, user, email) -> bool:
        def put(conn):
            had = conn.execute("SELECT 1 FROM emails WHERE app_id=? AND user_id=?",
                               (app_id, user)).fetchone() is not None
            if email is None:
                conn.execute("DELETE FROM emails WHERE app_id=? AND user_id=?", (app_id, user))
            else:
                conn.execute(
                    "INSERT INTO emails(app_id, user_id, address, name) VALUES (?,?,?,?) "
                    "ON CONFLICT(app_id, user_id) DO UPDATE SET address=excluded.address, "
                    "name=excluded.name", (app_id, user, email.address, email.name),
                )
            return had

        return await self._write(put)

    async def get_email(self, app_id, user) -> EmailAddress | None:
        row = self._q1("SELECT address, name FROM emails WHERE app_id=? AND user_id=?",
                       (app_id, user))
        return EmailAddress(*row) if row else None

    async def preferences_of(self, app_id, users) -> dict[str, Preferences]:
        out = {}
        for i in range(0, len(users), _CHUNK):
            part = users[i:i + _CHUNK]
            marks = ",".join("?" * len(part))
            for user, doc in self._q(
                f"SELECT user_id, doc FROM prefs WHERE app_id=? AND user_id IN ({marks})",
                (app_id, *part),
            ):
                out[user] = _decode_prefs(doc)
        return out

    async def destinations(self, app_id, users) -> dict[str, Destinations]:
        out: dict[str, Destinations] = {}
        for i in range(0, len(users), _CHUNK):
            part = users[i:i + _CHUNK]
            marks = ",".join("?" * len(part))
            for user, *sub in self._q(
                "SELECT user_id, id, endpoint, p256dh, auth, created_at FROM push_subscriptions "
                f"WHERE app_id=? AND user_id IN ({marks}) ORDER BY created_at DESC, id",
                (app_id, *part),
            ):
                out.setdefault(user, Destinations()).push.append(PushSubscription(*sub))
            for user, address, name in self._q(
                "SELECT user_id, address, name FROM emails "
                f"WHERE app_id=? AND user_id IN ({marks})",
                (app_id, *part),
            ):
                out.setdefault(user, Destinations()).email = EmailAddress(address, name)
        return out

    # -- caps -----------------------------------------------------------------------
    async def get_caps(self, app_id) -> bytes | None:
        row = self._q1("SELECT doc FROM caps WHERE app_id=?", (app_id,))
        return row[0] if row else None

    async def put_caps(self, app_id, doc, *, audit=None) -> None:
        def put(conn):
            conn.execute("INSERT INTO caps(app_id, doc) VALUES (?,?) "
                         "ON CONFLICT(app_id) DO UPDATE SET doc=excluded.doc", (app_id, doc))
            insert_audit(conn, audit)

        await self._write(put)

    # -- the job queue --------------------------------------------------------------
    async def enqueue_jobs(self, jobs: list[NewJob],
                           fired: tuple[str, str] | None = None) -> list[tuple[str, str]]:
        if not jobs and fired is None:
            return []

        def insert(conn):
            # the status change first: whoever changes it queues the jobs, once
            if fired is not None and conn.execute(
                    "UPDATE scheduled SET status='sent' WHERE app_id=? AND id=? "
                    "AND status='fired' RETURNING 1", fired).fetchone() is None:
                return []
            return insert_jobs_tx(conn, jobs) if jobs else []

        return await self._write(insert)

    async def claim_jobs(self, channel, n, now, lease) -> list[Job]:
        # Look first on the read connection: an idle poll costs no write.
        if self._q1(f"SELECT 1 FROM jobs WHERE {_DUE} LIMIT 1", (channel, now, now)) is None:
            return []

        def claim(conn):
            return conn.execute(
                f"UPDATE jobs SET lease_until=? WHERE id IN (SELECT id FROM jobs WHERE {_DUE} "
                f"ORDER BY not_before, id LIMIT ?) RETURNING {_JOB}, not_before",
                (now + lease, channel, now, now, n),
            ).fetchall()

        rows = await self._write(claim)
        rows.sort(key=lambda r: (r[-1], r[0]))  # RETURNING keeps no order
        return [_job(r) for r in rows]

    async def complete_job(self, job_id, now=None) -> None:
        def delete(conn):
            log_attempt_tx(conn, job_id, time.time() if now is None else now, "sent", None, None)
            conn.execute("DELETE FROM jobs WHERE id=? AND status='queued'", (job_id,))

        await self._write(delete)

    async def retry_job(self, job, at, now) -> None:
        def retry(conn):
            log_attempt_tx(conn, job.id, now, "failed", job.last_error, at)
            conn.execute(
                "UPDATE jobs SET attempts=?, last_error=?, not_before=?, lease_until=NULL, "
                "updated_at=? WHERE id=? AND status='queued'",
                (job.attempts, job.last_error, at, now, job.id),
            )

        await self._write(retry)

    async def release_job(self, job, at, now) -> None:
        def release(conn):
            conn.execute(
                "UPDATE jobs SET not_before=?, lease_until=NULL, updated_at=? "
                "WHERE id=? AND status='queued'", (at, now, job.id))

        await self._write(release)

    async def kill_job(self, job, reason, now) -> None:
        def kill(conn):
            log_attempt_tx(conn, job.id, now, "dead", reason, None)
            conn.execute(
                "UPDATE jobs SET status='dead', attempts=?, last_error=?, lease_until=NULL, "
                "updated_at=? WHERE id=? AND status='queued'",
                (job.attempts, reason, now, job.id),
            )

        await self._write(kill)

    async def mute_job(self, job, reason, now) -> bool:
        def mute(conn):
            log_attempt_tx(conn, job.id, now, "muted", reason, None)
            return conn.execute("DELETE FROM jobs WHERE id=? AND status='queued'",
                                (job.id,)).rowcount

        return bool(await self._write(mute))

    async def cancel_fallbacks(self, app_id, user, nids) -> list[tuple[str, str]]:
        def cancel(conn):
            where = "app_id=? AND user_id=? AND status='queued' AND fallback=1"
            if nids is None:
                return conn.execute(f"DELETE FROM jobs WHERE {where} RETURNING nid, channel",
                                    (app_id, user)).fetchall() + conn.execute(
                    "DELETE FROM digest_items WHERE app_id=? AND user_id=? RETURNING nid, channel",
                    (app_id, user)).fetchall()
            gone = []
            for i in range(0, len(nids), _CHUNK):
                part = nids[i:i + _CHUNK]
                marks = ",".join("?" * len(part))
                gone += conn.execute(
                    f"DELETE FROM jobs WHERE {where} AND nid IN ({marks}) RETURNING nid, channel",
                    (app_id, user, *part)).fetchall()
                # A group entry stands for every notification merged into it.
                gone += conn.execute(
                    f"DELETE FROM digest_items WHERE app_id=? AND user_id=? AND (nid IN ({marks}) "
                    "OR nid IN (SELECT m.nid FROM group_members m JOIN group_members g "
                    "ON g.app_id=m.app_id AND g.user_id=m.user_id AND g.gid=m.gid "
                    f"WHERE g.app_id=? AND g.user_id=? AND g.nid IN ({marks}))) "
                    "RETURNING nid, channel", (app_id, user, *part, app_id, user, *part)).fetchall()
            return gone

        # Nothing queued or held for the user (the common case): no write at all.
        if self._q1("SELECT 1 FROM jobs WHERE app_id=? AND user_id=? AND status='queued' "
                    "AND fallback=1 LIMIT 1", (app_id, user)) is None and self._q1(
                "SELECT 1 FROM digest_items WHERE app_id=? AND user_id=? LIMIT 1",
                (app_id, user)) is None:
            return []
        return [tuple(r) for r in await self._write(cancel)]

    async def cancel_jobs(self, app_id, nid) -> int:
        def cancel(conn):
            return conn.execute("DELETE FROM jobs WHERE app_id=? AND nid=? AND status='queued'",
                                (app_id, nid)).rowcount + conn.execute(
                "DELETE FROM digest_items WHERE app_id=? AND nid=?", (app_id, nid)).rowcount

        return await self._write(cancel)

    async def update_jobs(self, app_id, nid, notification) -> int:
        def update(conn):
            return conn.execute(
                "UPDATE jobs SET notification=? WHERE app_id=? AND nid=? AND status='queued'",
                (notification, app_id, nid)).rowcount + conn.execute(
                "UPDATE digest_items SET notification=? WHERE app_id=? AND nid=?",
                (notification, app_id, nid)).rowcount

        return await self._write(update)

    async def queue_stats(self, now) -> dict[str, QueueStats]:
        return QueueStats.of_rows(self._q(_STATS, (now,)))

    async def list_jobs(self, app_id, *, status=None, nid=None, limit=100, before=None):
        where, args = ["app_id=?"], [app_id]
        if status is not None:
            where.append("status=?")
            args.append(status)
        if nid is not None:
            where.append("nid=?")
            args.append(nid)
        if before is not None:
            where.append("id<?")
            args.append(before)
        rows = self._q(f"SELECT {_RECORD} FROM jobs WHERE {' AND '.join(where)} "
                       "ORDER BY id DESC LIMIT ?", (*args, limit))
        return [_record(r) for r in rows]

    async def redrive_job(self, app_id, job_id, now, *, audit=None) -> bool:
        def redrive(conn):
            if not conn.execute(
                "UPDATE jobs SET status='queued', attempts=0, not_before=?, lease_until=NULL, "
                "updated_at=? WHERE app_id=? AND id=? AND status='dead'",
                (now, now, app_id, job_id),
            ).rowcount:
                return False
            insert_audit(conn, audit)
            return True

        return bool(await self._write(redrive))

    async def prune_jobs(self, older_than) -> int:
        def prune(conn):
            prune_attempts_tx(conn, older_than)
            return conn.execute("DELETE FROM jobs WHERE status='dead' AND updated_at<?",
                                (older_than,)).rowcount

        return await self._write(prune)


def insert_jobs_tx(conn, jobs: list[NewJob]) -> list[tuple[str, str]]:
    """Queue ``jobs`` inside the caller's transaction (enqueue_jobs, and a
    publish's own, publish.py); returns the (nid, channel) replaced.  Jobs
    with a ``digest`` key are held in their digest windows instead."""
    if any(n.digest is not None for n in jobs):
        hold_tx(conn, [n for n in jobs if n.digest is not None])
        jobs = [n for n in jobs if n.digest is None]
    rows = [
        (n.job.id, n.job.app, n.job.user, n.nid, n.job.channel, _encode(n.job.destination),
         n.job.notification, n.job.created_at, n.job.expires_at, n.not_before,
         n.job.attempts, n.job.last_error, int(n.fallback), n.job.created_at,
         n.collapse if n.fallback else None)
        for n in jobs
    ]
    groups = {(n.job.app, n.job.user, n.job.channel, n.collapse, n.nid, n.job.created_at)
              for n in jobs if n.fallback and n.collapse is not None}
    replaced = []
    for app, user, channel, key, nid, now in groups:
        replaced += conn.execute(
            "DELETE FROM jobs WHERE app_id=? AND user_id=? AND channel=? AND collapse=? "
            "AND status='queued' AND fallback=1 AND nid<>? "
            "AND (lease_until IS NULL OR lease_until<=?) RETURNING nid, channel",
            (app, user, channel, key, nid, now)).fetchall()
    conn.executemany(
        "INSERT INTO jobs(id, app_id, user_id, nid, channel, destination, notification, "
        "created_at, expires_at, not_before, attempts, last_error, fallback, updated_at, "
        "collapse) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?) ON CONFLICT(id) DO NOTHING",
        rows,
    )
    return [tuple(r) for r in replaced]


# Queued, never attempted, due later and not being sent: what re-timing moves.
_WAITING = ("app_id=? AND user_id=? AND status='queued' AND attempts=0 AND not_before>? "
            "AND (lease_until IS NULL OR lease_until<=?)")


def retime_tx(conn, app_id: str, user: str, retimer: retime.Retimer) -> None:
    """Re-time the user's waiting jobs and held digest items (their
    preferences changed), inside the caller's transaction."""
    now = retimer.now
    jobs = [retime.WaitingJob(r[0], r[1], r[2], r[3], bool(r[4]), r[5]) for r in conn.execute(
        "SELECT id, channel, created_at, not_before, fallback, notification FROM jobs "
        f"WHERE {_WAITING} ORDER BY not_before, id LIMIT ?",
        (app_id, user, now, now, retime.MAX_JOBS)).fetchall()]
    out = retimer(jobs, held_tx(conn, app_id, user))
    conn.executemany(
        f"UPDATE jobs SET not_before=?, updated_at=? WHERE id=? AND {_WAITING}",
        [(at, now, jid, app_id, user, now, now) for jid, at in out.jobs.items()])
    move_tx(conn, app_id, user, out)
