"""API test fixtures, each on both stores whatever TIDINGS_TEST_STORE says,
for rules that must read the same on both (docs/design.md §2.8):
``each_store`` a server in the test's loop, ``tidings_process`` a real
``tidings serve`` process (for clients that block: Schemathesis, Hypothesis)."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import time

import httpx
import pytest

from tests.conftest import run_server


@pytest.fixture
async def unlimited(tmp_path):
    """The server without the limits of invalid user tokens, for a test that
    sends more than 60 of them from one address about something else
    (docs/security.md#invalid-user-tokens)."""
    from tidings.config import Limits

    limits = Limits(token_failures_per_address=0, token_failures_per_node=0)
    async with run_server(tmp_path, limits=limits) as live:
        yield live


@contextlib.asynccontextmanager
async def store_overrides(kind: str):
    """The run_server overrides of store ``kind`` ("sqlite" or "postgres")."""
    if kind == "sqlite":
        yield {"store": None}
        return
    from tests.services import require_postgres
    from tests.store.pg import fresh_schema

    url = require_postgres()
    async with fresh_schema(url) as pg:
        yield {"store": f"{url}?search_path={pg['search_path']}"}


async def refuse_inserts(server, table: str, when: str = "true", event: str = "INSERT") -> None:
    """Make the store itself refuse rows of ``table`` (where ``when`` holds, in
    terms of NEW): a trigger in the real database, so the failure happens
    inside the statement, as a failing disk or a bug would.  ``event``:
    "UPDATE" refuses changes of rows instead."""
    store = server.service.store
    if hasattr(store, "path"):
        import sqlite3

        conn = sqlite3.connect(store.path)
        conn.execute(f"CREATE TRIGGER refuse_{table} BEFORE {event} ON {table} WHEN {when} "
                     f"BEGIN SELECT RAISE(ABORT, 'refused by a test trigger'); END")
        conn.close()
        return
    import asyncpg

    conn = await asyncpg.connect(store.url, server_settings=store._server_settings)
    try:
        await conn.execute(f"""
            CREATE FUNCTION refuse_{table}() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN RAISE EXCEPTION 'refused by a test trigger'; END $$;
            CREATE TRIGGER refuse_{table} BEFORE {event} ON {table} FOR EACH ROW
            WHEN ({when}) EXECUTE FUNCTION refuse_{table}();""")
    finally:
        await conn.close()


async def allow_inserts(server, table: str) -> None:
    """Undo :func:`refuse_inserts`."""
    store = server.service.store
    if hasattr(store, "path"):
        import sqlite3

        conn = sqlite3.connect(store.path)
        conn.execute(f"DROP TRIGGER refuse_{table}")
        conn.close()
        return
    import asyncpg

    conn = await asyncpg.connect(store.url, server_settings=store._server_settings)
    try:
        await conn.execute(f"DROP TRIGGER refuse_{table} ON {table}")
    finally:
        await conn.close()


@pytest.fixture(params=["sqlite", "postgres"])
async def each_store(request, tmp_path):
    async with store_overrides(request.param) as store:
        async with run_server(tmp_path, **store) as live:
            yield live


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tidings(*args: str, env: dict) -> str:
    return subprocess.run([sys.executable, "-m", "tidings", *args], env=env, check=True,
                          capture_output=True, text=True, timeout=60).stdout


@pytest.fixture(params=["sqlite", "postgres"])
async def tidings_process(request, tmp_path):
    """A ``tidings serve`` process, its URL, an API key and a user token.

    Without rate limits: the fuzzers send everything with one key and one
    user's token as fast as the machine goes (up to 116 of the user's 200
    tokens at once on a slow 2-core machine), and a 429 is a well-formed
    answer they would take, testing nothing behind it."""
    async with store_overrides(request.param) as store:
        env = {**os.environ, "TIDINGS_DATA": str(tmp_path / "data"), "TIDINGS_KEY_RATE": "0",
               "TIDINGS_USER_RATE": "0"}
        if store["store"]:
            env["TIDINGS_STORE"] = store["store"]
        port = _free_port()
        log = open(tmp_path / "serve.log", "wb")
        proc = subprocess.Popen([sys.executable, "-m", "tidings", "serve", "--port", str(port)],
                                env=env, stdout=log, stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{port}"
        try:
            for _ in range(300):
                try:
                    if httpx.get(url + "/readyz", timeout=1).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert proc.poll() is None, (tmp_path / "serve.log").read_text()
                time.sleep(0.1)
            key = json.loads(_tidings("app", "create", "fuzz", "--json", env=env))["api_key"]
            r = httpx.post(f"{url}/v1/users/alice/tokens", json={},
                           headers={"Authorization": f"Bearer {key}"})
            yield url, key, r.json()["token"]
        finally:
            proc.terminate()
            proc.wait(10)
            log.close()
        out = (tmp_path / "serve.log").read_text()
        assert "Traceback" not in out, out
