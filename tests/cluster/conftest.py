"""A real cluster on loopback for the failover tests: nodes over a fresh
PostgreSQL schema and the shared Redis, behind HAProxy (scripts/cluster.py).

Skips on a laptop without PostgreSQL, Redis or HAProxy; fails in CI
(tests/services.py)."""

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


@pytest.fixture
def make_cluster(pg_url, tmp_path):
    """``make_cluster(nodes=2, **kw)`` -> a started Cluster, stopped after the test."""
    redis_url = require_redis()
    require_haproxy()
    started: list[Cluster] = []

    # a key prefix of its own: parallel runs on the shared Redis never see
    # each other's channels or node registry
    redis_url = f"{redis_url}?prefix=tidings-test-{secrets.token_hex(5)}"

    def make(nodes: int = 2, **kw) -> Cluster:
        cluster = Cluster(pg_url, redis_url, nodes=nodes, base_port=free_port_block(nodes + 1),
                          workdir=tmp_path / f"cluster{len(started)}", **kw)
        started.append(cluster)
        return cluster.start()

    yield make
    for cluster in started:
        cluster.stop()
