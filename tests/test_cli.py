"""The CLI as a new user runs it: serve, app create, token, send, listen."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
import time
from functools import partial

import httpx
import pytest

from tests.test_durability import _free_port, _start, read_first_start
from tidings.core import auth
from tidings.service.apps import APP_CACHE_TTL, SWEEP_INTERVAL
from tidings.service.keys import KEY_CACHE_TTL
from tidings.service.revocations import REFRESH_INTERVAL
from tidings.store import migrations


def tidings(*args: str, **kw) -> str:
    return subprocess.check_output([sys.executable, "-m", "tidings", *args], text=True,
                                   timeout=60, **kw)


@pytest.mark.timeout(120)
def test_first_start_then_operator_commands_while_serving(tmp_path):
    data = tmp_path / "data"
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    server = _start(data, port)
    try:
        # first start printed an API key, a demo token and a working curl line
        server.stdout.flush()
        assert (data / "tidings.db").exists()
        created = json.loads(tidings("app", "create", "shop", "--json", "--data", str(data)))
        assert set(created) == {"app", "api_key", "signing_secret"}
        token = tidings("token", "--app", created["app"], "--user", "ann", "--ttl", "600",
                        "--data", str(data)).strip().splitlines()[-1]
        assert token.count(".") == 2

        listener = subprocess.Popen(
            [sys.executable, "-m", "tidings", "listen", "--url", url, "--token", token,
             "--count", "1"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            hello = json.loads(listener.stdout.readline())
            assert hello["type"] == "hello"
            sent = json.loads(tidings("send", "--url", url, "--key", created["api_key"],
                                      "--user", "ann", "--title", "from the terminal"))
            assert sent["status"] == "accepted" and sent["recipients"] == 1
            out, _ = listener.communicate(timeout=30)
        finally:
            listener.kill()
        events = [json.loads(line) for line in out.splitlines()]
        assert events[-1]["type"] == "notification"
        assert events[-1]["notification"]["title"] == "from the terminal"

        # a token for an app that does not exist is a clear error, not a traceback
        bad = subprocess.run([sys.executable, "-m", "tidings", "token", "--app", "nope",
                              "--user", "x", "--data", str(data)], capture_output=True,
                             text=True, timeout=60)
        assert bad.returncode != 0 and "Traceback" not in bad.stderr
        assert "no such app" in bad.stderr
    finally:
        server.terminate()
        server.wait(10)
        server.stdout.close()


@pytest.mark.timeout(120)
def test_serve_prints_credentials_that_work(tmp_path):
    data = tmp_path / "data"
    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "tidings", "serve", "--data", str(data), "--port", str(port)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        first = read_first_start(server)
        text, key, token = first["text"], first["api_key"], first["token"]
        curl = re.search(r"curl .*", text).group(0)
        assert f"http://127.0.0.1:{port}/v1/notifications" in curl
        for _ in range(100):
            try:
                httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=0.5)
                break
            except httpx.HTTPError:
                pass
        assert subprocess.run(curl, shell=True, capture_output=True, timeout=30).returncode == 0
        r = httpx.get(f"http://127.0.0.1:{port}/v1/me/counts",
                      headers={"Authorization": f"Bearer {token}"})
        assert r.json() == {"unread": 1, "unseen": 1, "at": {"seq": 1, "feed": 0, "rev": 0}}
        assert key.startswith("tk_")
        demo = re.search(r"in a browser: (\S+)", text).group(1)
        assert demo == f"http://127.0.0.1:{port}/demo?token={token}"
        assert httpx.get(demo).status_code == 200
        dashboard = re.search(r"Dashboard: (\S+)", text).group(1)
        login = httpx.post(dashboard + "/login", data={"key": key})
        assert login.status_code == 303 and login.headers["location"] == "/dashboard"
    finally:
        server.terminate()
        server.wait(10)
        server.stdout.close()


@pytest.mark.timeout(120)
def test_key_commands_while_serving_and_a_revoke_within_the_cache_ttl(tmp_path):
    """``tidings key`` on the SQLite file a server uses: no broker between
    them, so the server drops the revoked key when its cache entry expires."""
    data = tmp_path / "data"
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    server = _start(data, port)  # its first start made the app "default"
    try:
        made = json.loads(tidings("key", "create", "--app", "default", "--scope", "publish",
                                  "--name", "ci", "--json", "--data", str(data)))
        assert set(made) == {"app", "api_key", "prefix", "scopes", "name", "created_at",
                             "expires_at", "last_used_at"}
        assert (made["app"], made["scopes"], made["name"]) == ("default", ["publish"], "ci")
        assert made["api_key"].startswith(f"tk_{made['prefix']}_")
        auth = {"Authorization": f"Bearer {made['api_key']}"}
        publish = {"to": {"users": ["ann"]}, "title": "hi"}
        assert httpx.post(f"{url}/v1/notifications", json=publish, headers=auth,
                          timeout=10).status_code == 202  # the server now trusts it
        listed = json.loads(tidings("key", "list", "--app", "default", "--json",
                                    "--data", str(data)))
        assert listed["app"] == "default"
        assert [(k["name"], k["scopes"]) for k in listed["keys"]] == [
            (None, ["admin", "publish", "read"]), ("ci", ["publish"])]
        assert made["api_key"] not in json.dumps(listed)
        table = tidings("key", "list", "--app", "default", "--data", str(data)).splitlines()
        assert table[0].split() == ["PREFIX", "SCOPES", "CREATED", "EXPIRES", "LAST", "USED",
                                    "NAME"]
        assert table[2].split()[::5] == [made["prefix"], "ci"]  # no expiry, never used
        out = tidings("key", "revoke", "--app", "default", made["prefix"], "--data", str(data))
        assert f"revoked {made['prefix']}" in out
        start = time.monotonic()
        while httpx.post(f"{url}/v1/notifications", json=publish, headers=auth,
                         timeout=10).status_code == 202:
            assert time.monotonic() - start < KEY_CACHE_TTL + 1, "the revoked key still works"
            time.sleep(0.05)
        r = httpx.post(f"{url}/v1/notifications", json=publish, headers=auth, timeout=10)
        assert r.status_code == 401 and r.json()["error"]["code"] == "bad_api_key"
        listed = json.loads(tidings("key", "list", "--app", "default", "--json",
                                    "--data", str(data)))
        assert [k["name"] for k in listed["keys"]] == [None]
    finally:
        server.terminate()
        server.wait(10)
        server.stdout.close()


@pytest.mark.timeout(120)
def test_app_rotate_secret_while_serving_ends_the_old_secret_within_the_cache_ttl(tmp_path):
    """``tidings app rotate-secret --overlap 0`` on the SQLite file a server
    uses: no broker between them, so the server refuses the old secret when
    its record of the app expires, and ends the stream it opened at the
    sweep after that."""
    data = tmp_path / "data"
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    server = _start(data, port)  # its first start made the app "default"
    try:
        old = tidings("token", "--app", "default", "--user", "ann",
                      "--data", str(data)).strip().splitlines()[-1]
        me = {"Authorization": f"Bearer {old}"}
        assert httpx.get(f"{url}/v1/me/counts", headers=me, timeout=10).status_code == 200
        with httpx.stream("GET", f"{url}/v1/me/events", params={"token": old},
                          timeout=30) as sse:
            lines = sse.iter_lines()
            assert '"hello"' in next(line for line in lines if line.startswith("data: "))
            out = json.loads(tidings("app", "rotate-secret", "--app", "default", "--overlap",
                                     "0", "--json", "--data", str(data)))
            start = time.monotonic()
            assert out["app"] == "default" and out["previous_secret_valid_until"] is None
            for _ in lines:  # until the server ends the response
                pass
            took = time.monotonic() - start
        assert took < APP_CACHE_TTL + SWEEP_INTERVAL + 1, took
        r = httpx.get(f"{url}/v1/me/counts", headers=me, timeout=10)
        assert r.status_code == 401 and r.json()["error"]["code"] == "bad_token"
        fresh = tidings("token", "--app", "default", "--user", "ann",
                        "--data", str(data)).strip().splitlines()[-1]  # the new secret's
        signed = auth.mint_token("default", "ann", out["signing_secret"], 60)
        for token in (fresh, signed):
            assert httpx.get(f"{url}/v1/me/counts", timeout=10,
                             headers={"Authorization": f"Bearer {token}"}).status_code == 200
        text = tidings("app", "rotate-secret", "--app", "default", "--data", str(data))
        lines = text.splitlines()
        assert lines[0] == "app: default" and lines[1].startswith("signing_secret: ")
        assert lines[2].startswith("previous secret: taken until ")
        for args, says in [(("--app", "nope"), "no such app 'nope'"),
                           (("--app", "default", "--overlap", "-1"), "--overlap"),
                           (("--app", "default", "--overlap", "99999999"),
                            "overlap is 0 to 2592000 seconds")]:
            bad = subprocess.run([sys.executable, "-m", "tidings", "app", "rotate-secret",
                                  *args, "--data", str(data)], capture_output=True, text=True,
                                 timeout=60)
            assert bad.returncode != 0 and "Traceback" not in bad.stderr, bad.stderr
            assert says in bad.stderr, bad.stderr
    finally:
        server.terminate()
        server.wait(10)
        server.stdout.close()


def _minted(data, user: str) -> str:
    """A token of ``user`` of the app "default", minted by ``tidings token``."""
    return tidings("token", "--app", "default", "--user", user,
                   "--data", str(data)).strip().splitlines()[-1]


def _counts(url: str, token: str) -> httpx.Response:
    return httpx.get(f"{url}/v1/me/counts", timeout=10,
                     headers={"Authorization": f"Bearer {token}"})


@pytest.mark.timeout(120)
def test_revoke_tokens_while_serving_ends_the_old_tokens_within_the_refresh(tmp_path):
    """``tidings revoke-tokens`` on the SQLite file a server uses: no broker
    between them, so the server refuses the user's old tokens at its next
    read of the store, and ends the stream one of them opened."""
    data = tmp_path / "data"
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    server = _start(data, port)  # its first start made the app "default"
    try:
        token, counts = partial(_minted, data), partial(_counts, url)

        old, bob = token("ann"), token("bob")
        assert counts(old).status_code == 200
        with httpx.stream("GET", f"{url}/v1/me/events", params={"token": old},
                          timeout=30) as sse:
            lines = sse.iter_lines()
            assert '"hello"' in next(line for line in lines if line.startswith("data: "))
            asked = time.time()
            out = json.loads(tidings("revoke-tokens", "--app", "default", "--user", "ann",
                                     "--json", "--data", str(data)))
            start = time.monotonic()
            assert set(out) == {"app", "user", "revoked_before"}
            assert (out["app"], out["user"]) == ("default", "ann")
            assert asked < out["revoked_before"] <= time.time()
            for _ in lines:  # until the server ends the response
                pass
            took = time.monotonic() - start
        assert took < REFRESH_INTERVAL + 1.5, took
        r = counts(old)
        assert r.status_code == 401 and r.json()["error"]["code"] == "token_revoked"
        assert counts(bob).status_code == 200
        assert counts(token("ann")).status_code == 200  # minted after the revocation
        text = tidings("revoke-tokens", "--app", "default", "--user", "team/ann",
                       "--data", str(data))
        assert text.startswith("revoked the tokens of team/ann (app default) issued before ")
        for args, says in [(("--app", "nope", "--user", "ann"), "no such app 'nope'"),
                           (("--app", "default", "--user", "a\x01b"), "--user"),
                           (("--app", "default", "--user", "x" * 129), "--user"),
                           (("--app", "default"), "--user")]:
            bad = subprocess.run([sys.executable, "-m", "tidings", "revoke-tokens", *args,
                                  "--data", str(data)], capture_output=True, text=True,
                                 timeout=60)
            assert bad.returncode != 0 and "Traceback" not in bad.stderr, bad.stderr
            assert says in bad.stderr and len(bad.stderr.splitlines()) == 1, bad.stderr
    finally:
        server.terminate()
        server.wait(10)
        server.stdout.close()


@pytest.mark.timeout(120)
def test_revoke_one_token_while_serving_ends_it_alone_within_the_refresh(tmp_path):
    """``tidings revoke-tokens --jti`` (and ``--token -``, the token on stdin)
    on the SQLite file a server uses: the server refuses that token at its
    next read of the store and ends the stream it opened; the user's other
    token goes on.  Bad arguments are one-line errors."""
    import jwt

    data = tmp_path / "data"
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    server = _start(data, port)  # its first start made the app "default"
    try:
        token, counts = partial(_minted, data), partial(_counts, url)

        phone, laptop, tablet = token("ann"), token("ann"), token("ann")
        jti = jwt.decode(phone, options={"verify_signature": False})["jti"]
        with httpx.stream("GET", f"{url}/v1/me/events", params={"token": phone},
                          timeout=30) as sse:
            lines = sse.iter_lines()
            assert '"hello"' in next(line for line in lines if line.startswith("data: "))
            out = json.loads(tidings("revoke-tokens", "--app", "default", "--user", "ann",
                                     "--jti", jti, "--json", "--data", str(data)))
            start = time.monotonic()
            assert out["jti"] == jti and set(out) == {"app", "user", "jti", "revoked_until"}
            for _ in lines:  # until the server ends the response
                pass
            took = time.monotonic() - start
        assert took < REFRESH_INTERVAL + 1.5, took
        r = counts(phone)
        assert r.status_code == 401 and r.json()["error"]["code"] == "token_revoked"
        assert counts(laptop).status_code == 200
        text = tidings("revoke-tokens", "--app", "default", "--user", "ann", "--token", "-",
                       "--data", str(data), input=tablet + "\n")
        assert text.startswith("revoked the token "), text
        assert "of ann (app default) until it expires" in text
        for args, says in [(("--jti", "a", "--token", "b"), "--jti"),
                           (("--jti", "a\x01b"), "--jti"),
                           (("--token", laptop + "x"), "not a token of this app"),
                           (("--token", token("bob")), "not a token of this user")]:
            bad = subprocess.run([sys.executable, "-m", "tidings", "revoke-tokens", "--app",
                                  "default", "--user", "ann", *args, "--data", str(data)],
                                 capture_output=True, text=True, timeout=60)
            assert bad.returncode != 0 and "Traceback" not in bad.stderr, bad.stderr
            assert says in bad.stderr and len(bad.stderr.splitlines()) == 1, bad.stderr
        deadline = time.monotonic() + REFRESH_INTERVAL + 2
        while counts(tablet).status_code != 401:
            assert time.monotonic() < deadline, "the token revoked from stdin still works"
            time.sleep(0.1)
        assert counts(laptop).status_code == 200
    finally:
        server.terminate()
        server.wait(10)
        server.stdout.close()


@pytest.mark.timeout(120)
async def test_a_cli_token_revocation_reaches_servers_on_postgres_at_once(tmp_path):
    """As a key's revocation: the command tells the servers through the
    store's LISTEN/NOTIFY; this one's own reads of the store find nothing."""
    from tests.api.test_token_revocation import status, until_refused
    from tests.conftest import run_server
    from tests.gateway.live import closed_with, recv_events, ws_connect
    from tests.services import require_postgres
    from tests.store.pg import fresh_schema

    base = require_postgres()
    async with fresh_schema(base) as pg:
        url = f"{base}?search_path={pg['search_path']}"
        async with run_server(tmp_path, store=url) as server:
            server.service.revocations._read_at = time.time() + 10**6
            old = await server.token("ann")
            assert await status(server, old) == 200
            ws = await ws_connect(server, old)
            try:
                assert (await recv_events(ws, 1))[0]["type"] == "hello"
                proc = await asyncio.create_subprocess_exec(
                    sys.executable, "-m", "tidings", "revoke-tokens", "--app", server.app,
                    "--user", "ann", "--store", url, stdout=asyncio.subprocess.PIPE,
                    stderr=asyncio.subprocess.PIPE)
                out, err = await proc.communicate()
                assert proc.returncode == 0, err
                assert await until_refused(server, old, within=2) < 1
                assert (await closed_with(ws, timeout=2))[1] == "token revoked"
            finally:
                await ws.close()


@pytest.mark.timeout(120)
async def test_a_cli_revoke_reaches_servers_on_postgres_at_once(tmp_path):
    """With a PostgreSQL store the command tells the servers through the
    store's LISTEN/NOTIFY, as a server's own revocation does: this one would
    otherwise trust the key it verified for an hour."""
    from tests.api.test_keys import _publish, _until_refused
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
                sys.executable, "-m", "tidings", "key", "revoke", "--app", server.app,
                key.split("_")[1], "--store", url, stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE)
            out, err = await proc.communicate()
            assert proc.returncode == 0, err
            assert await _until_refused(server, key, within=2) < 1


@pytest.mark.timeout(120)
async def test_a_cli_rotation_reaches_servers_on_postgres_at_once(tmp_path):
    """As a revocation: the command tells the servers through the store's
    LISTEN/NOTIFY; this one would otherwise trust its record for an hour."""
    from tests.api.test_signing_secret import _counts, _until_refused
    from tests.conftest import run_server
    from tests.services import require_postgres
    from tests.store.pg import fresh_schema

    base = require_postgres()
    async with fresh_schema(base) as pg:
        url = f"{base}?search_path={pg['search_path']}"
        async with run_server(tmp_path, store=url) as server:
            server.service.apps.cache.ttl = 3600
            old = auth.mint_token(server.app, "ann", server.signing_secret, 600)
            assert await _counts(server, old) == 200
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "tidings", "app", "rotate-secret", "--app", server.app,
                "--overlap", "0", "--json", "--store", url, stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE)
            out, err = await proc.communicate()
            assert proc.returncode == 0, err
            assert await _until_refused(server, old, within=2) < 1
            new = json.loads(out)["signing_secret"]
            assert await _counts(server, auth.mint_token(server.app, "ann", new, 60)) == 200


def test_app_ids_cannot_carry_the_channel_separator(tmp_path):
    bad = subprocess.run([sys.executable, "-c", (
        "import asyncio, sys\n"
        "from tidings.api.app import build_service\n"
        "from tidings.config import Settings\n"
        "from tidings.errors import Invalid\n"
        "async def main():\n"
        f"    s = build_service(Settings(data={str(tmp_path)!r}))\n"
        "    await s.open()\n"
        "    try:\n"
        "        await s.create_app('x', app_id='a:u')\n"
        "    except Invalid as e:\n"
        "        print(e.field)\n"
        "    finally:\n"
        "        await s.close()\n"
        "asyncio.run(main())\n")], capture_output=True, text=True, timeout=60)
    assert bad.stdout.strip() == "app", bad.stderr


def test_migrate_the_embedded_store(tmp_path):
    data = str(tmp_path / "data")
    latest = migrations.latest("sqlite")
    first = tidings("migrate", "--data", data).splitlines()
    assert first == [f"applied schema v{v}" for v in range(1, latest + 1)] + [
        f"schema is at v{latest}"]
    assert tidings("migrate", "--data", data).strip() == f"schema is at v{latest}; nothing to apply"


@pytest.mark.timeout(120)
async def test_serve_on_postgres_refuses_pending_migrations_until_migrate(tmp_path):
    from tests.services import require_postgres
    from tests.store.pg import fresh_schema

    base = require_postgres()
    async with fresh_schema(base, migrated=False) as pg:
        url = f"{base}?search_path={pg['search_path']}"
        refused = subprocess.run(
            [sys.executable, "-m", "tidings", "serve", "--store", url, "--port", "1"],
            capture_output=True, text=True, timeout=60)
        assert refused.returncode != 0 and "Traceback" not in refused.stderr
        assert f"run `tidings migrate --store {url}` first" in refused.stderr

        latest = migrations.latest("postgres")
        out = tidings("migrate", "--store", url).splitlines()
        assert out[-1] == f"schema is at v{latest}"
        assert out[:-1] == [f"applied schema v{v}" for v in range(1, latest + 1)]
        created = json.loads(tidings("app", "create", "shop", "--json", "--store", url))
        assert created["api_key"]


def test_vapid_prints_settings_that_turn_web_push_on(monkeypatch):
    from tidings.channels.webpush import vapid_public_key
    from tidings.config import from_env

    keys = json.loads(tidings("vapid", "--json"))
    assert vapid_public_key(keys["private_key"]) == keys["public_key"]
    lines = tidings("vapid").splitlines()
    settings = dict(line.split("=", 1) for line in lines if not line.startswith("#"))
    assert set(settings) == {"TIDINGS_PUSH_VAPID_PRIVATE_KEY", "TIDINGS_PUSH_VAPID_SUBJECT"}
    for name, value in settings.items():
        monkeypatch.setenv(name, value)
    push = from_env().push
    assert push is not None and push.vapid_subject.startswith("mailto:")
    assert f"# {vapid_public_key(push.vapid_private_key)}" in lines
