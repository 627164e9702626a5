"""``dashboard``: dashboard API latency with the cache on and off.

docs/design.md §5: the cache must make the dashboard's latency at least 50% lower
than without it.  One run: a fresh server (``TIDINGS_CACHE=1`` or ``0``),
``--conns`` WebSocket devices (one user each, spread over ``--topics``
topics), notifications published at ``--publish-rate``/s to random topics,
``--viewers`` open dashboards (SSE ``/dashboard/events``: each gets a
snapshot every second) and then, at a fixed ``--rate`` for ``--warmup`` +
``--duration`` s, ``GET /dashboard/api/snapshot`` over ``--pool`` keep-alive
connections.  Every request leaves at its scheduled time whatever the
server does, and its latency is measured from that time, so a stall cannot
hide from the percentiles.  All requests use the operator's key, so every
snapshot is the service-wide view: a walk over every open stream, the top
apps and topics, recent errors, the nodes.

With the cache, the snapshot is built once per second and every request and
every viewer in that second gets the same bytes; without it, each builds its
own.  ``server_cpu_ms_per_s`` is the server's CPU during the measured window
per second (publishing and deliveries included, the same in both modes).
"""

from __future__ import annotations

import asyncio
import json
import random
import threading
import time

from bench.httpclient import HttpClient
from bench.measure import ProcSampler, busy_cpu_s, own_cpu_s
from bench.publisher import subscribe_topic
from bench.server import TidingsServer
from bench.wsload import LoadGen


class _OperatorServer(TidingsServer):
    """A server whose bench app is the operator app (the service-wide view)."""

    def create_app(self) -> None:
        super().create_app()
        self.env["TIDINGS_OPERATOR_APP"] = self.app


def _percentile(sorted_ms: list[float], q: float) -> float | None:
    if not sorted_ms:
        return None
    return round(sorted_ms[min(len(sorted_ms) - 1, int(q * len(sorted_ms)))], 3)


async def _viewer(host: str, port: int, key: str, stop: asyncio.Event, seen: list[int]) -> None:
    """One open dashboard: reads the SSE stream and counts the snapshots."""
    reader, writer = await asyncio.open_connection(host, port)
    writer.write((f"GET /dashboard/events HTTP/1.1\r\nHost: {host}:{port}\r\n"
                  f"Authorization: Bearer {key}\r\nAccept: text/event-stream\r\n\r\n").encode())
    try:
        while not stop.is_set():
            try:
                chunk = await asyncio.wait_for(reader.read(65536), 0.5)
            except TimeoutError:
                continue
            if not chunk:
                return
            seen[0] += chunk.count(b"event: snapshot")
    finally:
        writer.close()


async def _publisher(srv: TidingsServer, topics: int, rate: float, stop: asyncio.Event,
                     counts: list[int]) -> None:
    client = HttpClient(srv.host, srv.port, {"Authorization": f"Bearer {srv.api_key}"})
    rng = random.Random(3)
    interval = 1.0 / rate
    next_t = time.monotonic()
    try:
        while not stop.is_set():
            next_t += interval
            doc = {"to": {"topic": f"t{rng.randrange(topics)}"}, "title": "bench"}
            status, _ = await client.post_json("/v1/notifications", doc)
            counts[0 if status == 202 else 1] += 1
            delay = next_t - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
    finally:
        client.close()


async def _measure(srv: TidingsServer, opts, sampler: ProcSampler) -> dict:
    stop = asyncio.Event()
    published = [0, 0]
    viewers_seen = [0]
    background = [asyncio.create_task(_publisher(srv, opts.topics, opts.publish_rate, stop,
                                                 published))]
    background += [asyncio.create_task(_viewer(srv.host, srv.port, srv.api_key, stop,
                                               viewers_seen)) for _ in range(opts.viewers)]
    clients = [HttpClient(srv.host, srv.port, {"Authorization": f"Bearer {srv.api_key}"})
               for _ in range(opts.pool)]
    free: asyncio.Queue[HttpClient] = asyncio.Queue()
    for c in clients:
        free.put_nowait(c)
    raw = clients[0].build("GET", "/dashboard/api/snapshot")
    latencies: list[float] = []
    errors: list[str] = []
    last_body = [b""]
    t0 = time.monotonic() + 0.2
    w0 = t0 + opts.warmup
    w1 = w0 + opts.duration
    marks: dict[str, tuple] = {}

    async def one(intended: float) -> None:
        client = await free.get()
        try:
            status, body = await client.send(raw)
        except Exception as exc:  # noqa: BLE001 - counted and sampled
            errors.append(repr(exc)[:200])
            return
        finally:
            free.put_nowait(client)
        if status != 200:
            errors.append(f"{status} {body[:200]!r}")
            return
        last_body[0] = body
        if w0 <= intended < w1:
            latencies.append((time.monotonic() - intended) * 1000)

    pending = []
    n = 0
    while True:
        intended = t0 + n / opts.rate
        if intended >= w1:
            break
        if "start" not in marks and intended >= w0:
            marks["start"] = (sampler.cpu(), busy_cpu_s(), own_cpu_s(), time.monotonic())
        delay = intended - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        pending.append(asyncio.create_task(one(intended)))
        n += 1
    await asyncio.gather(*pending)
    marks["end"] = (sampler.cpu(), busy_cpu_s(), own_cpu_s(), time.monotonic())
    stop.set()
    await asyncio.gather(*background, return_exceptions=True)
    for c in clients:
        c.close()

    (c0, b0, o0, t_a), (c1, b1, o1, t_b) = marks["start"], marks["end"]
    wall = max(t_b - t_a, 1e-9)
    latencies.sort()
    snap = json.loads(last_body[0]) if last_body[0] else {}
    return {
        "requests": len(latencies), "errors": len(errors), "error_sample": errors[:3],
        "p50_ms": _percentile(latencies, 0.50), "p90_ms": _percentile(latencies, 0.90),
        "p99_ms": _percentile(latencies, 0.99), "max_ms": _percentile(latencies, 1.0),
        "mean_ms": round(sum(latencies) / len(latencies), 3) if latencies else None,
        "server_cpu_ms_per_s": round((c1 - c0) / wall * 1000, 1),
        "loadgen_cpu_s": round(o1 - o0, 3),
        "other_cpu_s": round((b1 - b0) - (c1 - c0) - (o1 - o0), 3),
        "published": published[0], "publish_errors": published[1],
        "viewer_snapshots": viewers_seen[0],
        "snapshot_scope": snap.get("scope"),
        "snapshot_connections": snap.get("connections", {}).get("total"),
        "snapshot_bytes": len(last_body[0]),
    }


def run_once(opts, cpus, cache: bool) -> dict:
    env = {"TIDINGS_CACHE": "1" if cache else "0"}
    with _OperatorServer(cpu=opts.server_cpu, env=env) as srv:
        users = [f"u{i:06d}" for i in range(opts.conns)]
        for t in range(opts.topics):
            asyncio.run(subscribe_topic(srv.host, srv.port, srv.api_key, f"t{t}",
                                        users[t::opts.topics]))
        sampler = ProcSampler(srv.pid)
        lg = LoadGen(srv.ws_url, srv.tokens(users), procs=1, cpus=cpus)
        try:
            ready = lg.start()
            time.sleep(opts.settle)
            result: dict = {}
            worker = threading.Thread(target=lambda: result.update(
                asyncio.run(_measure(srv, opts, sampler))))
            worker.start()
            worker.join(opts.warmup + opts.duration + opts.timeout)
            if worker.is_alive():
                raise TimeoutError("dashboard measurement did not finish")
            rss = sampler.rss()
        finally:
            lg.stop()
        log_tail = srv.log_tail() if result.get("errors") else ""
    out = {
        "cache": "on" if cache else "off", "conns": ready["connected"],
        "conns_requested": opts.conns, "topics": opts.topics, "rate": opts.rate,
        "pool": opts.pool, "viewers": opts.viewers, "publish_rate": opts.publish_rate,
        "duration": opts.duration, "connect_errors": ready["connect_errors"],
        "rss_mb": round(rss / 2**20, 1), **result,
    }
    if log_tail:
        out["server_log_tail"] = log_tail[-2000:]
    return out
