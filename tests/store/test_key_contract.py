"""API keys' expiry, rotation and last use in the store contract
(tidings/store/base.py): a key keeps the expiry it was given, a rotation
makes a successor and never lengthens the old key's life, the app keeps an
admin key that does not expire, and a key's last use only moves later.

Runs once per backend (SQLite and PostgreSQL); times are explicit.
"""

from __future__ import annotations

import asyncio

import pytest

from tidings.store.base import (
    LAST_ADMIN_KEY,
    LIMIT_REACHED,
    NO_SUCH_KEY,
    REVOKED,
    KeyInfo,
    Rotated,
)

A, B = "app_a", "app_b"
T0 = 1_700_000_000.0
LATER = 4_000_000_000.0  # an expiry that is in the future whenever the test runs
ADMIN, PUBLISH = frozenset({"admin"}), frozenset({"publish", "read"})


@pytest.fixture
async def db(store):
    """The store with two apps, A and B."""
    await store.create_app(A, "app A", "secret-a")
    await store.create_app(B, "app B", "secret-b")
    return store


async def test_a_key_keeps_the_expiry_it_was_made_with(db):
    await db.add_api_key(A, "pfx_e", "he", PUBLISH, "ci", created_at=T0, expires_at=T0 + 60.25)
    await db.add_api_key(A, "pfx_n", "hn", ADMIN, created_at=T0 + 1)
    # found whether or not it has expired: the caller's clock decides
    assert (await db.find_api_key("pfx_e", "he")).expires_at == T0 + 60.25
    assert (await db.find_api_key("pfx_n", "hn")).expires_at is None
    assert await db.list_api_keys(A) == [
        KeyInfo("pfx_e", PUBLISH, "ci", T0, T0 + 60.25, None),
        KeyInfo("pfx_n", ADMIN, None, T0 + 1, None, None)]


async def test_a_rotation_makes_a_successor_and_shortens_the_old_keys_life(db):
    await db.add_api_key(A, "pfx_old", "ho", PUBLISH, "ci", created_at=T0)
    await db.add_api_key(B, "pfx_b", "hb", ADMIN, created_at=T0)
    done = await db.rotate_api_key(A, "pfx_old", "pfx_new", "hn", expires_at=T0 + 500,
                                   created_at=T0 + 10)
    assert done == Rotated(KeyInfo("pfx_old", PUBLISH, "ci", T0, T0 + 500, None),
                           KeyInfo("pfx_new", PUBLISH, "ci", T0 + 10, None, None))
    assert (await db.find_api_key("pfx_new", "hn")).scopes == PUBLISH
    assert (await db.find_api_key("pfx_old", "ho")).expires_at == T0 + 500
    # again, with a longer grace: the sooner expiry stays
    again = await db.rotate_api_key(A, "pfx_old", "pfx_new2", "hn2", expires_at=T0 + 900)
    assert isinstance(again, Rotated) and again.old.expires_at == T0 + 500
    # with a shorter one: it moves sooner
    sooner = await db.rotate_api_key(A, "pfx_old", "pfx_new3", "hn3", expires_at=T0 + 20)
    assert isinstance(sooner, Rotated) and sooner.old.expires_at == T0 + 20
    assert [k.prefix for k in await db.list_api_keys(A)] == [
        "pfx_old", "pfx_new", "pfx_new2", "pfx_new3"]
    # another app's key, or none: nothing is made
    assert await db.rotate_api_key(A, "pfx_b", "pfx_x", "hx", expires_at=T0) == NO_SUCH_KEY
    assert await db.rotate_api_key(A, "pfx_none", "pfx_x", "hx", expires_at=T0) == NO_SUCH_KEY
    assert await db.find_api_key("pfx_x", "hx") is None
    assert (await db.find_api_key("pfx_b", "hb")).expires_at is None


async def test_a_rotation_stays_within_the_key_limit(db):
    await db.add_api_key(A, "pfx_1", "h1", ADMIN)
    await db.add_api_key(A, "pfx_2", "h2", PUBLISH)
    assert await db.rotate_api_key(A, "pfx_2", "pfx_3", "h3", expires_at=T0,
                                   limit=2) == LIMIT_REACHED
    assert (await db.find_api_key("pfx_2", "h2")).expires_at is None  # nothing changed
    assert await db.find_api_key("pfx_3", "h3") is None
    assert isinstance(await db.rotate_api_key(A, "pfx_2", "pfx_3", "h3", expires_at=T0,
                                              limit=3), Rotated)


async def test_expired_keys_are_listed_but_take_no_place_under_the_limit(db):
    await db.add_api_key(A, "pfx_a", "ha", ADMIN, created_at=T0)
    for i in range(2):
        assert await db.add_api_key(A, f"pfx_e{i}", "he", PUBLISH, created_at=T0,
                                    expires_at=T0 + 60, limit=3)
    # at the limit while they live, for a new key and for a rotation's
    assert not await db.add_api_key(A, "pfx_x", "hx", PUBLISH, created_at=T0 + 59, limit=3)
    assert await db.rotate_api_key(A, "pfx_a", "pfx_r", "hr", expires_at=T0 + 9999,
                                   limit=3, created_at=T0 + 59) == LIMIT_REACHED
    # expired (at their expires_at, as the service refuses them): no place
    assert await db.add_api_key(A, "pfx_n", "hn", PUBLISH, created_at=T0 + 60, limit=3)
    assert isinstance(await db.rotate_api_key(A, "pfx_n", "pfx_r", "hr", expires_at=T0 + 9999,
                                              limit=3, created_at=T0 + 61), Rotated)
    assert not await db.add_api_key(A, "pfx_x", "hx", PUBLISH, created_at=T0 + 61, limit=3)
    assert [k.prefix for k in await db.list_api_keys(A)] == [
        "pfx_a", "pfx_e0", "pfx_e1", "pfx_n", "pfx_r"]


async def test_expired_keys_are_dropped_once_past_the_cutoff(db):
    await db.add_api_key(A, "pfx_a", "ha", ADMIN, created_at=T0)
    await db.add_api_key(A, "pfx_old", "ho", PUBLISH, created_at=T0, expires_at=T0 + 10)
    await db.add_api_key(A, "pfx_new", "hn", PUBLISH, created_at=T0, expires_at=T0 + 100)
    await db.add_api_key(B, "pfx_b", "hb", PUBLISH, created_at=T0, expires_at=T0 + 20)
    assert await db.drop_expired_api_keys(T0 + 50) == 2  # every app's
    assert [k.prefix for k in await db.list_api_keys(A)] == ["pfx_a", "pfx_new"]
    assert await db.list_api_keys(B) == []
    assert await db.find_api_key("pfx_old", "ho") is None
    assert await db.drop_expired_api_keys(T0 + 50) == 0


async def test_an_app_keeps_an_admin_key_that_does_not_expire(db):
    await db.add_api_key(A, "pfx_a", "ha", ADMIN)
    await db.add_api_key(A, "pfx_soon", "hs", ADMIN, expires_at=T0 + 3600)
    # an admin key that expires does not stand in for the last one that does not
    assert await db.revoke_api_key(A, "pfx_a") == LAST_ADMIN_KEY
    assert await db.revoke_api_key(A, "pfx_soon") == REVOKED
    # rotating the last one leaves its successor, which does not expire
    await db.rotate_api_key(A, "pfx_a", "pfx_a2", "ha2", expires_at=T0 + 60)
    assert await db.revoke_api_key(A, "pfx_a2") == LAST_ADMIN_KEY
    assert await db.revoke_api_key(A, "pfx_a") == REVOKED
    assert [(k.prefix, k.expires_at) for k in await db.list_api_keys(A)] == [("pfx_a2", None)]


async def test_rotations_at_once_on_two_nodes_stay_within_the_limit(make_store, db):
    other = make_store()
    await other.open()
    try:
        await db.add_api_key(A, "pfx_0", "h0", ADMIN)
        outcomes = await asyncio.gather(*(
            # made now, each old key still live (an expired one takes no place)
            s.rotate_api_key(A, "pfx_0", f"pfx_r{i}", "h", expires_at=LATER + i, limit=3)
            for i, s in enumerate((db, other) * 3)))
        assert sum(isinstance(o, Rotated) for o in outcomes) == 2
        assert outcomes.count(LIMIT_REACHED) == 4
        keys = await other.list_api_keys(A)
        assert len(keys) == 3 and keys[0].expires_at in {LATER + i for i in range(6)}
    finally:
        await other.close()


async def test_a_keys_last_use_only_moves_later(make_store, db):
    await db.add_api_key(A, "pfx_a", "ha", ADMIN, created_at=T0)
    await db.add_api_key(A, "pfx_p", "hp", PUBLISH, created_at=T0 + 1)
    await db.add_api_key(B, "pfx_b", "hb", ADMIN, created_at=T0)
    await db.note_api_keys_used([])  # nothing: no write
    await db.note_api_keys_used([(A, "pfx_a", T0 + 50), (A, "pfx_p", T0 + 40),
                                 (A, "pfx_gone", T0 + 40),  # revoked meanwhile: skipped
                                 (A, "pfx_b", T0 + 40)])  # another app's: untouched
    other = make_store()  # a node whose notes are older
    await other.open()
    try:
        await other.note_api_keys_used([(A, "pfx_a", T0 + 30), (A, "pfx_p", T0 + 45)])
    finally:
        await other.close()
    assert [(k.prefix, k.last_used_at) for k in await db.list_api_keys(A)] == [
        ("pfx_a", T0 + 50), ("pfx_p", T0 + 45)]
    assert (await db.list_api_keys(B))[0].last_used_at is None
