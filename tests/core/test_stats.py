"""Per-app counters, the latency histogram and its quantiles (no I/O)."""

from __future__ import annotations

import pytest

from tidings.core.stats import (
    LATENCY_BUCKETS,
    MAX_TOPICS_PER_APP,
    OTHER_TOPIC,
    RECENT_ERRORS,
    Histogram,
    Stats,
    quantile,
)


def test_histogram_buckets_are_upper_bounds():
    h = Histogram()
    for v in (0.0, 0.0005, 0.0006, 0.004, 99.0, -0.2):
        h.observe(v)
    assert h.n == 6
    assert h.counts[0] == 3  # 0.0, exactly 0.0005 (le), and a negative clock skew
    assert h.counts[LATENCY_BUCKETS.index(0.001)] == 1
    assert h.counts[LATENCY_BUCKETS.index(0.005)] == 1
    assert h.counts[-1] == 1  # +Inf
    assert h.total == pytest.approx(0.0005 + 0.0006 + 0.004 + 99.0)


def test_quantile_interpolates_inside_the_bucket():
    counts = [0] * (len(LATENCY_BUCKETS) + 1)
    i = LATENCY_BUCKETS.index(0.01)  # bucket (0.0075, 0.01]
    counts[i] = 100
    assert quantile(counts, 0.5) == pytest.approx(0.0075 + 0.0025 * 0.5)
    assert quantile(counts, 0.99) == pytest.approx(0.0075 + 0.0025 * 0.99)


def test_quantile_across_buckets_and_edge_cases():
    counts = [0] * (len(LATENCY_BUCKETS) + 1)
    assert quantile(counts, 0.5) is None
    counts[0] = 90  # <= 0.5 ms
    counts[-1] = 10  # +Inf
    assert quantile(counts, 0.5) == pytest.approx(0.0005 * 50 / 90)
    assert quantile(counts, 0.99) == LATENCY_BUCKETS[-1]


def test_publishes_duplicates_and_topics_per_app():
    s = Stats()
    s.published("a", "accepted", 3, None)
    s.published("a", "accepted", 5, "guild:7")
    s.published("a", "duplicate", 5, "guild:7")
    s.published("b", "accepted", 1, "guild:7")
    a, b = s.app("a"), s.app("b")
    assert (a.published, a.duplicates, a.recipients) == (2, 1, 8)
    assert a.topics == {"guild:7": 1} and b.topics == {"guild:7": 1}
    assert s.app("a") is a  # bound once, reused


def test_topic_names_are_bounded_per_app():
    s = Stats()
    for i in range(MAX_TOPICS_PER_APP + 5):
        s.published("a", "accepted", 1, f"t{i}")
    s.published("a", "accepted", 1, "t0")  # a known topic still counts as itself
    topics = s.app("a").topics
    assert len(topics) == MAX_TOPICS_PER_APP + 1
    assert topics[OTHER_TOPIC] == 5 and topics["t0"] == 2


def test_errors_by_code_and_the_recent_ring():
    s = Stats(clock=lambda: 1000.0)
    s.error(None, "unauthorized", 401, "GET /v1/me/counts")
    s.error("a", "invalid", 422, "POST /v1/notifications")
    s.error("a", "invalid", 422, "POST /v1/notifications")
    assert s.app("").errors == {"unauthorized": 1}
    assert s.app("a").errors == {"invalid": 2}
    assert s.recent_errors[-1] == (1000.0, "a", "invalid", 422, "POST /v1/notifications")
    for _ in range(RECENT_ERRORS + 10):
        s.error("a", "x", 400, "w" * 500)
    assert len(s.recent_errors) == RECENT_ERRORS
    assert len(s.recent_errors[-1][4]) == 120


def test_slow_consumers_sum_over_apps():
    s = Stats()
    s.slow_consumer("a")
    s.slow_consumer("a")
    s.slow_consumer("b")
    assert s.slow_consumers == 3 and s.app("a").slow_consumers == 2


def test_published_counts_several_publishes_at_once():
    # a batch's items, counted together
    s = Stats()
    s.published("a", "accepted", 7, None, 5)
    s.published("a", "accepted", 3, "news", 2)
    s.published("a", "duplicate", 0, None, 3)
    s.published("a", "scheduled", 0, None, 4)
    st = s.app("a")
    assert (st.published, st.recipients, st.topics) == (7, 10, {"news": 2})
    assert (st.duplicates, st.scheduled) == (3, 4)
