"""The embedded store: one SQLite file in WAL mode.

All writes go through one writer thread that owns the write connection and
commits in groups: whatever jobs queued up while the previous transaction ran
are executed in the next one, each inside its own SAVEPOINT so that one bad
job fails alone.  Under load that turns thousands of publishes per second
into a few dozen commits; idle, a publish commits at once.  (aiosqlite's
one-thread-hop-per-call costs 5x; docs/design.md §6.)

Reads run inline on the event loop thread on a second connection: WAL gives
them a consistent snapshot, and a primary-key read costs a few microseconds,
less than a thread hop.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import queue
import re
import shutil
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

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
from tidings.store.sqlite import entries as _entries
from tidings.store.sqlite import groups as _groups
from tidings.store.sqlite import publish as _tx
from tidings.store.sqlite import schedule as _sched
from tidings.store.sqlite import snooze as _snooze
from tidings.store.sqlite import timeline as _timeline
from tidings.store.sqlite.appends import STATEMENTS_CACHED, WriterConnection
from tidings.store.sqlite.audit import SQLiteAudit, insert_audit
from tidings.store.sqlite.digests import SQLiteDigests
from tidings.store.sqlite.errors import BUSY, CANNOT_WRITE, primary_code
from tidings.store.sqlite.keys import SQLiteKeys
from tidings.store.sqlite.outbound import SQLiteOutbound, retime_tx

STATE_CODE = {"unseen": 0, "seen": 1, "read": 2, "archived": 3}
STATE_NAME = ("unseen", "seen", "read", "archived", "snoozed")
_STATE_FILTER = {  # inbox ?state= -> SQL predicate on the state column "st"
    None: "st < 3", "unread": "st < 2", "unseen": "st = 0", "seen": "st = 1",
    "read": "st = 2", "archived": "st = 3", "snoozed": "st = 4", "all": "1",
}


def _filter(categories: tuple[str, ...], tags: tuple[str, ...]) -> tuple[str, tuple]:
    """The inbox's ?category= and ?tag= as SQL on the notification ``n`` an
    entry shows, and its arguments.  Exact: the category is a column, the tags
    are read from the stored body (JSON) by SQLite's json_each (the CAST:
    SQLite 3.45 reads a BLOB given to a JSON function as JSONB).  Both halves
    of a page sort the user's rows already (ORDER BY +nid): a filter adds a
    test per row read, not a different plan."""
    sql = ""
    args: tuple[str, ...] = ()
    if categories:
        sql += f" AND n.category IN ({','.join('?' * len(categories))})"
        args += tuple(categories)
    if tags:
        sql += (" AND EXISTS (SELECT 1 FROM json_each(CAST(n.body AS TEXT), '$.tags') t "
                f"WHERE t.value IN ({','.join('?' * len(tags))}))")
        args += tuple(tags)
    return sql, args
# A user's counts, the position they were read at, when the first unread
# entry they count expires (the scalar min() of SQLite is NULL when either
# side is, hence the coalesces) and their revision, the user's and the app's
# (SQLiteStore.counts).
_COUNTS = (
    "SELECT p.unread + f.unread, p.unseen + f.unseen, "
    "coalesce((SELECT head_seq FROM streams WHERE app_id=:app AND user_id=:user), 0), "
    "coalesce((SELECT head FROM feed_heads WHERE app_id=:app), 0), "
    "min(coalesce(p.expires, f.expires), coalesce(f.expires, p.expires)), "
    "(SELECT coalesce(sum(rev), 0) FROM counts_revs WHERE app_id=:app AND user_id IN ('', :user)) "
    "FROM (SELECT coalesce(sum(state < 2), 0) AS unread, coalesce(sum(state = 0), 0) AS unseen, "
    "             min(CASE WHEN state < 2 THEN expires_at END) AS expires "
    "      FROM inbox WHERE app_id=:app AND user_id=:user "
    "      AND (expires_at IS NULL OR expires_at>:now)) AS p, "
    "     (SELECT coalesce(sum(coalesce(fs.state, 0) < 2), 0) AS unread, "
    "             coalesce(sum(coalesce(fs.state, 0) = 0), 0) AS unseen, "
    "             min(CASE WHEN coalesce(fs.state, 0) < 2 THEN n.expires_at END) AS expires "
    "      FROM notifications n "
    "      LEFT JOIN feed_state fs ON fs.app_id=n.app_id AND fs.user_id=:user AND fs.nid=n.id "
    "      WHERE n.app_id=:app AND n.feed_offset > 0 AND n.deleted=0 "
    "      AND (n.expires_at IS NULL OR n.expires_at>:now) AND (n.audience='*' OR n.audience IN "
    "      (SELECT topic FROM topic_subs WHERE app_id=n.app_id AND user_id=:user)){mutes}) AS f"
)


@functools.cache
def _counts_sql(mutes: int | None) -> str:
    """_COUNTS leaving out feed items of ``mutes`` categories (:m0, :m1, ...),
    or (None) of those the user muted, read by the statement."""
    return _COUNTS.format(mutes=_not_muted(mutes, ":m{}", ":app", ":user"))


# A feed item the user sees: a broadcast, or an item of a topic they follow.
_VISIBLE_FEED = (
    "(n.audience='*' OR n.audience IN "
    "(SELECT topic FROM topic_subs WHERE app_id=n.app_id AND user_id=?))"
)
# What a replay reads past a stream's position, oldest first (SQLiteStore.replay
# and replay_exceeds).  Personal entries: app, user, after seq, now.  Feed
# items visible to the user: app, after offset, now, user, then the mutes.
_PERSONAL_PAST = (
    " FROM inbox i JOIN notifications n ON n.app_id=i.app_id AND n.id=i.nid "
    "WHERE i.app_id=? AND i.user_id=? AND i.seq>? AND i.state<>4 "
    "AND (i.expires_at IS NULL OR i.expires_at>?) ORDER BY i.seq"
)


@functools.cache
def _feed_past(mutes: int) -> str:
    return (
        " WHERE n.app_id=? AND n.feed_offset>? AND n.deleted=0 "
        "AND (n.expires_at IS NULL OR n.expires_at>?) AND " + _VISIBLE_FEED
        + _not_muted(mutes) + " ORDER BY n.feed_offset"
    )


def _not_muted(n: int | None, mark: str = "?", app: str = "?", user: str = "?") -> str:
    """The predicate that leaves out feed items of ``n`` muted categories
    (none: nothing, so a user with no mutes runs the statement as before).
    None: the caller does not hold the user's mutes, and the statement reads
    them itself (parameters ``app`` and ``user``), from the mutes table that
    every write of the preferences rewrites in the same transaction, by its
    mutes_user index (sqlite_018.sql): once per statement, in its snapshot."""
    if n is None:
        return (" AND n.category NOT IN (SELECT category FROM mutes "
                f"WHERE app_id={app} AND user_id={user})")
    if not n:
        return ""
    return " AND n.category NOT IN ({})".format(",".join(mark.format(i) for i in range(n)))


def _mutes_args(app_id: str, user: str, muted: frozenset[str] | None) -> tuple[str, ...]:
    """The parameters of ``_not_muted`` for ``muted`` (None: read by the statement)."""
    return (app_id, user) if muted is None else tuple(muted)


# Where a personal entry sorts in a page: its id, or when it came back from a
# snooze (sqlite_022.sql).  ``+``: as ``+i.nid`` was, no app-wide index walk.
_PLACE = "coalesce(i.page_key, +i.nid)"

log = logging.getLogger("tidings.store")
DIALECT = "sqlite"
MAX_GROUP = 1000  # jobs per transaction
PROBE_ROOM = 1 << 20  # free bytes a store that hit a full disk needs to be ready again
WAL_LIMIT_BYTES = 64 << 20
IN_CHUNK = 500  # host parameters per IN (...) list
# SQLite's own checkpoint runs inside the COMMIT that takes the WAL past
# 1,000 pages, so every job of that group waits for the copy and its syncs
# (under write fan-out that is nearly every commit).  The writer turns it off
# and checkpoints itself between groups, after the group was answered: once
# about CHECKPOINT_PAGES were written (estimated: COMMIT_PAGES a commit plus
# a page per row published), and at most every CHECKPOINT_INTERVAL, so that
# a page rewritten by many commits meanwhile is copied once.  With no
# transaction of its own open then, the checkpoint completes and the next
# transaction starts the WAL over.
CHECKPOINT_PAGES = 1000
COMMIT_PAGES = 4
CHECKPOINT_INTERVAL = 0.2
# The writer's page cache (SQLite's default is 2 MiB).  A publish to 1,000
# users changes the inbox page of each of them, about 2,000 pages a group
# with the tree's inner pages and the nid index: with 2 MiB each group read
# them all again from the file and wrote some out early (1,000 publishes to
# 1,000 users: 560k reads and 810k writes; with 16 MiB 230k and 640k).
WRITER_CACHE_KIB = 16 << 10

_decode_prefs = msgspec.json.Decoder(Preferences).decode
_encode = msgspec.json.encode


def _connect(path: str, synchronous: str,
             factory: type[sqlite3.Connection] = sqlite3.Connection,
             statements: int = 128) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30,
                           factory=factory, cached_statements=statements)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute(f"PRAGMA synchronous={synchronous}")
    conn.execute("PRAGMA busy_timeout=30000")
    conn.execute("PRAGMA foreign_keys=ON")
    _entries.register(conn)
    return conn


def _connect_writer(path: str, synchronous: str) -> WriterConnection:
    conn = _connect(path, synchronous, WriterConnection, STATEMENTS_CACHED)
    assert isinstance(conn, WriterConnection)
    # The writer checkpoints between groups, after answering (_Writer.run);
    # a WAL that grew under load is cut back to this size when it restarts.
    conn.execute("PRAGMA wal_autocheckpoint=0")
    conn.execute(f"PRAGMA journal_size_limit={WAL_LIMIT_BYTES}")
    conn.execute(f"PRAGMA cache_size=-{WRITER_CACHE_KIB}")
    return conn


def _schema_version(conn: sqlite3.Connection) -> int:
    row = conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
    return int(row[0]) if row else 0


def _statements(script: str):
    """A migration's statements: it is cut at each ``;`` that ends one (a
    trigger's body holds ``;`` of its own)."""
    stmt = ""
    for part in script.split(";"):
        stmt += part + ";"
        if sqlite3.complete_statement(stmt):
            if stmt.strip(" \t\n;"):
                yield stmt
            stmt = ""


# SQLite has no ADD COLUMN IF NOT EXISTS: such a statement meeting its
# column is skipped, so that a script applies again without harm, as the
# PostgreSQL scripts do with IF NOT EXISTS.
_ADD_COLUMN = re.compile(r"^\s*ALTER\s+TABLE\s+\S+\s+ADD\s", re.I | re.M)


def _execute_step(conn: sqlite3.Connection, stmt: str) -> None:
    try:
        conn.execute(stmt)
    except sqlite3.OperationalError as exc:
        if not (_ADD_COLUMN.search(stmt) and str(exc).startswith("duplicate column name")):
            raise


def _migrate(conn: sqlite3.Connection) -> list[int]:
    """Apply pending migrations (the pattern of tidings/store/migrations.py);
    returns the versions applied.  The embedded store does this on every
    open: zero configuration (docs/operations.md)."""
    conn.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
    applied: list[int] = []
    while True:
        # BEGIN IMMEDIATE is SQLite's migration lock: the version is read
        # again under it, so two processes opening one file never both apply
        # the same script.
        conn.execute("BEGIN IMMEDIATE")
        try:
            todo = migrations.pending(DIALECT, _schema_version(conn))
            if not todo:
                conn.execute("COMMIT")
                return applied
            version, script = todo[0]
            for stmt in _statements(script):
                _execute_step(conn, stmt)
            conn.execute(
                "INSERT INTO meta(key, value) VALUES('schema_version', ?) "
                "ON CONFLICT(key) DO UPDATE SET value=excluded.value", (str(version),),
            )
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        applied.append(version)


def migrate(path: str | Path) -> list[int]:
    """Bring the file at ``path`` to this code's schema; the versions applied."""
    Path(path).parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    old = os.umask(0o077)
    try:
        conn = _connect(str(path), "FULL")
    finally:
        os.umask(old)
    try:
        return _migrate(conn)
    finally:
        conn.close()


RETRY_AFTER = 2.0  # seconds a client is told to wait while the file cannot be written
PREPARE_TIMEOUT = 5.0  # seconds the writer waits for a scheduled notification's caps and plan


class _Writer(threading.Thread):
    """Owns the write connection; runs queued jobs in group commits."""

    def __init__(self, path: str, synchronous: str):
        super().__init__(name="tidings-sqlite-writer", daemon=True)
        self._path = path
        self._sync = synchronous
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._ready = threading.Event()
        self.error: BaseException | None = None
        self.commits = 0
        self.jobs_done = 0
        # Set when a write failed because the file cannot be written, cleared
        # by the next commit: readiness reads it (SQLiteStore.ping).
        self.cannot_write = False
        self._reopen = False  # a read-only connection stays so: open it again
        self._next_checkpoint = 0.0
        self._wal_pages = 0  # an estimate, with conn.rows_written
        # True while run() takes jobs: what submit asks instead of is_alive()
        # (a Python method and a lock probe per publish)
        self.running = False

    def start_and_wait(self) -> None:
        self.start()
        self._ready.wait()
        if self.error:
            raise self.error

    def submit(self, fn: Callable, *args) -> asyncio.Future:
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        if not self.running:
            fut.set_exception(Unavailable("the store's writer is stopped"))
            return fut
        self._jobs.put((fn, args, fut, loop))
        return fut

    def stop(self) -> None:
        self._jobs.put(None)
        self.join(timeout=10)

    def run(self) -> None:
        try:
            conn = _connect_writer(self._path, self._sync)
            _migrate(conn)
        except BaseException as exc:  # reported by start_and_wait
            self.error = exc
            self._ready.set()
            return
        self.running = True
        self._ready.set()
        try:
            self._serve(conn)
        finally:
            self.running = False

    def _serve(self, conn: WriterConnection) -> None:
        get, get_nowait = self._jobs.get, self._jobs.get_nowait
        stopping = False
        while not stopping:
            job = get()
            if job is None:
                break
            batch = [job]
            while len(batch) < MAX_GROUP:
                try:
                    job = get_nowait()
                except queue.Empty:
                    break
                if job is None:
                    stopping = True
                    break
                batch.append(job)
            if self._reopen:
                conn = self._reconnect(conn)
            self._run_batch(conn, batch)
            # every commit dirties a few pages, a publish's rows one each at most
            self._wal_pages += COMMIT_PAGES
            if self._wal_pages + conn.rows_written >= CHECKPOINT_PAGES:
                now = time.monotonic()
                if now >= self._next_checkpoint:
                    self._next_checkpoint = now + CHECKPOINT_INTERVAL
                    self._wal_pages = conn.rows_written = 0
                    _checkpoint(conn)
        conn.close()

    def _reconnect(self, conn: WriterConnection) -> WriterConnection:
        """SQLite opens a file it may not write read-only, and the connection
        stays read-only after the file becomes writable again: after a
        SQLITE_READONLY, the next group of jobs gets a fresh connection."""
        self._reopen = False
        try:
            fresh = _connect_writer(self._path, self._sync)
        except sqlite3.Error:
            return conn
        conn.close()
        return fresh

    def _unavailable(self, exc: sqlite3.Error) -> Unavailable | None:
        """The 503 for ``exc`` when it means the store cannot write now."""
        code = primary_code(exc)
        if code in CANNOT_WRITE:
            self.cannot_write = True
            self._reopen |= code == sqlite3.SQLITE_READONLY
        elif code not in BUSY:
            return None
        # the cause stays chained for the logs; the client sees no internals
        err = Unavailable("the store cannot write now; retry later", retry_after=RETRY_AFTER)
        err.__cause__ = exc
        return err

    def _run_batch(self, conn: WriterConnection, batch: list) -> None:
        """Run ``batch`` in one transaction.  Optimistic: jobs run back to back;
        if one raises, the whole transaction is rolled back and every job is
        run again in a transaction of its own, so that one bad job fails alone
        (cheaper than a SAVEPOINT around every job when nothing fails).
        Publishes gather their rows on ``conn``; they are written before any
        other job runs and before ``COMMIT`` (appends.py)."""
        results: list[tuple[Any, Any, Any, BaseException | None]] = []
        try:
            conn.begin()
            try:
                for fn, args, fut, loop in batch:
                    if not getattr(fn, "appends", False):
                        conn.flush()
                    results.append((fut, loop, fn(conn, *args), None))
                conn.flush()
            except Exception:
                conn.rollback()
                results = [self._run_alone(conn, job) for job in batch]
            else:
                conn.commit()
                self.commits += 1
                self.cannot_write = False
            self.jobs_done += len(batch)
        except sqlite3.Error as exc:
            conn.rollback()
            err = self._unavailable(exc) or Unavailable(f"store write failed: {exc}")
            results = [(fut, loop, None, err) for fn, args, fut, loop in batch]
        by_loop: dict[Any, list] = {}
        for fut, loop, value, error in results:
            by_loop.setdefault(loop, []).append((fut, value, error))
        for loop, items in by_loop.items():
            try:
                loop.call_soon_threadsafe(_settle, items)
            except RuntimeError:
                pass  # that loop is closed; nobody waits any more


    def _run_alone(self, conn: WriterConnection, job) -> tuple:
        fn, args, fut, loop = job
        # a job of many items fails item by item when run alone (publish_many_tx)
        fn = getattr(fn, "alone", fn)
        conn.begin()
        try:
            value = fn(conn, *args)
            conn.flush()
        except Exception as exc:
            conn.rollback()
            if isinstance(exc, sqlite3.Error):
                return (fut, loop, None, self._unavailable(exc) or exc)
            return (fut, loop, None, exc)
        conn.commit()
        self.commits += 1
        self.cannot_write = False
        return (fut, loop, value, None)

def _probe(conn: sqlite3.Connection) -> None:
    conn.execute("INSERT INTO meta(key, value) VALUES('write_probe', ?) ON CONFLICT(key) "
                 "DO UPDATE SET value=excluded.value", (repr(time.time()),))


def _checkpoint(conn: sqlite3.Connection) -> None:
    try:
        conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
    except sqlite3.Error as exc:  # the next one tries again
        log.warning("WAL checkpoint failed: %s", exc)


def _settle(items: list) -> None:
    for fut, value, exc in items:
        if fut.done():
            continue
        if exc is not None:
            fut.set_exception(exc)
        else:
            fut.set_result(value)


# an app's columns, in AppRecord's order
_APP = "id, name, signing_secret, created_at, previous_secret, previous_until"


class SQLiteStore(SQLiteKeys, SQLiteAudit, SQLiteOutbound, SQLiteDigests, Store):
    # FULL: a commit survives power loss, not only a crash of the process.
    # With group commits it costs one fsync per group, which measured the
    # same throughput as NORMAL (docs/delivery.md).
    def __init__(self, path: str | Path, *, synchronous: str = "FULL"):
        self.path = str(path)
        self._sync = synchronous
        self._writer: _Writer | None = None
        self._r: sqlite3.Connection | None = None

    # -- lifecycle ------------------------------------------------------
    async def open(self) -> None:
        # The file holds every app's signing secret: owner-only from the start.
        Path(self.path).parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        old = os.umask(0o077)
        try:
            self._writer = _Writer(self.path, self._sync)
            self._writer.start_and_wait()
            self._r = _connect(self.path, self._sync)
        finally:
            os.umask(old)

    async def close(self) -> None:
        if self._writer:
            self._writer.stop()
            self._writer = None
        if self._r:
            self._r.close()
            self._r = None

    async def ping(self) -> bool:
        """Reads answer and writes commit.  While the last write failed for
        want of a writable file, a small write is tried (readiness stays red
        until it commits); otherwise no write is spent on it.  A small write
        can commit into WAL space the file already has while a publish
        needing new pages still fails, so a full disk is also checked for
        ``PROBE_ROOM`` free bytes."""
        try:
            self._reader.execute("SELECT 1").fetchone()
        except (sqlite3.Error, Unavailable):
            return False
        writer = self._writer
        if not (writer and writer.is_alive()):
            return False
        if writer.cannot_write:
            if shutil.disk_usage(Path(self.path).parent).free < PROBE_ROOM:
                return False
            try:
                await self._write(_probe)
            except Unavailable:
                return False
        return True

    def _write(self, fn: Callable, *args) -> asyncio.Future:
        if self._writer is None:
            raise Unavailable("store is closed")
        return self._writer.submit(fn, *args)

    @property
    def _reader(self) -> sqlite3.Connection:
        if self._r is None:
            raise Unavailable("store is closed")
        return self._r

    def _q(self, sql: str, args: tuple | list = ()) -> list:
        return self._reader.execute(sql, args).fetchall()

    def _q1(self, sql: str, args: tuple | list | dict = ()):
        return self._reader.execute(sql, args).fetchone()

    # -- sealed secrets (tidings/store/sealed.py) -----------------------
    async def secret_rows(self, place: Place) -> list[tuple]:
        return [tuple(r) for r in self._q(place.select())]

    async def reseal(self, before: Seal, after: Seal, *, force: bool = False,
                     audit=None) -> int:
        def reseal(conn):
            # the writer's transaction holds the file's write lock, so a node's
            # lease (a write) comes before it, seen here, or after it
            if not force:
                refuse_serving(_leases(conn))
            # the cells the old values leave are zeroed, not left in the file
            conn.execute("PRAGMA secure_delete=ON")
            try:
                n = _reseal_tx(conn, before, after)
            finally:
                conn.execute("PRAGMA secure_delete=OFF")  # the writer's other work needs none
            if audit is not None:
                insert_audit(conn, audit(n))
            return n

        return await self._write(reseal)

    # -- the nodes serving the store ------------------------------------
    async def lease(self, node: str, address: str, pid: int, ttl: float) -> None:
        def lease(conn):
            now = time.time()
            conn.execute("DELETE FROM node_leases WHERE expires_at <= ?", (now,))
            conn.execute(LEASE.format("?", "?", "?", "?"), (node, address, pid, now + ttl))

        await self._write(lease)

    async def release(self, node: str) -> None:
        await self._write(lambda conn: conn.execute("DELETE FROM node_leases WHERE node=?",
                                                    (node,)))

    async def leases(self) -> list[Lease]:
        return _leases(self._reader)

    # -- apps (keys: tidings/store/sqlite/keys.py) ----------------------
    async def pepper(self) -> bytes:
        row = self._q1("SELECT value FROM meta WHERE key='pepper'")
        if row:
            return open_pepper(self.seal, row[0])
        made = self.seal.wrap(os.urandom(32).hex(), PEPPER_PLACE, "value")

        def make(conn):
            conn.execute(
                "INSERT INTO meta(key, value) VALUES('pepper', ?) ON CONFLICT(key) DO NOTHING",
                (made,),
            )
            return conn.execute("SELECT value FROM meta WHERE key='pepper'").fetchone()[0]

        return open_pepper(self.seal, await self._write(make))

    async def create_app(self, app_id: str, name: str, signing_secret: str, *,
                         audit: AuditEntry | None = None) -> AppRecord:
        now = time.time()
        stored = self.seal.wrap(signing_secret, app_place(app_id), "signing_secret")

        def insert(conn):
            conn.execute(
                "INSERT INTO apps(id, name, signing_secret, created_at) VALUES (?,?,?,?)",
                (app_id, name, stored, now),
            )
            insert_audit(conn, audit)

        await self._write(insert)
        return AppRecord(app_id, name, signing_secret, now)

    async def get_app(self, app_id: str) -> AppRecord | None:
        row = self._q1(f"SELECT {_APP} FROM apps WHERE id=?", (app_id,))
        return open_app(self.seal, row) if row else None

    async def list_apps(self) -> list[AppRecord]:
        rows = self._q(f"SELECT {_APP} FROM apps ORDER BY created_at")
        return [open_app(self.seal, r) for r in rows]

    async def rotate_signing_secret(self, app_id: str, secret: str, previous_until: float,
                                    *, audit: AuditEntry | None = None) -> AppRecord | None:
        where = app_place(app_id)
        stored = self.seal.wrap(secret, where, "signing_secret")

        def rotate(conn):
            # the writer's transaction: nothing changes the row between the
            # read of the old secret and its move
            row = conn.execute("SELECT signing_secret FROM apps WHERE id=?", (app_id,)).fetchone()
            if row is None:
                return None
            previous = self.seal.moved(row[0], where, "signing_secret", "previous_secret")
            conn.execute("UPDATE apps SET previous_secret=?, previous_until=?, "
                         "signing_secret=? WHERE id=?", (previous, previous_until, stored, app_id))
            insert_audit(conn, audit)
            return conn.execute(f"SELECT {_APP} FROM apps WHERE id=?", (app_id,)).fetchone()

        row = await self._write(rotate)
        return open_app(self.seal, row) if row else None

    async def end_dashboard_session(self, session_id: str, expires: float,
                                    now: float, *, audit: AuditEntry | None = None) -> None:
        def end(conn):
            conn.execute("DELETE FROM ended_sessions WHERE expires <= ?", (now,))
            conn.execute("INSERT INTO ended_sessions(id, expires) VALUES (?,?) "
                         "ON CONFLICT(id) DO NOTHING", (session_id, expires))
            insert_audit(conn, audit)

        await self._write(end)

    async def dashboard_session_ended(self, session_id: str) -> bool:
        return self._q1("SELECT 1 FROM ended_sessions WHERE id=?", (session_id,)) is not None

    # -- users' tokens revoked ---------------------------------------------
    async def revoke_tokens(self, app_id: str, user: str, before: float,
                            forget_before: float, *, limit: int | None = None,
                            audit=None) -> float | None:
        def revoke(conn):
            conn.execute("DELETE FROM token_revocations WHERE app_id=? AND revoked_before<?",
                         (app_id, forget_before))
            # the writer's transaction holds the file's write lock: the later
            # cutoff wins whichever process wrote first, and the limit holds
            if limit is not None and conn.execute(
                    "SELECT 1 FROM token_revocations WHERE app_id=? AND user_id=?",
                    (app_id, user)).fetchone() is None:
                (n,) = conn.execute("SELECT count(*) FROM token_revocations WHERE app_id=?",
                                    (app_id,)).fetchone()
                if n >= limit:
                    return None
            conn.execute(
                "INSERT INTO token_revocations(app_id, user_id, revoked_before) VALUES (?,?,?) "
                "ON CONFLICT(app_id, user_id) DO UPDATE "
                "SET revoked_before=max(revoked_before, excluded.revoked_before)",
                (app_id, user, before))
            (stored,) = conn.execute("SELECT revoked_before FROM token_revocations "
                                     "WHERE app_id=? AND user_id=?", (app_id, user)).fetchone()
            if audit is not None:
                insert_audit(conn, audit(stored))
            return stored

        return await self._write(revoke)

    async def token_revocations(self, since: float) -> list[tuple[str, str, float]]:
        rows = self._q("SELECT app_id, user_id, revoked_before FROM token_revocations "
                       "WHERE revoked_before>?", (since,))
        return [(app, user, before) for app, user, before in rows]

    async def revoke_token_id(self, app_id: str, user: str, jti: str, until: float,
                              now: float, *, limit: int | None = None,
                              audit=None) -> float | None:
        def revoke(conn):
            conn.execute("DELETE FROM revoked_tokens WHERE app_id=? AND revoked_until<=?",
                         (app_id, now))
            # the writer's transaction holds the file's write lock: the later
            # end wins whichever process wrote first, and the limit holds
            if limit is not None and conn.execute(
                    "SELECT 1 FROM revoked_tokens WHERE app_id=? AND user_id=? AND jti=?",
                    (app_id, user, jti)).fetchone() is None:
                (n,) = conn.execute("SELECT count(*) FROM revoked_tokens WHERE app_id=?",
                                    (app_id,)).fetchone()
                if n >= limit:
                    return None
            conn.execute(
                "INSERT INTO revoked_tokens(app_id, user_id, jti, revoked_until, revoked_at) "
                "VALUES (?,?,?,?,?) ON CONFLICT(app_id, user_id, jti) DO UPDATE "
                "SET revoked_until=max(revoked_until, excluded.revoked_until), "
                "revoked_at=excluded.revoked_at", (app_id, user, jti, until, now))
            (stored,) = conn.execute("SELECT revoked_until FROM revoked_tokens "
                                     "WHERE app_id=? AND user_id=? AND jti=?",
                                     (app_id, user, jti)).fetchone()
            if audit is not None:
                insert_audit(conn, audit(stored))
            return stored

        return await self._write(revoke)

    async def token_id_revocations(self, since: float,
                                   now: float) -> list[tuple[str, str, str, float]]:
        rows = self._q("SELECT app_id, user_id, jti, revoked_until FROM revoked_tokens "
                       "WHERE revoked_at>? AND revoked_until>?", (since, now))
        return [(app, user, jti, until) for app, user, jti, until in rows]

    # -- publishing -----------------------------------------------------
    async def publish(self, app_id, item, *, fanout_threshold, window) -> PublishOutcome:
        return await self._write(_tx.publish_tx, app_id, item, fanout_threshold, window)

    async def publish_many(self, app_id, items, *, fanout_threshold, window) -> list:
        # one job: a batch request is one hand-off to the writer and one
        # answer back, its rows in the multi-row INSERTs of its group
        try:
            return await self._write(_tx.publish_many_tx, app_id, items, fanout_threshold,
                                     window)
        except Exception as exc:  # the whole transaction failed (e.g. 503): every item
            return [exc] * len(items)

    async def get_notification(self, app_id, nid) -> StoredNotification | None:
        row = self._q1(
            "SELECT id, body, category, created_at, expires_at, audience, feed_offset, recipients "
            "FROM notifications WHERE app_id=? AND id=? AND deleted=0", (app_id, nid),
        )
        if not row:
            return None
        if row[6] is None:
            # plain entries of nid, and the group entries holding it
            rows = self._q(
                f"SELECT state, count(*) FROM inbox WHERE {_entries.PLAIN} GROUP BY state "
                f"UNION ALL SELECT state, count(*) FROM {_entries.BACK} "
                f"WHERE {_entries.BACK_WHERE} GROUP BY state", (app_id, nid),
            ) + _groups.state_counts(self._reader, app_id, nid)
        else:
            rows = self._q(
                "SELECT state, count(*) FROM feed_state WHERE app_id=? AND nid=? GROUP BY state",
                (app_id, nid),
            )
        stats = {name: 0 for name in STATE_NAME[:4]}
        for code, n in rows:
            # a snoozed entry (4) is back unseen: counted so until then
            stats[STATE_NAME[code if code < 4 else 0]] += n
        return StoredNotification(
            id=row[0], body=row[1], category=row[2], created_at=row[3], expires_at=row[4],
            audience=row[5], feed_offset=row[6], recipients=row[7], stats=stats,
        )

    async def update_notification(self, app_id, nid, body) -> StoredNotification | None:
        def update(conn):
            return conn.execute(
                "UPDATE notifications SET body=? WHERE app_id=? AND id=? AND deleted=0",
                (body, app_id, nid),
            ).rowcount

        if not await self._write(update):
            return None
        return await self.get_notification(app_id, nid)

    async def delete_notification(self, app_id, nid, now=None) -> Retraction | None:
        old = await self.get_notification(app_id, nid)
        if old is None:
            return None
        at = time.time() if now is None else now

        def delete(conn):
            if not conn.execute(
                "UPDATE notifications SET deleted=1 WHERE app_id=? AND id=? AND deleted=0",
                (app_id, nid),
            ).rowcount:
                return None  # retracted meanwhile
            users, regrouped, unread = _groups.retract_tx(conn, app_id, nid, at)
            # its plain entries (a group entry holding it was rebuilt above)
            for user, state, expires in [*conn.execute(
                f"DELETE FROM inbox WHERE {_entries.PLAIN} RETURNING user_id, state, expires_at",
                (app_id, nid),
            ), *conn.execute(
                f"DELETE FROM {_entries.BACK} WHERE {_entries.BACK_WHERE} "
                "RETURNING user_id, state, expires_at", (app_id, nid),
            )]:
                users.append(user)
                if state < 2 and (expires is None or expires > at):
                    unread.append(user)
            conn.execute("DELETE FROM feed_state WHERE app_id=? AND nid=?", (app_id, nid))
            _tx.bump_revs_tx(conn, app_id, [""])  # a feed item's followers are not listed
            return Retraction(old, sorted(set(users)), sorted(set(unread)), regrouped)

        return await self._write(delete)

    async def recipients_of(self, app_id, nid) -> list[str]:
        rows = self._q(
            f"SELECT user_id FROM inbox WHERE {_entries.PLAIN} "
            f"UNION SELECT user_id FROM {_entries.BACK} WHERE {_entries.BACK_WHERE} "
            "UNION SELECT user_id FROM group_members WHERE app_id=?1 AND nid=?2", (app_id, nid),
        )
        return [r[0] for r in rows]

    # -- scheduled delivery ---------------------------------------------
    async def fire_due(self, now, limit, *, fanout_threshold, prepare=None) -> list:
        def publish(conn, app_id, item):
            out = _tx.publish_tx(conn, app_id, item, fanout_threshold, 0.0)
            conn.flush()  # inside fire_due_tx's savepoint: a bad row fails this one alone
            return out

        ready = None
        if prepare is not None:
            loop = asyncio.get_running_loop()

            def ready(app_id, item):
                # On the writer's thread, holding the write lock: the event
                # loop runs ``prepare`` (reads and the broker's token buckets,
                # never a write of this store, which would wait for this
                # transaction) while the writer waits.  The timeout bounds a
                # wait on a loop that stopped (a close joins this thread).
                done = asyncio.run_coroutine_threadsafe(prepare(app_id, item), loop)
                try:
                    done.result(PREPARE_TIMEOUT)
                except TimeoutError:
                    done.cancel()
                    raise

        return await self._write(_sched.fire_due_tx, now, limit, publish, ready)

    async def next_due(self) -> float | None:
        return _sched.next_due(self._reader)

    async def fired_unqueued(self, before, limit) -> list[tuple[str, str, float]]:
        return _sched.fired_unqueued(self._reader, before, limit)

    async def mark_queued(self, fired) -> None:
        if fired:
            await self._write(_sched.mark_queued_tx, fired)

    async def get_scheduled(self, app_id, nid):
        return _sched.get_scheduled(self._reader, app_id, nid)

    async def edit_scheduled(self, app_id, nid, change):
        return await self._write(_sched.edit_tx, app_id, nid, change)

    async def cancel_scheduled(self, app_id, nid) -> bool:
        return await self._write(_sched.cancel_tx, app_id, nid)

    # -- group entries --------------------------------------------------
    async def group_members(self, app_id, user, nid, *, limit, before, now):
        return _groups.members(self._reader, app_id, user, nid, limit, before, now)

    # -- delivery tracking ----------------------------------------------
    async def record_deliveries(self, counts) -> None:
        if counts:
            await self._write(_sched.record_deliveries_tx, dict(counts))

    async def delivery_counts(self, app_id, nid) -> dict[str, dict[str, int]]:
        return _sched.delivery_counts(self._reader, app_id, nid)

    async def record_receipts(self, receipts) -> None:
        if receipts:
            await self._write(_sched.record_receipts_tx, list(receipts))

    async def receipt_counts(self, app_id, nid) -> dict[str, int]:
        return _sched.receipt_counts(self._reader, app_id, nid)

    async def timeline(self, app_id, nid, user) -> UserTimeline | None:
        return _timeline.timeline(self._reader, app_id, nid, user)

    async def outbound_users(self, app_id, nid) -> dict[str, dict[str, int]]:
        return _timeline.outbound_users(self._reader, app_id, nid)

    # -- streams and inboxes --------------------------------------------
    async def key_used_since(self, app_id, key, since) -> bool:
        return self._q1("SELECT 1 FROM idempotency WHERE app_id=? AND key=? AND created_at > ?",
                        (app_id, key, since)) is not None

    async def stream_head(self, app_id, user, now) -> StreamHead:
        row = self._q1(
            "SELECT epoch, head_seq, floor_seq FROM streams WHERE app_id=? AND user_id=?",
            (app_id, user),
        )
        if row is None:
            row = await self._write(_tx.ensure_stream, app_id, user)
        epoch, head, floor = row
        feed = self._q1("SELECT head, floor FROM feed_heads WHERE app_id=?", (app_id,))
        head_feed, floor_feed = feed if feed else (0, 0)
        prefs = self._q1("SELECT doc FROM prefs WHERE app_id=? AND user_id=?", (app_id, user))
        if prefs is None:
            return StreamHead(epoch, head, floor + 1, head_feed, floor_feed + 1, NONE_MUTED)
        doc = _decode_prefs(prefs[0])
        return StreamHead(epoch, head, floor + 1, head_feed, floor_feed + 1, muted_in(doc),
                          doc.locale or "")

    async def replay(self, app_id, user, after_seq, after_feed, limit, now, muted=None):
        if muted is None:
            muted = await self.muted(app_id, user)
        personal = [] if after_seq is None else self._q(
            "SELECT n.id, n.body, i.state, n.created_at, i.seq, i.gid, i.grp, i.page_key"
            + _PERSONAL_PAST + " LIMIT ?", (app_id, user, after_seq, now, limit))
        feed = [] if after_feed is None else self._q(
            "SELECT n.id, n.body, coalesce(fs.state, 0), n.created_at, n.feed_offset "
            "FROM notifications n LEFT JOIN feed_state fs "
            "ON fs.app_id=n.app_id AND fs.user_id=? AND fs.nid=n.id" + _feed_past(len(muted))
            + " LIMIT ?", (user, app_id, after_feed, now, user, *muted, limit))
        return (
            _groups.personal_entries(personal),
            [Entry(r[0], r[1], STATE_NAME[r[2]], r[3], feed=r[4]) for r in feed],
        )

    async def replay_exceeds(self, app_id, user, after_seq, after_feed, limit, now,
                             muted=None) -> bool:
        if muted is None:
            muted = await self.muted(app_id, user)
        row = self._q1(
            "SELECT EXISTS (SELECT 1" + _PERSONAL_PAST + " LIMIT 1 OFFSET ?) "
            "OR EXISTS (SELECT 1 FROM notifications n" + _feed_past(len(muted))
            + " LIMIT 1 OFFSET ?)",
            (app_id, user, after_seq, now, limit, app_id, after_feed, now, user, *muted, limit))
        return bool(row[0])

    async def inbox(self, app_id, user, *, limit, before, state, now, categories=(),
                    tags=(), muted=None) -> list[Entry]:
        pred = _STATE_FILTER[state]
        bound = "" if before is None else " AND n.id < ?"
        args_b = () if before is None else (before,)
        # Unfiltered, nothing is added: the page reads as it always did.
        where, args_f = _filter(categories, tags)
        args_b += args_f
        bound += where
        personal = self._q(
            "SELECT n.id, n.body, i.state, n.created_at, i.seq, i.gid, i.grp, i.page_key, "
            "i.snoozed_until "
            "FROM inbox i JOIN notifications n ON n.app_id=i.app_id AND n.id=i.nid "
            "WHERE i.app_id=? AND i.user_id=? AND (i.expires_at IS NULL OR i.expires_at>?) AND "
            + pred.replace("st", "i.state") + bound.replace("n.id <", _PLACE + " <")
            # By id, not by seq, as on PostgreSQL: a scheduled notification that
            # fires late has an older id than entries published meanwhile and a
            # later seq, and so does a group entry whose newest member was
            # retracted; ``before=<id>`` must neither skip nor repeat them.  The
            # sort covers one user's rows, found by the primary key prefix: the
            # unary ``+`` keeps SQLite from walking the app-wide (app_id, nid)
            # index instead (seconds at 100k users).
            # An entry back from a snooze sorts by when it came back (page_key).
            + " ORDER BY " + _PLACE + " DESC LIMIT ?",
            (app_id, user, now, *args_b, limit),
        )
        feed = self._q(
            "SELECT n.id, n.body, coalesce(fs.state, 0), n.created_at, "
            "n.feed_offset FROM notifications n LEFT JOIN feed_state fs "
            "ON fs.app_id=n.app_id AND fs.user_id=? AND fs.nid=n.id "
            "WHERE n.app_id=? AND n.feed_offset > 0 AND n.deleted=0 "
            "AND (n.expires_at IS NULL OR n.expires_at>?) AND " + _VISIBLE_FEED + bound
            + _not_muted(None if muted is None else len(muted))
            # ``+n.id``: sort the app's feed items rather than walk every
            # notification of the app in id order to avoid the sort.
            + " AND " + pred.replace("st", "coalesce(fs.state, 0)")
            + " ORDER BY +n.id DESC LIMIT ?",
            (user, app_id, now, user, *args_b, *_mutes_args(app_id, user, muted), limit),
        )
        entries = _groups.personal_entries(personal)
        entries += [Entry(r[0], r[1], STATE_NAME[r[2]], r[3], feed=r[4]) for r in feed]
        entries.sort(key=by_place, reverse=True)
        return entries[:limit]

    # Feed items are found with ``feed_offset > 0`` (offsets start at 1) rather
    # than ``IS NOT NULL``: only a range lets SQLite use the partial
    # notifications_feed index instead of reading every notification of the
    # app (2.3 s -> 0.1 ms per call with 100k users, bench/results NOTES).
    async def counts(self, app_id, user, now, muted=None) -> Counts:
        # One statement, so one snapshot of the WAL: the counts, the user's
        # head seq and the app's feed head all as of the same commit, however
        # the writer commits meanwhile (docs/protocol.md, "Counts and the badge").
        # Mutes not given are read by the statement too, in that snapshot.
        args = {"app": app_id, "user": user, "now": now}
        args.update((f"m{i}", c) for i, c in enumerate(muted or ()))
        return Counts(*self._q1(_counts_sql(None if muted is None else len(muted)), args))

    async def set_state(self, app_id, user, ids, state, now) -> list[str]:
        return await self._write(_tx.set_state_tx, app_id, user, ids, STATE_CODE[state], now)

    async def snooze(self, app_id, user, ids, until, now) -> list[str]:
        return await self._write(_snooze.snooze_tx, app_id, user, list(ids), until, now)

    async def resurface(self, app_id, user, ids, now) -> list[Resurfaced]:
        return await self._write(_snooze.resurface_tx, app_id, user, list(ids), now)

    async def wake_snoozed(self, now, limit) -> list[Resurfaced]:
        return await self._write(_snooze.wake_tx, now, limit)

    async def next_snooze(self) -> float | None:
        return _snooze.next_snooze(self._reader)

    # -- topics ---------------------------------------------------------
    async def subscribe(self, app_id, topic, users) -> int:
        def add(conn):
            cur = conn.executemany(
                "INSERT INTO topic_subs(app_id, topic, user_id) VALUES (?,?,?) "
                "ON CONFLICT DO NOTHING", [(app_id, topic, u) for u in users],
            )
            _tx.bump_revs_tx(conn, app_id, list(dict.fromkeys(users)))
            conn.topics_changed()
            return cur.rowcount

        return await self._write(add)

    async def unsubscribe(self, app_id, topic, users) -> int:
        def remove(conn):
            cur = conn.executemany(
                "DELETE FROM topic_subs WHERE app_id=? AND topic=? AND user_id=?",
                [(app_id, topic, u) for u in users],
            )
            _tx.bump_revs_tx(conn, app_id, list(dict.fromkeys(users)))
            conn.topics_changed()
            return cur.rowcount

        return await self._write(remove)

    async def topic_info(self, app_id, topic, limit) -> tuple[int, list[str]]:
        (count,) = self._q1(
            "SELECT count(*) FROM topic_subs WHERE app_id=? AND topic=?", (app_id, topic)
        )
        rows = self._q(
            "SELECT user_id FROM topic_subs WHERE app_id=? AND topic=? ORDER BY user_id LIMIT ?",
            (app_id, topic, limit),
        )
        return count, [r[0] for r in rows]

    async def user_topics(self, app_id, user) -> list[str]:
        rows = self._q(
            "SELECT topic FROM topic_subs WHERE app_id=? AND user_id=? ORDER BY topic",
            (app_id, user),
        )
        return [r[0] for r in rows]

    async def topics_many(self, app_id, users) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for user, topic in self._q_users(
                "SELECT user_id, topic FROM topic_subs WHERE app_id=? AND user_id IN ({}) "
                "ORDER BY user_id, topic", app_id, users):
            out.setdefault(user, []).append(topic)
        return out

    def _q_users(self, sql: str, app_id: str, users: list[str]) -> list:
        """The rows of ``sql`` (``{}`` where the list of users goes) for
        ``users``, ``IN_CHUNK`` of them a statement."""
        rows: list = []
        for i in range(0, len(users), IN_CHUNK):
            part = users[i:i + IN_CHUNK]
            rows += self._q(sql.format(",".join("?" * len(part))), (app_id, *part))
        return rows

    # -- preferences ----------------------------------------------------
    async def get_preferences(self, app_id, user) -> Preferences:
        row = self._q1("SELECT doc FROM prefs WHERE app_id=? AND user_id=?", (app_id, user))
        return _decode_prefs(row[0]) if row else Preferences()

    async def muted(self, app_id, user) -> frozenset[str]:
        row = self._q1("SELECT doc FROM prefs WHERE app_id=? AND user_id=?", (app_id, user))
        return muted_in(_decode_prefs(row[0])) if row else NONE_MUTED

    async def muted_many(self, app_id, users) -> dict[str, frozenset[str]]:
        out = {user: muted_in(_decode_prefs(doc)) for user, doc in self._q_users(
            "SELECT user_id, doc FROM prefs WHERE app_id=? AND user_id IN ({})", app_id, users)}
        return {user: m for user, m in out.items() if m}

    async def locales_many(self, app_id, users) -> dict[str, str]:
        out = {user: _decode_prefs(doc).locale for user, doc in self._q_users(
            "SELECT user_id, doc FROM prefs WHERE app_id=? AND user_id IN ({})", app_id, users)}
        return {user: locale for user, locale in out.items() if locale}

    # -- the app's categories -------------------------------------------
    async def get_categories(self, app_id) -> bytes | None:
        row = self._q1("SELECT doc FROM app_categories WHERE app_id=?", (app_id,))
        return row[0] if row else None

    async def put_categories(self, app_id, doc, *, audit=None) -> None:
        def put(conn):
            conn.execute("INSERT INTO app_categories(app_id, doc) VALUES (?,?) "
                         "ON CONFLICT(app_id) DO UPDATE SET doc=excluded.doc", (app_id, doc))
            insert_audit(conn, audit)

        await self._write(put)

    async def put_preferences(self, app_id, user, prefs) -> None:
        await self._write(_put_prefs_tx, app_id, user, prefs)

    async def update_preferences(self, app_id, user, change, retime=None) -> Preferences | None:
        def update(conn):
            # Read and written in one transaction of the one writer, which
            # holds the file's write lock (BEGIN IMMEDIATE) from the start:
            # no other write, from this process or another, comes between.
            row = conn.execute("SELECT doc FROM prefs WHERE app_id=? AND user_id=?",
                               (app_id, user)).fetchone()
            old = _decode_prefs(row[0]) if row else Preferences()
            changed = change(old)
            if changed is not None:
                _put_prefs_tx(conn, app_id, user, changed)
                retimer = retime(old, changed) if retime is not None else None
                if retimer is not None:
                    retime_tx(conn, app_id, user, retimer)
            return changed

        return await self._write(update)

    # -- maintenance ----------------------------------------------------
    async def prune(self, app_id, older_than) -> Pruned:
        return await self._write(_tx.prune_tx, app_id, older_than)

    # -- test and bench helpers -----------------------------------------
    @property
    def commit_stats(self) -> tuple[int, int]:
        """``(commits, jobs)`` done by the writer: jobs/commit is the group size."""
        w = self._writer
        return (w.commits, w.jobs_done) if w else (0, 0)


def _leases(conn) -> list[Lease]:
    return [Lease(*r) for r in conn.execute(
        "SELECT node, address, pid, expires_at FROM node_leases WHERE expires_at > ? "
        "ORDER BY node", (time.time(),)).fetchall()]


def _reseal_tx(conn: WriterConnection, before: Seal, after: Seal) -> int:
    """The writer's transaction of ``reseal``: every row and the key check, or nothing."""
    before = before.expect(check_of(conn.execute(KEY_CHECK.select()).fetchall()))
    n = 0
    for place in PLACES:
        rows = resealed(place, conn.execute(place.select()).fetchall(), before, after)
        conn.executemany(place.update(lambda i: "?"), rows)
        n += len(rows)
    if after.check is None:
        conn.execute(DROP_CHECK)
    else:
        conn.execute(set_check(lambda i: "?"), (after.check,))
    return n


def _put_prefs_tx(conn: WriterConnection, app_id: str, user: str, prefs: Preferences) -> None:
    """Store ``prefs`` and the in-app mutes they say, inside the caller's transaction."""
    conn.execute(
        "INSERT INTO prefs(app_id, user_id, doc) VALUES (?,?,?) "
        "ON CONFLICT(app_id, user_id) DO UPDATE SET doc=excluded.doc",
        (app_id, user, _encode(prefs)),
    )
    conn.execute("DELETE FROM mutes WHERE app_id=? AND user_id=?", (app_id, user))
    conn.executemany(
        "INSERT INTO mutes(app_id, category, user_id) VALUES (?,?,?)",
        [(app_id, c, user) for c, ch in prefs.categories.items() if not ch.in_app],
    )
    _tx.bump_revs_tx(conn, app_id, [user])
    conn.mutes_changed()
