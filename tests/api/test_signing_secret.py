"""Rotating an app's signing secret over HTTP (POST /v1/signing-secret/rotate):
the new secret shown once, the old one taken for the overlap, and with an
overlap of 0 refused at once on every node, open streams included.

docs/security.md#rotating-the-signing-secret; tidings/service/apps.py.
"""

from __future__ import annotations

import asyncio
import time
from datetime import datetime

import jwt
import pytest

from tests.api.test_hostile import assert_error
from tests.conftest import two_nodes
from tests.gateway.live import SSEReader, closed_with, recv_events, ws_connect
from tidings.broker.base import KEYS_CHANNEL
from tidings.config import Limits
from tidings.core import auth
from tidings.errors import CLOSE_TOKEN_EXPIRED
from tidings.service.apps import APP_CACHE_TTL, SWEEP_INTERVAL

ROTATE = "/v1/signing-secret/rotate"


def _token(server, user: str, secret: str, ttl: int = 3600) -> str:
    return auth.mint_token(server.app, user, secret, ttl)


async def _counts(server, token: str) -> int:
    async with server.http() as http:
        r = await http.get("/v1/me/counts", headers={"Authorization": f"Bearer {token}"})
        return r.status_code


async def _rotate(server, body=None, status=200, **kw) -> dict:
    async with server.http() as http:
        r = await http.post(ROTATE, json=body, **kw) if body is not None else \
            await http.post(ROTATE, **kw)
    assert r.status_code == status, r.text
    return r.json()


async def _until_refused(server, token: str, within: float) -> float:
    """Ask with ``token`` until it is refused (401 bad_token); the seconds that took."""
    start = time.monotonic()
    async with server.http() as http:
        while True:
            r = await http.get("/v1/me/counts", headers={"Authorization": f"Bearer {token}"})
            if r.status_code == 401:
                assert_error(r, 401, "bad_token")
                return time.monotonic() - start
            assert r.status_code == 200, r.text
            assert time.monotonic() - start < within, f"the token still works after {within} s"
            await asyncio.sleep(0.02)


# -- the route ---------------------------------------------------------------------------

async def test_a_rotation_keeps_the_old_secret_for_the_default_overlap(each_store):
    """No body: the old secret is taken for token_max_ttl, so tokens minted
    just before live their life; minting uses the new secret at once."""
    server = each_store
    old_token = _token(server, "ann", server.signing_secret)
    assert await _counts(server, old_token) == 200
    before = time.time()
    out = await _rotate(server)
    assert set(out) == {"app", "signing_secret", "previous_secret_valid_until"}
    assert out["app"] == server.app
    new = out["signing_secret"]
    assert new != server.signing_secret and len(new) == 43
    until = datetime.fromisoformat(out["previous_secret_valid_until"]).timestamp()
    assert before + Limits().token_max_ttl <= until <= time.time() + Limits().token_max_ttl
    assert await _counts(server, old_token) == 200  # the overlap
    assert await _counts(server, _token(server, "ann", server.signing_secret)) == 200
    assert await _counts(server, _token(server, "ann", new)) == 200
    async with server.http() as http:
        minted = (await http.post("/v1/users/ann/tokens", json={"ttl": 60})).json()["token"]
    assert jwt.decode(minted, new, algorithms=["HS256"])["sub"] == "ann"
    with pytest.raises(jwt.InvalidSignatureError):
        jwt.decode(minted, server.signing_secret, algorithms=["HS256"])
    # the secret is shown once: nothing lists it
    async with server.http() as http:
        assert new not in (await http.get("/v1/keys")).text


async def test_an_overlap_ends_the_old_secret_and_its_streams_then(server):
    server_secret = server.signing_secret
    old_token = _token(server, "ann", server_secret)
    ws = await ws_connect(server, old_token)
    try:
        assert (await recv_events(ws, 1))[0]["type"] == "hello"
        out = await _rotate(server, {"overlap": 2})
        until = datetime.fromisoformat(out["previous_secret_valid_until"]).timestamp()
        assert await _counts(server, old_token) == 200
        code, _ = await closed_with(ws, timeout=5)
        assert code == CLOSE_TOKEN_EXPIRED
        assert time.time() >= until - 0.05  # not before the overlap's end
        assert await _counts(server, old_token) == 401
        assert await _counts(server, _token(server, "ann", out["signing_secret"])) == 200
    finally:
        await ws.close()


async def test_overlap_zero_refuses_the_old_secret_at_once_and_ends_its_streams(each_store):
    """A leak: the old secret's tokens are refused from the answer on, and
    the streams they opened (WebSocket and SSE) end; a stream opened with a
    token of the new secret stays."""
    server = each_store
    old_token = _token(server, "ann", server.signing_secret)
    assert await _counts(server, old_token) == 200  # cached as verified
    ws = await ws_connect(server, old_token)
    async with SSEReader(server, old_token) as sse:
        assert (await sse.events(1))[0][1]["type"] == "hello"
        assert (await recv_events(ws, 1))[0]["type"] == "hello"
        out = await _rotate(server, {"overlap": 0})
        assert out["previous_secret_valid_until"] is None
        assert await _counts(server, old_token) == 401
        code, reason = await closed_with(ws, timeout=2)
        assert (code, reason) == (CLOSE_TOKEN_EXPIRED, "token expired")
        with pytest.raises(StopAsyncIteration):  # the response ended
            await sse.events(1, timeout=2)
    fresh = await ws_connect(server, _token(server, "ann", out["signing_secret"]))
    try:
        assert (await recv_events(fresh, 1))[0]["type"] == "hello"
        await _rotate(server, {"overlap": 60})  # its secret is now the previous one
        with pytest.raises(TimeoutError):
            await recv_events(fresh, 1, timeout=1.5)  # still open
    finally:
        await fresh.close()


async def test_only_an_admin_key_rotates(server):
    key = await server.service.create_api_key(server.app, {"publish", "read"})
    async with server.http(key) as http:
        assert_error(await http.post(ROTATE), 403, "missing_scope")
    async with server.http("tk_00000000_nope") as http:
        assert_error(await http.post(ROTATE), 401, "bad_api_key")
    assert (await server.service.app(server.app)).signing_secret == server.signing_secret


async def test_hostile_bodies_are_clear_4xx_and_rotate_nothing(server):
    cases = [
        ({"overlap": -1}, 422, "invalid", "overlap"),
        ({"overlap": Limits().token_max_ttl + 1}, 422, "invalid", "overlap"),
        ({"overlap": 10**30}, 422, "invalid", "overlap"),
        ({"overlap": "60"}, 422, "invalid", "overlap"),
        ({"overlap": 1.5}, 422, "invalid", "overlap"),
        ({"overlap": 60, "secret": "mine"}, 422, "invalid", None),
        ([60], 422, "invalid", None),
    ]
    async with server.http() as http:
        for body, status, code, field in cases:
            r = await http.post(ROTATE, json=body)
            err = assert_error(r, status, code, case=body)
            if field is not None:
                assert err["field"] == field, (body, err)
        assert_error(await http.post(ROTATE, content=b"{"), 400, "malformed_json")
        assert_error(await http.post(ROTATE, content=b"\xff\xfe"), 400, "malformed_json")
        assert_error(await http.post(ROTATE, content=b" " * 5000), 413, "payload_too_large")
        assert_error(await http.get(ROTATE), 405)
    assert (await server.service.app(server.app)).signing_secret == server.signing_secret
    assert (await _rotate(server, {"overlap": None}))["previous_secret_valid_until"]
    assert (await _rotate(server, content=b"  \n"))["previous_secret_valid_until"]


# -- every node ---------------------------------------------------------------------------

@pytest.mark.timeout(60)
@pytest.mark.parametrize("broker", ["redis", "postgres"])
async def test_a_leak_rotation_reaches_the_other_node_within_a_second(tmp_path, broker):
    """Node B verified the token and would trust its app record for an hour,
    and holds a stream opened with it: only the broker's message can make it
    refuse the token and end the stream within a second."""
    overrides = {} if broker == "redis" else {"broker": None}  # the store's LISTEN/NOTIFY
    async with two_nodes(tmp_path, **overrides) as (a, b):
        b.service.apps.cache.ttl = 3600
        old_token = _token(b, "ann", a.signing_secret)
        assert await _counts(b, old_token) == 200  # cached on B
        ws = await ws_connect(b, old_token)
        try:
            assert (await recv_events(ws, 1))[0]["type"] == "hello"
            out = await _rotate(a, {"overlap": 0})
            start = time.monotonic()
            assert await _until_refused(b, old_token, within=2) < 1
            code, _ = await closed_with(ws, timeout=2)
            assert code == CLOSE_TOKEN_EXPIRED
            assert time.monotonic() - start < 1.5
            assert await _counts(b, _token(b, "ann", out["signing_secret"])) == 200
        finally:
            await ws.close()


@pytest.mark.timeout(60)
async def test_a_lost_rotation_message_still_ends_within_the_cache_ttl(tmp_path):
    """Node B misses the broker's message: it refuses the old secret once its
    record of the app expires, and ends the stream at the sweep after that."""
    async with two_nodes(tmp_path) as (a, b):
        b.service.broker.unsubscribe(KEYS_CHANNEL)  # deaf to rotations
        old_token = _token(b, "ann", a.signing_secret)
        ws = await ws_connect(b, old_token)
        try:
            assert (await recv_events(ws, 1))[0]["type"] == "hello"
            assert await _counts(b, old_token) == 200
            await _rotate(a, {"overlap": 0})
            start = time.monotonic()
            await _until_refused(b, old_token, within=APP_CACHE_TTL + 2)
            code, _ = await closed_with(ws, timeout=APP_CACHE_TTL + SWEEP_INTERVAL + 2)
            assert code == CLOSE_TOKEN_EXPIRED
            assert time.monotonic() - start <= APP_CACHE_TTL + SWEEP_INTERVAL + 1
        finally:
            await ws.close()
