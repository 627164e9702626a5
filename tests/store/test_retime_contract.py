"""Re-timing in the store contract (Store.update_preferences with ``retime``,
tidings/core/retime.py): in the preferences' transaction, the user's waiting
jobs and held digest items take the times the retimer gives them, and
nothing else moves -- jobs attempted or leased, other users' jobs.

Runs once per backend (SQLite and PostgreSQL); times are explicit.
"""

from __future__ import annotations

import msgspec

from tests.store.test_digest_contract import Builder, held
from tidings.channels.base import Job
from tidings.core import retime
from tidings.core.models import DigestRule, Preferences, QuietHours
from tidings.store.outbound import NewJob

A = "app_a"
T0 = 1_700_000_000.0  # 2023-11-14 22:13:20 UTC
HOUR = 3600.0
NIGHT = QuietHours(start="22:00", end="03:00", tz="UTC")
ENDS = T0 + 4 * HOUR + 46 * 60 + 40  # 03:00 UTC
NOW = T0 + 600


def job(jid: str, *, user: str = "alice", channel: str = "webhook", fallback: bool = False,
        not_before: float = ENDS, priority: str = "normal") -> NewJob:
    body = msgspec.json.encode({"id": jid, "category": "social", "priority": priority})
    return NewJob(job=Job(id=f"{jid}.{channel}.0", channel=channel, app=A, user=user,
                          notification=body, destination={"url": "https://h.test/"},
                          created_at=T0), nid=jid, not_before=not_before, fallback=fallback)


def retiming(old: Preferences, new: Preferences) -> retime.Retimer | None:
    return retime.retimer(old, new, now=NOW, fallback_delay=HOUR, defaults={})


async def due(store, channel: str, at: float) -> list[str]:
    # leased for good: a job claimed once is not claimed again
    return sorted(j.id for j in await store.claim_jobs(channel, 100, at, 1e9))


async def test_removed_quiet_hours_make_held_jobs_due_and_leave_the_rest(store):
    await store.create_app(A, "app A", "s")
    for user in ("alice", "bob"):
        await store.put_preferences(A, user, Preferences(quiet_hours=NIGHT))
    await store.enqueue_jobs([
        job("N1"), job("N2", channel="email", fallback=True), job("N3", user="bob"),
        job("N4", not_before=T0),
        job("N5", channel="email", fallback=True, not_before=T0 + HOUR),
    ])
    # N4 was attempted already: it waits for a retry's backoff, not quiet hours
    (n4,) = await store.claim_jobs("webhook", 100, T0, 30)
    await store.retry_job(msgspec.structs.replace(n4, attempts=1), ENDS + HOUR, T0)

    stored = await store.update_preferences(
        A, "alice", lambda p: Preferences(categories=p.categories), retiming)
    assert stored == Preferences()
    assert await due(store, "webhook", NOW) == ["N1.webhook.0"]
    # the fallback's hour still counts; an e-mail that waited only for it keeps its time
    assert await due(store, "email", T0 + HOUR - 1) == []
    assert await due(store, "email", T0 + HOUR) == ["N2.email.0", "N5.email.0"]
    # bob's quiet hours did not change, nor did N4's retry
    assert await due(store, "webhook", ENDS - 1) == []
    assert await due(store, "webhook", ENDS) == ["N3.webhook.0"]
    assert await due(store, "webhook", ENDS + HOUR) == ["N4.webhook.0"]


async def test_shorter_quiet_hours_move_jobs_to_their_new_end_unless_urgent(store):
    await store.create_app(A, "app A", "s")
    await store.put_preferences(A, "alice", Preferences(quiet_hours=NIGHT))
    await store.enqueue_jobs([job("N1"), job("N2", channel="email", fallback=True,
                                             priority="urgent", not_before=T0 + HOUR)])
    shorter = QuietHours(start="22:00", end="01:00", tz="UTC")
    await store.update_preferences(A, "alice", lambda p: Preferences(quiet_hours=shorter),
                                   retiming)
    new_end = ENDS - 2 * HOUR
    assert await due(store, "webhook", new_end - 1) == []
    assert await due(store, "webhook", new_end) == ["N1.webhook.0"]
    # urgent was never held: it waits for its fallback's hour, as before
    assert await due(store, "email", T0 + HOUR - 1) == []
    assert await due(store, "email", T0 + HOUR) == ["N2.email.0"]


async def test_digest_windows_follow_a_shorter_interval_and_a_removed_rule(store):
    await store.create_app(A, "app A", "s")
    social = {"social": {"email": DigestRule(every=3600), "webhook": DigestRule(every=3600)}}
    await store.put_preferences(A, "alice", Preferences(digests=social))
    await store.put_preferences(A, "bob", Preferences(digests=social))

    def item(nid: str, user: str = "alice", channel: str = "email") -> NewJob:
        n = held(nid, user=user, channel=channel, at=T0, closes=T0 + HOUR,
                 to="h" if channel == "webhook" else None)
        n.job = msgspec.structs.replace(
            n.job, notification=msgspec.json.encode({"id": nid, "category": "social"}))
        return n

    await store.enqueue_jobs([item("N1"), item("N2"), item("N1", channel="webhook"),
                              item("N1", user="bob")])
    # e-mail every 10 minutes, webhook digests removed
    await store.update_preferences(A, "alice", lambda p: Preferences(
        digests={"social": {"email": DigestRule(every=600)}}), retiming)
    build = Builder()
    assert await store.flush_digests(NOW - 1, 10, build) == []
    assert await store.flush_digests(NOW, 10, build) == ["email", "webhook"]
    windows = sorted((w[1], w[2], w[3], [i.nid for i in w[4]]) for w in build.windows)
    assert windows == [("alice", "email", "every:600", ["N1", "N2"]),
                       ("alice", "webhook", retime.CLOSING, ["N1"])]
    # bob's window keeps its hour
    assert await store.flush_digests(T0 + HOUR - 1, 10, build) == []
    assert await store.flush_digests(T0 + HOUR, 10, build) == ["email"]
    assert build.windows[-1][1] == "bob"
