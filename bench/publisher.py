"""Publishers: ``concurrency`` keep-alive connections, one request in flight on each."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from bench.httpclient import HttpClient


def payload(i: int, size: int = 100) -> str:
    return f"{i:08d}-".ljust(size, "x")


@dataclass
class PublishResult:
    sent: int = 0
    ok: int = 0
    errors: int = 0
    statuses: dict = field(default_factory=dict)
    error_sample: list = field(default_factory=list)
    t0: float = 0.0
    t1: float = 0.0

    @property
    def seconds(self) -> float:
        return max(self.t1 - self.t0, 1e-9)


async def publish_many(host: str, port: int, api_key: str, count: int, concurrency: int,
                       make_doc: Callable[[int], dict], *, path: str = "/v1/notifications",
                       deadline_s: float = 300.0) -> PublishResult:
    """POST ``make_doc(i)`` for i in range(count); stops early at ``deadline_s``."""
    headers = {"Authorization": f"Bearer {api_key}"}
    clients = [HttpClient(host, port, headers) for _ in range(concurrency)]
    res = PublishResult()
    seq = iter(range(count))
    deadline = time.monotonic() + deadline_s

    async def run(client: HttpClient) -> None:
        for i in seq:
            if time.monotonic() > deadline:
                return
            raw = client.build("POST", path, json.dumps(make_doc(i)).encode())
            res.sent += 1
            try:
                status, body = await client.send(raw)
            except Exception as exc:  # noqa: BLE001 - counted and sampled
                res.errors += 1
                if len(res.error_sample) < 3:
                    res.error_sample.append(repr(exc)[:200])
                continue
            res.statuses[status] = res.statuses.get(status, 0) + 1
            if status < 300:
                res.ok += 1
            else:
                res.errors += 1
                if len(res.error_sample) < 3:
                    res.error_sample.append(f"{status} {body[:200]!r}")

    res.t0 = time.monotonic()
    try:
        await asyncio.gather(*(run(c) for c in clients))
    finally:
        res.t1 = time.monotonic()
        for c in clients:
            c.close()
    return res


async def subscribe_topic(host: str, port: int, api_key: str, topic: str,
                          users: list[str], chunk: int = 10_000) -> int:
    """Bulk-subscribe ``users`` to ``topic`` (the API takes at most 10,000 per call)."""
    client = HttpClient(host, port, {"Authorization": f"Bearer {api_key}"}, timeout=120)
    added = 0
    try:
        for i in range(0, len(users), chunk):
            status, body = await client.post_json(
                f"/v1/topics/{topic}/subscribers", {"users": users[i:i + chunk]})
            if status >= 300:
                raise RuntimeError(f"subscribe failed: {status} {body[:200]!r}")
            added += json.loads(body).get("added", 0)
    finally:
        client.close()
    return added
