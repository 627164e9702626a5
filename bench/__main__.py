"""``python -m bench SCENARIO [options]`` -- see bench/README.md."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from bench import profile, report, results, server
from bench.measure import median, pin

# figures whose medians are printed and reported, per scenario
KEY_FIGURES = {
    "fanout": ["server_cpu_us_per_delivery", "deliveries_per_s", "rss_peak_mb", "lost",
               "events_per_frame", "publish_per_s", "pg_cpu_us_per_delivery"],
    "broadcast": ["server_cpu_us_per_delivery", "deliveries_per_s", "rss_peak_mb", "lost",
                  "events_per_frame", "publish_per_s"],
    "publish": ["publish_per_s", "server_cpu_us_per_publish", "pg_cpu_us_per_publish",
                "floor_cpu_us_per_request", "floor_ratio", "errors", "rss_peak_mb"],
    "idle": ["kib_per_conn", "rss_connected_mb", "connected", "connect_errors"],
    "failover": ["lost", "duplicated", "out_of_order", "devices_complete", "reconnected",
                 "recovery_s", "publish_retries"],
    "cache": ["page_p50_ms", "page_p99_ms", "counts_p50_ms", "counts_p99_ms", "hello_p50_ms",
              "hello_p99_ms", "delivery_p50_ms", "delivery_p99_ms", "answer_p50_ms",
              "answer_p99_ms", "page_server_cpu_us",
              "counts_server_cpu_us", "hello_server_cpu_us", "delivery_server_cpu_us",
              "page_changed_p50_ms", "page_changed_p99_ms", "counts_changed_p50_ms",
              "counts_changed_p99_ms", "page_cut_p50_pct", "page_cut_p99_pct",
              "counts_cut_p50_pct", "counts_cut_p99_pct", "delivery_cut_p50_pct",
              "delivery_cut_p99_pct"],
    "dashboard": ["p50_ms", "p99_ms", "max_ms", "server_cpu_ms_per_s", "errors",
                  "viewer_snapshots"],
    "latency": ["lat_p50_ms", "lat_p99_ms", "lat_p99_9_ms", "lat_max_ms",
                "server_cpu_us_per_delivery", "floor_cpu_us_per_request", "floor_ratio",
                "disk_floor_p99_ms", "disk_floor_max_ms", "publish_rate", "lost", "pub_errors"],
    "inbox": ["page_p50_ms", "page_p99_ms", "counts_p50_ms", "counts_p99_ms",
              "page_unloaded_p50_ms", "counts_unloaded_p50_ms", "page_server_cpu_us",
              "counts_server_cpu_us", "page_unloaded_server_cpu_us", "errors"],
}


def _cache_flag(text: str) -> bool:
    if text not in ("on", "off"):
        raise argparse.ArgumentTypeError("on or off")
    return text == "on"


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--runs", type=int, default=3, help="runs (server restarted before each)")
    p.add_argument("--server-cpu", default="0", help="taskset -c list for the server ('' = none)")
    p.add_argument("--loadgen-cpu", default="1",
                   help="CPU list for the load generator and publishers ('' = none)")
    p.add_argument("--timeout", type=float, default=180.0, help="deadline of one phase, s")
    p.add_argument("--out", type=Path, default=None,
                   help="results folder (default bench/results/<date>)")
    p.add_argument("--label", default="", help="free text stored with each run")
    p.add_argument("--no-report", action="store_true", help="do not rewrite report.md")
    p.add_argument("--code", default=None, metavar="REV",
                   help="run the server from this git revision (e.g. HEAD) instead of the "
                        "working tree, whose uncommitted edits are otherwise measured")


def parse(argv: list[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    sub = ap.add_subparsers(dest="scenario", required=True)

    for name in ("fanout", "broadcast"):
        p = sub.add_parser(name, help=f"{name}: N WS subscribers x M notifications")
        _common(p)
        p.add_argument("--subs", type=int, default=1000)
        p.add_argument("--msgs", type=int, default=1000)
        p.add_argument("--size", type=int, default=100, help="notification body bytes")
        p.add_argument("--pub-concurrency", type=int, default=16)
        p.add_argument("--procs", type=int, default=1, help="load generator processes")
        p.add_argument("--sources", default=None,
                       help="comma-separated 127.0.0.x source addresses, one per process")
        p.add_argument("--settle", type=float, default=1.0,
                       help="seconds between the last hello and the first publish")
        p.add_argument("--idle-timeout", type=float, default=10.0,
                       help="stop waiting after this long without a delivery")
        p.add_argument("--fanout-threshold", type=int, default=None,
                       help="server's TIDINGS_FANOUT_THRESHOLD (default: the server's own)")
        p.add_argument("--store", default=None,
                       help="store URL (postgresql://...: a fresh schema per run, its "
                            "database the broker too); default SQLite")
        p.add_argument("--profile", action="store_true",
                       help="after the measured runs, one more run under py-spy")
        p.add_argument("--profile-gil", action="store_true",
                       help="profile only the thread holding the GIL (py-spy --gil)")
        p.add_argument("--verify", action="store_true",
                       help="parse every frame and check order and uniqueness (slower client)")

    p = sub.add_parser("publish", help="durable publish throughput (SQLite or PostgreSQL)")
    _common(p)
    p.add_argument("--count", type=int, default=20000, help="notifications per run")
    p.add_argument("--concurrency", default="16",
                   help="concurrent HTTP publishers; a comma list runs each")
    p.add_argument("--users", type=int, default=1000, help="distinct recipients (round robin)")
    p.add_argument("--batch", type=int, default=0,
                   help="use /v1/notifications/batch with this many per request (0: single)")
    p.add_argument("--size", type=int, default=100)
    p.add_argument("--warmup", type=int, default=500, help="publishes before measuring")
    p.add_argument("--store", default=None,
                   help="store URL (postgresql://...: a fresh schema per run); default SQLite")
    p.add_argument("--broker", default=None,
                   help="the server's --broker (e.g. redis://127.0.0.1:6379); default: the "
                        "PostgreSQL store's database, in-process on SQLite")
    p.add_argument("--no-floor", action="store_true",
                   help="skip the floor (a bare ASGI handler answering 202, measured "
                        "before each run; its ratio is floor_ratio)")
    p.add_argument("--profile", action="store_true",
                   help="after the measured runs, one more run under py-spy")
    p.add_argument("--profile-gil", action="store_true",
                   help="profile only the thread holding the GIL (py-spy --gil)")

    p = sub.add_parser("idle", help="RSS per idle WebSocket connection")
    _common(p)
    p.add_argument("--conns", type=int, default=10000)
    p.add_argument("--procs", type=int, default=2)
    p.add_argument("--sources", default="127.0.0.2,127.0.0.3",
                   help="source addresses, one per process (ports per address are limited)")
    p.add_argument("--settle", type=float, default=3.0,
                   help="seconds to wait after the last hello before reading RSS")
    p.add_argument("--read-buffer", type=int, default=1024, help="client read buffer, bytes")
    p.add_argument("--workers", type=int, default=1,
                   help="server worker processes (100k connections need several: "
                        "20,000 descriptors per process here)")
    p.add_argument("--broker", default="redis://127.0.0.1:6379",
                   help="broker URL, used when --workers > 1")
    p.add_argument("--store", default=None,
                   help="store URL (postgresql://...: a fresh schema per run); default SQLite")
    p.add_argument("--connect-concurrency", type=int, default=100,
                   help="connections each load generator process opens at once")

    p = sub.add_parser("failover", help="lost/duplicated when a node dies (2 nodes, HAProxy)")
    _common(p)
    p.add_argument("--store", default="postgresql://postgres@127.0.0.1:5432/test")
    p.add_argument("--broker", default="redis://127.0.0.1:6379",
                   help="'none': PostgreSQL alone (LISTEN/NOTIFY)")
    p.add_argument("--users", type=int, default=500, help="users, two devices each")
    p.add_argument("--msgs", type=int, default=60, help="numbered notifications")
    p.add_argument("--pause", type=float, default=0.02, help="seconds between publishes")
    p.add_argument("--signal", choices=("KILL", "TERM"), default="KILL")

    p = sub.add_parser("cache", help="the hot-path cache on vs off (PostgreSQL + Redis)")
    _common(p)
    p.add_argument("--cache", default="on,off", help="on, off or on,off")
    p.add_argument("--store", default="postgresql://postgres@127.0.0.1:5432/test")
    p.add_argument("--broker", default="redis://127.0.0.1:6379")
    p.add_argument("--users", type=int, default=200, help="users, one open device each")
    p.add_argument("--fill", type=int, default=20, help="notifications stored per user")
    p.add_argument("--requests", type=int, default=500, help="requests per measured kind")
    p.add_argument("--key-rate", type=int, default=100000,
                   help="the API key's rate limit per second: on, as a deployment has it "
                        "(its default 1,000 would refuse the fill); 0 turns it off")

    p = sub.add_parser("peers", help="the peer kit's loadgen against tidings and peers")
    _common(p)
    p.add_argument("--peers", default="centrifuge,pysocketio",
                   help="peer kit NAMEs to run next to tidings (round-robin)")
    p.add_argument("--kit", type=Path, default=None,
                   help="the peer kit's folder (default $TIDINGS_PEER_KIT)")
    p.add_argument("--tidings-modes", default="fanout,broadcast",
                   help="tidings variants: fanout (topic, write fan-out), broadcast (all)")
    p.add_argument("--start-settle", type=float, default=4.0)
    p.add_argument("--subs", type=int, default=1000)
    p.add_argument("--msgs", type=int, default=1000)
    p.add_argument("--install", action="store_true", help="run the kit's install.sh first")

    p = sub.add_parser("latency", help="publish -> device latency, 10k connections, 2k/s")
    _common(p)
    p.add_argument("--conns", type=int, default=10000, help="WebSocket connections, one user each")
    p.add_argument("--rate", default="2000",
                   help="notifications/s (open loop); a comma list runs each (the knee)")
    p.add_argument("--duration", type=float, default=20.0, help="measured seconds")
    p.add_argument("--warmup", type=float, default=5.0, help="seconds at the rate before")
    p.add_argument("--audience", choices=("users", "topic", "all"), default="users",
                   help="users: one random connected user each; topic: random topic of "
                        "--topic-size; all: broadcast")
    p.add_argument("--topic-size", type=int, default=100)
    p.add_argument("--size", type=int, default=100, help="notification body bytes")
    p.add_argument("--pool", type=int, default=32,
                   help="publisher connections (requests wait for a free one, timed)")
    p.add_argument("--procs", type=int, default=2, help="load generator processes")
    p.add_argument("--sources", default="127.0.0.2,127.0.0.3",
                   help="source addresses, one per process (ports per address are limited)")
    p.add_argument("--settle", type=float, default=2.0,
                   help="seconds between the last hello and the first publish")
    p.add_argument("--idle-timeout", type=float, default=5.0,
                   help="stop waiting for stragglers after this long without one")
    p.add_argument("--seed", type=int, default=1, help="recipient choice")
    p.add_argument("--store", default=None,
                   help="postgresql://...: the store, in a fresh schema (default: SQLite)")
    p.add_argument("--broker", default=None,
                   help="redis://... (default: the store's own: PostgreSQL LISTEN/NOTIFY)")
    p.add_argument("--nodes", type=int, choices=(1, 2), default=1,
                   help="2: devices on node B, publishes to node A (needs --store)")
    p.add_argument("--receipts", action="store_true",
                   help="devices acknowledge what they received once a second, as "
                        "tidings.js does (receipts, docs/protocol.md#receipts)")
    p.add_argument("--cache", type=_cache_flag, default=None,
                   help="on/off: the server's hot-path cache (default: the server's own)")
    p.add_argument("--no-floor", action="store_true",
                   help="skip the floors measured after each single-node run: a bare ASGI "
                        "handler answering 202 at the same rate (its ratio is floor_ratio) "
                        "and, on SQLite, durable commits alone at that rate "
                        "(disk_floor_p99_ms, disk_floor_max_ms)")
    p.add_argument("--profile", action="store_true",
                   help="after the measured runs, one more run under py-spy")
    p.add_argument("--profile-gil", action="store_true",
                   help="profile only the thread holding the GIL (py-spy --gil)")

    p = sub.add_parser("inbox", help="inbox page and counts latency, U users x P stored")
    _common(p)
    p.add_argument("--users", type=int, default=1_000_000)
    p.add_argument("--per-user", type=int, default=20, help="notifications stored per user")
    p.add_argument("--rate", type=float, default=500.0, help="requests/s per phase (open loop)")
    p.add_argument("--duration", type=float, default=15.0, help="measured seconds per phase")
    p.add_argument("--warmup", type=float, default=3.0, help="seconds at the rate before")
    p.add_argument("--pool", type=int, default=8,
                   help="client connections: at most this many requests in flight")
    p.add_argument("--limit", type=int, default=20, help="page size (?limit=)")
    p.add_argument("--probe", type=int, default=20,
                   help="requests sent one at a time before each phase (unloaded latency)")
    p.add_argument("--probe-budget", type=float, default=20.0,
                   help="stop the one-at-a-time probe after this many seconds")
    p.add_argument("--drain", type=float, default=20.0,
                   help="after the last send, give up on answers after this many seconds "
                        "(they count as unanswered, at the time waited so far)")
    p.add_argument("--seed", type=int, default=1, help="which users are asked for")
    p.add_argument("--store", default=None,
                   help="postgresql://USER@HOST:PORT/DB: load and measure there, in schema "
                        "bench_inbox_<users>x<per_user> (default: the embedded SQLite file)")
    p.add_argument("--cache-dir", type=Path, default=None,
                   help="where loaded data sets are kept (default ~/.cache/tidings-bench)")
    p.add_argument("--rebuild", action="store_true", help="load the data set again")
    p.add_argument("--no-broadcast-check", action="store_true",
                   help="skip the one-broadcast-is-one-write check after the runs")
    p.add_argument("--cache", type=_cache_flag, default=None,
                   help="on/off: the server's hot-path cache (default: the server's own)")
    p.add_argument("--profile", action="store_true",
                   help="after the measured runs, one more run under py-spy")
    p.add_argument("--profile-gil", action="store_true",
                   help="profile only the thread holding the GIL (py-spy --gil)")

    p = sub.add_parser("dashboard", help="dashboard API latency, cache on and off")
    _common(p)
    p.add_argument("--cache", default="on,off",
                   help="server cache settings to run, in order: on, off or on,off")
    p.add_argument("--conns", type=int, default=2000, help="WebSocket devices, one user each")
    p.add_argument("--topics", type=int, default=50, help="topics the devices follow")
    p.add_argument("--publish-rate", type=float, default=100.0,
                   help="notifications/s to random topics during the run")
    p.add_argument("--viewers", type=int, default=10,
                   help="open dashboards (SSE /dashboard/events) during the run")
    p.add_argument("--rate", type=float, default=100.0,
                   help="GET /dashboard/api/snapshot per second (fixed schedule)")
    p.add_argument("--pool", type=int, default=4, help="client connections for those GETs")
    p.add_argument("--warmup", type=float, default=3.0, help="seconds at the rate before")
    p.add_argument("--duration", type=float, default=15.0, help="measured seconds")
    p.add_argument("--settle", type=float, default=2.0,
                   help="seconds between the last hello and the first request")

    p = sub.add_parser("faults", help="the fault report: docs/faults.md (needs root)")
    p.add_argument("--only", default=None,
                   help="comma-separated faults to run (default all): kill, pg-restart, "
                        "pg-unreachable, redis-restart, redis-unreachable, partition, "
                        "partition-long, disk-full, read-only")
    p.add_argument("--runs", type=int, default=3, help="runs of each fault")
    p.add_argument("--users", type=int, default=50, help="users, two devices each")
    p.add_argument("--msgs", type=int, default=120, help="numbered notifications")
    p.add_argument("--pause", type=float, default=0.05, help="seconds between publishes")
    p.add_argument("--outage", type=float, default=10.0, help="seconds a lasting fault lasts")
    p.add_argument("--long-outage", type=float, default=45.0,
                   help="seconds the partition-long fault lasts")
    p.add_argument("--timeout", type=float, default=180.0,
                   help="give up publishing and waiting for devices after this long")
    p.add_argument("--out", type=Path, default=None,
                   help="results folder (default bench/results/<date>)")
    p.add_argument("--doc", type=Path, default=Path(__file__).resolve().parents[1] / "docs"
                   / "faults.md", help="where the report is written")

    p = sub.add_parser("report", help="rewrite report.md from results.jsonl")
    p.add_argument("--out", type=Path, default=None)

    a = ap.parse_args(argv)
    if getattr(a, "sources", None) and isinstance(a.sources, str):
        a.sources = [s.strip() for s in a.sources.split(",") if s.strip()]
    return a


def _runner(a: argparse.Namespace, cpus):
    """fn(variant, profile_path) -> one run's record."""
    if a.scenario in ("fanout", "broadcast"):
        from bench.fanout import run_once
        return lambda variant, prof: run_once(a.scenario, a, cpus, prof)
    if a.scenario == "publish":
        from bench.publish import run_once
        return lambda variant, prof: run_once(a, cpus, variant, prof)
    if a.scenario == "idle":
        from bench.idle import run_once
        return lambda variant, prof: run_once(a, cpus)
    if a.scenario == "dashboard":
        from bench.dashboard import run_once
        return lambda variant, prof: run_once(a, cpus, variant == "on")
    if a.scenario == "failover":
        from bench.failover import run_once
        return lambda variant, prof: run_once(a, cpus)
    if a.scenario == "cache":
        from bench.cache import run_once
        return lambda variant, prof: run_once(a, cpus, variant == "on")
    if a.scenario == "latency":
        from bench.latency import run_once
        return lambda variant, prof: run_once(argparse.Namespace(**{**vars(a), "rate": variant}),
                                              cpus, prof)
    if a.scenario == "inbox":
        from bench.inbox import run_once
        return lambda variant, prof: run_once(a, cpus, prof)
    raise SystemExit(f"unknown scenario {a.scenario}")


def run_scenario(a: argparse.Namespace) -> list[dict]:
    cpus = pin(a.loadgen_cpu)
    run = _runner(a, cpus)
    out_dir = a.out or results.today_dir()
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "results.jsonl"
    inv = results.invocation_id()
    commit = server.use_code(getattr(a, "code", None)) or results.git_commit()
    argv = " ".join(["python", "-m", "bench", *sys.argv[1:]])
    figures = KEY_FIGURES[a.scenario]
    if a.scenario == "inbox":
        from bench.inbox import prepare
        t0 = time.monotonic()
        meta = prepare(a).meta  # loads the data set once (cached), outside every timed phase
        print(f"[inbox data set] {meta['users']:,} users x {meta['per_user']} "
              f"({meta['rows']['inbox']:,} entries, {meta['db_bytes'] / 1e9:.2f} GB; loaded in "
              f"{meta['load_s']} s; ready in {time.monotonic() - t0:.1f} s)", flush=True)

    variants: list = [None]
    if a.scenario == "publish":
        variants = [int(c) for c in str(a.concurrency).split(",")]
    if a.scenario == "latency":
        variants = [float(r) for r in str(a.rate).split(",")]
    if a.scenario in ("dashboard", "cache"):
        variants = [c.strip() for c in a.cache.split(",")]
        if not variants or set(variants) - {"on", "off"}:
            raise SystemExit("--cache takes on, off or on,off")

    def name_of(variant) -> str:
        if a.scenario == "latency":
            return f"latency {variant:g}/s"
        if a.scenario in ("dashboard", "cache"):
            return f"{a.scenario} cache={variant}"
        return f"{a.scenario}{'' if variant is None else f' c={variant}'}"

    def one(variant, i: int) -> dict:
        t0 = time.monotonic()
        rec = run(variant, None)
        rec = {"scenario": a.scenario, "invocation": inv, "run": i + 1, "label": a.label,
               "commit": commit, "command": argv, "seconds": round(time.monotonic() - t0, 1),
               **rec}
        results.append(path, rec)
        print(f"[{name_of(variant)} run {i + 1}/{a.runs}] {({k: rec.get(k) for k in figures})}",
              flush=True)
        return rec

    # cache: both modes in every run, two servers side by side taking turns
    # request by request (bench/cache.py), so that a burst of other work on
    # a shared machine falls on both alike; each run's cuts (on against off)
    # are reported, and their median across runs
    groups: list[list[dict]] = [[] for _ in variants]
    if a.scenario == "cache" and len(variants) == 2:
        from bench.cache import run_pair
        for i in range(a.runs):
            t0 = time.monotonic()
            pair = dict(zip(("on", "off"), run_pair(a, cpus), strict=True))
            for j, variant in enumerate(variants):
                rec = {"scenario": a.scenario, "invocation": inv, "run": i + 1,
                       "label": a.label, "commit": commit, "command": argv,
                       "seconds": round(time.monotonic() - t0, 1), **pair[variant]}
                results.append(path, rec)
                print(f"[{name_of(variant)} run {i + 1}/{a.runs}] "
                      f"{({k: rec.get(k) for k in figures})}", flush=True)
                groups[j].append(rec)
    records = []
    for variant, group in zip(variants, groups, strict=True):
        name = name_of(variant)
        if not group:
            group += [one(variant, i) for i in range(a.runs)]
        meds = {k: median([r.get(k) for r in group]) for k in figures}
        print(f"[{name} median of {len(group)}] {meds}", flush=True)
        records += group
        if getattr(a, "profile", False) or getattr(a, "profile_gil", False):
            suffix = a.scenario if variant is None else f"{a.scenario}-c{variant}"
            if a.scenario == "latency":
                suffix = f"latency-{variant:g}"
            suffix += "-gil" if a.profile_gil else ""
            (out_dir / "raw").mkdir(exist_ok=True)
            raw = out_dir / "raw" / f"profile-{suffix}.txt"
            raw.unlink(missing_ok=True)
            rec = run(variant, raw)
            summary = profile.summarise(raw)
            md = out_dir / f"profile-{suffix}.md"
            md.write_text(
                f"# py-spy profile: {name}\n\n`{argv}` at commit {commit} "
                f"(one extra run, not in the medians; py-spy "
                f"{'--gil: only the thread holding the GIL' if a.profile_gil else 'wall time'}; "
                f"server CPU per delivery/publish in this run: "
                f"{rec.get('server_cpu_us_per_delivery', rec.get('server_cpu_us_per_publish'))}"
                f" µs with py-spy attached; CPU by thread: "
                f"{rec.get('server_cpu_by_thread_s')})\n\n"
                + profile.format_summary(summary) + "\n")
            print(f"profile: {md}")
            print(profile.format_summary(summary, 15))
    if a.scenario == "inbox" and not a.no_broadcast_check:
        from bench.inbox import broadcast_write
        t0 = time.monotonic()
        rec = {"scenario": "broadcast_write", "invocation": inv, "run": 1, "label": a.label,
               "commit": commit, "command": argv, **broadcast_write(a),
               "seconds": round(time.monotonic() - t0, 1)}
        results.append(path, rec)
        print(f"[broadcast_write] users={rec['users']} rows_written={rec['rows_written']} "
              f"{rec['rows_by_table']} wal_pages={rec['wal_pages']} "
              f"publish_ms={rec['publish_ms']}", flush=True)
    if not a.no_report:
        report.write(out_dir)
    print(f"results: {path}")
    return records


def main(argv: list[str] | None = None) -> int:
    a = parse(sys.argv[1:] if argv is None else argv)
    if a.scenario == "report":
        out_dir = a.out or results.today_dir()
        print(report.write(out_dir))
        return 0
    if a.scenario == "faults":
        from bench.faults import run_faults
        run_faults(a)
        return 0
    if a.scenario == "peers":
        from bench.peers import run_peers
        run_peers(a)
        return 0
    run_scenario(a)
    return 0


if __name__ == "__main__":
    sys.exit(main())
