"""HdrHistograms of latencies in µs, and the percentiles the report prints.

Histograms cross process boundaries and land in results.jsonl as the
base64 text of ``HdrHistogram.encode()`` (compressed, a few hundred bytes to
a few KiB), so the report can redraw every percentile later, not only the
few that were printed.
"""

from __future__ import annotations

from hdrh.histogram import HdrHistogram

LOWEST_US, HIGHEST_US, DIGITS = 1, 60_000_000, 3  # 1 µs .. 60 s, 3 significant digits
PERCENTILES = (50.0, 95.0, 99.0, 99.9)


def new() -> HdrHistogram:
    return HdrHistogram(LOWEST_US, HIGHEST_US, DIGITS)


def record_ns(h: HdrHistogram, ns: int) -> None:
    h.record_value(min(max(ns // 1000, LOWEST_US), HIGHEST_US))


def encode(h: HdrHistogram) -> str:
    return h.encode().decode()


def decode(text: str) -> HdrHistogram:
    return HdrHistogram.decode(text.encode())


def summary(h: HdrHistogram | str | None, prefix: str) -> dict:
    """``{prefix_p50_ms, prefix_p95_ms, prefix_p99_ms, prefix_p99_9_ms, prefix_max_ms,
    prefix_mean_ms, prefix_count}`` (ms, 3 decimals)."""
    if h is None:
        return {}
    if isinstance(h, str):
        h = decode(h)
    out: dict = {f"{prefix}_count": h.get_total_count()}
    if not h.get_total_count():
        return out
    for p in PERCENTILES:
        key = f"{prefix}_p{p:g}".replace(".", "_") + "_ms"
        out[key] = round(h.get_value_at_percentile(p) / 1000, 3)
    out[f"{prefix}_max_ms"] = round(h.get_max_value() / 1000, 3)
    out[f"{prefix}_mean_ms"] = round(h.get_mean_value() / 1000, 3)
    return out


def curve(text: str, points: int = 200) -> tuple[list[float], list[float]]:
    """(percentile, ms) pairs from p0 to the maximum, spaced for a log "1/(1-p)" axis."""
    h = decode(text)
    xs, ys = [], []
    if not h.get_total_count():
        return xs, ys
    # evenly spaced in log10(1 / (1 - p)): 0 (p0) .. 5 (p99.999)
    for i in range(points + 1):
        p = 100.0 * (1.0 - 10 ** (-5.0 * i / points))
        xs.append(p)
        ys.append(h.get_value_at_percentile(p) / 1000)
    return xs, ys
