"""Devices and a publisher for the failover tests.

Every notification carries its number in ``data.n``.  Each device records
the numbers its application sees (after the SDK's dedup) in a bitset, in the
spirit of NATS's chaos tests, and the test counts lost and duplicated."""

from __future__ import annotations

import asyncio
import re

import httpx

from tidings.client import Subscriber
from tidings.core import auth
from tidings.core.backoff import Backoff


class Device:
    def __init__(self, url: str, app: dict, user: str):
        token = auth.mint_token(app["app"], user, app["signing_secret"], 3600)
        self.user = user
        self.sub = Subscriber(url, token=token, backoff=Backoff(base=0.05, cap=1.0))
        self.seen = bytearray()  # bitset by notification number, one byte each
        self.received = 0
        self.duplicates = 0
        self.out_of_order = 0
        self.last = -1
        self.connected = asyncio.Event()
        self.task: asyncio.Task | None = None

    def start(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        async for event in self.sub:
            kind = event["type"]
            if kind == "hello":
                self.connected.set()
            elif kind == "notification":
                n = event["notification"]["data"]["n"]
                self.received += 1
                if n >= len(self.seen):
                    self.seen.extend(b"\0" * (n + 1 - len(self.seen)))
                if self.seen[n]:
                    self.duplicates += 1
                self.seen[n] = 1
                if n <= self.last:
                    self.out_of_order += 1
                self.last = max(self.last, n)

    def lost(self, total: int) -> int:
        return total - sum(self.seen[:total])

    async def stop(self) -> None:
        await self.sub.close()
        if self.task is not None:
            try:
                await asyncio.wait_for(self.task, 10)
            except (TimeoutError, Exception):
                self.task.cancel()


async def publish_numbered(url: str, key: str, to: dict, numbers, pause: float = 0.0,
                           on_sent=None) -> dict[str, int]:
    """Publish notification ``n`` for each number, retrying each with the same
    Idempotency-Key until it is acknowledged (a node may die under it)."""
    stats = {"retries": 0, "duplicate": 0}
    async with httpx.AsyncClient(base_url=url, timeout=5,
                                 headers={"Authorization": f"Bearer {key}"}) as http:
        for n in numbers:
            while True:
                try:
                    r = await http.post("/v1/notifications",
                                        json={"to": to, "title": f"#{n}", "data": {"n": n}},
                                        headers={"Idempotency-Key": f"n-{n}"})
                    if r.status_code == 202:
                        if r.json()["status"] == "duplicate":
                            stats["duplicate"] += 1
                        break
                except httpx.HTTPError:
                    pass
                stats["retries"] += 1
                await asyncio.sleep(0.05)
            if on_sent is not None:
                await on_sent(n)
            if pause:
                await asyncio.sleep(pause)
    return stats


async def connections(node_url: str) -> int:
    """Open live streams on one node, from its /metrics (public on the
    cluster's nodes, scripts/cluster.py)."""
    async with httpx.AsyncClient(timeout=5) as http:
        text = (await http.get(node_url + "/metrics")).text
    return int(sum(float(v) for v in re.findall(r"^tidings_connections(?:\{[^}]*\})? (\S+)$",
                                                   text, re.M)))


async def counter(node_url: str, name: str, app: str) -> float:
    """One app's counter on one node, from its /metrics (0 before its first)."""
    async with httpx.AsyncClient(timeout=5) as http:
        text = (await http.get(node_url + "/metrics")).text
    found = re.search(rf'^{name}_total\{{app="{re.escape(app)}"\}} (\S+)$', text, re.M)
    return float(found[1]) if found else 0.0


async def eventually(check, timeout: float, what: str) -> None:
    """Until the awaitable ``check()`` is true, or fail saying ``what``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not await check():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.1)


async def wait_all(devices: list[Device], total: int, timeout: float) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        if all(sum(d.seen[:total]) == total for d in devices):
            return
        await asyncio.sleep(0.1)


def tally(devices: list[Device], total: int) -> dict[str, int]:
    return {
        "lost": sum(d.lost(total) for d in devices),
        "duplicated": sum(d.duplicates for d in devices),
        "out_of_order": sum(d.out_of_order for d in devices),
    }
