"""Failed key checks, logins and user tokens counted by the cluster, over
real HTTP (tidings/service/failures.py): two nodes over one PostgreSQL schema
and one broker, Redis or the PostgreSQL broker, and a node started later on
them (a restarted node).  The shared buckets run on the broker's clock, in
real time: 3 failures a minute per address is a token every 20 s, which no
test waits for.  A broker that is down is stopped for real: a private
redis-server, or a TCP proxy in front of PostgreSQL."""

from __future__ import annotations

import contextlib
import logging
import subprocess
import sys
from urllib.parse import urlsplit

import httpx
import pytest

from scripts.cluster import free_port_block
from tests.api.test_key_failures import _codes as key_codes
from tests.api.test_key_failures import wrong
from tests.api.test_token_failures import _codes as token_codes
from tests.api.test_token_failures import forged
from tests.broker.test_postgres import _via
from tests.broker.test_redis import PrivateRedis
from tests.conftest import cluster_backends, run_server
from tests.services import require_postgres
from tests.store.pg import fresh_schema
from tidings.config import Limits

BROKERS = ["redis", "postgres"]
# 3 failures a minute per address; the node limits out of the way
LIMITS = Limits(key_failures_per_address=3, key_failures_per_node=1000,
                login_failures_per_address=3, login_failures_per_node=1000,
                token_failures_per_address=3, token_failures_per_node=1000)
WRONG = wrong()


def _client(server, address: str = "127.0.0.1") -> httpx.AsyncClient:
    """A client whose connections come from ``address`` (any of 127/8 reaches
    the server on 127.0.0.1)."""
    transport = httpx.AsyncHTTPTransport(local_address=address)
    return httpx.AsyncClient(base_url=server.url, timeout=10, transport=transport)


async def _logins(server, n: int, key: str = WRONG) -> list[int]:
    async with _client(server) as http:
        return [(await http.post("/dashboard/login", data={"key": key})).status_code
                for _ in range(n)]


async def _keys(server, n: int) -> list[int]:
    async with _client(server) as http:
        return await key_codes(http, [wrong(i) for i in range(n)])


async def _tokens(server, n: int) -> list[int]:
    async with _client(server) as http:
        return await token_codes(http, [forged(server, i) for i in range(n)])


@pytest.mark.parametrize("broker", BROKERS)
async def test_failed_key_checks_are_counted_by_the_cluster_and_outlive_a_node(
        tmp_path, broker):
    async with cluster_backends(broker) as backends:
        common = {"limits": LIMITS, **backends}
        async with run_server(tmp_path / "a", **common) as a, \
                run_server(tmp_path / "b", **common) as b:
            assert await _keys(a, 3) == [401] * 3
            # b lets one more through before it learns, then refuses the
            # address, a right key included, as its own limit would
            assert await _keys(b, 2) == [401, 429]
            async with _client(b) as http:
                r = await http.get("/v1/keys", headers={"Authorization": f"Bearer {b.api_key}"})
                assert r.status_code == 429
                assert "from your address" in r.json()["error"]["message"]
                assert int(r.headers["Retry-After"]) > 20  # what b owes, and one more
            async with _client(b, "127.0.0.2") as http:  # other addresses are not held back
                r = await http.get("/v1/keys", headers={"Authorization": f"Bearer {b.api_key}"})
                assert r.status_code == 200
        async with run_server(tmp_path / "c", **common) as c:  # a node started afresh
            assert await _keys(c, 2) == [401, 429]


@pytest.mark.parametrize("broker", BROKERS)
async def test_failed_logins_are_counted_by_the_cluster_and_outlive_a_node(tmp_path, broker):
    async with cluster_backends(broker) as backends:
        common = {"limits": LIMITS, **backends}
        async with run_server(tmp_path / "a", **common) as a, \
                run_server(tmp_path / "b", **common) as b:
            assert await _logins(a, 3) == [401] * 3
            assert await _logins(b, 2) == [401, 429]
            assert await _logins(b, 1, b.api_key) == [429]  # no key is checked
        async with run_server(tmp_path / "c", **common) as c:
            assert await _logins(c, 2) == [401, 429]


@pytest.mark.parametrize("broker", BROKERS)
async def test_invalid_tokens_are_counted_by_the_cluster_and_outlive_a_node(tmp_path, broker):
    async with cluster_backends(broker) as backends:
        common = {"limits": LIMITS, **backends}
        async with run_server(tmp_path / "a", **common) as a, \
                run_server(tmp_path / "b", **common) as b:
            assert await _tokens(a, 3) == [401] * 3
            # a token is verified before it is counted: the cluster's answer
            # comes with the failure that learns it
            assert await _tokens(b, 2) == [429, 429]
            async with _client(b) as http:  # a right token is never refused by it
                assert await token_codes(http, [await b.token("ann")]) == [200]
        async with run_server(tmp_path / "c", **common) as c:
            assert await _tokens(c, 1) == [429]


@contextlib.asynccontextmanager
async def _broker_to_stop(broker: str, tmp_path):
    """``(run_server overrides, stop)``: a broker that ``stop()`` takes away
    for good, the store staying up."""
    if broker == "redis":
        private = PrivateRedis(tmp_path)
        private.start()
        try:
            yield {"broker": private.url}, private.stop
        finally:
            private.stop()
        return
    base = require_postgres()
    async with fresh_schema(base) as schema:
        store = f"{base}?search_path={schema['search_path']}"
        port, target = free_port_block(1), urlsplit(base)
        proxy = subprocess.Popen(
            [sys.executable, "-m", "tests.cluster.tcpproxy", str(port), target.hostname or "",
             str(target.port or 5432)], stdout=subprocess.PIPE, text=True)
        try:
            assert proxy.stdout is not None and proxy.stdout.readline().strip() == "ready"

            def stop() -> None:
                proxy.kill()
                proxy.wait(10)

            yield {"store": store, "broker": _via(store, port)}, stop
        finally:
            stop()
            if proxy.stdout is not None:
                proxy.stdout.close()


@pytest.mark.parametrize("broker", BROKERS)
async def test_a_broker_that_is_down_leaves_the_nodes_own_count(tmp_path, broker, caplog):
    async with _broker_to_stop(broker, tmp_path) as (backends, stop), \
            run_server(tmp_path, limits=LIMITS, **backends) as server:
        assert await _keys(server, 1) == [401]
        stop()
        caplog.set_level(logging.WARNING, "tidings.service.failures")
        # the node's own bucket: the two failures left of its three, then 429
        assert await _keys(server, 3) == [401, 401, 429]
        warned = [r for r in caplog.records if r.name == "tidings.service.failures"]
        assert len(warned) == 1  # once per outage
        assert "counted by this node alone" in warned[0].getMessage()
        async with _client(server, "127.0.0.2") as http:  # nobody else is locked out
            r = await http.get("/v1/keys", headers={"Authorization": f"Bearer {server.api_key}"})
            assert r.status_code == 200
