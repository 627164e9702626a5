"""API keys over HTTP (tidings/api/keys.py): an app's admin key creates, lists
and revokes the app's keys, and a revoked key stops working on every node
(docs/security.md#api-keys).

Over real sockets, on both stores; the cluster tests run two nodes over the
test PostgreSQL with Redis, or with PostgreSQL as the broker too.
"""

from __future__ import annotations

import asyncio
import re
import time

import pytest

from tests.api.test_hostile import assert_error
from tests.conftest import run_server, two_nodes
from tidings.broker.base import KEYS_CHANNEL
from tidings.config import Limits
from tidings.service.keys import KEY_CACHE_TTL

KEYS = "/v1/keys"
FIELDS = {"prefix", "scopes", "name", "created_at", "expires_at", "last_used_at"}


async def _create(http, scopes, name=None, status=201) -> dict:
    body = {"scopes": scopes} if name is None else {"scopes": scopes, "name": name}
    r = await http.post(KEYS, json=body)
    assert r.status_code == status, r.text
    return r.json()


async def _publish(server, key: str) -> int:
    async with server.http(key) as http:
        r = await http.post("/v1/notifications", json={"to": {"users": ["ann"]}})
        return r.status_code


async def _until_refused(server, key: str, within: float) -> float:
    """Publish with ``key`` until it is refused (401 bad_api_key); the seconds
    that took.  Fails after ``within`` seconds."""
    start = time.monotonic()
    async with server.http(key) as http:
        while True:
            r = await http.post("/v1/notifications", json={"to": {"users": ["ann"]}})
            if r.status_code == 401:
                assert_error(r, 401, "bad_api_key")
                return time.monotonic() - start
            assert r.status_code == 202, r.text
            assert time.monotonic() - start < within, f"the key still works after {within} s"
            await asyncio.sleep(0.02)


# -- create, list, revoke ----------------------------------------------------------------

async def test_an_admin_key_creates_lists_and_revokes_keys(each_store):
    server = each_store
    async with server.http() as http:
        made = await _create(http, ["publish"], "ci")
        assert set(made) == {"api_key"} | FIELDS
        assert made["api_key"].startswith(f"tk_{made['prefix']}_")
        assert re.fullmatch(r"[0-9a-f]{8}", made["prefix"])
        assert (made["scopes"], made["name"]) == (["publish"], "ci")
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00", made["created_at"])
        unnamed = await _create(http, ["read", "publish", "read"])  # a set: once each
        assert (unnamed["scopes"], unnamed["name"]) == (["publish", "read"], None)

        listed = (await http.get(KEYS)).json()["keys"]
        assert all(set(k) == FIELDS for k in listed)  # never the key, never its hash
        assert made["api_key"] not in str(listed)
        mine = server.api_key.split("_")[1]
        assert [k["prefix"] for k in listed] == [mine, made["prefix"], unnamed["prefix"]]
        assert listed[0]["scopes"] == ["admin", "publish", "read"]
        assert listed[1] == {k: made[k] for k in FIELDS}

    key = made["api_key"]
    assert await _publish(server, key) == 202
    async with server.http(key) as narrow:  # publish only: no key management
        for method, path in (("POST", KEYS), ("GET", KEYS), ("DELETE", f"{KEYS}/{mine}")):
            r = await narrow.request(method, path, json={"scopes": ["admin"]})
            assert_error(r, 403, "missing_scope")

    async with server.http() as http:
        r = await http.delete(f"{KEYS}/{made['prefix']}")
        assert r.status_code == 204 and r.content == b""
        assert await _publish(server, key) == 401  # at once, on the node that revoked it
        listed = (await http.get(KEYS)).json()["keys"]
        assert [k["prefix"] for k in listed] == [mine, unnamed["prefix"]]
        assert_error(await http.delete(f"{KEYS}/{made['prefix']}"), 404, "not_found", "prefix")


async def test_an_app_sees_and_revokes_only_its_own_keys(server):
    other, other_key = await server.new_app("other")
    theirs = other_key.split("_")[1]
    async with server.http() as http:
        mine = await _create(http, ["read"])
        unknown = await http.delete(f"{KEYS}/0000abcd")
        r = await http.delete(f"{KEYS}/{theirs}")
        # another app's key is "no such key", word for word: nothing says it exists
        assert_error(r, 404, "not_found", "prefix")
        assert r.json() == unknown.json()
        assert theirs not in (await http.get(KEYS)).text
    assert await _publish(server, other_key) == 202
    async with server.http(other_key) as them:
        assert [k["prefix"] for k in (await them.get(KEYS)).json()["keys"]] == [theirs]
        assert_error(await them.delete(f"{KEYS}/{mine['prefix']}"), 404, "not_found")
    async with server.http(mine["api_key"]) as http:
        assert (await http.get("/v1/topics/t")).status_code == 200


async def test_a_key_may_revoke_itself_but_never_the_apps_last_admin_key(server):
    first = server.api_key.split("_")[1]
    async with server.http() as http:
        reader = await _create(http, ["read"])
        r = await http.delete(f"{KEYS}/{first}")  # itself, the only admin key
        err = assert_error(r, 409, "last_admin_key", "prefix")
        assert "admin" in err["message"]
        second = await _create(http, ["admin"], "ops")
        r = await http.delete(f"{KEYS}/{first}")  # itself, with another admin key left
        assert r.status_code == 204
        r = await http.get(KEYS)  # its own revocation answered; now it is gone
        assert_error(r, 401, "bad_api_key")
    async with server.http(second["api_key"]) as http:
        assert_error(await http.delete(f"{KEYS}/{second['prefix']}"), 409, "last_admin_key")
        assert (await http.delete(f"{KEYS}/{reader['prefix']}")).status_code == 204
        listed = (await http.get(KEYS)).json()["keys"]
        assert [k["prefix"] for k in listed] == [second["prefix"]]


async def test_an_app_has_at_most_max_api_keys(tmp_path):
    async with run_server(tmp_path, limits=Limits(max_api_keys=3)) as server:
        async with server.http() as http:
            made = [await _create(http, ["read"]) for _ in range(2)]  # with the first: 3
            r = await http.post(KEYS, json={"scopes": ["read"]})
            assert_error(r, 409, "limit_reached")
            assert "3" in r.json()["error"]["message"]
            assert (await http.delete(f"{KEYS}/{made[0]['prefix']}")).status_code == 204
            await _create(http, ["read"])


BAD_BODIES = [
    # (raw body, status, code, field)
    (b"", 400, "empty_body", None),
    (b"{", 400, "malformed_json", None),
    (b"\xff\xfe", 400, "malformed_json", None),
    (b"[]", 422, "invalid", None),
    (b"{}", 422, "invalid", None),  # scopes are required
    (b'{"scopes": []}', 422, "invalid", "scopes"),
    (b'{"scopes": "admin"}', 422, "invalid", "scopes"),
    (b'{"scopes": ["root"]}', 422, "invalid", "scopes[0]"),
    (b'{"scopes": ["read", "ADMIN"]}', 422, "invalid", "scopes[1]"),
    (b'{"scopes": [null]}', 422, "invalid", "scopes[0]"),
    (b'{"scopes": ["read"], "name": ""}', 422, "invalid", "name"),
    (b'{"scopes": ["read"], "name": 7}', 422, "invalid", "name"),
    (b'{"scopes": ["read"], "name": "a\\nb"}', 422, "invalid", "name"),
    (b'{"scopes": ["read"], "name": "a\\u0000"}', 422, "invalid", "name"),
    (b'{"scopes": ["read"], "name": "' + b"x" * 65 + b'"}', 422, "invalid", "name"),
    (b'{"scopes": ["read"], "hash": "x"}', 422, "invalid", "hash"),
    (b'{"scopes": ["read"], "name": "' + b"x" * 5000 + b'"}', 413, "payload_too_large", None),
    (b"[" * 1000, 422, "invalid", None),  # not an object, however deep
]
BAD_PREFIXES = ["nothex!!", "0123ABCD", "0123abc", "0123abcd0", "%00", "0123abc%00",
                "tk_0123abcd_secret", "0123abcd%0A", "x" * 5000]


async def test_hostile_requests_are_clear_4xx(each_store):
    server = each_store
    async with server.http() as http:
        for raw, status, code, field in BAD_BODIES:
            r = await http.post(KEYS, content=raw, headers={"content-type": "application/json"})
            assert_error(r, status, code, field, case=raw[:40])
        for prefix in BAD_PREFIXES:
            r = await http.delete(f"{KEYS}/{prefix}")
            assert_error(r, 404, "not_found", case=prefix)
        # escapes that are not UTF-8 are refused before any route reads the path
        r = await http.delete(f"{KEYS}/%ff%fe%fd%fc")
        assert_error(r, 422, "invalid", "path", case="%ff%fe%fd%fc")
        assert len((await http.get(KEYS)).json()["keys"]) == 1  # nothing was made or lost
    async with server.http("tk_0123abcd_not-a-key") as http:
        assert_error(await http.post(KEYS, json={"scopes": ["admin"]}), 401, "bad_api_key")
    async with server.http() as http:
        r = await http.get(KEYS, headers={"Authorization": ""})
        assert_error(r, 401, "unauthorized")


# -- a revoked key stops working: leases, other nodes, the cache's TTL ---------------------

async def test_a_revoked_keys_rate_limit_lease_goes_with_it(server):
    async with server.http() as http:
        made = await _create(http, ["publish"])
    for _ in range(3):
        assert await _publish(server, made["api_key"]) == 202
    leases = server.service.limits._leases
    assert leases.get(f"key:{made['prefix']}", 0) > 0  # tokens of its lease are left
    async with server.http() as http:
        assert (await http.delete(f"{KEYS}/{made['prefix']}")).status_code == 204
    assert f"key:{made['prefix']}" not in leases
    assert await _publish(server, made["api_key"]) == 401


@pytest.mark.parametrize("broker", ["redis", "postgres"])
async def test_a_revocation_reaches_the_other_node_at_once(tmp_path, broker):
    """Node B verified the key and would trust it for an hour: only the
    broker's message can make it refuse the key within a second."""
    overrides = {} if broker == "redis" else {"broker": None}  # the store's LISTEN/NOTIFY
    async with two_nodes(tmp_path, **overrides) as (a, b):
        b.service.keys.cache.ttl = 3600
        async with a.http() as http:
            made = await _create(http, ["publish"])
        assert await _publish(b, made["api_key"]) == 202  # cached on B
        async with a.http() as http:
            assert (await http.delete(f"{KEYS}/{made['prefix']}")).status_code == 204
        took = await _until_refused(b, made["api_key"], within=2)
        assert took < 1, took


async def test_a_lost_revocation_ends_within_the_cache_ttl(tmp_path):
    """Node B misses the broker's message (as an at-most-once broker may):
    the key still stops working there once its cache entry expires."""
    async with two_nodes(tmp_path) as (a, b):
        b.service.broker.unsubscribe(KEYS_CHANNEL)  # deaf to revocations
        async with a.http() as http:
            made = await _create(http, ["publish"])
        assert await _publish(b, made["api_key"]) == 202
        cached_at = time.monotonic()
        async with a.http() as http:
            assert (await http.delete(f"{KEYS}/{made['prefix']}")).status_code == 204
        await _until_refused(b, made["api_key"], within=KEY_CACHE_TTL + 2)
        assert time.monotonic() - cached_at <= KEY_CACHE_TTL + 1.5
