"""PNG figures for report.md (matplotlib, no display needed).

Each function draws one figure from the day's records and returns its file
name, or None when the data it needs is not there (the report then leaves
the figure out).  Only measured figures are drawn; docs/design.md §5 targets are the
dashed lines.
"""

from __future__ import annotations

import re
from pathlib import Path

from bench import hist
from bench.measure import median

try:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
except ImportError:  # the report still writes its tables
    plt = None

TIDINGS, PEER, TARGET = "#1f6feb", "#8b949e", "#d1242f"
_PCT_TICKS = [50, 90, 99, 99.9, 99.99]


def available() -> bool:
    return plt is not None


def _latest(recs: list[dict], key) -> dict[tuple, list[dict]]:
    """Records grouped by ``key(r)``, each group reduced to its latest invocation."""
    groups: dict[tuple, list[dict]] = {}
    for r in recs:
        groups.setdefault(key(r), []).append(r)
    out = {}
    for k, runs in groups.items():
        last = max(r["invocation"] for r in runs)
        out[k] = [r for r in runs if r["invocation"] == last]
    return out


def _pct_axis(ax) -> None:
    """x = percentile on a 1/(1-p) log scale: the tail gets the room."""
    ax.set_xscale("log")
    ax.set_xticks([1 / (1 - p / 100) for p in _PCT_TICKS])
    ax.set_xticklabels([f"p{p:g}" for p in _PCT_TICKS])
    ax.minorticks_off()
    ax.set_xlim(1, 1 / (1 - 99.999 / 100))


def _ms_axis(ax) -> None:
    """Log y axis in ms with plain numbers (0.5, 1, 2, 5, 10 ...) instead of 10^x."""
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator

    ax.set_yscale("log")
    ticks = [m * 10 ** e for e in range(-2, 6) for m in (1, 2, 5)]
    ax.yaxis.set_major_locator(FixedLocator(ticks))
    ax.yaxis.set_minor_locator(NullLocator())
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))


def _curve(ax, text: str, **kw) -> None:
    xs, ys = hist.curve(text)
    ax.plot([1 / max(1 - p / 100, 1e-7) for p in xs], ys, **kw)


def _save(fig, out_dir: Path, name: str) -> str:
    fig.tight_layout()
    fig.savefig(out_dir / name, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return name


def latency(recs: list[dict], out_dir: Path) -> str | None:
    """Publish -> device latency percentiles of every run of the latest latency invocations."""
    recs = [r for r in recs if r.get("scenario") == "latency" and r.get("lat_hist")]
    if not recs or plt is None:
        return None
    groups = _latest(recs, lambda r: (r.get("audience"), r.get("rate"), r.get("conns_requested"),
                                      r.get("cache")))
    fig, ax = plt.subplots(figsize=(8, 4.6))
    colours = [TIDINGS, "#2da44e", "#bf8700", "#8250df", PEER]
    for n, ((aud, rate, conns, cache), runs) in enumerate(sorted(groups.items(), key=str)):
        colour = colours[n % len(colours)]
        cache_text = "" if cache is None else f", cache {'on' if cache else 'off'}"
        for k, r in enumerate(runs):
            label = (f"{aud}: {rate:,.0f}/s, {conns:,} conns{cache_text}"
                     if k == 0 else None)
            _curve(ax, r["lat_hist"], color=colour, alpha=0.85, lw=1.4, label=label)
    ax.axhline(10, color=TARGET, ls="--", lw=1.2, label="docs/design.md §5: p99 ≤ 10 ms")
    _pct_axis(ax)
    _ms_axis(ax)
    ax.set_ylabel("publish → device latency, ms (log)")
    ax.set_title("tidings: publish → device latency under load (one line per run)")
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize=8, loc="upper left")
    return _save(fig, out_dir, "latency-percentiles.png")


def latency_vs_rate(recs: list[dict], out_dir: Path) -> str | None:
    """p50 and p99 publish -> device latency against the rate, one line per
    code revision (``--code``): medians of the runs at each rate.  The knee is
    the highest rate whose p99 stays within the target."""
    recs = [r for r in recs if r.get("scenario") == "latency" and r.get("audience") == "users"
            and r.get("lat_p99_ms") is not None]
    by_code: dict[tuple, dict[float, list[dict]]] = {}
    for r in recs:
        key = (r.get("commit"), r.get("conns_requested"))
        by_code.setdefault(key, {}).setdefault(r["rate"], []).append(r)
    by_code = {k: v for k, v in by_code.items() if len(v) >= 2}  # a curve needs two rates
    if not by_code or plt is None:
        return None
    fig, ax = plt.subplots(figsize=(8, 4.6))
    colours = [TIDINGS, PEER, "#2da44e", "#bf8700", "#8250df"]
    for n, ((commit, conns), rates) in enumerate(sorted(by_code.items(), key=str)):
        xs = sorted(rates)
        p99 = [median([r["lat_p99_ms"] for r in rates[x]]) for x in xs]
        p50 = [median([r["lat_p50_ms"] for r in rates[x]]) for x in xs]
        knee = max((x for x, y in zip(xs, p99, strict=True) if y <= 10), default=None)
        colour = colours[n % len(colours)]
        knee_text = f", knee {knee:,.0f}/s" if knee else ""
        ax.plot(xs, p99, "o-", color=colour, lw=1.6,
                label=f"{commit}: p99 ({conns:,} conns{knee_text})")
        ax.plot(xs, p50, "o:", color=colour, lw=1.2, alpha=0.8, label=f"{commit}: p50")
    ax.axhline(10, color=TARGET, ls="--", lw=1.2, label="docs/design.md §5: p99 ≤ 10 ms")
    _ms_axis(ax)
    ax.set_xlabel("notifications/s (open loop, one random connected user each)")
    ax.set_ylabel("publish → device latency, ms (log)")
    ax.set_title("tidings: latency against rate (median of the runs at each rate)")
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize=8, loc="upper left")
    return _save(fig, out_dir, "latency-vs-rate.png")


def inbox_latency(recs: list[dict], out_dir: Path) -> str | None:
    """Inbox page and counts latency percentiles, per data-set size (latest invocation)."""
    recs = [r for r in recs if r.get("scenario") == "inbox" and r.get("page_hist")]
    if not recs or plt is None:
        return None
    groups = _latest(recs, lambda r: (r.get("users"), r.get("per_user"), r.get("store"),
                                      r.get("rate"), r.get("cache")))
    fig, ax = plt.subplots(figsize=(11, 4.8))
    styles = {"page": "-", "counts": ":"}
    colours = [TIDINGS, "#2da44e", "#bf8700", "#8250df", PEER]
    for n, (key, runs) in enumerate(sorted(groups.items(), key=str)):
        users, per, store, rate, _ = key
        colour = colours[n % len(colours)]
        for phase in ("page", "counts"):
            for k, r in enumerate(runs):
                if not r.get(f"{phase}_hist"):
                    continue
                label = (f"{phase}: {users:,} users × {per}, {store}" if k == 0 else None)
                _curve(ax, r[f"{phase}_hist"], color=colour, ls=styles[phase], lw=1.4,
                       alpha=0.85, label=label)
            unloaded = median([r.get(f"{phase}_unloaded_p50_ms") for r in runs])
            if unloaded:
                ax.scatter([2.0], [unloaded], color=colour, zorder=3,
                           marker="o" if phase == "page" else "s")
    ax.axhline(5, color=TARGET, ls="--", lw=1.2, label="docs/design.md §5: p99 ≤ 5 ms")
    for marker, phase in (("o", "page"), ("s", "counts")):
        ax.scatter([], [], color="black", marker=marker,
                   label=f"{phase}, one request at a time: p50 (at p50)")
    _pct_axis(ax)
    _ms_axis(ax)
    ax.set_ylabel("request → complete response, ms (log)")
    rates = sorted({r.get("rate") for r in recs if r.get("rate")})
    ax.set_title("GET /v1/me/notifications?limit=20 (solid), /v1/me/counts (dotted); open loop "
                 f"at {', '.join(f'{x:,.0f}' for x in rates)} req/s", fontsize=10)
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    return _save(fig, out_dir, "inbox-percentiles.png")


def _peer_mode(label: str) -> str:
    m = re.match(r"(\w+) round\d+", label or "")
    return m.group(1) if m else ""


def _peer_name(r: dict) -> str:
    mode = _peer_mode(r.get("label", ""))
    names = {"centrifuge": "Centrifuge (Go)", "pysocketio": "python-socketio"}
    name = names.get(r["peer"], r["peer"])
    if r["peer"] == "tidings":
        name = {"fanout": "tidings, topic (write fan-out)",
                "broadcast": "tidings, broadcast (read fan-out)"}.get(mode, f"tidings {mode}")
    return name


def cpu_per_delivery(peers: list[dict], out_dir: Path) -> str | None:
    """Server CPU µs per delivery, tidings next to the peers (peer kit's loadgen)."""
    if not peers or plt is None:
        return None
    groups: dict[str, list[float]] = {}
    for r in peers:
        if r.get("server_cpu_us_per_delivery") is not None:
            groups.setdefault(_peer_name(r), []).append(r["server_cpu_us_per_delivery"])
    if not groups:
        return None
    items = sorted(((median(v), k, len(v)) for k, v in groups.items()), reverse=True)
    fig, ax = plt.subplots(figsize=(8, 0.9 + 0.55 * len(items)))
    ys = range(len(items))
    ax.barh(ys, [m for m, _, _ in items],
            color=[TIDINGS if k.startswith("tidings") else PEER for _, k, _ in items])
    for y, (m, _, runs) in zip(ys, items, strict=True):
        ax.text(m * 1.06, y, f"{m:.2f} µs ({runs} runs)", va="center", fontsize=8,
                bbox={"facecolor": "white", "edgecolor": "none", "pad": 1})
    ax.set_yticks(list(ys))
    ax.set_yticklabels([k for _, k, _ in items], fontsize=9)
    ax.set_xscale("log")
    ax.set_xlim(min(0.8, min(m for m, _, _ in items) / 2), max(m for m, _, _ in items) * 4)
    ax.axvline(1.2, color=TARGET, ls="--", lw=1, label="target, topic fan-out: ≤ 1.2 µs")
    ax.axvline(4.0, color=TARGET, ls=":", lw=1.2, label="target, broadcast: ≤ 4 µs")
    ax.legend(fontsize=8, loc="upper right", framealpha=0.95)
    ax.set_xlabel("server CPU µs per delivery (median; log scale; lower is better)")
    subs = {r.get("subs_requested") for r in peers}
    msgs = {r.get("msgs") for r in peers}
    ax.set_title(f"1 channel, {'/'.join(map(str, subs))} subscribers × "
                 f"{'/'.join(map(str, msgs))} messages, same client for every server",
                 fontsize=10)
    ax.grid(True, axis="x", which="major", alpha=0.3)
    return _save(fig, out_dir, "cpu-per-delivery.png")


def memory_per_connection(recs: list[dict], peers: list[dict], out_dir: Path) -> str | None:
    """KiB of server RSS per WebSocket connection: tidings' idle scenario, and every
    server of the peer kit at 1k subscribed connections."""
    if plt is None:
        return None
    bars: list[tuple[str, float, str]] = []
    idle = [r for r in recs if r.get("scenario") == "idle" and r.get("kib_per_conn")]
    for (conns,), runs in _latest(idle, lambda r: (r.get("conns_requested"),)).items():
        bars.append((f"tidings, {conns:,} idle (bench idle)",
                     median([r["kib_per_conn"] for r in runs]), TIDINGS))
    groups: dict[str, list[float]] = {}
    for r in peers:
        if r.get("rss_connected_mb") is None or r.get("rss_idle_mb") is None or not r.get("subs"):
            continue
        if _peer_mode(r.get("label", "")) == "broadcast":
            continue  # same connections as tidings' topic runs; one tidings bar is enough
        kib = (r["rss_connected_mb"] - r["rss_idle_mb"]) * 1024 / r["subs"]
        name = _peer_name(r).replace(", topic (write fan-out)", "")
        groups.setdefault(f"{name}, {r['subs']:,} subscribed (peer kit)", []).append(kib)
    for k, v in groups.items():
        bars.append((k, median(v), TIDINGS if k.startswith("tidings") else PEER))
    if not bars:
        return None
    bars.sort(key=lambda b: b[1])
    fig, ax = plt.subplots(figsize=(8, 0.9 + 0.55 * len(bars)))
    ys = range(len(bars))
    ax.barh(ys, [b[1] for b in bars], color=[b[2] for b in bars])
    for y, b in zip(ys, bars, strict=True):
        ax.text(b[1] + 0.5, y, f"{b[1]:.1f} KiB", va="center", fontsize=8)
    ax.set_yticks(list(ys))
    ax.set_yticklabels([b[0] for b in bars], fontsize=9)
    ax.axvline(12, color=TARGET, ls="--", lw=1, label="target: ≤ 12 KiB")
    ax.legend(fontsize=8, loc="lower right", framealpha=0.95)
    ax.set_xlim(0, max(b[1] for b in bars) * 1.25)
    ax.set_xlabel("server RSS per WebSocket connection, KiB (median; lower is better)")
    ax.set_title("(RSS with the connections − RSS before) ÷ connections", fontsize=10)
    ax.grid(True, axis="x", alpha=0.3)
    return _save(fig, out_dir, "memory-per-connection.png")


# figure per scenario for the cache comparison: (key, label)
_CACHE_FIGURES = {
    "latency": [("lat_p99_ms", "p99 publish→device, ms"),
                ("server_cpu_us_per_delivery", "server CPU µs/delivery")],
    "inbox": [("page_p99_ms", "inbox page p99, ms"), ("counts_p99_ms", "counts p99, ms"),
              ("page_server_cpu_us", "server CPU µs/page")],
    "dashboard": [("p99_ms", "p99, ms")],
    "cache": [("delivery_p50_ms", "publish→device p50, ms"),
              ("delivery_p99_ms", "publish→device p99, ms"),
              ("page_p50_ms", "inbox page p50, ms"), ("page_p99_ms", "inbox page p99, ms"),
              ("counts_p50_ms", "counts p50, ms"), ("counts_p99_ms", "counts p99, ms"),
              ("hello_p50_ms", "stream hello p50, ms"), ("hello_p99_ms", "stream hello p99, ms")],
}


def cache_on_off(recs: list[dict], out_dir: Path) -> str | None:
    """The hot-path cache on vs off, wherever both were measured (``--cache on|off``)."""
    if plt is None:
        return None
    pairs = []
    for scenario, figures in _CACHE_FIGURES.items():
        rs = [r for r in recs if r.get("scenario") == scenario
              and r.get("cache") in (True, False, "on", "off")]
        # latency/inbox store True/False, the dashboard scenario "on"/"off"
        by = _latest(rs, lambda r: (r["cache"] in (True, "on"),))
        if (True,) not in by or (False,) not in by:
            continue
        for key, label in figures:
            on = median([r.get(key) for r in by[(True,)]])
            off = median([r.get(key) for r in by[(False,)]])
            if on is not None and off is not None and off > 0:
                pairs.append((f"{scenario}: {label}", on, off))
    if not pairs:
        return None
    fig, ax = plt.subplots(figsize=(10, 1.4 + 0.7 * len(pairs)))
    ys = list(range(len(pairs)))
    ax.barh([y + 0.2 for y in ys], [100.0] * len(pairs), height=0.38, color=PEER,
            label="cache off (= 100 %)")
    ax.barh([y - 0.2 for y in ys], [p[1] / p[2] * 100 for p in pairs], height=0.38,
            color=TIDINGS, label="cache on")
    for y, (_, on, off) in zip(ys, pairs, strict=True):
        text = (f"on {on:g} vs off {off:g}: {(1 - on / off) * 100:.0f} % lower" if on <= off
                else f"on {on:g} vs off {off:g}: higher with the cache")
        ax.text(on / off * 100 + 1, y - 0.2, text, va="center", fontsize=8)
    ax.set_yticks(ys)
    ax.set_yticklabels([p[0] for p in pairs], fontsize=9)
    ax.axvline(60, color=TARGET, ls="--", lw=1, label="target: delivery ≥ 40 % lower")
    ax.axvline(50, color=TARGET, ls=":", lw=1, label="target: inbox/dashboard ≥ 50 % lower")
    ax.set_xlim(0, 200)
    ax.set_xticks([0, 20, 40, 60, 80, 100, 120])
    ax.set_xlabel("cache on, % of cache off (lower is better)")
    ax.legend(fontsize=8, loc="lower right", framealpha=0.95)
    return _save(fig, out_dir, "cache-on-off.png")


def draw_all(recs: list[dict], peers: list[dict], out_dir: Path) -> list[tuple[str, str]]:
    """[(file, caption)] of the figures that could be drawn."""
    if plt is None:
        return []
    out = []
    for fn, caption in (
        (lambda: latency(recs, out_dir), "publish → device latency, every run "
         "(HdrHistogram percentile distribution)"),
        (lambda: latency_vs_rate(recs, out_dir), "publish → device p99 (solid) and p50 "
         "(dotted) against the rate, per code revision"),
        (lambda: inbox_latency(recs, out_dir), "inbox page (solid) and counts (dotted) latency"),
        (lambda: cpu_per_delivery(peers, out_dir), "server CPU per delivery next to the peers"),
        (lambda: memory_per_connection(recs, peers, out_dir), "memory per connection"),
        (lambda: cache_on_off(recs, out_dir), "the hot-path cache on vs off"),
    ):
        name = fn()
        if name:
            out.append((name, caption))
    return out
