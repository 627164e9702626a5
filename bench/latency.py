"""``latency``: publish -> device latency under load (docs/design.md §5: p99 ≤ 10 ms).

``--conns`` WebSocket connections (one user each, 10,000 by default, from
``--procs`` load-generator processes bound to their own 127.0.0.x source
addresses) stay open while an open-loop publisher sends ``--rate``
notifications/s (2,000 by default) for ``--warmup`` + ``--duration`` seconds.

Audiences (``--audience``):

* ``users`` (default): each notification to one user drawn at random among
  the connected ones, ``{"to": {"users": [u]}}``: the common case of a
  personal notification ("user_17 replied to your comment"), write fan-out
  with one inbox row each.  Deliveries/s = rate.
* ``topic``: to one of ``conns / --topic-size`` topics at random (write
  fan-out below the server's threshold).  Deliveries/s = rate x topic size.
* ``all``: broadcasts (read fan-out, one shared frame).  Deliveries/s =
  rate x conns.

Each notification carries ``data: {"t_ns": <intended send time>}``
(``time.monotonic_ns()``: one clock for every process on the machine); the
device subtracts it on receipt and records the difference in an
HdrHistogram.  Times are measured from the *intended* send time of an
open-loop schedule (bench/openloop.py), so a stall of the server delays
every notification due during it and shows in the percentiles.  Only
notifications stamped inside the measured window count; the warm-up's do not.

The primary, noise-robust figure is still the server's CPU per delivery in the
window; the percentiles depend on what else the machine runs.  After each
single-node run the same publisher sends the same requests at the same rate
to bench/floor.py (a bare ASGI handler answering 202, pinned like the server,
no devices): ``floor_cpu_us_per_request`` is what the HTTP request alone costs
at that rate, and ``floor_ratio`` tidings' CPU per publish over it.
On SQLite, bench/diskfloor.py then commits one row per notification on the
same schedule, pinned like the server: ``disk_floor_p99_ms`` and
``disk_floor_max_ms`` are what durable commits alone take on this machine's
disk at that rate, the bound below any durable publish's latency
(``--no-floor`` skips both).

A cluster (``--store postgresql://... [--broker redis://...] --nodes 2``): two
``tidings serve`` nodes on one fresh schema (dropped after), the devices on
node B and every publish sent to node A, so each notification crosses the
broker (Redis, or PostgreSQL LISTEN/NOTIFY without ``--broker``).  The CPU
figures are node A's (the one that publishes); node B's is
``node_b_cpu_us_per_delivery``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

from bench import floor, hist, openloop
from bench.measure import CpuMarks, ProcSampler, settle_rss
from bench.pgschema import maybe_fresh_schema
from bench.profile import Profiler
from bench.progress import Clock
from bench.publisher import payload, subscribe_topic
from bench.server import TidingsServer
from bench.wsload import LoadGen


def _targets(opts, users: list[str]):
    """(make_to(i) -> the "to" object, topics {name: members})."""
    rng = random.Random(opts.seed)
    if opts.audience == "users":
        return (lambda i: {"users": [users[rng.randrange(len(users))]]}), {}
    if opts.audience == "topic":
        n = max(len(users) // opts.topic_size, 1)
        topics = {f"lat{k}": users[k::n] for k in range(n)}
        names = list(topics)
        return (lambda i: {"topic": names[rng.randrange(n)]}), topics
    return (lambda i: {"all": True}), {}


def wait_window(lg: LoadGen, expected: int, *, timeout: float, idle_timeout: float) -> dict:
    """Poll until every notification of the window arrived, or no progress / deadline."""
    deadline = time.monotonic() + timeout
    last, last_change = -1, time.monotonic()
    while True:
        stats = lg.stats()
        now = time.monotonic()
        got = stats.get("lat_in_window", 0)
        if got >= expected or now > deadline or now - last_change > idle_timeout:
            return stats
        if got != last:
            last, last_change = got, now
        time.sleep(0.05)


def run_once(opts, cpus: set[int] | None, profile: Path | None = None) -> dict:
    if opts.nodes == 2 and not opts.store:
        raise SystemExit("bench latency --nodes 2 needs --store postgresql://...")
    with maybe_fresh_schema(opts.store, "bench_latency") as store, \
            contextlib.ExitStack() as nodes:
        rec = _run(opts, cpus, profile, store, nodes)
    if opts.nodes == 1 and not profile and not getattr(opts, "no_floor", False):
        rec.update(_floor(opts))
        rec["floor_ratio"] = round(rec["server_cpu_us_per_publish"]
                                   / max(rec["floor_cpu_us_per_request"], 1e-9), 2)
        if not opts.store:
            rec.update(_disk_floor(opts))
    return rec


def _disk_floor(opts) -> dict:
    """Durable SQLite commits alone at this rate (bench/diskfloor.py), pinned
    like the server, for up to 10 s."""
    cmd = [sys.executable, "-m", "bench.diskfloor", "--rate", str(opts.rate),
           "--duration", str(min(opts.duration, 10.0)), "--size", str(opts.size)]
    if opts.server_cpu:
        cmd = ["taskset", "-c", opts.server_cpu, *cmd]
    repo = Path(__file__).resolve().parents[1]
    out = subprocess.run(cmd, cwd=repo, env={**os.environ, "PYTHONPATH": str(repo)},
                         capture_output=True, text=True, timeout=opts.timeout + 30, check=True)
    return json.loads(out.stdout)


def _floor(opts) -> dict:
    """The floor at this rate: bench/floor.py's bare ASGI handler, pinned like
    the server, sent the same requests by the same open-loop publisher for up
    to 5 s (no devices: what the HTTP request alone costs at this rate)."""
    duration = min(opts.duration, 5.0)
    with floor.running(opts.server_cpu) as (host, port, pid):
        sampler = ProcSampler(pid)
        cpu0 = sampler.cpu()

        def build(i: int, intended: int) -> tuple[str, str, bytes]:
            doc = {"to": {"users": [f"u{i % max(opts.conns, 1):06d}"]}, "title": "bench",
                   "body": payload(i, opts.size), "data": {"t_ns": intended}}
            return "POST", "/v1/notifications", json.dumps(doc).encode()

        pub = asyncio.run(openloop.run(
            host, port, {}, rate=opts.rate, warmup=1.0, duration=duration,
            start_ns=time.monotonic_ns() + 100_000_000, build=build, pool=opts.pool,
            drain_s=opts.timeout))
        cpu = sampler.cpu() - cpu0
    return {"floor_cpu_us_per_request": round(cpu / max(pub.ok, 1) * 1e6, 2),
            "floor_errors": pub.errors}


def _run(opts, cpus, profile, store: str | None, nodes: contextlib.ExitStack) -> dict:
    env = {}
    if opts.cache is not None:
        env["TIDINGS_CACHE"] = "1" if opts.cache else "0"
    if opts.broker:
        env["TIDINGS_BROKER"] = opts.broker
    srv = nodes.enter_context(TidingsServer(cpu=opts.server_cpu, env=env, store=store))
    devices = srv  # the node the devices connect to
    if opts.nodes == 2:
        devices = nodes.enter_context(TidingsServer(
            cpu=opts.server_cpu, env=env, store=store,
            credentials={"app": srv.app, "api_key": srv.api_key,
                         "signing_secret": srv.signing_secret}))
    node_b = ProcSampler(devices.pid) if devices is not srv else None
    users = [f"u{i:06d}" for i in range(opts.conns)]
    tokens = srv.tokens(users)
    make_to, topics = _targets(opts, users)
    for name, members in topics.items():
        asyncio.run(subscribe_topic(srv.host, srv.port, srv.api_key, name, members))
    sampler = ProcSampler(srv.pid)
    rss_idle = settle_rss(sampler, 0.5)
    sampler.start()
    lg = LoadGen(devices.ws_url, tokens, procs=opts.procs, cpus=cpus, sources=opts.sources,
                 latency=True, connect_timeout=opts.timeout, connect_concurrency=100,
                 receipts=opts.receipts)
    try:
        t_connect = time.monotonic()
        ready = lg.start()
        connect_s = time.monotonic() - t_connect
        time.sleep(opts.settle)
        rss_connected = sampler.rss()
        conns = ready["connected"]

        start_ns = time.monotonic_ns() + 300_000_000
        w0, w1 = openloop.window(start_ns, opts.warmup, opts.duration)
        lg.set_window(w0, w1)
        marks = CpuMarks(sampler, lg.pids())
        mark0 = marks.at(w0)
        b0 = node_b.cpu() if node_b else 0.0
        size = opts.size

        def build(i: int, intended: int) -> tuple[str, str, bytes]:
            doc = {"to": make_to(i), "title": "bench", "body": payload(i, size),
                   "data": {"t_ns": intended}}
            return "POST", "/v1/notifications", json.dumps(doc).encode()

        def recipients(status: int, body: bytes) -> int:
            return conns if opts.audience == "all" else json.loads(body)["recipients"]

        spy = (Profiler(srv.pid, profile, gil=getattr(opts, "profile_gil", False))
               if profile else contextlib.nullcontext())
        total_s = opts.warmup + opts.duration
        with spy, Clock(total_s, f"latency {opts.rate:g}/s x {conns} conns") as clock:
            pub = asyncio.run(openloop.run(
                srv.host, srv.port, {"Authorization": f"Bearer {srv.api_key}"},
                rate=opts.rate, warmup=opts.warmup, duration=opts.duration,
                start_ns=start_ns, build=build, pool=opts.pool, on_response=recipients,
                tick=clock.to, drain_s=opts.timeout))
            mark0.join()
            end = marks.read()
            b_cpu = node_b.cpu() - b0 if node_b else None
        expected = pub.recipients_in_window
        stats = wait_window(lg, expected, timeout=opts.timeout,
                            idle_timeout=opts.idle_timeout)
        sampler.rss()
    finally:
        final = lg.stop()
        sampler.stop()
    log_tail = srv.log_tail() if (pub.errors or ready["connect_errors"]) else ""

    final = final or stats
    cpu = CpuMarks.delta(marks.marks[0], end)
    delivered = final.get("lat_in_window", stats.get("lat_in_window", 0))
    lat = final.get("lat_hist")
    out = {
        "audience": opts.audience, "rate": opts.rate, "duration": opts.duration,
        "warmup": opts.warmup, "conns_requested": opts.conns, "conns": conns,
        "topic_size": opts.topic_size if opts.audience == "topic" else None,
        "procs": opts.procs, "pool": opts.pool, "size": opts.size, "cache": opts.cache,
        "receipts": opts.receipts, "receipts_sent": final.get("receipts_sent"),
        "published": pub.ok_in_window, "publish_rate": round(pub.ok_in_window / opts.duration, 1),
        # in-window publishes still unanswered --timeout s after the last send (their
        # deliveries may still arrive, so then lost can go below 0)
        "pub_unanswered": pub.unanswered,
        "expected": expected, "delivered": delivered, "lost": expected - delivered,
        **hist.summary(lat, "lat"),
        **{k: v for k, v in hist.summary(pub.latency, "ack").items() if "p9" in k or "p50" in k},
        **{k: v for k, v in hist.summary(pub.send_lag, "send_lag").items()
           if k.endswith(("p99_ms", "max_ms"))},
        "nodes": opts.nodes, "store": "postgresql" if store else "sqlite",
        "broker": (opts.broker or "postgresql") if opts.nodes == 2 else None,
        "node_b_cpu_us_per_delivery": (round(b_cpu / max(delivered, 1) * 1e6, 2)
                                       if b_cpu is not None else None),
        "server_cpu_us_per_delivery": round(cpu["server_cpu_s"] / max(delivered, 1) * 1e6, 2),
        "server_cpu_us_per_publish": round(cpu["server_cpu_s"] / max(pub.ok_in_window, 1) * 1e6,
                                           2),
        "server_busy": round(cpu["server_cpu_s"] / max(cpu["wall_s"], 1e-9), 3),
        "server_cpu_s": round(cpu["server_cpu_s"], 3),
        "server_cpu_by_thread_s": cpu["server_cpu_by_thread_s"],
        "loadgen_cpu_s": round(cpu["loadgen_cpu_s"], 3),
        "other_cpu_s": round(cpu["other_cpu_s"], 3),
        "window_wall_s": round(cpu["wall_s"], 3),
        "pub_errors": pub.errors, "pub_error_sample": pub.error_sample,
        "statuses": {str(k): v for k, v in pub.statuses.items()},
        "outside_window": final.get("lat_outside"),
        "rss_idle_mb": round(rss_idle / 2**20, 1),
        "rss_connected_mb": round(rss_connected / 2**20, 1),
        "rss_peak_mb": round(sampler.peak / 2**20, 1),
        "connect_s": round(connect_s, 2), "connect_errors": ready["connect_errors"],
        "connect_error_sample": ready["errors_sample"],
        "closed_by_server": final["closed"], "close_codes": final["close_codes"],
        "lat_hist": lat, "ack_hist": hist.encode(pub.latency),
    }
    if log_tail:
        out["server_log_tail"] = log_tail[-2000:]
    return out
