"""The store contract (tidings/store/base.py), checked through its methods only.

Runs once per backend of ``conftest.BACKENDS``: no SQL here, nothing that
depends on how a backend lays out its data.  Times are explicit (``now`` is
passed in) and notification ids are minted one millisecond apart, so "newest
first" is the publish order and every run is the same.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import time

import msgspec
import pytest

from tidings.channels.base import Job
from tidings.core.cursor import Cursor, decide_recovery
from tidings.core.ids import new_id
from tidings.core.models import ChannelPrefs, Preferences, QuietHours
from tidings.core.seal import PLAIN, Seal, new_key, parse_key
from tidings.store.base import (
    LAST_ADMIN_KEY,
    NO_SUCH_KEY,
    REVOKED,
    Counts,
    KeyInfo,
    NewNotification,
    PublishOutcome,
    ScheduledEdit,
    StoredNotification,
)
from tidings.store.outbound import NewJob, WebhookEndpoint
from tidings.store.sealed import KEY_CHECK, PLACES, Serving, check_of

A, B = "app_a", "app_b"
T0 = 1_700_000_000.0
THRESHOLD = 100
WINDOW = 3600.0

_ms = itertools.count(int(time.time() * 1000))


def next_id() -> str:
    """A fresh notification id, 1 ms after the previous one (strictly ordered)."""
    return new_id(next(_ms))


def note(
    *, users: list[str] | None = None, topic: str | None = None, all: bool = False,
    category: str = "default", key: str | None = None, created_at: float | None = None,
    expires_at: float | None = None, title: str = "hello", group: str | None = None,
    actor: str | None = None, deliver_at: float | None = None,
) -> NewNotification:
    nid = next_id()
    doc = {"id": nid, "title": title}
    if group is not None:
        doc.update(created_at=f"t{nid}", group_key=group)
    if actor is not None:
        doc["actor"] = actor
    return NewNotification(
        id=nid, category=category, body=msgspec.json.encode(doc),
        created_at=time.time() if created_at is None else created_at, expires_at=expires_at,
        users=users, topic=topic, all=all, idempotency_key=key, group_key=group,
        deliver_at=deliver_at,
    )


async def publish(
    store, app: str, item: NewNotification, *, threshold: int = THRESHOLD, window: float = WINDOW,
) -> PublishOutcome:
    return await store.publish(app, item, fanout_threshold=threshold, window=window)


async def inbox_ids(store, app, user, *, state=None, before=None, limit=1000, now=None):
    entries = await store.inbox(
        app, user, limit=limit, before=before, state=state,
        now=time.time() if now is None else now,
    )
    return [e.id for e in entries]


async def replay_all(store, app, user, *, after_seq=0, after_feed=0, limit=10_000, now=None):
    return await store.replay(
        app, user, after_seq, after_feed, limit, time.time() if now is None else now
    )


@pytest.fixture
async def db(store):
    """The store with two apps, A and B."""
    await store.create_app(A, "app A", "secret-a")
    await store.create_app(B, "app B", "secret-b")
    return store


async def reopen(make_store, store):
    """Close ``store`` and open a new instance over the same storage."""
    await store.close()
    again = make_store()
    await again.open()
    return again


# -- lifecycle, apps and keys ------------------------------------------------------


async def test_ping_answers_while_open(store):
    assert await store.ping() is True


async def test_create_get_and_list_apps(store):
    rec = await store.create_app("app_1", "first", "s1")
    assert (rec.id, rec.name, rec.signing_secret) == ("app_1", "first", "s1")
    await store.create_app("app_2", "second", "s2")
    got = await store.get_app("app_1")
    assert (got.id, got.name, got.signing_secret) == ("app_1", "first", "s1")
    assert await store.get_app("nope") is None
    assert sorted(a.id for a in await store.list_apps()) == ["app_1", "app_2"]


async def test_create_app_with_an_existing_id_fails(store):
    await store.create_app("app_1", "first", "s1")
    # no error type is part of the contract; the backends' messages say "unique"/"duplicate"
    with pytest.raises(Exception, match=r"(?i)unique|duplicate"):
        await store.create_app("app_1", "again", "s2")
    assert (await store.get_app("app_1")).name == "first"


async def test_find_api_key(db):
    await db.add_api_key(A, "pfx_a", "hash-a", frozenset({"publish", "admin"}))
    rec = await db.find_api_key("pfx_a", "hash-a")
    assert (rec.app_id, rec.prefix, rec.scopes) == (A, "pfx_a", frozenset({"publish", "admin"}))
    assert await db.find_api_key("pfx_a", "hash-b") is None  # wrong hash
    assert await db.find_api_key("pfx_a", "") is None
    assert await db.find_api_key("pfx_zz", "hash-a") is None  # unknown prefix


async def test_api_keys_are_listed_per_app_oldest_first_with_their_names(db):
    await db.add_api_key(A, "pfx_a2", "h2", frozenset({"publish"}), "ci", created_at=T0 + 2)
    await db.add_api_key(A, "pfx_a1", "h1", frozenset({"read", "admin"}), created_at=T0 + 1)
    await db.add_api_key(B, "pfx_b", "hb", frozenset({"admin"}), "theirs", created_at=T0)
    assert await db.list_api_keys(A) == [
        KeyInfo("pfx_a1", frozenset({"read", "admin"}), None, T0 + 1),
        KeyInfo("pfx_a2", frozenset({"publish"}), "ci", T0 + 2)]
    assert [k.prefix for k in await db.list_api_keys(B)] == ["pfx_b"]
    assert await db.list_api_keys("app_none") == []
    # a name is stored as given: any character but the control ones (checked before)
    await db.add_api_key(B, "pfx_b2", "hb2", frozenset({"read"}), "clé ünïcode ✓ 'x'")
    assert (await db.list_api_keys(B))[-1].name == "clé ünïcode ✓ 'x'"
    assert (await db.find_api_key("pfx_a2", "h2")).scopes == frozenset({"publish"})


async def test_a_revoked_key_is_gone_and_only_its_own_app_revokes_it(db):
    await db.add_api_key(A, "pfx_a", "ha", frozenset({"admin"}))
    await db.add_api_key(A, "pfx_p", "hp", frozenset({"publish"}))
    await db.add_api_key(B, "pfx_b", "hb", frozenset({"publish"}))
    await db.add_api_key(B, "pfx_b0", "hb0", frozenset({"admin"}))
    assert await db.revoke_api_key(A, "pfx_b") == NO_SUCH_KEY  # B's key, asked by A
    assert (await db.find_api_key("pfx_b", "hb")).app_id == B
    assert await db.revoke_api_key(A, "pfx_none") == NO_SUCH_KEY
    assert await db.revoke_api_key(A, "pfx_p") == REVOKED
    assert await db.find_api_key("pfx_p", "hp") is None
    assert [k.prefix for k in await db.list_api_keys(A)] == ["pfx_a"]
    assert await db.revoke_api_key(A, "pfx_p") == NO_SUCH_KEY  # once
    assert await db.revoke_api_key("app_none", "pfx_a") == NO_SUCH_KEY
    assert len(await db.list_api_keys(B)) == 2


async def test_the_last_admin_key_of_an_app_is_never_revoked(db):
    await db.add_api_key(A, "pfx_a1", "h1", frozenset({"admin", "publish", "read"}))
    await db.add_api_key(A, "pfx_p", "hp", frozenset({"publish", "read"}))
    await db.add_api_key(B, "pfx_b", "hb", frozenset({"admin"}))  # another app's admin
    assert await db.revoke_api_key(A, "pfx_a1") == LAST_ADMIN_KEY
    assert await db.find_api_key("pfx_a1", "h1") is not None
    await db.add_api_key(A, "pfx_a2", "h2", frozenset({"admin"}))
    assert await db.revoke_api_key(A, "pfx_a1") == REVOKED
    assert await db.revoke_api_key(A, "pfx_a2") == LAST_ADMIN_KEY
    assert await db.revoke_api_key(A, "pfx_p") == REVOKED  # not an admin key: may go
    assert [k.prefix for k in await db.list_api_keys(A)] == ["pfx_a2"]


async def test_an_ended_dashboard_session_stays_ended_on_every_node_until_it_expires(
        make_store, db):
    assert not await db.dashboard_session_ended("s1")
    await db.end_dashboard_session("s1", T0 + 100, T0)
    await db.end_dashboard_session("s1", T0 + 100, T0 + 1)  # again: nothing changes
    assert await db.dashboard_session_ended("s1")
    assert not await db.dashboard_session_ended("s2")
    other = make_store()  # another node over the same store
    await other.open()
    try:
        assert await other.dashboard_session_ended("s1")
        # a logout after s1's expiry forgets it (its cookie is refused as expired by then)
        await other.end_dashboard_session("s2", T0 + 500, T0 + 100)
        assert not await db.dashboard_session_ended("s1")
        assert await db.dashboard_session_ended("s2")
        await db.end_dashboard_session("s3", T0 + 700, T0 + 499.5)  # s2 not expired yet
        assert await other.dashboard_session_ended("s2")
    finally:
        await other.close()


async def test_revocations_at_once_on_two_nodes_leave_one_admin_key(make_store, db):
    """Each node sees the other's admin key; both must not go."""
    other = make_store()
    await other.open()
    try:
        for round_ in range(5):
            app = f"app_r{round_}"
            await db.create_app(app, "round", "s")
            keys = [f"pfx_{round_}_{i}" for i in range(4)]
            for k in keys:
                await db.add_api_key(app, k, "h", frozenset({"admin"}))
            outcomes = await asyncio.gather(*(
                s.revoke_api_key(app, k) for s, k in zip((db, other, db, other), keys,
                                                          strict=True)))
            assert sorted(outcomes) == [LAST_ADMIN_KEY] + [REVOKED] * 3, outcomes
            left = await other.list_api_keys(app)
            assert len(left) == 1 and "admin" in left[0].scopes
    finally:
        await other.close()


async def test_the_key_limit_holds_for_adds_at_once_on_two_nodes(make_store, db):
    other = make_store()
    await other.open()
    try:
        added = await asyncio.gather(*(
            s.add_api_key(A, f"pfx_{i}", "h", frozenset({"read"}), limit=3)
            for i, s in enumerate((db, other) * 4)))
        assert sorted(added) == [False] * 5 + [True] * 3
        assert len(await db.list_api_keys(A)) == 3
        # another app has a limit of its own; no limit: no count
        assert await db.add_api_key(B, "pfx_b", "h", frozenset({"read"}), limit=3) is True
        assert await db.add_api_key(A, "pfx_over", "h", frozenset({"read"})) is True
    finally:
        await other.close()


async def test_a_rotation_keeps_the_replaced_secret_until_its_end(make_store, db):
    """The new secret is current at once, on every store instance; the one it
    replaced is kept with its end, and a second rotation forgets the first
    secret.  Another app's secret is untouched; no app: None."""
    fresh = await db.get_app(A)
    assert (fresh.previous_secret, fresh.previous_until) == (None, None)
    assert fresh.previous(T0) is None
    rec = await db.rotate_signing_secret(A, "secret-a2", T0 + 60)
    assert (rec.id, rec.name, rec.signing_secret) == (A, "app A", "secret-a2")
    assert (rec.previous_secret, rec.previous_until) == ("secret-a", T0 + 60)
    assert rec.previous(T0) == "secret-a" and rec.previous(T0 + 60) is None
    other = make_store()
    await other.open()
    try:
        seen = await other.get_app(A)
        assert (seen.signing_secret, seen.previous_secret, seen.previous_until) == (
            "secret-a2", "secret-a", T0 + 60)
        again = await other.rotate_signing_secret(A, "secret-a3", T0)
        assert (again.signing_secret, again.previous_secret, again.previous_until) == (
            "secret-a3", "secret-a2", T0)
        assert [(a.id, a.signing_secret, a.previous_secret) for a in await db.list_apps()] == [
            (A, "secret-a3", "secret-a2"), (B, "secret-b", None)]
        assert await db.rotate_signing_secret("app_none", "s", T0) is None
        assert await db.get_app("app_none") is None
    finally:
        await other.close()


async def test_a_sealed_store_seals_a_rotated_secret_again_for_its_new_column(make_store, db):
    """The current secret a rotation keeps as the previous one is sealed for
    that column (tidings/core/seal.py), so it opens there, on another
    instance too, and every value is in the current format."""
    key = parse_key(new_key())
    await db.add_webhook(A, WebhookEndpoint("w0", "https://h.test/x", "wh-0", T0), 10)
    assert await db.reseal(PLAIN, Seal(key)) == 3  # two apps, one endpoint, no pepper yet
    await db.unlock(key)
    await db.rotate_signing_secret(A, "secret-a2", T0 + 60)
    await db.rotate_webhook(A, "w0", "wh-1", T0 + 60)
    other = make_store()
    await other.open()
    try:
        await other.unlock(key)
        seen = await other.get_app(A)
        assert (seen.signing_secret, seen.previous_secret) == ("secret-a2", "secret-a")
        (hook,) = await other.list_webhooks(A)
        assert (hook.secret, hook.previous_secret) == ("wh-1", "wh-0")
        again = await other.rotate_signing_secret(A, "secret-a3", T0)
        assert (again.signing_secret, again.previous_secret) == ("secret-a3", "secret-a2")
        stored = [v for place in PLACES[1:] for row in await other.secret_rows(place)
                  for v in row[len(place.keys):] if v is not None]
        assert len(stored) == 5 and all(v.startswith("sealed2:") for v in stored)
    finally:
        await other.close()


async def test_a_reseal_waits_for_no_node_to_hold_a_lease(make_store, store):
    """A serving node's lease lasts its ttl unless renewed or released; while
    one has not expired a reseal is refused (``Serving``, naming the node)
    unless forced, and changes nothing."""
    await store.lease("node-a", "10.0.0.1:8080", 41, ttl=30)
    await store.lease("node-b", "10.0.0.2:8080", 42, ttl=30)
    await store.lease("node-c", "10.0.0.3:8080", 43, ttl=-1)  # a killed node's, expired
    await store.lease("node-a", "10.0.0.9:8080", 44, ttl=30)  # a renewal replaces the row
    live = await store.leases()
    assert [(x.node, x.address, x.pid) for x in live] == [
        ("node-a", "10.0.0.9:8080", 44), ("node-b", "10.0.0.2:8080", 42)]
    assert all(x.expires_at > time.time() + 20 for x in live)
    key = Seal(parse_key(new_key()))
    with pytest.raises(Serving, match=r"2 node\(s\) serving this store: node-a \(pid 44, "
                                      r"10.0.0.9:8080\), node-b .* or give --force"):
        await store.reseal(PLAIN, key)
    assert check_of(await store.secret_rows(KEY_CHECK)) is None
    await store.release("node-a")
    other = make_store()
    await other.open()
    try:
        assert [x.node for x in await other.leases()] == ["node-b"]
        await other.lease("node-b", "10.0.0.2:8080", 42, ttl=-1)
        assert await other.leases() == []
        await store.lease("node-d", "10.0.0.4:8080", 45, ttl=30)
        await store.reseal(PLAIN, key, force=True)
        assert check_of(await other.secret_rows(KEY_CHECK)) == key.check
        await store.release("node-d")
        await other.reseal(key, PLAIN)
        assert check_of(await store.secret_rows(KEY_CHECK)) is None
    finally:
        await other.close()


async def test_rotations_at_once_on_two_nodes_apply_one_after_the_other(make_store, db):
    """Whichever wins, the current secret is one a caller was answered and
    the previous one the other's (or the original): never a lost secret."""
    other = make_store()
    await other.open()
    try:
        answers = await asyncio.gather(db.rotate_signing_secret(A, "s-one", T0 + 1),
                                       other.rotate_signing_secret(A, "s-two", T0 + 2))
        final = await db.get_app(A)
        first, second = sorted(answers, key=lambda r: r.previous_secret != "secret-a")
        assert first.previous_secret == "secret-a"
        assert second.previous_secret == first.signing_secret
        assert (final.signing_secret, final.previous_secret) == (
            second.signing_secret, first.signing_secret)
    finally:
        await other.close()


async def test_a_users_token_cutoff_is_kept_per_app_and_only_moves_later(make_store, db):
    """One cutoff per (app, user), seen by every store instance; an earlier
    cutoff leaves a later one in place; token_revocations lists every app's
    cutoffs after ``since``, and a revocation forgets the app's cutoffs older
    than ``forget_before``, never another app's."""
    assert await db.token_revocations(0) == []
    assert await db.revoke_tokens(A, "ann", T0 + 10, forget_before=T0) == T0 + 10
    assert await db.revoke_tokens(A, "ann", T0 + 5, forget_before=T0) == T0 + 10  # earlier
    assert await db.revoke_tokens(A, "bo/b ü", T0 + 1, forget_before=T0) == T0 + 1
    assert await db.revoke_tokens(B, "ann", T0 + 2, forget_before=T0) == T0 + 2
    other = make_store()
    await other.open()
    try:
        assert sorted(await other.token_revocations(0)) == [
            (A, "ann", T0 + 10), (A, "bo/b ü", T0 + 1), (B, "ann", T0 + 2)]
        assert sorted(await other.token_revocations(T0 + 2)) == [(A, "ann", T0 + 10)]
        assert await other.revoke_tokens(A, "ann", T0 + 20, forget_before=T0) == T0 + 20
        assert (A, "ann", T0 + 20) in await db.token_revocations(T0)
        # app A's cutoffs before T0 + 5 are forgotten with its next revocation; B's stay
        assert await db.revoke_tokens(A, "cy", T0 + 30, forget_before=T0 + 5) == T0 + 30
        assert sorted(await db.token_revocations(0)) == [
            (A, "ann", T0 + 20), (A, "cy", T0 + 30), (B, "ann", T0 + 2)]
    finally:
        await other.close()


async def test_an_app_has_at_most_limit_users_with_a_cutoff(make_store, db):
    """Past the limit a new user gets no cutoff (None); a user with one still
    moves it, another app is counted apart, and cutoffs forgotten make room.
    Two nodes adding at once never go past it."""
    for user in ("u1", "u2"):
        assert await db.revoke_tokens(A, user, T0 + 1, forget_before=0, limit=2) == T0 + 1
    assert await db.revoke_tokens(A, "u3", T0 + 1, forget_before=0, limit=2) is None
    assert await db.revoke_tokens(A, "u1", T0 + 9, forget_before=0, limit=2) == T0 + 9
    assert await db.revoke_tokens(B, "u3", T0 + 1, forget_before=0, limit=2) == T0 + 1
    assert (A, "u3") not in {(a, u) for a, u, _ in await db.token_revocations(0)}
    # u2's cutoff (T0 + 1) is forgotten by this one: room for u3
    assert await db.revoke_tokens(A, "u3", T0 + 5, forget_before=T0 + 2, limit=2) == T0 + 5
    other = make_store()
    await other.open()
    try:
        answers = await asyncio.gather(
            db.revoke_tokens(A, "u4", T0 + 6, forget_before=0, limit=3),
            other.revoke_tokens(A, "u5", T0 + 6, forget_before=0, limit=3))
        assert sorted(a is None for a in answers) == [False, True]
        assert len([a for a, _, _ in await db.token_revocations(0) if a == A]) == 3
    finally:
        await other.close()


async def test_revocations_at_once_on_two_nodes_keep_the_later_cutoff(make_store, db):
    other = make_store()
    await other.open()
    try:
        for i in range(5):
            user = f"u{i}"
            answers = await asyncio.gather(
                db.revoke_tokens(A, user, T0 + 2 * i + 1, forget_before=0),
                other.revoke_tokens(A, user, T0 + 2 * i, forget_before=0))
            assert answers[0] == T0 + 2 * i + 1  # the later one, whichever came first
            assert answers[1] in (T0 + 2 * i, T0 + 2 * i + 1)
        assert sorted(await db.token_revocations(0)) == [
            (A, f"u{i}", T0 + 2 * i + 1) for i in range(5)]
    finally:
        await other.close()


async def test_a_token_revoked_by_its_jti_is_kept_until_it_expires(make_store, db):
    """One row per (app, user, jti), seen by every store instance; an earlier
    end leaves a later one in place; token_id_revocations lists every app's
    rows written after ``since`` that have not ended at ``now``, and a
    revocation forgets the app's ended rows, never another app's."""
    assert await db.token_id_revocations(0, T0) == []
    assert await db.revoke_token_id(A, "ann", "j1", T0 + 100, T0) == T0 + 100
    assert await db.revoke_token_id(A, "ann", "j1", T0 + 50, T0 + 1) == T0 + 100  # earlier
    assert await db.revoke_token_id(A, "bo/b ü", "j1", T0 + 10, T0 + 2) == T0 + 10
    assert await db.revoke_token_id(B, "ann", "j1", T0 + 20, T0 + 3) == T0 + 20
    other = make_store()
    await other.open()
    try:
        assert sorted(await other.token_id_revocations(0, T0)) == [
            (A, "ann", "j1", T0 + 100), (A, "bo/b ü", "j1", T0 + 10), (B, "ann", "j1", T0 + 20)]
        # written after T0 + 1.5 (the second write of ann's marked it T0 + 1)
        assert sorted(await other.token_id_revocations(T0 + 1.5, T0)) == [
            (A, "bo/b ü", "j1", T0 + 10), (B, "ann", "j1", T0 + 20)]
        assert sorted(await other.token_id_revocations(0, T0 + 15)) == [
            (A, "ann", "j1", T0 + 100), (B, "ann", "j1", T0 + 20)]  # ended ones are not read
        assert await other.revoke_token_id(A, "ann", "j2", T0 + 200, T0 + 30) == T0 + 200
        # app A's ended rows went with that write; B's stay until its own next one
        assert sorted(await db.token_id_revocations(0, 0)) == [
            (A, "ann", "j1", T0 + 100), (A, "ann", "j2", T0 + 200), (B, "ann", "j1", T0 + 20)]
    finally:
        await other.close()


async def test_an_app_has_at_most_limit_tokens_revoked_by_jti(make_store, db):
    """Past the limit a new jti gets no row (None); one revoked already still
    moves its end, another app is counted apart, and ended rows make room.
    Two nodes adding at once never go past it."""
    for jti in ("j1", "j2"):
        assert await db.revoke_token_id(A, "ann", jti, T0 + 10, T0, limit=2) == T0 + 10
    assert await db.revoke_token_id(A, "ann", "j3", T0 + 10, T0, limit=2) is None
    assert await db.revoke_token_id(A, "ann", "j1", T0 + 90, T0, limit=2) == T0 + 90
    assert await db.revoke_token_id(B, "ann", "j3", T0 + 10, T0, limit=2) == T0 + 10
    assert (A, "ann", "j3") not in {r[:3] for r in await db.token_id_revocations(0, 0)}
    # j2 has ended by T0 + 20: room for j3
    assert await db.revoke_token_id(A, "ann", "j3", T0 + 99, T0 + 20, limit=2) == T0 + 99
    other = make_store()
    await other.open()
    try:
        answers = await asyncio.gather(
            db.revoke_token_id(A, "ann", "j4", T0 + 99, T0 + 20, limit=3),
            other.revoke_token_id(A, "ann", "j5", T0 + 99, T0 + 20, limit=3))
        assert sorted(a is None for a in answers) == [False, True]
        assert len([r for r in await db.token_id_revocations(0, 0) if r[0] == A]) == 3
    finally:
        await other.close()


async def test_pepper_is_stable_across_calls_and_reopen(make_store, store):
    first = await store.pepper()
    assert isinstance(first, bytes) and len(first) >= 16
    assert await store.pepper() == first
    again = await reopen(make_store, store)
    try:
        assert await again.pepper() == first
    finally:
        await again.close()


# -- publishing to users -----------------------------------------------------------


async def test_publish_to_users_assigns_gapless_per_user_seqs(db):
    outs = [
        await publish(db, A, note(users=["u1"])),
        await publish(db, A, note(users=["u1", "u2"])),
        await publish(db, A, note(users=["u2", "u1"])),
    ]
    assert [o.status for o in outs] == ["accepted"] * 3
    assert [o.recipients for o in outs] == [1, 2, 2]
    assert all(o.feed_offset is None for o in outs)
    seqs = {}
    for o in outs:
        for d in o.deliveries:
            seqs.setdefault(d.user, []).append(d.seq)
    assert seqs == {"u1": [1, 2, 3], "u2": [1, 2]}
    head = await db.stream_head(A, "u1", time.time())
    assert (head.head_seq, head.oldest_seq) == (3, 1)
    # every delivery carries the user's (single, stable) epoch
    assert {d.epoch for o in outs for d in o.deliveries if d.user == "u1"} == {head.epoch}
    personal, feed = await replay_all(db, A, "u1")
    assert [e.seq for e in personal] == [1, 2, 3]
    assert [e.id for e in personal] == [o.id for o in outs]
    assert feed == []


async def test_publish_returns_id_and_body(db):
    item = note(users=["u"], title="body check")
    out = await publish(db, A, item)
    assert out.id == item.id
    assert out.body == item.body
    stored = await db.get_notification(A, item.id)
    assert stored.body == item.body
    assert stored.category == "default"


async def test_concurrent_publishes_never_share_or_skip_a_seq(db):
    rng = random.Random(20240601)
    users = [f"u{i}" for i in range(12)]
    items = [note(users=rng.sample(users, rng.randint(1, 6))) for _ in range(200)]
    outs = await asyncio.gather(*(publish(db, A, it) for it in items))

    by_user: dict[str, dict[int, str]] = {}
    for out in outs:
        assert out.status == "accepted"
        for d in out.deliveries:
            seen = by_user.setdefault(d.user, {})
            assert d.seq not in seen, f"seq {d.seq} handed out twice to {d.user}"
            seen[d.seq] = out.id
    expected = {u: sum(u in it.users for it in items) for u in users}
    assert {u: len(s) for u, s in by_user.items()} == {u: n for u, n in expected.items() if n}
    for user, seq_to_id in by_user.items():
        n = len(seq_to_id)
        assert sorted(seq_to_id) == list(range(1, n + 1)), f"gap in {user}'s seqs"
        personal, _ = await replay_all(db, A, user)
        assert [e.seq for e in personal] == list(range(1, n + 1))
        assert [e.id for e in personal] == [seq_to_id[s] for s in range(1, n + 1)]
        head = await db.stream_head(A, user, time.time())
        assert head.head_seq == n


async def test_repeated_users_in_one_publish_get_one_entry(db):
    out = await publish(db, A, note(users=["u", "u", "v", "u", "v"]))
    assert out.recipients == 2
    assert sorted((d.user, d.seq) for d in out.deliveries) == [("u", 1), ("v", 1)]
    assert await inbox_ids(db, A, "u") == [out.id]
    assert sorted(await db.recipients_of(A, out.id)) == ["u", "v"]
    assert (await db.stream_head(A, "u", time.time())).head_seq == 1


async def test_stream_heads_answer_a_list_of_users_at_once(db):
    await publish(db, A, note(users=["u1", "u2"]))
    await publish(db, A, note(users=["u2"]))
    await db.stream_head(A, "u3", time.time())  # a stream with nothing yet
    heads = await db.stream_heads(A, ["u1", "u2", "u3"])
    epoch = (await db.stream_head(A, "u1", time.time())).epoch
    assert {u: seq for u, (_, seq) in heads.items()} == {"u1": 1, "u2": 2, "u3": 0}
    assert heads["u1"][0] == epoch


async def test_publish_many_answers_each_item_in_order_with_gapless_seqs(db):
    items = [note(users=["u1"]), note(users=["u1", "u2"]), note(all=True),
             note(users=["u2"], key="k"), note(users=["u2"], key="k")]
    outs = await db.publish_many(A, items, fanout_threshold=THRESHOLD, window=WINDOW)
    assert [o.id for o in outs[:3]] == [it.id for it in items[:3]]
    assert [o.status for o in outs[:3]] == ["accepted"] * 3
    assert outs[2].feed_offset == 1
    # one of the two items with one key is stored, the other is its duplicate
    assert sorted(o.status for o in outs[3:]) == ["accepted", "duplicate"]
    assert outs[3].id == outs[4].id in (items[3].id, items[4].id)
    seqs = sorted((d.user, d.seq) for o in outs for d in o.deliveries)
    assert seqs == [("u1", 1), ("u1", 2), ("u2", 1), ("u2", 2)]
    personal, _ = await replay_all(db, A, "u2")
    assert [e.id for e in personal] in ([items[1].id, outs[3].id], [outs[3].id, items[1].id])
    assert (await db.stream_head(A, "u2", time.time())).head_seq == 2


async def test_publish_many_gives_a_user_seqs_in_the_order_of_the_items(db):
    """A batch's items reach a user in the request's order, whatever path
    each takes (group commit, a grouped one alone, an idempotency key), and
    however many runs a batch needs: a chat app's messages sent as a batch
    must not come out shuffled."""
    for round_ in range(12):
        items = [note(users=["u"], title="0"), note(users=["u", "v"], title="1"),
                 note(users=["u"], title="2", group=f"g{round_}"),
                 note(users=["u"], title="3", key=f"k{round_}"),
                 note(users=["u"], title="4"), note(users=["v", "u"], title="5")]
        outs = await db.publish_many(A, items, fanout_threshold=THRESHOLD, window=WINDOW)
        seqs = [next(d.seq for d in o.deliveries if d.user == "u") for o in outs]
        assert seqs == sorted(seqs), (round_, seqs)
    personal, _ = await replay_all(db, A, "u")
    titles = [msgspec.json.decode(e.body)["title"] for e in personal]
    assert titles == [str(i) for i in range(6)] * 12


async def test_publish_many_fails_a_bad_item_alone(db):
    # the second item reuses the id of a notification stored before the
    # batch: it cannot be stored, and the items around it are published as
    # if it were not there.  (Not the id of another item of the batch: a
    # store may publish the items concurrently, and either of two equal ids
    # may then be the one that fails.)
    stored = await publish(db, A, note(users=["x"]))
    first, after = note(users=["u"]), note(users=["v", "u"])
    clash = msgspec.structs.replace(note(users=["u", "w"]), id=stored.id)
    outs = await db.publish_many(A, [first, clash, after], fanout_threshold=THRESHOLD,
                                 window=WINDOW)
    assert isinstance(outs[1], Exception)
    assert [outs[0].status, outs[2].status] == ["accepted", "accepted"]
    assert sorted(d.seq for o in (outs[0], outs[2]) for d in o.deliveries if d.user == "u") \
        == [1, 2]
    personal, _ = await replay_all(db, A, "u")
    assert sorted(e.id for e in personal) == sorted([first.id, after.id])
    assert await inbox_ids(db, A, "w") == []
    assert (await db.stream_head(A, "u", time.time())).head_seq == 2
    # the failed item took no seq: the next publish follows on
    nxt = await publish(db, A, note(users=["u", "w"]))
    assert [(d.user, d.seq) for d in nxt.deliveries] == [("u", 3), ("w", 1)]
    assert await inbox_ids(db, A, "x") == [stored.id]  # the stored one untouched


# -- idempotency ------------------------------------------------------------------


async def test_same_idempotency_key_returns_the_first_result(db):
    first = await publish(db, A, note(users=["u", "v"], key="k1"))
    retry = note(users=["u", "v"], key="k1")
    second = await publish(db, A, retry)
    assert first.status == "accepted"
    assert second.status == "duplicate"
    assert second.id == first.id
    assert second.recipients == first.recipients == 2
    assert second.deliveries == []
    # nothing new stored
    assert await db.get_notification(A, retry.id) is None
    assert await inbox_ids(db, A, "u") == [first.id]
    assert (await db.stream_head(A, "u", time.time())).head_seq == 1
    assert (await db.counts(A, "v", time.time()))[:2] == (1, 1)


async def test_concurrent_publishes_with_one_key_store_one_notification(db):
    items = [note(users=["u"], key="race") for _ in range(20)]
    outs = await asyncio.gather(*(publish(db, A, it) for it in items))
    accepted = [o for o in outs if o.status == "accepted"]
    assert len(accepted) == 1
    assert {o.id for o in outs} == {accepted[0].id}
    assert await inbox_ids(db, A, "u") == [accepted[0].id]
    assert (await db.stream_head(A, "u", time.time())).head_seq == 1


async def test_idempotency_key_reports_the_first_muted_count(db):
    await db.put_preferences(A, "m", Preferences(categories={"promo": ChannelPrefs(in_app=False)}))
    first = await publish(db, A, note(users=["m", "n"], category="promo", key="k"))
    again = await publish(db, A, note(users=["m", "n"], category="promo", key="k"))
    assert (again.status, again.id, again.recipients, again.muted) == (
        "duplicate", first.id, 1, 1)


async def test_idempotency_key_expires_after_the_window(db):
    t = time.time()
    first = await publish(db, A, note(users=["u"], key="k", created_at=t), window=60)
    inside = await publish(db, A, note(users=["u"], key="k", created_at=t + 59), window=60)
    assert inside.status == "duplicate"
    later = note(users=["u"], key="k", created_at=t + 61)
    after = await publish(db, A, later, window=60)
    assert after.status == "accepted"
    assert after.id == later.id != first.id
    assert [d.seq for d in after.deliveries] == [2]
    assert await inbox_ids(db, A, "u", now=t + 62) == [later.id, first.id]


async def test_idempotency_key_is_scoped_per_app(db):
    a = await publish(db, A, note(users=["u"], key="shared"))
    b_item = note(users=["u"], key="shared")
    b = await publish(db, B, b_item)
    assert (a.status, b.status) == ("accepted", "accepted")
    assert b.id == b_item.id != a.id
    assert await inbox_ids(db, B, "u") == [b.id]


# -- preferences and muting ---------------------------------------------------------


async def test_preferences_round_trip(db):
    assert await db.get_preferences(A, "u") == Preferences()
    prefs = Preferences(
        categories={"promo": ChannelPrefs(in_app=False, email=False)},
        quiet_hours=QuietHours(start="22:00", end="07:00", tz="Europe/Paris"),
    )
    await db.put_preferences(A, "u", prefs)
    assert await db.get_preferences(A, "u") == prefs
    await db.put_preferences(A, "u", Preferences())
    assert await db.get_preferences(A, "u") == Preferences()


async def test_muted_category_gets_no_entry_and_is_counted(db):
    await db.put_preferences(A, "m", Preferences(categories={"promo": ChannelPrefs(in_app=False)}))
    out = await publish(db, A, note(users=["m", "n"], category="promo"))
    assert (out.recipients, out.muted) == (1, 1)
    assert [d.user for d in out.deliveries] == ["n"]
    assert await inbox_ids(db, A, "m") == []
    assert (await db.counts(A, "m", time.time()))[:2] == (0, 0)
    assert (await db.stream_head(A, "m", time.time())).head_seq == 0
    assert await db.recipients_of(A, out.id) == ["n"]
    # the mute is per category
    other = await publish(db, A, note(users=["m"], category="default"))
    assert [(d.user, d.seq) for d in other.deliveries] == [("m", 1)]
    # muting with other channels still on, or unmuting, delivers again
    await db.put_preferences(A, "m", Preferences(categories={"promo": ChannelPrefs(email=False)}))
    back = await publish(db, A, note(users=["m"], category="promo"))
    assert (back.recipients, back.muted) == (1, 0)
    assert [(d.user, d.seq) for d in back.deliveries] == [("m", 2)]


async def test_muted_feed_items_are_left_out_of_inbox_counts_and_replay(db):
    """An in-app mute hides a broadcast and a large topic's item of its
    category from that user (module guarantees), read at read time:
    unmuted, they are back, past ones included."""
    await db.subscribe(A, "big", ["m", "n"])
    await db.put_preferences(A, "m", Preferences(categories={"promo": ChannelPrefs(in_app=False)}))
    mine = (await publish(db, A, note(users=["m"], category="default"))).id
    promo = (await publish(db, A, note(all=True, category="promo"))).id
    big = (await publish(db, A, note(topic="big", category="promo"), threshold=1)).id
    plain = (await publish(db, A, note(all=True, category="default"))).id
    news = (await publish(db, A, note(topic="big", category="news"), threshold=1)).id
    now = time.time()
    everything = [news, plain, big, promo]
    assert await inbox_ids(db, A, "n") == everything
    assert await inbox_ids(db, A, "m") == [news, plain, mine]
    assert await inbox_ids(db, A, "m", state="unseen") == [news, plain, mine]
    assert await inbox_ids(db, A, "m", before=plain) == [mine]
    assert await inbox_ids(db, A, "m", limit=1, before=news) == [plain]
    # (the revision: m joined a topic and muted a category, n joined)
    assert await db.counts(A, "m", now) == Counts(3, 3, 1, 4, rev=2)
    assert await db.counts(A, "n", now) == Counts(4, 4, 0, 4, rev=1)
    _, feed = await db.replay(A, "m", 0, 0, 100, now)
    assert [e.id for e in feed] == [plain, news]
    _, feed = await db.replay(A, "n", 0, 0, 100, now)
    assert [e.id for e in feed] == [promo, big, plain, news]
    assert (await db.stream_head(A, "m", now)).muted == {"promo"}
    assert (await db.stream_head(A, "n", now)).muted == frozenset()
    assert await db.muted(A, "m") == {"promo"}
    assert await db.muted_many(A, ["m", "n", "nobody"]) == {"m": {"promo"}}
    many = await db.counts_many(A, ["m", "n"], now)
    assert many == {"m": Counts(3, 3, 1, 4, rev=2), "n": Counts(4, 4, 0, 4, rev=1)}
    # mutes the caller holds are taken as they are (the gateway's streams)
    given = await db.counts_many(A, ["m", "n"], now, {"m": frozenset(), "n": frozenset({"news"})})
    assert given == {"m": Counts(5, 5, 1, 4, rev=2), "n": Counts(3, 3, 0, 4, rev=1)}
    assert await db.counts(A, "n", now, frozenset({"promo", "news"})) == Counts(1, 1, 0, 4, rev=1)
    assert [e.id for e in await db.inbox(A, "n", limit=10, before=None, state=None, now=now,
                                         muted=frozenset({"news"}))] == [plain, big, promo]
    _, feed = await db.replay(A, "n", 0, 0, 100, now, frozenset({"promo"}))
    assert [e.id for e in feed] == [plain, news]
    # a filtered page too (its bodies say their category, as the service's do)
    shown = [note(all=True, category=c) for c in ("promo", "news")]
    for item in shown:
        item.body = msgspec.json.encode({**msgspec.json.decode(item.body),
                                         "category": item.category})
        await publish(db, A, item)
    filtered = await db.inbox(A, "m", limit=10, before=None, state=None, now=time.time(),
                              categories=("promo", "news"))
    assert [e.id for e in filtered][0] == shown[1].id
    assert not {shown[0].id, promo, big} & {e.id for e in filtered}
    for item in shown:
        await db.delete_notification(A, item.id)
    # another category muted with a patch: hidden at once
    await db.update_preferences(A, "m", lambda p: Preferences(categories={
        **p.categories, "news": ChannelPrefs(in_app=False)}))
    assert await inbox_ids(db, A, "m") == [plain, mine]
    assert (await db.counts(A, "m", now))[:2] == (2, 2)
    # unmuted: every past item of the category is back, in its place
    await db.put_preferences(A, "m", Preferences())
    assert await inbox_ids(db, A, "m") == [*everything, mine]
    assert (await db.counts(A, "m", now))[:2] == (5, 5)
    _, feed = await db.replay(A, "m", 0, 0, 100, now)
    assert [e.id for e in feed] == [promo, big, plain, news]
    assert await db.muted_many(A, ["m", "n"]) == {}


def labelled(item: NewNotification, *tags: str) -> NewNotification:
    """``item`` with a body that says its category and ``tags``, as the
    service's bodies do (a filtered page judges the body)."""
    item.body = msgspec.json.encode({**msgspec.json.decode(item.body),
                                     "category": item.category, "tags": list(tags)})
    return item


# every way a page is asked for: (state, categories, tags)
PAGE_ASKS = [(state, cats, tags) for state in (None, "unseen")
             for cats in ((), ("promo", "news")) for tags in ((), ("hot",))]


async def pages_and_counts(db, user: str, muted: frozenset[str] | None, before: str):
    """Every page of PAGE_ASKS, first and from ``before``, and the counts,
    for ``user`` with ``muted`` given (None: the store finds them)."""
    now = time.time()
    pages = [[e.id for e in await db.inbox(A, user, limit=3, before=b, state=state, now=now,
                                           categories=cats, tags=tags, muted=muted)]
             for state, cats, tags in PAGE_ASKS for b in (None, before)]
    return pages, await db.counts(A, user, now, muted)


async def test_pages_and_counts_read_the_mutes_they_are_not_given_in_their_own_statement(
        db, monkeypatch):
    """Without the caller's mutes (no stream of the user on the node), the
    page and counts statements read them themselves: no read of the
    preferences before them, and the same pages and counts, filtered or
    not, as with the mutes given (module guarantees)."""
    await db.subscribe(A, "big", ["m", "k", "n"])
    await db.put_preferences(A, "m", Preferences(categories={"promo": ChannelPrefs(in_app=False)}))
    await db.put_preferences(A, "k", Preferences(categories={
        "promo": ChannelPrefs(in_app=False), "news": ChannelPrefs(in_app=False),
        "default": ChannelPrefs(email=False)}))
    items = [labelled(note(users=["m", "k", "n"], category="promo"), "hot"),
             labelled(note(all=True, category="promo"), "hot"),
             labelled(note(all=True, category="news")),
             labelled(note(topic="big", category="promo")),
             labelled(note(all=True, category="default"), "hot"),
             labelled(note(topic="big", category="news"), "hot"),
             labelled(note(users=["m", "k", "n"], category="news"), "hot"),
             labelled(note(all=True, category="promo"), "hot")]
    for item in items:
        await publish(db, A, item, threshold=2)
    await db.set_state(A, "m", [items[2].id, items[4].id], "seen", time.time())
    users = {"m": {"promo"}, "k": {"promo", "news"}, "n": set()}
    given = {u: await pages_and_counts(db, u, frozenset(m), items[5].id) for u, m in users.items()}

    async def no_read(*args):
        raise AssertionError("the mutes were read before the statement")

    monkeypatch.setattr(db, "muted", no_read)
    monkeypatch.setattr(db, "get_preferences", no_read)
    for user in users:
        assert await pages_and_counts(db, user, None, items[5].id) == given[user], user
    # what the mutes leave out of the unfiltered pages, first and from item 5
    def ids(*at: int) -> list[str]:
        return [items[i].id for i in at]

    assert [given[u][0][:2] for u in users] == [
        [ids(6, 5, 4), ids(4, 2)], [ids(4), ids(4)], [ids(7, 6, 5), ids(4, 3, 2)]]
    assert [given[u][1][:2] for u in users] == [(4, 2), (1, 1), (8, 8)]


def off(category: str, channel: str = "email"):
    """A change switching ``channel`` off for ``category`` (None: it was off)."""
    def change(prefs: Preferences) -> Preferences | None:
        current = prefs.categories.get(category, ChannelPrefs())
        if not getattr(current, channel):
            return None
        return msgspec.structs.replace(prefs, categories={
            **prefs.categories, category: msgspec.structs.replace(current, **{channel: False})})
    return change


async def test_update_preferences_changes_what_is_stored_in_place(db):
    # a user with none starts from the empty preferences
    assert await db.update_preferences(A, "u", off("social")) == Preferences(
        categories={"social": ChannelPrefs(email=False)})
    quiet = QuietHours(start="22:00", end="07:00", tz="Europe/Paris")
    await db.put_preferences(A, "u", Preferences(
        categories={"social": ChannelPrefs(email=False)}, quiet_hours=quiet))
    # what the change does not touch is kept, and a change to nothing writes nothing
    assert await db.update_preferences(A, "u", off("social")) is None
    want = Preferences(categories={"social": ChannelPrefs(email=False),
                                   "promo": ChannelPrefs(in_app=False)}, quiet_hours=quiet)
    assert await db.update_preferences(A, "u", off("promo", "in_app")) == want
    assert await db.get_preferences(A, "u") == want
    assert await db.get_preferences(B, "u") == Preferences()
    # an in-app switch changed in place mutes the category like a put does
    out = await publish(db, A, note(users=["u", "v"], category="promo"))
    assert (out.recipients, out.muted) == (1, 1)
    assert await db.update_preferences(A, "nobody", lambda prefs: None) is None
    assert await db.get_preferences(A, "nobody") == Preferences()


async def test_concurrent_preference_updates_on_two_nodes_all_survive(make_store, db):
    """Each update switches off a category of its own, at the same time on two
    instances; read-modify-write without a lock would keep only some."""
    other = make_store()
    await other.open()
    try:
        for user in ("fresh", "stored"):  # with no row yet, and with one
            if user == "stored":
                await db.put_preferences(A, user, Preferences(
                    categories={"keep": ChannelPrefs(push=False)}))
            names = [f"c{i}" for i in range(16)]
            done = await asyncio.gather(*(
                s.update_preferences(A, user, off(name))
                for s, name in zip(itertools.cycle((db, other)), names)))
            assert all(d is not None for d in done)
            got = await db.get_preferences(A, user)
            assert {c for c, ch in got.categories.items() if not ch.email} == set(names)
            if user == "stored":
                assert got.categories["keep"] == ChannelPrefs(push=False)
        # and a put meanwhile is not undone by an update either: each is whole
        await asyncio.gather(
            db.put_preferences(A, "mixed", Preferences(
                categories={"x": ChannelPrefs(push=False)})),
            other.update_preferences(A, "mixed", off("y")))
        # the update after the put, or the put (a whole document) after the update
        assert (await db.get_preferences(A, "mixed")).categories in (
            {"x": ChannelPrefs(push=False), "y": ChannelPrefs(email=False)},
            {"x": ChannelPrefs(push=False)})
    finally:
        await other.close()


# -- topics -----------------------------------------------------------------------


async def test_subscribe_unsubscribe_and_topic_info(db):
    assert await db.subscribe(A, "news", ["x", "y"]) == 2
    assert await db.subscribe(A, "news", ["y", "z"]) == 1  # y already in
    assert await db.subscribe(A, "sport", ["x"]) == 1
    assert await db.topic_info(A, "news", 10) == (3, ["x", "y", "z"])
    count, some = await db.topic_info(A, "news", 2)
    assert count == 3 and len(some) == 2 and set(some) <= {"x", "y", "z"}
    assert await db.user_topics(A, "x") == ["news", "sport"]
    assert await db.unsubscribe(A, "news", ["x", "nobody"]) == 1
    assert await db.topic_info(A, "news", 10) == (2, ["y", "z"])
    assert await db.user_topics(A, "x") == ["sport"]
    assert await db.topic_info(A, "empty", 10) == (0, [])


async def test_topics_and_mutes_of_a_list_of_users_at_once(db):
    """The followed topics and in-app mutes of a batch of users (the hub's
    sweep after a broker outage), topics sorted; users who follow none (mute
    none) are left out, and so is another app's.  More users than one
    statement's list (SQLite) too."""
    crowd = [f"c{i:04}" for i in range(1100)]
    await db.subscribe(A, "sport", ["x", *crowd])
    await db.subscribe(A, "news", ["x", "y"])
    await db.subscribe(B, "news", ["z"])
    assert await db.topics_many(A, ["x", "y", "z", "nobody"]) == {
        "x": ["news", "sport"], "y": ["news"]}
    many = await db.topics_many(A, crowd)
    assert len(many) == 1100 and set(map(tuple, many.values())) == {("sport",)}
    assert await db.topics_many(A, []) == {}
    await db.put_preferences(A, crowd[-1], Preferences(categories={
        "promo": ChannelPrefs(in_app=False)}))
    assert await db.muted_many(A, crowd) == {crowd[-1]: {"promo"}}
    assert await db.muted_many(B, crowd) == {}


async def test_topic_up_to_threshold_fans_out_per_subscriber(db):
    await db.subscribe(A, "news", ["s1", "s2", "s3"])
    out = await publish(db, A, note(topic="news"), threshold=3)  # size == threshold
    assert out.feed_offset is None and out.audience is None
    assert out.recipients == 3
    assert sorted((d.user, d.seq) for d in out.deliveries) == [("s1", 1), ("s2", 1), ("s3", 1)]
    assert sorted(await db.recipients_of(A, out.id)) == ["s1", "s2", "s3"]
    for user in ("s1", "s2", "s3"):
        entries = await db.inbox(A, user, limit=10, before=None, state=None, now=time.time())
        assert [(e.id, e.seq, e.feed) for e in entries] == [(out.id, 1, None)]
    assert await inbox_ids(db, A, "outsider") == []
    # muted subscribers get nothing and are counted
    await db.put_preferences(A, "s3", Preferences(categories={"promo": ChannelPrefs(in_app=False)}))
    promo = await publish(db, A, note(topic="news", category="promo"), threshold=3)
    assert (promo.recipients, promo.muted) == (2, 1)
    assert sorted(d.user for d in promo.deliveries) == ["s1", "s2"]
    assert await inbox_ids(db, A, "s3") == [out.id]


async def test_an_apps_first_publish_to_a_topic_nobody_follows_reaches_nobody(db):
    """Fanned out on write to no one: the store's first publish for the app,
    so it has no stream of the app's in hand (nor in memory)."""
    out = await publish(db, A, note(topic="empty"))
    assert (out.status, out.recipients, out.deliveries) == ("accepted", 0, [])
    await db.subscribe(A, "empty", ["s1"])
    again = await publish(db, A, note(topic="empty"))
    assert [(d.user, d.seq) for d in again.deliveries] == [("s1", 1)]


async def test_topic_above_threshold_is_one_feed_item(db):
    await db.subscribe(A, "news", ["s1", "s2", "s3"])
    item = note(topic="news")
    out = await publish(db, A, item, threshold=2)
    assert out.status == "accepted"
    assert out.feed_offset is not None and out.feed_offset >= 1
    assert out.audience == "news"
    assert out.deliveries == []
    assert await db.recipients_of(A, out.id) == []  # no personal entries
    now = time.time()
    for user in ("s1", "s2", "s3"):
        entries = await db.inbox(A, user, limit=10, before=None, state=None, now=now)
        assert [(e.id, e.seq, e.feed, e.state) for e in entries] == [
            (out.id, None, out.feed_offset, "unseen")]
        assert entries[0].body == item.body
        personal, feed = await replay_all(db, A, user)
        assert personal == []
        assert [(e.id, e.feed) for e in feed] == [(out.id, out.feed_offset)]
        assert (await db.counts(A, user, now))[:2] == (1, 1)
        head = await db.stream_head(A, user, now)
        assert head.head_seq == 0 and head.head_feed == out.feed_offset
    # not a subscriber: sees nothing
    assert await inbox_ids(db, A, "outsider") == []
    assert await replay_all(db, A, "outsider") == ([], [])
    assert (await db.counts(A, "outsider", now))[:2] == (0, 0)
    stored = await db.get_notification(A, out.id)
    assert (stored.audience, stored.feed_offset) == ("news", out.feed_offset)


async def test_broadcast_is_one_feed_item_visible_to_every_user(db):
    item = note(all=True)
    out = await publish(db, A, item)
    assert out.feed_offset is not None and out.audience == "*"
    assert out.deliveries == []
    now = time.time()
    for user in ("anyone", "never-seen-before"):
        entries = await db.inbox(A, user, limit=10, before=None, state=None, now=now)
        assert [(e.id, e.feed, e.seq) for e in entries] == [(out.id, out.feed_offset, None)]
        _, feed = await replay_all(db, A, user)
        assert [e.id for e in feed] == [out.id]
        assert (await db.counts(A, user, now))[:2] == (1, 1)
    second = await publish(db, A, note(all=True))
    assert second.feed_offset > out.feed_offset
    # topic feed items share the app's feed timeline
    await db.subscribe(A, "big", ["anyone", "other"])
    third = await publish(db, A, note(topic="big"), threshold=1)
    assert third.feed_offset > second.feed_offset
    assert (await db.stream_head(A, "anyone", now)).head_feed == third.feed_offset
    _, feed = await replay_all(db, A, "anyone")
    assert [e.feed for e in feed] == [out.feed_offset, second.feed_offset, third.feed_offset]
    _, feed = await replay_all(db, A, "lurker")  # not in "big"
    assert [e.feed for e in feed] == [out.feed_offset, second.feed_offset]


# -- replay -----------------------------------------------------------------------


async def test_replay_after_positions_in_order_with_limits(db):
    personal_outs = []
    feed_outs = []
    for _ in range(5):
        personal_outs.append(await publish(db, A, note(users=["u"])))
        feed_outs.append(await publish(db, A, note(all=True)))
    offsets = [o.feed_offset for o in feed_outs]
    assert offsets == sorted(offsets) and len(set(offsets)) == 5

    personal, feed = await replay_all(db, A, "u", after_seq=2, after_feed=offsets[1])
    assert [(e.seq, e.id) for e in personal] == [(s, personal_outs[s - 1].id) for s in (3, 4, 5)]
    assert [(e.feed, e.id) for e in feed] == [(o.feed_offset, o.id) for o in feed_outs[2:]]
    assert all(e.state == "unseen" for e in personal + feed)

    personal, feed = await replay_all(db, A, "u", limit=2)
    assert [e.seq for e in personal] == [1, 2]  # the oldest first
    assert [e.feed for e in feed] == offsets[:2]

    personal, feed = await replay_all(db, A, "u", after_seq=5, after_feed=offsets[-1])
    assert (personal, feed) == ([], [])


async def test_a_paged_replay_reads_one_kind_at_a_time_and_knows_its_size_first(db):
    """The gateway reads a replay a page and a kind at a time (a position of
    None leaves its kind out), after ``replay_exceeds`` said whether more
    than ``replay_max`` of either kind lie past the positions: exactly what
    ``replay`` finds, expired, invisible and muted items left out alike."""
    t = time.time()
    await db.subscribe(A, "big", ["u"])
    await db.put_preferences(A, "u", Preferences(categories={"promo": ChannelPrefs(in_app=False)}))
    for _ in range(3):
        await publish(db, A, note(users=["u"]))
        await publish(db, A, note(all=True))
    await publish(db, A, note(users=["u"], created_at=t, expires_at=t + 1))  # seq 4
    await publish(db, A, note(users=["u"]))  # seq 5
    await publish(db, A, note(topic="big"), threshold=0)  # u sees it
    await publish(db, A, note(topic="other"), threshold=0)  # u does not
    await publish(db, A, note(all=True, category="promo"))  # u muted it
    await publish(db, A, note(all=True, created_at=t, expires_at=t + 1))
    head = await db.stream_head(A, "u", t)
    now = t + 2  # the two that expire are gone
    personal, feed = await db.replay(A, "u", 1, None, 10, now)
    assert ([e.seq for e in personal], feed) == ([2, 3, 5], [])
    personal, feed = await db.replay(A, "u", None, 0, 2, now)
    assert personal == [] and len(feed) == 2
    for muted in (None, frozenset(), frozenset({"promo"})):
        for after_seq in range(head.head_seq + 1):
            for after_feed in range(head.head_feed + 1):
                for limit in range(6):
                    p, f = await db.replay(A, "u", after_seq, after_feed, limit + 1, now, muted)
                    assert await db.replay_exceeds(
                        A, "u", after_seq, after_feed, limit, now, muted,
                    ) is (len(p) > limit or len(f) > limit), (muted, after_seq, after_feed, limit)


async def test_replay_reports_current_state_and_body(db):
    item = note(users=["u"], title="state")
    out = await publish(db, A, item)
    await db.set_state(A, "u", [out.id], "read", time.time())
    personal, _ = await replay_all(db, A, "u")
    assert [(e.id, e.state, e.body, e.created_at) for e in personal] == [
        (out.id, "read", item.body, item.created_at)]


# -- inbox ------------------------------------------------------------------------


async def test_inbox_is_newest_first_with_before_pagination(db):
    published = []
    for i in range(7):
        target = {"all": True} if i % 3 == 1 else {"users": ["u"]}
        published.append((await publish(db, A, note(**target))).id)
    entries = await db.inbox(A, "u", limit=100, before=None, state=None, now=time.time())
    assert [e.id for e in entries] == published[::-1]
    for e in entries:
        assert (e.seq is None) != (e.feed is None)  # personal xor feed
    assert await inbox_ids(db, A, "u", limit=3) == published[::-1][:3]

    pages, before = [], None
    while True:
        page = await inbox_ids(db, A, "u", limit=3, before=before)
        if not page:
            break
        pages.append(page)
        before = page[-1]
    assert [len(p) for p in pages] == [3, 3, 1]
    assert [i for p in pages for i in p] == published[::-1]
    assert await inbox_ids(db, A, "u", before=published[3]) == published[:3][::-1]


async def test_inbox_state_filters(db):
    ids = [(await publish(db, A, note(users=["u"]))).id for _ in range(5)]
    feed = [(await publish(db, A, note(all=True))).id for _ in range(4)]
    now = time.time()
    # personal: 0 unseen, 1 seen, 2 read, 3 archived, 4 unseen
    await db.set_state(A, "u", [ids[1]], "seen", now)
    await db.set_state(A, "u", [ids[2]], "read", now)
    await db.set_state(A, "u", [ids[3]], "archived", now)
    # feed: 0 unseen, 1 seen, 2 read, 3 archived
    await db.set_state(A, "u", [feed[1]], "seen", now)
    await db.set_state(A, "u", [feed[2]], "read", now)
    await db.set_state(A, "u", [feed[3]], "archived", now)

    async def by(state):
        return set(await inbox_ids(db, A, "u", state=state))

    assert await by("unseen") == {ids[0], ids[4], feed[0]}
    assert await by("seen") == {ids[1], feed[1]}
    assert await by("unread") == {ids[0], ids[1], ids[4], feed[0], feed[1]}
    assert await by("read") == {ids[2], feed[2]}
    assert await by("archived") == {ids[3], feed[3]}
    assert await by(None) == set(ids + feed) - {ids[3], feed[3]}  # archived hidden
    assert await by("all") == set(ids + feed)
    states = {e.id: e.state for e in await db.inbox(
        A, "u", limit=100, before=None, state="all", now=now)}
    assert [states[i] for i in ids] == ["unseen", "seen", "read", "archived", "unseen"]
    assert [states[i] for i in feed] == ["unseen", "seen", "read", "archived"]
    # other users' states are their own
    assert set(await inbox_ids(db, A, "other", state="unseen")) == set(feed)


async def test_counts(db):
    ids = [(await publish(db, A, note(users=["u"]))).id for _ in range(3)]
    f = (await publish(db, A, note(all=True))).id
    now = time.time()
    assert (await db.counts(A, "u", now))[:2] == (4, 4)
    await db.set_state(A, "u", [ids[0]], "seen", now)
    assert (await db.counts(A, "u", now))[:2] == (4, 3)
    await db.set_state(A, "u", [ids[1], f], "read", now)
    assert (await db.counts(A, "u", now))[:2] == (2, 1)
    await db.set_state(A, "u", [ids[2]], "archived", now)
    assert (await db.counts(A, "u", now))[:2] == (1, 0)
    assert (await db.counts(A, "other", now))[:2] == (1, 1)  # only the broadcast
    assert (await db.counts(A, "nobody-at-all", now))[:2] == (1, 1)


async def test_counts_say_where_they_were_read(db):
    """Counts come with the user's head seq and the app's feed head, read in
    the same snapshot: they count everything up to there, nothing after."""
    now = time.time()
    assert await db.counts(A, "u", now) == Counts(0, 0, 0, 0)  # no stream yet
    p = [(await publish(db, A, note(users=["u"]))).id for _ in range(2)]
    await publish(db, A, note(users=["v"]))  # another user's seq is theirs
    await publish(db, A, note(all=True))
    await publish(db, B, note(all=True))  # another app's feed is its own
    head = await db.stream_head(A, "u", now)
    assert (head.head_seq, head.head_feed) == (2, 1)
    assert await db.counts(A, "u", now) == Counts(3, 3, 2, 1)
    await db.set_state(A, "u", [p[0]], "read", now)  # state moves no position: the revision
    assert await db.counts(A, "u", now) == Counts(2, 2, 2, 1, rev=1)
    await db.subscribe(A, "big", ["u", "x"])
    await publish(db, A, note(topic="big"), threshold=1)  # above the threshold: a feed item
    assert await db.counts(A, "u", now) == Counts(3, 3, 2, 2, rev=2)
    assert await db.counts(A, "w", now) == Counts(1, 1, 0, 2)  # sees the broadcast only


async def test_every_change_that_moves_counts_without_a_position_raises_their_revision(db):
    """``Counts.rev``: a change that moves a user's counts but no seq or feed
    offset raises it in its own transaction, so that of two counts read at
    the same position the later says so; a publish moves a position, and
    leaves it (docs/protocol.md, "Counts and the badge")."""
    t = time.time()

    async def rev(user: str, app: str = A) -> int:
        return (await db.counts(app, user, time.time())).rev

    mine = await publish(db, A, note(users=["u", "v"]))
    broadcast = await publish(db, A, note(all=True))
    await publish(db, B, note(users=["u"]))
    assert [await rev(u) for u in ("u", "v", "w")] == [0, 0, 0]
    await db.set_state(A, "u", [mine.id], "read", t)
    assert [await rev(u) for u in ("u", "v", "w")] == [1, 0, 0]
    await db.set_state(A, "u", [mine.id], "seen", t)  # moved nothing: not raised
    await db.set_state(A, "u", None, "seen", t)  # the broadcast's feed_state
    assert await rev("u") == 2
    await db.subscribe(A, "big", ["u", "w"])
    assert [await rev(u) for u in ("u", "v", "w")] == [3, 0, 1]
    await db.unsubscribe(A, "big", ["w"])
    assert await rev("w") == 2
    await db.put_preferences(A, "v", Preferences(categories={"promo": ChannelPrefs(in_app=False)}))
    assert await rev("v") == 1
    await db.update_preferences(A, "v", lambda p: Preferences())
    assert await rev("v") == 2
    # a retraction, personal or a feed item: every user of the app's (the
    # followers of a feed item are nobody's list)
    await db.delete_notification(A, broadcast.id)
    assert [await rev(u) for u in ("u", "v", "w", "nobody")] == [4, 3, 3, 1]
    await db.delete_notification(A, mine.id)
    assert [await rev(u) for u in ("u", "v", "w", "nobody")] == [5, 4, 4, 2]
    await publish(db, A, note(users=["u"]))
    await publish(db, A, note(all=True))
    assert await rev("u") == 5
    # the retention sweep, of each app whose counts it lowered
    await publish(db, A, note(users=["v"], created_at=t - 100))
    await db.prune(None, t - 50)
    assert [await rev(u) for u in ("u", "v", "nobody")] == [6, 5, 3]
    assert await rev("u", B) == 0
    assert (await db.counts_many(A, ["u", "nobody"], time.time()))["u"].rev == 6


async def test_counts_say_when_the_first_unread_entry_they_count_expires(db):
    """``Counts.expires``: the gateway reads a device's counts again then
    (tidings/gateway/recount.py).  Only unread, unexpired entries it counts,
    personal and feed, and nothing for a user without a ttl."""
    t = time.time()
    assert (await db.counts(A, "u", t)).expires is None
    await publish(db, A, note(users=["u"], created_at=t))
    assert (await db.counts(A, "u", t)).expires is None
    mine = await publish(db, A, note(users=["u"], created_at=t, expires_at=t + 50))
    await db.subscribe(A, "big", ["u"])
    feed = await publish(db, A, note(topic="big", created_at=t, expires_at=t + 30), threshold=0)
    await publish(db, A, note(topic="other", created_at=t, expires_at=t + 10), threshold=0)
    await publish(db, A, note(users=["v"], created_at=t, expires_at=t + 5))  # v's
    assert (await db.counts(A, "u", t)).expires == t + 30
    assert (await db.counts(A, "u", t + 35)).expires == t + 50  # the feed item ran out
    await db.set_state(A, "u", [feed.id], "seen", t)  # seen is still unread
    assert (await db.counts(A, "u", t)).expires == t + 30
    await db.set_state(A, "u", [feed.id], "read", t)
    assert (await db.counts(A, "u", t)).expires == t + 50
    many = await db.counts_many(A, ["u", "v", "w"], t)
    assert [many[x].expires for x in ("u", "v", "w")] == [t + 50, t + 5, None]
    await db.set_state(A, "u", [mine.id], "archived", t)
    assert (await db.counts(A, "u", t)).expires is None


async def test_counts_agree_with_their_position_while_publishes_commit(db):
    """Every read, however the commits around it fall, counts exactly the
    entries and feed items up to the position it reports (nothing is marked
    here, so each one is one unread)."""
    done = False

    async def publisher():
        for i in range(40):
            await publish(db, A, note(all=True) if i % 4 == 3 else note(users=["u"]))
        nonlocal done
        done = True

    async def reader() -> int:
        reads = 0
        while not done or reads == 0:
            c = await db.counts(A, "u", time.time())
            assert (c.unread, c.unseen) == (c.seq + c.feed, c.seq + c.feed), c
            reads += 1
            await asyncio.sleep(0)
        return reads

    _, reads = await asyncio.gather(publisher(), reader())
    assert reads > 0
    assert await db.counts(A, "u", time.time()) == Counts(40, 40, 30, 10)


# -- set_state --------------------------------------------------------------------


async def test_set_state_only_moves_forward(db):
    p = (await publish(db, A, note(users=["u"]))).id
    f = (await publish(db, A, note(all=True))).id
    now = time.time()
    assert sorted(await db.set_state(A, "u", [p, f], "read", now)) == sorted([p, f])
    assert await db.set_state(A, "u", [p, f], "seen", now) == []  # not backwards
    assert await db.set_state(A, "u", [p, f], "read", now) == []  # no change
    states = {e.id: e.state for e in await db.inbox(
        A, "u", limit=10, before=None, state="all", now=now)}
    assert states == {p: "read", f: "read"}
    assert sorted(await db.set_state(A, "u", [p, f], "archived", now)) == sorted([p, f])
    assert await db.set_state(A, "u", [p, f], "read", now) == []
    assert await db.set_state(A, "u", None, "seen", now) == []


async def test_set_state_by_ids_returns_only_changed(db):
    p1 = (await publish(db, A, note(users=["u"]))).id
    p2 = (await publish(db, A, note(users=["u"]))).id
    mine_only_for_v = (await publish(db, A, note(users=["v"]))).id
    now = time.time()
    await db.set_state(A, "u", [p1], "seen", now)
    changed = await db.set_state(A, "u", [p1, p2, mine_only_for_v, next_id()], "seen", now)
    assert changed == [p2]
    assert await inbox_ids(db, A, "v", state="unseen") == [mine_only_for_v]


async def test_set_state_all_covers_personal_and_feed(db):
    p = [(await publish(db, A, note(users=["u"]))).id for _ in range(3)]
    f = [(await publish(db, A, note(all=True))).id for _ in range(2)]
    await db.subscribe(A, "big", ["u", "x"])
    t = (await publish(db, A, note(topic="big"), threshold=1)).id
    await db.subscribe(A, "closed", ["x", "y"])
    hidden = (await publish(db, A, note(topic="closed"), threshold=1)).id
    now = time.time()
    await db.set_state(A, "u", [p[0]], "seen", now)
    changed = await db.set_state(A, "u", None, "seen", now)
    assert sorted(changed) == sorted(p[1:] + f + [t])
    assert hidden not in changed
    assert sorted(await db.set_state(A, "u", None, "read", now)) == sorted(p + f + [t])
    assert await db.set_state(A, "u", None, "read", now) == []
    assert (await db.counts(A, "u", now))[:2] == (0, 0)
    # other users are untouched
    assert (await db.counts(A, "x", now))[:2] == (4, 4)  # f[0], f[1], t, hidden


async def test_set_state_on_a_feed_item_outside_the_audience_changes_nothing(db):
    await db.subscribe(A, "closed", ["x", "y"])
    hidden = (await publish(db, A, note(topic="closed"), threshold=1)).id
    assert await db.set_state(A, "u", [hidden], "read", time.time()) == []
    stored = await db.get_notification(A, hidden)
    assert stored.stats["read"] == 0


# -- ttl --------------------------------------------------------------------------


async def test_expired_entries_vanish(db):
    t = time.time()
    keep = (await publish(db, A, note(users=["u"], created_at=t))).id
    gone = (await publish(db, A, note(users=["u"], created_at=t, expires_at=t + 10))).id
    gone_feed = (await publish(db, A, note(all=True, created_at=t, expires_at=t + 10))).id

    assert set(await inbox_ids(db, A, "u", now=t + 5)) == {keep, gone, gone_feed}
    personal, feed = await replay_all(db, A, "u", now=t + 5)
    assert ([e.id for e in personal], [e.id for e in feed]) == ([keep, gone], [gone_feed])
    assert (await db.counts(A, "u", t + 5))[:2] == (3, 3)

    later = t + 20
    assert await inbox_ids(db, A, "u", now=later) == [keep]
    assert await inbox_ids(db, A, "u", now=later, state="all") == [keep]
    personal, feed = await replay_all(db, A, "u", now=later)
    assert ([e.id for e in personal], feed) == ([keep], [])
    assert (await db.counts(A, "u", later))[:2] == (1, 1)
    assert await db.set_state(A, "u", [gone, gone_feed], "read", later) == []
    assert await db.set_state(A, "u", None, "read", later) == [keep]


# -- update, delete, get ----------------------------------------------------------


async def test_get_notification_fields_and_stats(db):
    t = time.time()
    item = note(users=["u", "v", "w", "x"], category="billing", created_at=t, expires_at=t + 999)
    out = await publish(db, A, item)
    await db.set_state(A, "u", [out.id], "read", t)
    await db.set_state(A, "v", [out.id], "seen", t)
    await db.set_state(A, "w", [out.id], "archived", t)
    got = await db.get_notification(A, out.id)
    assert isinstance(got, StoredNotification)
    assert (got.id, got.body, got.category, got.created_at, got.expires_at) == (
        out.id, item.body, "billing", t, t + 999)
    assert (got.audience, got.feed_offset, got.recipients) == (None, None, 4)
    assert got.stats == {"unseen": 1, "seen": 1, "read": 1, "archived": 1}

    f = await publish(db, A, note(all=True))
    await db.set_state(A, "u", [f.id], "read", t)
    got = await db.get_notification(A, f.id)
    assert (got.audience, got.feed_offset) == ("*", f.feed_offset)
    assert got.stats["read"] == 1

    assert await db.get_notification(A, next_id()) is None


async def test_update_notification_changes_the_body(db):
    out = await publish(db, A, note(users=["u"], title="before"))
    new_body = msgspec.json.encode({"id": out.id, "title": "after"})
    updated = await db.update_notification(A, out.id, new_body)
    assert updated.body == new_body and updated.id == out.id
    assert (await db.get_notification(A, out.id)).body == new_body
    entries = await db.inbox(A, "u", limit=10, before=None, state=None, now=time.time())
    assert [e.body for e in entries] == [new_body]
    personal, _ = await replay_all(db, A, "u")
    assert [e.body for e in personal] == [new_body]

    large = msgspec.json.encode({"id": out.id, "title": "after", "text": "x" * 5000})
    await db.update_notification(A, out.id, large)
    entries = await db.inbox(A, "u", limit=10, before=None, state=None, now=time.time())
    assert [e.body for e in entries] == [large]
    await db.update_notification(A, out.id, new_body)  # and back to a small one
    entries = await db.inbox(A, "u", limit=10, before=None, state=None, now=time.time())
    assert [e.body for e in entries] == [new_body]

    f = await publish(db, A, note(all=True))
    await db.update_notification(A, f.id, b'{"title":"feed after"}')
    _, feed = await replay_all(db, A, "anyone")
    assert [e.body for e in feed] == [b'{"title":"feed after"}']

    assert await db.update_notification(A, next_id(), b"{}") is None


async def test_delete_notification_hides_it_everywhere(db):
    item = note(users=["u", "v"])
    out = await publish(db, A, item)
    other = await publish(db, A, note(users=["u"]))
    gone = await db.delete_notification(A, out.id)
    old = gone.notification
    assert (old.id, old.body, old.recipients) == (out.id, item.body, 2)
    # both held it unread; no group entry held it
    assert (gone.users, gone.unread, gone.regrouped) == (["u", "v"], ["u", "v"], [])

    now = time.time()
    assert await db.get_notification(A, out.id) is None
    assert await inbox_ids(db, A, "u", state="all") == [other.id]
    assert await inbox_ids(db, A, "v", state="all") == []
    personal, _ = await replay_all(db, A, "u")
    assert [e.id for e in personal] == [other.id]
    assert await replay_all(db, A, "v") == ([], [])
    assert (await db.counts(A, "u", now))[:2] == (1, 1)
    assert (await db.counts(A, "v", now))[:2] == (0, 0)
    assert await db.recipients_of(A, out.id) == []
    assert await db.set_state(A, "v", [out.id], "read", now) == []
    assert await db.update_notification(A, out.id, b"{}") is None
    assert await db.delete_notification(A, out.id) is None
    # a deleted entry's seq is never handed out again
    nxt = await publish(db, A, note(users=["v"]))
    assert [d.seq for d in nxt.deliveries] == [2]


async def test_delete_feed_item_hides_it_everywhere(db):
    keep = await publish(db, A, note(all=True))
    gone = await publish(db, A, note(all=True))
    await db.set_state(A, "u", [gone.id], "seen", time.time())
    old = (await db.delete_notification(A, gone.id)).notification
    assert (old.id, old.feed_offset, old.audience) == (gone.id, gone.feed_offset, "*")
    now = time.time()
    assert await inbox_ids(db, A, "u", state="all") == [keep.id]
    _, feed = await replay_all(db, A, "u")
    assert [e.id for e in feed] == [keep.id]
    assert (await db.counts(A, "u", now))[:2] == (1, 1)
    assert await db.get_notification(A, gone.id) is None


async def test_recipients_of(db):
    await db.put_preferences(A, "m", Preferences(categories={"c": ChannelPrefs(in_app=False)}))
    out = await publish(db, A, note(users=["b", "a", "m", "c"], category="c"))
    assert sorted(await db.recipients_of(A, out.id)) == ["a", "b", "c"]
    assert await db.recipients_of(A, next_id()) == []


# -- streams, epochs, retention -------------------------------------------------------


async def test_stream_head_creates_a_stream_with_a_stable_epoch(make_store, store):
    now = time.time()
    head = await store.stream_head(A, "u", now)
    assert head.epoch
    assert (head.head_seq, head.oldest_seq, head.head_feed, head.oldest_feed) == (0, 1, 0, 1)
    assert (await store.stream_head(A, "u", now)).epoch == head.epoch
    out = await publish(store, A, note(users=["u"]))
    assert [(d.epoch, d.seq) for d in out.deliveries] == [(head.epoch, 1)]
    f = await publish(store, A, note(all=True))
    again = await store.stream_head(A, "u", now)
    assert (again.epoch, again.head_seq, again.oldest_seq) == (head.epoch, 1, 1)
    assert again.head_feed == f.feed_offset

    reopened = await reopen(make_store, store)
    try:
        after = await reopened.stream_head(A, "u", time.time())
        assert (after.epoch, after.head_seq, after.head_feed) == (head.epoch, 1, f.feed_offset)
        nxt = await publish(reopened, A, note(users=["u"]))
        assert [(d.epoch, d.seq) for d in nxt.deliveries] == [(head.epoch, 2)]
    finally:
        await reopened.close()


async def test_counts_of_many_users_are_each_ones_counts(db):
    t = time.time()
    await db.subscribe(A, "big", ["u", "w"])
    a = await publish(db, A, note(users=["u", "v"], created_at=t))
    await publish(db, A, note(users=["u"], created_at=t, expires_at=t + 5))
    await publish(db, A, note(all=True, created_at=t))
    topic = await publish(db, A, note(topic="big", created_at=t), threshold=0)
    await publish(db, B, note(users=["u"], created_at=t))  # another app's
    await db.set_state(A, "u", [a.id], "seen", t)
    await db.set_state(A, "w", [topic.id], "read", t)
    users = ["u", "v", "w", "nobody"]
    for now in (t, t + 10):
        many = await db.counts_many(A, users, now)
        assert many == {user: await db.counts(A, user, now) for user in users}
    # each with its own head seq, and the app's feed head (a broadcast, the topic)
    assert many == {"u": Counts(3, 2, 2, 2, rev=2), "v": Counts(2, 2, 1, 2),
                    "w": Counts(1, 1, 0, 2, rev=2), "nobody": Counts(1, 1, 0, 2)}
    assert await db.counts_many(A, [], t) == {}


async def test_prune_raises_the_oldest_position(db):
    t = time.time()
    old = [await publish(db, A, note(users=["u"], created_at=t - 1000)) for _ in range(3)]
    new = [await publish(db, A, note(users=["u"], created_at=t)) for _ in range(2)]
    old_f = await publish(db, A, note(all=True, created_at=t - 1000))
    new_f = await publish(db, A, note(all=True, created_at=t))
    before = await db.stream_head(A, "u", t)

    assert (await db.prune(A, t - 500)).removed >= 4

    head = await db.stream_head(A, "u", t)
    assert head.epoch == before.epoch
    assert (head.head_seq, head.oldest_seq) == (5, 4)
    assert (head.head_feed, head.oldest_feed) == (new_f.feed_offset, old_f.feed_offset + 1)
    personal, feed = await replay_all(db, A, "u")
    assert [e.id for e in personal] == [o.id for o in new]
    assert [e.id for e in feed] == [new_f.id]
    assert await db.get_notification(A, old[0].id) is None

    def recover(seq, feed=None):
        return decide_recovery(
            Cursor(head.epoch, seq, feed), epoch=head.epoch, head_seq=head.head_seq,
            oldest_seq=head.oldest_seq, head_feed=head.head_feed,
            oldest_feed=head.oldest_feed, replay_max=1000,
        )

    assert (recover(0).ok, recover(0).reason) == (False, "retention")  # too old
    assert (recover(2).ok, recover(2).reason) == (False, "retention")
    assert recover(3).ok and recover(3).missed == 2  # right at the floor
    assert recover(3, old_f.feed_offset - 1).reason == "retention"
    assert recover(3, old_f.feed_offset).ok
    # a later publish continues the same stream
    nxt = await publish(db, A, note(users=["u"]))
    assert [(d.epoch, d.seq) for d in nxt.deliveries] == [(head.epoch, 6)]


async def test_prune_is_scoped_to_the_app_or_global(db):
    t = time.time()
    a = await publish(db, A, note(users=["u"], created_at=t - 1000))
    b = await publish(db, B, note(users=["u"], created_at=t - 1000))
    await db.prune(A, t - 500)
    assert await db.get_notification(A, a.id) is None
    assert await db.get_notification(B, b.id) is not None
    assert (await db.stream_head(B, "u", t)).oldest_seq == 1
    await db.prune(None, t - 500)
    assert await db.get_notification(B, b.id) is None
    assert (await db.stream_head(B, "u", t)).oldest_seq == 2


async def test_prune_drops_old_idempotency_records(db):
    t = time.time()
    first = await publish(db, A, note(users=["u"], key="k", created_at=t - 1000), window=10_000)
    await db.prune(A, t - 500)
    again = await publish(db, A, note(users=["u"], key="k", created_at=t), window=10_000)
    assert again.status == "accepted" and again.id != first.id


async def test_prune_names_whose_counts_it_lowered(db):
    """Users who lost an unread entry, feeds that lost a feed item, both
    live until then (the sweep's counts events, tidings/gateway/recount.py)."""
    t, old = time.time(), time.time() - 1000
    await db.subscribe(A, "news", ["s"])
    await publish(db, A, note(users=["u", "v"], created_at=old))
    read = await publish(db, A, note(users=["r"], created_at=old))
    await db.set_state(A, "r", [read.id], "read", t)
    await publish(db, A, note(users=["x"], created_at=old, expires_at=t - 1))  # ran out
    await publish(db, A, note(topic="news", created_at=old), threshold=0)
    await publish(db, B, note(all=True, created_at=old))
    gone = await publish(db, A, note(all=True, created_at=old))
    await db.delete_notification(A, gone.id, t)  # retracted: counted by nobody
    await publish(db, A, note(users=["w"], created_at=t))  # kept

    pruned = await db.prune(None, t - 500)

    assert sorted(pruned.unread) == [(A, "u"), (A, "v")]
    assert sorted(pruned.feeds) == [(A, "news"), (B, "*")]
    assert pruned.apps == []


async def test_prune_past_the_named_users_names_their_apps(db, monkeypatch):
    """Bounded: past RECOUNT_MAX users (or feeds), their apps instead."""
    from tidings.store.postgres import publish as pg_publish
    from tidings.store.sqlite import publish as sqlite_publish

    for module in (sqlite_publish, pg_publish):
        monkeypatch.setattr(module, "RECOUNT_MAX", 2)
    t, old = time.time(), time.time() - 1000
    await publish(db, A, note(users=["u", "v"], created_at=old))
    await publish(db, B, note(users=["u"], created_at=old))
    await publish(db, B, note(all=True, created_at=old))

    pruned = await db.prune(None, t - 500)

    assert (pruned.unread, pruned.apps) == ([], [A, B])
    assert pruned.feeds == [(B, "*")]  # as many as may be named


# -- isolation --------------------------------------------------------------------


async def test_apps_are_isolated(db):
    now = time.time()
    await db.add_api_key(A, "pfx_a", "hash-a", frozenset({"publish"}))
    await db.add_api_key(B, "pfx_b", "hash-b", frozenset({"admin"}))
    await db.subscribe(A, "news", ["u"])
    await db.put_preferences(A, "u", Preferences(categories={"promo": ChannelPrefs(in_app=False)}))
    p = await publish(db, A, note(users=["u"]))
    p2 = await publish(db, A, note(users=["u"]))  # stays unread
    t = await publish(db, A, note(topic="news"), threshold=0)
    f = await publish(db, A, note(all=True))
    await db.set_state(A, "u", [p.id], "read", now)

    # every read from B sees nothing of A
    assert await inbox_ids(db, B, "u", state="all") == []
    assert (await db.counts(B, "u", now))[:2] == (0, 0)
    assert await replay_all(db, B, "u") == ([], [])
    for nid in (p.id, p2.id, t.id, f.id):
        assert await db.get_notification(B, nid) is None
        assert await db.recipients_of(B, nid) == []
    assert await db.topic_info(B, "news", 10) == (0, [])
    assert await db.user_topics(B, "u") == []
    assert await db.get_preferences(B, "u") == Preferences()
    head_b = await db.stream_head(B, "u", now)
    assert (head_b.head_seq, head_b.head_feed) == (0, 0)
    assert (await db.find_api_key("pfx_a", "hash-a")).app_id == A
    assert (await db.find_api_key("pfx_b", "hash-b")).app_id == B
    assert await db.find_api_key("pfx_b", "hash-a") is None

    # every write through B leaves A alone
    assert await db.set_state(B, "u", [p.id, p2.id, t.id, f.id], "archived", now) == []
    assert await db.set_state(B, "u", None, "archived", now) == []
    assert await db.update_notification(B, p.id, b"{}") is None
    assert await db.delete_notification(B, p.id) is None
    assert await db.unsubscribe(B, "news", ["u"]) == 0
    states = {e.id: e.state for e in await db.inbox(
        A, "u", limit=10, before=None, state="all", now=now)}
    assert states == {p.id: "read", p2.id: "unseen", t.id: "unseen", f.id: "unseen"}
    assert (await db.counts(A, "u", now))[:2] == (3, 3)
    assert (await db.get_notification(A, p.id)).body != b"{}"

    # B's streams, feed and mutes are its own
    b_out = await publish(db, B, note(users=["u"], category="promo"))
    assert (b_out.recipients, b_out.muted) == (1, 0)
    assert [d.seq for d in b_out.deliveries] == [1]
    b_feed = await publish(db, B, note(all=True))
    assert b_feed.feed_offset == 1
    assert await inbox_ids(db, B, "u") == [b_feed.id, b_out.id]
    assert set(await inbox_ids(db, A, "u")) == {p.id, p2.id, t.id, f.id}
    assert (await db.stream_head(A, "u", now)).head_seq == 2


# -- delivery tracking ------------------------------------------------------------


async def test_delivery_counters_add_up_per_notification_channel_and_field(db):
    out = await publish(db, A, note(users=["u", "v"]))
    other = await publish(db, A, note(users=["u"]))
    assert await db.delivery_counts(A, out.id) == {}
    await db.record_delivery(A, out.id, "in_app", "delivered")
    await db.record_delivery(A, out.id, "in_app", "delivered", 2)
    await db.record_delivery(A, out.id, "webhook", "sent", 1)
    await db.record_deliveries({
        (A, out.id, "webhook", "failed"): 1, (A, out.id, "in_app", "delivered"): 4,
        (A, other.id, "email", "queued"): 7, (B, out.id, "in_app", "delivered"): 9,
    })
    await db.record_deliveries({})  # nothing to add: no error
    assert await db.delivery_counts(A, out.id) == {
        "in_app": {"delivered": 7}, "webhook": {"sent": 1, "failed": 1}}
    assert await db.delivery_counts(A, other.id) == {"email": {"queued": 7}}
    # per app: B's counter under the same id is B's alone
    assert await db.delivery_counts(B, out.id) == {"in_app": {"delivered": 9}}


async def test_concurrent_delivery_counters_lose_nothing(db):
    out = await publish(db, A, note(users=["u"]))
    await asyncio.gather(*(
        db.record_deliveries({(A, out.id, "in_app", "delivered"): 1,
                              (A, out.id, "push", "sent"): 2})
        for _ in range(40)
    ), *(db.record_delivery(A, out.id, "push", "failed") for _ in range(10)))
    assert await db.delivery_counts(A, out.id) == {
        "in_app": {"delivered": 40}, "push": {"sent": 80, "failed": 10}}


async def test_receipts_count_each_user_once_and_only_for_what_they_can_see(db):
    out = await publish(db, A, note(users=["u", "v"]))
    for u in ["w", "x"]:
        await db.subscribe(A, "big", [u])
    big = await publish(db, A, note(topic="big"), threshold=1)     # a feed item of a topic
    everyone = await publish(db, A, note(all=True))                # a broadcast
    assert await db.receipt_counts(A, out.id) == {}
    def r(app, nid, kind, user, device="d1", at=1.0):
        return (app, nid, kind, user, device, "Phone", at)

    await db.record_receipts([r(A, out.id, "delivered", "u"), r(A, out.id, "delivered", "v"),
                              r(A, out.id, "displayed", "u")])
    await db.record_receipts([r(A, out.id, "delivered", "u", at=2.0),  # a device repeating itself
                              r(A, out.id, "delivered", "u", "d2"),    # another device of u
                              r(A, out.id, "delivered", "mallory"),    # not a recipient
                              r(B, out.id, "delivered", "u"),          # another app's id
                              r(A, big.id, "delivered", "w"),
                              r(A, big.id, "delivered", "u"),     # does not follow the topic
                              r(A, everyone.id, "displayed", "anyone"),
                              r(A, next_id(), "delivered", "u")])  # no such notification
    await db.record_receipts([])                                   # nothing: no error
    assert await db.receipt_counts(A, out.id) == {"delivered": 2, "displayed": 1}
    assert await db.receipt_counts(A, big.id) == {"delivered": 1}
    assert await db.receipt_counts(A, everyone.id) == {"displayed": 1}
    assert await db.receipt_counts(B, out.id) == {}


# -- aggregation by group_key --------------------------------------------------------


def group_of(entry_or_delivery) -> dict:
    return msgspec.json.decode(entry_or_delivery.group)


async def test_a_grouped_notification_merges_into_the_unread_entry(db):
    first = await publish(db, A, note(users=["u", "v"], group="post:1", actor="ann"))
    assert [group_of(d)["count"] for d in first.deliveries] == [1, 1]
    second = await publish(db, A, note(users=["u"], group="post:1", actor="bob"))
    third = await publish(db, A, note(users=["u"], group="post:1", actor="ann"))
    (d,) = third.deliveries
    assert d.seq == 3  # the entry moved to u's next seq: a stream replays the update
    g = group_of(d)
    assert (g["id"], g["first_id"], g["key"]) == (first.id, first.id, "post:1")
    assert (g["count"], g["actor_count"], g["actors"]) == (3, 2, ["ann", "bob"])

    now = time.time()
    (entry,) = await db.inbox(A, "u", limit=10, before=None, state=None, now=now)
    assert (entry.id, entry.seq, entry.state) == (third.id, 3, "unseen")
    assert group_of(entry) == g
    personal, _ = await replay_all(db, A, "u")
    assert [(e.seq, e.id) for e in personal] == [(3, third.id)]
    assert group_of(personal[0]) == g
    personal, _ = await replay_all(db, A, "u", after_seq=2)
    assert [e.id for e in personal] == [third.id]
    assert (await db.stream_head(A, "u", now)).head_seq == 3
    assert (await db.counts(A, "u", now))[:2] == (1, 1)  # a group is one unread entry
    # v's entry is v's own
    (ventry,) = await db.inbox(A, "v", limit=10, before=None, state=None, now=now)
    assert (ventry.id, group_of(ventry)["count"]) == (first.id, 1)
    assert sorted(await db.recipients_of(A, first.id)) == ["u", "v"]
    assert await db.recipients_of(A, second.id) == ["u"]


async def test_a_group_merges_only_into_an_unread_live_entry_of_its_key(db):
    t = time.time()
    a = await publish(db, A, note(users=["u"], group="k", created_at=t))
    await db.set_state(A, "u", [a.id], "seen", t)
    b = await publish(db, A, note(users=["u"], group="k", created_at=t))
    assert group_of(b.deliveries[0])["count"] == 2  # seen is still unread
    (entry,) = await db.inbox(A, "u", limit=10, before=None, state=None, now=t)
    assert entry.state == "unseen"  # something new in it
    await db.set_state(A, "u", [b.id], "read", t)
    c = await publish(db, A, note(users=["u"], group="k", created_at=t))
    assert group_of(c.deliveries[0]) == {**group_of(c.deliveries[0]), "count": 1, "id": c.id}
    other = await publish(db, A, note(users=["u"], group="other", created_at=t))
    assert group_of(other.deliveries[0])["count"] == 1
    plain = await publish(db, A, note(users=["u"], created_at=t))
    assert plain.deliveries[0].group is None
    assert await inbox_ids(db, A, "u", state="all", now=t) == [plain.id, other.id, c.id, b.id]
    assert (await db.counts(A, "u", t))[:2] == (3, 3)
    # an expired entry is gone: a new one opens
    e1 = await publish(db, A, note(users=["w"], group="k", created_at=t, expires_at=t + 5))
    e2 = await publish(db, A, note(users=["w"], group="k", created_at=t + 10))
    assert group_of(e2.deliveries[0])["id"] == e2.id
    assert await inbox_ids(db, A, "w", now=t + 10) == [e2.id]
    assert e1.id not in await inbox_ids(db, A, "w", state="all", now=t + 10)


async def test_members_of_a_group_and_marking_an_older_member(db):
    ids = [(await publish(db, A, note(users=["u"], group="g", actor=f"a{i}"))).id
           for i in range(5)]
    now = time.time()
    for nid in (ids[0], ids[2], ids[4]):
        entry, members = await db.group_members(A, "u", nid, limit=10, before=None, now=now)
        assert entry.id == ids[4] and group_of(entry)["count"] == 5
        assert [m.id for m in members] == ids[::-1]
    _, page = await db.group_members(A, "u", ids[0], limit=2, before=ids[3], now=now)
    assert [m.id for m in page] == [ids[2], ids[1]]
    assert await db.group_members(A, "v", ids[0], limit=10, before=None, now=now) is None
    assert await db.group_members(A, "u", next_id(), limit=10, before=None, now=now) is None
    assert await db.group_members(B, "u", ids[0], limit=10, before=None, now=now) is None
    # a device still showing an older member marks the entry that holds it
    assert await db.set_state(A, "u", [ids[1]], "read", now) == [ids[4]]
    assert (await db.counts(A, "u", now))[:2] == (0, 0)
    stats = (await db.get_notification(A, ids[1])).stats
    assert stats == {"unseen": 0, "seen": 0, "read": 1, "archived": 0}
    assert (await db.get_notification(A, ids[4])).stats["read"] == 1
    entry, members = await db.group_members(A, "u", ids[1], limit=10, before=None, now=now)
    assert entry.state == "read" and {m.state for m in members} == {"read"}


async def test_retracting_a_group_member_leaves_the_rest(db):
    a = await publish(db, A, note(users=["u"], group="g", actor="ann"))
    b = await publish(db, A, note(users=["u"], group="g", actor="bob"))
    c = await publish(db, A, note(users=["u"], group="g", actor="cat"))
    await db.delete_notification(A, b.id)  # a middle one
    (entry,) = await db.inbox(A, "u", limit=10, before=None, state=None, now=time.time())
    assert entry.id == c.id
    assert (group_of(entry)["count"], group_of(entry)["actors"]) == (2, ["cat", "ann"])
    await db.delete_notification(A, c.id)  # the one the entry shows
    (entry,) = await db.inbox(A, "u", limit=10, before=None, state=None, now=time.time())
    assert (entry.id, entry.seq) == (a.id, 3)
    stored = await db.get_notification(A, a.id)
    assert (entry.body, entry.created_at) == (stored.body, stored.created_at)
    assert (group_of(entry)["count"], group_of(entry)["id"]) == (1, a.id)
    await db.delete_notification(A, a.id)
    assert await inbox_ids(db, A, "u", state="all") == []
    assert (await db.counts(A, "u", time.time()))[:2] == (0, 0)


async def test_a_retraction_says_what_each_holder_shows_now(db):
    t = time.time()
    a = await publish(db, A, note(users=["u", "v"], group="g", actor="ann", created_at=t - 3))
    b = await publish(db, A, note(users=["u", "v"], group="g", actor="bob", created_at=t - 2))
    c = await publish(db, A, note(users=["u", "v", "w"], group="g", actor="cat", created_at=t - 1))
    plain = await publish(db, A, note(users=["x"]))
    await db.set_state(A, "v", [c.id], "seen", t)
    gone = await db.delete_notification(A, c.id, t)  # the member the entries show
    assert (gone.notification.id, gone.users, gone.unread) == (c.id, ["u", "v", "w"], ["w"])
    shown = dict(gone.regrouped)
    assert sorted(shown) == ["u", "v"]  # w's entry held c alone: it went
    for user, state in (("u", "unseen"), ("v", "seen")):
        entry = shown[user]
        (page,) = await db.inbox(A, user, limit=10, before=None, state=None, now=t)
        # what a device is told is what the inbox page shows
        assert (entry.id, entry.body, entry.state, entry.seq, entry.created_at, entry.group) == (
            page.id, page.body, page.state, page.seq, page.created_at, page.group)
        assert (entry.id, entry.state, entry.seq) == (b.id, state, 3)
        assert entry.created_at == (await db.get_notification(A, b.id)).created_at
        g = group_of(entry)
        assert (g["id"], g["count"], g["actors"], g["first_id"]) == (a.id, 2, ["bob", "ann"], a.id)
    assert await inbox_ids(db, A, "w", state="all") == []
    assert (await db.counts(A, "w", t))[:2] == (0, 0)
    # an older member: the entry keeps its head, one member fewer
    gone = await db.delete_notification(A, a.id, t)
    assert (gone.users, gone.unread) == (["u", "v"], [])
    assert [(u, e.id, group_of(e)["count"], group_of(e)["first_id"])
            for u, e in gone.regrouped] == [("u", b.id, 1, b.id), ("v", b.id, 1, b.id)]
    # the last member: the entry goes, and only an unread one changes the counts
    await db.set_state(A, "v", [b.id], "read", t)
    gone = await db.delete_notification(A, b.id, t)
    assert (gone.users, gone.unread, gone.regrouped) == (["u", "v"], ["u"], [])
    assert await inbox_ids(db, A, "u", state="all") == []
    # a plain entry
    gone = await db.delete_notification(A, plain.id, t)
    assert (gone.users, gone.unread, gone.regrouped) == (["x"], ["x"], [])
    assert await db.delete_notification(A, plain.id, t) is None


async def test_a_group_entry_takes_the_time_and_expiry_of_the_member_it_shows(db):
    t = time.time()
    a = await publish(db, A, note(users=["u"], group="g", created_at=t - 20, expires_at=t + 10))
    b = await publish(db, A, note(users=["u"], group="g", created_at=t - 10))
    assert await inbox_ids(db, A, "u", now=t + 20) == [b.id]  # b has no expiry
    # b retracted, the entry shows a, which expired at t + 10: it is gone
    gone = await db.delete_notification(A, b.id, t + 20)
    assert (gone.regrouped, gone.unread) == ([], ["u"])
    assert await inbox_ids(db, A, "u", now=t + 20) == []
    assert (await db.counts(A, "u", t + 20))[:2] == (0, 0)
    assert await inbox_ids(db, A, "u", now=t) == [a.id]  # it was live until then
    # and the entry is as old as a for retention: pruning at a's time takes it
    await db.prune(A, t - 15)
    assert await inbox_ids(db, A, "u", state="all", now=t) == []


async def test_pruning_members_older_than_retention_rebuilds_their_group_entry(db):
    t = time.time()
    old = [await publish(db, A, note(users=["u", "v"], group="g", actor=f"old{i}",
                                     created_at=t - 1000)) for i in range(3)]
    new = [await publish(db, A, note(users=["u"], group="g", actor=actor, created_at=t))
           for actor in ("ann", "bob")]
    gone = await publish(db, A, note(users=["w"], group="g", created_at=t - 1000))
    (entry,) = await db.inbox(A, "u", limit=10, before=None, state=None, now=t)
    assert (group_of(entry)["count"], group_of(entry)["actor_count"]) == (5, 5)

    pruned = await db.prune(A, t - 500)

    (entry,) = await db.inbox(A, "u", limit=10, before=None, state=None, now=t)
    g = group_of(entry)
    # the entry rebuilt, as the inbox page shows it (for its holder's devices)
    assert [(app, user, e.id, e.state, e.seq, e.body, e.group)
            for app, user, e in pruned.regrouped] == [
        (A, "u", entry.id, entry.state, entry.seq, entry.body, entry.group)]
    # it counts, names and dates only the members it still holds
    assert (entry.id, g["id"], g["count"], g["actor_count"], g["actors"], g["first_id"]) == (
        new[1].id, old[0].id, 2, 2, ["bob", "ann"], new[0].id)
    got, members = await db.group_members(A, "u", new[0].id, limit=10, before=None, now=t)
    assert (got.id, [m.id for m in members]) == (new[1].id, [n.id for n in new[::-1]])
    assert await db.group_members(A, "u", old[0].id, limit=10, before=None, now=t) is None
    assert (await db.counts(A, "u", t))[:2] == (1, 1)
    # entries whose members all went are gone, as any entry that old
    assert await inbox_ids(db, A, "v", state="all", now=t) == []
    assert await inbox_ids(db, A, "w", state="all", now=t) == []
    assert gone.id not in await inbox_ids(db, A, "w", state="all", now=t)
    # a later merge counts from the rebuilt summary
    more = await publish(db, A, note(users=["u"], group="g", actor="cat", created_at=t))
    assert (group_of(more.deliveries[0])["count"], group_of(more.deliveries[0])["actor_count"]) \
        == (3, 3)


async def test_correcting_a_group_member_changes_that_member_only(db):
    a = await publish(db, A, note(users=["u"], group="g", actor="ann"))
    b = await publish(db, A, note(users=["u"], group="g", actor="bob"))
    now = time.time()
    (before,) = await db.inbox(A, "u", limit=10, before=None, state=None, now=now)
    fixed = msgspec.json.encode({"id": a.id, "title": "fixed", "group_key": "g", "actor": "ann"})
    await db.update_notification(A, a.id, fixed)
    (entry,) = await db.inbox(A, "u", limit=10, before=None, state=None, now=now)
    # the entry shows its newest member, and its summary has nothing a correction changes
    assert (entry.id, entry.body, entry.group) == (before.id, before.body, before.group)
    _, members = await db.group_members(A, "u", b.id, limit=10, before=None, now=now)
    assert [(m.id, m.body) for m in members] == [(b.id, before.body), (a.id, fixed)]
    # once the member it shows is retracted, it shows the corrected one
    (_, shown), = (await db.delete_notification(A, b.id, now)).regrouped
    (entry,) = await db.inbox(A, "u", limit=10, before=None, state=None, now=now)
    assert (shown.id, shown.body) == (entry.id, entry.body) == (a.id, fixed)


async def test_retractions_racing_grouped_publishes_leave_an_exact_count(db):
    first = [await publish(db, A, note(users=["u", "v"], group="race", actor=f"a{i}"))
             for i in range(10)]
    more = [note(users=["u", "v"], group="race", actor=f"b{i}") for i in range(10)]
    await asyncio.gather(*(db.delete_notification(A, o.id) for o in first[::2]),
                         *(publish(db, A, item) for item in more))
    now = time.time()
    for user in ("u", "v"):
        (entry,) = await db.inbox(A, user, limit=10, before=None, state=None, now=now)
        _, members = await db.group_members(A, user, entry.id, limit=100, before=None, now=now)
        assert len(members) == group_of(entry)["count"] == 15
        assert group_of(entry)["actor_count"] == 15
        assert {m.id for m in members} == {o.id for o in first[1::2]} | {i.id for i in more}


async def test_feed_items_never_aggregate(db):
    await db.subscribe(A, "big", ["u", "v"])
    f1 = await publish(db, A, note(all=True, group="g"))
    f2 = await publish(db, A, note(topic="big", group="g"), threshold=1)
    entries = await db.inbox(A, "u", limit=10, before=None, state=None, now=time.time())
    assert [(e.id, e.group) for e in entries] == [(f2.id, None), (f1.id, None)]
    # a topic at or below the threshold is fanned out on write, and aggregates
    t1 = await publish(db, A, note(topic="big", group="g"), threshold=10)
    t2 = await publish(db, A, note(topic="big", group="g"), threshold=10)
    assert {d.user: group_of(d)["count"] for d in t2.deliveries} == {"u": 2, "v": 2}
    assert await inbox_ids(db, A, "v") == [t2.id, f2.id, f1.id]
    assert t1.id not in await inbox_ids(db, A, "v", state="all")


async def test_concurrent_grouped_publishes_make_one_entry(db):
    # three actors: they fit the sample, so actor_count is exact (core/aggregate.py)
    items = [note(users=["u", "v"], group="race", actor=f"a{i % 3}") for i in range(20)]
    outs = await asyncio.gather(*(publish(db, A, it) for it in items))
    now = time.time()
    for user in ("u", "v"):
        entries = await db.inbox(A, user, limit=100, before=None, state=None, now=now)
        assert len(entries) == 1
        g = group_of(entries[0])
        assert (g["count"], g["actor_count"]) == (20, 3)
        assert (await db.stream_head(A, user, now)).head_seq == 20
        _, members = await db.group_members(A, user, entries[0].id, limit=100, before=None,
                                            now=now)
        assert sorted(m.id for m in members) == sorted(o.id for o in outs)
        assert (await db.counts(A, user, now))[:2] == (1, 1)


# -- scheduled delivery -------------------------------------------------------------


async def fire_all(store, now, *, threshold=THRESHOLD, limit=100):
    return await store.fire_due(now, limit, fanout_threshold=threshold)


async def test_a_scheduled_notification_fires_at_its_time(db):
    t = time.time()
    item = note(users=["u"], created_at=t, deliver_at=t + 100, expires_at=t + 200)
    out = await publish(db, A, item)
    assert (out.status, out.id, out.recipients, out.deliveries) == ("scheduled", item.id, 0, [])
    assert await inbox_ids(db, A, "u", now=t) == []
    assert await db.get_notification(A, item.id) is None
    s = await db.get_scheduled(A, item.id)
    assert (s.status, s.due_at, s.body, s.expires_at) == ("pending", t + 100, item.body, t + 200)
    assert await db.get_scheduled(B, item.id) is None
    assert await db.next_due() == t + 100
    assert await fire_all(db, t + 99) == []

    fired = await fire_all(db, t + 101)
    assert [(app, o.id, o.status, o.recipients) for app, o in fired] == [
        (A, item.id, "accepted", 1)]
    assert [(d.user, d.seq) for d in fired[0][1].deliveries] == [("u", 1)]
    assert fired[0][1].body == item.body
    stored = await db.get_notification(A, item.id)
    assert (stored.created_at, stored.expires_at, stored.recipients) == (t + 100, t + 200, 1)
    assert await inbox_ids(db, A, "u", now=t + 101) == [item.id]
    # "fired" until its outbound jobs are queued (or found to be none)
    assert (await db.get_scheduled(A, item.id)).status == "fired"
    assert await db.fired_unqueued(t + 102, 10) == [(A, item.id, t + 101)]
    assert await db.fired_unqueued(t + 100, 10) == []
    await db.mark_queued([(A, item.id)])
    assert (await db.get_scheduled(A, item.id)).status == "sent"
    assert await db.fired_unqueued(t + 1000, 10) == []
    assert await db.next_due() is None
    assert await fire_all(db, t + 500) == []  # once


async def test_a_prepared_fire_commits_its_outbound_jobs_with_it(db):
    """``prepare`` runs after the claim; what it sets commits with the fire,
    and the row is "sent" at once: a node that stops right after the fire's
    commit leaves no job behind for a later pass."""
    t = time.time()
    item = note(users=["u", "v"], created_at=t, deliver_at=t + 1, expires_at=t + 600)
    gone = note(users=["u"], created_at=t, deliver_at=t + 1, expires_at=t + 2)
    for it in (item, gone):
        await publish(db, A, it)
    seen = []

    async def refuse(app, it):
        raise RuntimeError("the broker is down")

    with pytest.raises(RuntimeError):
        await db.fire_due(t + 1.5, 10, fanout_threshold=THRESHOLD, prepare=refuse)
    assert (await db.get_scheduled(A, item.id)).status == "pending"  # nothing fired
    assert await db.get_notification(A, item.id) is None

    async def prepare(app, it):
        seen.append((app, it.id))
        it.users = ["u"]  # v over its cap
        job = Job(id=f"{it.id}.webhook.0", channel="webhook", app=app, user="u",
                  notification=it.body, destination={"url": "https://h.test/"},
                  created_at=t + 3, expires_at=it.expires_at)
        it.jobs = [NewJob(job=job, nid=it.id, not_before=t + 3)]

    fired = await db.fire_due(t + 3, 10, fanout_threshold=THRESHOLD, prepare=prepare)
    assert seen == [(A, item.id)]  # not the expired one
    assert sorted((o.id, o.status, o.recipients, o.unqueued) for _, o in fired) == sorted([
        (item.id, "accepted", 1, False), (gone.id, "expired", 0, False)])
    assert (await db.get_scheduled(A, item.id)).status == "sent"
    assert await db.fired_unqueued(t + 1000, 10) == []
    assert [(j.id, j.user) for j in await db.list_jobs(A, nid=item.id)] == [
        (f"{item.id}.webhook.0", "u")]
    assert await inbox_ids(db, A, "u", now=t + 3) == [item.id]
    assert await inbox_ids(db, A, "v", now=t + 3) == []
    assert await db.fire_due(t + 10, 10, fanout_threshold=THRESHOLD, prepare=prepare) == []
    assert seen == [(A, item.id)]


async def test_a_scheduled_notification_that_cannot_be_published_fails_alone(db):
    # its id is taken by then (a published notification with the same id),
    # so its notification row cannot be stored when it fires
    t = time.time()
    taken = await publish(db, A, note(users=["u"], created_at=t))
    bad = msgspec.structs.replace(note(users=["u", "v"], created_at=t, deliver_at=t + 100),
                                  id=taken.id)
    good = note(users=["v", "u"], created_at=t, deliver_at=t + 100)
    assert (await publish(db, A, bad)).status == "scheduled"
    assert (await publish(db, A, good)).status == "scheduled"
    fired = await fire_all(db, t + 101)
    assert sorted(o.status for _, o in fired) == ["accepted", "failed"]
    assert (await db.get_scheduled(A, good.id)).status == "fired"
    # the failed one took no seq: u's and v's seqs go on without a gap
    nxt = await publish(db, A, note(users=["u", "v"], created_at=t + 102))
    assert sorted((d.user, d.seq) for d in nxt.deliveries) == [("u", 3), ("v", 2)]
    for user, n in (("u", 3), ("v", 2)):
        personal, _ = await replay_all(db, A, user, now=t + 102)
        assert [e.seq for e in personal] == list(range(1, n + 1))


async def test_scheduled_broadcasts_and_groups_fire_like_publishes(db):
    t = time.time()
    b = await publish(db, A, note(all=True, created_at=t, deliver_at=t + 1))
    g1 = await publish(db, A, note(users=["u"], group="g", created_at=t))
    g2 = await publish(db, A, note(users=["u"], group="g", created_at=t, deliver_at=t + 2))
    fired = {o.id: o for _, o in await fire_all(db, t + 3)}
    assert fired[b.id].feed_offset is not None and fired[b.id].audience == "*"
    assert group_of(fired[g2.id].deliveries[0])["count"] == 2
    assert await inbox_ids(db, A, "u", now=t + 3) == [g2.id, b.id]
    assert g1.id not in await inbox_ids(db, A, "u", state="all", now=t + 3)


async def test_scheduled_notifications_fire_once_across_callers_and_nodes(make_store, db):
    t = time.time()
    items = [note(users=[f"u{i % 3}"], created_at=t, deliver_at=t + 1 + i / 100)
             for i in range(30)]
    for it in items:
        await publish(db, A, it)
    other = make_store()  # a second node over the same storage
    await other.open()
    try:
        async def drain(store):
            got = []
            while True:
                batch = await fire_all(store, t + 10, limit=3)
                if not batch:
                    return got
                got += batch
        runs = await asyncio.gather(*(drain(s) for s in (db, other, db, other)))
    finally:
        await other.close()
    fired = [o.id for run in runs for _, o in run]
    assert sorted(fired) == sorted(it.id for it in items)  # each exactly once
    for user in ("u0", "u1", "u2"):
        mine = [it.id for it in items if it.users == [user]]
        assert sorted(await inbox_ids(db, A, user, now=t + 10)) == sorted(mine)
        assert (await db.stream_head(A, user, t)).head_seq == len(mine)


async def test_an_edit_before_it_fires_is_what_fires(db):
    t = time.time()
    item = note(users=["u", "v"], created_at=t, deliver_at=t + 100, expires_at=t + 160)
    await publish(db, A, item)

    def move(s):
        assert (s.body, s.due_at, s.expires_at, s.status) == (
            item.body, t + 100, t + 160, "pending")
        return ScheduledEdit(b'{"title": "edited"}', t + 10, t + 70)

    assert await db.edit_scheduled(B, item.id, move) is None  # another app's
    edited = await db.edit_scheduled(A, item.id, move)
    assert (edited.body, edited.due_at, edited.expires_at) == (b'{"title": "edited"}', t + 10,
                                                              t + 70)
    got = await db.get_scheduled(A, item.id)
    assert (got.body, got.due_at, got.expires_at, got.status) == (
        b'{"title": "edited"}', t + 10, t + 70, "pending")
    assert await db.next_due() == t + 10

    def refuse(s):
        raise ValueError("no")

    with pytest.raises(ValueError):
        await db.edit_scheduled(A, item.id, refuse)
    assert (await db.get_scheduled(A, item.id)).body == b'{"title": "edited"}'
    # what prepare is handed (the edited notification) is what fires, to the
    # users it leaves
    prepared = []

    async def prepare(app, it):
        prepared.append((app, it.id, it.users, it.body))
        it.users = ["v"]

    fired = await db.fire_due(t + 11, 10, fanout_threshold=THRESHOLD, prepare=prepare)
    assert prepared == [(A, item.id, ["u", "v"], b'{"title": "edited"}')]
    assert [(app, o.id, o.recipients, o.body) for app, o in fired] == [
        (A, item.id, 1, b'{"title": "edited"}')]
    stored = await db.get_notification(A, item.id)
    assert (stored.created_at, stored.expires_at) == (t + 10, t + 70)
    assert await inbox_ids(db, A, "u", now=t + 11) == []
    assert await inbox_ids(db, A, "v", now=t + 11) == [item.id]
    # fired: no longer edited here
    assert await db.edit_scheduled(A, item.id, move) is None


async def test_cancel_a_scheduled_notification(db):
    t = time.time()
    item = note(users=["u"], created_at=t, deliver_at=t + 5)
    await publish(db, A, item)
    assert await db.cancel_scheduled(B, item.id) is False
    assert await db.cancel_scheduled(A, item.id) is True
    assert await db.cancel_scheduled(A, item.id) is False
    assert (await db.get_scheduled(A, item.id)).status == "cancelled"
    assert await fire_all(db, t + 10) == []
    assert await inbox_ids(db, A, "u", now=t + 10) == []
    assert await db.next_due() is None
    # one that already fired is not cancelled
    sent = note(users=["u"], created_at=t, deliver_at=t + 5)
    await publish(db, A, sent)
    await fire_all(db, t + 10)
    assert await db.cancel_scheduled(A, sent.id) is False
    assert await db.cancel_scheduled(A, next_id()) is False


async def test_a_scheduled_notification_past_its_expiry_is_dropped(db):
    t = time.time()
    late = note(users=["u"], created_at=t, deliver_at=t + 10, expires_at=t + 20)
    await publish(db, A, late)
    fired = await fire_all(db, t + 30)  # the node was down until after the expiry
    assert [(app, o.id, o.status, o.recipients) for app, o in fired] == [
        (A, late.id, "expired", 0)]
    assert await db.get_notification(A, late.id) is None
    assert await inbox_ids(db, A, "u", state="all", now=t + 15) == []
    assert (await db.stream_head(A, "u", t)).head_seq == 0
    assert (await db.get_scheduled(A, late.id)).status == "expired"


async def test_a_scheduled_publish_is_idempotent_and_survives_reopen(make_store, db):
    t = time.time()
    first = await publish(db, A, note(users=["u"], key="k", created_at=t, deliver_at=t + 5))
    again = await publish(db, A, note(users=["u"], key="k", created_at=t, deliver_at=t + 5))
    assert (first.status, again.status, again.id) == ("scheduled", "duplicate", first.id)
    store = await reopen(make_store, db)
    try:
        assert await store.next_due() == t + 5
        fired = await fire_all(store, t + 6)
        assert [o.id for _, o in fired] == [first.id]
        assert await inbox_ids(store, A, "u", now=t + 6) == [first.id]
    finally:
        await store.close()


async def test_prune_drops_finished_schedules_and_old_counters(db):
    t = time.time()
    old = note(users=["u"], created_at=t - 1000, deliver_at=t - 999)
    old.id = new_id(int((t - 999) * 1000))  # ids are minted when published
    await publish(db, A, old)
    await fire_all(db, t - 998)
    await db.record_delivery(A, old.id, "in_app", "delivered")
    keep = note(users=["u"], created_at=t - 1000, deliver_at=t + 999)
    await publish(db, A, keep)
    await db.prune(A, t - 500)
    assert await db.get_scheduled(A, old.id) is None
    assert await db.delivery_counts(A, old.id) == {}
    assert (await db.get_scheduled(A, keep.id)).status == "pending"  # pending is kept


async def test_inbox_pages_by_id_when_a_late_entry_has_an_older_id(db):
    # A scheduled notification that fires late (its node was down) has an id
    # older than entries published meanwhile, and a later seq; so does a group
    # entry whose newest member was retracted.  Pages must still list every
    # entry once, newest id first.
    t = time.time()
    late = note(users=["u"], created_at=t, deliver_at=t + 1)
    await publish(db, A, late)
    meanwhile = [await publish(db, A, note(users=["u"], created_at=t)) for _ in range(3)]
    await fire_all(db, t + 60)
    personal, _ = await replay_all(db, A, "u", now=t + 60)
    assert [e.id for e in personal] == [o.id for o in meanwhile] + [late.id]  # seq order
    expected = sorted([late.id] + [o.id for o in meanwhile], reverse=True)
    assert await inbox_ids(db, A, "u", now=t + 60) == expected
    pages, before = [], None
    while page := await inbox_ids(db, A, "u", limit=1, before=before, now=t + 60):
        pages += page
        before = page[-1]
    assert pages == expected


# -- snooze (docs/inbox.md#snooze) -------------------------------------------------


async def test_a_snoozed_entry_is_out_of_pages_counts_and_replay_until_it_is_back(db):
    ids = [(await publish(db, A, note(users=["u"]))).id for _ in range(3)]
    feed = (await publish(db, A, note(all=True))).id
    now = time.time()
    await db.set_state(A, "u", [ids[0]], "read", now)
    rev = (await db.counts(A, "u", now)).rev
    # a feed item, another user's entry and an unknown id are left as they are
    assert sorted(await db.snooze(A, "u", [ids[0], ids[1], feed, next_id()], now + 60,
                                  now)) == [ids[0], ids[1]]
    assert await db.snooze(A, "other", [ids[2]], now + 60, now) == []
    counts = await db.counts(A, "u", now)
    assert (counts.unread, counts.rev > rev) == (2, True)  # ids[2] and the feed item
    assert await inbox_ids(db, A, "u", now=now) == [feed, ids[2]]
    snoozed = await db.inbox(A, "u", limit=10, before=None, state="snoozed", now=now)
    assert [(e.id, e.state, e.snoozed_until) for e in snoozed] == [
        (ids[1], "snoozed", now + 60), (ids[0], "snoozed", now + 60)]
    assert sorted(await db.set_state(A, "u", None, "archived", now)) == sorted([ids[2], feed])
    personal, _ = await replay_all(db, A, "u", now=now)
    assert [e.id for e in personal] == [ids[2]]
    assert await db.next_snooze() == now + 60

    assert await db.wake_snoozed(now + 59, 10) == []
    (back,) = await db.resurface(A, "u", [ids[1]], now + 1)  # unsnoozed early
    assert (back.user, back.entry.id, back.entry.seq, back.entry.state) == ("u", ids[1], 4,
                                                                               "unseen")
    assert await db.resurface(A, "u", [ids[1]], now + 1) == []  # once
    (woken,) = await db.wake_snoozed(now + 61, 10)
    assert (woken.app_id, woken.user, woken.entry.id, woken.entry.seq) == (A, "u", ids[0], 5)
    assert await db.wake_snoozed(now + 61, 10) == []
    assert await db.next_snooze() is None
    # first in the page (newest back first), unread; the replay brings them at their new seqs
    assert await inbox_ids(db, A, "u", now=now + 61) == [ids[0], ids[1]]
    assert (await db.counts(A, "u", now + 61)).unread == 2
    page = await db.inbox(A, "u", limit=1, before=None, state=None, now=now + 61)
    assert await inbox_ids(db, A, "u", before=page[0].place, now=now + 61) == [ids[1]]
    personal, _ = await replay_all(db, A, "u", after_seq=3, now=now + 61)
    assert [(e.id, e.seq, e.key is not None) for e in personal] == [(ids[1], 4, True),
                                                                      (ids[0], 5, True)]
    assert (await db.stream_head(A, "u", now)).head_seq == 5


async def test_a_notification_of_1000_recipients_finds_each_entry_wherever_it_went(db):
    """Retract, correct, counts by state, receipts and timelines find a
    fan-out's entries by notification: plain ones, one back from a snooze
    at a later seq, and a user id that JSON escapes (the SQLite store keeps
    no inbox index by notification id since v23)."""
    users = [f"u{i:04d}" for i in range(998)] + ['q"uo\\te', "bäck"]
    await db.subscribe(A, "crowd", users)
    out = await publish(db, A, note(topic="crowd"), threshold=1000)
    other = await publish(db, A, note(users=["u0001", "bäck"]))
    assert out.recipients == 1000
    now = time.time()
    await db.snooze(A, "bäck", [out.id], now + 60, now)
    (back,) = await db.resurface(A, "bäck", [out.id], now)
    assert back.entry.seq == 3  # a later seq than its publish gave it
    assert await db.set_state(A, "bäck", [out.id], "read", now) == [out.id]
    assert await db.set_state(A, 'q"uo\\te', [out.id], "seen", now) == [out.id]
    assert await db.set_state(A, "u0001", [out.id], "archived", now) == [out.id]
    stored = await db.get_notification(A, out.id)
    assert stored is not None
    assert stored.stats == {"unseen": 997, "seen": 1, "read": 1, "archived": 1}
    assert sorted(await db.recipients_of(A, out.id)) == sorted(users)
    for user in ("bäck", 'q"uo\\te', "u0500"):
        timeline = await db.timeline(A, out.id, user)
        assert timeline is not None and timeline.recipient
    assert (await db.timeline(A, out.id, "bäck")).read_at == now
    assert not (await db.timeline(A, out.id, "stranger")).recipient
    await db.record_receipts([(A, out.id, "delivered", u, "d1", None, now)
                              for u in ("bäck", 'q"uo\\te', "u0007", "stranger")])
    assert await db.receipt_counts(A, out.id) == {"delivered": 3}

    assert (await db.update_notification(A, out.id, b'{"title": "fixed"}')) is not None
    gone = await db.delete_notification(A, out.id, now)
    assert gone is not None and sorted(gone.users) == sorted(users)
    assert len(gone.unread) == 998  # all but the read one and the archived one
    for user in ("bäck", 'q"uo\\te', "u0001", "u0999"):
        assert out.id not in await inbox_ids(db, A, user, state="all", now=now)
    assert await inbox_ids(db, A, "bäck", now=now) == [other.id]
    assert sorted(await db.recipients_of(A, other.id)) == ["bäck", "u0001"]


async def test_outcomes_stay_out_of_the_cycle_collector(store):
    """A publish's outcome and its deliveries hold no cycle (strings, numbers,
    bytes and lists of them): the cycle collector does not track them, so a
    batch's hundreds cost neither its bookkeeping nor earlier collections."""
    import gc

    outs = await store.publish_many("a", [note(users=["u1"]), note(users=["u1", "u2"])],
                                    fanout_threshold=THRESHOLD, window=WINDOW)
    assert [len(o.deliveries) for o in outs] == [1, 2]
    assert not any(gc.is_tracked(o) for o in outs)
    assert not any(gc.is_tracked(d) for o in outs for d in o.deliveries)
