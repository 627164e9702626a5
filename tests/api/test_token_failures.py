"""The limits of invalid user tokens, over real sockets: per client address
and per node, on the client API (``tidings serve``'s direct routes and
ASGI), SSE and WebSocket connects; what they never count (a token that
expired, was revoked, or was signed with a secret the app has since
retired) and what they never hold back (a token that works).

docs/security.md#invalid-user-tokens; Service.token_claims.  Two client
addresses (127.0.0.1 and 127.0.0.2) reach the server; the limits' clock is
the test's."""

from __future__ import annotations

import contextlib
import json
import time

import httpx
import jwt
import pytest
import websockets
from websockets.exceptions import InvalidStatus

from tests.api.test_hostile import assert_error
from tests.conftest import run_server
from tests.gateway.live import closed_with, recv_events
from tidings.cli import HTTP_PROTOCOL, WS_PROTOCOL
from tidings.config import Limits
from tidings.core import auth
from tidings.errors import CLOSE_RATE_LIMITED, CLOSE_UNAUTHORIZED

WRONG = "a-secret-this-app-never-had-a-secret-it-never-had"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def forged(server, i: int = 0, user: str = "ann") -> str:
    """A token of the app in the shape tidings mints, signed with a wrong secret."""
    return auth.mint_token(server.app, user, WRONG, 600, jti=f"guess-{i}")


@contextlib.asynccontextmanager
async def limited_server(tmp_path, **overrides):
    """3 invalid tokens a minute per address, 20 per node, on a clock the test moves."""
    limits = Limits(token_failures_per_address=3, token_failures_per_node=20)
    # the in-process broker whatever TIDINGS_TEST_BROKER says: the test's clock
    # moves this node's buckets, not a shared broker's (tests/service/test_failures.py)
    async with run_server(tmp_path, limits=limits, broker="local", **overrides) as server:
        clock = Clock()
        server.service.token_failures.clock = clock
        server.clock = clock  # type: ignore[attr-defined]
        yield server


@pytest.fixture(params=["direct", "asgi"])
async def limited(request, tmp_path):
    """Client API requests answered by ``tidings serve``'s own HTTP protocol
    (direct) or through ASGI, as under any other server."""
    http = HTTP_PROTOCOL if request.param == "direct" else "httptools"
    async with limited_server(tmp_path, http=http) as server:
        yield server


def _client(server, address: str = "127.0.0.1") -> httpx.AsyncClient:
    transport = httpx.AsyncHTTPTransport(local_address=address)
    return httpx.AsyncClient(base_url=server.url, timeout=10, transport=transport)


# a direct route (the inbox reads) and an ASGI one
PATHS = ["/v1/me/counts", "/v1/me/preferences"]


async def _codes(http: httpx.AsyncClient, tokens: list[str], path: str = PATHS[0],
                 **headers: str) -> list[int]:
    out = []
    for token in tokens:
        r = await http.get(path, headers={"Authorization": f"Bearer {token}", **headers})
        out.append(r.status_code)
    return out


@pytest.mark.parametrize("path", PATHS)
async def test_invalid_tokens_from_one_address_end_in_429(limited, path):
    """Forged and malformed tokens count; past the limit the answer is 429
    with Retry-After, and a right token still works from that address."""
    right = await limited.token("ann")
    async with _client(limited) as http:
        assert await _codes(http, [forged(limited, 1), "garbage", forged(limited, 2)],
                            path) == [401] * 3
        r = await http.get(path, headers={"Authorization": f"Bearer {forged(limited, 3)}"})
        assert r.status_code == 429
        assert r.headers["retry-after"] == "20"  # 3 a minute: one every 20 s
        assert r.json() == {"error": {
            "code": "rate_limited",
            "message": "too many invalid user tokens from your address: try again in 20 "
                       "seconds"}}
        assert await _codes(http, ["junk", forged(limited, 4)], path) == [429] * 2
        # never held back: verified first, and only a failure is counted
        assert await _codes(http, [right, await limited.token("bob")], path) == [200] * 2


async def test_expired_revoked_and_retired_tokens_are_not_counted(limited):
    """Routine refusals a client answers by asking for a new token: a
    well-signed token that expired, one that was revoked, and one of the
    secret the app's last rotation retired (its overlap over)."""
    old = limited.signing_secret
    async with limited.http() as http:
        r = await http.post("/v1/signing-secret/rotate", json={"overlap": 0})
        assert r.status_code == 200, r.text
        secret = r.json()["signing_secret"]
        revoked = [await limited.token("ann") for _ in range(5)]
        for token in revoked:
            jti = jwt.decode(token, options={"verify_signature": False})["jti"]
            r = await http.post("/v1/users/ann/tokens/revoke", json={"jti": jti})
            assert r.status_code == 200, r.text
    expired = [auth.mint_token(limited.app, "ann", secret, 60, now=time.time() - 3600)
               for _ in range(5)]
    retired = [auth.mint_token(limited.app, "ann", old, 600) for _ in range(5)]
    async with _client(limited) as http:
        for tokens, code in ((expired, "token_expired"), (revoked, "token_revoked"),
                             (retired, "bad_token")):
            for token in tokens:
                r = await http.get("/v1/me/counts", headers={"Authorization": f"Bearer {token}"})
                assert_error(r, 401, code)
        # the address's whole budget is still there
        assert await _codes(http, [forged(limited, i) for i in range(4)]) == [401] * 3 + [429]


async def test_the_limit_recovers_over_time_and_spares_other_addresses(limited):
    async with _client(limited) as http:
        assert await _codes(http, [forged(limited, i) for i in range(4)]) == [401] * 3 + [429]
    async with _client(limited, "127.0.0.2") as http:
        assert await _codes(http, [forged(limited, 9)]) == [401]
    async with _client(limited) as http:
        limited.clock.now += 19
        r = await http.get("/v1/me/counts",
                           headers={"Authorization": f"Bearer {forged(limited, 5)}"})
        assert r.status_code == 429 and r.headers["retry-after"] == "1"
        limited.clock.now += 1
        assert await _codes(http, [forged(limited, 6), forged(limited, 7)]) == [401, 429]


async def test_the_node_bounds_invalid_tokens_from_many_addresses(limited):
    """Addresses the node's proxy forwards, each within its own limit, use
    up the node's: a fresh address's invalid token is then 429 too, while a
    right token goes on from anywhere."""
    async with _client(limited) as http:
        for i in range(10):
            forwarded = {"X-Forwarded-For": f"198.51.100.{i}"}
            assert await _codes(http, [forged(limited, i), forged(limited, i + 100)],
                                **forwarded) == [401] * 2
        stranger = {"X-Forwarded-For": "203.0.113.9"}
        r = await http.get("/v1/me/counts", headers={
            "Authorization": f"Bearer {forged(limited, 50)}", **stranger})
        assert r.status_code == 429 and r.headers["retry-after"] == "3"  # 20 a minute
        assert r.json()["error"]["message"] == ("too many invalid user tokens on this "
                                                "server: try again in 3 seconds")
        assert await _codes(http, [await limited.token("ann")], **stranger) == [200]


async def test_sse_connects_with_invalid_tokens_end_in_429(limited):
    right = await limited.token("ann")
    async with _client(limited) as http:
        codes = []
        for i in range(4):
            r = await http.get("/v1/me/events", params={"token": forged(limited, i)})
            codes.append(r.status_code)
        assert codes == [401] * 3 + [429]
        assert_error(r, 429, "rate_limited")
        assert r.headers["retry-after"] == "20"
        async with http.stream("GET", "/v1/me/events", params={"token": right}) as ok:
            assert ok.status_code == 200
        # a connect with an invalid token counts with the requests
        assert await _codes(http, [forged(limited, 9)]) == [429]


def _ws_url(server) -> str:
    return server.ws_url + "/v1/me/stream"


async def _ws_by_header(server, token: str, address: str = "127.0.0.1"):
    return await websockets.connect(_ws_url(server), local_addr=(address, 0),
                                    additional_headers={"Authorization": f"Bearer {token}"})


async def _ws_by_message(server, token: str, address: str = "127.0.0.1"):
    ws = await websockets.connect(_ws_url(server), local_addr=(address, 0))
    await ws.send(json.dumps({"type": "auth", "token": token}))
    return ws


@pytest.mark.parametrize("ws", [WS_PROTOCOL, "websockets-sansio"])
async def test_a_websocket_with_an_invalid_header_token_is_refused_before_the_upgrade(
        tmp_path, ws):
    """Under the limit: accepted, then closed 4401 as before.  Past it: no
    WebSocket at all, an HTTP 429 with Retry-After and the JSON error (the
    Python Subscriber backs off on it).  A right token still connects."""
    async with limited_server(tmp_path, ws=ws) as server:
        for i in range(3):
            sock = await _ws_by_header(server, forged(server, i))
            assert (await closed_with(sock))[0] == CLOSE_UNAUTHORIZED
        with pytest.raises(InvalidStatus) as refused:
            await _ws_by_header(server, forged(server, 3))
        response = refused.value.response
        assert response.status_code == 429
        assert response.headers["Retry-After"] == "20"
        assert json.loads(response.body)["error"]["code"] == "rate_limited"
        # another address is its own
        sock = await _ws_by_header(server, forged(server, 4), "127.0.0.2")
        assert (await closed_with(sock))[0] == CLOSE_UNAUTHORIZED
        right = await _ws_by_header(server, await server.token("ann"))
        try:
            assert (await recv_events(right, 1))[0]["type"] == "hello"
        finally:
            await right.close()


async def test_a_websocket_with_an_invalid_auth_message_closes_4005_past_the_limit(tmp_path):
    """The token comes after the upgrade: past the limit the stream closes
    with 4005 (reconnect later), the reason saying why."""
    async with limited_server(tmp_path) as server:
        for i in range(3):
            sock = await _ws_by_message(server, forged(server, i))
            assert (await closed_with(sock))[0] == CLOSE_UNAUTHORIZED
        sock = await _ws_by_message(server, "junk")
        assert await closed_with(sock) == (
            CLOSE_RATE_LIMITED, "too many invalid user tokens from your address: try again "
                                "in 20 seconds")
        # one budget for every transport: an HTTP request is over too
        async with _client(server) as http:
            assert await _codes(http, [forged(server, 5)]) == [429]
        right = await _ws_by_message(server, await server.token("ann"))
        try:
            assert (await recv_events(right, 1))[0]["type"] == "hello"
        finally:
            await right.close()


async def test_no_limit_when_turned_off(tmp_path):
    limits = Limits(token_failures_per_address=0, token_failures_per_node=0)
    async with run_server(tmp_path, limits=limits) as server, _client(server) as http:
        assert set(await _codes(http, [forged(server, i) for i in range(70)])) == {401}
