"""``tidings node drain|undrain|shed|status`` against a real server, as an
operator runs them during an upgrade or after a scale-out (tidings/cli.py)."""

from __future__ import annotations

import asyncio
import json

import pytest

from tests.conftest import run_server
from tests.gateway.live import closed_with, recv_events, ws_connect
from tests.test_cli_errors import one_error_line, run
from tidings.errors import CLOSE_SHUTDOWN

pytestmark = pytest.mark.timeout(120)


async def tidings(*args: str):
    """The command in a thread: the server answers it from this test's loop."""
    return await asyncio.to_thread(run, *args)


async def test_drain_status_undrain_and_shed(tmp_path):
    async with run_server(tmp_path, operator_app="testapp") as server:
        at = ["--url", server.url, "--key", server.api_key]
        ws = await ws_connect(server, await server.token("ann"))
        assert (await recv_events(ws, 1))[0]["type"] == "hello"

        r = await tidings("node", "drain", *at, "--over", "0", "--json")
        assert r.returncode == 0, r.stderr
        state = json.loads(r.stdout)
        assert state["draining"] is True and state["plan"]["planned"] == 1
        assert (await closed_with(ws))[0] == CLOSE_SHUTDOWN
        async with server.http() as http:
            assert (await http.get("/readyz")).status_code == 503

        r = await tidings("node", "status", *at)
        assert r.returncode == 0, r.stderr
        assert "draining (not ready, new streams refused)" in r.stdout
        assert "open streams: 0" in r.stdout
        assert "drain: ended 1 of 1 streams over 0 s (done)" in r.stdout

        r = await tidings("node", "undrain", *at)
        assert r.returncode == 0 and "taking streams" in r.stdout, r.stderr
        async with server.http() as http:
            assert (await http.get("/readyz")).status_code == 200

        ws = await ws_connect(server, await server.token("ann"))
        assert (await recv_events(ws, 1))[0]["type"] == "hello"
        r = await tidings("node", "shed", *at, "--fraction", "1", "--over", "0")
        assert r.returncode == 0, r.stderr
        assert "shed: ended" in r.stdout and "of 1 streams" in r.stdout
        assert (await closed_with(ws))[0] == CLOSE_SHUTDOWN
        async with server.http() as http:
            assert (await http.get("/readyz")).status_code == 200


async def test_refusals_are_one_line(tmp_path):
    async with run_server(tmp_path) as server:  # the operator app is another one
        at = ["--url", server.url, "--key", server.api_key]
        line = one_error_line(await tidings("node", "drain", *at))
        assert "403 not_operator" in line
        assert server.service.hub.draining is False
        r = await tidings("node", "shed", *at, "--fraction", "2")
        assert r.returncode == 2 and "--fraction" in one_error_line(r)
        r = await tidings("node", "drain", *at, "--over", "-1")
        assert r.returncode == 2 and "--over" in one_error_line(r)
        line = one_error_line(await tidings("node", "status", "--url", "http://127.0.0.1:9",
                                            "--key", "tk_x"))
        assert "cannot reach http://127.0.0.1:9" in line


def test_help_names_the_commands_and_where_to_send_them():
    out = run("node", "--help").stdout
    for command in ("drain", "undrain", "shed", "status"):
        assert command in out
    assert "own address" in out and "SIGUSR1" in out
    assert "--fraction" in run("node", "shed", "--help").stdout
