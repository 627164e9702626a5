"""The timeline of one notification for one user (``Store.timeline``) and the
outbound attempt log behind it.

Runs once per backend of ``conftest.BACKENDS``, through the store's methods
only.  State changes and attempts pass their own ``now``; "committed" comes
from the store's clock, so it is checked against the wall clock around it.
"""

from __future__ import annotations

import sqlite3
import time

import asyncpg
import msgspec
import pytest

from tests.store.test_contract import THRESHOLD, WINDOW, next_id, note
from tidings.channels.base import Job
from tidings.core.receipts import MAX_DEVICES
from tidings.store import migrations
from tidings.store.base import Attempt, DeviceReceipt
from tidings.store.outbound import NewJob
from tidings.store.postgres import migrate as pg_migrate
from tidings.store.sqlite import migrate as sqlite_migrate

A, B = "app_a", "app_b"
T0 = 1_700_000_000.0


@pytest.fixture
async def db(store):
    await store.create_app(A, "app A", "secret-a")
    await store.create_app(B, "app B", "secret-b")
    return store


async def publish(db, app, item, threshold=THRESHOLD):
    return await db.publish(app, item, fanout_threshold=threshold, window=WINDOW)


def email_job(jid: str, nid: str, user: str) -> NewJob:
    job = Job(id=jid, channel="email", app=A, user=user,
              notification=msgspec.json.encode({"id": nid}),
              destination={"to": f"{user}@example.test"}, created_at=T0)
    return NewJob(job=job, nid=nid, not_before=T0)


async def test_accepted_committed_and_each_state_change_have_their_times(db):
    before = time.time()
    out = await publish(db, A, note(users=["u", "v"], created_at=T0))
    after = time.time()
    tl = await db.timeline(A, out.id, "u")
    assert (tl.accepted, tl.recipient) == (T0, True)
    assert before - 1 <= tl.committed <= after + 1  # the store's clock, at the INSERT
    assert (tl.seen_at, tl.read_at, tl.archived_at, tl.receipts, tl.attempts) == (
        None, None, None, {}, [])
    await db.set_state(A, "u", [out.id], "seen", T0 + 10)
    await db.set_state(A, "u", [out.id], "seen", T0 + 11)   # no change: the first time stays
    await db.set_state(A, "u", None, "read", T0 + 20)       # "all" moves it too
    await db.set_state(A, "u", [out.id], "archived", T0 + 30)
    tl = await db.timeline(A, out.id, "u")
    assert (tl.seen_at, tl.read_at, tl.archived_at) == (T0 + 10, T0 + 20, T0 + 30)
    # read straight from unseen: seen then too; v's entry is v's own
    await db.set_state(A, "v", [out.id], "read", T0 + 40)
    tl = await db.timeline(A, out.id, "v")
    assert (tl.seen_at, tl.read_at, tl.archived_at) == (T0 + 40, T0 + 40, None)


async def test_receipts_show_each_devices_first_time(db):
    out = await publish(db, A, note(users=["u", "v"]))
    await db.record_receipts([(A, out.id, "delivered", "u", "laptop", "Firefox on Linux", T0 + 1)])
    await db.record_receipts([
        (A, out.id, "delivered", "u", "laptop", "Firefox on Linux", T0 + 2),  # repeated: first
        (A, out.id, "delivered", "u", "phone", None, T0 + 3),
        (A, out.id, "displayed", "u", "phone", None, T0 + 4),
        (A, out.id, "delivered", "v", "phone", None, T0 + 5),               # v's own
        (A, out.id, "delivered", "mallory", "phone", None, T0 + 5),         # not a recipient
    ])
    tl = await db.timeline(A, out.id, "u")
    assert tl.receipts == {"delivered": T0 + 1, "displayed": T0 + 4}
    assert tl.devices == [DeviceReceipt("delivered", "laptop", "Firefox on Linux", T0 + 1),
                          DeviceReceipt("delivered", "phone", None, T0 + 3),
                          DeviceReceipt("displayed", "phone", None, T0 + 4)]
    assert [d.device for d in (await db.timeline(A, out.id, "v")).devices] == ["phone"]
    assert (await db.timeline(A, out.id, "mallory")).devices == []


async def test_a_user_keeps_the_first_devices_and_counts_once(db):
    out = await publish(db, A, note(users=["u", "v"]))
    first = MAX_DEVICES - 2
    await db.record_receipts([(A, out.id, "delivered", "u", f"d{i:02}", None, T0 + i)
                              for i in range(first, 0, -1)])
    # room for two more: a batch of five new devices keeps its two earliest;
    # a device already kept takes no room
    await db.record_receipts([(A, out.id, "delivered", "u", "d05", None, T0 + 30)] + [
        (A, out.id, "delivered", "u", f"e{i}", None, T0 + 40 - i) for i in range(1, 6)])
    for i in range(3):  # full: later devices are not kept, displayed has room of its own
        await db.record_receipts([(A, out.id, "delivered", "u", f"late{i}", None, T0 + 50 + i),
                                  (A, out.id, "displayed", "u", f"late{i}", None, T0 + 50 + i)])
    # one batch holding more new devices than kept, for another user
    await db.record_receipts([(A, out.id, "displayed", "v", f"d{i:02}", None, T0 + i)
                              for i in range(MAX_DEVICES + 5, 0, -1)])
    tl = await db.timeline(A, out.id, "u")
    delivered = [d.device for d in tl.devices if d.kind == "delivered"]
    assert delivered == [f"d{i:02}" for i in range(1, first + 1)] + ["e5", "e4"]
    assert [d.device for d in tl.devices if d.kind == "displayed"] == ["late0", "late1", "late2"]
    assert tl.receipts == {"delivered": T0 + 1, "displayed": T0 + 50}
    assert await db.receipt_counts(A, out.id) == {"delivered": 1, "displayed": 2}
    assert [d.device for d in (await db.timeline(A, out.id, "v")).devices] == [
        f"d{i:02}" for i in range(1, MAX_DEVICES + 1)]


async def test_receipts_go_with_their_notification_at_retention(db):
    t = time.time()
    old = await publish(db, A, note(users=["u"], created_at=t - 1000))
    await db.record_receipts([(A, old.id, "delivered", "u", "phone", None, t - 999)])
    assert await table_rows(db, "device_receipts") == 1
    await db.prune(A, t + 1)
    assert await db.timeline(A, old.id, "u") is None
    assert await db.receipt_counts(A, old.id) == {}
    assert await table_rows(db, "device_receipts") == 0


async def test_a_database_from_before_device_receipts_keeps_its_receipts(make_store):
    db = make_store()
    await db.open()
    await db.create_app(A, "app A", "secret-a")
    out = await publish(db, A, note(users=["u"]))
    await db.record_receipts([(A, out.id, "delivered", "u", "phone", None, T0 + 1)])
    # the schema before device_receipts (SQLite v7, PostgreSQL v8), then migrated
    # (later scripts, such as PostgreSQL's v10, apply again without harm)
    dialect = "sqlite" if hasattr(db, "path") else "postgres"
    before = {"sqlite": 7, "postgres": 8}[dialect]
    await sql(db, "DROP TABLE device_receipts")  # its trigger (SQLite v9) goes with it
    await sql(db, f"UPDATE meta SET value='{before}' WHERE key='schema_version'")
    await db.close()
    later = list(range(before + 1, migrations.latest(dialect) + 1))
    if dialect == "sqlite":
        assert sqlite_migrate(db.path) == later
    else:
        assert await pg_migrate(db.url, server_settings=db._server_settings) == later
    db = make_store()
    await db.open()
    try:
        tl = await db.timeline(A, out.id, "u")
        assert (tl.receipts, tl.devices) == ({"delivered": T0 + 1}, [])
        await db.record_receipts([(A, out.id, "delivered", "u", "laptop", "Edge", T0 + 9)])
        tl = await db.timeline(A, out.id, "u")
        assert tl.receipts == {"delivered": T0 + 1}  # the first user's time stays
        assert tl.devices == [DeviceReceipt("delivered", "laptop", "Edge", T0 + 9)]
    finally:
        await db.close()


async def table_rows(db, table: str) -> int:
    return await sql(db, f"SELECT count(*) FROM {table}")


async def sql(db, statement: str):
    """Run ``statement`` beside the store (retention and migrations leave no
    method to ask); the first column of its first row."""
    if hasattr(db, "path"):
        conn = sqlite3.connect(db.path)
        try:
            with conn:
                row = conn.execute(statement).fetchone()
            return row[0] if row else None
        finally:
            conn.close()
    pg = await asyncpg.connect(db.url, server_settings=db._server_settings)
    try:
        return await pg.fetchval(statement)
    finally:
        await pg.close()


async def test_a_user_who_is_not_a_recipient_gets_an_empty_timeline(db):
    out = await publish(db, A, note(users=["u"], created_at=T0))
    tl = await db.timeline(A, out.id, "mallory")
    assert (tl.accepted, tl.recipient, tl.seen_at, tl.receipts) == (T0, False, None, {})


async def test_another_apps_unknown_or_retracted_notification_has_none(db):
    out = await publish(db, A, note(users=["u"]))
    assert await db.timeline(B, out.id, "u") is None
    assert await db.timeline(A, next_id(), "u") is None
    await db.delete_notification(A, out.id)
    assert await db.timeline(A, out.id, "u") is None


async def test_feed_items_time_the_users_own_state(db):
    await db.subscribe(A, "big", ["w"])
    big = await publish(db, A, note(topic="big"), threshold=0)
    everyone = await publish(db, A, note(all=True))
    await db.set_state(A, "w", [big.id, everyone.id], "read", T0 + 5)
    tl = await db.timeline(A, big.id, "w")
    assert (tl.recipient, tl.seen_at, tl.read_at) == (True, T0 + 5, T0 + 5)
    assert (await db.timeline(A, big.id, "x")).recipient is False   # does not follow it
    tl = await db.timeline(A, everyone.id, "x")
    assert (tl.recipient, tl.seen_at) == (True, None)


async def test_a_member_of_a_group_entry_has_the_entrys_times(db):
    first = await publish(db, A, note(users=["u"], group="post:1"))
    await publish(db, A, note(users=["u"], group="post:1"))  # merges: the entry moves on
    await db.set_state(A, "u", None, "seen", T0 + 7)
    assert (await db.timeline(A, first.id, "u")).seen_at == T0 + 7


async def test_every_attempt_is_logged_with_its_result_and_next_retry(db):
    out = await publish(db, A, note(users=["u", "v"]))
    await db.enqueue_jobs([email_job("j.email.u", out.id, "u"),
                           email_job("j.email.v", out.id, "v")])
    ju, jv = sorted(await db.claim_jobs("email", 10, T0, 30.0), key=lambda j: j.user)
    await db.retry_job(msgspec.structs.replace(ju, attempts=1, last_error="SMTP 451"),
                       T0 + 60, T0 + 1)
    await db.kill_job(msgspec.structs.replace(jv, attempts=1, last_error="SMTP 550"),
                      "gave up after 1 attempts: SMTP 550", T0 + 2)
    (ju,) = await db.claim_jobs("email", 10, T0 + 60, 30.0)
    await db.complete_job(ju.id, T0 + 61)
    assert (await db.timeline(A, out.id, "u")).attempts == [
        Attempt("j.email.u", "email", 1, T0 + 1, "failed", "SMTP 451", T0 + 60),
        Attempt("j.email.u", "email", 2, T0 + 61, "sent", None, None)]
    assert (await db.timeline(A, out.id, "v")).attempts == [
        Attempt("j.email.v", "email", 1, T0 + 2, "dead", "gave up after 1 attempts: SMTP 550",
                None)]
    # retention: pruned with the dead letters
    await db.prune_jobs(T0 + 10)
    assert [a.attempt for a in (await db.timeline(A, out.id, "u")).attempts] == [2]
    assert (await db.timeline(A, out.id, "v")).attempts == []


async def test_a_muted_job_leaves_the_queue_unsent_and_the_log_says_why(db):
    out = await publish(db, A, note(users=["u", "v"]))
    await db.enqueue_jobs([email_job("j.email.u", out.id, "u"),
                           email_job("j.email.v", out.id, "v")])
    ju, jv = sorted(await db.claim_jobs("email", 10, T0, 30.0), key=lambda j: j.user)
    assert await db.mute_job(ju, 'switched off for "social"', T0 + 5) is True
    assert (await db.timeline(A, out.id, "u")).attempts == [
        Attempt("j.email.u", "email", 1, T0 + 5, "muted", 'switched off for "social"', None)]
    assert [j.id for j in await db.list_jobs(A, nid=out.id)] == ["j.email.v"]
    assert await db.claim_jobs("email", 10, T0 + 100, 30.0) == [jv]  # its lease ran out
    # once: a job that left the queue meanwhile (seen, retracted) logs nothing
    assert await db.mute_job(ju, "again", T0 + 6) is False
    await db.cancel_jobs(A, out.id)
    assert await db.mute_job(jv, "gone", T0 + 7) is False
    assert (await db.timeline(A, out.id, "v")).attempts == []
    # a muted user had a job of the channel: counted as queued, neither sent nor failed
    assert await db.outbound_users(A, out.id) == {
        "email": {"queued": 1, "sent": 0, "failed": 0}}


async def test_a_redriven_dead_job_logs_its_new_attempts_too(db):
    out = await publish(db, A, note(users=["u"]))
    await db.enqueue_jobs([email_job("j.email.u", out.id, "u")])
    (job,) = await db.claim_jobs("email", 1, T0, 30.0)
    await db.kill_job(msgspec.structs.replace(job, attempts=1), "SMTP 550", T0 + 1)
    assert await db.redrive_job(A, "j.email.u", T0 + 100)
    (job,) = await db.claim_jobs("email", 1, T0 + 100, 30.0)
    await db.complete_job(job.id, T0 + 101)
    assert [(a.attempt, a.at, a.result) for a in (await db.timeline(A, out.id, "u")).attempts] \
        == [(1, T0 + 1, "dead"), (1, T0 + 101, "sent")]


async def test_outbound_users_count_each_user_once_per_channel(db):
    out = await publish(db, A, note(users=["u", "v", "w"]))
    push = [NewJob(job=msgspec.structs.replace(email_job(f"j.push.u{i}", out.id, "u").job,
                                               channel="push"), nid=out.id, not_before=T0)
            for i in range(2)]  # two devices of u
    await db.enqueue_jobs([email_job("j.email.u", out.id, "u"),
                           email_job("j.email.v", out.id, "v"),
                           email_job("j.email.w", out.id, "w"), *push])
    assert await db.outbound_users(A, out.id) == {
        "email": {"queued": 3, "sent": 0, "failed": 0},
        "push": {"queued": 1, "sent": 0, "failed": 0}}
    jobs = {j.id: j for j in await db.claim_jobs("email", 10, T0, 30.0)}
    jobs.update({j.id: j for j in await db.claim_jobs("push", 10, T0, 30.0)})
    await db.complete_job("j.email.u", T0 + 1)
    await db.kill_job(jobs["j.email.v"], "SMTP 550", T0 + 1)
    await db.complete_job("j.push.u0", T0 + 1)
    await db.complete_job("j.push.u1", T0 + 1)
    assert await db.outbound_users(A, out.id) == {
        "email": {"queued": 3, "sent": 1, "failed": 1},
        "push": {"queued": 1, "sent": 1, "failed": 0}}
    assert await db.outbound_users(B, out.id) == {}
