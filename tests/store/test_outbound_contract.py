"""The outbound half of the store contract (tidings/store/outbound.py):
the job queue with leases and a dead-letter list, and the destinations.

Runs once per backend of ``conftest.BACKENDS`` (SQLite and PostgreSQL),
through the store's methods only.  Times are explicit: every claim passes
its own ``now``, so leases expire by arithmetic, not by waiting.
"""

from __future__ import annotations

import asyncio

import msgspec
import pytest

from tidings.channels.base import Job, JobQueue
from tidings.service.outbound import StoreQueue
from tidings.store.outbound import (
    EmailAddress,
    NewJob,
    PushSubscription,
    QueueStats,
    WebhookEndpoint,
)

A, B = "app_a", "app_b"
T0 = 1_700_000_000.0
LEASE = 30.0


@pytest.fixture
async def db(store):
    await store.create_app(A, "app A", "secret-a")
    await store.create_app(B, "app B", "secret-b")
    return store


def new_job(jid: str, *, channel: str = "email", app: str = A, user: str = "alice",
            nid: str = "N1", at: float = T0, fallback: bool = False,
            expires_at: float | None = None) -> NewJob:
    job = Job(id=jid, channel=channel, app=app, user=user,
              notification=msgspec.json.encode({"id": nid, "title": "hi"}),
              destination={"to": f"{user}@example.test"}, created_at=T0,
              expires_at=expires_at)
    return NewJob(job=job, nid=nid, not_before=at, fallback=fallback)


async def ids(store, channel: str = "email", n: int = 100, now: float = T0) -> list[str]:
    return [job.id for job in await store.claim_jobs(channel, n, now, LEASE)]


# -- the job queue ---------------------------------------------------------------------


async def test_queue_stats_count_queued_due_and_dead_per_channel_across_apps(db):
    assert await db.queue_stats(T0) == {}
    await db.enqueue_jobs([
        new_job("e1", at=T0 - 30), new_job("e2", at=T0 - 10, app=B), new_job("e3", at=T0 + 60),
        new_job("w1", channel="webhook", at=T0 + 5), new_job("w2", channel="webhook", at=T0 - 1),
    ])
    (leased,) = await db.claim_jobs("webhook", 1, T0, LEASE)  # being sent: still queued, due
    await db.kill_job(leased, "gave up", T0)  # ... and now a dead letter
    (e1,) = await db.claim_jobs("email", 1, T0, LEASE)
    assert e1.id == "e1"
    assert await db.queue_stats(T0) == {
        "email": QueueStats(queued=3, due=2, oldest_due=T0 - 30, dead=0),
        "webhook": QueueStats(queued=1, due=0, oldest_due=None, dead=1),
    }
    assert (await db.queue_stats(T0 + 5))["webhook"] == QueueStats(1, 1, T0 + 5, 1)


async def test_a_claimed_job_round_trips_every_field(db):
    await db.enqueue_jobs([new_job("j1", expires_at=T0 + 600)])
    (job,) = await db.claim_jobs("email", 10, T0, LEASE)
    assert job == Job(id="j1", channel="email", app=A, user="alice",
                      notification=b'{"id":"N1","title":"hi"}',
                      destination={"to": "alice@example.test"}, created_at=T0,
                      expires_at=T0 + 600, attempts=0, last_error=None)


async def test_claim_hands_each_job_out_once_oldest_due_first(db):
    await db.enqueue_jobs([new_job("j3", at=T0 - 1), new_job("j1", at=T0 - 3),
                           new_job("j2", at=T0 - 2)])
    assert await ids(db, n=2) == ["j1", "j2"]
    assert await ids(db) == ["j3"]
    assert await ids(db) == []


async def test_concurrent_claims_never_share_a_job(make_store, db):
    await db.enqueue_jobs([new_job(f"j{i:02}") for i in range(40)])
    # A second instance over the same storage: another node (PostgreSQL) or
    # another process's connection (SQLite).
    other = make_store()
    await other.open()
    try:
        batches = await asyncio.gather(
            *(s.claim_jobs("email", 7, T0, LEASE) for s in (db, other, db, other, db, other, db)))
    finally:
        await other.close()
    claimed = [job.id for batch in batches for job in batch]
    assert len(claimed) == len(set(claimed)) == 40


async def test_a_job_is_not_claimed_before_its_time_nor_by_another_channel(db):
    await db.enqueue_jobs([new_job("later", at=T0 + 60), new_job("hook", channel="webhook")])
    assert await ids(db) == []
    assert await ids(db, now=T0 + 59.9) == []
    assert await ids(db, now=T0 + 60) == ["later"]
    assert await ids(db, "webhook") == ["hook"]


async def test_a_lease_holds_until_it_runs_out(db):
    await db.enqueue_jobs([new_job("j1")])
    assert await ids(db) == ["j1"]
    assert await ids(db, now=T0 + LEASE - 0.5) == []
    # The worker that held it died: the job comes back, attempts unchanged.
    (again,) = await db.claim_jobs("email", 10, T0 + LEASE, LEASE)
    assert (again.id, again.attempts) == ("j1", 0)


async def test_retry_stores_the_attempt_and_ends_the_lease(db):
    await db.enqueue_jobs([new_job("j1")])
    (job,) = await db.claim_jobs("email", 1, T0, LEASE)
    failed = msgspec.structs.replace(job, attempts=1, last_error="HTTP 503")
    await db.retry_job(failed, T0 + 5, T0 + 1)
    assert await ids(db, now=T0 + 4) == []
    (again,) = await db.claim_jobs("email", 1, T0 + 5, LEASE)  # before the old lease ended
    assert (again.attempts, again.last_error) == (1, "HTTP 503")


async def test_release_hands_a_job_back_unattempted(db):
    await db.enqueue_jobs([new_job("j1")])
    (job,) = await db.claim_jobs("email", 1, T0, LEASE)
    await db.release_job(job, T0 + 5, T0 + 1)
    assert await ids(db, now=T0 + 4) == []
    (again,) = await db.claim_jobs("email", 1, T0 + 5, LEASE)  # before the old lease ended
    assert (again.attempts, again.last_error) == (0, None)
    (rec,) = await db.list_jobs(A)
    assert (rec.attempts, rec.not_before) == (0, T0 + 5)


async def test_complete_removes_the_job(db):
    await db.enqueue_jobs([new_job("j1")])
    (job,) = await db.claim_jobs("email", 1, T0, LEASE)
    await db.complete_job(job.id)
    assert await ids(db, now=T0 + LEASE + 1) == []
    assert await db.list_jobs(A) == []


async def test_enqueueing_an_id_again_changes_nothing(db):
    await db.enqueue_jobs([new_job("j1", at=T0)])
    await db.enqueue_jobs([new_job("j1", at=T0 + 999, user="bob")])
    (rec,) = await db.list_jobs(A)
    assert (rec.user, rec.not_before) == ("alice", T0)


async def test_dead_jobs_are_listed_and_can_be_redriven(db):
    await db.enqueue_jobs([new_job("j1"), new_job("j2")])
    j1, _ = await db.claim_jobs("email", 2, T0, LEASE)
    await db.kill_job(msgspec.structs.replace(j1, attempts=16), "gave up after 16 attempts", T0 + 1)
    assert await ids(db, now=T0 + LEASE + 1) == ["j2"]  # j1 is no longer claimable
    (dead,) = await db.list_jobs(A, status="dead")
    assert (dead.id, dead.status, dead.attempts, dead.last_error, dead.updated_at) == (
        "j1", "dead", 16, "gave up after 16 attempts", T0 + 1)
    assert dead.destination == {"to": "alice@example.test"} and dead.nid == "N1"
    assert await db.redrive_job(B, "j1", T0 + 2) is False  # another app's job
    assert await db.redrive_job(A, "j2", T0 + 2) is False  # not dead
    assert await db.redrive_job(A, "j1", T0 + 2) is True
    assert await db.redrive_job(A, "j1", T0 + 2) is False  # already queued again
    (back,) = await db.claim_jobs("email", 5, T0 + 2, LEASE)
    assert (back.id, back.attempts) == ("j1", 0)  # a fresh attempt budget


async def test_settling_a_cancelled_job_does_not_bring_it_back(db):
    await db.enqueue_jobs([new_job("j1", fallback=True), new_job("j2", fallback=True)])
    j1, j2 = await db.claim_jobs("email", 2, T0, LEASE)
    assert len(await db.cancel_fallbacks(A, "alice", None)) == 2  # seen while being sent
    await db.retry_job(msgspec.structs.replace(j1, attempts=1), T0 + 1, T0)
    await db.kill_job(j2, "refused", T0)
    assert await ids(db, now=T0 + LEASE + 1) == []
    assert await db.list_jobs(A) == []


async def test_cancel_fallbacks_takes_only_that_users_fallbacks_for_those_notifications(db):
    await db.enqueue_jobs([
        new_job("a1", nid="N1", fallback=True),
        new_job("a2", nid="N2", fallback=True),
        new_job("a3", nid="N1", channel="webhook"),  # not a fallback: stays
        new_job("b1", nid="N1", user="bob", fallback=True),
        new_job("x1", nid="N1", app=B, fallback=True),
    ])
    assert await db.cancel_fallbacks(A, "alice", ["N1", "N9"]) == [("N1", "email")]
    assert sorted(r.id for r in await db.list_jobs(A)) == ["a2", "a3", "b1"]
    assert await db.cancel_fallbacks(A, "alice", None) == [("N2", "email")]  # "all seen"
    assert sorted(r.id for r in await db.list_jobs(A)) == ["a3", "b1"]
    assert [r.id for r in await db.list_jobs(B)] == ["x1"]
    assert await db.cancel_fallbacks(A, "carol", None) == []


async def test_cancel_jobs_of_a_retracted_notification(db):
    await db.enqueue_jobs([new_job("a1", nid="N1"), new_job("a2", nid="N1", user="bob"),
                           new_job("a3", nid="N2"), new_job("x1", nid="N1", app=B)])
    (a1, *_) = await db.claim_jobs("email", 1, T0, LEASE)
    await db.kill_job(a1, "refused", T0)  # the dead letter stays for the record
    assert await db.cancel_jobs(A, "N1") == 1
    assert sorted((r.id, r.status) for r in await db.list_jobs(A)) == [
        ("a1", "dead"), ("a3", "queued")]
    assert len(await db.list_jobs(B)) == 1


async def test_a_newer_job_of_a_group_replaces_the_pending_one(db):
    def grouped(jid, nid, *, user="alice", channel="email", fallback=True, at=T0):
        n = new_job(jid, nid=nid, user=user, channel=channel, fallback=fallback, at=at)
        n.collapse = "post:7:likes"
        return n

    assert await db.enqueue_jobs([grouped("a1", "N1"), grouped("b1", "N1", user="bob"),
                                  grouped("w1", "N1", channel="webhook", fallback=False)]) == []
    (leased,) = await db.claim_jobs("email", 1, T0, LEASE)  # a1, being sent
    assert leased.id == "a1"
    assert await db.enqueue_jobs([grouped("a2", "N2", at=T0 + 1)]) == []  # a1 is leased
    assert await db.enqueue_jobs([grouped("a3", "N3", at=T0 + 2),
                                  grouped("w3", "N3", channel="webhook", fallback=False)]) == [
        ("N2", "email")]
    assert sorted(r.id for r in await db.list_jobs(A)) == ["a1", "a3", "b1", "w1", "w3"]
    # another key, another app: untouched
    other = new_job("x9", nid="N9", app=B, fallback=True)
    other.collapse = "post:7:likes"
    assert await db.enqueue_jobs([other]) == []
    assert [r.id for r in await db.list_jobs(B)] == ["x9"]


async def test_update_jobs_corrects_what_queued_jobs_will_send(db):
    await db.enqueue_jobs([new_job("a1", nid="N1"), new_job("a2", nid="N1"),
                           new_job("a3", nid="N2"), new_job("x1", nid="N1", app=B)])
    (a1, *_) = await db.claim_jobs("email", 1, T0, LEASE)
    await db.kill_job(a1, "refused", T0)
    assert await db.update_jobs(A, "N1", b'{"id":"N1","title":"fixed"}') == 1
    jobs = {j.id: j for j in await db.claim_jobs("email", 10, T0 + 1, LEASE)}
    assert jobs["a2"].notification == b'{"id":"N1","title":"fixed"}'
    assert jobs["a3"].notification == b'{"id":"N2","title":"hi"}'
    assert jobs["x1"].notification == b'{"id":"N1","title":"hi"}'  # another app's


async def test_list_jobs_filters_and_pages_newest_first(db):
    await db.enqueue_jobs([new_job(f"N1.email.{i}", nid="N1") for i in range(3)]
                          + [new_job("N2.email.0", nid="N2")])
    assert [r.id for r in await db.list_jobs(A, nid="N1", limit=2)] == [
        "N1.email.2", "N1.email.1"]
    assert [r.id for r in await db.list_jobs(A, nid="N1", before="N1.email.1")] == [
        "N1.email.0"]
    assert [r.id for r in await db.list_jobs(A, status="dead")] == []
    rec = (await db.list_jobs(A, nid="N2"))[0]
    assert (rec.status, rec.not_before, rec.fallback, rec.channel) == (
        "queued", T0, False, "email")


async def test_prune_jobs_drops_old_dead_letters_only(db):
    await db.enqueue_jobs([new_job("old"), new_job("new"), new_job("queued")])
    claimed = {job.id: job for job in await db.claim_jobs("email", 3, T0, LEASE)}
    old, new = claimed["old"], claimed["new"]
    await db.kill_job(old, "x", T0 + 10)
    await db.kill_job(new, "x", T0 + 100)
    assert await db.prune_jobs(T0 + 50) == 1
    assert sorted(r.id for r in await db.list_jobs(A)) == ["new", "queued"]


async def test_the_store_queue_implements_the_worker_contract(db):
    queue = StoreQueue(db, lease=LEASE)
    assert isinstance(queue, JobQueue)
    await db.enqueue_jobs([new_job("j1"), new_job("j2")])
    j1, j2 = await queue.claim("email", 5, T0)
    await queue.complete(j1)
    await queue.retry(msgspec.structs.replace(j2, attempts=1, last_error="timeout"), T0 + 1)
    (again,) = await queue.claim("email", 5, T0 + 1)
    await queue.dead(again, "refused")
    (dead,) = await db.list_jobs(A, status="dead")
    assert (dead.id, dead.attempts, dead.last_error) == ("j2", 1, "refused")


# -- destinations ------------------------------------------------------------------------


async def test_webhook_endpoints_with_a_limit_rotation_and_isolation(db):
    for i in range(2):
        assert await db.add_webhook(A, WebhookEndpoint(f"w{i}", f"https://h{i}.test/", f"s{i}",
                                                       T0 + i), limit=2)
    assert not await db.add_webhook(A, WebhookEndpoint("w9", "https://x.test/", "s", T0), 2)
    assert [(w.id, w.url, w.secret) for w in await db.list_webhooks(A)] == [
        ("w0", "https://h0.test/", "s0"), ("w1", "https://h1.test/", "s1")]
    assert await db.list_webhooks(B) == []
    rotated = await db.rotate_webhook(A, "w0", "s0-new", T0 + 3600)
    assert (rotated.secret, rotated.previous_secret, rotated.previous_until) == (
        "s0-new", "s0", T0 + 3600)
    assert await db.rotate_webhook(B, "w0", "stolen", T0) is None
    assert await db.delete_webhook(B, "w0") is False
    assert await db.delete_webhook(A, "w0") is True
    assert [w.id for w in await db.list_webhooks(A)] == ["w1"]


async def test_push_subscriptions_keep_the_newest_and_replace_by_id(db):
    def sub(i: int, created: float) -> PushSubscription:
        return PushSubscription(f"p{i}", f"https://push.test/{i}", "key", "auth", created)

    for i in range(4):
        await db.add_push_subscription(A, "alice", sub(i, T0 + i), keep=3)
    assert [s.id for s in await db.list_push_subscriptions(A, "alice")] == ["p3", "p2", "p1"]
    await db.add_push_subscription(A, "alice", sub(1, T0 + 9), keep=3)  # the same browser again
    assert [s.id for s in await db.list_push_subscriptions(A, "alice")] == ["p1", "p3", "p2"]
    assert await db.list_push_subscriptions(B, "alice") == []
    assert await db.delete_push_subscription(A, "alice", "p3") is True
    assert await db.delete_push_subscription(A, "bob", "p1") is False
    assert [s.id for s in await db.list_push_subscriptions(A, "alice")] == ["p1", "p2"]


async def test_email_addresses_and_bulk_destinations(db):
    assert await db.set_email(A, "alice", EmailAddress("alice@example.test", "Alice")) is False
    assert await db.set_email(A, "alice", EmailAddress("a2@example.test")) is True
    assert await db.get_email(A, "alice") == EmailAddress("a2@example.test", "")
    assert await db.get_email(B, "alice") is None
    await db.set_email(A, "bob", EmailAddress("bob@example.test"))
    await db.add_push_subscription(
        A, "carol", PushSubscription("p1", "https://push.test/1", "k", "a", T0), keep=5)
    found = await db.destinations(A, ["alice", "carol", "dave"])
    assert set(found) == {"alice", "carol"}
    assert found["alice"].email.address == "a2@example.test" and found["alice"].push == []
    assert found["carol"].email is None
    assert found["carol"].push[0].destination() == {
        "endpoint": "https://push.test/1", "keys": {"p256dh": "k", "auth": "a"},
        "subscription": "p1"}
    assert await db.set_email(A, "alice", None) is True
    assert await db.set_email(A, "alice", None) is False
    assert "alice" not in await db.destinations(A, ["alice"])


async def test_caps_document_per_app(db):
    assert await db.get_caps(A) is None
    await db.put_caps(A, b'{"categories":{}}')
    await db.put_caps(A, b'{"categories":{"social":{"per":60,"max":3}}}')
    assert await db.get_caps(A) == b'{"categories":{"social":{"per":60,"max":3}}}'
    assert await db.get_caps(B) is None
