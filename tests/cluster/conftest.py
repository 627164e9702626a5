"""A real cluster on loopback for the failover tests: nodes over a fresh
PostgreSQL schema and the shared Redis, behind HAProxy (scripts/cluster.py).

Skips on a laptop without PostgreSQL, Redis or HAProxy; fails in CI
(tests/services.py)."""

from __future__ import annotations

import os
import secrets
import shutil
import socket

import asyncpg
import pytest

from scripts.cluster import Cluster
from tests.services import require_postgres, require_redis


def _port_block(n: int) -> int:
    """A base port with ``n`` free ports from it."""
    for _ in range(200):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            base = s.getsockname()[1]
        if base + n >= 65535:
            continue
        try:
            held = []
            for p in range(base, base + n):
                s = socket.socket()
                held.append(s)
                s.bind(("127.0.0.1", p))
            return base
        except OSError:
            continue
        finally:
            for s in held:
                s.close()
    raise RuntimeError("no block of free ports")


def require_haproxy() -> str:
    path = shutil.which("haproxy") or ("/usr/sbin/haproxy" if os.path.exists("/usr/sbin/haproxy")
                                       else None)
    if path:
        return path
    reason = "HAProxy is not installed (Debian package haproxy)"
    if os.environ.get("TIDINGS_REQUIRE_SERVICES") == "1":
        pytest.fail(reason + "; CI requires it", pytrace=False)
    pytest.skip(reason)


@pytest.fixture
async def pg_url():
    """A PostgreSQL URL whose search_path is a fresh schema, dropped afterwards."""
    base = require_postgres()
    schema = "t_cluster_" + secrets.token_hex(5)
    conn = await asyncpg.connect(base)
    try:
        await conn.execute(f"CREATE SCHEMA {schema}")
    finally:
        await conn.close()
    yield f"{base}?search_path={schema}"
    conn = await asyncpg.connect(base)
    try:
        await conn.execute(f"DROP SCHEMA {schema} CASCADE")
    finally:
        await conn.close()


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
        cluster = Cluster(pg_url, redis_url, nodes=nodes, base_port=_port_block(nodes + 1),
                          workdir=tmp_path / f"cluster{len(started)}", **kw)
        started.append(cluster)
        return cluster.start()

    yield make
    for cluster in started:
        cluster.stop()
