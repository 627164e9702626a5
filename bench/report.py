"""report.md: medians per scenario and configuration, from the results folder.

For each scenario and configuration (e.g. publish with 16 publishers) the
latest invocation's runs are summarised; peers.jsonl (the peer kit's lines)
is summarised per peer and variant over all its runs.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from bench import plots, results
from bench.measure import median

# (figure, docs/design.md §5 target, "max" = at most / "min" = at least)
TARGETS = {
    "fanout": ("server_cpu_us_per_delivery", 8.0, "max"),
    # broadcast: at most half of Centrifuge's CPU per delivery, a ratio read
    # from the peers section (the same load generator), not a fixed figure
    "idle": ("kib_per_conn", 10.0, "max"),
    "publish": ("publish_per_s", 20000.0, "min"),
    "latency": ("lat_p99_ms", 10.0, "max"),
    "inbox": ("p99_ms", 5.0, "max"),  # the worse of page and counts
}

COLUMNS = {
    "fanout": ["server_cpu_us_per_delivery", "deliveries_per_s", "rss_peak_mb", "lost",
               "events_per_frame", "publish_per_s", "server_cpu_s", "phase_wall_s",
               "loadgen_cpu_s", "other_cpu_s"],
    "publish": ["publish_per_s", "server_cpu_us_per_publish", "server_busy", "errors",
                "rss_peak_mb", "other_cpu_s"],
    "idle": ["kib_per_conn", "connected", "connect_errors", "rss_before_mb", "rss_connected_mb",
             "connects_per_s"],
}
COLUMNS["broadcast"] = COLUMNS["fanout"]
COLUMNS["failover"] = ["lost", "duplicated", "out_of_order", "devices", "devices_complete",
                       "reconnected", "recovery_s", "publish_retries", "duplicate_answers"]
COLUMNS["cache"] = ["page_p50_ms", "page_p99_ms", "counts_p50_ms", "counts_p99_ms",
                    "hello_p50_ms", "hello_p99_ms", "delivery_p50_ms", "delivery_p99_ms",
                    "page_server_cpu_us", "counts_server_cpu_us", "hello_server_cpu_us",
                    "delivery_server_cpu_us", "page_changed_p50_ms", "page_changed_p99_ms",
                    "counts_changed_p50_ms", "counts_changed_p99_ms", "delivery_cut_p50_pct",
                    "delivery_cut_p99_pct"]
COLUMNS["latency"] = ["lat_p50_ms", "lat_p95_ms", "lat_p99_ms", "lat_p99_9_ms", "lat_max_ms",
                      "server_cpu_us_per_delivery", "server_cpu_us_per_publish", "server_busy",
                      "publish_rate", "lost", "ack_p99_ms", "send_lag_p99_ms", "other_cpu_s"]
COLUMNS["inbox"] = ["page_p50_ms", "page_p99_ms", "counts_p50_ms", "counts_p99_ms",
                    "page_unloaded_p50_ms", "counts_unloaded_p50_ms", "page_server_cpu_us",
                    "counts_server_cpu_us", "page_unloaded_server_cpu_us",
                    "counts_unloaded_server_cpu_us", "page_rate", "counts_rate",
                    "page_unanswered", "counts_unanswered", "errors"]

CONFIG = {
    "fanout": ["subs", "msgs", "size", "pub_concurrency", "fanout_threshold"],
    "publish": ["concurrency", "batch", "users", "count", "store"],
    "idle": ["conns_requested", "procs", "workers", "store", "label"],
    "cache": ["users", "fill", "requests", "cache", "key_rate"],
    "failover": ["users", "msgs", "signal"],
}
CONFIG["broadcast"] = CONFIG["fanout"]
CONFIG["latency"] = ["audience", "conns_requested", "rate", "duration", "topic_size", "cache"]
CONFIG["inbox"] = ["store", "users", "per_user", "rate", "pool", "cache"]
# New scenarios (e.g. dashboard) add their TARGETS / COLUMNS / CONFIG entries and a
# place in SCENARIOS; plots.py has a cache on/off entry ready for "dashboard".
SCENARIOS = ("fanout", "broadcast", "publish", "idle", "latency", "inbox", "cache", "failover")

PEER_COLUMNS = ["server_cpu_us_per_delivery", "deliveries_per_s", "rss_peak_mb",
                "rss_connected_mb", "lost", "ws_frames", "publish_per_s", "server_cpu_s",
                "phase_wall_s", "other_cpu_s"]


def _fmt(v) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        if abs(v) >= 1000:
            return f"{v:,.0f}"
        return f"{v:.2f}".rstrip("0").rstrip(".") if v != int(v) else f"{v:.0f}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def _verdict(scenario: str, value) -> str:
    if scenario not in TARGETS or value is None:
        return ""
    _, target, kind = TARGETS[scenario]
    if isinstance(value, float) and value != value:  # NaN
        return ""
    ok = value <= target if kind == "max" else value >= target
    return f"{'meets' if ok else 'misses'} ({'≤' if kind == 'max' else '≥'} {_fmt(target)})"


def _scenario_section(scenario: str, recs: list[dict]) -> list[str]:
    groups: dict[tuple, list[dict]] = {}
    for r in recs:
        key = tuple(r.get(k) for k in CONFIG[scenario])
        groups.setdefault(key, []).append(r)
    lines = [f"## {scenario}", ""]
    cols = COLUMNS[scenario]
    lines += ["| configuration | runs | " + " | ".join(cols) + " | design §5 |",
              "|---|---:|" + "---:|" * len(cols) + "---|"]
    commands = []
    for key, runs in groups.items():
        latest = max(r["invocation"] for r in runs)
        runs = [r for r in runs if r["invocation"] == latest]
        cfg = ", ".join(f"{k}={_fmt(v)}" for k, v in zip(CONFIG[scenario], key, strict=True)
                        if v is not None)
        meds = [median([r.get(c) for r in runs]) for c in cols]
        figure = TARGETS.get(scenario, (cols[0],))[0]
        verdict = _verdict(scenario, median([r.get(figure) for r in runs]))
        lines.append(f"| {cfg} | {len(runs)} | " + " | ".join(_fmt(m) for m in meds)
                     + f" | {verdict} |")
        each = " / ".join(_fmt(r.get(figure)) for r in runs)
        commands.append(f"- {cfg}: `{runs[0]['command']}` (commit {runs[0].get('commit')}); "
                        f"{figure} per run: {each}")
    lines += ["", "Medians of the runs; the server is restarted before each run.", ""]
    return lines + commands + [""]


DASHBOARD_COLUMNS = ["p50_ms", "p90_ms", "p99_ms", "max_ms", "mean_ms", "server_cpu_ms_per_s",
                     "requests", "errors", "viewer_snapshots", "snapshot_bytes"]
DASHBOARD_CONFIG = ["conns", "rate", "viewers", "publish_rate"]


def _dashboard_section(recs: list[dict]) -> list[str]:
    """Per configuration, cache on next to cache off (the latest invocation of each)."""
    lines = ["## dashboard", "",
             "| configuration | cache | runs | " + " | ".join(DASHBOARD_COLUMNS) + " |",
             "|---|---|---:|" + "---:|" * len(DASHBOARD_COLUMNS)]
    groups: dict[tuple, list[dict]] = {}
    for r in recs:
        key = tuple(r.get(k) for k in DASHBOARD_CONFIG)
        groups.setdefault(key, []).append(r)
    commands, verdicts = [], []
    for key, group in groups.items():
        cfg = ", ".join(f"{k}={_fmt(v)}" for k, v in zip(DASHBOARD_CONFIG, key, strict=True))
        meds: dict[str, dict] = {}
        for cache in ("on", "off"):
            runs = [r for r in group if r.get("cache") == cache]
            if not runs:
                continue
            latest = max(r["invocation"] for r in runs)
            runs = [r for r in runs if r["invocation"] == latest]
            meds[cache] = {c: median([r.get(c) for r in runs]) for c in DASHBOARD_COLUMNS}
            lines.append(f"| {cfg} | {cache} | {len(runs)} | "
                         + " | ".join(_fmt(meds[cache][c]) for c in DASHBOARD_COLUMNS) + " |")
            each = " / ".join(f"{_fmt(r.get('p50_ms'))}/{_fmt(r.get('p99_ms'))}" for r in runs)
            commands.append(f"- {cfg}, cache {cache}: `{runs[0]['command']}` (commit "
                            f"{runs[0].get('commit')}); p50/p99 ms per run: {each}")
        if "on" in meds and "off" in meds:
            def lower(c: str, meds=meds) -> str:
                on, off = meds["on"][c], meds["off"][c]
                if not on or not off:
                    return "–"
                return f"{(1 - on / off) * 100:.0f}% lower"
            verdict = "meets" if all(
                meds["on"][c] and meds["off"][c] and meds["on"][c] <= meds["off"][c] / 2
                for c in ("p50_ms", "p99_ms")) else "misses"
            verdicts.append(f"- {cfg}: with the cache, p50 {lower('p50_ms')}, p99 "
                            f"{lower('p99_ms')}, server CPU {lower('server_cpu_ms_per_s')} than "
                            f"without; design §5 (at least 50% lower latency): {verdict}.")
    lines += ["", "Medians of the runs; the server is restarted before each run.", ""]
    return lines + verdicts + [""] + commands + [""]


def _peer_mode(label: str) -> str:
    m = re.match(r"(\w+) round\d+", label or "")
    return m.group(1) if m else ""


def _peers_section(lines_in: list[dict]) -> list[str]:
    groups: dict[tuple, list[dict]] = {}
    for r in lines_in:
        key = (r["peer"], _peer_mode(r.get("label", "")), r.get("subs_requested"), r.get("msgs"))
        groups.setdefault(key, []).append(r)
    out = ["## side by side with peers (the peer kit's loadgen.py)", "",
           "| server | subs × msgs | runs | " + " | ".join(PEER_COLUMNS)
           + " | µs/delivery, each run |",
           "|---|---|---:|" + "---:|" * len(PEER_COLUMNS) + "---|"]
    order = sorted(groups, key=lambda k: (k[0] != "tidings", k[0], k[1], k[2] or 0))
    for key in order:
        runs = groups[key]
        name = f"{key[0]} ({key[1]})" if key[1] else key[0]
        meds = [median([r.get(c) for r in runs]) for c in PEER_COLUMNS]
        each = " / ".join(_fmt(r.get("server_cpu_us_per_delivery")) for r in runs)
        out.append(f"| {name} | {_fmt(key[2])} × {_fmt(key[3])} | {len(runs)} | "
                   + " | ".join(_fmt(m) for m in meds) + f" | {each} |")
    out += ["", "Same client for every server (aiohttp, one process on the load-generator CPU); "
            "server alone on its CPU, restarted before each run, round-robin.", ""]
    return out


def _broadcast_write_section(recs: list[dict]) -> list[str]:
    latest: dict = {}
    for r in recs:  # the latest check per store and data-set size
        key = (r.get("store") or "sqlite", r.get("users") or 0)
        if key not in latest or r["invocation"] >= latest[key]["invocation"]:
            latest[key] = r
    lines = ["## broadcast_write: one broadcast, what the store writes", "",
             "| store | users stored | inbox entries | rows written | rows by table | WAL pages | "
             "publish ms | status |", "|---|---:|---:|---:|---|---:|---:|---|"]
    for key in sorted(latest):
        r = latest[key]
        by = ", ".join(f"{t} +{n}" for t, n in sorted(r.get("rows_by_table", {}).items()))
        lines.append(f"| {key[0]} | {_fmt(key[1])} | {_fmt(r.get('entries'))} "
                     f"| {_fmt(r.get('rows_written'))} | {by} | {_fmt(r.get('wal_pages'))} "
                     f"| {_fmt(r.get('publish_ms'))} | {r.get('status')} |")
    same = all(len({json.dumps(r.get(k), sort_keys=True) for s, r in latest.items()
                    if s[0] == store}) == 1
               for store in {s for s, _ in latest} for k in ("rows_written", "rows_by_table"))
    sizes = {u for _, u in latest}
    verdict = ("the same rows at every size: **O(1) in audience size** (design §5: one write)"
               if len(sizes) > 1 and same else "compare sizes to judge O(1)")
    lines += ["", '`{"to": {"all": true}}` on the inbox data set; rows counted per table '
              "before and after, WAL pages from the WAL's growth after a checkpoint; the item "
              f"is removed afterwards. {verdict}.", ""]
    lines += [f"- {k[0]}, {_fmt(k[1])} users: `{latest[k]['command']}` "
              f"(commit {latest[k].get('commit')})" for k in sorted(latest)]
    return lines + [""]


def write(out_dir: Path) -> Path:
    recs = results.load(out_dir / "results.jsonl")
    peers = results.load(out_dir / "peers.jsonl")
    for r in recs:
        if r.get("scenario") == "inbox" and "p99_ms" not in r:
            worst = [v for v in (r.get("page_p99_ms"), r.get("counts_p99_ms")) if v is not None]
            r["p99_ms"] = max(worst) if worst else None
    lines = [f"# tidings benchmarks, {out_dir.name}", "",
             "Produced by `python -m bench report` from `results.jsonl` (one JSON line per run) "
             "and `peers.jsonl`. Primary figures: server CPU µs per delivery (fan-out), "
             "KiB RSS per idle connection, notifications/s (publish), latency percentiles "
             "(latency, inbox: HdrHistogram, timed from the intended send time of an open-loop "
             "client).", ""]
    figures = plots.draw_all(recs, peers, out_dir)
    if figures:
        lines += ["## figures", ""]
        for name, caption in figures:
            lines += [f"![{caption}]({name})", "", f"*{caption}* ([{name}]({name}))", ""]
    elif not plots.available():
        lines += ["(figures need matplotlib: `pip install -e '.[bench]'`)", ""]
    for scenario in SCENARIOS:
        rs = [r for r in recs if r.get("scenario") == scenario]
        if rs:
            lines += _scenario_section(scenario, rs)
    bw = [r for r in recs if r.get("scenario") == "broadcast_write"]
    if bw:
        lines += _broadcast_write_section(bw)
    rs = [r for r in recs if r.get("scenario") == "dashboard"]
    if rs:
        lines += _dashboard_section(rs)
    if peers:
        lines += _peers_section(peers)
    if (out_dir / "NOTES.md").exists():
        lines += ["See [NOTES.md](NOTES.md) for what the figures mean and where the time goes.", ""]
    profiles = sorted(out_dir.glob("profile-*.md"))
    if profiles:
        lines += ["## profiles", ""] + [f"- [{p.name}]({p.name})" for p in profiles] + [""]
    path = out_dir / "report.md"
    path.write_text("\n".join(lines))
    return path
