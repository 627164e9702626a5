"""``tidings secrets`` as an operator runs it, on each store: after ``seal``
the store holds none of its secrets in plain text, yet every credential made
before keeps working on a server started with the key; a server without it,
or with another, refuses to start in one line; new secrets are written
sealed; ``rekey`` and ``unseal`` go back and forth; a sealed value moved
into another row, or into the other column of its row, does not open there;
a store sealed in the first format still opens and ``rekey`` moves it on; and
none of ``seal``, ``unseal`` and ``rekey`` runs while a node serves the store
(tidings/core/seal.py, tidings/store/sealed.py, tidings/bootstrap.py)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import json
import os
import time

import asyncpg
import httpx
import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from tests.test_cli_errors import one_error_line, run
from tests.test_durability import _free_port, _start
from tidings.core.seal import parse_key
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
        assert b"sealed2:" in raw
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
        assert b"sealed2:" not in raw
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
        assert "the sealed secret of apps/b (signing_secret) does not open" in line
        assert "moved from another row" in line
        # a plain value put in its place is refused too
        await _sql(tmp_path, url, "UPDATE apps SET signing_secret = 'mine' WHERE id = 'b'")
        line = one_error_line(await _cli("serve", "--port", "0", *where))
        assert "the secret of apps/b (signing_secret) is not sealed in a sealed store" in line


async def _leases(tmp_path, url: str | None) -> list:
    store = open_store(url, tmp_path / "data" / "tidings.db")
    await store.open()
    try:
        return await store.leases()
    finally:
        await store.close()


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
async def test_seal_unseal_and_rekey_refuse_while_a_node_serves_the_store(tmp_path, kind,
                                                                          monkeypatch):
    """A serving node holds a lease on the store: the commands that change
    its secrets refuse in one line while it lasts, and go once the node has
    stopped (at once), or once a killed node's lease has expired; --force
    goes anyway."""
    monkeypatch.delenv("TIDINGS_SECRET_KEY_FILE", raising=False)
    monkeypatch.delenv("TIDINGS_SECRET_KEY", raising=False)
    lease = 6.0
    monkeypatch.setenv("TIDINGS_NODE_LEASE", str(lease))
    key, other = [(await _ok("secrets", "keygen")).strip() for _ in range(2)]
    (tmp_path / "other.key").write_text(other)
    async with _store(kind, tmp_path) as (where, url):
        server, _ = await asyncio.to_thread(_serve, tmp_path, url, {})
        try:
            monkeypatch.setenv("TIDINGS_SECRET_KEY", key)
            line = one_error_line(await _cli("secrets", "seal", *where))
            assert "1 node(s) serving this store: 127.0.0.1:" in line
            assert f"(pid {server.pid}, 127.0.0.1:" in line and "or give --force" in line
            assert b"sealed2:" not in await _raw(tmp_path, url)
        finally:
            await asyncio.to_thread(_stop, server)
        assert await _leases(tmp_path, url) == []  # released at a clean stop
        await _ok("secrets", "seal", *where)

        server, base = await asyncio.to_thread(_serve, tmp_path, url, {})
        for args in (("unseal",), ("rekey", "--new-key-file", str(tmp_path / "other.key"))):
            assert "serving this store" in one_error_line(await _cli("secrets", *args, *where))
        server.kill()  # no clean stop: its lease stays until it expires
        await asyncio.to_thread(server.wait, 10)
        server.stdout.close()
        (held,) = await _leases(tmp_path, url)
        assert held.pid == server.pid
        deadline = time.monotonic() + 3 * lease
        while await _leases(tmp_path, url):
            assert time.monotonic() < deadline, "a killed node's lease never expired"
            await asyncio.sleep(0.2)
        await _ok("secrets", "rekey", "--new-key-file", str(tmp_path / "other.key"), *where)

        # --force: the operator's word that the node will be restarted at once
        monkeypatch.setenv("TIDINGS_SECRET_KEY", other)
        server, base = await asyncio.to_thread(_serve, tmp_path, url, {})
        try:
            assert "serving this store" in one_error_line(
                await _cli("secrets", "unseal", *where))
            assert "unsealed the secrets of" in await _ok("secrets", "unseal", "--force",
                                                          *where)
        finally:
            await asyncio.to_thread(_stop, server)
        assert b"sealed2:" not in await _raw(tmp_path, url)


async def _sealed_webhook(tmp_path, url: str | None, app: str, key: str) -> None:
    """Give ``app`` a webhook endpoint, rotated once: both its secrets sealed."""
    store = open_store(url, tmp_path / "data" / "tidings.db")
    await store.open()
    try:
        await store.unlock(parse_key(key))
        assert await store.add_webhook(app, WebhookEndpoint("wh_1", "https://h.test/x", "one",
                                                            time.time()), 10)
        assert await store.rotate_webhook(app, "wh_1", "two", time.time() + 60)
    finally:
        await store.close()


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
async def test_sealed_secrets_swapped_between_the_columns_of_one_row_do_not_open(
        tmp_path, kind, monkeypatch):
    """The previous signing secret put in the current one's place (and the
    current in the previous's) is refused in one line naming the row and the
    column, as is the same swap of a webhook endpoint's secrets."""
    monkeypatch.delenv("TIDINGS_SECRET_KEY_FILE", raising=False)
    key = (await _ok("secrets", "keygen")).strip()
    monkeypatch.setenv("TIDINGS_SECRET_KEY", key)
    async with _store(kind, tmp_path) as (where, url):
        await _ok("secrets", "seal", *where)
        await _ok("app", "create", "b", *where)
        await _ok("app", "rotate-secret", "--app", "b", *where)
        await _ok("token", "--app", "b", "--user", "ann", *where)
        swap = ("UPDATE apps SET signing_secret = previous_secret, "
                "previous_secret = signing_secret WHERE id = 'b'")
        await _sql(tmp_path, url, swap)
        line = one_error_line(await _cli("token", "--app", "b", "--user", "ann", *where))
        assert "the sealed secret of apps/b (signing_secret) does not open" in line
        assert "moved from another row or column" in line
        await _sql(tmp_path, url, swap)  # back in place: it opens again
        await _ok("token", "--app", "b", "--user", "ann", *where)

        await _sealed_webhook(tmp_path, url, "b", key)
        await _sql(tmp_path, url, "UPDATE webhooks SET secret = previous_secret, "
                   "previous_secret = secret WHERE id = 'wh_1'")
        line = one_error_line(await _cli("serve", "--port", "0", *where))
        assert "the sealed secret of webhooks/b/wh_1 (secret) does not open" in line


def _first_format(key: str, value: str, where: str) -> str:
    """``value`` as the first format sealed it: bound to its row only."""
    nonce = os.urandom(12)
    raw = nonce + AESGCM(parse_key(key)).encrypt(nonce, value.encode(), where.encode())
    return "sealed1:" + base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
async def test_a_store_sealed_in_the_first_format_opens_and_rekey_moves_it_on(
        tmp_path, kind, monkeypatch):
    """A store sealed before the column was bound (``sealed1:``, the first key
    check) still opens and rotates; ``rekey`` to the same key rewrites it in
    the current format, after which a first-format value is refused."""
    monkeypatch.delenv("TIDINGS_SECRET_KEY_FILE", raising=False)
    monkeypatch.delenv("TIDINGS_SECRET_KEY", raising=False)
    key = (await _ok("secrets", "keygen")).strip()
    (tmp_path / "secret.key").write_text(key)
    async with _store(kind, tmp_path) as (where, url):
        shop = json.loads(await _ok("app", "create", "shop", "--json", *where))
        _, pepper = await _webhook_and_pepper(tmp_path, url, "shop")
        old_secret = _first_format(key, shop["signing_secret"], "apps/shop")
        check = hmac.new(parse_key(key), b"tidings secret key check v1",
                         hashlib.sha256).hexdigest()
        for statement in (
                f"UPDATE apps SET signing_secret = '{old_secret}' WHERE id = 'shop'",
                "UPDATE meta SET value = '{}' WHERE key = 'pepper'".format(
                    _first_format(key, pepper, "meta/pepper")),
                "UPDATE webhooks SET secret = '{}' WHERE id = 'wh_1'".format(
                    _first_format(key, "whsec", "webhooks/shop/wh_1")),
                f"INSERT INTO meta (key, value) VALUES ('secret_key_check', '{check}')"):
            await _sql(tmp_path, url, statement)

        monkeypatch.setenv("TIDINGS_SECRET_KEY", key)
        await _ok("token", "--app", "shop", "--user", "ann", *where)
        rotated = json.loads(await _ok("app", "rotate-secret", "--app", "shop", "--json",
                                       *where))
        await _ok("token", "--app", "shop", "--user", "ann", *where)
        assert b"sealed1:" in await _raw(tmp_path, url)  # the pepper and the webhook's

        out = await _ok("secrets", "rekey", "--new-key-file", str(tmp_path / "secret.key"),
                        *where)
        assert "resealed the secrets of 3 rows" in out
        raw = await _raw(tmp_path, url)
        assert b"sealed1:" not in raw and b"sealed2:" in raw
        assert rotated["signing_secret"].encode() not in raw
        line = one_error_line(await _cli("secrets", "rekey", "--new-key-file",
                                         str(tmp_path / "secret.key"), *where))
        assert "the new key is the store's key already" in line
        await _ok("token", "--app", "shop", "--user", "ann", *where)

        # a first-format value put back (from a backup) is refused from now on
        await _sql(tmp_path, url, f"UPDATE apps SET previous_secret = '{old_secret}' "
                   "WHERE id = 'shop'")
        line = one_error_line(await _cli("token", "--app", "shop", "--user", "ann", *where))
        assert "the sealed secret of apps/shop (previous_secret) is in the first format" in line
