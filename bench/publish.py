"""``publish``: durable publish throughput, on SQLite or PostgreSQL.

``concurrency`` keep-alive HTTP publishers, one request in flight each, every
notification to one user (round robin over ``--users``), nobody connected.
Reports notifications/s accepted (202) and the server's CPU per notification.
``--batch K`` uses ``POST /v1/notifications/batch`` with K notifications per
request, to separate the store's cost from the per-request HTTP cost.

Every run first measures the floor (bench/floor.py: a bare ASGI handler
answering 202 under the same HTTP server, pinning, client and requests) and
records ``floor_cpu_us_per_request`` and ``floor_ratio`` = tidings' CPU per
request / the floor's (``--no-floor`` skips it).

On PostgreSQL (``--store postgresql://...``, a fresh schema per run) the
server's broker is the store's database (LISTEN/NOTIFY) unless ``--broker``
names one (``redis://...``, under a key prefix of its own), and
``pg_cpu_us_per_publish`` adds the CPU of the PostgreSQL backends serving
the server's connections (bench/measure.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from pathlib import Path

from bench import floor
from bench.measure import (
    ProcSampler,
    busy_cpu_s,
    own_cpu_s,
    pg_backends_cpu,
    pg_cpu_delta,
    settle_rss,
    thread_delta,
)
from bench.pgschema import maybe_fresh_schema
from bench.profile import Profiler
from bench.publisher import payload, publish_many
from bench.server import TidingsServer


def _docs(opts, offset: int):
    def one(i: int) -> dict:
        return {"to": {"users": [f"u{i % opts.users:06d}"]}, "title": "bench",
                "body": payload(offset + i, opts.size)}

    if not opts.batch:
        return one

    def batch(j: int) -> dict:
        return {"notifications": [one(j * opts.batch + k) for k in range(opts.batch)]}

    return batch


def _count_ok(res, batch: int) -> int:
    # a batch answers 202 with per-item results; every item here is valid
    return res.ok * (batch or 1)


def run_once(opts, cpus, concurrency: int, profile: Path | None = None) -> dict:
    path = "/v1/notifications/batch" if opts.batch else "/v1/notifications"
    per_req = opts.batch or 1
    floor = None if profile or getattr(opts, "no_floor", False) else _floor(
        opts, concurrency, path, per_req)
    with maybe_fresh_schema(getattr(opts, "store", None), "bench_publish") as store:
        rec = _run(opts, cpus, concurrency, profile, path, per_req, store)
    if store is not None:
        rec["store"] = "postgresql"
        rec["broker"] = "redis" if getattr(opts, "broker", None) else "postgresql"
    if floor is not None:
        rec.update(floor)
        per_request = rec["server_cpu_us_per_publish"] * per_req
        rec["floor_ratio"] = round(per_request / floor["floor_cpu_us_per_request"], 2)
    return rec


def _floor(opts, concurrency: int, path: str, per_req: int) -> dict:
    """CPU per request of bench/floor.py under the same load as the run."""
    with floor.running(opts.server_cpu) as (host, port, pid):
        sampler = ProcSampler(pid)
        requests = max(opts.count // per_req, 1)
        if opts.warmup:
            asyncio.run(publish_many(host, port, "floor", max(opts.warmup // per_req, 1),
                                     concurrency, _docs(opts, 10**8), path=path,
                                     deadline_s=opts.timeout))
        cpu0 = sampler.cpu()
        res = asyncio.run(publish_many(host, port, "floor", requests, concurrency,
                                       _docs(opts, 0), path=path, deadline_s=opts.timeout))
        cpu1 = sampler.cpu()
    return {"floor_cpu_us_per_request": round((cpu1 - cpu0) / max(res.ok, 1) * 1e6, 2),
            "floor_requests_per_s": round(res.ok / res.seconds, 1),
            "floor_errors": res.errors}


def _broker_args(opts) -> list[str]:
    url = getattr(opts, "broker", None)
    if not url:
        return []
    sep = "&" if "?" in url else "?"
    return ["--broker", f"{url}{sep}prefix=bench-publish-{secrets.token_hex(4)}"]


def _run(opts, cpus, concurrency, profile, path, per_req, store) -> dict:
    with TidingsServer(cpu=opts.server_cpu, store=store, args=_broker_args(opts)) as srv:
        sampler = ProcSampler(srv.pid)
        rss_idle = settle_rss(sampler, 0.5)
        sampler.start()
        try:
            if opts.warmup:
                asyncio.run(publish_many(
                    srv.host, srv.port, srv.api_key, max(opts.warmup // per_req, 1),
                    concurrency, _docs(opts, 10**8), path=path, deadline_s=opts.timeout))
            spy = (Profiler(srv.pid, profile, gil=getattr(opts, 'profile_gil', False))
                   if profile else contextlib.nullcontext())
            with spy:
                threads0 = sampler.thread_cpu()
                pg0 = pg_backends_cpu(srv.pid) if store else {}
                cpu0, own0, busy0 = sampler.cpu(), own_cpu_s(), busy_cpu_s()
                res = asyncio.run(publish_many(
                    srv.host, srv.port, srv.api_key, max(opts.count // per_req, 1),
                    concurrency, _docs(opts, 0), path=path, deadline_s=opts.timeout))
                # a 202 comes after the commit, so all the work is done by now
                cpu1, own1, busy1 = sampler.cpu(), own_cpu_s(), busy_cpu_s()
                pg_cpu = pg_cpu_delta(pg0, pg_backends_cpu(srv.pid)) if store else 0.0
                threads1 = sampler.thread_cpu()
            sampler.rss()
        finally:
            sampler.stop()
        log_tail = srv.log_tail() if res.errors else ""

    notes = _count_ok(res, opts.batch)
    server_cpu = cpu1 - cpu0
    out = {
        "concurrency": concurrency, "batch": opts.batch, "users": opts.users,
        "size": opts.size, "count": notes,
        "publish_per_s": round(notes / res.seconds, 1),
        "requests_per_s": round(res.ok / res.seconds, 1),
        "server_cpu_us_per_publish": round(server_cpu / max(notes, 1) * 1e6, 2),
        "server_cpu_s": round(server_cpu, 3),
        "server_cpu_by_thread_s": thread_delta(threads0, threads1),
        "server_busy": round(server_cpu / res.seconds, 3),
        "loadgen_cpu_s": round(own1 - own0, 3),
        "other_cpu_s": round((busy1 - busy0) - server_cpu - (own1 - own0) - pg_cpu, 3),
        "wall_s": round(res.seconds, 3),
        "errors": res.errors, "statuses": {str(k): v for k, v in res.statuses.items()},
        "error_sample": res.error_sample,
        "rss_idle_mb": round(rss_idle / 2**20, 1), "rss_peak_mb": round(sampler.peak / 2**20, 1),
    }
    if store:
        out["pg_cpu_us_per_publish"] = round(pg_cpu / max(notes, 1) * 1e6, 2)
        out["pg_cpu_s"] = round(pg_cpu, 3)
    if log_tail:
        out["server_log_tail"] = log_tail[-2000:]
    time.sleep(0.2)
    return out
