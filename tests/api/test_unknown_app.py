"""User tokens naming an app the store does not know, over real HTTP: the
node remembers the miss (tidings/service/apps.py, ``Apps.missing``), so
forged tokens cost the store one read per app id per APP_CACHE_TTL, not one
per request; an app created afterwards works at once on the node that
created it, and within APP_CACHE_TTL on any other.

The store is the server's own, its class extended to count ``get_app``;
the miss cache's clock is the test's."""

from __future__ import annotations

import json
import time

import jwt

from tests.api.test_hostile import assert_error
from tests.api.test_stream_auth import ws_refused
from tests.conftest import two_nodes
from tidings.core import auth
from tidings.errors import CLOSE_UNAUTHORIZED
from tidings.service.apps import APP_CACHE_TTL

SECRET = "s" * 43


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _count_app_reads(server) -> Clock:
    """Count the server's reads of app records (``app_reads``); the miss
    cache on the returned clock."""
    store = server.service.store
    base = type(store)

    async def get_app(self, app_id):
        self.app_reads += 1
        return await base.get_app(self, app_id)

    store.__class__ = type(f"Counting{base.__name__}", (base,),
                           {"get_app": get_app, "app_reads": 0})
    clock = Clock()
    server.service.apps.missing.clock = clock
    return clock


def _reads(server) -> int:
    return server.service.store.app_reads


def _token(app: str, secret: str = SECRET) -> str:
    now = int(time.time())
    return jwt.encode({"sub": "alice", "app": app, "iat": now, "exp": now + 600},
                      secret, algorithm="HS256")


async def _counts(server, token: str):
    async with server.http() as http:
        return await http.get("/v1/me/counts", headers={"Authorization": f"Bearer {token}"})


async def test_tokens_naming_a_missing_app_cost_one_read(unlimited):
    server = unlimited
    _count_app_reads(server)
    token = _token("app_nothere")
    async with server.http() as http:
        for _ in range(20):
            for path in ("/v1/me/counts", "/v1/me/notifications"):
                r = await http.get(path, headers={"Authorization": f"Bearer {token}"})
                err = assert_error(r, 401, "bad_token")
                assert err["message"] == "token is not valid"
            r = await http.get("/v1/me/events", params={"token": token})
            assert_error(r, 401, "bad_token")
    for _ in range(3):
        code = await ws_refused(server.ws_url + "/v1/me/stream",
                                json.dumps({"type": "auth", "token": token}))
        assert code == CLOSE_UNAUTHORIZED
    assert _reads(server) == 1


async def test_random_app_ids_cannot_grow_the_memory(server):
    _count_app_reads(server)
    server.service.apps.missing.maxsize = 5
    for i in range(12):
        assert_error(await _counts(server, _token(f"app_{i}")), 401, "bad_token")
    assert _reads(server) == 12
    assert len(server.service.apps.missing) == 5


async def test_the_miss_is_read_again_after_the_ttl(server):
    clock = _count_app_reads(server)
    token = _token("app_nothere")
    assert_error(await _counts(server, token), 401, "bad_token")
    clock.now += APP_CACHE_TTL - 0.1
    assert_error(await _counts(server, token), 401, "bad_token")
    assert _reads(server) == 1
    clock.now += 0.2
    assert_error(await _counts(server, token), 401, "bad_token")
    assert _reads(server) == 2


async def test_an_app_created_after_a_miss_works_at_once_here(server):
    _count_app_reads(server)
    assert_error(await _counts(server, _token("late")), 401, "bad_token")
    record, _ = await server.service.create_app("late", app_id="late")
    r = await _counts(server, auth.mint_token("late", "alice", record.signing_secret, 600))
    assert r.status_code == 200, r.text


async def test_an_app_created_on_another_node_works_within_the_ttl(tmp_path):
    async with two_nodes(tmp_path) as (a, b):
        clock = _count_app_reads(b)
        assert_error(await _counts(b, _token("late")), 401, "bad_token")
        record, _ = await a.service.create_app("late", app_id="late")
        token = auth.mint_token("late", "alice", record.signing_secret, 600)
        assert (await _counts(a, token)).status_code == 200
        # b still remembers the miss, without reading, for at most APP_CACHE_TTL
        assert_error(await _counts(b, token), 401, "bad_token")
        assert _reads(b) == 1
        clock.now += APP_CACHE_TTL
        r = await _counts(b, token)
        assert r.status_code == 200, r.text
