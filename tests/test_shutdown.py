"""Graceful shutdown of a real ``tidings serve`` process (SIGTERM).

Devices must learn to reconnect elsewhere at once: the WebSocket closes with
the "shutdown" code (4001, in the reconnect range) rather than uvicorn's
generic 1012, and SSE streams end so ``EventSource`` reconnects.
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time

import httpx
import pytest
import websockets

from tests.test_durability import _free_port, _start, read_first_start
from tidings.errors import CLOSE_SHUTDOWN, should_reconnect


@pytest.mark.timeout(60)
async def test_sigterm_closes_streams_with_the_reconnect_code(tmp_path):
    port = _free_port()
    proc = _start(tmp_path / "data", port)
    try:
        token = read_first_start(proc)["token"]
        url = f"ws://127.0.0.1:{port}/v1/me/stream"
        ws = await websockets.connect(url)
        await ws.send(json.dumps({"type": "auth", "token": token}))
        hello = json.loads(await asyncio.wait_for(ws.recv(), 10))
        hello = hello[0] if isinstance(hello, list) else hello
        assert hello["type"] == "hello"

        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as http:
            async with http.stream("GET", "/v1/me/events", params={"token": token}) as sse:
                assert sse.status_code == 200
                lines = sse.aiter_lines()
                while "hello" not in await anext(lines):
                    pass
                proc.send_signal(signal.SIGTERM)
                with pytest.raises(websockets.ConnectionClosed) as closed:
                    while True:
                        await asyncio.wait_for(ws.recv(), 10)
                # the SSE response ends instead of hanging until the server gives up
                rest = [line async for line in lines]
        code = closed.value.rcvd.code
        assert code == CLOSE_SHUTDOWN and should_reconnect(code)
        assert all("notification" not in line for line in rest)
        # uvicorn re-raises the signal once it has shut down cleanly
        assert proc.wait(15) in (0, -signal.SIGTERM)
        assert "Traceback" not in proc.stdout.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        proc.stdout.close()


def test_several_workers_need_a_shared_broker(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "tidings", "serve", "--data", str(tmp_path / "d"),
         "--port", str(_free_port()), "--workers", "2"],
        capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert "--workers N needs a shared broker" in out.stderr
    assert "Traceback" not in out.stderr


async def test_a_draining_node_refuses_new_streams_and_is_not_ready(tmp_path):
    from tests.conftest import run_server
    from tests.gateway.live import ws_connect

    async with run_server(tmp_path) as server:
        token = await server.token("dee")
        async with server.http() as http:
            assert (await http.get("/readyz")).status_code == 200
            server.service.hub.drain()
            r = await http.get("/readyz")
            assert r.status_code == 503 and r.json()["ready"] is False
            ws = await ws_connect(server, token)
            with pytest.raises(websockets.ConnectionClosed) as closed:
                await asyncio.wait_for(ws.recv(), 5)
            assert closed.value.rcvd.code == CLOSE_SHUTDOWN
            r = await http.get("/v1/me/events", params={"token": token})
            assert r.status_code == 503 and r.headers["Retry-After"] == "1"
            assert r.json()["error"]["code"] == "unavailable"


def _until(check, timeout: float = 15.0) -> None:
    """Poll ``check()`` until it is true (a signal is handled asynchronously)."""
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


@pytest.mark.timeout(60)
def test_sigusr1_drains_without_stopping_and_sigusr2_undrains(tmp_path):
    port = _free_port()
    proc = _start(tmp_path / "data", port)
    url = f"http://127.0.0.1:{port}"
    try:
        key = read_first_start(proc)["api_key"]  # the "default" app's: the operator app
        proc.send_signal(signal.SIGUSR1)
        _until(lambda: httpx.get(url + "/readyz").status_code == 503)
        state = httpx.get(url + "/v1/node", headers={"Authorization": f"Bearer {key}"}).json()
        assert state["draining"] is True and state["plan"]["kind"] == "drain"
        assert httpx.get(url + "/healthz").status_code == 200 and proc.poll() is None
        proc.send_signal(signal.SIGUSR2)
        _until(lambda: httpx.get(url + "/readyz").status_code == 200)
        assert proc.poll() is None
    finally:
        proc.terminate()
        proc.wait(15)
        assert "Traceback" not in proc.stdout.read()
        proc.stdout.close()
