"""API keys that expire, and their rotation, over real HTTP
(tidings/service/keys.py, docs/security.md#key-expiry-and-rotation): an
expired key is refused with 401 ``key_expired`` on every node, a cached one
included, and is not counted as a guess; a rotation makes a key with the same
scopes and name and ends the old one after its grace period.

On both stores; the cluster tests run two nodes over the test PostgreSQL with
Redis, or with PostgreSQL as the broker too.  Where a test moves time, the
keys' wall clock and their caches' clocks are the test's.
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime

import httpx
import pytest

from tests.api.conftest import store_overrides
from tests.api.test_hostile import assert_error
from tests.api.test_key_failures import _client, _codes, _count_key_reads, _reads, wrong
from tests.api.test_keys import KEYS, _publish
from tests.conftest import run_server, two_nodes
from tidings.config import Limits
from tidings.service.keys import KEY_CACHE_TTL, ROTATION_GRACE


class Clock:
    """Wall time that moves only when the test says."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds")


def _on_clock(server) -> Clock:
    """The server's keys on a clock the test moves: their expiry, and how
    long their caches keep an entry."""
    clock = Clock()
    keys = server.service.keys
    keys.clock = keys.cache.clock = keys._expired.clock = keys._live.clock = clock
    return clock


async def _made(http, **body) -> dict:
    r = await http.post(KEYS, json={"scopes": ["publish"], **body})
    assert r.status_code == 201, r.text
    return r.json()


async def _refusal(server, key: str) -> dict:
    async with server.http(key) as http:
        r = await http.post("/v1/notifications", json={"to": {"users": ["ann"]}})
        return assert_error(r, 401, "key_expired")


async def _until_expired(server, key: str, within: float) -> float:
    """Publish with ``key`` until it is refused as expired; the seconds that
    took.  Fails after ``within`` seconds, or on any other refusal."""
    start = time.monotonic()
    async with server.http(key) as http:
        while True:
            r = await http.post("/v1/notifications", json={"to": {"users": ["ann"]}})
            if r.status_code == 401:
                assert_error(r, 401, "key_expired")
                return time.monotonic() - start
            assert r.status_code == 202, r.text
            assert time.monotonic() - start < within, f"the key still works after {within} s"
            await asyncio.sleep(0.02)


# -- expiry ------------------------------------------------------------------------------

async def test_an_expired_key_is_refused_even_from_the_nodes_cache(each_store):
    server = each_store
    clock = _on_clock(server)
    server.service.keys.cache.ttl = 3600  # only the expiry may end the entry
    async with server.http() as http:
        made = await _made(http, name="ci", expires_at=_iso(clock.now + 60))
        assert made["expires_at"] == _iso(clock.now + 60)
        assert made["last_used_at"] is None
    key = made["api_key"]
    _count_key_reads(server)
    assert await _publish(server, key) == 202  # read once, then cached
    clock.now += 59.9
    assert await _publish(server, key) == 202
    assert _reads(server) == 1  # from the cache
    clock.now += 0.2
    err = await _refusal(server, key)
    assert made["expires_at"] in err["message"]
    assert _reads(server) == 2  # the cache entry ended with the key
    # a wrong key is still told apart, and the app's other keys work
    async with server.http("tk_0123abcd_not-a-key") as http:
        assert_error(await http.get(KEYS), 401, "bad_api_key")
    assert await _publish(server, server.api_key) == 202
    async with server.http() as http:  # listed, expired, until it is revoked
        listed = {k["prefix"]: k for k in (await http.get(KEYS)).json()["keys"]}
        assert listed[made["prefix"]]["expires_at"] == made["expires_at"]
        assert (await http.delete(f"{KEYS}/{made['prefix']}")).status_code == 204
    async with server.http(key) as http:
        r = await http.post("/v1/notifications", json={"to": {"users": ["ann"]}})
        assert_error(r, 401, "bad_api_key")  # revoked now: no such key at all


@pytest.mark.parametrize("broker", ["redis", "postgres"])
async def test_a_key_expires_on_another_node_that_cached_it(tmp_path, broker):
    """Node B verified the key and would trust it for an hour: the entry
    ends with the key, on B's own clock, with no message from anyone."""
    overrides = {} if broker == "redis" else {"broker": None}  # the store's LISTEN/NOTIFY
    async with two_nodes(tmp_path, **overrides) as (a, b):
        b.service.keys.cache.ttl = 3600
        async with a.http() as http:
            made = await _made(http, expires_at=_iso(time.time() + 1.5))
        ends = datetime.fromisoformat(made["expires_at"]).timestamp()
        assert await _publish(b, made["api_key"]) == 202  # cached on B
        await _until_expired(b, made["api_key"], within=3)
        assert 0 <= time.time() - ends < 0.5
        await _refusal(a, made["api_key"])


async def test_an_expired_key_is_not_a_guess_and_costs_one_read_per_cache_ttl(tmp_path):
    """The right key, too old: it never counts against the limit of failed
    key checks, and repeating it reads the store once per KEY_CACHE_TTL."""
    limits = Limits(key_failures_per_address=3, key_failures_per_node=20)
    async with run_server(tmp_path, limits=limits) as server:
        clock = _on_clock(server)
        server.service.keys.failures.clock = clock
        async with server.http() as http:
            made = await _made(http, expires_at=_iso(clock.now + 10))
        clock.now += 11
        _count_key_reads(server)
        async with _client(server) as http:
            assert await _codes(http, [made["api_key"]] * 20) == [401] * 20  # never 429
            assert _reads(server) == 1
            clock.now += KEY_CACHE_TTL
            assert await _codes(http, [made["api_key"]]) == [401]
            assert _reads(server) == 2
            # the address's budget is whole: three wrong keys, then 429
            assert await _codes(http, [wrong(i) for i in range(4)]) == [401] * 3 + [429]
            r = await http.post(KEYS, headers={"Authorization": f"Bearer {made['api_key']}"})
            assert_error(r, 401, "key_expired")  # known expired: answered, even now


async def test_an_expired_key_at_the_login_form_is_not_a_failed_login(tmp_path):
    limits = Limits(login_failures_per_address=2, login_failures_per_node=20)
    async with run_server(tmp_path, limits=limits) as server:
        clock = _on_clock(server)
        async with server.http() as http:
            r = await http.post(KEYS, json={"scopes": ["admin"],
                                            "expires_at": _iso(clock.now + 10)})
            key = r.json()["api_key"]
        clock.now += 11
        async with httpx.AsyncClient(base_url=server.url, timeout=10) as browser:
            for _ in range(5):
                r = await browser.post("/dashboard/login", data={"key": key})
                assert r.status_code == 401 and "expired" in r.text
            wrong = [(await browser.post("/dashboard/login", data={"key": k})).status_code
                     for k in ("tk_0123abcd_not-a-key", "tk_0123abcd_not-a-key2", "x")]
            assert wrong == [401, 401, 429]  # the address's budget was whole


async def test_a_dashboard_session_ends_when_its_key_expires(server):
    clock = _on_clock(server)
    async with server.http() as http:
        r = await http.post(KEYS, json={"scopes": ["admin"], "expires_at": _iso(clock.now + 30)})
        key = r.json()["api_key"]
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as browser:
        login = await browser.post("/dashboard/login", data={"key": key})
        assert login.status_code == 303
        cookies = {"Cookie": login.headers["set-cookie"].split(";")[0]}
        assert (await browser.get("/dashboard/api/snapshot", headers=cookies)).status_code == 200
        clock.now += 31
        r = await browser.get("/dashboard/api/snapshot", headers=cookies)
        assert "expired" in assert_error(r, 401, "session_revoked")["message"]


# -- rotation ----------------------------------------------------------------------------

async def test_a_rotation_makes_a_key_like_the_old_one_which_ends_after_its_grace(each_store):
    server = each_store
    clock = _on_clock(server)
    async with server.http() as http:
        old = await _made(http, scopes=["publish", "read"], name="ci")
    assert await _publish(server, old["api_key"]) == 202  # cached
    async with server.http() as http:
        r = await http.post(f"{KEYS}/{old['prefix']}/rotate")  # no body: the default grace
        assert r.status_code == 201, r.text
        new = r.json()
    assert new["api_key"].startswith(f"tk_{new['prefix']}_") and new["prefix"] != old["prefix"]
    assert (new["scopes"], new["name"], new["expires_at"]) == (["publish", "read"], "ci", None)
    assert new["replaces"]["prefix"] == old["prefix"]
    assert new["replaces"]["expires_at"] == _iso(clock.now + ROTATION_GRACE)
    assert new["api_key"] not in str(new["replaces"])
    # both work during the grace period; then the old one is refused
    assert await _publish(server, old["api_key"]) == 202
    assert await _publish(server, new["api_key"]) == 202
    clock.now += ROTATION_GRACE
    await _refusal(server, old["api_key"])
    assert await _publish(server, new["api_key"]) == 202

    # grace 0, for a leaked key: refused from the answer on, the cache included
    async with server.http() as http:
        r = await http.post(f"{KEYS}/{new['prefix']}/rotate", json={"grace": 0})
        newest = r.json()
        assert newest["replaces"]["expires_at"] == _iso(clock.now)
    await _refusal(server, new["api_key"])
    assert await _publish(server, newest["api_key"]) == 202
    async with server.http() as http:
        listed = {k["prefix"]: k["expires_at"] for k in (await http.get(KEYS)).json()["keys"]}
    assert listed == {server.api_key.split("_")[1]: None,
                      old["prefix"]: new["replaces"]["expires_at"],
                      new["prefix"]: newest["replaces"]["expires_at"], newest["prefix"]: None}


async def test_rotating_the_last_admin_key_leaves_the_app_an_admin_key(server):
    mine = server.api_key.split("_")[1]
    async with server.http() as http:
        r = await http.post(f"{KEYS}/{mine}/rotate", json={"grace": 60})  # itself
        assert r.status_code == 201
        successor = r.json()
        assert successor["scopes"] == ["admin", "publish", "read"]
    async with server.http(successor["api_key"]) as http:
        # the successor is now the app's last admin key that does not expire
        r = await http.delete(f"{KEYS}/{successor['prefix']}")
        assert_error(r, 409, "last_admin_key", "prefix")
        assert (await http.delete(f"{KEYS}/{mine}")).status_code == 204  # the one that expires
        assert [k["prefix"] for k in (await http.get(KEYS)).json()["keys"]] == [
            successor["prefix"]]


async def test_a_rotation_stays_within_max_api_keys(tmp_path):
    async with run_server(tmp_path, limits=Limits(max_api_keys=2)) as server:
        async with server.http() as http:
            made = await _made(http)
            r = await http.post(f"{KEYS}/{made['prefix']}/rotate")
            assert_error(r, 409, "limit_reached")
            assert [k["expires_at"] for k in (await http.get(KEYS)).json()["keys"]] == [
                None, None]  # nothing changed


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
async def test_expired_keys_take_no_place_under_max_api_keys(tmp_path, kind):
    """At the limit with keys that expire: 409 while they live, a new key
    once they expired (still listed), 409 again at the limit of live keys;
    the retention sweep deletes them ``retention_days`` after their expiry."""
    async with store_overrides(kind) as store, \
            run_server(tmp_path, limits=Limits(max_api_keys=3), **store) as server:
        clock = _on_clock(server)
        async with server.http() as http:
            expiring = [(await _made(http, expires_at=_iso(clock.now + 60)))["prefix"]
                        for _ in range(2)]  # with the app's first key: 3
            assert_error(await http.post(KEYS, json={"scopes": ["read"]}), 409, "limit_reached")
            clock.now += 60
            fresh = (await _made(http))["prefix"]
            listed = [k["prefix"] for k in (await http.get(KEYS)).json()["keys"]]
            assert listed[1:] == [*sorted(expiring), fresh]  # made at one time: by prefix
            await _made(http)  # three that have not expired: the limit again
            assert_error(await http.post(KEYS, json={"scopes": ["read"]}), 409, "limit_reached")
            # the sweep's cutoff (retention_days ago) before their expiry: kept...
            await server.service.prune(clock.now - 1)
            assert len((await http.get(KEYS)).json()["keys"]) == 5
            await server.service.prune(clock.now + 1)  # ...past it: deleted
            listed = [k["prefix"] for k in (await http.get(KEYS)).json()["keys"]]
            assert len(listed) == 3 and not set(expiring) & set(listed)


@pytest.mark.parametrize("broker", ["redis", "postgres"])
async def test_a_rotation_with_no_grace_reaches_the_other_node_at_once(tmp_path, broker):
    """Node B verified the key and would trust it for an hour: only the
    broker's message can make it refuse the key within a second."""
    overrides = {} if broker == "redis" else {"broker": None}
    async with two_nodes(tmp_path, **overrides) as (a, b):
        b.service.keys.cache.ttl = 3600
        async with a.http() as http:
            made = await _made(http)
        assert await _publish(b, made["api_key"]) == 202  # cached on B
        async with a.http() as http:
            r = await http.post(f"{KEYS}/{made['prefix']}/rotate", json={"grace": 0})
            assert r.status_code == 201
        assert await _until_expired(b, made["api_key"], within=2) < 1
        assert await _publish(b, r.json()["api_key"]) == 202


# -- hostile input -------------------------------------------------------------------------

def _bad_expiries(now: float) -> list[tuple[object, str]]:
    """(expires_at, what the message says) that POST /v1/keys refuses."""
    return [
        (_iso(now - 60), "in the past"),
        (_iso(now - 10 * 365 * 86400), "in the past"),
        ("1970-01-01T00:00:00Z", "in the past"),
        (_iso(now + 6 * 365 * 86400), "at most"),
        ("9999-12-31T23:59:59Z", "at most"),
        ("2030-01-01T00:00:00", "time zone"),
        ("tomorrow", "datetime"),
        ("2030-13-01T00:00:00Z", "datetime"),
        ("2030-01-01T00:00:00+25:00", "datetime"),
        ("", "datetime"),
        ("99999-01-01T00:00:00Z", "datetime"),
        (1893456000, "datetime"),
        (True, "datetime"),
        ({"at": 1}, "datetime"),
    ]


BAD_GRACES = [(-1, ">= 0"), (1.5, "int"), ("60", "int"), (True, "int"), (2_592_001, "grace"),
              (10**30, "grace"), ([60], "int")]
BAD_ROTATE_BODIES = [
    # (raw body, status, code, field)
    (b"{", 400, "malformed_json", None),
    (b"[]", 422, "invalid", None),
    (b'{"grace": 60, "scopes": ["admin"]}', 422, "invalid", "scopes"),
    (b'{"expires_at": "2030-01-01T00:00:00Z"}', 422, "invalid", "expires_at"),
    (b'{"grace": ' + b"9" * 5000 + b"}", 413, "payload_too_large", None),
]


async def test_hostile_expiries_and_rotations_are_clear_4xx(each_store):
    server = each_store
    _, other_key = await server.new_app("other")
    theirs = other_key.split("_")[1]
    async with server.http() as http:
        for value, says in _bad_expiries(time.time()):
            r = await http.post(KEYS, json={"scopes": ["read"], "expires_at": value})
            err = assert_error(r, 422, "invalid", "expires_at", case=value)
            assert says in err["message"], (value, err)
        made = await _made(http)
        for grace, says in BAD_GRACES:
            r = await http.post(f"{KEYS}/{made['prefix']}/rotate", json={"grace": grace})
            err = assert_error(r, 422, "invalid", "grace", case=grace)
            assert says in err["message"], (grace, err)
        for raw, status, code, field in BAD_ROTATE_BODIES:
            r = await http.post(f"{KEYS}/{made['prefix']}/rotate", content=raw,
                                headers={"content-type": "application/json"})
            assert_error(r, status, code, field, case=raw[:40])
        for prefix in ("nothex!!", "0123ABCD", "0000abcd", theirs, "x" * 5000, "%00"):
            r = await http.post(f"{KEYS}/{prefix}/rotate")
            assert_error(r, 404, "not_found", case=prefix)
        listed = (await http.get(KEYS)).json()["keys"]
        assert [(k["prefix"], k["expires_at"]) for k in listed] == [
            (server.api_key.split("_")[1], None), (made["prefix"], None)]  # nothing changed
    async with server.http(other_key) as them:  # and nothing of theirs
        assert [k["expires_at"] for k in (await them.get(KEYS)).json()["keys"]] == [None]
        assert_error(await them.post(f"{KEYS}/{made['prefix']}/rotate"), 404, "not_found")
    async with server.http(made["api_key"]) as narrow:  # publish only: no key management
        r = await narrow.post(f"{KEYS}/{made['prefix']}/rotate")
        assert_error(r, 403, "missing_scope")
