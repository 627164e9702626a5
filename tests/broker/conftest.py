"""Broker fixtures, parametrized over every backend.

The contract suite (``test_contract.py``) runs once per entry of
``BACKENDS``.  Adding a backend means adding its name to ``BACKENDS`` and a
branch to ``make_broker``; the suite itself does not change.

The PostgreSQL backend talks to the real PostgreSQL: every broker a test
makes shares one fresh, migrated schema (tests/store/pg.py), whose name is
also its notification channel, so parallel runs never hear each other.

The Redis backend talks to a real Redis (``tests/services.py``: skipped on a
laptop without one, a failure in CI).  Each test gets its own key and
channel prefix, so parallel runs sharing one Redis never see each other's
messages, and its keys are deleted afterwards.

The Redis Cluster backend runs on three masters of a Redis Cluster started
for the test session (``redis_cluster``, tests/rediscluster.py), prefixes
apart as on the shared Redis.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable

import pytest
import redis.asyncio as aioredis

from tests.services import require_postgres, require_redis
from tidings.broker.base import Broker
from tidings.broker.local import LocalBroker
from tidings.broker.redis import RedisBroker
from tidings.broker.redis_cluster import RedisClusterBroker

BACKENDS = ["local", "redis", "redis-cluster", "postgres"]


def unique_prefix() -> str:
    return "tidings-test-" + secrets.token_hex(6)


async def delete_prefixed(url: str, prefix: str) -> None:
    client = aioredis.Redis.from_url(url)
    try:
        keys = [k async for k in client.scan_iter(match=prefix + ":*", count=1000)]
        if keys:
            await client.delete(*keys)
    finally:
        await client.aclose()


@pytest.fixture(params=BACKENDS)
async def make_broker(request) -> Callable[[], Broker]:
    """A factory of unopened brokers of one backend; for Redis, every broker
    it makes shares one prefix, like the nodes of one cluster."""
    if request.param == "local":
        yield LocalBroker
    elif request.param == "redis":
        url, prefix = require_redis(), unique_prefix()
        yield lambda: RedisBroker(url, prefix=prefix)
        await delete_prefixed(url, prefix)
    elif request.param == "redis-cluster":
        cluster, prefix = request.getfixturevalue("redis_cluster"), unique_prefix()
        yield lambda: RedisClusterBroker(cluster.url, prefix=prefix)
    elif request.param == "postgres":
        from tests.store.pg import fresh_schema
        from tidings.broker.postgres import PostgresBroker

        url = require_postgres()
        async with fresh_schema(url) as settings:
            yield lambda: PostgresBroker(f"{url}?search_path={settings['search_path']}")
    else:
        raise AssertionError(f"no factory for backend {request.param!r}")


@pytest.fixture
async def broker(make_broker):
    """An opened broker, closed after the test."""
    b = make_broker()
    await b.open()
    try:
        yield b
    finally:
        await b.close()
