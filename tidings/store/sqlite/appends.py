"""The writer's connection: stream heads kept in memory, publishes written per group.

A plain publish (to users, or to a topic fanned out on write) is an append:
one notification row, one inbox row per recipient with the recipient's next
``seq``, the recipients' new stream heads and perhaps an idempotency record.
Written one publish at a time that is three statements and a read of every
head per job; here the writer gathers the rows of every publish of a group
commit and writes them before ``COMMIT`` with one statement per table, and
the heads come from memory.

Why the heads may live in memory: in this process the writer thread is the
only one that writes ``streams``, and it does so only through this
connection.  Other processes may share the file (``--workers``, the CLI), so
at the start of every group the connection asks SQLite's ``data_version``
whether anyone else committed since this connection's last transaction, and
forgets every cached head (and the mute flags below) if so.  A group that
rolls back forgets what it assigned; only committed heads enter the cache.

What is buffered is visible to the jobs of the same group that read it
through this connection (``known_head``, ``find_key``), and ``flush`` writes
it out before any job that reads the tables directly (store.py runs
``flush`` before every job that is not marked ``appends``).
"""

from __future__ import annotations

import sqlite3
import time
from itertools import chain, repeat
from operator import itemgetter

from tidings.core.ids import new_epoch
from tidings.store.sqlite.entries import one_seq

__all__ = ["HEADS_CACHED", "STATEMENTS_CACHED", "WriterConnection"]

HEADS_CACHED = 100_000  # (app, user) heads kept; ~150 bytes each
TOPIC_MEMBERS_CACHED = 100_000  # user ids kept over all cached topics
_CHUNK = 500  # host parameters per IN (...) list
ROWS_PER_INSERT = 128
# A rest of up to this many rows is written by one statement of its exact
# size; a larger rest in power-of-two pieces down to it (see _insert).
EXACT_ROWS = 32
# the writer's prepared statements kept (store.py): EXACT_ROWS + 2 shapes a
# table (about 13 KiB each at 32 rows) besides every other statement
STATEMENTS_CACHED = 512
_by_user = itemgetter(1)
_flat = chain.from_iterable
_blob = bytearray  # see WriterConnection.__init__
_NONE = object()  # _insert: no shared first column
_NO_HEADS: dict[str, int] = {}  # an app with no committed head cached
FANOUT_ROWS = 64  # recipients from which add_entries writes a publish's rows in SQL
# OR FAIL: see _insert
_FANOUT = ("INSERT OR FAIL INTO inbox(app_id, user_id, seq, nid, created_at, expires_at) "
           "SELECT ?1, key, value, ?2, ?3, ?4 FROM json_each(?5)")


class WriterConnection(sqlite3.Connection):
    """The write connection of the store's writer thread (store.py)."""

    # Slots, not a __dict__: the interpreter reads an attribute of a slot
    # directly, while one in the __dict__ of a subclass of this C type was
    # looked up generically, about 200 instructions each, several a publish.
    __slots__ = ("_heads", "_txn", "_epochs", "_dirty", "_notes", "_notes_forever", "_inbox",
                 "_inbox_forever", "_fanouts", "_sql", "_keys", "_unmuted", "_topics", "_topic_ids",
                 "_data_version", "rows_written")

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        # Head seqs by app, then user.  By app first so that a publish looks
        # its recipients up by user alone, in C (``map``), with no (app, user)
        # tuple to build, hash and compare per recipient.
        self._heads: dict[str, dict[str, int]] = {}  # committed
        # this transaction's: every head it read or took, copied from
        # ``_heads`` (or the table) at its first use in the transaction
        self._txn: dict[str, dict[str, int]] = {}
        # Epochs by app, then user, apart from the seqs: a fan-out takes its
        # recipients' seqs as ints, with no (epoch, seq) tuple built, taken
        # apart and freed per recipient.  A stream's epoch never changes, so
        # this is not per transaction: it holds the epoch of every head in
        # ``_heads`` and ``_txn``, entered when the head is read from the
        # table or made (``_load_heads``).  It may also hold the epoch of a
        # stream made by a transaction that rolled back; that user's next
        # use reads the table again and enters the right one.
        self._epochs: dict[str, dict[str, str]] = {}
        self._dirty: dict[str, set[str]] = {}  # heads of _txn not written yet
        # rows without an expiry, without the column: the sqlite3 module binds
        # int, float, str and bytearray directly, but for None (and bytes) it
        # looks an adapter up, and failing to find one costs more (3,300
        # instructions a value, an AttributeError formatted) than the rest of
        # the row's binding: a body is bound as a bytearray (``_blob``)
        self._notes: list[tuple] = []
        self._notes_forever: list[tuple] = []
        self._inbox: list[tuple] = []
        self._inbox_forever: list[tuple] = []
        # publishes of FANOUT_ROWS recipients or more: their rows are made
        # by SQLite from the notification's seqs (see add_entries)
        self._fanouts: list[tuple] = []
        self._sql: dict[tuple[str, int], str] = {}  # _insert's statements
        self._keys: dict[tuple[str, str], tuple] = {}
        self._unmuted: set[tuple[str, str]] = set()  # (app, category) with no mutes
        # (app, topic) -> (limit, its first ``limit`` members): see topic_members
        self._topics: dict[tuple[str, str], tuple[int, list[str]]] = {}
        self._topic_ids = 0
        self._data_version: int | None = None
        # rows written since the last checkpoint: roughly the WAL pages
        # they dirtied, when inserts land on many pages (store.py)
        self.rows_written = 0

    # -- transactions (the writer calls these) -----------------------------------------
    def begin(self) -> None:
        self.execute("BEGIN IMMEDIATE")
        (version,) = self.execute("PRAGMA data_version").fetchone()
        if version != self._data_version:
            # another connection committed: what this one remembers may be stale
            self._heads.clear()
            self._epochs.clear()
            self._unmuted.clear()
            self.topics_changed()
            self._data_version = version

    def commit(self) -> None:
        self.flush()
        self.execute("COMMIT")
        heads = self._heads
        for app_id, taken in self._txn.items():
            mine = heads.get(app_id)
            if mine is None:
                heads[app_id] = taken
            else:
                mine.update(taken)
        self._txn.clear()
        # counted by the epochs: they also hold those of rolled-back streams
        over = sum(map(len, self._epochs.values())) - HEADS_CACHED
        for app_id, epochs in list(self._epochs.items()):
            if over <= 0:
                break
            drop = list(epochs)[:over]  # the oldest entered
            mine = heads.get(app_id, {})
            for user in drop:
                del epochs[user]
                mine.pop(user, None)
            over -= len(drop)
            if not epochs:
                del self._epochs[app_id]
                heads.pop(app_id, None)

    def rollback(self) -> None:
        self._discard()
        if self.in_transaction:
            self.execute("ROLLBACK")

    # -- savepoints: one item of a job fails alone (publish.publish_many_alone) ----------
    def savepoint(self) -> dict:
        """Open SAVEPOINT ``item`` with nothing gathered; returns what
        :meth:`rollback_to` needs to forget the item's seqs."""
        self.flush()
        self.execute("SAVEPOINT item")
        return {app_id: dict(taken) for app_id, taken in self._txn.items()}

    def rollback_to(self, heads: dict) -> None:
        """Undo everything since :meth:`savepoint` returned ``heads``: its
        rows, and the seqs it took (the next item takes them, no gap)."""
        self._discard()
        self._txn.update({app_id: dict(taken) for app_id, taken in heads.items()})
        self.execute("ROLLBACK TO item")
        self.execute("RELEASE item")

    def release(self) -> None:
        self.flush()
        self.execute("RELEASE item")

    def _discard(self) -> None:
        self._unmuted.clear()  # what it learnt may have been from rolled-back rows
        self.topics_changed()
        self._txn.clear()
        self._dirty.clear()
        self._notes.clear()
        self._notes_forever.clear()
        self._inbox.clear()
        self._inbox_forever.clear()
        self._fanouts.clear()
        self._keys.clear()

    # -- what publishes write ------------------------------------------------------------
    def next_seqs(self, app_id: str, users: list[str]) -> tuple[list[str], list[int]]:
        """The epochs and the seqs of ``users`` (distinct), in their order:
        the next seq of each one's stream, taken now.  A user without a
        stream gets one (a fresh epoch, seq 1).  Two lists rather than a
        tuple per user: under write fan-out every recipient's step here is
        the writer's own Python, so the work per user is done in C (``map``,
        ``zip``, ``dict.update``) or in one comprehension."""
        if not users:  # a topic nobody follows: the app may have no epochs yet
            return [], []
        txn = self._txn.get(app_id)
        if txn is None:
            txn = self._txn[app_id] = {}
        if len(users) == 1:  # the usual publish: the same steps, for one user
            user = users[0]
            seq = txn.get(user)
            if seq is None:
                seq = self._heads.get(app_id, _NO_HEADS).get(user)
                if seq is None:
                    seq = self._first_use(app_id, txn, users)[0]
            txn[user] = seq = seq + 1
            self._dirty_of(app_id).add(user)
            return [self._epochs[app_id][user]], [seq]
        try:
            now = list(map(txn.__getitem__, users))
        except KeyError:  # some users' first use in this transaction
            now = self._first_use(app_id, txn, users)
        seqs = [seq + 1 for seq in now]
        txn.update(zip(users, seqs, strict=True))
        self._dirty_of(app_id).update(users)
        return list(map(self._epochs[app_id].__getitem__, users)), seqs

    def _dirty_of(self, app_id: str) -> set[str]:
        dirty = self._dirty.get(app_id)
        if dirty is None:
            dirty = self._dirty[app_id] = set()
        return dirty

    def _first_use(self, app_id: str, txn: dict[str, int], users: list[str]) -> list[int]:
        """The head seqs of ``users``, those not in ``txn`` yet entered in it:
        the committed ones remembered, else read from ``streams``, else new
        streams (a fresh epoch, seq 0)."""
        new = [u for u in users if u not in txn]
        committed = self._heads.get(app_id)
        if committed:
            known = list(map(committed.get, new))
            if None not in known:
                txn.update(zip(new, known, strict=True))  # type: ignore[arg-type]
            else:
                txn.update((u, s) for u, s in zip(new, known, strict=True) if s is not None)
                self._load_heads(app_id, [u for u, s in zip(new, known, strict=True)
                                          if s is None])
        else:
            self._load_heads(app_id, new)
        return list(map(txn.__getitem__, users))

    def append_one(self, app_id: str, user: str, nid: str, category: str, body: bytes,
                   created: float, expires: float | None) -> tuple[str, int]:
        """A publish to one user, as ``add_notification``, ``next_seqs`` and
        ``add_entries`` make it, in one call (the writer's usual job): the
        user's epoch and new seq."""
        txn = self._txn.get(app_id)
        if txn is None:
            txn = self._txn[app_id] = {}
        seq = txn.get(user)
        if seq is None:
            seq = self._heads.get(app_id, _NO_HEADS).get(user)
            if seq is None:
                seq = self._first_use(app_id, txn, [user])[0]
        txn[user] = seq = seq + 1
        dirty = self._dirty.get(app_id)  # _dirty_of(app_id), without its call
        if dirty is None:
            dirty = self._dirty[app_id] = set()
        dirty.add(user)
        seqs = one_seq(user, seq)
        if expires is None:
            self._notes_forever.append((app_id, nid, category, _blob(body), 1, created, seqs))
            self._inbox_forever.append((app_id, user, seq, nid, created))
        else:
            self._notes.append((app_id, nid, category, _blob(body), 1, created, expires, seqs))
            self._inbox.append((app_id, user, seq, nid, created, expires))
        return self._epochs[app_id][user], seq

    def _load_heads(self, app_id: str, users: list[str]) -> None:
        found = {}
        for i in range(0, len(users), _CHUNK):
            part = users[i:i + _CHUNK]
            marks = ",".join("?" * len(part))
            for user, epoch, seq in self.execute(
                f"SELECT user_id, epoch, head_seq FROM streams WHERE app_id=? "
                f"AND user_id IN ({marks})", (app_id, *part),
            ):
                found[user] = (epoch, seq)
        txn = self._txn.setdefault(app_id, {})
        epochs = self._epochs.setdefault(app_id, {})
        for user in users:
            # a new stream: written with its first seq when the group flushes
            epochs[user], txn[user] = found.get(user) or (new_epoch(), 0)

    def add_notification(self, row: tuple) -> None:
        """``(app, id, category, body, recipients, created_at, expires_at,
        seqs)``: ``seqs`` the JSON of its plain entries' seqs by user
        (entries.py), or None when it writes none."""
        app_id, nid, category, body, recipients, created, expires, seqs = row
        if expires is None:
            self._notes_forever.append(
                (app_id, nid, category, _blob(body), recipients, created, seqs))
        else:
            self._notes.append(
                (app_id, nid, category, _blob(body), recipients, created, expires, seqs))

    def add_entries(self, app_id: str, users: list[str], seqs: list[int], nid: str,
                    created_at: float, expires_at: float | None,
                    seqs_json: str | None = None) -> None:
        """The inbox rows of notification ``nid`` for ``users`` at ``seqs``
        (``seqs_json``: the same as the notification's ``seqs`` column).

        A fan-out's rows are one ``INSERT ... SELECT`` over ``seqs_json``:
        four values bound per publish instead of five or six per row, and
        no tuple, list or bind per recipient in Python.  Its rows are not
        sorted with the group's others by user: what that saves in page
        visits is less than what the Python costs per row."""
        if seqs_json is not None and len(users) >= FANOUT_ROWS:
            self._fanouts.append((app_id, nid, created_at, expires_at, seqs_json, len(users)))
        elif expires_at is None:
            if len(users) == 1:  # the usual publish: a tuple costs less than zip and repeats
                self._inbox_forever.append((app_id, users[0], seqs[0], nid, created_at))
            else:
                self._inbox_forever += zip(repeat(app_id), users, seqs, repeat(nid),
                                           repeat(created_at))
        elif len(users) == 1:
            self._inbox.append((app_id, users[0], seqs[0], nid, created_at, expires_at))
        else:
            self._inbox += zip(repeat(app_id), users, seqs, repeat(nid), repeat(created_at),
                               repeat(expires_at))

    def remember_key(self, app_id: str, key: str, result: bytes, created_at: float) -> None:
        self._keys[(app_id, key)] = (app_id, key, result, created_at)

    def find_key(self, app_id: str, key: str) -> tuple[bytes, float] | None:
        """The idempotency record of ``key`` (this group's, or stored)."""
        hit = self._keys.get((app_id, key))
        if hit is not None:
            return hit[2], hit[3]
        return self.execute(
            "SELECT result, created_at FROM idempotency WHERE app_id=? AND key=?", (app_id, key),
        ).fetchone()

    def has_mutes(self, app_id: str, category: str) -> bool:
        """Whether any user of the app muted ``category`` (the mute lookup
        per recipient is skipped when nobody did, as is usual)."""
        if (app_id, category) in self._unmuted:
            return False
        if self.execute("SELECT 1 FROM mutes WHERE app_id=? AND category=? LIMIT 1",
                        (app_id, category)).fetchone():
            return True
        self._unmuted.add((app_id, category))
        return False

    def mutes_changed(self) -> None:
        self._unmuted.clear()

    def topic_members(self, app_id: str, topic: str, limit: int) -> list[str]:
        """The first ``limit`` members of ``topic``, in user order (the list is
        shared: not to be changed).  Remembered like the mute flags: a topic
        published to again and again (write fan-out) is read once, not once
        per publish (0.25 us per member).  Forgotten when a job of this
        connection changes a topic (``topics_changed``: store.py's subscribe
        and unsubscribe), when its transaction rolls back, and when another
        connection committed (``begin``)."""
        key = (app_id, topic)
        hit = self._topics.get(key)
        if hit is not None and hit[0] == limit:
            return hit[1]
        users = [r[0] for r in self.execute(
            "SELECT user_id FROM topic_subs WHERE app_id=? AND topic=? LIMIT ?",
            (app_id, topic, limit),
        )]
        if self._topic_ids + len(users) > TOPIC_MEMBERS_CACHED:
            self.topics_changed()
        if len(users) <= TOPIC_MEMBERS_CACHED:
            self._topics[key] = (limit, users)
            self._topic_ids += len(users)
        return users

    def topics_changed(self) -> None:
        self._topics.clear()
        self._topic_ids = 0

    def flush(self) -> None:
        """Write what the group's publishes gathered, one statement per table."""
        if self._notes_forever or self._notes:
            committed = time.time()  # just before COMMIT: the timeline's "committed"
            if self._notes_forever:
                self._insert(
                    "notifications(committed_at, app_id, id, category, body, recipients, "
                    "created_at, seqs) VALUES ", 7, self._notes_forever, first=committed)
                self._notes_forever.clear()
            if self._notes:
                self._insert(
                    "notifications(committed_at, app_id, id, category, body, recipients, "
                    "created_at, expires_at, seqs) VALUES ", 8, self._notes, first=committed)
                self._notes.clear()
        if self._inbox_forever:
            # in key order: each user's rows land on that user's pages together
            self._inbox_forever.sort(key=_by_user)
            self._insert("inbox(app_id, user_id, seq, nid, created_at) VALUES ", 5,
                         self._inbox_forever)
            self._inbox_forever.clear()
        if self._inbox:
            self._inbox.sort(key=_by_user)
            self._insert(
                "inbox(app_id, user_id, seq, nid, created_at, expires_at) VALUES ",
                6, self._inbox)
            self._inbox.clear()
        for app_id, nid, created_at, expires_at, seqs, n in self._fanouts:
            self.rows_written += n
            self.execute(_FANOUT, (app_id, nid, created_at, expires_at, seqs))
        self._fanouts.clear()
        for app_id, dirty in self._dirty.items():
            users = list(dirty)
            self._insert(
                "streams(app_id, user_id, epoch, head_seq) VALUES ", 4,
                list(zip(repeat(app_id), users, map(self._epochs[app_id].__getitem__, users),
                         map(self._txn[app_id].__getitem__, users))),
                " ON CONFLICT(app_id, user_id) DO UPDATE SET head_seq=excluded.head_seq")
        self._dirty.clear()
        if self._keys:
            self._insert(
                "idempotency(app_id, key, result, created_at) VALUES ", 4,
                list(self._keys.values()),
                " ON CONFLICT(app_id, key) DO UPDATE SET result=excluded.result, "
                "created_at=excluded.created_at")
            self._keys.clear()

    def _insert(self, into: str, width: int, rows: list[tuple], tail: str = "",
                first: object = _NONE) -> None:
        """``rows`` as multi-row INSERTs of ``ROWS_PER_INSERT`` rows, the rest
        in power-of-two pieces down to ``EXACT_ROWS`` and then in one piece
        of its own size: a group of 15 publishes writes a table with one
        statement, not four (8, 4, 2 and 1 rows, 11,000 instructions more a
        publish), and there are still few statement shapes, all in the
        statement cache (``STATEMENTS_CACHED``).  One statement per row
        (``executemany``) releases and takes back the GIL around every row,
        and the event loop's thread takes it each time: a thread switch per
        row.

        ``OR FAIL``: a statement that writes many rows and may stop at a
        constraint (the default ``ABORT``) first copies every page it is about
        to change into a statement journal, to undo its own earlier rows; past
        64 KiB that journal is a temporary file, and under write fan-out it
        was most of the writer's ``pwrite`` calls (a 4 KiB page and its number
        per page per statement).  ``FAIL`` stops at the bad row without undoing
        the rows before it, which nothing here needs: whatever raises out of
        ``flush`` rolls back the whole transaction (store.py) or the savepoint
        around it (``rollback_to``), so a failed statement's rows never
        commit.

        ``first``, when given, is one more value of every row, its first
        column, bound once per statement as ``?1`` rather than copied into
        every row's tuple."""
        i, n = 0, len(rows)
        self.rows_written += n
        shared = first is not _NONE
        while i < n:
            rest = n - i
            if rest >= ROWS_PER_INSERT:
                size = ROWS_PER_INSERT
            elif rest > EXACT_ROWS:
                size = 1 << (rest.bit_length() - 1)
            else:
                size = rest
            sql = self._sql.get((into, size))
            if sql is None:
                one = "(" + "?1," * shared + ",".join("?" * width) + ")"
                sql = self._sql[(into, size)] = (
                    "INSERT OR FAIL INTO " + into + ",".join([one] * size) + tail)
            if shared:
                self.execute(sql, [first, *_flat(rows[i:i + size])])
            else:
                self.execute(sql, list(_flat(rows[i:i + size])))
            i += size
