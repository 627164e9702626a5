"""What is particular to the PostgreSQL store: several nodes over one database,
explicit schema migrations, and an unreachable database.

Runs against the server of ``tests/services.py`` (skipped without one, a
failure in CI), each test in a fresh schema of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import secrets
import time

import asyncpg
import msgspec
import pytest

from tests.services import require_postgres
from tests.store.pg import fresh_schema
from tidings.core.ids import new_id
from tidings.core.models import ChannelPrefs, Preferences
from tidings.errors import Unavailable
from tidings.store import migrations
from tidings.store.base import REVOKED, NewNotification
from tidings.store.postgres import PostgresStore, committer, migrate
from tidings.store.postgres.sql import COUNTS, COUNTS_STORED_MUTES, INBOX, INBOX_STORED_MUTES

APP = "app_a"


def note(*, users: list[str] | None = None, all: bool = False,
         key: str | None = None) -> NewNotification:
    nid = new_id()
    return NewNotification(
        id=nid, category="default", body=msgspec.json.encode({"id": nid}),
        created_at=time.time(), expires_at=None, users=users, all=all, idempotency_key=key,
    )


async def publish(store, item):
    return await store.publish(APP, item, fanout_threshold=100, window=3600)


@pytest.fixture
def url():
    return require_postgres()


@pytest.fixture
async def schema(url):
    """server_settings of a fresh, migrated schema."""
    async with fresh_schema(url) as settings:
        yield settings


@pytest.fixture
async def nodes(url, schema):
    """Two stores over one database, as two nodes of a cluster would have."""
    stores = [PostgresStore(url, server_settings=schema, max_size=4) for _ in range(2)]
    for s in stores:
        await s.open()
    try:
        yield stores
    finally:
        for s in stores:
            await s.close()


# -- several nodes, one database ------------------------------------------------------


async def test_two_nodes_publishing_to_overlapping_users_get_gapless_seqs(nodes):
    one, two = nodes
    await one.create_app(APP, "a", "secret")
    rng = random.Random(7)
    users = [f"u{i}" for i in range(10)]
    # Recipient lists in random order: the store must lock them in one order
    # itself, or overlapping fan-outs would deadlock.
    items = [note(users=rng.sample(users, rng.randint(2, 8))) for _ in range(120)]
    outs = await asyncio.gather(*(publish(nodes[i % 2], it) for i, it in enumerate(items)))

    by_user: dict[str, dict[int, str]] = {}
    for out in outs:
        for d in out.deliveries:
            seqs = by_user.setdefault(d.user, {})
            assert d.seq not in seqs, f"seq {d.seq} handed out twice to {d.user}"
            seqs[d.seq] = out.id
    for user in users:
        expected = sum(user in it.users for it in items)
        assert sorted(by_user[user]) == list(range(1, expected + 1)), f"gap for {user}"
        # both nodes read the same stream: same head, same order
        heads = [await s.stream_head(APP, user, time.time()) for s in nodes]
        assert {(h.epoch, h.head_seq) for h in heads} == {(heads[0].epoch, expected)}
        personal, _ = await two.replay(APP, user, 0, 0, 1000, time.time())
        assert [e.id for e in personal] == [by_user[user][s] for s in range(1, expected + 1)]


async def test_two_nodes_share_one_feed_timeline(nodes):
    outs = await asyncio.gather(*(publish(nodes[i % 2], note(all=True)) for i in range(40)))
    assert sorted(o.feed_offset for o in outs) == list(range(1, 41))
    _, feed = await nodes[0].replay(APP, "anyone", 0, 0, 1000, time.time())
    assert [e.feed for e in feed] == list(range(1, 41))


async def test_one_idempotency_key_on_two_nodes_stores_one_notification(nodes):
    items = [note(users=["u"], key="k") for _ in range(10)]
    outs = await asyncio.gather(*(publish(nodes[i % 2], it) for i, it in enumerate(items)))
    assert sorted(o.status for o in outs) == ["accepted"] + ["duplicate"] * 9
    assert len({o.id for o in outs}) == 1
    assert (await nodes[1].stream_head(APP, "u", time.time())).head_seq == 1



async def test_inbox_pages_by_id_even_when_seq_order_differs(nodes):
    # Concurrent publishes take a user's stream lock in whatever order they
    # reach it, so seq order may differ from id order; paging with
    # before=<id> must still list every entry once, newest id first.
    items = [note(users=["u"]) for _ in range(60)]
    await asyncio.gather(*(publish(nodes[i % 2], it) for i, it in enumerate(items)))
    pages, before = [], None
    while page := await nodes[0].inbox(APP, "u", limit=7, before=before, state=None,
                                        now=time.time()):
        pages += [e.id for e in page]
        before = page[-1].id
    assert pages == sorted((it.id for it in items), reverse=True)

# -- group commit (committer.py) -------------------------------------------------------


async def test_publishes_gathered_in_one_statement_take_seqs_in_submission_order(nodes):
    store = nodes[0]
    targets = [["u1"], ["u2", "u1"], ["u2"], ["u1"], ["u3"]]
    items = [note(users=t) for t in targets]
    groups = store.committer.groups
    # the first publish finds the store idle and is written at once, alone;
    # the five that arrive meanwhile are one statement
    _, *outs = await asyncio.gather(publish(store, note(users=["u0"])),
                                    *(publish(store, it) for it in items))
    assert store.committer.groups == groups + 2
    seqs = [{d.user: d.seq for d in o.deliveries} for o in outs]
    assert seqs == [{"u1": 1}, {"u1": 2, "u2": 1}, {"u2": 2}, {"u1": 3}, {"u3": 1}]
    personal, _ = await nodes[1].replay(APP, "u1", 0, 0, 10, time.time())
    assert [e.id for e in personal] == [items[0].id, items[1].id, items[3].id]
    assert len({d.epoch for o in outs for d in o.deliveries if d.user == "u1"}) == 1


async def test_a_publish_to_an_idle_store_is_written_at_once_and_what_arrives_meanwhile_is_grouped(
        nodes, monkeypatch):
    monkeypatch.setattr(committer, "IDLE_GAP", 0.0)  # idle as soon as nothing is in flight
    store = nodes[0]
    groups = store.committer.groups
    first = await publish(store, note(users=["u"]))  # alone: nothing in flight
    assert store.committer.groups == groups + 1
    # an idempotency key held by the idle publish: the queued one with it waits and answers it
    keyed = [note(users=["u"], key="k"), note(users=["u"], key="k"), note(users=["v"])]
    outs = await asyncio.gather(*(publish(store, it) for it in keyed))
    assert [o.status for o in outs] == ["accepted", "duplicate", "accepted"]
    assert outs[1].id == outs[0].id == keyed[0].id
    assert [d.seq for d in first.deliveries] == [1]
    assert [d.seq for d in outs[0].deliveries] == [2]
    assert (await store.stream_head(APP, "u", time.time())).head_seq == 2


async def test_a_publish_right_after_a_write_is_grouped_not_written_alone(nodes, monkeypatch):
    # under load the next publishes arrive just after the last commit's answer;
    # written alone, each would be a statement and a commit of its own
    monkeypatch.setattr(committer, "IDLE_GAP", 60.0)
    store = nodes[0]
    await publish(store, note(users=["u"]))
    groups = store.committer.groups
    outs = await asyncio.gather(*(publish(store, note(users=[u])) for u in ("u", "v", "w")))
    assert store.committer.groups == groups + 1  # all three in one statement
    assert [[d.seq for d in o.deliveries] for o in outs] == [[2], [1], [1]]


async def test_under_load_a_group_waits_for_the_publishers_its_last_commit_answered(
        nodes, monkeypatch):
    # Publishers that publish again once answered come back one by one
    # (each request costs the node its HTTP work first): the next group
    # waits for as many as the last commit answered, not leaving with the
    # first of them alone.
    monkeypatch.setattr(committer, "IDLE_GAP", 60.0)
    monkeypatch.setattr(committer, "GATHER", 60.0, raising=False)
    store = nodes[0]
    await publish(store, note(users=["x"]))  # the idle store's publish, written alone
    await asyncio.gather(*(publish(store, note(users=[u])) for u in ("u", "v", "w")))
    groups = store.committer.groups

    async def later(delay: float, user: str):
        await asyncio.sleep(delay)
        return await publish(store, note(users=[user]))

    outs = await asyncio.gather(*(later(0.02 * i, u) for i, u in enumerate(("u", "v", "w"))))
    assert store.committer.groups == groups + 1  # one statement for the three
    assert [[d.seq for d in o.deliveries] for o in outs] == [[2], [2], [2]]
    # the wait is bounded: fewer than expected commit once it is over
    monkeypatch.setattr(committer, "GATHER", 0.01, raising=False)
    out = await publish(store, note(users=["u"]))
    assert [d.seq for d in out.deliveries] == [3]
    assert store.committer.groups == groups + 2


async def test_a_batch_request_counts_as_one_publisher_to_wait_for(nodes, monkeypatch):
    # A batch's items come from one request: once answered, one caller may
    # publish again, not one per item.  Counted per item, the next publish
    # waited the whole GATHER for callers that do not exist.
    monkeypatch.setattr(committer, "IDLE_GAP", 60.0)
    monkeypatch.setattr(committer, "GATHER", 60.0, raising=False)
    store = nodes[0]
    await publish(store, note(users=["x"]))
    outs = await store.publish_many(APP, [note(users=[u]) for u in ("u", "v", "w")],
                                    fanout_threshold=100, window=3600)
    assert [o.status for o in outs] == ["accepted"] * 3
    out = await asyncio.wait_for(publish(store, note(users=["u"])), 10)
    assert [d.seq for d in out.deliveries] == [2]


async def test_a_failing_publish_fails_alone_and_the_rest_of_its_group_commits(nodes):
    store = nodes[0]
    first = note(users=["u"])
    await publish(store, first)
    again = note(users=["u"])
    again.id = first.id  # the id is taken: this one cannot be stored
    items = [note(users=["u"]), again, note(users=["u", "v"])]
    outs = await asyncio.gather(*(publish(store, it) for it in items), return_exceptions=True)
    assert isinstance(outs[1], asyncpg.UniqueViolationError)
    assert [d.seq for d in outs[0].deliveries] == [2]
    assert sorted((d.user, d.seq) for d in outs[2].deliveries) == [("u", 3), ("v", 1)]
    assert (await store.stream_head(APP, "u", time.time())).head_seq == 3


async def test_idempotency_keys_in_one_group_claim_once(nodes):
    store = nodes[0]
    items = [note(users=["u"], key="k1"), note(users=["u"], key="k1"),
             note(users=["u"], key="k2"), note(users=["u"])]
    items[0].fingerprint, items[1].fingerprint = "fp-a", "fp-b"
    outs = await asyncio.gather(*(publish(store, it) for it in items))
    assert [o.status for o in outs] == ["accepted", "duplicate", "accepted", "accepted"]
    assert (outs[1].id, outs[1].recipients, outs[1].fingerprint) == (items[0].id, 1, "fp-a")
    assert (await store.stream_head(APP, "u", time.time())).head_seq == 3
    # later, on the other node: the first result again, and nothing written
    late = await publish(nodes[1], note(users=["u", "w"], key="k2"))
    assert (late.status, late.id, late.recipients) == ("duplicate", items[2].id, 1)
    assert (await store.stream_head(APP, "u", time.time())).head_seq == 3


async def test_keys_reused_across_two_nodes_publish_once_each_with_gapless_seqs(nodes):
    # Groups on both nodes at once, keys repeated within and across them,
    # recipients overlapping: every key is published once, every other
    # publish with it answers that one, and each user's seqs have no gap.
    await nodes[0].create_app(APP, "a", "secret")
    rng = random.Random(11)
    users = [f"u{i}" for i in range(8)]
    items = [note(users=rng.sample(users, rng.randint(1, 4)),
                  key=rng.choice([None, *(f"k{j}" for j in range(15))]))
             for _ in range(160)]
    outs = await asyncio.gather(*(publish(nodes[i % 2], it) for i, it in enumerate(items)))
    first: dict[str, str] = {}
    for it, out in zip(items, outs, strict=True):
        if it.idempotency_key is not None and out.status == "accepted":
            assert it.idempotency_key not in first, f"{it.idempotency_key} published twice"
            first[it.idempotency_key] = out.id
    assert set(first) == {it.idempotency_key for it in items if it.idempotency_key is not None}
    for it, out in zip(items, outs, strict=True):
        if it.idempotency_key is not None:
            assert out.id == first[it.idempotency_key]
    published = [it for it, out in zip(items, outs, strict=True) if out.status == "accepted"]
    for user in users:
        seqs = sorted(d.seq for o in outs for d in o.deliveries if d.user == user)
        assert seqs == list(range(1, sum(user in it.users for it in published) + 1))


async def test_an_expired_idempotency_key_is_claimed_again_by_a_group(nodes):
    store = nodes[0]
    old = note(users=["u"], key="k")
    old.created_at -= 7200  # older than the test's window of 3600 s
    await publish(store, old)
    outs = await asyncio.gather(*(publish(store, note(users=["u"], key=k)) for k in "kx"))
    assert [o.status for o in outs] == ["accepted", "accepted"]
    assert (await store.stream_head(APP, "u", time.time())).head_seq == 3


async def test_a_read_only_database_fails_every_publish_of_the_group_with_503(url, schema):
    store = PostgresStore(url, server_settings={**schema, "default_transaction_read_only": "on"})
    await store.open()
    try:
        outs = await asyncio.gather(*(publish(store, note(users=["u"], key=k)) for k in "ab"),
                                    publish(store, note(users=["v"])), return_exceptions=True)
        assert [type(o) for o in outs] == [Unavailable] * 3
    finally:
        await store.close()


# -- the inbox page's layout (postgres_010.sql) -----------------------------------------


async def test_entries_carry_small_bodies_and_pages_read_large_ones_from_the_notification(
        url, nodes):
    small = note(users=["u"])
    large = note(users=["u"])
    large.body = msgspec.json.encode({"id": large.id, "text": "x" * 2000})
    for item in (small, large):
        await publish(nodes[0], item)
    conn = await asyncpg.connect(url, server_settings=nodes[0]._server_settings)
    try:
        copies = dict(await conn.fetch("SELECT nid, body FROM inbox WHERE user_id = 'u'"))
    finally:
        await conn.close()
    assert copies == {small.id: small.body, large.id: None}
    page = await nodes[1].inbox(APP, "u", limit=10, before=None, state=None, now=time.time())
    assert [(e.id, e.body) for e in page] == [(large.id, large.body), (small.id, small.body)]


async def test_entries_written_before_v10_keep_their_bodies_after_the_migration(url):
    """A database at v9 with entries: migrating adds the page index, and the
    entries without a copy of their body read it from their notification."""
    async with fresh_schema(url, migrated=False) as settings:
        conn = await asyncpg.connect(url, server_settings=settings)
        try:
            await conn.execute('CREATE TABLE meta (key text COLLATE "C" PRIMARY KEY, '
                               "value text NOT NULL)")
            for _, script in migrations.scripts("postgres")[:9]:
                await conn.execute(script)
            await conn.execute("INSERT INTO meta VALUES ('schema_version', '9')")
            await conn.execute("INSERT INTO apps VALUES ($1, 'a', 's', 0)", APP)
            old = [note(users=["u"]) for _ in range(3)]
            for seq, item in enumerate(old, 1):
                await conn.execute(
                    "INSERT INTO notifications (app_id, id, category, body, recipients, "
                    "created_at) VALUES ($1, $2, 'default', $3, 1, $4)",
                    APP, item.id, item.body, item.created_at)
                await conn.execute(
                    "INSERT INTO inbox (app_id, user_id, seq, nid, state, created_at) "
                    "VALUES ($1, 'u', $2, $3, $4, $5)", APP, seq, item.id, seq % 2,
                    item.created_at)
            await conn.execute(
                "INSERT INTO streams (app_id, user_id, epoch, head_seq) "
                "VALUES ($1, 'u', 'e', 3)", APP)
        finally:
            await conn.close()
        assert await migrate(url, server_settings=settings) == list(
            range(10, migrations.latest("postgres") + 1))
        store = PostgresStore(url, server_settings=settings)
        await store.open()
        try:
            new = note(users=["u"])
            await publish(store, new)
            page = await store.inbox(APP, "u", limit=10, before=None, state=None,
                                     now=time.time())
            assert [(e.id, e.body, e.seq) for e in page] == [
                (new.id, new.body, 4), *((it.id, it.body, seq)
                                         for seq, it in reversed(list(enumerate(old, 1))))]
            # seen, unseen, seen, new
            assert (await store.counts(APP, "u", time.time()))[:2] == (4, 2)
        finally:
            await store.close()

async def test_keys_made_before_v11_keep_working_after_the_migration(url):
    """A database at v10 (keys without a name): migrating adds the name and
    the per-app index; the old key still verifies, is listed without a
    name, and can be revoked once a newer admin key exists."""
    async with fresh_schema(url, migrated=False) as settings:
        conn = await asyncpg.connect(url, server_settings=settings)
        try:
            await conn.execute('CREATE TABLE meta (key text COLLATE "C" PRIMARY KEY, '
                               "value text NOT NULL)")
            for _, script in migrations.scripts("postgres")[:10]:
                await conn.execute(script)
            await conn.execute("INSERT INTO meta VALUES ('schema_version', '10')")
            await conn.execute("INSERT INTO apps VALUES ($1, 'a', 's', 0)", APP)
            await conn.execute("INSERT INTO api_keys VALUES ('0123abcd', $1, 'h-old', "
                               "'admin,publish,read', 5)", APP)
        finally:
            await conn.close()
        assert await migrate(url, server_settings=settings) == list(
            range(11, migrations.latest("postgres") + 1))
        store = PostgresStore(url, server_settings=settings)
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


async def test_a_database_at_v13_migrates_to_token_revocations(url):
    """A database at v13 (no revocations): migrating adds the table and
    its index, and a revocation is stored and read back."""
    async with fresh_schema(url, migrated=False) as settings:
        conn = await asyncpg.connect(url, server_settings=settings)
        try:
            await conn.execute('CREATE TABLE meta (key text COLLATE "C" PRIMARY KEY, '
                               "value text NOT NULL)")
            for _, script in migrations.scripts("postgres")[:13]:
                await conn.execute(script)
            await conn.execute("INSERT INTO meta VALUES ('schema_version', '13')")
            await conn.execute("INSERT INTO apps (id, name, signing_secret, created_at) "
                               "VALUES ($1, 'a', 's', 0)", APP)
        finally:
            await conn.close()
        assert await migrate(url, server_settings=settings) == list(
            range(14, migrations.latest("postgres") + 1))
        store = PostgresStore(url, server_settings=settings)
        await store.open()
        try:
            assert await store.token_revocations(0) == []
            assert await store.revoke_tokens(APP, "ann", 1000.0, forget_before=0) == 1000.0
            assert await store.token_revocations(0) == [(APP, "ann", 1000.0)]
        finally:
            await store.close()


async def test_a_database_at_v14_migrates_to_revoked_tokens(url):
    """A database at v14 (no token revoked by its jti): migrating adds the
    table and its index, and a revocation is stored and read back."""
    async with fresh_schema(url, migrated=False) as settings:
        conn = await asyncpg.connect(url, server_settings=settings)
        try:
            await conn.execute('CREATE TABLE meta (key text COLLATE "C" PRIMARY KEY, '
                               "value text NOT NULL)")
            for _, script in migrations.scripts("postgres")[:14]:
                await conn.execute(script)
            await conn.execute("INSERT INTO meta VALUES ('schema_version', '14')")
            await conn.execute("INSERT INTO apps (id, name, signing_secret, created_at) "
                               "VALUES ($1, 'a', 's', 0)", APP)
        finally:
            await conn.close()
        assert await migrate(url, server_settings=settings) == list(
            range(15, migrations.latest("postgres") + 1))
        store = PostgresStore(url, server_settings=settings)
        await store.open()
        try:
            assert await store.token_id_revocations(0, 0) == []
            assert await store.revoke_token_id(APP, "ann", "j1", 1000.0, 10.0) == 1000.0
            assert await store.token_id_revocations(0, 0) == [(APP, "ann", "j1", 1000.0)]
        finally:
            await store.close()


async def test_a_database_at_v16_migrates_to_keys_that_expire_and_keep_their_last_use(url):
    """A database at v16: migrating gives API keys an expiry and a last use,
    both empty for the keys it has, which keep working."""
    async with fresh_schema(url, migrated=False) as settings:
        conn = await asyncpg.connect(url, server_settings=settings)
        try:
            await conn.execute('CREATE TABLE meta (key text COLLATE "C" PRIMARY KEY, '
                               "value text NOT NULL)")
            for _, script in migrations.scripts("postgres")[:16]:
                await conn.execute(script)
            await conn.execute("INSERT INTO meta VALUES ('schema_version', '16')")
            await conn.execute("INSERT INTO apps (id, name, signing_secret, created_at) "
                               "VALUES ($1, 'a', 's', 0)", APP)
            await conn.execute("INSERT INTO api_keys (prefix, app_id, hash, scopes, created_at) "
                               "VALUES ('0123abcd', $1, 'h-old', 'admin,publish,read', 5)", APP)
        finally:
            await conn.close()
        assert await migrate(url, server_settings=settings) == list(
            range(17, migrations.latest("postgres") + 1))
        store = PostgresStore(url, server_settings=settings)
        await store.open()
        try:
            assert (await store.find_api_key("0123abcd", "h-old")).expires_at is None
            await store.note_api_keys_used([(APP, "0123abcd", 7.0)])
            old = (await store.list_api_keys(APP))[0]
            assert (old.expires_at, old.last_used_at) == (None, 7.0)
        finally:
            await store.close()


# -- in-app mutes read by the page and counts (postgres_018.sql) ------------------------

def _indexes(plan: dict) -> set[str]:
    """The indexes an EXPLAIN (FORMAT JSON) plan node and those under it scan."""
    found = {plan["Index Name"]} if "Index Name" in plan else set()
    for child in plan.get("Plans", ()):
        found |= _indexes(child)
    return found


async def test_statements_reading_the_mutes_find_them_by_user_and_keep_their_plans(
        url, schema, nodes):
    """A page and counts that read the user's mutes themselves do it by
    mutes_user (v18), once, beside the plan of the statement without mutes:
    the page still reads the user's entries from inbox_page.  A database
    migrated from v17 gets the index."""
    users = ["m", "n"]
    await nodes[0].put_preferences(APP, "m", Preferences(
        categories={"promo": ChannelPrefs(in_app=False)}))
    for _ in range(20):
        await publish(nodes[0], note(users=users))
    conn = await asyncpg.connect(url, server_settings=schema)
    try:
        # other users' entries and mutes, which the mutes' primary key
        # (category first) mixes in
        await conn.execute("INSERT INTO inbox (app_id, user_id, seq, nid, created_at) "
                           "SELECT $1, 'x' || (i % 1000), i, 'y' || i, 0 "
                           "FROM generate_series(1, 20000) AS i", APP)
        await conn.execute("INSERT INTO mutes (app_id, category, user_id) SELECT $1, "
                           "'c' || (i % 7), 'x' || i FROM generate_series(1, 5000) AS i", APP)
        await conn.execute("DROP INDEX mutes_user")
        await conn.execute("UPDATE meta SET value = '17' WHERE key = 'schema_version'")
        assert await migrate(url, server_settings=schema) == list(
            range(18, migrations.latest("postgres") + 1))
        await conn.execute("ANALYZE")
        now = time.time()

        async def indexes(sql: str, *args) -> set[str]:
            plan = await conn.fetchval("EXPLAIN (FORMAT JSON) " + sql, APP, "m", now, *args)
            return _indexes(json.loads(plan)[0]["Plan"])

        page = await indexes(INBOX[None, False], 20)
        assert "inbox_page" in page
        assert await indexes(INBOX_STORED_MUTES[None, False], 20) == page | {"mutes_user"}
        assert await indexes(COUNTS_STORED_MUTES) == await indexes(COUNTS) | {"mutes_user"}
    finally:
        await conn.close()
    for store in nodes:
        assert [e.id for e in await store.inbox(APP, "m", limit=30, before=None, state=None,
                                                now=now)] == [
            e.id for e in await store.inbox(APP, "n", limit=30, before=None, state=None,
                                            now=now, muted=frozenset())][:20]


# -- schema migrations ---------------------------------------------------------------


async def _version(url, settings) -> str | None:
    conn = await asyncpg.connect(url, server_settings=settings)
    try:
        if await conn.fetchval("SELECT to_regclass('meta') IS NULL"):
            return None
        return await conn.fetchval("SELECT value FROM meta WHERE key = 'schema_version'")
    finally:
        await conn.close()


async def test_migrate_brings_a_fresh_database_to_the_current_version(url):
    latest = migrations.latest("postgres")
    async with fresh_schema(url, migrated=False) as settings:
        assert await migrate(url, server_settings=settings) == list(range(1, latest + 1))
        assert await _version(url, settings) == str(latest)
        assert await migrate(url, server_settings=settings) == []  # nothing pending
        store = PostgresStore(url, server_settings=settings)
        await store.open()
        await store.close()


async def test_nodes_migrating_at_once_apply_each_version_once(url):
    latest = migrations.latest("postgres")
    async with fresh_schema(url, migrated=False) as settings:
        runs = await asyncio.gather(*(migrate(url, server_settings=settings) for _ in range(3)))
        assert sorted(v for run in runs for v in run) == list(range(1, latest + 1))
        assert await _version(url, settings) == str(latest)


async def test_open_refuses_a_database_with_pending_migrations(url):
    async with fresh_schema(url, migrated=False) as settings:
        store = PostgresStore(url, server_settings=settings)
        with pytest.raises(migrations.SchemaError, match=r"older .*tidings migrate --store"):
            await store.open()
        assert await store.ping() is False  # nothing was left open
        # nothing was created behind the operator's back
        assert await _version(url, settings) is None


async def test_a_database_newer_than_the_code_is_refused(url, schema):
    conn = await asyncpg.connect(url, server_settings=schema)
    try:
        await conn.execute("UPDATE meta SET value = $1 WHERE key = 'schema_version'",
                           str(migrations.latest("postgres") + 1))
    finally:
        await conn.close()
    with pytest.raises(migrations.SchemaError, match="newer than this tidings"):
        await PostgresStore(url, server_settings=schema).open()
    with pytest.raises(migrations.SchemaError, match="newer than this tidings"):
        await migrate(url, server_settings=schema)


async def test_the_password_never_appears_in_the_refusal(url):
    async with fresh_schema(url, migrated=False) as settings:
        with_password = url.replace("postgres@", "postgres:hunter2@", 1)
        with pytest.raises(migrations.SchemaError) as refused:
            await PostgresStore(with_password, server_settings=settings).open()
        assert "hunter2" not in str(refused.value) and "***" in str(refused.value)


# -- an unreachable database ---------------------------------------------------------


class Partition:
    """A TCP forwarder to PostgreSQL that a test can cut and heal: the
    database goes away for this store only, the shared server is untouched."""

    def __init__(self, host: str, port: int):
        self.target = (host, port)
        self.port = 0
        self._server: asyncio.Server | None = None
        self._open: set[asyncio.StreamWriter] = set()
        self._serving = False

    async def heal(self) -> None:
        self._server = await asyncio.start_server(
            self._forward, "127.0.0.1", self.port, reuse_address=True)
        self.port = self._server.sockets[0].getsockname()[1]
        self._serving = True

    async def cut(self) -> None:
        """Refuse new connections and reset the open ones."""
        self._serving = False
        # Stop accepting before the server closes: asyncio (3.11) leaves a
        # connection it accepted unclosed when its transport is made after
        # the close.  Three turns of the loop take those already accepted
        # to _forward, which resets them.
        loop = asyncio.get_running_loop()
        for sock in self._server.sockets:
            loop.remove_reader(sock.fileno())
        for _ in range(3):
            await asyncio.sleep(0)
        self._server.close()
        for writer in list(self._open):
            writer.transport.abort()
        await self._server.wait_closed()

    async def _forward(self, reader, writer) -> None:
        if not self._serving:  # accepted as the partition was cut
            writer.transport.abort()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.transport.abort()
            return
        if not self._serving:  # cut while this one connected upstream
            writer.transport.abort()
            up_writer.transport.abort()
            return
        self._open |= {writer, up_writer}

        async def pipe(src, dst):
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except OSError:
                pass
            finally:
                dst.transport.abort()
                self._open.discard(dst)

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))


@pytest.fixture
async def partition(url):
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    p = Partition(parts.hostname, parts.port or 5432)
    await p.heal()
    yield p
    with contextlib.suppress(Exception):
        await p.cut()


def _via(url: str, port: int) -> str:
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    user = f"{parts.username}@" if parts.username else ""
    return parts._replace(netloc=f"{user}127.0.0.1:{port}").geturl()


async def test_open_fails_clearly_when_the_database_is_unreachable(url, partition):
    await partition.cut()
    store = PostgresStore(_via(url, partition.port))
    with pytest.raises(Unavailable, match=r"cannot reach PostgreSQL at 127\.0\.0\.1:\d+"):
        await store.open()
    assert await store.ping() is False


async def test_store_calls_raise_unavailable_while_the_database_is_away_then_recover(
    url, schema, partition,
):
    store = PostgresStore(_via(url, partition.port), server_settings=schema, max_size=3)
    await store.open()
    try:
        await store.create_app(APP, "a", "secret")
        first = await publish(store, note(users=["u"]))
        assert await store.ping() is True

        await partition.cut()
        assert await store.ping() is False
        calls = [
            lambda: publish(store, note(users=["u"])),
            lambda: store.get_app(APP),
            lambda: store.stream_head(APP, "u", time.time()),
            lambda: store.counts(APP, "u", time.time()),
            lambda: store.set_state(APP, "u", None, "read", time.time()),
        ]
        for call in calls:
            with pytest.raises(Unavailable) as down:
                await call()
            assert down.value.status == 503 and 1 <= down.value.retry_after <= 5

        # Back: the same store instance serves again, with no reopen.
        await partition.heal()
        assert await store.ping() is True
        again = await publish(store, note(users=["u"]))
        assert [(d.user, d.seq) for d in again.deliveries] == [("u", 2)]
        assert (await store.get_notification(APP, first.id)).recipients == 1
    finally:
        await store.close()


async def test_sessions_ended_by_a_server_restart_are_replaced_unnoticed(url, schema):
    # Only this store's sessions are ended: they carry a name of their own.
    name = "tidings-test-" + secrets.token_hex(4)
    store = PostgresStore(url, server_settings={**schema, "application_name": name}, max_size=2)
    await store.open()
    admin = await asyncpg.connect(url)
    try:
        await store.create_app(APP, "a", "secret")
        await asyncio.gather(*(publish(store, note(users=["u"])) for _ in range(4)))
        # concurrent reads open the pool's second session (publishes share one statement)
        await asyncio.gather(*(store.replay(APP, "u", 0, 0, 10, time.time()) for _ in range(4)))
        sessions = "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1"
        assert await admin.fetchval(sessions, name) == 2
        # What a restart does to every session: FATAL 57P01, then the socket closes.
        await admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1",
            name)
        for _ in range(500):  # terminating is asynchronous: until they are gone
            if await admin.fetchval(sessions, name) == 0:
                break
            await asyncio.sleep(0.01)
        # The dead idle connections are found out before a statement is sent
        # on them, so every call succeeds on a fresh one: no 503 for this.
        outs = await asyncio.gather(*(publish(store, note(users=["u"])) for _ in range(4)))
        assert sorted(d.seq for o in outs for d in o.deliveries) == [5, 6, 7, 8]
    finally:
        await admin.close()
        await store.close()


async def test_the_api_answers_503_with_retry_after_while_the_database_is_away(
    url, schema, partition, tmp_path,
):
    from tests.conftest import run_server

    store = _via(url, partition.port) + f"?search_path={schema['search_path']}"
    async with run_server(tmp_path, store=store) as server:
        token = await server.token("u")
        async with server.http() as http:
            body = {"to": {"users": ["u"]}, "title": "hi"}
            assert (await http.post("/v1/notifications", json=body)).status_code == 202

            await partition.cut()
            r = await http.post("/v1/notifications", json=body)
            assert r.status_code == 503, r.text
            assert r.json()["error"]["code"] == "unavailable"
            assert 1 <= int(r.headers["retry-after"]) <= 5
            me = {"Authorization": f"Bearer {token}"}
            r = await http.get("/v1/me/counts", headers=me)
            assert (r.status_code, "retry-after" in r.headers) == (503, True)
            r = await http.get("/readyz")
            assert (r.status_code, r.json()["store"]) == (503, False)

            await partition.heal()
            assert (await http.post("/v1/notifications", json=body)).status_code == 202
            assert (await http.get("/v1/me/counts", headers=me)).json()["unread"] == 2
            assert (await http.get("/readyz")).status_code == 200


async def test_nodes_starting_together_on_an_empty_database_create_one_default_app(url, schema):
    from tidings import bootstrap
    from tidings.config import Settings

    settings = Settings(store=f"{url}?search_path={schema['search_path']}")
    # each start runs its own event loop, as separate processes would
    starts = await asyncio.gather(*(
        asyncio.to_thread(bootstrap.first_start, settings) for _ in range(3)))
    created = [s for s in starts if s is not None]
    assert len(created) == 1 and created[0]["app"] == "default"


# -- connections kept between calls ---------------------------------------------------


async def test_calls_one_after_another_reuse_one_connection(url, schema):
    store = PostgresStore(url, server_settings=schema, max_size=3)
    await store.open()
    try:
        pids = {await store._fetchval("SELECT pg_backend_pid()") for _ in range(10)}
        assert len(pids) == 1
        # a statement's own error leaves the connection in use
        with pytest.raises(asyncpg.DivisionByZeroError):
            await store._fetchval("SELECT 1 / 0")
        assert await store._fetchval("SELECT pg_backend_pid()") in pids
    finally:
        await asyncio.wait_for(store.close(), 5)  # the kept connection does not hold it up


async def test_more_calls_than_connections_all_get_one(url, schema):
    # a call waiting for the pool is handed the next connection a call gives
    # up, not left waiting while others keep it for themselves
    store = PostgresStore(url, server_settings=schema, max_size=2)
    await store.open()
    try:
        for _ in range(3):
            pids = await asyncio.gather(*(
                store._fetchval("SELECT pg_backend_pid() FROM pg_sleep(0.01)")
                for _ in range(12)))
            assert len(set(pids)) <= 2
    finally:
        await asyncio.wait_for(store.close(), 5)


async def test_a_call_cancelled_mid_statement_does_not_leave_its_connection_to_the_next(
    url, schema,
):
    store = PostgresStore(url, server_settings=schema, max_size=2)
    await store.open()
    try:
        slow = asyncio.create_task(store._fetchval("SELECT pg_sleep(30)"))
        await asyncio.sleep(0.2)
        slow.cancel()
        with pytest.raises(asyncio.CancelledError):
            await slow
        assert store._spare == []  # the pool settles the cancelled statement
        assert await asyncio.wait_for(store._fetchval("SELECT 41 + 1"), 10) == 42
    finally:
        await asyncio.wait_for(store.close(), 5)
