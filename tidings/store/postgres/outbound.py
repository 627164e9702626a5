"""The PostgreSQL store's outbound half: destinations and the job queue
(the contract is tidings/store/outbound.py; the schema sql/postgres_003.sql).

Mixed into :class:`~tidings.store.postgres.PostgresStore`.  Any number of
nodes claim from one table, so a claim is one statement that selects the
due jobs ``FOR UPDATE SKIP LOCKED`` and leases them: two nodes claiming at
the same instant skip each other's rows instead of waiting for them, and
neither can take a job the other holds until the lease (``lease_until``)
runs out.  Leases compare the claiming node's clock with the one that
leased; keep node clocks in sync (NTP) and the lease well above the send
timeout (docs/channels.md).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
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
from tidings.store.postgres.audit import insert_audit
from tidings.store.postgres.digests import held, hold, move
from tidings.store.postgres.timeline import log_attempt
from tidings.store.sealed import open_webhook, webhook_place

__all__ = ["PostgresOutbound", "insert_jobs", "retime_jobs"]

_encode = msgspec.json.encode
_decode = msgspec.json.decode
_decode_prefs = msgspec.json.Decoder(Preferences).decode

_JOB = ("j.id, j.channel, j.app_id, j.user_id, j.notification, j.destination, j.created_at, "
        "j.expires_at, j.attempts, j.last_error")
_RECORD = ("id, app_id, user_id, nid, channel, destination, status, not_before, attempts, "
           "last_error, created_at, updated_at, expires_at, fallback")
_WEBHOOK = "id, url, secret, created_at, previous_secret, previous_until"

# $1 channel, $2 n, $3 now, $4 lease.
_CLAIM = f"""
WITH picked AS (
  SELECT id FROM jobs
  WHERE status = 'queued' AND channel = $1 AND not_before <= $3
    AND (lease_until IS NULL OR lease_until <= $3)
  ORDER BY not_before, id LIMIT $2
  FOR UPDATE SKIP LOCKED
)
UPDATE jobs j SET lease_until = $3 + $4 FROM picked WHERE j.id = picked.id
RETURNING {_JOB}, j.not_before
"""

# $1 now.  An index-only scan of jobs_due (its predicate answers the status),
# and jobs_dead_age's dead rows (5 ms for 20,000: not worth a migration that
# every cluster would have to run for an index-only scan of them too).
_STATS = """
SELECT channel, false, count(*), count(*) FILTER (WHERE not_before <= $1), min(not_before)
FROM jobs WHERE status = 'queued' GROUP BY channel
UNION ALL
SELECT channel, true, count(*), 0, NULL FROM jobs WHERE status = 'dead' GROUP BY channel
"""

_ENQUEUE = """
INSERT INTO jobs (id, app_id, user_id, nid, channel, destination, notification, created_at,
                  expires_at, not_before, attempts, last_error, fallback, collapse, updated_at)
SELECT *, t.created_at FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[],
  $6::bytea[], $7::bytea[], $8::float8[], $9::float8[], $10::float8[], $11::int[], $12::text[],
  $13::bool[], $14::text[])
  AS t(id, app_id, user_id, nid, channel, destination, notification, created_at, expires_at,
       not_before, attempts, last_error, fallback, collapse)
ON CONFLICT (id) DO NOTHING
"""

# A newer notification of a group replaces the user's pending fallback of it:
# $1..$5 (app, user, channel, collapse key, the new nid) as arrays, $6 now.
_COLLAPSE = """
DELETE FROM jobs j
USING unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[])
  AS c(app_id, user_id, channel, collapse, nid)
WHERE j.app_id = c.app_id AND j.user_id = c.user_id AND j.channel = c.channel
  AND j.collapse = c.collapse AND j.status = 'queued' AND j.fallback AND j.nid <> c.nid
  AND (j.lease_until IS NULL OR j.lease_until <= $6)
RETURNING j.nid, j.channel
"""


def _job(row) -> Job:
    return Job(id=row[0], channel=row[1], app=row[2], user=row[3], notification=row[4],
               destination=_decode(row[5]), created_at=row[6], expires_at=row[7],
               attempts=row[8], last_error=row[9])


def _record(row) -> JobRecord:
    return JobRecord(id=row[0], app=row[1], user=row[2], nid=row[3], channel=row[4],
                     destination=_decode(row[5]), status=row[6], not_before=row[7],
                     attempts=row[8], last_error=row[9], created_at=row[10],
                     updated_at=row[11], expires_at=row[12], fallback=bool(row[13]))


def _count(status: str) -> int:
    return int(status.rsplit(" ", 1)[1])


class PostgresOutbound(OutboundStore):
    # Provided by PostgresStore: _call (a function on a pooled connection)
    # and the one-statement shortcuts.
    _call: Callable[..., Awaitable[Any]]
    _fetch: Callable[..., Awaitable[list]]
    _fetchrow: Callable[..., Awaitable[Any]]
    _fetchval: Callable[..., Awaitable[Any]]
    _execute: Callable[..., Awaitable[str]]
    seal: Seal  # the store's (tidings/store/base.py)

    # -- webhook endpoints ------------------------------------------------------------
    async def add_webhook(self, app_id, endpoint, limit, *, audit=None) -> bool:
        stored = self.seal.wrap(endpoint.secret, webhook_place(app_id, endpoint.id), "secret")

        async def add(conn):
            # The app's row serialises concurrent adds, so the limit holds.
            await conn.execute("SELECT 1 FROM apps WHERE id = $1 FOR UPDATE", app_id)
            n = await conn.fetchval("SELECT count(*) FROM webhooks WHERE app_id = $1", app_id)
            if n >= limit:
                return False
            await conn.execute(
                "INSERT INTO webhooks (app_id, id, url, secret, created_at) "
                "VALUES ($1, $2, $3, $4, $5)",
                app_id, endpoint.id, endpoint.url, stored, endpoint.created_at,
            )
            await insert_audit(conn, audit)
            return True

        return await self._call(add, tx=True)

    async def list_webhooks(self, app_id) -> list[WebhookEndpoint]:
        rows = await self._fetch(
            f"SELECT {_WEBHOOK} FROM webhooks WHERE app_id = $1 ORDER BY created_at, id", app_id
        )
        return [open_webhook(self.seal, app_id, r) for r in rows]

    async def rotate_webhook(self, app_id, wid, secret, overlap_until, *, audit=None):
        where = webhook_place(app_id, wid)
        stored = self.seal.wrap(secret, where, "secret")

        async def rotate(conn):
            # the row's lock from the read of the old secret to its move
            old = await conn.fetchrow("SELECT secret FROM webhooks WHERE app_id = $1 "
                                      "AND id = $2 FOR UPDATE", app_id, wid)
            if old is None:
                return None
            row = await conn.fetchrow(
                "UPDATE webhooks SET previous_secret = $3, previous_until = $4, secret = $5 "
                f"WHERE app_id = $1 AND id = $2 RETURNING {_WEBHOOK}",
                app_id, wid, self.seal.moved(old[0], where, "secret", "previous_secret"),
                overlap_until, stored)
            await insert_audit(conn, audit)
            return row

        row = await self._call(rotate, tx=True)
        return open_webhook(self.seal, app_id, row) if row else None

    async def delete_webhook(self, app_id, wid, *, audit=None) -> bool:
        async def delete(conn):
            if not _count(await conn.execute(
                    "DELETE FROM webhooks WHERE app_id = $1 AND id = $2", app_id, wid)):
                return False
            await insert_audit(conn, audit)
            return True

        return await self._call(delete, tx=True)

    # -- push subscriptions and e-mail ------------------------------------------------
    async def add_push_subscription(self, app_id, user, sub, keep) -> None:
        async def add(conn):
            await conn.execute(
                "INSERT INTO push_subscriptions AS p (app_id, user_id, id, endpoint, p256dh, "
                "auth, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7) "
                "ON CONFLICT (app_id, user_id, id) DO UPDATE SET endpoint = EXCLUDED.endpoint, "
                "p256dh = EXCLUDED.p256dh, auth = EXCLUDED.auth, created_at = EXCLUDED.created_at",
                app_id, user, sub.id, sub.endpoint, sub.p256dh, sub.auth, sub.created_at,
            )
            await conn.execute(
                "DELETE FROM push_subscriptions WHERE app_id = $1 AND user_id = $2 AND id NOT IN "
                "(SELECT id FROM push_subscriptions WHERE app_id = $1 AND user_id = $2 "
                " ORDER BY created_at DESC, id LIMIT $3)",
                app_id, user, keep,
            )

        await self._call(add, tx=True)

    async def list_push_subscriptions(self, app_id, user) -> list[PushSubscription]:
        rows = await self._fetch(
            "SELECT id, endpoint, p256dh, auth, created_at FROM push_subscriptions "
            "WHERE app_id = $1 AND user_id = $2 ORDER BY created_at DESC, id", app_id, user,
        )
        return [PushSubscription(*r) for r in rows]

    async def delete_push_subscription(self, app_id, user, sid) -> bool:
        return _count(await self._execute(
            "DELETE FROM push_subscriptions WHERE app_id = $1 AND user_id = $2 AND id = $3",
            app_id, user, sid)) > 0

    async def set_email(self, app_id, user, email) -> bool:
        if email is None:
            return _count(await self._execute(
                "DELETE FROM emails WHERE app_id = $1 AND user_id = $2", app_id, user)) > 0
        # xmax = 0 on the returned row: it was inserted, not updated.
        inserted = await self._fetchval(
            "INSERT INTO emails AS e (app_id, user_id, address, name) VALUES ($1, $2, $3, $4) "
            "ON CONFLICT (app_id, user_id) DO UPDATE SET address = EXCLUDED.address, "
            "name = EXCLUDED.name RETURNING xmax = 0",
            app_id, user, email.address, email.name,
        )
        return not inserted

    async def get_email(self, app_id, user) -> EmailAddress | None:
        row = await self._fetchrow(
            "SELECT address, name FROM emails WHERE app_id = $1 AND user_id = $2", app_id, user
        )
        return EmailAddress(*row) if row else None

    async def preferences_of(self, app_id, users) -> dict[str, Preferences]:
        rows = await self._fetch(
            "SELECT user_id, doc FROM prefs WHERE app_id = $1 AND user_id = ANY($2::text[])",
            app_id, list(users),
        )
        return {user: _decode_prefs(doc) for user, doc in rows}

    async def destinations(self, app_id, users) -> dict[str, Destinations]:
        rows = await self._fetch(
            "SELECT false, user_id, id, endpoint, p256dh, auth, created_at FROM push_subscriptions "
            "WHERE app_id = $1 AND user_id = ANY($2::text[]) "
            "UNION ALL SELECT true, user_id, address, name, NULL::text, NULL::text, NULL::float8 "
            "FROM emails "
            "WHERE app_id = $1 AND user_id = ANY($2::text[]) ORDER BY 7 DESC NULLS LAST, 3",
            app_id, list(users),
        )
        out: dict[str, Destinations] = {}
        for is_email, user, a, b, c, d, created in rows:
            dest = out.setdefault(user, Destinations())
            if is_email:
                dest.email = EmailAddress(a, b)
            else:
                dest.push.append(PushSubscription(a, b, c, d, created))
        return out

    # -- caps -----------------------------------------------------------------------
    async def get_caps(self, app_id) -> bytes | None:
        return await self._fetchval("SELECT doc FROM caps WHERE app_id = $1", app_id)

    async def put_caps(self, app_id, doc, *, audit=None) -> None:
        async def put(conn):
            await conn.execute(
                "INSERT INTO caps (app_id, doc) VALUES ($1, $2) "
                "ON CONFLICT (app_id) DO UPDATE SET doc = EXCLUDED.doc", app_id, doc,
            )
            await insert_audit(conn, audit)

        await self._call(put, tx=True)

    # -- the job queue --------------------------------------------------------------
    async def enqueue_jobs(self, jobs: list[NewJob],
                           fired: tuple[str, str] | None = None) -> list[tuple[str, str]]:
        if not jobs and fired is None:
            return []

        async def insert(conn):
            # the status change first: whoever changes it queues the jobs, once
            if fired is not None and await conn.fetchval(
                    "UPDATE scheduled SET status = 'sent' WHERE app_id = $1 AND id = $2 "
                    "AND status = 'fired' RETURNING true", *fired) is None:
                return []
            return await insert_jobs(conn, jobs) if jobs else []

        return await self._call(insert, tx=True)

    async def claim_jobs(self, channel, n, now, lease) -> list[Job]:
        rows = await self._fetch(_CLAIM, channel, n, now, lease)
        rows.sort(key=lambda r: (r[-1], r[0]))  # RETURNING keeps no order
        return [_job(r) for r in rows]

    async def complete_job(self, job_id, now=None) -> None:
        await self._execute(
            log_attempt("sent", "$2::float8", "NULL", "NULL")
            + "DELETE FROM jobs WHERE id = $1 AND status = 'queued'",
            job_id, time.time() if now is None else now)

    async def retry_job(self, job, at, now) -> None:
        await self._execute(
            log_attempt("failed", "$5::float8", "$3::text", "$4::float8")
            + "UPDATE jobs SET attempts = $2, last_error = $3, not_before = $4, "
            "lease_until = NULL, updated_at = $5 WHERE id = $1 AND status = 'queued'",
            job.id, job.attempts, job.last_error, at, now,
        )

    async def release_job(self, job, at, now) -> None:
        await self._execute(
            "UPDATE jobs SET not_before = $2, lease_until = NULL, updated_at = $3 "
            "WHERE id = $1 AND status = 'queued'", job.id, at, now)

    async def kill_job(self, job, reason, now) -> None:
        await self._execute(
            log_attempt("dead", "$4::float8", "$3::text", "NULL")
            + "UPDATE jobs SET status = 'dead', attempts = $2, last_error = $3, "
            "lease_until = NULL, updated_at = $4 WHERE id = $1 AND status = 'queued'",
            job.id, job.attempts, reason, now,
        )

    async def mute_job(self, job, reason, now) -> bool:
        return bool(_count(await self._execute(
            log_attempt("muted", "$3::float8", "$2::text", "NULL")
            + "DELETE FROM jobs WHERE id = $1 AND status = 'queued'", job.id, reason, now)))

    async def cancel_fallbacks(self, app_id, user, nids) -> list[tuple[str, str]]:
        where = "app_id = $1 AND user_id = $2 AND status = 'queued' AND fallback"
        held = "app_id = $1 AND user_id = $2"
        if nids is None:
            rows = await self._fetch(
                f"WITH j AS (DELETE FROM jobs WHERE {where} RETURNING nid, channel), "
                f"d AS (DELETE FROM digest_items WHERE {held} RETURNING nid, channel) "
                "SELECT * FROM j UNION ALL SELECT * FROM d", app_id, user)
        else:
            rows = await self._fetch(
                f"WITH j AS (DELETE FROM jobs WHERE {where} AND nid = ANY($3::text[]) "
                "RETURNING nid, channel), "
                # A group entry stands for every notification merged into it.
                f"d AS (DELETE FROM digest_items WHERE {held} AND (nid = ANY($3::text[]) "
                "OR nid IN (SELECT m.nid FROM group_members m JOIN group_members g "
                "ON g.app_id = m.app_id AND g.user_id = m.user_id AND g.gid = m.gid "
                "WHERE g.app_id = $1 AND g.user_id = $2 AND g.nid = ANY($3::text[]))) "
                "RETURNING nid, channel) "
                "SELECT * FROM j UNION ALL SELECT * FROM d",
                app_id, user, list(nids))
        return [tuple(r) for r in rows]

    async def cancel_jobs(self, app_id, nid) -> int:
        return len(await self._fetch(
            "WITH j AS (DELETE FROM jobs WHERE app_id = $1 AND nid = $2 AND status = 'queued' "
            "RETURNING 1), d AS (DELETE FROM digest_items WHERE app_id = $1 AND nid = $2 "
            "RETURNING 1) SELECT * FROM j UNION ALL SELECT * FROM d", app_id, nid))

    async def update_jobs(self, app_id, nid, notification) -> int:
        return len(await self._fetch(
            "WITH j AS (UPDATE jobs SET notification = $3 WHERE app_id = $1 AND nid = $2 "
            "AND status = 'queued' RETURNING 1), d AS (UPDATE digest_items SET notification = $3 "
            "WHERE app_id = $1 AND nid = $2 RETURNING 1) SELECT * FROM j UNION ALL SELECT * FROM d",
            app_id, nid, notification))

    async def queue_stats(self, now) -> dict[str, QueueStats]:
        return QueueStats.of_rows(await self._fetch(_STATS, now))

    async def list_jobs(self, app_id, *, status=None, nid=None, limit=100, before=None):
        rows = await self._fetch(
            f"SELECT {_RECORD} FROM jobs WHERE app_id = $1 "
            "AND ($2::text IS NULL OR status = $2) AND ($3::text IS NULL OR nid = $3) "
            "AND ($4::text IS NULL OR id < $4) ORDER BY id DESC LIMIT $5",
            app_id, status, nid, before, limit,
        )
        return [_record(r) for r in rows]

    async def redrive_job(self, app_id, job_id, now, *, audit=None) -> bool:
        async def redrive(conn):
            if not _count(await conn.execute(
                    "UPDATE jobs SET status = 'queued', attempts = 0, not_before = $3, "
                    "lease_until = NULL, updated_at = $3 "
                    "WHERE app_id = $1 AND id = $2 AND status = 'dead'", app_id, job_id, now)):
                return False
            await insert_audit(conn, audit)
            return True

        return await self._call(redrive, tx=True)

    async def prune_jobs(self, older_than) -> int:
        return _count(await self._execute(
            "WITH attempts AS (DELETE FROM job_attempts WHERE at < $1) "
            "DELETE FROM jobs WHERE status = 'dead' AND updated_at < $1", older_than))


async def insert_jobs(conn, jobs: list[NewJob]) -> list[tuple[str, str]]:
    """Queue ``jobs`` inside the caller's transaction (enqueue_jobs, and a
    publish's own, publish.py); returns the (nid, channel) replaced.  Jobs
    with a ``digest`` key are held in their digest windows instead."""
    if any(n.digest is not None for n in jobs):
        await hold(conn, [n for n in jobs if n.digest is not None])
        jobs = [n for n in jobs if n.digest is None]
        if not jobs:
            return []
    cols = [list(c) for c in zip(*[
        (n.job.id, n.job.app, n.job.user, n.nid, n.job.channel, _encode(n.job.destination),
         n.job.notification, n.job.created_at, n.job.expires_at, n.not_before,
         n.job.attempts, n.job.last_error, n.fallback, n.collapse if n.fallback else None)
        for n in jobs
    ], strict=True)]
    groups = sorted({(n.job.app, n.job.user, n.job.channel, n.collapse, n.nid)
                     for n in jobs if n.fallback and n.collapse is not None})
    replaced = []
    if groups:
        replaced = await conn.fetch(_COLLAPSE, *map(list, zip(*groups, strict=True)),
                                    jobs[0].job.created_at)
    # One statement whatever the number of jobs (a fan-out to 10,000 users).
    await conn.execute(_ENQUEUE, *cols)
    return [tuple(r) for r in replaced]


# Queued, never attempted, due later and not being sent: what re-timing moves.
_WAITING = ("j.app_id = $1 AND j.user_id = $2 AND j.status = 'queued' AND j.attempts = 0 "
            "AND j.not_before > $3 AND (j.lease_until IS NULL OR j.lease_until <= $3)")


async def retime_jobs(conn, app_id: str, user: str, retimer: retime.Retimer) -> None:
    """Re-time the user's waiting jobs and held digest items (their
    preferences changed), inside the caller's transaction.  A job a claim
    leases meanwhile is left to it: the update checks the lease again."""
    now = retimer.now
    rows = await conn.fetch(
        "SELECT j.id, j.channel, j.created_at, j.not_before, j.fallback, j.notification "
        f"FROM jobs j WHERE {_WAITING} ORDER BY j.not_before, j.id LIMIT $4",
        app_id, user, now, retime.MAX_JOBS)
    out = retimer([retime.WaitingJob(*r) for r in rows], await held(conn, app_id, user))
    if out.jobs:
        await conn.execute(
            "UPDATE jobs j SET not_before = t.at, updated_at = $3 FROM unnest($4::text[], "
            f"$5::float8[]) AS t(id, at) WHERE j.id = t.id AND {_WAITING}",
            app_id, user, now, list(out.jobs), list(out.jobs.values()))
    await move(conn, app_id, user, out)
