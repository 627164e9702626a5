"""``fanout`` and ``broadcast``: N WebSocket subscribers x M notifications.

* ``fanout``: the subscribers' users follow topic ``bench``; every publish is
  ``{"to": {"topic": "bench"}}``.  Below ``fanout_threshold`` (10,000 by
  default) that is write fan-out: one inbox row and one broker message per
  user.  ``--fanout-threshold 0`` turns it into read fan-out.
* ``broadcast``: every publish is ``{"to": {"all": true}}``: one stored row,
  one shared frame for every connection (read fan-out).

``--store postgresql://...`` runs the server on a fresh PostgreSQL schema
(the store's database is then also the broker) and adds
``pg_cpu_us_per_delivery``: the CPU of the PostgreSQL backends serving the
server's connections, per delivery (the write fan-out's inbox rows).

The figure that matters is server CPU per delivery: the server process's CPU
time (user + sys) from the first publish until the last delivery arrived,
divided by the deliveries.  It is what one core pays for each delivery, and it
barely depends on the load generator or on noise from other processes.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path

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
from bench.publisher import payload, publish_many, subscribe_topic
from bench.server import TidingsServer
from bench.wsload import LoadGen

TOPIC = "bench"


def target_doc(mode: str, size: int):
    to = {"topic": TOPIC} if mode == "fanout" else {"all": True}

    def make(i: int) -> dict:
        return {"to": to, "title": "bench", "body": payload(i, size)}

    return make


def wait_deliveries(lg: LoadGen, expected: int, *, timeout: float, idle_timeout: float,
                    poll: float = 0.02) -> dict:
    """Poll the workers until ``expected`` notifications arrived, or no progress / deadline."""
    deadline = time.monotonic() + timeout
    last, last_change = -1, time.monotonic()
    while True:
        stats = lg.stats()
        now = time.monotonic()
        if stats["notifications"] >= expected:
            return stats
        if stats["notifications"] != last:
            last, last_change = stats["notifications"], now
        if now > deadline or now - last_change > idle_timeout:
            return stats
        time.sleep(poll)


def run_once(mode: str, opts, cpus: set[int] | None, profile: Path | None = None) -> dict:
    with maybe_fresh_schema(getattr(opts, "store", None), "bench_fanout") as store:
        out = _run(mode, opts, cpus, profile, store)
    if store is not None:
        out["store"] = "postgresql"
    return out


def _run(mode: str, opts, cpus: set[int] | None, profile: Path | None, store: str | None
         ) -> dict:
    env = {}
    if opts.fanout_threshold is not None:
        env["TIDINGS_FANOUT_THRESHOLD"] = str(opts.fanout_threshold)
    with TidingsServer(cpu=opts.server_cpu, env=env, store=store) as srv:
        users = [f"u{i:06d}" for i in range(opts.subs)]
        tokens = srv.tokens(users)
        if mode == "fanout":
            asyncio.run(subscribe_topic(srv.host, srv.port, srv.api_key, TOPIC, users))
        sampler = ProcSampler(srv.pid)
        rss_idle = settle_rss(sampler, 0.5)
        sampler.start()
        lg = LoadGen(srv.ws_url, tokens, procs=opts.procs, cpus=cpus, verify=opts.verify,
                     sources=opts.sources)
        try:
            ready = lg.start()
            time.sleep(opts.settle)
            rss_connected = sampler.rss()
            before = lg.stats()
            subs = ready["connected"]
            expected = subs * opts.msgs

            spy = (Profiler(srv.pid, profile, gil=getattr(opts, 'profile_gil', False))
                   if profile else contextlib.nullcontext())
            with spy:
                threads0 = sampler.thread_cpu()
                cpu0, own0, busy0 = sampler.cpu(), own_cpu_s(), busy_cpu_s()
                pg0 = pg_backends_cpu(srv.pid) if store else {}
                lg_cpu0 = before["cpu_s"]
                pub = asyncio.run(publish_many(
                    srv.host, srv.port, srv.api_key, opts.msgs, opts.pub_concurrency,
                    target_doc(mode, opts.size), deadline_s=opts.timeout,
                ))
                stats = wait_deliveries(lg, before["notifications"] + expected,
                                        timeout=opts.timeout, idle_timeout=opts.idle_timeout)
                t_end = time.monotonic()
                cpu1, own1, busy1 = sampler.cpu(), own_cpu_s(), busy_cpu_s()
                pg_cpu = pg_cpu_delta(pg0, pg_backends_cpu(srv.pid)) if store else 0.0
                threads1 = sampler.thread_cpu()
            sampler.rss()
        finally:
            final = lg.stop()
            sampler.stop()
        log_tail = srv.log_tail() if (pub.errors or ready["connect_errors"]) else ""

    delivered = stats["notifications"] - before["notifications"]
    t_last = stats["t_last"] or t_end
    span = max(t_last - pub.t0, 1e-9)
    server_cpu = cpu1 - cpu0
    loadgen_cpu = (stats["cpu_s"] - lg_cpu0) + (own1 - own0)
    out = {
        "subs": subs, "subs_requested": opts.subs, "msgs": opts.msgs, "size": opts.size,
        "pub_concurrency": opts.pub_concurrency, "procs": opts.procs,
        "fanout_threshold": opts.fanout_threshold,
        "server_cpu_us_per_delivery": round(server_cpu / max(delivered, 1) * 1e6, 3),
        "deliveries_per_s": round(delivered / span, 1),
        "delivered": delivered, "expected": expected, "lost": expected - delivered,
        "ws_frames": stats["frames"] - before["frames"],
        "events_per_frame": round(delivered / max(stats["frames"] - before["frames"], 1), 2),
        "other_events": stats["other_events"] - before["other_events"],
        "min_per_sub": stats["min_per_sub"], "max_per_sub": stats["max_per_sub"],
        "order_errors": stats["order_errors"] if opts.verify else None,
        "rss_idle_mb": round(rss_idle / 2**20, 1),
        "rss_connected_mb": round(rss_connected / 2**20, 1),
        "rss_peak_mb": round(sampler.peak / 2**20, 1),
        "server_cpu_s": round(server_cpu, 3),
        "server_cpu_by_thread_s": thread_delta(threads0, threads1),
        "loadgen_cpu_s": round(loadgen_cpu, 3),
        "other_cpu_s": round((busy1 - busy0) - server_cpu - loadgen_cpu - pg_cpu, 3),
        "phase_wall_s": round(t_end - pub.t0, 3),
        "delivery_span_s": round(span, 3),
        "publish_s": round(pub.seconds, 3),
        "publish_per_s": round(pub.ok / pub.seconds, 1),
        "pub_errors": pub.errors, "pub_error_sample": pub.error_sample,
        "connect_s": ready["connect_s"], "connect_errors": ready["connect_errors"],
        "connect_error_sample": ready["errors_sample"],
        "closed_by_server": (final or stats)["closed"],
        "close_codes": (final or stats)["close_codes"],
    }
    if store:
        out["pg_cpu_us_per_delivery"] = round(pg_cpu / max(delivered, 1) * 1e6, 3)
        out["pg_cpu_s"] = round(pg_cpu, 3)
    if log_tail:
        out["server_log_tail"] = log_tail[-2000:]
    return out
