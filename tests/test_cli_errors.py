"""The CLI when things go wrong, as a new user meets it: every failure is one
clear line on stderr and a non-zero exit (``--debug`` shows the traceback),
``listen`` says what it is doing, ``serve`` validates before it says
"listening", and the operator commands never create a store."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest

from tests.test_durability import _free_port, _start

pytestmark = pytest.mark.timeout(120)


def run(*args: str, cwd=None, timeout: float = 60) -> subprocess.CompletedProcess:
    env = {**os.environ}
    env.pop("TIDINGS_DEBUG", None)
    return subprocess.run([sys.executable, "-m", "tidings", *args], capture_output=True,
                          text=True, timeout=timeout, cwd=cwd, env=env)


def one_error_line(r: subprocess.CompletedProcess) -> str:
    """The single line a failure printed on stderr."""
    assert r.returncode != 0, r
    assert "Traceback" not in r.stderr
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("Error: ")
    return lines[0]


@pytest.mark.parametrize("store", ["mysql://x/y", "not a url"])
def test_serve_with_a_store_url_it_cannot_use(tmp_path, store):
    line = one_error_line(run("serve", "--store", store, "--port", "0", cwd=tmp_path))
    assert f"unsupported store URL {store!r}" in line and "postgresql://" in line


def test_serve_with_an_unreachable_broker(tmp_path):
    r = run("serve", "--broker", "redis://127.0.0.1:1", "--port", "0", "--data",
            str(tmp_path / "d"))
    line = one_error_line(r)
    assert "Redis broker at 127.0.0.1:1" in line
    assert "listening" not in r.stdout


def test_debug_shows_the_traceback(tmp_path):
    r = run("--debug", "serve", "--store", "mysql://x/y", "--port", "0", cwd=tmp_path)
    assert r.returncode != 0
    assert "Traceback" in r.stderr and "ValueError: unsupported store URL" in r.stderr


def test_serve_port_out_of_range_is_refused_before_anything_starts(tmp_path):
    r = run("serve", "--port", "99999", "--data", str(tmp_path / "d"))
    assert r.returncode == 2
    assert "99999 is not in the range 0<=x<=65535" in one_error_line(r)
    assert r.stdout == "" and not (tmp_path / "d").exists()


def test_serve_on_a_port_in_use_says_so_and_never_says_listening(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        r = run("serve", "--port", str(port), "--data", str(tmp_path / "d"))
    line = one_error_line(r)
    assert f"cannot listen on 127.0.0.1:{port}" in line and "in use" in line
    assert "listening" not in r.stdout and "API key" not in r.stdout


def test_serve_port_zero_prints_the_port_it_listens_on(tmp_path):
    proc = subprocess.Popen([sys.executable, "-m", "tidings", "serve", "--port", "0", "--data",
                             str(tmp_path / "d")], stdout=subprocess.PIPE, text=True)
    try:
        for line in proc.stdout:
            if "listening on" in line:
                break
        url = line.split("listening on ")[1].split()[0]
        assert not url.endswith(":0")
        import httpx

        assert httpx.get(url + "/healthz").status_code == 200  # printed once it listens
    finally:
        proc.terminate()
        proc.wait(10)
        proc.stdout.close()


def test_send_with_the_server_down():
    port = _free_port()
    line = one_error_line(run("send", "--url", f"http://127.0.0.1:{port}", "--key", "k",
                              "--user", "u", "--title", "t"))
    assert f"cannot reach http://127.0.0.1:{port}" in line


def test_listen_with_the_server_down_says_so_and_gives_up(tmp_path):
    port = _free_port()
    r = run("listen", "--url", f"http://127.0.0.1:{port}", "--token", "t", "--retries", "2")
    assert r.returncode == 1 and "Traceback" not in r.stderr and r.stdout == ""
    lines = r.stderr.splitlines()
    assert lines[0] == f"tidings listen: connecting to http://127.0.0.1:{port}"
    assert "cannot connect (connection refused); retry 1 of 2 in" in lines[1]
    assert "retry 2 of 2 in" in lines[2]
    assert lines[3].startswith("Error: gave up after 3 attempts to reach")
    assert len(lines) == 4


def test_listen_with_a_bad_token_or_cursor(tmp_path):
    line = one_error_line(run("listen", "--token", "t", "--cursor", "nonsense"))
    assert "cursor" in line
    data = tmp_path / "data"
    port = _free_port()
    server = _start(data, port)
    try:
        r = run("listen", "--url", f"http://127.0.0.1:{port}", "--token", "not-a-token")
        assert r.returncode == 1 and "Traceback" not in r.stderr
        assert r.stderr.splitlines()[-1].startswith("Error: 401 unauthorized")
    finally:
        server.terminate()
        server.wait(10)
        server.stdout.close()


def test_app_create_takes_the_name_as_id_and_token_finds_it(tmp_path):
    data = str(tmp_path / "data")
    assert run("migrate", "--data", data).returncode == 0
    created = json.loads(run("app", "create", "myapp", "--json", "--data", data).stdout)
    assert created["app"] == "myapp"
    r = run("token", "--app", "myapp", "--user", "ann", "--data", data)
    assert r.returncode == 0 and r.stdout.strip().count(".") == 2
    # a name that is not an id gets a generated id, or the one given with --id
    named = json.loads(run("app", "create", "My Shop", "--json", "--data", data).stdout)
    assert named["app"].startswith("app_")
    chosen = json.loads(run("app", "create", "My Shop", "--id", "shop", "--json",
                            "--data", data).stdout)
    assert chosen["app"] == "shop"
    line = one_error_line(run("app", "create", "myapp", "--data", data))
    assert "app 'myapp' already exists in" in line
    line = one_error_line(run("app", "create", "x", "--id", "Bad:Id", "--data", data))
    assert "app id must be" in line
    # "no such app" says which store it looked in and which apps are there
    line = one_error_line(run("token", "--app", "nope", "--user", "x", "--data", data))
    assert f"no such app 'nope' in {data}/tidings.db" in line
    assert "myapp" in line and "shop" in line and named["app"] in line


@pytest.mark.parametrize("command", [["token", "--app", "a", "--user", "u"],
                                     ["app", "create", "shop"],
                                     ["key", "list", "--app", "a"],
                                     ["revoke-tokens", "--app", "a", "--user", "u"]])
def test_operator_commands_never_create_a_store(tmp_path, command):
    line = one_error_line(run(*command, cwd=tmp_path))
    assert "no store at tidings-data/tidings.db" in line
    assert list(tmp_path.iterdir()) == []


def test_key_commands_say_what_is_wrong_in_one_line(tmp_path):
    data = str(tmp_path / "data")
    assert run("migrate", "--data", data).returncode == 0
    created = json.loads(run("app", "create", "shop", "--json", "--data", data).stdout)
    only_admin = created["api_key"].split("_")[1]
    for prefix in ("0000abcd", "NOT-A-KEY", created["api_key"]):
        line = one_error_line(run("key", "revoke", "--app", "shop", prefix, "--data", data))
        assert f"app 'shop' has no API key {prefix!r}" in line
    line = one_error_line(run("key", "revoke", "--app", "shop", only_admin, "--data", data))
    assert "last key with the admin scope" in line
    line = one_error_line(run("key", "create", "--app", "nope", "--scope", "read",
                              "--data", data))
    assert f"no such app 'nope' in {data}/tidings.db (apps there: shop)" in line
    line = one_error_line(run("key", "list", "--app", "nope", "--data", data))
    assert "no such app 'nope'" in line
    line = one_error_line(run("key", "create", "--app", "shop", "--scope", "read",
                              "--name", "a\nb", "--data", data))
    assert "name is 1-64 characters" in line
    for args in (["--scope", "root"], []):  # an unknown scope, or none at all
        r = run("key", "create", "--app", "shop", *args, "--data", data)
        assert r.returncode == 2 and "--scope" in one_error_line(r)
    listed = json.loads(run("key", "list", "--app", "shop", "--json", "--data", data).stdout)
    assert [k["prefix"] for k in listed["keys"]] == [only_admin]  # nothing made or lost
