"""The limit of failed API key checks, over real HTTP: per client address,
per node, on every route that takes a key, and what it never holds back
(tidings/service/keys.py, Keys.verify_limited).

Two client addresses (127.0.0.1 and 127.0.0.2) reach the server over real
sockets; the limit's clock, and the key cache's, are the test's.  The store
is the server's own, its class extended to count ``find_api_key``: while an
address is over, no key it sends is read."""

from __future__ import annotations

import httpx
import pytest

from tests.conftest import run_server
from tidings.cli import HTTP_PROTOCOL
from tidings.config import Limits
from tidings.errors import Unavailable

NOTE = {"to": {"users": ["alice"]}, "title": "hi"}
# (method, path, body): a publish (a direct route), /metrics, an admin route
# and the dashboard's event stream, each of which takes a key header
ROUTES = {
    "publish": ("POST", "/v1/notifications", NOTE),
    "metrics": ("GET", "/metrics", None),
    "admin": ("GET", "/v1/keys", None),
    "stream": ("GET", "/dashboard/events", None),
}


def wrong(i: int = 0) -> str:
    """A well-formed key the store does not know."""
    return f"tk_{i:08x}_wrongwrongwrongwrongwrongwrongwr"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _count_key_reads(server) -> None:
    """The server's own store, its class extended to count its reads of API
    keys (``key_reads``) and to fail them while ``away`` is set, as a store
    that cannot be reached does (503)."""
    store = server.service.store
    base = type(store)

    async def find_api_key(self, prefix, key_hash):
        self.key_reads += 1
        if self.away:
            raise Unavailable("the store cannot be reached")
        return await base.find_api_key(self, prefix, key_hash)

    store.__class__ = type(f"Counting{base.__name__}", (base,),
                           {"find_api_key": find_api_key, "key_reads": 0, "away": False})


def _reads(server) -> int:
    return server.service.store.key_reads


def _client(server, address: str = "127.0.0.1") -> httpx.AsyncClient:
    """A client whose connections come from ``address`` (any of 127/8 reaches
    the server on 127.0.0.1)."""
    transport = httpx.AsyncHTTPTransport(local_address=address)
    return httpx.AsyncClient(base_url=server.url, timeout=10, transport=transport)


async def _call(http: httpx.AsyncClient, key: str, route: str = "publish",
                **headers: str) -> httpx.Response:
    method, path, body = ROUTES[route]
    headers = {"Authorization": f"Bearer {key}", **headers}
    if route == "stream":  # a right key opens the stream: its status is enough
        async with http.stream(method, path, headers=headers) as r:
            if r.status_code != 200:
                await r.aread()
            return r
    return await http.request(method, path, json=body, headers=headers)


async def _codes(http: httpx.AsyncClient, keys: list[str], route: str = "publish",
                 **headers: str) -> list[int]:
    return [(await _call(http, key, route, **headers)).status_code for key in keys]


@pytest.fixture(params=["direct", "asgi"])
async def limited(request, tmp_path):
    """A server allowing 3 failed key checks a minute per address, 20 per
    node, on a clock the test moves; publishes answered by ``tidings
    serve``'s own HTTP protocol (direct) or through ASGI, as under any
    other server."""
    http = HTTP_PROTOCOL if request.param == "direct" else "httptools"
    limits = Limits(key_failures_per_address=3, key_failures_per_node=20)
    # the in-process broker whatever TIDINGS_TEST_BROKER says: the test's clock
    # moves this node's buckets, not a shared broker's (tests/service/test_failures.py)
    async with run_server(tmp_path, limits=limits, http=http, broker="local") as server:
        clock = Clock()
        keys = server.service.keys
        keys.failures.clock = keys.cache.clock = keys._proven.clock = clock
        server.service.settings.operator_app = server.app
        _count_key_reads(server)
        server.clock = clock  # type: ignore[attr-defined]
        yield server


@pytest.mark.parametrize("route", list(ROUTES))
async def test_wrong_keys_from_one_address_end_in_429_without_a_store_read(limited, route):
    fresh_key = await limited.service.create_api_key(limited.app, {"admin"})  # never checked
    async with _client(limited) as http:
        # malformed keys count too, without a read
        assert await _codes(http, [wrong(1), "tk_nothex_x", wrong(2)], route) == [401] * 3
        assert _reads(limited) == 2
        r = await _call(http, wrong(3), route)
        assert r.status_code == 429
        assert r.headers["retry-after"] == "20"  # 3 a minute: one every 20 s
        assert r.json() == {"error": {
            "code": "rate_limited",
            "message": "too many failed API key checks from your address: try again in 20 "
                       "seconds"}}
        # over the limit, no key is read, the right one included: guessing stops here
        assert await _codes(http, [wrong(4), "tk_bad", fresh_key], route) == [429] * 3
        assert _reads(limited) == 2


async def test_another_address_is_not_held_back(limited):
    async with _client(limited, "127.0.0.1") as http:
        assert await _codes(http, [wrong(i) for i in range(4)]) == [401] * 3 + [429]
    async with _client(limited, "127.0.0.2") as http:
        assert await _codes(http, [wrong(9), limited.api_key]) == [401, 202]
    async with _client(limited, "127.0.0.1") as http:
        assert await _codes(http, [wrong(10)]) == [429]


async def test_the_limit_recovers_over_time(limited):
    fresh_key = await limited.service.create_api_key(limited.app, {"publish"})
    async with _client(limited) as http:
        assert await _codes(http, [wrong(i) for i in range(4)]) == [401] * 3 + [429]
        limited.clock.now += 19
        r = await _call(http, wrong(5))
        assert r.status_code == 429 and r.headers["retry-after"] == "1"
        limited.clock.now += 1
        assert await _codes(http, [wrong(6), wrong(7)]) == [401, 429]  # one back, used
        limited.clock.now += 20
        assert await _codes(http, [fresh_key]) == [202]  # a success takes nothing
        limited.clock.now += 60  # a minute: the whole burst again
        assert await _codes(http, [wrong(i) for i in range(4)]) == [401] * 3 + [429]


async def test_a_key_the_node_knows_is_never_held_back(limited):
    """A backend behind the same address as one retrying with a wrong key
    (one NAT, one host) keeps working: its key is in the cache, answered
    before any limit, and once the cache entry expired (5 s), it is a key
    this node found valid, read again without the limit."""
    async with _client(limited) as http:
        assert await _codes(http, [limited.api_key]) == [202]
        assert await _codes(http, [wrong(i) for i in range(4)]) == [401] * 3 + [429]
        reads = _reads(limited)
        assert await _codes(http, [limited.api_key] * 3) == [202] * 3
        assert _reads(limited) == reads  # the cache answered
        limited.clock.now += 5  # the key's cache entry expires (KEY_CACHE_TTL)
        assert await _codes(http, [limited.api_key, wrong(5)]) == [202, 429]
        assert _reads(limited) == reads + 1
        # on every route
        assert await _codes(http, [limited.api_key], "metrics") == [200]
        assert await _codes(http, [limited.api_key], "admin") == [200]
        assert await _codes(http, [limited.api_key], "stream") == [200]


async def test_a_revoked_key_is_held_back_like_any_other(limited):
    key = await limited.service.create_api_key(limited.app, {"publish"})
    async with _client(limited) as http:
        assert await _codes(http, [key]) == [202]
        prefix = key.split("_")[1]
        assert (await _call(http, limited.api_key, "admin")).status_code == 200
        r = await http.delete(f"/v1/keys/{prefix}",
                              headers={"Authorization": f"Bearer {limited.api_key}"})
        assert r.status_code == 204
        assert await _codes(http, [key] * 4) == [401] * 3 + [429]


async def test_a_right_key_without_the_scope_is_no_failure(limited):
    key = await limited.service.create_api_key(limited.app, {"publish"})
    async with _client(limited) as http:
        assert await _codes(http, [key] * 5, "admin") == [403] * 5
        assert await _codes(http, [wrong(i) for i in range(4)]) == [401] * 3 + [429]


async def test_a_store_that_cannot_answer_counts_no_failure(limited):
    """A 503 is not the key's fault: its tokens go back."""
    async with _client(limited) as http:
        limited.service.store.away = True
        assert await _codes(http, [wrong(i) for i in range(5)]) == [503] * 5
        limited.service.store.away = False
        assert await _codes(http, [wrong(i) for i in range(4)]) == [401] * 3 + [429]


async def test_the_node_bounds_failures_from_many_addresses(limited):
    """Addresses the node's proxy forwards (127.0.0.1 is trusted to say,
    uvicorn's X-Forwarded-For), each within its own limit, empty the node's
    bucket: a fresh address is refused without a read, whatever key it
    sends; an address that succeeded before still gets in, and so does a key
    the node found valid, from any address."""
    new_key = await limited.service.create_api_key(limited.app, {"publish"})
    async with _client(limited, "127.0.0.2") as http:
        assert await _codes(http, [limited.api_key]) == [202]  # a backend that works
    async with _client(limited) as http:
        for i in range(10):
            forwarded = {"X-Forwarded-For": f"198.51.100.{i}"}
            assert await _codes(http, [wrong(i), wrong(i + 100)], **forwarded) == [401] * 2
        reads = _reads(limited)
        stranger = {"X-Forwarded-For": "203.0.113.9"}
        r = await _call(http, new_key, **stranger)
        assert r.status_code == 429 and r.headers["retry-after"] == "3"  # 20 a minute
        assert r.json()["error"]["message"] == ("too many failed API key checks on this "
                                                "server: try again in 3 seconds")
        assert await _codes(http, [wrong(50)], **stranger) == [429]
        assert _reads(limited) == reads
        assert await _codes(http, [limited.api_key], **stranger) == [202]  # cached
        limited.service.keys.cache.clear()  # as if its 5 s were over
        assert await _codes(http, [limited.api_key, wrong(51)], **stranger) == [202, 429]
        assert _reads(limited) == reads + 1
    async with _client(limited, "127.0.0.2") as http:
        assert await _codes(http, [new_key]) == [202]  # held to its own limit only


async def test_a_forwarded_address_is_believed_only_from_a_trusted_peer(limited):
    """127.0.0.2 is no proxy of this node: its X-Forwarded-For is ignored, so
    changing it buys no new attempts; 127.0.0.1's is believed, on the direct
    path as on the ASGI one."""
    async with _client(limited, "127.0.0.2") as http:
        codes = [(await _call(http, wrong(i), **{"X-Forwarded-For": f"198.51.100.{i}"}))
                 .status_code for i in range(4)]
    assert codes == [401] * 3 + [429]
    async with _client(limited, "127.0.0.1") as http:
        codes = [(await _call(http, wrong(i), **{"X-Forwarded-For": f"198.51.100.{i}"}))
                 .status_code for i in range(4)]
    assert codes == [401] * 4
    async with _client(limited, "127.0.0.1") as http:
        # one client behind the proxy, whatever it says in the header after the proxy's
        codes = [(await _call(http, wrong(i), **{"X-Forwarded-For": f"10.0.0.{i}, 192.0.2.7"}))
                 .status_code for i in range(4)]
    assert codes == [401] * 3 + [429]


async def test_the_login_form_and_the_api_count_apart(limited):
    """The dashboard's login form keeps its own limit (a person's numbers):
    a backend failing with its key does not lock its operator out of the
    dashboard from the same address."""
    async with _client(limited) as http:
        assert await _codes(http, [wrong(i) for i in range(4)]) == [401] * 3 + [429]
        r = await http.post("/dashboard/login", data={"key": limited.api_key})
        assert r.status_code == 303


async def test_no_limit_when_turned_off(tmp_path):
    limits = Limits(key_failures_per_address=0, key_failures_per_node=0)
    async with run_server(tmp_path, limits=limits) as server, _client(server) as http:
        assert set(await _codes(http, [wrong(i) for i in range(30)])) == {401}
