"""``tidings key create --expires-at`` and ``tidings key rotate`` as an
operator runs them, on each store: a key's expiry, its rotation (a new key
printed once, the old one ending after its grace), the listing, and every
bad input as one clear line (tidings/cli.py, tidings/bootstrap.py)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import time
from datetime import UTC, datetime

import pytest

from tests.test_cli_errors import one_error_line, run

pytestmark = pytest.mark.timeout(180)


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds")


@contextlib.contextmanager
def _sqlite(tmp_path):
    data = str(tmp_path / "data")
    assert run("migrate", "--data", data).returncode == 0
    yield ["--data", data]


@contextlib.asynccontextmanager
async def _store(kind: str, tmp_path):
    """The arguments that name a migrated store of ``kind``."""
    if kind == "sqlite":
        with _sqlite(tmp_path) as where:
            yield where
        return
    from tests.services import require_postgres
    from tests.store.pg import fresh_schema

    base = require_postgres()
    async with fresh_schema(base) as pg:
        yield ["--store", f"{base}?search_path={pg['search_path']}"]


async def _run(*args: str):
    return await asyncio.to_thread(run, *args)


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
async def test_keys_that_expire_and_their_rotation(tmp_path, kind):
    async with _store(kind, tmp_path) as where:
        created = json.loads((await _run("app", "create", "shop", "--json", *where)).stdout)
        admin = created["api_key"].split("_")[1]
        ends = _iso(time.time() + 3600)
        r = await _run("key", "create", "--app", "shop", "--scope", "publish", "--name", "ci",
                       "--expires-at", ends, "--json", *where)
        made = json.loads(r.stdout)
        assert datetime.fromisoformat(made["expires_at"]) == datetime.fromisoformat(ends)
        assert made["last_used_at"] is None

        r = await _run("key", "rotate", "--app", "shop", made["prefix"], "--json", *where)
        new = json.loads(r.stdout)
        assert new["app"] == "shop" and new["api_key"].startswith(f"tk_{new['prefix']}_")
        assert (new["scopes"], new["name"], new["expires_at"]) == (["publish"], "ci", None)
        # the old key already ended sooner than a day: the rotation keeps that
        assert new["replaces"]["prefix"] == made["prefix"]
        assert new["replaces"]["expires_at"] == made["expires_at"]

        start = time.time()
        r = await _run("key", "rotate", "--app", "shop", new["prefix"], "--grace", "0", *where)
        lines = r.stdout.splitlines()
        assert lines[0] == "app: shop" and lines[1].startswith("api_key: tk_")
        assert "scopes: publish" in lines and "name: ci" in lines
        assert lines[-1].startswith(f"replaces: {new['prefix']}, expires at ")
        ended = datetime.fromisoformat(lines[-1].rsplit(" ", 1)[1]).timestamp()
        assert start - 1 <= ended <= time.time() + 1

        r = await _run("key", "list", "--app", "shop", *where)
        table = r.stdout.splitlines()
        assert table[0].split() == ["PREFIX", "SCOPES", "CREATED", "EXPIRES", "LAST", "USED",
                                    "NAME"]
        rows = {line.split()[0]: line for line in table[1:]}
        assert "(expired)" in rows[new["prefix"]] and "(expired)" not in rows[made["prefix"]]
        assert rows[admin].split()[3:] == ["-", "never", "-"]  # no expiry, never used, no name
        listed = json.loads((await _run("key", "list", "--app", "shop", "--json",
                                        *where)).stdout)["keys"]
        assert len(listed) == 4 and all(new["api_key"] not in json.dumps(k) for k in listed)


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
async def test_bad_expiries_and_rotations_say_what_is_wrong_in_one_line(tmp_path, kind):
    async with _store(kind, tmp_path) as where:
        created = json.loads((await _run("app", "create", "shop", "--json", *where)).stdout)
        admin = created["api_key"].split("_")[1]
        create = ("key", "create", "--app", "shop", "--scope", "read", "--expires-at")
        now = time.time()
        for value, code, says in [
            ("tomorrow", 2, "--expires-at"),
            ("2030-13-01T00:00:00Z", 2, "--expires-at"),
            ("", 2, "--expires-at"),
            (_iso(now - 60), 1, "in the past"),
            ("2030-01-01T00:00:00", 1, "needs a time zone"),
            (_iso(now + 6 * 365 * 86400), 1, "at most"),
            ("9999-12-31T23:59:59+00:00", 1, "at most"),
        ]:
            r = await _run(*create, value, *where)
            assert r.returncode == code, (value, r.stderr)
            assert says in one_error_line(r), (value, r.stderr)
        for grace, says in [("-1", "--grace"), ("x", "--grace"), ("2592001", "grace is"),
                            ("1" + "0" * 30, "grace is")]:
            r = await _run("key", "rotate", "--app", "shop", admin, "--grace", grace, *where)
            assert says in one_error_line(r), (grace, r.stderr)
        for prefix in ("0000abcd", "NOT-A-KEY", created["api_key"]):
            r = await _run("key", "rotate", "--app", "shop", prefix, *where)
            assert f"app 'shop' has no API key {prefix!r}" in one_error_line(r)
        r = await _run("key", "rotate", "--app", "nope", admin, *where)
        assert "no such app 'nope'" in one_error_line(r)
        listed = json.loads((await _run("key", "list", "--app", "shop", "--json",
                                        *where)).stdout)["keys"]
        assert [(k["prefix"], k["expires_at"]) for k in listed] == [(admin, None)]


async def test_a_cli_key_rotation_reaches_servers_on_postgres_at_once(tmp_path):
    """With --grace 0 the command tells the servers through the store's
    LISTEN/NOTIFY, as a revocation does: this one would otherwise trust the
    key it verified for an hour."""
    from tests.api.test_key_expiry import _until_expired
    from tests.api.test_keys import _publish
    from tests.conftest import run_server
    from tests.services import require_postgres
    from tests.store.pg import fresh_schema

    base = require_postgres()
    async with fresh_schema(base) as pg:
        url = f"{base}?search_path={pg['search_path']}"
        async with run_server(tmp_path, store=url) as server:
            server.service.keys.cache.ttl = 3600
            key = await server.service.create_api_key(server.app, {"publish"})
            assert await _publish(server, key) == 202
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "tidings", "key", "rotate", "--app", server.app,
                key.split("_")[1], "--grace", "0", "--json", "--store", url,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
            out, err = await proc.communicate()
            assert proc.returncode == 0, err
            assert await _until_expired(server, key, within=2) < 1
            assert await _publish(server, json.loads(out)["api_key"]) == 202
