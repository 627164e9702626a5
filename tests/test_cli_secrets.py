"""``tidings secrets`` as an operator runs it, on each store: after ``seal``
the store holds none of its secrets in plain text, yet every credential made
before keeps working on a server started with the key; a server without it,
or with another, refuses to start in one line; new secrets are written
sealed; ``rekey`` and ``unseal`` go back and forth; and a sealed value moved
into another row does not open there (tidings/core/seal.py,
tidings/store/sealed.py, tidings/bootstrap.py)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time

import asyncpg
import httpx
import pytest

from tests.test_cli_errors import one_error_line, run
from tests.test_durability import _free_port, _start
from tidings.store import open_store
from tidings.store.outbound import WebhookEndpoint

pytestmark = pytest.mark.timeout(180)


@contextlib.asynccontextmanager
async def _store(kind: str, tmp_path):
    """``(CLI arguments, store URL or None)`` of a migrated store of ``kind``."""
    if kind == "sqlite":
        data = str(tmp_path / "data")
        assert run("migrate", "--data", data).returncode == 0
        yield ["--data", data], None
        return
    from tests.services import require_postgres
    from tests.store.pg import fresh_schema

    base = require_postgres()
    async with fresh_schema(base) as pg:
        url = f"{base}?search_path={pg['search_path']}"
        yield ["--store", url], url


async def _cli(*args: str):
    return await asyncio.to_thread(run, *args)


async def _ok(*args: str) -> str:
    r = await _cli(*args)
    assert r.returncode == 0, r.stderr
    return r.stdout


async def _raw(tmp_path, url: str | None) -> bytes:
    """What a copy of the store would hand over: the bytes of the SQLite
    files, or every row of the tables that hold secrets."""
    if url is None:
        return b"".join(p.read_bytes() for p in (tmp_path / "data").glob("tidings.db*"))
    conn = await asyncpg.connect(url.split("?")[0],
                                 server_settings={"search_path": url.split("=")[-1]})
    try:
        rows = [await conn.fetch(f"SELECT * FROM {t}") for t in ("meta", "apps", "webhooks")]
    finally:
        await conn.close()
    return repr(rows).encode()


async def _sql(tmp_path, url: str | None, statement: str) -> None:
    if url is None:
        import sqlite3

        with contextlib.closing(sqlite3.connect(tmp_path / "data" / "tidings.db")) as db:
            db.execute(statement)
            db.commit()
        return
    conn = await asyncpg.connect(url.split("?")[0],
                                 server_settings={"search_path": url.split("=")[-1]})
    try:
        await conn.execute(statement)
    finally:
        await conn.close()


async def _webhook_and_pepper(tmp_path, url: str | None, app: str) -> tuple[str, str]:
    """Give ``app`` a webhook endpoint; its secret, and the store's pepper (hex)."""
    store = open_store(url, tmp_path / "data" / "tidings.db")
    await store.open()
    try:
        secret = "whsec_" + os.urandom(16).hex()
        assert await store.add_webhook(app, WebhookEndpoint("wh_1", "https://h.test/x", secret,
                                                            time.time()), 10)
        return secret, (await store.pepper()).hex()
    finally:
        await store.close()


def _serve(tmp_path, url: str | None, env: dict):
    port = _free_port()
    args = ["--store", url] if url else []
    server = _start(tmp_path / "data", port, *args, env={**os.environ, **env})
    return server, f"http://127.0.0.1:{port}"


def _stop(server) -> None:
    server.terminate()
    server.wait(10)
    server.stdout.close()


def _get(base: str, path: str, credential: str) -> int:
    return httpx.get(base + path, headers={"Authorization": f"Bearer {credential}"}).status_code


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
async def test_seal_serve_with_the_key_rekey_and_unseal(tmp_path, kind, monkeypatch):
    monkeypatch.delenv("TIDINGS_SECRET_KEY", raising=False)
    monkeypatch.delenv("TIDINGS_SECRET_KEY_FILE", raising=False)
    async with _store(kind, tmp_path) as (where, url):
        shop = json.loads(await _ok("app", "create", "shop", "--json", *where))
        token = (await _ok("token", "--app", "shop", "--user", "ann", "--ttl", "600",
                           *where)).split()[-1]
        hook, pepper = await _webhook_and_pepper(tmp_path, url, "shop")
        plain = [shop["signing_secret"], hook, pepper]
        raw = await _raw(tmp_path, url)
        assert all(s.encode() in raw for s in plain)

        key = (await _ok("secrets", "keygen")).strip()
        assert (await _ok("secrets", "keygen")).strip() != key
        monkeypatch.setenv("TIDINGS_SECRET_KEY", key)
        assert "sealed the secrets of 3 rows" in await _ok("secrets", "seal", *where)
        raw = await _raw(tmp_path, url)
        assert b"sealed1:" in raw
        assert not [s for s in plain if s.encode() in raw]
        line = one_error_line(await _cli("secrets", "seal", *where))
        assert "already sealed under this key" in line

        # without the key, or with another, nothing starts: one clear line
        monkeypatch.delenv("TIDINGS_SECRET_KEY")
        line = one_error_line(await _cli("serve", "--port", "0", *where))
        assert "the store's secrets are sealed: give its key (TIDINGS_SECRET_KEY" in line
        other = (await _ok("secrets", "keygen")).strip()
        monkeypatch.setenv("TIDINGS_SECRET_KEY", other)
        line = one_error_line(await _cli("serve", "--port", "0", *where))
        assert "wrong secret key" in line
        monkeypatch.setenv("TIDINGS_SECRET_KEY", "not-a-key")
        assert "TIDINGS_SECRET_KEY is not a secret key" in one_error_line(
            await _cli("token", "--app", "shop", "--user", "ann", *where))

        # with it: the token minted before, the API key, the webhook's secret
        monkeypatch.setenv("TIDINGS_SECRET_KEY", key)
        server, base = _serve(tmp_path, url, {})
        try:
            assert await asyncio.to_thread(_get, base, "/v1/me/counts", token) == 200
            assert await asyncio.to_thread(_get, base, "/v1/webhooks", shop["api_key"]) == 200
            # a new app while sealed: its secret is written sealed, its tokens work
            new = json.loads(await _ok("app", "create", "later", "--json", *where))
            later = (await _ok("token", "--app", "later", "--user", "bo", *where)).split()[-1]
            assert await asyncio.to_thread(_get, base, "/v1/me/counts", later) == 200
            rotated = json.loads(await _ok("app", "rotate-secret", "--app", "shop", "--json",
                                           *where))
        finally:
            await asyncio.to_thread(_stop, server)
        news = [new["signing_secret"], rotated["signing_secret"]]
        raw = await _raw(tmp_path, url)
        assert not [s for s in plain + news if s.encode() in raw]

        # rekey: the old key is refused from then on, the new one takes
        (tmp_path / "new.key").write_text(other + "\n")
        await _ok("secrets", "rekey", "--new-key-file", str(tmp_path / "new.key"), *where)
        assert "wrong secret key" in one_error_line(await _cli("serve", "--port", "0", *where))
        monkeypatch.delenv("TIDINGS_SECRET_KEY")
        monkeypatch.setenv("TIDINGS_SECRET_KEY_FILE", str(tmp_path / "new.key"))
        await _ok("token", "--app", "later", "--user", "bo", *where)

        # unseal (the key from the flag): every secret plain, no key needed
        monkeypatch.delenv("TIDINGS_SECRET_KEY_FILE")
        await _ok("secrets", "unseal", "--secret-key-file", str(tmp_path / "new.key"), *where)
        raw = await _raw(tmp_path, url)
        assert b"sealed1:" not in raw
        assert all(s.encode() in raw for s in [hook, pepper, *news])
        server, base = _serve(tmp_path, url, {})
        try:
            assert await asyncio.to_thread(_get, base, "/v1/me/counts", later) == 200
            assert await asyncio.to_thread(_get, base, "/v1/webhooks", shop["api_key"]) == 200
        finally:
            await asyncio.to_thread(_stop, server)


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
async def test_a_sealed_secret_moved_to_another_row_does_not_open(tmp_path, kind, monkeypatch):
    monkeypatch.delenv("TIDINGS_SECRET_KEY_FILE", raising=False)
    monkeypatch.setenv("TIDINGS_SECRET_KEY", (await _ok("secrets", "keygen")).strip())
    async with _store(kind, tmp_path) as (where, url):
        await _ok("secrets", "seal", *where)
        for app in ("a", "b"):
            await _ok("app", "create", app, *where)
        await _ok("token", "--app", "b", "--user", "ann", *where)
        await _sql(tmp_path, url, "UPDATE apps SET signing_secret = "
                   "(SELECT signing_secret FROM apps WHERE id = 'a') WHERE id = 'b'")
        line = one_error_line(await _cli("token", "--app", "b", "--user", "ann", *where))
        assert "the sealed secret of apps/b does not open" in line
        assert "moved from another row" in line
        # a plain value put in its place is refused too
        await _sql(tmp_path, url, "UPDATE apps SET signing_secret = 'mine' WHERE id = 'b'")
        line = one_error_line(await _cli("serve", "--port", "0", *where))
        assert "the secret of apps/b is not sealed in a sealed store" in line
