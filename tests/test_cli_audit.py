"""The CLI's changes in the audit log, actor "cli": ``tidings app create``,
``key create|rotate|revoke``, ``app rotate-secret``, ``revoke-tokens`` and
``secrets seal|unseal`` (the operator app's log), on each store, and none of
the secrets they print in any record."""

from __future__ import annotations

import contextlib
import json
from types import SimpleNamespace

import pytest

from tests.api.conftest import allow_inserts, refuse_inserts
from tests.test_cli_keys import _run, _store
from tidings.config import Settings
from tidings.store import open_store
from tidings.store.sealed import KEY_CHECK, check_of

pytestmark = pytest.mark.timeout(180)


@contextlib.asynccontextmanager
async def _opened(where: list[str]):
    flag, value = where
    settings = Settings(data=value) if flag == "--data" else Settings(store=value)
    store = open_store(settings.store, settings.sqlite_path)
    await store.open()
    try:
        yield store
    finally:
        await store.close()


async def _log(where: list[str], app: str) -> list:
    async with _opened(where) as store:
        return await store.audit_log(app, limit=100)


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
async def test_the_clis_changes_are_recorded(tmp_path, kind):
    async with _store(kind, tmp_path) as where:
        app = json.loads((await _run("app", "create", "shop", "--json", *where)).stdout)
        made = json.loads((await _run("key", "create", "--app", "shop", "--scope", "read",
                                      "--json", *where)).stdout)
        new = json.loads((await _run("key", "rotate", "--app", "shop", made["prefix"],
                                     "--json", *where)).stdout)
        assert (await _run("key", "revoke", "--app", "shop", new["prefix"], *where)) \
            .returncode == 0
        secret = json.loads((await _run("app", "rotate-secret", "--app", "shop", "--json",
                                        *where)).stdout)["signing_secret"]
        assert (await _run("revoke-tokens", "--app", "shop", "--user", "ann", *where)) \
            .returncode == 0
        assert (await _run("key", "revoke", "--app", "shop", "0badc0de", *where)) \
            .returncode != 0  # refused: not recorded
        records = await _log(where, "shop")
    assert [(r.action, r.target) for r in records] == [
        ("tokens.revoke", "ann"), ("signing_secret.rotate", "shop"),
        ("key.revoke", new["prefix"]), ("key.rotate", made["prefix"]),
        ("key.create", made["prefix"]), ("app.create", "shop")]
    assert {(r.actor, r.address) for r in records} == {("cli", None)}
    text = repr(records)
    for value in (app["api_key"], app["signing_secret"], made["api_key"], new["api_key"],
                  secret):
        assert value not in text


async def test_sealing_the_secrets_is_recorded_in_the_operator_apps_log(tmp_path):
    key_file = tmp_path / "key"
    key_file.write_text((await _run("secrets", "keygen")).stdout.strip())
    async with _store("sqlite", tmp_path) as where:
        assert (await _run("app", "create", "default", *where)).returncode == 0
        for verb in ("seal", "unseal"):
            r = await _run("secrets", verb, "--secret-key-file", str(key_file), *where)
            assert r.returncode == 0, r.stderr
        records = await _log(where, "default")
    assert [(r.action, r.actor) for r in records[:2]] == [("secrets.unseal", "cli"),
                                                          ("secrets.seal", "cli")]
    assert records[0].details["rows"] >= 1


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
async def test_a_seal_commits_with_its_record_or_not_at_all(tmp_path, kind):
    """A store that refuses the record of ``secrets seal`` stays plain (the
    CLI says why, in one line); refusing no more, it is sealed, recorded."""
    key_file = tmp_path / "key"
    key_file.write_text((await _run("secrets", "keygen")).stdout.strip())
    async with _store(kind, tmp_path) as where:
        assert (await _run("app", "create", "default", *where)).returncode == 0
        async with _opened(where) as store:
            holder = SimpleNamespace(service=SimpleNamespace(store=store))
            await refuse_inserts(holder, "audit_log")
            r = await _run("secrets", "seal", "--secret-key-file", str(key_file), *where)
            assert r.returncode != 0 and "Traceback" not in r.stderr
            assert r.stderr.strip().splitlines()[-1] == (
                "Error: the store refused the audit record of secrets.seal, so nothing "
                "changed; retry later")
            assert check_of(await store.secret_rows(KEY_CHECK)) is None
            await allow_inserts(holder, "audit_log")
        r = await _run("secrets", "seal", "--secret-key-file", str(key_file), *where)
        assert r.returncode == 0, r.stderr
        records = await _log(where, "default")
    assert [r.action for r in records[:2]] == ["secrets.seal", "app.create"]
