"""What is particular to the SQLite store: WAL, durability, the group-commit writer."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import msgspec
import pytest

from tidings.core.ids import new_id
from tidings.core.models import ChannelPrefs, Preferences
from tidings.errors import Unavailable
from tidings.store import migrations
from tidings.store.base import REVOKED, NewNotification
from tidings.store.sqlite import SQLiteStore, migrate
from tidings.store.sqlite.store import _counts_sql

APP = "app_a"


def note(users: list[str], nid: str | None = None) -> NewNotification:
    nid = nid or new_id()
    return NewNotification(
        id=nid, category="default", body=msgspec.json.encode({"id": nid}),
        created_at=time.time(), expires_at=None, users=users,
    )


async def publish(store, item):
    return await store.publish(APP, item, fanout_threshold=100, window=3600)


@pytest.fixture
def path(tmp_path):
    return tmp_path / "data" / "tidings.db"


def _file_at(path, version: int) -> sqlite3.Connection:
    """A new store file at schema ``version``, as that release left it: its
    migrations applied and the version recorded; the caller adds its rows."""
    path.parent.mkdir(parents=True)
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
    for _, script in migrations.scripts("sqlite")[:version]:
        conn.executescript(script)
    with conn:
        conn.execute("INSERT INTO meta VALUES ('schema_version', ?)", (str(version),))
    return conn


@pytest.fixture
async def db(path):
    s = SQLiteStore(path)
    await s.open()
    try:
        yield s
    finally:
        await s.close()


async def test_the_file_is_in_wal_mode(db, path):
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        conn.close()


async def test_data_survives_close_and_reopen(db, path):
    await db.create_app(APP, "a", "secret")
    out = await publish(db, note(["u"]))
    epoch = (await db.stream_head(APP, "u", time.time())).epoch
    await db.close()

    again = SQLiteStore(path)
    await again.open()
    try:
        assert (await again.get_app(APP)).name == "a"
        assert (await again.get_notification(APP, out.id)).body == msgspec.json.encode(
            {"id": out.id})
        head = await again.stream_head(APP, "u", time.time())
        assert (head.epoch, head.head_seq) == (epoch, 1)
    finally:
        await again.close()


def test_a_publish_is_durable_when_it_returns(path):
    """A process that publishes and then dies without closing anything
    (``os._exit``) leaves the notification in the file."""
    nid = new_id()
    script = textwrap.dedent(f"""
        import asyncio, os, time
        from tidings.store.base import REVOKED, NewNotification
        from tidings.store.sqlite import SQLiteStore

        async def main():
            store = SQLiteStore({str(path)!r})
            await store.open()
            await store.publish("app_a", NewNotification(
                id={nid!r}, category="default", body=b"{{}}", created_at=time.time(),
                expires_at=None, users=["u"]), fanout_threshold=100, window=3600)
            os._exit(0)  # no close, no checkpoint, no atexit

        asyncio.run(main())
    """)
    subprocess.run([sys.executable, "-c", script], check=True, timeout=30)

    async def check():
        store = SQLiteStore(path)
        await store.open()
        try:
            assert (await store.get_notification("app_a", nid)) is not None
            assert await store.recipients_of("app_a", nid) == ["u"]
        finally:
            await store.close()

    asyncio.run(check())


async def test_reads_see_a_write_as_soon_as_it_returns(db, path):
    out = await publish(db, note(["u"]))
    other = sqlite3.connect(path)  # an independent reader of the same file
    try:
        (n,) = other.execute("SELECT count(*) FROM inbox WHERE nid=?", (out.id,)).fetchone()
        assert n == 1
    finally:
        other.close()


@pytest.mark.parametrize("muted", [frozenset(), None], ids=["mutes_given", "mutes_read"])
async def test_counts_and_their_position_are_read_in_one_snapshot(db, path, muted):
    """Counts and the head they were read at come from one read of the WAL:
    another process's publish that commits while the read is under way (the
    reader connection's progress handler makes it commit there) is in
    neither, and in both right after (docs/protocol.md, "Counts and the badge").
    Whether the user's in-app mutes are given, as a stream's are, or not:
    then the statement reads them too, and nothing is read before it."""
    first = await publish(db, note(["u"]))
    await publish(db, note(["u"]))
    other = sqlite3.connect(path, isolation_level=None, timeout=30)
    steps = 0

    def commit_meanwhile() -> int:
        # what a publish to u writes: its entry at the next seq, and the head
        nonlocal steps
        steps += 1
        if steps == 10:  # well inside the statement (it runs over a hundred steps)
            other.execute("BEGIN IMMEDIATE")
            other.execute("INSERT INTO inbox(app_id, user_id, seq, nid, state, created_at) "
                          "VALUES (?, 'u', 3, ?, 0, ?)", (APP, first.id, time.time()))
            other.execute("UPDATE streams SET head_seq = 3 WHERE app_id = ? AND user_id = 'u'",
                          (APP,))
            # and what a state change writes with its change: the revision
            other.execute("INSERT INTO counts_revs(app_id, user_id, rev) VALUES (?, 'u', 1)",
                          (APP,))
            other.execute("COMMIT")
        return 0

    db._reader.set_progress_handler(commit_meanwhile, 1)
    try:
        during = await db.counts(APP, "u", time.time(), muted)
    finally:
        db._reader.set_progress_handler(None, 1)
        other.close()
    assert steps > 10  # the commit came while the read went on
    assert during == (2, 2, 2, 0, None, 0)  # nothing expires
    assert await db.counts(APP, "u", time.time()) == (3, 3, 3, 0, None, 1)


async def test_the_writer_groups_concurrent_writes_into_fewer_commits(db):
    commits0, jobs0 = db.commit_stats
    outs = await asyncio.gather(*(publish(db, note([f"u{i % 50}"])) for i in range(500)))
    assert all(o.status == "accepted" for o in outs)
    commits, jobs = db.commit_stats
    assert jobs - jobs0 == 500
    assert 1 <= commits - commits0 < jobs - jobs0
    # and nothing was lost in the grouping
    for i in range(50):
        assert (await db.stream_head(APP, f"u{i}", time.time())).head_seq == 10


async def _hold_the_writer(db):
    """Occupy the writer with a job that waits; returns (release, done)."""
    entered, release = threading.Event(), threading.Event()

    def blocker(conn):
        entered.set()
        release.wait(10)

    done = db._write(blocker)
    assert await asyncio.to_thread(entered.wait, 10)
    return release, done


async def test_a_job_handed_to_a_stopped_writer_is_refused(db):
    """The writer thread says it takes jobs while it does (``running``, read
    by every submit instead of ``is_alive``): once it stopped, a job gets
    503 at once instead of waiting for ever."""
    writer = db._writer
    assert writer.running
    writer.stop()
    assert not writer.running and not writer.is_alive()
    with pytest.raises(Unavailable, match="stopped"):
        await writer.submit(lambda conn: None)


async def test_a_failing_job_fails_alone_within_its_batch(db):
    await db.create_app(APP, "a", "secret")
    release, blocked = await _hold_the_writer(db)
    commits0, jobs0 = db.commit_stats

    # All of these queue up behind the blocker and run in the next batch.
    items = [note([f"u{i}"]) for i in range(10)]
    before = [asyncio.ensure_future(publish(db, it)) for it in items[:5]]
    dup = asyncio.ensure_future(db.create_app(APP, "again", "secret2"))
    fresh = asyncio.ensure_future(db.create_app("app_b", "b", "secret3"))
    after = [asyncio.ensure_future(publish(db, it)) for it in items[5:]]
    await asyncio.sleep(0)  # one loop pass: every task runs up to its submit
    assert db._writer._jobs.qsize() == 12
    release.set()
    await blocked

    with pytest.raises(sqlite3.IntegrityError):
        await dup
    outs = await asyncio.gather(*before, *after)
    assert [o.id for o in outs] == [it.id for it in items]
    assert (await fresh).id == "app_b"
    commits, jobs = db.commit_stats
    # the blocker's batch, then the batch of 12 is rolled back and rerun job by
    # job: 11 commits of their own and the failed one
    assert (commits - commits0, jobs - jobs0) == (1 + 11, 13)
    # the others committed; the failed one left nothing behind
    assert (await db.get_app(APP)).name == "a"
    assert (await db.get_app("app_b")).name == "b"
    for it in items:
        assert await db.recipients_of(APP, it.id) == [it.users[0]]


async def test_a_closed_store_refuses_writes(db):
    await db.close()
    assert await db.ping() is False
    with pytest.raises(Unavailable):
        await publish(db, note(["u"]))


async def test_open_migrates_a_fresh_file_and_refuses_a_newer_schema(path):
    latest = migrations.latest("sqlite")
    assert migrate(path) == list(range(1, latest + 1))
    assert migrate(path) == []  # nothing pending; opening does not migrate again
    conn = sqlite3.connect(path)
    with conn:
        conn.execute("UPDATE meta SET value=? WHERE key='schema_version'", (str(latest + 1),))
    conn.close()
    with pytest.raises(migrations.SchemaError, match="newer than this tidings"):
        await SQLiteStore(path).open()


async def test_keys_made_before_v10_keep_working_after_the_migration(path):
    """A file at v9 (keys without a name): migrating adds the name and the
    per-app index; the old key still verifies, is listed without a name,
    and can be revoked once a newer admin key exists.  Applying v10 again
    (a file whose version was set back) skips the column it already has."""
    conn = _file_at(path, 9)
    try:
        with conn:
            conn.execute("INSERT INTO apps VALUES (?, 'a', 's', 0)", (APP,))
            conn.execute("INSERT INTO api_keys VALUES ('0123abcd', ?, 'h-old', "
                         "'admin,publish,read', 5)", (APP,))
    finally:
        conn.close()
    assert migrate(path) == list(range(10, migrations.latest("sqlite") + 1))
    store = SQLiteStore(path)
    await store.open()
    try:
        assert (await store.find_api_key("0123abcd", "h-old")).scopes == frozenset(
            {"admin", "publish", "read"})
        assert [(k.prefix, k.name) for k in await store.list_api_keys(APP)] == [
            ("0123abcd", None)]
        await store.add_api_key(APP, "4567ef01", "h-new", frozenset({"admin"}), "ops")
        assert await store.revoke_api_key(APP, "0123abcd") == REVOKED
        assert await store.find_api_key("0123abcd", "h-old") is None
    finally:
        await store.close()
    conn = sqlite3.connect(path)
    with conn:
        conn.execute("UPDATE meta SET value='9' WHERE key='schema_version'")
    conn.close()
    assert migrate(path) == list(range(10, migrations.latest("sqlite") + 1))
    store = SQLiteStore(path)
    await store.open()
    try:
        assert [(k.prefix, k.name) for k in await store.list_api_keys(APP)] == [
            ("4567ef01", "ops")]
    finally:
        await store.close()


async def test_a_file_at_v13_migrates_to_token_revocations(path):
    """A file at v13 (no revocations): migrating adds the table and its
    index, and a revocation is stored and read back; applying v14 again (a
    file whose version was set back) changes nothing."""
    conn = _file_at(path, 13)
    try:
        with conn:
            conn.execute("INSERT INTO apps(id, name, signing_secret, created_at) "
                         "VALUES (?, 'a', 's', 0)", (APP,))
    finally:
        conn.close()
    assert migrate(path) == list(range(14, migrations.latest("sqlite") + 1))
    store = SQLiteStore(path)
    await store.open()
    try:
        assert await store.token_revocations(0) == []
        assert await store.revoke_tokens(APP, "ann", 1000.0, forget_before=0) == 1000.0
    finally:
        await store.close()
    conn = sqlite3.connect(path)
    with conn:
        conn.execute("UPDATE meta SET value='13' WHERE key='schema_version'")
    conn.close()
    assert migrate(path) == list(range(14, migrations.latest("sqlite") + 1))
    store = SQLiteStore(path)
    await store.open()
    try:
        assert await store.token_revocations(0) == [(APP, "ann", 1000.0)]
    finally:
        await store.close()


async def test_a_file_at_v14_migrates_to_revoked_tokens(path):
    """A file at v14 (no token revoked by its jti): migrating adds the table
    and its index, and a revocation is stored and read back; applying v15
    again (a file whose version was set back) changes nothing."""
    conn = _file_at(path, 14)
    try:
        with conn:
            conn.execute("INSERT INTO apps(id, name, signing_secret, created_at) "
                         "VALUES (?, 'a', 's', 0)", (APP,))
    finally:
        conn.close()
    assert migrate(path) == list(range(15, migrations.latest("sqlite") + 1))
    store = SQLiteStore(path)
    await store.open()
    try:
        assert await store.token_id_revocations(0, 0) == []
        assert await store.revoke_token_id(APP, "ann", "j1", 1000.0, 10.0) == 1000.0
    finally:
        await store.close()
    conn = sqlite3.connect(path)
    with conn:
        conn.execute("UPDATE meta SET value='14' WHERE key='schema_version'")
    conn.close()
    assert migrate(path) == list(range(15, migrations.latest("sqlite") + 1))
    store = SQLiteStore(path)
    await store.open()
    try:
        assert await store.token_id_revocations(0, 0) == [(APP, "ann", "j1", 1000.0)]
    finally:
        await store.close()


async def test_a_file_at_v15_migrates_to_app_categories(path):
    """A file at v15 (no categories): migrating adds the table, and an app's
    categories are stored, replaced and read back."""
    _file_at(path, 15).close()
    assert migrate(path) == list(range(16, migrations.latest("sqlite") + 1))
    store = SQLiteStore(path)
    await store.open()
    try:
        assert await store.get_categories(APP) is None
        await store.put_categories(APP, b'{"categories":[]}')
        await store.put_categories(APP, b'{"categories":[{"id":"ci","label":"Builds"}]}')
        assert await store.get_categories(APP) == b'{"categories":[{"id":"ci","label":"Builds"}]}'
        assert await store.get_categories("other") is None
    finally:
        await store.close()


async def test_a_file_at_v16_migrates_to_keys_that_expire_and_keep_their_last_use(path):
    """A file at v16: migrating gives API keys an expiry and a last use,
    both empty for the keys it has, which keep working; applying v17 again
    (a file whose version was set back) skips the columns it already has."""
    conn = _file_at(path, 16)
    try:
        with conn:
            conn.execute("INSERT INTO apps(id, name, signing_secret, created_at) "
                         "VALUES (?, 'a', 's', 0)", (APP,))
            conn.execute("INSERT INTO api_keys(prefix, app_id, hash, scopes, created_at) "
                         "VALUES ('0123abcd', ?, 'h-old', 'admin,publish,read', 5)", (APP,))
    finally:
        conn.close()
    assert migrate(path) == list(range(17, migrations.latest("sqlite") + 1))
    store = SQLiteStore(path)
    await store.open()
    try:
        assert (await store.find_api_key("0123abcd", "h-old")).expires_at is None
        await store.note_api_keys_used([(APP, "0123abcd", 7.0)])
        old = (await store.list_api_keys(APP))[0]
        assert (old.expires_at, old.last_used_at) == (None, 7.0)
    finally:
        await store.close()
    conn = sqlite3.connect(path)
    with conn:
        conn.execute("UPDATE meta SET value='16' WHERE key='schema_version'")
    conn.close()
    assert migrate(path) == list(range(17, migrations.latest("sqlite") + 1))
    store = SQLiteStore(path)
    await store.open()
    try:
        assert (await store.list_api_keys(APP))[0].last_used_at == 7.0
    finally:
        await store.close()


async def test_counts_read_the_mutes_they_are_not_given_by_user_from_v18(db, path):
    """Counts that read the user's in-app mutes themselves find them by
    mutes_user (v18), not by walking the app's mutes in the primary key's
    category order; a file migrated from v17 gets the index."""
    await db.put_preferences(APP, "m", Preferences(
        categories={"promo": ChannelPrefs(in_app=False)}))
    with contextlib.closing(sqlite3.connect(path)) as conn, conn:
        conn.execute("DROP INDEX mutes_user")
        conn.execute("UPDATE meta SET value='17' WHERE key='schema_version'")
    assert migrate(path) == list(range(18, migrations.latest("sqlite") + 1))
    with contextlib.closing(sqlite3.connect(path)) as conn:
        plan = conn.execute("EXPLAIN QUERY PLAN " + _counts_sql(None),
                            {"app": APP, "user": "m", "now": time.time()}).fetchall()
    assert any("mutes USING COVERING INDEX mutes_user" in row[3] for row in plan), plan
    await publish(db, NewNotification(id=new_id(), category="promo", body=b"{}",
                                      created_at=time.time(), expires_at=None, all=True))
    assert (await db.counts(APP, "m", time.time()))[:2] == (0, 0)
    assert (await db.counts(APP, "n", time.time()))[:2] == (1, 1)


async def test_two_stores_on_one_file_keep_one_gapless_seq_per_user(db, path):
    """The writer keeps stream heads in memory; a second process (here a
    second store) writing the same file makes it read them again."""
    other = SQLiteStore(path)
    await other.open()
    try:
        for i in range(6):
            await publish(db if i % 2 else other, note(["u", f"v{i}"]))
        outs = await asyncio.gather(*(publish(s, note(["u"])) for s in (db, other, db)))
        seqs = sorted(d.seq for o in outs for d in o.deliveries)
        assert seqs == [7, 8, 9]
        assert (await db.stream_head(APP, "u", time.time())).head_seq == 9
        entries, _ = await db.replay(APP, "u", 0, 0, 100, time.time())
        assert [e.seq for e in entries] == list(range(1, 10))
    finally:
        await other.close()


async def test_a_rolled_back_group_leaves_no_seq_behind(db):
    """Seqs taken by a group that rolls back are taken again: no gap."""
    release, blocked = await _hold_the_writer(db)

    def fail(conn):
        raise RuntimeError("this job fails")

    first = asyncio.ensure_future(publish(db, note(["u"])))
    bad = asyncio.ensure_future(db._write(fail))
    second = asyncio.ensure_future(publish(db, note(["u"])))
    await asyncio.sleep(0)
    release.set()
    await blocked
    with pytest.raises(RuntimeError):
        await bad
    outs = [await first, await second]
    assert [o.deliveries[0].seq for o in outs] == [1, 2]
    third = await publish(db, note(["u"]))
    assert third.deliveries[0].seq == 3
    # the stream the rolled-back group made is made again, and its epoch
    # is the one every delivery names
    head = await db.stream_head(APP, "u", time.time())
    assert {o.deliveries[0].epoch for o in [*outs, third]} == {head.epoch}
    entries, _ = await db.replay(APP, "u", 0, 0, 100, time.time())
    assert [e.seq for e in entries] == [1, 2, 3]


async def test_a_duplicate_key_in_the_same_group_is_a_duplicate(db):
    release, blocked = await _hold_the_writer(db)
    items = [note(["u"]), note(["u"])]
    for it in items:
        it.idempotency_key = "k1"
    futs = [asyncio.ensure_future(publish(db, it)) for it in items]
    await asyncio.sleep(0)
    release.set()
    await blocked
    first, again = [await f for f in futs]
    assert (first.status, again.status) == ("accepted", "duplicate")
    assert again.id == first.id
    entries, _ = await db.replay(APP, "u", 0, 0, 100, time.time())
    assert [e.id for e in entries] == [first.id]


async def test_a_multi_row_insert_that_fails_half_way_leaves_none_of_its_rows(db):
    """The writer's multi-row INSERTs stop at a bad row without undoing the
    rows before it (``OR FAIL``, appends.py); the group's rollback does.
    A batch of 300 whose 200th item repeats a stored id: its rows are past
    the first statement of 128 and in the middle of the next."""
    await db.create_app(APP, "a", "secret")
    stored = await publish(db, note(["u0"]))
    items = [note([f"u{i % 7}"]) for i in range(300)]
    items[199] = note(["u3"], nid=stored.id)
    outs = await db.publish_many(APP, items, fanout_threshold=100, window=3600)
    assert isinstance(outs[199], sqlite3.IntegrityError)
    assert all(o.status == "accepted" for i, o in enumerate(outs) if i != 199)
    assert (await db.get_notification(APP, stored.id)).recipients == 1
    assert await db.recipients_of(APP, stored.id) == ["u0"]
    now = time.time()
    for u in range(7):
        mine = [it.id for i, it in enumerate(items) if i != 199 and it.users == [f"u{u}"]]
        if u == 0:
            mine.insert(0, stored.id)
        entries, _ = await db.replay(APP, f"u{u}", 0, 0, 1000, now)
        assert [e.id for e in entries] == mine
        assert [e.seq for e in entries] == list(range(1, len(mine) + 1))
        assert (await db.stream_head(APP, f"u{u}", now)).head_seq == len(mine)


async def test_topic_members_remembered_by_the_writer_follow_every_change(db, path):
    """The writer remembers a topic's members between publishes (appends.py):
    a subscribe or unsubscribe on this store, one by another process on the
    same file, and a subscribe rolled back with its group all show at the
    next publish."""
    async def to_topic():
        item = note([])
        item.users, item.topic = None, "t"
        out = await publish(db, item)
        return sorted(d.user for d in out.deliveries)

    await db.subscribe(APP, "t", ["a", "b"])
    assert await to_topic() == ["a", "b"]
    await db.subscribe(APP, "t", ["c"])
    assert await to_topic() == ["a", "b", "c"]
    await db.unsubscribe(APP, "t", ["a"])
    assert await to_topic() == ["b", "c"]
    other = SQLiteStore(path)
    await other.open()
    try:
        await other.subscribe(APP, "t", ["d"])
        await other.unsubscribe(APP, "t", ["b"])
    finally:
        await other.close()
    assert await to_topic() == ["c", "d"]

    release, blocked = await _hold_the_writer(db)

    def fail(conn):
        raise RuntimeError("this job fails")

    sub = asyncio.ensure_future(db.subscribe(APP, "t", ["e"]))
    first = asyncio.ensure_future(to_topic())  # sees "e", then rolls back and runs alone
    bad = asyncio.ensure_future(db._write(fail))
    await asyncio.sleep(0)
    release.set()
    await blocked
    with pytest.raises(RuntimeError):
        await bad
    assert await sub == 1
    assert await first == ["c", "d", "e"]
    assert await to_topic() == ["c", "d", "e"]
    # above the threshold the topic is fanned out on read: no deliveries
    await db.subscribe(APP, "t", [f"x{i}" for i in range(100)])
    assert await to_topic() == []


async def test_steady_writes_rewrite_the_wal_from_its_start(db, path):
    """The writer checkpoints between groups, so SQLite starts the WAL over
    and commits overwrite the frames of the cycle before: under steady
    writes the file stops growing, and a commit's sync has no new size or
    blocks to write with it (docs/delivery.md, "What one sync is")."""
    wal = Path(f"{path}-wal")
    sizes = []
    for burst in range(90):
        await asyncio.gather(*(publish(db, note([f"u{burst}-{i}"])) for i in range(10)))
        if burst % 30 == 29:
            await asyncio.sleep(0.25)  # past CHECKPOINT_INTERVAL: the next group checkpoints
            sizes.append(wal.stat().st_size)
    # each stretch writes ~1.4 MB of frames: ~4 MB in all if nothing were reused
    # (a later cycle may dirty a few more pages than the first: some slack)
    assert sizes[2] - sizes[1] < 256 << 10, sizes
    assert sizes[2] < 2 << 20, sizes


async def test_the_writer_stores_an_expiry_and_its_absence(db, path):
    """The writer binds a placeholder for a missing expiry (appends.py):
    the stored rows hold NULL, or the time given, as REAL."""
    never, soon = note(["u", "v"]), note(["u"])
    soon.expires_at = soon.created_at + 60
    outs = await db.publish_many(APP, [never, soon], fanout_threshold=100, window=3600)
    assert [o.status for o in outs] == ["accepted", "accepted"]
    conn = sqlite3.connect(path)
    try:
        inbox = set(conn.execute(
            "SELECT nid, user_id, expires_at, typeof(expires_at) FROM inbox").fetchall())
        notes = set(conn.execute(
            "SELECT id, expires_at, typeof(expires_at) FROM notifications").fetchall())
    finally:
        conn.close()
    assert inbox == {(never.id, "u", None, "null"), (never.id, "v", None, "null"),
                     (soon.id, "u", soon.expires_at, "real")}
    assert notes == {(never.id, None, "null"), (soon.id, soon.expires_at, "real")}


async def test_a_batch_appends_its_usual_items_itself(db, monkeypatch):
    """``publish_many_tx`` appends an item to one user itself, without
    ``publish_tx`` around it; an item that needs more (several users, a
    key) still goes through ``publish_tx``.  Each answered in order, with
    its user's next seq."""
    from tidings.store.sqlite import publish as publish_sql

    through = []
    whole = publish_sql.publish_tx

    def publish_tx(conn, app_id, item, *rest):
        through.append(item.id)
        return whole(conn, app_id, item, *rest)

    monkeypatch.setattr(publish_sql, "publish_tx", publish_tx)
    first, pair, keyed, last = note(["u"]), note(["u", "v"]), note(["v"]), note(["u"])
    keyed.idempotency_key = "k"
    expiring = note(["v"])
    expiring.expires_at = expiring.created_at + 60
    items = [first, pair, keyed, expiring, last]
    outs = await db.publish_many(APP, items, fanout_threshold=100, window=3600)
    assert through == [pair.id, keyed.id]
    assert [o.id for o in outs] == [i.id for i in items]
    assert [[(d.user, d.seq) for d in o.deliveries] for o in outs] == [
        [("u", 1)], [("u", 2), ("v", 1)], [("v", 2)], [("v", 3)], [("u", 3)]]
    assert [o.body for o in outs] == [i.body for i in items]


def _plan(conn: sqlite3.Connection, sql: str, args: tuple) -> list[str]:
    return [r[3] for r in conn.execute("EXPLAIN QUERY PLAN " + sql, args)]


async def test_a_recipient_costs_one_inbox_row_and_its_notification_names_its_seq(db, path):
    """v23: no index on the inbox by notification id (one B-tree entry less
    per recipient). A notification's row names its plain entries' seqs, and
    what finds a notification's entries, or one user's, searches keys: it
    never walks a user's rows, nor the app's."""
    from tidings.store.sqlite import entries

    out = await publish(db, note(["u", "v", 'w"\\x']))
    one = await publish(db, note(["u"]))
    conn = sqlite3.connect(path)
    entries.register(conn)
    try:
        indexes = {r[0] for r in conn.execute(
            "SELECT name FROM sqlite_master WHERE type='index' AND tbl_name='inbox'")}
        assert "inbox_nid" not in indexes and "inbox_back" in indexes
        seqs = dict(conn.execute("SELECT id, seqs FROM notifications").fetchall())
        assert msgspec.json.decode(seqs[out.id]) == {"u": 1, "v": 1, 'w"\\x': 1}
        assert msgspec.json.decode(seqs[one.id]) == {"u": 2}
        assert conn.execute("SELECT seq_of(seqs, 'w\"\\x'), seq_of(seqs, 'v'), "
                            "seq_of(seqs, 'x') FROM notifications WHERE id=?",
                            (out.id,)).fetchone() == (1, 1, None)
        plans = [
            *_plan(conn, f"DELETE FROM inbox WHERE {entries.PLAIN}", (APP, out.id)),
            *_plan(conn, f"DELETE FROM {entries.BACK} WHERE {entries.BACK_WHERE}",
                   (APP, out.id)),
            *_plan(conn, entries.user_entries("?1", "?2", "?3,?4"), (APP, "u", out.id, "x")),
        ]
    finally:
        conn.close()
    inbox = [p for p in plans if "inbox" in p or p.startswith("SEARCH i ")]
    assert inbox and all(
        "(app_id=? AND user_id=? AND seq=?)" in p or "inbox_back" in p or "inbox_gid" in p
        for p in inbox), plans
    assert not [p for p in plans if p.startswith("SCAN") and "VIRTUAL TABLE" not in p], plans


async def test_a_file_at_v22_migrates_to_seqs_on_notifications(path):
    """A file at v22: migrating names each notification's plain entries on
    its row (a snoozed entry that came back, and group entries, are found
    otherwise) and drops inbox_nid; the store then counts, marks, retracts
    them as before. Running v23 again (version set back) changes nothing."""
    conn = _file_at(path, 22)
    try:
        with conn:
            conn.execute("INSERT INTO notifications(app_id, id, category, body, recipients, "
                         "created_at) VALUES (?, 'n1', 'default', '{}', 3, 1.0), "
                         "(?, 'n2', 'default', '{}', 1, 2.0)", (APP, APP))
            conn.executemany(
                "INSERT INTO inbox(app_id, user_id, seq, nid, state, created_at, page_key, gid) "
                "VALUES (?,?,?,?,?,1.0,?,?)",
                [(APP, "u", 1, "n1", 0, None, None), (APP, 'q"\\', 1, "n1", 2, None, None),
                 (APP, "v", 5, "n1", 0, "k1", None),  # back from a snooze
                 (APP, "u", 2, "n2", 0, None, "n2")])  # a group entry
            conn.executemany("INSERT INTO streams VALUES (?, ?, 'e', ?, 0)",
                             [(APP, "u", 2), (APP, 'q"\\', 1), (APP, "v", 5)])
    finally:
        conn.close()
    assert migrate(path) == [23]
    conn = sqlite3.connect(path)
    try:
        seqs = dict(conn.execute("SELECT id, seqs FROM notifications").fetchall())
        assert msgspec.json.decode(seqs["n1"]) == {"u": 1, 'q"\\': 1}
        assert msgspec.json.decode(seqs["n2"]) == {}
        with conn:
            conn.execute("UPDATE meta SET value='22' WHERE key='schema_version'")
    finally:
        conn.close()
    assert migrate(path) == [23]
    store = SQLiteStore(path)
    await store.open()
    try:
        stored = await store.get_notification(APP, "n1")
        assert stored is not None and stored.stats == {
            "unseen": 2, "seen": 0, "read": 1, "archived": 0}
        assert sorted(await store.recipients_of(APP, "n1")) == ['q"\\', "u", "v"]
        assert await store.set_state(APP, "v", ["n1"], "read", 3.0) == ["n1"]
        gone = await store.delete_notification(APP, "n1", 3.0)
        assert gone is not None and sorted(gone.users) == ['q"\\', "u", "v"]
        assert gone.unread == ["u"]
    finally:
        await store.close()
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("SELECT user_id, nid FROM inbox").fetchall() == [("u", "n2")]
        assert conn.execute("SELECT count(*) FROM sqlite_master "
                            "WHERE name='inbox_nid'").fetchone() == (0,)
    finally:
        conn.close()


async def test_a_fan_out_writes_its_rows_from_its_seqs_with_the_group(db, path):
    """A publish to FANOUT_ROWS users or more has its inbox rows made in SQL
    from its ``seqs`` (appends.py), with and without an expiry, in the same
    group as small publishes to the same users: every row at its user's
    next seq, the stream heads after them."""
    from tidings.store.sqlite.appends import FANOUT_ROWS

    users = [f"u{i:03d}" for i in range(FANOUT_ROWS + 6)]
    never, small, soon = note(users), note(users[:2]), note(users[::-1])
    soon.expires_at = soon.created_at + 60
    outs = await db.publish_many(APP, [never, small, soon], fanout_threshold=1000, window=3600)
    assert [o.recipients for o in outs] == [len(users), 2, len(users)]
    conn = sqlite3.connect(path)
    try:
        rows = set(conn.execute("SELECT user_id, seq, nid, expires_at FROM inbox").fetchall())
        heads = dict(conn.execute("SELECT user_id, head_seq FROM streams").fetchall())
        seqs = dict(conn.execute("SELECT id, seqs FROM notifications").fetchall())
    finally:
        conn.close()
    expected = {(u, 1, never.id, None) for u in users} | {
        (u, 2, small.id, None) for u in users[:2]} | {
        (u, 3 if u in users[:2] else 2, soon.id, soon.expires_at) for u in users}
    assert rows == expected
    assert heads == {u: 3 if u in users[:2] else 2 for u in users}
    assert msgspec.json.decode(seqs[soon.id]) == {u: s for u, s, n, _ in expected if n == soon.id}
