"""The hot-path cache (Settings.cache): what it keeps, and that switching it
off changes performance only, never answers."""

from __future__ import annotations

import pytest

from tests.conftest import run_server
from tidings.core import auth
from tidings.errors import Unauthorized


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize("cache", [True, False])
async def test_answers_are_the_same_with_the_cache_on_or_off(tmp_path, cache):
    async with run_server(tmp_path, cache=cache) as server:
        token = await server.token("ann")
        async with server.http() as http:
            for _ in range(2):  # the second round is served from the cache when on
                r = await http.post("/v1/notifications",
                                    json={"to": {"users": ["ann"]}, "title": "hi"})
                assert r.status_code == 202
                me = {"Authorization": f"Bearer {token}"}
                r = await http.get("/v1/me/counts", headers=me)
                assert r.status_code == 200
            assert r.json()["unread"] == 2
            bad = await http.get("/v1/me/counts", headers={"Authorization": "Bearer x.y.z"})
            assert bad.status_code == 401
            bad_key = await http.get("/v1/users/ann/notifications",
                                     headers={"Authorization": "Bearer tk_nope_nope"})
            assert bad_key.status_code == 401
        service = server.service
        assert service.caching is cache
        assert (len(service._tokens) > 0) is cache
        assert (len(service._keys) > 0) is cache


async def test_a_cached_token_still_expires(tmp_path):
    async with run_server(tmp_path) as server:
        service = server.service
        record = await service.app(server.app)
        token = auth.mint_token(server.app, "bob", record.signing_secret, 60)
        assert await service.authenticate_token(token) == (server.app, "bob")
        assert token in service._tokens
        # the cache's clock moves past the token's lifetime
        clock = Clock(service._tokens.clock())
        service._tokens.clock = clock
        clock.now += 61
        with pytest.raises(Unauthorized) as err:
            # now verified again, and PyJWT's own clock has not moved: to prove
            # the cache does not answer, the token must also fail verification
            service._apps[server.app] = type(record)(record.id, record.name, "rotated",
                                                      record.created_at)
            await service.authenticate_token(token)
        assert err.value.code == "bad_token"
