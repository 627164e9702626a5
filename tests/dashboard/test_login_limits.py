"""The login form's limit on failed logins, over real HTTP: per client
address, per node, and what neither holds back (tidings/core/logins.py)."""

from __future__ import annotations

import httpx
import pytest

from tests.conftest import run_server
from tidings.config import Limits
from tidings.dashboard import session

WRONG = "tk_0a1b2c3d_wrongwrongwrongwrongwrongwrongwr"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _client(server, address: str = "127.0.0.1", **kw) -> httpx.AsyncClient:
    """A client whose connections come from ``address`` (any of 127/8 reaches
    the server on 127.0.0.1): another client address, over real sockets."""
    transport = httpx.AsyncHTTPTransport(local_address=address)
    return httpx.AsyncClient(base_url=server.url, timeout=10, transport=transport, **kw)


async def _login(http: httpx.AsyncClient, key: str, **headers) -> httpx.Response:
    return await http.post("/dashboard/login", data={"key": key}, headers=headers)


@pytest.fixture
async def limited(tmp_path):
    """A server allowing 3 failed logins a minute per address, 20 per node,
    on a clock the test moves."""
    limits = Limits(login_failures_per_address=3, login_failures_per_node=20)
    # the in-process broker whatever TIDINGS_TEST_BROKER says: the test's clock
    # moves this node's buckets, not a shared broker's (tests/service/test_failures.py)
    async with run_server(tmp_path, limits=limits, broker="local") as server:
        clock = Clock()
        server.uvicorn.config.app.state.dashboard.logins.clock = clock
        server.clock = clock  # type: ignore[attr-defined]
        yield server


async def test_failed_logins_from_one_address_end_in_429_with_retry_after(limited):
    async with _client(limited) as http:
        for _ in range(3):
            assert (await _login(http, WRONG)).status_code == 401
        r = await _login(http, WRONG)
        assert r.status_code == 429
        assert r.headers["retry-after"] == "20"  # 3 a minute: a token every 20 s
        assert r.headers["content-type"].startswith("text/html")
        assert 'name="key"' in r.text and 'role="alert"' in r.text
        assert "Too many failed logins from your address. Try again in 20 seconds." in r.text
        # over the limit, even the right key is not tried: guessing stops here
        r = await _login(http, limited.api_key)
        assert r.status_code == 429 and session.COOKIE not in r.cookies
    recent = limited.service.hub.metrics.recent_errors  # the dashboard's recent errors
    assert [e[2:] for e in recent][-2:] == [("rate_limited", 429, "POST /dashboard/login")] * 2


async def test_another_address_is_not_held_back(limited):
    async with _client(limited, "127.0.0.1") as http:
        for _ in range(4):
            await _login(http, WRONG)
        assert (await _login(http, WRONG)).status_code == 429
    async with _client(limited, "127.0.0.2") as http:
        assert (await _login(http, WRONG)).status_code == 401
        r = await _login(http, limited.api_key)
        assert r.status_code == 303 and session.COOKIE in r.cookies


async def test_the_limit_recovers_over_time(limited):
    async with _client(limited) as http:
        for _ in range(3):
            await _login(http, WRONG)
        assert (await _login(http, WRONG)).status_code == 429
        limited.clock.now += 19
        r = await _login(http, WRONG)
        assert r.status_code == 429 and r.headers["retry-after"] == "1"
        limited.clock.now += 1
        assert (await _login(http, WRONG)).status_code == 401  # one token back, used
        assert (await _login(http, WRONG)).status_code == 429
        limited.clock.now += 20
        r = await _login(http, limited.api_key)
        assert r.status_code == 303 and session.COOKIE in r.cookies
        limited.clock.now += 60  # a minute: the whole burst again
        assert [(await _login(http, WRONG)).status_code for _ in range(4)] == [401] * 3 + [429]


async def test_successful_logins_use_up_nothing(limited):
    async with _client(limited) as http:
        for _ in range(10):
            assert (await _login(http, limited.api_key)).status_code == 303
        assert [(await _login(http, WRONG)).status_code for _ in range(4)] == [401] * 3 + [429]


async def test_the_node_bounds_failures_from_many_addresses(limited):
    """Addresses the node's proxy forwards (the peer 127.0.0.1 is trusted
    to say, uvicorn's X-Forwarded-For), each within its own limit, empty
    the node's bucket: a fresh address is refused without a key being
    verified; an address that logged in before still gets in."""
    async with _client(limited, "127.0.0.2") as http:
        assert (await _login(http, limited.api_key)).status_code == 303  # an operator
    async with _client(limited) as http:
        for i in range(10):
            for _ in range(2):
                r = await _login(http, WRONG, **{"X-Forwarded-For": f"198.51.100.{i}"})
                assert r.status_code == 401
        r = await _login(http, limited.api_key, **{"X-Forwarded-For": "203.0.113.9"})
        assert r.status_code == 429 and r.headers["retry-after"] == "3"  # 20 a minute
        assert "Too many failed logins on this server. Try again in 3 seconds." in r.text
    async with _client(limited, "127.0.0.2") as http:
        r = await _login(http, limited.api_key)
        assert r.status_code == 303 and session.COOKIE in r.cookies


async def test_a_forwarded_address_is_believed_only_from_a_trusted_peer(limited):
    """127.0.0.2 is no proxy of this node: its X-Forwarded-For is ignored, so
    changing it buys no new attempts."""
    async with _client(limited, "127.0.0.2") as http:
        codes = [(await _login(http, WRONG, **{"X-Forwarded-For": f"198.51.100.{i}"})).status_code
                 for i in range(4)]
    assert codes == [401] * 3 + [429]


async def test_no_limit_when_turned_off(tmp_path):
    limits = Limits(login_failures_per_address=0, login_failures_per_node=0)
    async with run_server(tmp_path, limits=limits) as server, _client(server) as http:
        assert {(await _login(http, WRONG)).status_code for _ in range(30)} == {401}
