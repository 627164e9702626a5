"""tidings.service.outbound.Outbound.screen: a claimed job is asked again
whether its user still wants it, on both stores (the fixtures of
tests/store).  A plain job by its notification's category; a digest job by
every category in it, never by its own category ``digest``."""

from __future__ import annotations

import msgspec
import pytest

from tests.store.conftest import make_store  # noqa: F401 (the fixture, both stores)
from tidings.channels.base import Job
from tidings.config import Settings
from tidings.core import digest
from tidings.core.models import ChannelPrefs, Preferences
from tidings.service.outbound import Outbound
from tidings.store.outbound import NewJob

A = "app_a"
T0 = 1_700_000_000.0


@pytest.fixture
async def store(make_store):  # noqa: F811
    s = make_store()
    await s.open()
    try:
        yield s
    finally:
        await s.close()


def job(jid: str, user: str, notification: bytes) -> NewJob:
    return NewJob(job=Job(id=jid, channel="email", app=A, user=user, notification=notification,
                          destination={"to": f"{user}@example.test"}, created_at=T0),
                  nid=jid.split(".", 1)[0], not_before=T0)


def note(nid: str, category: str) -> bytes:
    return msgspec.json.encode({"id": nid, "category": category, "title": nid})


def digest_of(jid: str, *items: tuple[str, str]) -> bytes:
    return digest.body(jid, [note(nid, c) for nid, c in items], T0)


async def test_jobs_whose_channel_was_switched_off_are_muted_and_the_rest_kept(store):
    await store.create_app(A, "app A", "s")
    await store.put_preferences(A, "alice", Preferences(categories={
        "social": ChannelPrefs(email=False), "billing": ChannelPrefs(push=False),
        "digest": ChannelPrefs(email=False)}))  # a category that happens to be named so
    await store.put_preferences(A, "bob", Preferences(categories={"*": ChannelPrefs(email=False),
                                                                  "billing": ChannelPrefs()}))
    only_social = "digest-aaaa.email.0"
    mixed = "digest-bbbb.email.0"
    await store.enqueue_jobs([
        job("N1.email.0", "alice", note("N1", "social")),
        job("N2.email.0", "alice", note("N2", "billing")),
        job(only_social, "alice", digest_of(only_social, ("N3", "social"), ("N4", "social"))),
        job(mixed, "alice", digest_of(mixed, ("N5", "social"), ("N6", "billing"))),
        job("N7.email.0", "alice", b"not json"),  # the channel fails it, not the screen
        job("N8.email.0", "bob", note("N8", "anything")),  # "*": every other category
        job("N9.email.0", "bob", note("N9", "billing")),
        job("NA.email.0", "carol", note("NA", "social")),  # no preferences at all
    ])
    tracked: list[tuple] = []
    outbound = Outbound(Settings(), store, clock=lambda: T0 + 5,
                        track=lambda *key: tracked.append(key))
    claimed = await store.claim_jobs("email", 100, T0, 30.0)
    kept = await outbound.screen(claimed)
    assert sorted(j.id for j in kept) == [
        "N2.email.0", "N7.email.0", "N9.email.0", "NA.email.0", mixed]
    assert sorted(tracked) == [(A, nid, "email", "muted", 1)
                               for nid in ("N1", "N3", "N4", "N8")]
    queued = await store.list_jobs(A, status="queued")
    assert sorted(j.id for j in queued) == sorted(j.id for j in kept)
    assert await store.claim_jobs("email", 100, T0 + 60, 30.0) != []  # the kept ones, again
    # nothing to read, nothing muted: an empty claim
    assert await outbound.screen([]) == []
