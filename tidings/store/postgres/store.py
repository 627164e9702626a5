"""The cluster store: PostgreSQL through one asyncpg pool.

Any number of nodes share one database, so every guarantee of the contract
(base.py) rests on PostgreSQL's row locks rather than on a single writer:

* **Seqs.**  A publish assigns seqs with ``INSERT INTO streams ... ON
  CONFLICT DO UPDATE SET head_seq = head_seq + 1 RETURNING``: the upsert
  locks each recipient's stream row until commit, so two nodes publishing to
  one user queue behind each other: no seq is handed out twice or skipped,
  and a seq becomes visible only after the one before it.  Recipients are
  locked in one order everywhere (sorted by user id, ``COLLATE "C"``) so
  that overlapping fan-outs wait for each other instead of deadlocking.
* **Feed offsets** come from the same kind of upsert on the app's
  ``feed_heads`` row.
* **One statement, one round trip.**  A fan-out to N users is a single
  statement (data-modifying CTEs): mute filter, the multi-row streams upsert,
  the notification row and N inbox rows.  A single statement is atomic and,
  with ``synchronous_commit`` on (the default), durable when it returns.
* **Group commit.**  Concurrent publishes to lists of users, with or without
  an idempotency key, are gathered into one such statement for many
  notifications at once (committer.py): one round trip and one commit for
  the group, seqs still handed out by the streams rows' locks.  The other
  kinds of publish (topics, broadcasts, grouped, scheduled, with outbound
  jobs) run on their own, in a transaction when they take several statements.
* **Preferences** change in place (``update_preferences``) under the user's
  ``prefs`` row lock, ``SELECT ... FOR UPDATE`` to the commit; a put's upsert
  takes the same lock, so concurrent writers of one user go one at a time.
* **Idempotency.**  The key row is claimed first (an upsert that only
  replaces an expired record); a concurrent publish with the same key waits
  on that row and then reads the first result.

Connection-level failures (refused, reset, server restart, pool exhausted)
raise :class:`tidings.errors.Unavailable`, which the API answers with 503
and ``Retry-After``.  The pool reconnects by itself: a dead connection is
replaced the next time it is acquired.  Between calls the store keeps the
connections it used rather than handing them back (``_take``): asyncpg's
acquire and release cost more CPU than a short query.

Schema changes are explicit here: ``tidings migrate`` applies them, and
``open()`` refuses a database that is behind or ahead of the code
(docs/operations.md).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import time
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import msgspec

from tidings.core.audit import AuditEntry
from tidings.core.models import Preferences
from tidings.core.preferences import NONE_MUTED
from tidings.core.preferences import muted as muted_in
from tidings.core.seal import Seal
from tidings.errors import Unavailable
from tidings.store import migrations
from tidings.store.base import (
    AppRecord,
    Counts,
    Entry,
    Pruned,
    PublishOutcome,
    Resurfaced,
    Retraction,
    Store,
    StoredNotification,
    StreamHead,
    UserTimeline,
    by_place,
    open_app,
)
from tidings.store.codec import shown_by
from tidings.store.postgres import groups as _groups
from tidings.store.postgres import publish as _tx
from tidings.store.postgres import schedule as _sched
from tidings.store.postgres import snooze as _snooze
from tidings.store.postgres import timeline as _timeline
from tidings.store.postgres.audit import PostgresAudit, insert_audit
from tidings.store.postgres.committer import Committer, takes
from tidings.store.postgres.digests import PostgresDigests
from tidings.store.postgres.errors import ATTEMPTS, CANNOT_WRITE, DOWN, NOT_DOWN, RETRY, STALE
from tidings.store.postgres.keys import PostgresKeys
from tidings.store.postgres.outbound import PostgresOutbound, retime_jobs
from tidings.store.postgres.sql import (
    BUMP_REV,
    COUNTS,
    COUNTS_MANY,
    COUNTS_MANY_MUTED,
    COUNTS_MANY_STORED_MUTES,
    COUNTS_MUTED,
    COUNTS_STORED_MUTES,
    DELETE,
    ENTRY_BODY,
    HEAD,
    HEADS,
    INBOX,
    INBOX_MUTED,
    INBOX_STORED_MUTES,
    NEW_STREAM,
    ON_REV,
    REPLAY,
    REPLAY_EXCEEDS,
    REPLAY_EXCEEDS_MUTED,
    REPLAY_MUTED,
    SET_STATE,
    SET_STATE_IDS,
    STATE_CODE,
    STATE_NAME,
    inbox_filtered_sql,
)
from tidings.store.sealed import (
    DROP_CHECK,
    KEY_CHECK,
    LEASE,
    PEPPER_PLACE,
    PLACES,
    Lease,
    Place,
    app_place,
    check_of,
    open_pepper,
    refuse_serving,
    resealed,
    set_check,
)

__all__ = ["PostgresStore", "migrate"]

log = logging.getLogger("tidings.store")

DIALECT = "postgres"
RETRY_AFTER = 2.0  # seconds a client is told to wait while the database is away
CONNECT_TIMEOUT = 5.0  # a new connection, and waiting for a free one in the pool
# pg_advisory_xact_lock key that serialises migrations ("tidings" in ASCII).
MIGRATION_LOCK = 0x74696469_6E6773


_decode_prefs = msgspec.json.Decoder(Preferences).decode
_filtered_sql = functools.cache(inbox_filtered_sql)
# The unfiltered page statements by where the user's in-app mutes come from.
_INBOX = {None: INBOX, "given": INBOX_MUTED, "stored": INBOX_STORED_MUTES}


def _mutes_kind(muted: frozenset[str] | None) -> str | None:
    """How a statement takes the mutes ``muted`` (sql._mutes_array): read by
    it (None, the caller holds none), given (some), or not at all (none)."""
    if muted is None:
        return "stored"
    return "given" if muted else None


_encode = msgspec.json.encode


def _where(url: str) -> str:
    """``host:port/db`` of ``url``, for messages (never the password)."""
    parts = urlsplit(url)
    return f"{parts.hostname or 'localhost'}:{parts.port or 5432}{parts.path or ''}"


def _redacted(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = f"{parts.username}:***@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


# -- schema migrations ---------------------------------------------------------

async def _schema_version(conn) -> int:
    if await conn.fetchval("SELECT to_regclass('meta') IS NULL"):
        return 0
    value = await conn.fetchval("SELECT value FROM meta WHERE key = 'schema_version'")
    return int(value) if value else 0


async def _apply_migrations(conn) -> list[int]:
    applied: list[int] = []
    while True:
        async with conn.transaction():
            # Nodes started together queue here; each re-reads the version
            # under the lock and finds the work done.  The lock is released by
            # the commit (or rollback) of this migration's transaction.
            await conn.execute("SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK)
            await conn.execute(
                'CREATE TABLE IF NOT EXISTS meta (key text COLLATE "C" PRIMARY KEY, '
                "value text NOT NULL)"
            )
            todo = migrations.pending(DIALECT, await _schema_version(conn))
            if not todo:
                return applied
            version, script = todo[0]
            await conn.execute(script)
            await conn.execute(
                "INSERT INTO meta (key, value) VALUES ('schema_version', $1) "
                "ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value", str(version),
            )
        applied.append(version)


async def migrate(url: str, *, server_settings: dict[str, str] | None = None) -> list[int]:
    """Bring the database at ``url`` to this code's schema; the versions applied."""
    try:
        conn = await asyncpg.connect(url, timeout=CONNECT_TIMEOUT, server_settings=server_settings)
    except DOWN as exc:
        raise Unavailable(f"cannot reach PostgreSQL at {_where(url)}: {exc}") from exc
    try:
        return await _apply_migrations(conn)
    finally:
        await conn.close()


async def _keep_session(conn) -> None:
    """Pool reset hook that sends nothing.  The store never changes session
    state (no SET, LISTEN, cursors or session locks), and asyncpg still rolls
    back a transaction left open, so the default reset query would cost one
    more round trip per store call for nothing."""


# -- the store ----------------------------------------------------------------

# an app's columns, in AppRecord's order
_APP = "id, name, signing_secret, created_at, previous_secret, previous_until"


class PostgresStore(PostgresKeys, PostgresAudit, PostgresOutbound, PostgresDigests, Store):
    counts_batch = 500  # one query (COUNTS_MANY), off the event loop: about 12 ms

    def __init__(
        self, url: str, *, server_settings: dict[str, str] | None = None,
        min_size: int = 1, max_size: int = 10, command_timeout: float = 60.0,
    ):
        self.url = url
        self._server_settings = server_settings
        self._sizes = (min_size, max_size)
        self._command_timeout = command_timeout
        self._pool: asyncpg.Pool | None = None
        # Connections held out of the pool between calls, and how many calls
        # wait for one of the pool's (see _take, _give)
        self._spare: list = []
        self._waiting = 0
        self._down = False  # for logging the moment the database goes and comes back
        self.committer = Committer(self._call, self._publish_alone)

    # -- lifecycle ------------------------------------------------------
    async def open(self) -> None:
        try:
            pool = await asyncpg.create_pool(
                self.url, min_size=self._sizes[0], max_size=self._sizes[1],
                timeout=CONNECT_TIMEOUT, command_timeout=self._command_timeout,
                server_settings=self._server_settings, reset=_keep_session,
            )
        except DOWN as exc:
            raise Unavailable(f"cannot reach PostgreSQL at {_where(self.url)}: {exc}") from exc
        try:
            async with pool.acquire() as conn:
                version = await _schema_version(conn)
            migrations.require_current(
                DIALECT, version,
                f"run `tidings migrate --store {_redacted(self.url)}` first (docs/operations.md)",
            )
        except BaseException:
            pool.terminate()
            raise
        self._pool = pool

    async def close(self) -> None:
        pool, self._pool = self._pool, None
        spare, self._spare = self._spare, []
        if pool is not None:
            try:
                for conn in spare:
                    await pool.release(conn)
                await asyncio.wait_for(pool.close(), 10)
            except (*DOWN, *STALE):
                pool.terminate()  # the database is gone: nothing to close politely

    async def ping(self) -> bool:
        """The database answers and this session may write (a standby, or
        ``default_transaction_read_only``, answers but takes no publish)."""
        try:
            return await self._call(
                _fetchval, "SELECT current_setting('transaction_read_only') = 'off'")
        except Unavailable:
            return False

    async def _call(self, fn, *args, tx: bool = False, tries: int = ATTEMPTS):
        """Run ``fn(conn, *args)`` on a pooled connection (in a transaction
        when ``tx``), turning connection failures into ``Unavailable``."""
        pool = self._pool
        if pool is None:
            raise Unavailable("the store is closed", retry_after=RETRY_AFTER)
        for attempt in range(1, tries + 1):
            last = attempt == tries
            try:
                conn = await self._take(pool)
                try:
                    if tx:
                        async with conn.transaction():
                            result = await fn(conn, *args)
                    else:
                        result = await fn(conn, *args)
                except (*DOWN, *STALE) as exc:
                    if isinstance(exc, NOT_DOWN):
                        await self._give(pool, conn)
                    else:
                        # Never hand a connection in an unknown state to
                        # the next caller: the pool replaces it.
                        conn.terminate()
                    raise
                except Exception:  # the statement's own error: the connection is sound
                    await self._give(pool, conn)
                    raise
                except BaseException:  # cancelled mid-call: the pool settles it
                    await pool.release(conn)
                    raise
                await self._give(pool, conn)
            except NOT_DOWN:
                raise
            except RETRY:
                if last:
                    raise
            except STALE as exc:
                if last:
                    raise self._unavailable(exc) from exc
            except (*DOWN, *CANNOT_WRITE) as exc:
                raise self._unavailable(exc) from exc
            else:
                if self._down:
                    self._down = False
                    log.warning("PostgreSQL at %s is reachable again", _where(self.url))
                return result
        raise AssertionError("unreachable")

    async def _take(self, pool):
        """A connection for one call: one left by an earlier call if there is
        one, else the pool's.  Connections stay out of the pool between calls
        (every call of the store comes through here, so none waits for
        them): asyncpg's acquire and release, with their timeouts, queue and
        proxy, cost about 30 µs of CPU per call, more than a short query."""
        spare = self._spare
        while spare:
            conn = spare.pop()
            if not conn.is_closed():
                return conn
            await pool.release(conn)  # closed while it waited (a restart): the pool reconnects
        self._waiting += 1
        try:
            return await pool.acquire(timeout=CONNECT_TIMEOUT)
        finally:
            self._waiting -= 1

    async def _give(self, pool, conn) -> None:
        """Keep ``conn`` for the next call, or give it back to the pool when a
        call is waiting there for one."""
        if self._waiting:
            await pool.release(conn)
        else:
            self._spare.append(conn)

    def _unavailable(self, exc: BaseException) -> Unavailable:
        if not self._down:  # log the outage once, not once per request
            self._down = True
            log.warning("PostgreSQL at %s is unavailable: %r", _where(self.url), exc)
        # The client sees no internals; the cause stays chained for the logs.
        return Unavailable("the store is unavailable; retry later", retry_after=RETRY_AFTER)

    async def _fetch(self, sql: str, *args) -> list:
        return await self._call(_fetch, sql, *args)

    async def _fetchrow(self, sql: str, *args):
        return await self._call(_fetchrow, sql, *args)

    async def _fetchval(self, sql: str, *args):
        return await self._call(_fetchval, sql, *args)

    async def _execute(self, sql: str, *args) -> str:
        return await self._call(_execute, sql, *args)

    # -- sealed secrets (tidings/store/sealed.py) -----------------------
    async def secret_rows(self, place: Place) -> list[tuple]:
        return [tuple(r) for r in await self._fetch(place.select())]

    async def reseal(self, before: Seal, after: Seal, *, force: bool = False,
                     audit=None) -> int:
        async def reseal(conn):
            # one transaction; the key check's row (or the table, when there is
            # none) is locked first, so two reseals apply one after the other
            await conn.execute("LOCK TABLE meta IN SHARE ROW EXCLUSIVE MODE")
            # a node's lease (a write) waits for the end of this one: a node
            # starting meanwhile checks its key against what it leaves
            await conn.execute("LOCK TABLE node_leases IN SHARE MODE")
            if not force:
                refuse_serving(await _leases(conn))
            opener = before.expect(check_of(await conn.fetch(KEY_CHECK.select())))
            n = 0
            for place in PLACES:
                rows = await conn.fetch(place.select() + " FOR UPDATE")
                changed = resealed(place, rows, opener, after)
                await conn.executemany(place.update(lambda i: f"${i}"), changed)
                n += len(changed)
            if after.check is None:
                await conn.execute(DROP_CHECK)
            else:
                await conn.execute(set_check(lambda i: f"${i}"), after.check)
            if audit is not None:
                await insert_audit(conn, audit(n))
            return n

        return await self._call(reseal, tx=True)

    # -- the nodes serving the store ------------------------------------
    async def lease(self, node: str, address: str, pid: int, ttl: float) -> None:
        async def lease(conn):
            await conn.execute("DELETE FROM node_leases "
                               "WHERE expires_at <= extract(epoch FROM clock_timestamp())")
            await conn.execute(LEASE.format(
                "$1", "$2", "$3", "extract(epoch FROM clock_timestamp()) + $4"),
                node, address, pid, float(ttl))

        await self._call(lease, tx=True)

    async def release(self, node: str) -> None:
        await self._execute("DELETE FROM node_leases WHERE node = $1", node)

    async def leases(self) -> list[Lease]:
        return await self._call(_leases)

    # -- apps (keys: tidings/store/postgres/keys.py) --------------------
    async def pepper(self) -> bytes:
        async def get_or_make(conn):
            await conn.execute(
                "INSERT INTO meta (key, value) VALUES ('pepper', $1) ON CONFLICT DO NOTHING",
                self.seal.wrap(os.urandom(32).hex(), PEPPER_PLACE, "value"),
            )
            return await conn.fetchval("SELECT value FROM meta WHERE key = 'pepper'")

        value = await self._fetchval("SELECT value FROM meta WHERE key = 'pepper'")
        if value is None:
            value = await self._call(get_or_make)
        return open_pepper(self.seal, value)

    async def create_app(self, app_id: str, name: str, signing_secret: str, *,
                         audit: AuditEntry | None = None) -> AppRecord:
        now = time.time()
        stored = self.seal.wrap(signing_secret, app_place(app_id), "signing_secret")

        async def create(conn):
            await conn.execute(
                "INSERT INTO apps (id, name, signing_secret, created_at) VALUES ($1, $2, $3, $4)",
                app_id, name, stored, now,
            )
            await insert_audit(conn, audit)

        await self._call(create, tx=audit is not None)
        return AppRecord(app_id, name, signing_secret, now)

    async def get_app(self, app_id: str) -> AppRecord | None:
        row = await self._fetchrow(f"SELECT {_APP} FROM apps WHERE id = $1", app_id)
        return open_app(self.seal, row) if row else None

    async def list_apps(self) -> list[AppRecord]:
        rows = await self._fetch(f"SELECT {_APP} FROM apps ORDER BY created_at")
        return [open_app(self.seal, r) for r in rows]

    async def rotate_signing_secret(self, app_id: str, secret: str, previous_until: float,
                                    *, audit: AuditEntry | None = None) -> AppRecord | None:
        where = app_place(app_id)
        stored = self.seal.wrap(secret, where, "signing_secret")

        async def rotate(conn):
            # the row's lock from the read of the old secret to its move
            old = await conn.fetchrow("SELECT signing_secret FROM apps WHERE id = $1 "
                                      "FOR UPDATE", app_id)
            if old is None:
                return None
            row = await conn.fetchrow(
                "UPDATE apps SET previous_secret = $2, previous_until = $3, "
                f"signing_secret = $4 WHERE id = $1 RETURNING {_APP}",
                app_id, self.seal.moved(old[0], where, "signing_secret", "previous_secret"),
                previous_until, stored)
            await insert_audit(conn, audit)
            return row

        row = await self._call(rotate, tx=True)
        return open_app(self.seal, row) if row else None

    async def end_dashboard_session(self, session_id: str, expires: float,
                                    now: float, *, audit: AuditEntry | None = None) -> None:
        async def end(conn):
            # one statement: the sweep of expired rows and the insert commit together
            await conn.execute(
                "WITH gone AS (DELETE FROM ended_sessions WHERE expires <= $3) "
                "INSERT INTO ended_sessions (id, expires) VALUES ($1, $2) "
                "ON CONFLICT (id) DO NOTHING", session_id, expires, now)
            await insert_audit(conn, audit)

        await self._call(end, tx=audit is not None)

    async def dashboard_session_ended(self, session_id: str) -> bool:
        return await self._fetchval(
            "SELECT 1 FROM ended_sessions WHERE id = $1", session_id) is not None

    # -- users' tokens revoked ---------------------------------------------
    async def revoke_tokens(self, app_id: str, user: str, before: float,
                            forget_before: float, *, limit: int | None = None,
                            audit=None) -> float | None:
        async def revoke(conn):
            if limit is not None:
                # The app's row serialises revocations, so the limit holds.
                await conn.execute("SELECT 1 FROM apps WHERE id = $1 FOR UPDATE", app_id)
            await conn.execute("DELETE FROM token_revocations "
                               "WHERE app_id = $1 AND revoked_before < $2", app_id, forget_before)
            if limit is not None and await conn.fetchval(
                    "SELECT 1 FROM token_revocations WHERE app_id = $1 AND user_id = $2",
                    app_id, user) is None:
                n = await conn.fetchval("SELECT count(*) FROM token_revocations "
                                        "WHERE app_id = $1", app_id)
                if n >= limit:
                    return None
            # under the row's lock: the later cutoff wins whichever node wrote first
            stored = await conn.fetchval(
                "INSERT INTO token_revocations (app_id, user_id, revoked_before) "
                "VALUES ($1, $2, $3) ON CONFLICT (app_id, user_id) DO UPDATE "
                "SET revoked_before = GREATEST(token_revocations.revoked_before, "
                "EXCLUDED.revoked_before) RETURNING revoked_before", app_id, user, before)
            if audit is not None:
                await insert_audit(conn, audit(stored))
            return stored

        return await self._call(revoke, tx=True)

    async def token_revocations(self, since: float) -> list[tuple[str, str, float]]:
        rows = await self._fetch("SELECT app_id, user_id, revoked_before FROM token_revocations "
                                 "WHERE revoked_before > $1", since)
        return [(app, user, before) for app, user, before in rows]

    async def revoke_token_id(self, app_id: str, user: str, jti: str, until: float,
                              now: float, *, limit: int | None = None,
                              audit=None) -> float | None:
        async def revoke(conn):
            if limit is not None:
                # The app's row serialises revocations, so the limit holds.
                await conn.execute("SELECT 1 FROM apps WHERE id = $1 FOR UPDATE", app_id)
            await conn.execute("DELETE FROM revoked_tokens "
                               "WHERE app_id = $1 AND revoked_until <= $2", app_id, now)
            if limit is not None and await conn.fetchval(
                    "SELECT 1 FROM revoked_tokens WHERE app_id = $1 AND user_id = $2 "
                    "AND jti = $3", app_id, user, jti) is None:
                n = await conn.fetchval("SELECT count(*) FROM revoked_tokens "
                                        "WHERE app_id = $1", app_id)
                if n >= limit:
                    return None
            # under the row's lock: the later end wins whichever node wrote first
            stored = await conn.fetchval(
                "INSERT INTO revoked_tokens (app_id, user_id, jti, revoked_until, revoked_at) "
                "VALUES ($1, $2, $3, $4, $5) ON CONFLICT (app_id, user_id, jti) DO UPDATE "
                "SET revoked_until = GREATEST(revoked_tokens.revoked_until, "
                "EXCLUDED.revoked_until), revoked_at = EXCLUDED.revoked_at "
                "RETURNING revoked_until", app_id, user, jti, until, now)
            if audit is not None:
                await insert_audit(conn, audit(stored))
            return stored

        return await self._call(revoke, tx=True)

    async def token_id_revocations(self, since: float,
                                   now: float) -> list[tuple[str, str, str, float]]:
        rows = await self._fetch("SELECT app_id, user_id, jti, revoked_until FROM revoked_tokens "
                                 "WHERE revoked_at > $1 AND revoked_until > $2", since, now)
        return [(app, user, jti, until) for app, user, jti, until in rows]

    # -- publishing -----------------------------------------------------
    async def publish(self, app_id, item, *, fanout_threshold, window) -> PublishOutcome:
        if takes(item):  # gathered with the publishes around it (committer.py)
            return await self.committer.publish(app_id, item, window)
        return await self._publish(app_id, item, fanout_threshold, window)

    async def publish_many(self, app_id, items, *, fanout_threshold, window) -> list:
        # In the request's order: the runs of items group commit takes go
        # whole into a group each (committer.publish_run), any other item is
        # published alone in its place, one after the other.
        out: list[PublishOutcome | Exception] = []
        i = 0
        while i < len(items):
            j = i
            while j < len(items) and takes(items[j]):
                j += 1
            if j > i:
                out += await self.committer.publish_run(app_id, items[i:j], window)
                i = j
                continue
            try:
                out.append(await self._publish(app_id, items[i], fanout_threshold, window))
            except Exception as exc:  # noqa: BLE001 - this item fails alone
                out.append(exc)
            i += 1
        return out

    async def _publish_alone(self, app_id, item, window) -> PublishOutcome:
        # fanout_threshold is only read for topics, which the committer leaves here
        return await self._publish(app_id, item, 0, window)

    async def _publish(self, app_id, item, fanout_threshold, window) -> PublishOutcome:
        if item.idempotency_key is None:
            # a grouped fan-out is several statements (groups.py), and so is
            # one with outbound jobs
            several = (item.group_key is not None or bool(item.jobs)) and item.deliver_at is None
            return await self._call(_tx.publish, app_id, item, fanout_threshold, tx=several)
        return await self._call(
            _tx.publish_once, app_id, item, fanout_threshold, window, tx=True
        )

    async def get_notification(self, app_id, nid) -> StoredNotification | None:
        return await self._call(_tx.get_notification, app_id, nid)

    async def update_notification(self, app_id, nid, body) -> StoredNotification | None:
        async def update(conn):
            found = await conn.fetchval(
                "UPDATE notifications SET body = $3 WHERE app_id = $1 AND id = $2 "
                "AND NOT deleted RETURNING true", app_id, nid, body,
            )
            if found:  # the entries' copies (postgres_010.sql)
                await conn.execute(
                    f"UPDATE inbox SET body = {ENTRY_BODY.format('$3::bytea', '$3::bytea')} "
                    "WHERE app_id = $1 AND nid = $2", app_id, nid, body,
                )
            return await _tx.get_notification(conn, app_id, nid) if found else None

        return await self._call(update, tx=True)

    async def delete_notification(self, app_id, nid, now=None) -> Retraction | None:
        at = time.time() if now is None else now

        async def delete(conn):
            # Of two concurrent deletes only one gets past this lock and finds
            # the row not deleted yet; it takes nid out of its groups first.
            if not await conn.fetchval(
                "SELECT true FROM notifications WHERE app_id = $1 AND id = $2 AND NOT deleted "
                "FOR UPDATE", app_id, nid,
            ):
                return None
            old = await _tx.get_notification(conn, app_id, nid)
            if old is None:  # it is there (locked above); for the type checker
                return None
            users, regrouped, unread = await _groups.retract(conn, app_id, nid, at)
            plain = await conn.fetchrow(DELETE, app_id, nid)
            if plain is None:
                return None
            for user, state, expires in zip(*plain, strict=True):
                users.append(user)
                if state < 2 and (expires is None or expires > at):
                    unread.append(user)
            return Retraction(old, sorted(set(users)), sorted(set(unread)), regrouped)

        return await self._call(delete, tx=True)

    async def recipients_of(self, app_id, nid) -> list[str]:
        rows = await self._fetch(
            "SELECT user_id FROM inbox WHERE app_id = $1 AND nid = $2 "
            "UNION SELECT user_id FROM group_members WHERE app_id = $1 AND nid = $2", app_id, nid
        )
        return [r[0] for r in rows]

    # -- scheduled delivery ---------------------------------------------
    async def fire_due(self, now, limit, *, fanout_threshold, prepare=None) -> list:
        async def publish(conn, app_id, item):
            return await _tx.publish(conn, app_id, item, fanout_threshold)

        fired = []
        for _ in range(limit):  # one transaction each (schedule.fire_one)
            one = await self._call(_sched.fire_one, now, publish, prepare, tx=True)
            if one is None:
                break
            fired.append(one)
        return fired

    async def next_due(self) -> float | None:
        return await self._call(_sched.next_due)

    async def fired_unqueued(self, before, limit) -> list[tuple[str, str, float]]:
        return await self._call(_sched.fired_unqueued, before, limit)

    async def mark_queued(self, fired) -> None:
        if fired:
            await self._call(_sched.mark_queued, fired, tx=True)

    async def get_scheduled(self, app_id, nid):
        return await self._call(_sched.get_scheduled, app_id, nid)

    async def edit_scheduled(self, app_id, nid, change):
        return await self._call(_sched.edit, app_id, nid, change, tx=True)

    async def cancel_scheduled(self, app_id, nid) -> bool:
        return await self._call(_sched.cancel, app_id, nid)

    # -- group entries --------------------------------------------------
    async def group_members(self, app_id, user, nid, *, limit, before, now):
        return await self._call(_groups.members, app_id, user, nid, limit, before, now)

    # -- delivery tracking ----------------------------------------------
    async def record_deliveries(self, counts) -> None:
        if counts:
            await self._call(_sched.record_deliveries, dict(counts))

    async def delivery_counts(self, app_id, nid) -> dict[str, dict[str, int]]:
        return await self._call(_sched.delivery_counts, app_id, nid)

    async def record_receipts(self, receipts) -> None:
        if receipts:
            await self._call(_sched.record_receipts, list(receipts), tx=True)

    async def receipt_counts(self, app_id, nid) -> dict[str, int]:
        return await self._call(_sched.receipt_counts, app_id, nid)

    async def timeline(self, app_id, nid, user) -> UserTimeline | None:
        return await self._call(_timeline.timeline, app_id, nid, user)

    async def outbound_users(self, app_id, nid) -> dict[str, dict[str, int]]:
        return await self._call(_timeline.outbound_users, app_id, nid)

    # -- streams and inboxes --------------------------------------------
    async def stream_head(self, app_id, user, now) -> StreamHead:
        async def head(conn):
            row = await conn.fetchrow(HEAD, app_id, user)
            if row is None:
                await conn.execute(NEW_STREAM, app_id, user)
                row = await conn.fetchrow(HEAD, app_id, user)
            return row

        epoch, head_seq, floor_seq, head_feed, floor_feed, prefs = await self._call(head)
        if prefs is None:
            return StreamHead(epoch, head_seq, floor_seq + 1, head_feed, floor_feed + 1,
                              NONE_MUTED)
        doc = _decode_prefs(prefs)
        return StreamHead(epoch, head_seq, floor_seq + 1, head_feed, floor_feed + 1,
                          muted_in(doc), doc.locale or "")

    async def key_used_since(self, app_id, key, since) -> bool:
        return await self._fetchval(
            "SELECT true FROM idempotency WHERE app_id = $1 AND key = $2 AND created_at > $3",
            app_id, key, since) is not None

    async def stream_heads(self, app_id, users):
        return {user: (epoch, seq) for user, epoch, seq in
                await self._fetch(HEADS, app_id, list(users))}

    async def replay(self, app_id, user, after_seq, after_feed, limit, now, muted=None):
        if muted is None:
            muted = await self.muted(app_id, user)
        args = (app_id, user, after_seq, after_feed, now, limit)
        rows = await (self._fetch(REPLAY_MUTED, *args, sorted(muted)) if muted
                      else self._fetch(REPLAY, *args))
        personal: list[Entry] = []
        feed: list[Entry] = []
        for is_feed, nid, body, state, created, pos, gid, grp, key in rows:
            if is_feed:
                feed.append(Entry(nid, body, STATE_NAME[state], created, feed=pos))
            else:
                personal.append(_groups.personal_entry(nid, body, state, created, pos, gid, grp,
                                                       key))
        return personal, feed

    async def replay_exceeds(self, app_id, user, after_seq, after_feed, limit, now,
                             muted=None) -> bool:
        if muted is None:
            muted = await self.muted(app_id, user)
        args = (app_id, user, after_seq, after_feed, now, limit)
        return await (self._fetchval(REPLAY_EXCEEDS_MUTED, *args, sorted(muted)) if muted
                      else self._fetchval(REPLAY_EXCEEDS, *args))

    async def inbox(self, app_id, user, *, limit, before, state, now, categories=(),
                    tags=(), muted=None) -> list[Entry]:
        # Mutes not given are read by the statement (sql.STORED_MUTES).
        if categories or tags:
            return await self._inbox_filtered(app_id, user, limit, before, state, now,
                                              tuple(categories), tuple(tags), muted)
        sql = _INBOX[_mutes_kind(muted)][state, before is not None]
        args: tuple = (app_id, user, now, limit) if before is None else (
            app_id, user, now, limit, before)
        if muted:
            args += (sorted(muted),)
        entries = [
            Entry(nid, body, STATE_NAME[st], created, feed=pos) if is_feed
            else _groups.personal_entry(nid, body, st, created, pos, gid, grp, key, snoozed)
            for is_feed, nid, body, st, created, pos, gid, grp, key, snoozed
            in await self._fetch(sql, *args)
        ]
        entries.sort(key=by_place, reverse=True)
        return entries[:limit]

    async def _inbox_filtered(self, app_id, user, limit, before, state, now,
                              categories: tuple[str, ...], tags: tuple[str, ...],
                              muted: frozenset[str] | None) -> list[Entry]:
        """A filtered page (sql.inbox_filtered_sql).  The SQL judges every body
        but those with a NUL escape, which ``shown_by`` judges here; when that
        drops some, the rows past the last one both halves were sure of are
        read again, from there, until the page is full or the rows run out."""
        entries: list[Entry] = []
        filters = [f for f in (categories, tags) if f]
        while True:
            sql = _filtered_sql(state, before is not None, bool(categories), bool(tags),
                                _mutes_kind(muted))
            args = (app_id, user, now, limit, *(() if before is None else (before,)), *filters,
                    *([sorted(muted)] if muted else []))
            rows = await self._fetch(sql, *args)
            # a half that filled its LIMIT may hold more below its last row
            # (three halves: by id, back from a snooze, feed items; a row's
            # place is its page_key or its id)
            halves = ([r for r in rows if not r[0] and r[8] is None],
                      [r for r in rows if r[8] is not None], [r for r in rows if r[0]])
            floor = max((half[-1][8] or half[-1][1] for half in halves if len(half) == limit),
                        default=None)
            for is_feed, nid, body, st, created, pos, gid, grp, key, snoozed in rows:
                if floor is not None and (key or nid) < floor or not shown_by(
                        body, categories, tags):
                    continue
                entries.append(Entry(nid, body, STATE_NAME[st], created, feed=pos) if is_feed
                               else _groups.personal_entry(nid, body, st, created, pos, gid, grp,
                                                           key, snoozed))
            if floor is None or len(entries) >= limit:
                break
            before = floor
        entries.sort(key=by_place, reverse=True)
        return entries[:limit]

    async def counts(self, app_id, user, now, muted=None) -> Counts:
        # One statement, so one snapshot: the counts and the heads as of the
        # same commits (docs/protocol.md, "Counts and the badge"), and, when
        # the caller holds no mutes, as the mutes of that snapshot say.
        if muted is None:
            return Counts(*await self._fetchrow(COUNTS_STORED_MUTES, app_id, user, now))
        if muted:
            return Counts(*await self._fetchrow(COUNTS_MUTED, app_id, user, now, sorted(muted)))
        return Counts(*await self._fetchrow(COUNTS, app_id, user, now))

    async def counts_many(self, app_id, users, now, muted=None) -> dict[str, Counts]:
        # The mutes not given are read by the statement, in its snapshot,
        # like ``counts``'s: never a statement before it.
        known = muted or {}
        unknown = [u for u in users if u not in known]
        mutes = {u: m for u, m in known.items() if m}
        out: dict[str, Counts] = {}
        if unknown:
            rows = await self._fetch(COUNTS_MANY_STORED_MUTES, app_id, unknown, now)
            out.update((row[0], Counts(*row[1:])) for row in rows)
        plain = [u for u in users if u in known and u not in mutes]
        if plain:
            rows = await self._fetch(COUNTS_MANY, app_id, plain, now)
            out.update((row[0], Counts(*row[1:])) for row in rows)
        muting = [u for u in users if u in mutes]
        if muting:
            rows = await self._fetch(COUNTS_MANY_MUTED, app_id, muting, now,
                                     [",".join(sorted(mutes[u])) for u in muting])
            out.update((row[0], Counts(*row[1:])) for row in rows)
        return out

    async def set_state(self, app_id, user, ids, state, now) -> list[str]:
        if ids is None:
            rows = await self._fetch(SET_STATE, app_id, user, STATE_CODE[state], now)
        else:
            rows = await self._fetch(
                SET_STATE_IDS, app_id, user, STATE_CODE[state], now, list(ids)
            )
        return [r[0] for r in rows]

    async def snooze(self, app_id, user, ids, until, now) -> list[str]:
        return await self._call(_snooze.snooze, app_id, user, list(ids), until, now, tx=True)

    async def resurface(self, app_id, user, ids, now) -> list[Resurfaced]:
        return await self._call(_snooze.resurface, app_id, user, list(ids), now, tx=True)

    async def wake_snoozed(self, now, limit) -> list[Resurfaced]:
        back = []
        for _ in range(limit):  # one transaction each (snooze.wake_one)
            one = await self._call(_snooze.wake_one, now, tx=True)
            if one is None:
                break
            back.append(one)
        return back

    async def next_snooze(self) -> float | None:
        return await self._call(_snooze.next_snooze)

    # -- topics ---------------------------------------------------------
    async def subscribe(self, app_id, topic, users) -> int:
        # Sorted, like every multi-row write, so overlapping bulk subscribes
        # wait for each other instead of deadlocking.
        return await self._fetchval(
            "WITH added AS (INSERT INTO topic_subs (app_id, topic, user_id) "
            '  SELECT $1, $2, u FROM unnest($3::text[]) AS t(u) ORDER BY u COLLATE "C" '
            "  ON CONFLICT DO NOTHING RETURNING 1) " + _BUMP_USERS +
            "SELECT count(*) FROM added",
            app_id, topic, list(dict.fromkeys(users)),
        )

    async def unsubscribe(self, app_id, topic, users) -> int:
        return await self._fetchval(
            "WITH gone AS (DELETE FROM topic_subs WHERE app_id = $1 AND topic = $2 "
            "  AND user_id = ANY($3) RETURNING 1) " + _BUMP_USERS +
            "SELECT count(*) FROM gone",
            app_id, topic, list(dict.fromkeys(users)),
        )

    async def topic_info(self, app_id, topic, limit) -> tuple[int, list[str]]:
        row = await self._fetchrow(
            "SELECT (SELECT count(*) FROM topic_subs WHERE app_id = $1 AND topic = $2), "
            "ARRAY(SELECT user_id FROM topic_subs WHERE app_id = $1 AND topic = $2 "
            "      ORDER BY user_id LIMIT $3)",
            app_id, topic, limit,
        )
        return row[0], list(row[1])

    async def user_topics(self, app_id, user) -> list[str]:
        rows = await self._fetch(
            "SELECT topic FROM topic_subs WHERE app_id = $1 AND user_id = $2 ORDER BY topic",
            app_id, user,
        )
        return [r[0] for r in rows]

    async def topics_many(self, app_id, users) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for user, topic in await self._fetch(
                "SELECT user_id, topic FROM topic_subs WHERE app_id = $1 "
                "AND user_id = ANY($2::text[]) ORDER BY user_id, topic", app_id, list(users)):
            out.setdefault(user, []).append(topic)
        return out

    # -- preferences ----------------------------------------------------
    async def get_preferences(self, app_id, user) -> Preferences:
        doc = await self._fetchval(
            "SELECT doc FROM prefs WHERE app_id = $1 AND user_id = $2", app_id, user
        )
        return _decode_prefs(doc) if doc is not None else Preferences()

    async def muted(self, app_id, user) -> frozenset[str]:
        doc = await self._fetchval(
            "SELECT doc FROM prefs WHERE app_id = $1 AND user_id = $2", app_id, user
        )
        return muted_in(_decode_prefs(doc)) if doc is not None else NONE_MUTED

    async def muted_many(self, app_id, users) -> dict[str, frozenset[str]]:
        rows = await self._fetch(
            "SELECT user_id, doc FROM prefs WHERE app_id = $1 AND user_id = ANY($2::text[])",
            app_id, list(users))
        out = {user: muted_in(_decode_prefs(doc)) for user, doc in rows}
        return {user: m for user, m in out.items() if m}

    async def locales_many(self, app_id, users) -> dict[str, str]:
        rows = await self._fetch(
            "SELECT user_id, doc FROM prefs WHERE app_id = $1 AND user_id = ANY($2::text[])",
            app_id, list(users))
        out = {user: _decode_prefs(doc).locale for user, doc in rows}
        return {user: locale for user, locale in out.items() if locale}

    # -- the app's categories -------------------------------------------
    async def get_categories(self, app_id) -> bytes | None:
        return await self._fetchval("SELECT doc FROM app_categories WHERE app_id = $1", app_id)

    async def put_categories(self, app_id, doc, *, audit=None) -> None:
        async def put(conn):
            await conn.execute(
                "INSERT INTO app_categories (app_id, doc) VALUES ($1, $2) "
                "ON CONFLICT (app_id) DO UPDATE SET doc = EXCLUDED.doc", app_id, doc,
            )
            await insert_audit(conn, audit)

        await self._call(put, tx=True)

    async def put_preferences(self, app_id, user, prefs) -> None:
        await self._call(_put_prefs, app_id, user, prefs, tx=True)

    async def update_preferences(self, app_id, user, change, retime=None) -> Preferences | None:
        async def stored(conn, old: Preferences, changed: Preferences) -> Preferences:
            retimer = retime(old, changed) if retime is not None else None
            if retimer is not None:
                await retime_jobs(conn, app_id, user, retimer)
            return changed

        async def update(conn):
            # The user's row is locked from the read to the commit, so
            # concurrent updates (and puts, whose upsert takes the same lock)
            # queue behind each other and each reads what the last wrote.
            # A user with no row yet has nothing to lock: the first writer
            # inserts it, and one that finds it taken reads it again, locked.
            for _ in range(2):
                doc = await conn.fetchval(
                    "SELECT doc FROM prefs WHERE app_id = $1 AND user_id = $2 FOR UPDATE",
                    app_id, user)
                old = _decode_prefs(doc) if doc is not None else Preferences()
                changed = change(old)
                if changed is None:
                    return None
                if doc is not None:
                    await _put_prefs(conn, app_id, user, changed)
                    return await stored(conn, old, changed)
                if await conn.fetchval(
                        "INSERT INTO prefs (app_id, user_id, doc) VALUES ($1, $2, $3) "
                        "ON CONFLICT (app_id, user_id) DO NOTHING RETURNING true",
                        app_id, user, _encode(changed)):
                    await _put_mutes(conn, app_id, user, changed)
                    return await stored(conn, old, changed)
            raise AssertionError("a preferences row that exists was not found")

        return await self._call(update, tx=True)

    # -- maintenance ----------------------------------------------------
    async def prune(self, app_id, older_than) -> Pruned:
        return await self._call(_tx.prune, app_id, older_than)


# -- statements run on one pooled connection ------------------------------------

# The tail of a topic's membership change: the revision of each user of $3
# (Counts.rev), sorted.
_BUMP_USERS = (", bumped AS (" + BUMP_REV + ' SELECT $1, u, 1 FROM unnest($3::text[]) AS t(u) '
               'ORDER BY u COLLATE "C" ' + ON_REV + ") ")


async def _put_prefs(conn, app_id: str, user: str, prefs: Preferences) -> None:
    """Store ``prefs`` and the in-app mutes they say (the caller's transaction).
    The upsert comes first: it locks the user's row, so writers of one
    user's preferences go one at a time."""
    await conn.execute(
        "INSERT INTO prefs (app_id, user_id, doc) VALUES ($1, $2, $3) "
        "ON CONFLICT (app_id, user_id) DO UPDATE SET doc = EXCLUDED.doc",
        app_id, user, _encode(prefs),
    )
    await _put_mutes(conn, app_id, user, prefs)


async def _put_mutes(conn, app_id: str, user: str, prefs: Preferences) -> None:
    """The user's in-app mutes, and the revision of their counts (``Counts.rev``)."""
    await conn.execute("DELETE FROM mutes WHERE app_id = $1 AND user_id = $2", app_id, user)
    await conn.execute(
        "WITH bumped AS (" + BUMP_REV + " VALUES ($1, $2, 1) " + ON_REV + ") "
        "INSERT INTO mutes (app_id, category, user_id) "
        "SELECT $1, c, $2 FROM unnest($3::text[]) AS t(c)", app_id, user,
        sorted(c for c, ch in prefs.categories.items() if not ch.in_app),
    )


async def _fetch(conn, sql, *args):
    return await conn.fetch(sql, *args)


async def _fetchrow(conn, sql, *args):
    return await conn.fetchrow(sql, *args)


async def _fetchval(conn, sql, *args):
    return await conn.fetchval(sql, *args)


async def _execute(conn, sql, *args):
    return await conn.execute(sql, *args)


async def _leases(conn) -> list[Lease]:
    return [Lease(*r) for r in await conn.fetch(
        "SELECT node, address, pid, expires_at FROM node_leases "
        "WHERE expires_at > extract(epoch FROM clock_timestamp()) ORDER BY node")]
