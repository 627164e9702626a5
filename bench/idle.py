"""``idle``: server RSS per idle WebSocket connection.

Opens ``--conns`` connections (one user each) from ``--procs`` load-generator
processes, each bound to its own 127.0.0.x source address so that the
ephemeral ports of one address are not exhausted, waits for every ``hello``,
lets the server settle, and reports (RSS with connections - RSS before) / N.
"""

from __future__ import annotations

import time

from bench.measure import ProcSampler, settle_rss
from bench.pgschema import maybe_fresh_schema
from bench.server import TidingsServer
from bench.wsload import LoadGen


def run_once(opts, cpus) -> dict:
    # --workers N --broker URL: 100k connections need several processes
    # (20,000 descriptors each here); RSS is summed over the whole tree.
    args = []
    if getattr(opts, "workers", 1) > 1:
        args = ["--workers", str(opts.workers), "--broker", opts.broker]
    # --store postgresql://...: a new user's first stream creates their stream
    # row; on SQLite every worker process commits its own (fsync each), on
    # PostgreSQL the commits of many connections share a flush.
    with maybe_fresh_schema(getattr(opts, "store", None), "bench_idle") as store:
        return _run(opts, cpus, args, store)


def _run(opts, cpus, args: list[str], store: str | None) -> dict:
    with TidingsServer(cpu=opts.server_cpu, args=args, store=store) as srv:
        tokens = srv.tokens([f"u{i:06d}" for i in range(opts.conns)])
        sampler = ProcSampler(srv.pid)
        rss_before = settle_rss(sampler, 1.0)
        lg = LoadGen(srv.ws_url, tokens, procs=opts.procs, cpus=cpus, sources=opts.sources,
                     read_buffer=opts.read_buffer, connect_timeout=opts.timeout,
                     connect_concurrency=getattr(opts, "connect_concurrency", 100))
        try:
            t0 = time.monotonic()
            ready = lg.start()
            connect_s = time.monotonic() - t0
            rss_connected = settle_rss(sampler, opts.settle)
            still = lg.stats()
        finally:
            lg.stop()
        rss_after = settle_rss(sampler, 2.0)
        log_tail = srv.log_tail() if ready["connect_errors"] else ""

    n = max(still["connected"], 1)
    out = {
        "conns_requested": opts.conns, "connected": still["connected"],
        "connect_errors": ready["connect_errors"], "error_sample": ready["errors_sample"],
        "procs": opts.procs, "sources": opts.sources, "workers": getattr(opts, "workers", 1),
        "kib_per_conn": round((rss_connected - rss_before) / n / 1024, 2),
        "rss_before_mb": round(rss_before / 2**20, 1),
        "rss_connected_mb": round(rss_connected / 2**20, 1),
        "rss_after_close_mb": round(rss_after / 2**20, 1),
        "connect_s": round(connect_s, 2),
        "connects_per_s": round(still["connected"] / max(connect_s, 1e-9), 1),
    }
    if log_tail:
        out["server_log_tail"] = log_tail[-2000:]
    return out
