"""Digest windows in the store contract (tidings/store/outbound.py): held
items, one closing time per window, a close taken once across instances,
and what seeing, retracting and correcting a notification do to held items.

Runs once per backend (SQLite and PostgreSQL); times are explicit.
"""

from __future__ import annotations

import asyncio

import msgspec

from tidings.channels.base import Job
from tidings.core.models import ChannelPrefs, Preferences
from tidings.store.outbound import DigestItem, NewJob

A = "app_a"
T0 = 1_700_000_000.0
HOUR = 3600.0


def held(nid: str, *, user: str = "alice", channel: str = "email", rule: str = "every:3600",
         at: float = T0, closes: float = T0 + HOUR, to: str | None = None,
         expires_at: float | None = None) -> NewJob:
    job = Job(id=f"{nid}.{channel}.0", channel=channel, app=A, user=user,
              notification=msgspec.json.encode({"id": nid, "title": f"t-{nid}"}),
              destination={"to": to or f"{user}@example.test"}, created_at=at,
              expires_at=expires_at)
    return NewJob(job=job, nid=nid, not_before=closes, digest=rule)


class Builder:
    """Records the windows it is handed (and the preferences, in ``prefs``)
    and makes one job per window."""

    def __init__(self) -> None:
        self.windows: list[tuple[str, str, str, str, list[DigestItem]]] = []
        self.prefs: list[Preferences | None] = []

    def __call__(self, app, user, channel, rule, items, prefs):
        self.windows.append((app, user, channel, rule, items))
        self.prefs.append(prefs)
        first = items[0]
        job = Job(id=f"digest-{user}-{rule}-{first.nid}.{channel}.0", channel=channel, app=app,
                  user=user, notification=b'{"n":%d}' % len(items),
                  destination=first.destination, created_at=T0)
        return [NewJob(job=job, nid=job.id.split(".")[0], not_before=T0)]


async def test_held_items_are_not_jobs_and_close_together_at_the_first_items_time(store):
    await store.create_app(A, "app A", "s")
    await store.enqueue_jobs([held("N1", closes=T0 + HOUR)])
    # a later item joins the open window: it closes with the first one
    await store.enqueue_jobs([held("N2", at=T0 + 600, closes=T0 + 600 + HOUR)])
    assert await store.claim_jobs("email", 10, T0 + 2 * HOUR, 30) == []
    build = Builder()
    assert await store.flush_digests(T0 + HOUR - 1, 10, build) == []
    assert build.windows == []
    assert await store.flush_digests(T0 + HOUR, 10, build) == ["email"]
    ((app, user, channel, rule, items),) = build.windows
    assert (app, user, channel, rule) == (A, "alice", "email", "every:3600")
    assert [i.nid for i in items] == ["N1", "N2"]
    assert items[0].destination == {"to": "alice@example.test"}
    assert msgspec.json.decode(items[1].notification) == {"id": "N2", "title": "t-N2"}
    (job,) = await store.claim_jobs("email", 10, T0 + HOUR, 30)
    assert job.notification == b'{"n":2}'
    # the window is gone: the next item opens a new one
    assert await store.flush_digests(T0 + 10 * HOUR, 10, build) == []
    await store.enqueue_jobs([held("N3", at=T0 + 2 * HOUR, closes=T0 + 3 * HOUR)])
    assert await store.flush_digests(T0 + 3 * HOUR - 1, 10, build) == []
    assert await store.flush_digests(T0 + 3 * HOUR, 10, build) == ["email"]
    assert [i.nid for i in build.windows[-1][4]] == ["N3"]


async def test_windows_are_per_user_channel_and_rule(store):
    await store.create_app(A, "app A", "s")
    await store.enqueue_jobs([
        held("N1"), held("N1", user="bob"), held("N1", channel="webhook", to="h"),
        held("N2", rule="daily:09:00@UTC", closes=T0 + 5 * HOUR),
    ])
    build = Builder()
    assert await store.flush_digests(T0 + HOUR, 10, build) == ["email", "webhook"]
    assert sorted((w[1], w[2], w[3]) for w in build.windows) == [
        ("alice", "email", "every:3600"), ("alice", "webhook", "every:3600"),
        ("bob", "email", "every:3600")]
    assert await store.flush_digests(T0 + 5 * HOUR, 10, build) == ["email"]
    assert build.windows[-1][3] == "daily:09:00@UTC"


async def test_a_window_is_closed_once_across_instances(make_store, store):
    await store.create_app(A, "app A", "s")
    await store.enqueue_jobs([held(f"N{i}", user=f"u{i % 5}") for i in range(20)])
    other = make_store()
    await other.open()
    build = Builder()
    try:
        await asyncio.gather(*(s.flush_digests(T0 + HOUR, 100, build)
                               for s in (store, other, store, other)))
    finally:
        await other.close()
    assert sorted(w[1] for w in build.windows) == [f"u{i}" for i in range(5)]
    assert sorted(i.nid for w in build.windows for i in w[4]) == sorted(
        f"N{i}" for i in range(20))
    assert len(await store.claim_jobs("email", 100, T0 + HOUR, 30)) == 5


async def test_seen_retracted_and_expired_items_leave_the_window(store):
    await store.create_app(A, "app A", "s")
    await store.enqueue_jobs([held("N1"), held("N2"), held("N3"),
                              held("N4", expires_at=T0 + 60), held("N5", user="bob")])
    assert sorted(await store.cancel_fallbacks(A, "alice", ["N1", "N5"])) == [("N1", "email")]
    assert await store.cancel_jobs(A, "N2") == 1
    assert await store.update_jobs(A, "N3", b'{"id":"N3","title":"fixed"}') == 1
    build = Builder()
    await store.flush_digests(T0 + HOUR, 10, build)
    by_user = {w[1]: w[4] for w in build.windows}
    assert [i.nid for i in by_user["alice"]] == ["N3"]  # N4 expired before the close
    assert by_user["alice"][0].notification == b'{"id":"N3","title":"fixed"}'
    assert [i.nid for i in by_user["bob"]] == ["N5"]


async def test_seeing_everything_empties_the_users_windows(store):
    await store.create_app(A, "app A", "s")
    await store.enqueue_jobs([held("N1"), held("N2", channel="push", to="p")])
    assert sorted(await store.cancel_fallbacks(A, "alice", None)) == [
        ("N1", "email"), ("N2", "push")]
    build = Builder()
    assert await store.flush_digests(T0 + HOUR, 10, build) == []
    assert build.windows == []


async def test_a_window_with_only_expired_items_queues_nothing(store):
    await store.create_app(A, "app A", "s")
    await store.enqueue_jobs([held("N1", expires_at=T0 + 1)])
    build = Builder()
    assert await store.flush_digests(T0 + HOUR, 10, build) == []
    assert build.windows == []
    assert await store.flush_digests(T0 + HOUR, 10, build) == []  # and it is gone


async def test_a_closing_window_is_handed_the_preferences_as_they_are_then(store):
    await store.create_app(A, "app A", "s")
    await store.enqueue_jobs([held("N1"), held("N2", user="bob")])
    # changed while the window was open: the close reads them in its transaction
    now = Preferences(categories={"social": ChannelPrefs(email=False)})
    await store.put_preferences(A, "alice", now)
    build = Builder()
    await store.flush_digests(T0 + HOUR, 10, build)
    assert sorted(zip((w[1] for w in build.windows), build.prefs, strict=True)) == [
        ("alice", now), ("bob", None)]


async def test_a_window_the_builder_keeps_nothing_of_queues_nothing_and_is_gone(store):
    await store.create_app(A, "app A", "s")
    await store.enqueue_jobs([held("N1"), held("N2")])
    handed = []

    def nothing(app, user, channel, rule, items, prefs):
        handed.append([i.nid for i in items])
        return []

    assert await store.flush_digests(T0 + HOUR, 10, nothing) == []
    assert handed == [["N1", "N2"]]
    assert await store.claim_jobs("email", 10, T0 + HOUR, 30) == []
    assert await store.flush_digests(T0 + 2 * HOUR, 10, nothing) == []
    assert handed == [["N1", "N2"]]
