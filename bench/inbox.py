"""``inbox``: inbox page and counts latency with U users x P notifications stored.

docs/design.md §5: ``GET /v1/me/notifications?limit=20`` and ``GET /v1/me/counts``
with 1,000,000 users x 20 notifications stored, p99 ≤ 5 ms.

The data set is loaded once by bench/inboxdata.py (plain SQL in the store's
layout, cached between invocations); each run restarts the server on it and
measures two phases one after the other, ``page`` then ``counts``: an
open-loop client (bench/openloop.py) sends ``--rate`` requests/s for
``--warmup`` + ``--duration`` s over at most ``--pool`` keep-alive
connections, each request as a different user drawn at random among all U,
with that user's own token.  Latency is from the intended send time to the
complete response (HdrHistogram); server CPU per request is the server's CPU
over the measured window divided by the requests answered in it.  Every
answer is checked (a page holds min(20, P) items, counts are 6 unread / 3
unseen as loaded); ``bad`` counts the ones that were not.

The per-user rate limit (``user_rate``, 50 requests a second per user with
bursts of 200) stays on, as in a deployment: its take is part of what a
request costs.  With requests spread over U users no user comes near it
(500/s over a million users at the defaults; the smoke test asks each of
its 200 users a quarter of a request a second); below ``--rate`` / 50
users it would refuse, and the refusals would show in ``*_errors``: run
the server with ``TIDINGS_USER_RATE=0`` then.

After the runs, ``broadcast_write`` publishes one ``{"to": {"all": true}}``
on the same data set and counts what the store wrote: rows per table
(``count(*)`` before and after) and WAL pages.  docs/design.md §3: a broadcast to every
user is one write, whatever the number of users.  The item is removed again
afterwards (server stopped), so the cached data set stays as loaded.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import random
import time
from pathlib import Path

from bench import hist, inboxdata, inboxpg, openloop
from bench.httpclient import HttpClient
from bench.measure import CpuMarks, ProcSampler, settle_rss
from bench.profile import Profiler
from bench.progress import Clock
from bench.server import TidingsServer

PHASES = ("page", "counts")
_runs = itertools.count()


class DataSet:
    """A loaded data set: SQLite (``folder`` holds tidings.db) or PostgreSQL (``store``)."""

    def __init__(self, meta: dict, folder: Path | None = None, store: str | None = None):
        self.meta, self.folder, self.store = meta, folder, store

    def server(self, opts) -> TidingsServer:
        env = {}
        if opts.cache is not None:
            env["TIDINGS_CACHE"] = "1" if opts.cache else "0"
        return TidingsServer(cpu=opts.server_cpu, env=env,
                             data_dir=str(self.folder) if self.folder else None,
                             credentials=self.meta["credentials"], store=self.store)

    def table_counts(self) -> dict[str, int]:
        if self.store:
            return inboxpg.table_counts(self.store)
        return inboxdata.table_counts(self.folder / "tidings.db")

    def remove_feed_items(self) -> int:
        if self.store:
            return inboxpg.remove_feed_items(self.store)
        return inboxdata.remove_feed_items(self.folder / "tidings.db")


def _check(phase: str, limit: int, per_user: int):
    """on_response: 1 when the answer is what the data set holds, else count it bad."""
    bad = [0]
    counts = (min(per_user, 6), min(per_user, 3))  # (unread, unseen) as loaded

    def check(status: int, body: bytes) -> int:
        doc = json.loads(body)
        if phase == "page":
            ok = len(doc["items"]) == min(limit, per_user)
        else:
            # (the answer also says where it was read, "at": not checked here)
            ok = (doc.get("unread"), doc.get("unseen")) == counts
        if not ok:
            bad[0] += 1
        return 1

    return check, bad


async def _probe(srv: TidingsServer, path: str, auth: list[dict], budget_s: float):
    """One request at a time (nothing else in flight): the unloaded latency."""
    h = hist.new()
    client = HttpClient(srv.host, srv.port, {}, timeout=max(budget_s, 1.0))
    try:
        await client.connect()
        deadline = time.monotonic() + budget_s
        for headers in auth:
            t0 = time.monotonic_ns()
            try:
                await client.send(client.build("GET", path, b"", headers))
            except TimeoutError:  # slower than the whole budget: that is the figure
                hist.record_ns(h, time.monotonic_ns() - t0)
                break
            hist.record_ns(h, time.monotonic_ns() - t0)
            if time.monotonic() > deadline:
                break
    finally:
        client.close()
    return h


def quiesce(sampler: ProcSampler, max_s: float, busy: float = 0.1) -> float:
    """Wait until the server is idle (under ``busy`` of a core over 0.5 s), at most
    ``max_s``: requests a client gave up on are still being answered, and the next
    phase must not queue behind them.  Returns the seconds waited."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < max_s:
        c0 = sampler.cpu()
        time.sleep(0.5)
        if sampler.cpu() - c0 < busy * 0.5:
            break
    return round(time.monotonic() - t0, 1)


def _phase(srv: TidingsServer, sampler: ProcSampler, opts, phase: str, meta: dict,
           rng: random.Random) -> dict:
    n = int(opts.rate * (opts.warmup + opts.duration)) + 1
    users = [inboxdata.user_id(rng.randrange(meta["users"])) for _ in range(n + opts.probe)]
    auth = [{"Authorization": f"Bearer {srv.token(u)}"} for u in users]
    path = f"/v1/me/notifications?limit={opts.limit}" if phase == "page" else "/v1/me/counts"
    unloaded = {f"{phase}_quiesce_s": quiesce(sampler, opts.timeout)}
    if opts.probe:
        marks = CpuMarks(sampler, [])
        before = marks.read()
        h = asyncio.run(_probe(srv, path, auth[n:], opts.probe_budget))
        cpu = CpuMarks.delta(before, marks.read())
        unloaded = {f"{phase}_unloaded_{k.split('_', 1)[1]}": v
                    for k, v in hist.summary(h, "u").items()
                    if k.endswith(("p50_ms", "max_ms", "count"))}
        # one request at a time: CPU per request without any queueing
        unloaded[f"{phase}_unloaded_server_cpu_us"] = round(
            cpu["server_cpu_s"] / max(h.get_total_count(), 1) * 1e6, 1)

    def build(i: int, intended: int):
        return "GET", path, b"", auth[i]

    check, bad = _check(phase, opts.limit, meta["per_user"])
    start_ns = time.monotonic_ns() + 200_000_000
    w0, _ = openloop.window(start_ns, opts.warmup, opts.duration)
    marks = CpuMarks(sampler, [])
    mark0 = marks.at(w0)
    with Clock(opts.warmup + opts.duration, f"{phase} {opts.rate:g}/s") as clock:
        res = asyncio.run(openloop.run(
            srv.host, srv.port, {}, rate=opts.rate, warmup=opts.warmup,
            duration=opts.duration, start_ns=start_ns, build=build, pool=opts.pool,
            on_response=check, tick=clock.to, drain_s=opts.drain))
    mark0.join()
    cpu = CpuMarks.delta(marks.marks[0], marks.read())
    done = res.ok_in_window
    return {
        **hist.summary(res.latency, phase), **unloaded,
        f"{phase}_unanswered": res.unanswered,
        # None when the window left requests unanswered: the CPU then went into
        # answers that did not count, so see *_unloaded_server_cpu_us instead
        f"{phase}_server_cpu_us": (round(cpu["server_cpu_s"] / done * 1e6, 1)
                                   if done and not res.unanswered else None),
        f"{phase}_rate": round(res.ok_in_window / opts.duration, 1),
        f"{phase}_server_busy": round(cpu["server_cpu_s"] / max(cpu["wall_s"], 1e-9), 3),
        f"{phase}_errors": res.errors, f"{phase}_bad": bad[0],
        f"{phase}_error_sample": res.error_sample,
        f"{phase}_other_cpu_s": round(cpu["other_cpu_s"], 3),
        f"{phase}_send_lag_p99_ms": hist.summary(res.send_lag, "l").get("l_p99_ms"),
        f"{phase}_slowest": res.slowest,
        f"{phase}_server_cpu_by_thread_s": cpu["server_cpu_by_thread_s"],
        f"{phase}_hist": hist.encode(res.latency),
    }


def prepare(opts) -> DataSet:
    if opts.store and opts.store.startswith(("postgresql://", "postgres://")):
        store, meta = inboxpg.dataset(opts.store, opts.users, opts.per_user, opts.cache_dir,
                                      opts.rebuild)
        return DataSet(meta, store=store)
    if opts.store:
        raise SystemExit("bench inbox --store: postgresql://... or the embedded SQLite default")
    folder, meta = inboxdata.dataset(opts.users, opts.per_user, opts.cache_dir, opts.rebuild)
    return DataSet(meta, folder=folder)


def run_once(opts, cpus, profile: Path | None = None) -> dict:
    data = prepare(opts)
    meta = data.meta
    rng = random.Random(opts.seed * 1000 + next(_runs))
    with data.server(opts) as srv:
        sampler = ProcSampler(srv.pid)
        rss_start = settle_rss(sampler, 0.5)
        sampler.start()
        spy = (Profiler(srv.pid, profile, gil=getattr(opts, "profile_gil", False))
               if profile else contextlib.nullcontext())
        out: dict = {}
        try:
            with spy:
                for phase in PHASES:
                    out.update(_phase(srv, sampler, opts, phase, meta, rng))
        finally:
            sampler.stop()
        log_tail = srv.log_tail() if (out.get("page_errors") or out.get("counts_errors")) else ""
    record = {
        "users": meta["users"], "per_user": meta["per_user"], "entries": meta["rows"]["inbox"],
        "store": "postgresql" if data.store else "sqlite", "rate": opts.rate,
        "duration": opts.duration,
        "warmup": opts.warmup, "pool": opts.pool, "limit": opts.limit, "cache": opts.cache,
        "db_gb": round(meta["db_bytes"] / 1e9, 2), "load_s": meta["load_s"],
        "errors": sum(out.get(f"{p}_{k}", 0) for p in PHASES
                      for k in ("errors", "bad", "unanswered")),
        "rss_start_mb": round(rss_start / 2**20, 1), "rss_peak_mb": round(sampler.peak / 2**20, 1),
        **out,
    }
    if log_tail:
        record["server_log_tail"] = log_tail[-2000:]
    return record


def broadcast_write(opts) -> dict:
    """One broadcast on the loaded data set: what did the store write?"""
    data = prepare(opts)
    db = data.folder / "tidings.db" if data.folder else None
    wal = db.with_name(db.name + "-wal") if db else None
    with data.server(opts) as srv:
        sampler = ProcSampler(srv.pid)
        settle_rss(sampler, 0.5)
        before = data.table_counts()
        if db:
            inboxdata.checkpoint(db)
        wal0 = wal.stat().st_size if wal and wal.exists() else 0

        async def publish() -> tuple[int, bytes, float]:
            client = HttpClient(srv.host, srv.port, {"Authorization": f"Bearer {srv.api_key}"})
            try:
                await client.connect()
                t0 = time.monotonic()
                status, body = await client.post_json(
                    "/v1/notifications",
                    {"to": {"all": True}, "title": "The tournament starts in 5 minutes"})
                return status, body, time.monotonic() - t0
            finally:
                client.close()

        cpu0 = sampler.cpu()
        status, body, seconds = asyncio.run(publish())
        cpu1 = sampler.cpu()
        wal1 = wal.stat().st_size if wal and wal.exists() else 0
        after = data.table_counts()
        page = _page_size(db) if db else 0
    removed = data.remove_feed_items()
    added = {t: after[t] - before.get(t, 0) for t in after if after[t] != before.get(t, 0)}
    return {
        "users": before.get("streams"), "entries": before.get("inbox"), "status": status,
        "store": "postgresql" if data.store else "sqlite",
        "response": json.loads(body) if status < 300 else body[:200].decode(errors="replace"),
        "rows_written": sum(added.values()), "rows_by_table": added,
        # a WAL frame is a 24-byte header and one page; the file starts with a 32-byte header
        "wal_pages": max(wal1 - max(wal0, 32), 0) // (page + 24) if db and wal1 else None,
        "publish_ms": round(seconds * 1000, 2),
        "server_cpu_ms": round((cpu1 - cpu0) * 1000, 2), "removed_after": removed,
    }


def _page_size(db: Path) -> int:
    import sqlite3

    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return conn.execute("PRAGMA page_size").fetchone()[0]
    finally:
        conn.close()
