"""A real cluster on loopback for the failover tests: nodes over a fresh
PostgreSQL schema behind HAProxy (scripts/cluster.py), in both deployment
shapes: with the shared Redis as the broker, and on PostgreSQL alone
(LISTEN/NOTIFY on the store's database).  A test that names it with
``@pytest.mark.parametrize("broker_url", [...], indirect=True)`` runs on the
session's three-master Redis Cluster too (``redis-cluster``).

Skips on a laptop without PostgreSQL, Redis, HAProxy or redis-server; fails
in CI (tests/services.py)."""

from __future__ import annotations

import secrets

import pytest

from scripts.cluster import Cluster, free_port_block
from tests.services import require_haproxy, require_postgres, require_redis
from tests.store.pg import fresh_schema


@pytest.fixture
async def pg_url():
    """A PostgreSQL URL whose search_path is a fresh schema, dropped afterwards
    (left unmigrated: the cluster runs ``tidings migrate`` as an operator would)."""
    base = require_postgres()
    async with fresh_schema(base, migrated=False) as settings:
        yield f"{base}?search_path={settings['search_path']}"


BROKERS = ["redis", "postgres"]


@pytest.fixture(params=BROKERS)
def broker_url(request) -> str | None:
    """The cluster's ``--broker``: the shared Redis (or Redis Cluster) under a
    key prefix of its own (parallel runs never see each other's channels or
    node registry), or None for PostgreSQL alone (the schema is the channel)."""
    if request.param == "postgres":
        return None
    prefix = f"tidings-test-{secrets.token_hex(5)}"
    if request.param == "redis-cluster":
        return f"{request.getfixturevalue('redis_cluster').url}?prefix={prefix}"
    return f"{require_redis()}?prefix={prefix}"


@pytest.fixture
def make_cluster(pg_url, broker_url, tmp_path):
    """``make_cluster(nodes=2, **kw)`` -> a started Cluster, stopped after the test."""
    require_haproxy()
    started: list[Cluster] = []

    def make(nodes: int = 2, **kw) -> Cluster:
        cluster = Cluster(pg_url, broker_url, nodes=nodes, base_port=free_port_block(nodes + 1),
                          workdir=tmp_path / f"cluster{len(started)}", **kw)
        started.append(cluster)
        return cluster.start()

    yield make
    for cluster in started:
        cluster.stop()
