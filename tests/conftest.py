"""Shared fixtures: a real tidings server on a loopback port, in the test's loop.

``server`` runs the full ASGI app under uvicorn with the protocols of
``tidings serve`` (httptools with the direct routes, websockets-sansio with
the raw frame writer) on 127.0.0.1 with an ephemeral port and a fresh SQLite file, and creates one
app.  Tests talk to it over real sockets with httpx and websockets.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from dataclasses import dataclass

import httpx
import pytest
import uvicorn

from tidings.api.app import build_service, create_app
from tidings.cli import HTTP_PROTOCOL, WS_PROTOCOL
from tidings.config import Limits, Settings
from tidings.core.auth import SCOPES
from tidings.service import Service

# The tests start `tidings` and its servers as processes hundreds of times:
# let them keep their compiled modules (a process that compiles the package
# anew spends about a quarter of a second on it) where an environment says
# not to write them.
os.environ.pop("PYTHONDONTWRITEBYTECODE", None)


@dataclass
class LiveServer:
    url: str
    ws_url: str
    service: Service
    app: str
    api_key: str
    signing_secret: str
    uvicorn: uvicorn.Server

    async def token(self, user: str, ttl: int = 3600, app: str | None = None) -> str:
        token, *_ = await self.service.mint_token(app or self.app, user, ttl)
        return token

    def http(self, key: str | None = None) -> httpx.AsyncClient:
        headers = {"Authorization": f"Bearer {key or self.api_key}"}
        return httpx.AsyncClient(base_url=self.url, headers=headers, timeout=10)

    async def new_app(self, name: str = "other") -> tuple[str, str]:
        app, key = await self.service.create_app(name)
        return app.id, key


@contextlib.asynccontextmanager
async def run_server(tmp_path, **overrides):
    # TIDINGS_TEST_BROKER=redis runs every server of the suite on the test
    # Redis (tests/services.py) under a key prefix of its own, instead of the
    # in-process broker: the same tests, the cluster broker.
    if os.environ.get("TIDINGS_TEST_BROKER") == "redis" and "broker" not in overrides:
        from tests.broker.conftest import delete_prefixed, unique_prefix
        from tests.services import require_redis

        url, prefix = require_redis(), unique_prefix()
        try:
            async with run_server(tmp_path, broker=f"{url}?prefix={prefix}", **overrides) as live:
                yield live
        finally:
            await delete_prefixed(url, prefix)
        return
    # TIDINGS_TEST_STORE=postgres runs every server of the suite on the test
    # PostgreSQL (tests/services.py), each in a fresh schema dropped after it,
    # instead of its own SQLite file: the same tests, the cluster store (with
    # the in-process broker, so that only the store changes).
    # TIDINGS_TEST_BROKER=postgres does the same with the PostgreSQL broker:
    # the cluster on PostgreSQL alone.
    pg_broker = os.environ.get("TIDINGS_TEST_BROKER") == "postgres"
    if (os.environ.get("TIDINGS_TEST_STORE") == "postgres" or pg_broker) \
            and "store" not in overrides:
        from tests.services import require_postgres
        from tests.store.pg import fresh_schema

        if not pg_broker:
            overrides.setdefault("broker", "local")
        url = require_postgres()
        async with fresh_schema(url) as pg:
            async with _serve(tmp_path, store=f"{url}?search_path={pg['search_path']}",
                              **overrides) as live:
                yield live
        return
    async with _serve(tmp_path, **overrides) as live:
        yield live


@contextlib.asynccontextmanager
async def cluster_backends(broker: str = "redis"):
    """The ``store`` and ``broker`` overrides of one cluster's nodes: a fresh
    PostgreSQL schema, and Redis under a key prefix of its own
    (``broker="redis"``) or the PostgreSQL broker on that schema
    (``"postgres"``).  A node started on them later is a restarted node."""
    from tests.broker.conftest import delete_prefixed, unique_prefix
    from tests.services import require_postgres, require_redis
    from tests.store.pg import fresh_schema

    pg = require_postgres()
    redis = require_redis() if broker == "redis" else None
    prefix = unique_prefix()
    try:
        async with fresh_schema(pg) as schema:
            store = f"{pg}?search_path={schema['search_path']}"
            yield {"store": store, "broker": f"{redis}?prefix={prefix}" if redis else store}
    finally:
        if redis:
            await delete_prefixed(redis, prefix)


@contextlib.asynccontextmanager
async def two_nodes(tmp_path, via: str = "redis", **overrides):
    """Two servers over one fresh PostgreSQL schema and one Redis key prefix
    (``via="postgres"``: PostgreSQL alone): two nodes of a cluster, named
    ``a`` and ``b``, in the test's loop (``overrides`` as run_server's)."""
    async with cluster_backends(via) as backends:
        common = {**backends, **overrides}
        async with run_server(tmp_path / "a", **{"node": "a", **common}) as a:
            async with run_server(tmp_path / "b", **{"node": "b", **common}) as b:
                yield a, b


@contextlib.asynccontextmanager
async def _serve(tmp_path, **overrides):
    limits = overrides.pop("limits", Limits())
    ws = overrides.pop("ws", WS_PROTOCOL)
    key = overrides.pop("api_key", None)  # a key of testapp from an earlier run_server
    http = overrides.pop("http", HTTP_PROTOCOL)
    # a listening socket to serve on: its port is known before the start
    # (a setting that names the server's own URL, such as e-mail's public_url)
    sock = overrides.pop("sock", None)
    settings = Settings(data=str(tmp_path / "data"), port=0, limits=limits, **overrides)
    service = build_service(settings)
    config = uvicorn.Config(
        create_app(settings, service), host="127.0.0.1", port=0, loop="none",
        http=http, ws=ws, ws_per_message_deflate=False,
        timeout_keep_alive=limits.keep_alive_timeout,
        ws_max_size=limits.max_ws_message_bytes, log_level="warning", lifespan="on",
        ws_ping_interval=settings.ping_interval, ws_ping_timeout=settings.ping_timeout,
    )
    server = uvicorn.Server(config)
    task = asyncio.get_running_loop().create_task(
        server.serve(sockets=[sock] if sock is not None else None))
    for _ in range(500):
        if server.started:
            break
        if task.done():
            task.result()
        await asyncio.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    if await service.app("testapp") is None:
        app, key = await service.create_app("test", app_id="testapp")
    else:  # a second node over the same store
        app = await service.app("testapp")
        key = key or await service.create_api_key("testapp", SCOPES)
    live = LiveServer(
        url=f"http://127.0.0.1:{port}", ws_url=f"ws://127.0.0.1:{port}", service=service,
        app=app.id, api_key=key, signing_secret=app.signing_secret, uvicorn=server,
    )
    try:
        yield live
    finally:
        server.should_exit = True
        try:
            await asyncio.wait_for(task, 10)
        except (TimeoutError, asyncio.CancelledError):
            task.cancel()


@pytest.fixture
async def server(tmp_path):
    async with run_server(tmp_path) as live:
        yield live


@pytest.fixture(params=["raw", "asgi"])
async def any_ws_server(request, tmp_path):
    """The server with each WebSocket writer: the raw frame writer (the
    default) and plain ASGI sends (any ASGI server without the extension)."""
    ws = WS_PROTOCOL if request.param == "raw" else "websockets-sansio"
    async with run_server(tmp_path, ws=ws) as live:
        yield live


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory):
    """A three-master Redis Cluster (tests/rediscluster.py) for the session,
    stopped at its end: the broker tests and the cluster tests share it."""
    from tests.rediscluster import LocalRedisCluster

    cluster = LocalRedisCluster(tmp_path_factory.mktemp("redis-cluster")).start()
    yield cluster
    cluster.stop()
