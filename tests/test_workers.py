"""``tidings serve --workers N``: several processes on one port, live
delivery between them through the Redis broker."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time

import httpx
import pytest

from tests.services import require_redis
from tests.test_durability import _free_port, read_first_start
from tests.test_shutdown import _until
from tidings.broker import open_broker
from tidings.client import Subscriber
from tidings.core import auth


@pytest.mark.timeout(120)
async def test_workers_share_a_port_and_deliver_across_processes(tmp_path):
    port = _free_port()
    redis_url = f"{require_redis()}?prefix=tidings-test-workers-{port}"
    node = f"workers-{port}"
    proc = subprocess.Popen(
        [sys.executable, "-m", "tidings", "serve", "--data", str(tmp_path / "data"),
         "--port", str(port), "--workers", "2", "--broker", redis_url, "--node", node],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    subs: list[Subscriber] = []
    tasks: list[asyncio.Task] = []
    broker = open_broker(redis_url)
    await broker.open()
    try:
        first = read_first_start(proc)
        key, secret = first["api_key"], first["signing_secret"]
        assert "workers: 2" in first["text"]
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if httpx.get(url + "/readyz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.1)

        users = [f"w{i}" for i in range(40)]
        got: dict[str, list[str]] = {u: [] for u in users}
        hello = asyncio.Event()
        ready: set[str] = set()

        async def device(user: str) -> None:
            token = auth.mint_token("default", user, secret, 600)
            sub = Subscriber(url, token=token)
            subs.append(sub)
            async for event in sub:
                if event["type"] == "hello":
                    ready.add(user)
                    if len(ready) == len(users):
                        hello.set()
                elif event["type"] == "notification":
                    got[user].append(event["notification"]["title"])

        tasks = [asyncio.create_task(device(u)) for u in users]
        await asyncio.wait_for(hello.wait(), 30)

        # both workers hold streams (each heartbeats as "<node>/<pid>")
        async def per_worker() -> dict[str, int]:
            nodes = await broker.nodes()
            return {n: info["connections"] for n, info in nodes.items()
                    if n.startswith(node + "/")}

        for _ in range(150):
            workers = await per_worker()
            if len(workers) == 2 and sum(workers.values()) == len(users):
                break
            await asyncio.sleep(0.1)
        assert len(workers) == 2 and min(workers.values()) > 0, workers

        # every publish lands on whichever worker accepts it; every device gets its own
        async with httpx.AsyncClient(base_url=url, timeout=10,
                                     headers={"Authorization": f"Bearer {key}"}) as http:
            for u in users:
                for i in range(3):
                    r = await http.post("/v1/notifications",
                                        json={"to": {"users": [u]}, "title": f"{u}-{i}"})
                    assert r.status_code == 202, r.text
        for _ in range(200):
            if all(len(v) == 3 for v in got.values()):
                break
            await asyncio.sleep(0.05)
        assert got == {u: [f"{u}-{i}" for i in range(3)] for u in users}
    finally:
        for sub in subs:
            await sub.close()
        for t in tasks:
            t.cancel()
        await broker.close()
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        proc.stdout.close()


@pytest.mark.timeout(120)
def test_sigusr1_drains_every_worker_and_sigusr2_undrains_them(tmp_path):
    """An HTTP drain reaches the one worker its connection lands on; the
    signals, sent to the supervisor, reach every worker."""
    port = _free_port()
    redis_url = f"{require_redis()}?prefix=tidings-test-drain-{port}"
    proc = subprocess.Popen(
        [sys.executable, "-m", "tidings", "serve", "--data", str(tmp_path / "data"),
         "--port", str(port), "--workers", "2", "--broker", redis_url],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    seen: dict[int, bool] = {}  # worker pid -> draining, as it last answered

    def every_worker(draining: bool) -> bool:
        # a new connection each time: the kernel spreads them over the workers
        state = httpx.get(url + "/v1/node", headers=headers, timeout=5).json()
        seen[state["pid"]] = state["draining"]
        return len(seen) == 2 and all(d is draining for d in seen.values())

    try:
        headers = {"Authorization": f"Bearer {read_first_start(proc)['api_key']}"}
        _until(lambda: every_worker(False), 60)
        proc.send_signal(signal.SIGUSR1)
        _until(lambda: every_worker(True))
        assert httpx.get(url + "/readyz").status_code == 503 and proc.poll() is None
        proc.send_signal(signal.SIGUSR2)
        _until(lambda: every_worker(False))
        assert httpx.get(url + "/readyz").status_code == 200
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        for pid in seen:  # workers a dead supervisor left behind
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        proc.stdout.close()
