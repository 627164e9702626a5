"""Per-app counters of one node: plain integers on the hot path (sans I/O).

Nothing here knows Prometheus.  The hot path only adds to integers of an
:class:`AppStats` (one object per app, created on first use and then reused,
like a bound label child), and the delivery path does even that once per
broker message, not once per connection.  ``/metrics``
(tidings.api.metrics) and the dashboard (tidings.dashboard) read these
numbers when they are asked for them.

Latency is publish -> device: from the moment the publish's store commit
returned (``sent_at``, wall clock, carried by the broker message) to the end
of the loop tick that wrote the frame to the sockets.  It is observed once
per broker message (one per recipient for write fan-out, one per feed item
for broadcasts), never per connection.
"""

from __future__ import annotations

import time
from bisect import bisect_left
from collections import deque
from collections.abc import Callable

# Upper bounds in seconds (Prometheus ``le``); the last bucket is +Inf.
LATENCY_BUCKETS: tuple[float, ...] = (
    0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.025, 0.05, 0.1,
    0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)
MAX_TOPICS_PER_APP = 1000  # distinct topics counted per app; the rest go to OTHER_TOPIC
OTHER_TOPIC = "(other)"
RECENT_ERRORS = 100


class Histogram:
    """Counts per latency bucket (not cumulative), their sum and count."""

    __slots__ = ("counts", "total", "n")

    def __init__(self) -> None:
        self.counts = [0] * (len(LATENCY_BUCKETS) + 1)
        self.total = 0.0
        self.n = 0

    def observe(self, seconds: float) -> None:
        if seconds < 0.0:
            seconds = 0.0  # clocks of two nodes disagree: count it as instant
        self.counts[bisect_left(LATENCY_BUCKETS, seconds)] += 1
        self.total += seconds
        self.n += 1


def quantile(counts: list[int], q: float) -> float | None:
    """The ``q`` quantile (seconds) of bucket ``counts``, interpolated
    linearly inside the bucket, as Prometheus' ``histogram_quantile`` does.
    None when there is no observation; the largest finite bound when it
    falls into +Inf."""
    n = sum(counts)
    if n == 0:
        return None
    rank = q * n
    seen = 0
    for i, c in enumerate(counts):
        if c and seen + c >= rank:
            if i >= len(LATENCY_BUCKETS):
                return LATENCY_BUCKETS[-1]
            lo = LATENCY_BUCKETS[i - 1] if i else 0.0
            hi = LATENCY_BUCKETS[i]
            return lo + (hi - lo) * max(rank - seen, 0.0) / c
        seen += c
    return LATENCY_BUCKETS[-1]


class AppStats:
    """One app's counters on this node (monotonic, since the process started)."""

    __slots__ = ("published", "duplicates", "recipients", "delivered", "replayed",
                 "slow_consumers", "errors", "latency", "topics", "scheduled", "tracked")

    def __init__(self) -> None:
        self.published = 0  # publishes committed (202 accepted)
        self.duplicates = 0  # publishes answered from the idempotency window
        self.recipients = 0  # inbox entries written (write fan-out; a feed item writes none)
        self.delivered = 0  # notification events routed to open streams, live
        self.replayed = 0  # notification events replayed to resuming streams
        self.slow_consumers = 0  # streams cut because their queue overflowed
        self.errors: dict[str, int] = {}  # error code -> count
        self.latency = Histogram()
        self.topics: dict[str, int] = {}  # topic -> publishes
        # publishes with a future deliver_at (counted in published when they fire)
        self.scheduled = 0
        # delivery tracking by (channel, field): ("in_app", "delivered") users
        # reached live, ("in_app", "seen"|"read") entries marked, and what the
        # outbound channels report ("webhook", "sent"), ...
        self.tracked: dict[tuple[str, str], int] = {}


class Stats:
    """Every app's :class:`AppStats` on this node, plus node-wide counters."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.apps: dict[str, AppStats] = {}
        self.opened = 0  # streams opened on this node
        self.recent_errors: deque[tuple[float, str, str, int, str]] = deque(maxlen=RECENT_ERRORS)
        self._clock = clock

    def app(self, app_id: str) -> AppStats:
        st = self.apps.get(app_id)
        if st is None:
            st = self.apps[app_id] = AppStats()
        return st

    @property
    def slow_consumers(self) -> int:
        return sum(st.slow_consumers for st in self.apps.values())

    def slow_consumer(self, app_id: str) -> None:
        self.app(app_id).slow_consumers += 1

    def published(self, app_id: str, status: str, recipients: int, topic: str | None,
                  notes: int = 1) -> None:
        """``notes`` publishes of ``status`` (several: a batch's) reached
        ``recipients`` in all."""
        st = self.app(app_id)
        if status == "duplicate":
            st.duplicates += notes
            return
        if status == "scheduled":
            st.scheduled += notes
            return
        st.published += notes
        st.recipients += recipients
        if topic is not None:
            topics = st.topics
            if topic not in topics and len(topics) >= MAX_TOPICS_PER_APP:
                topic = OTHER_TOPIC  # bounded memory whatever names apps choose
            topics[topic] = topics.get(topic, 0) + notes

    def track(self, app_id: str, channel: str, field: str, n: int = 1) -> None:
        """Delivery tracking, per app (the per-notification counters are the store's)."""
        tracked = self.app(app_id).tracked
        key = (channel, field)
        tracked[key] = tracked.get(key, 0) + n

    def error(self, app_id: str | None, code: str, status: int, where: str) -> None:
        """One error answered to a client (HTTP status, or 0 for a refused stream)."""
        app_id = app_id or ""
        errors = self.app(app_id).errors
        errors[code] = errors.get(code, 0) + 1
        self.recent_errors.append((self._clock(), app_id, code, status, where[:120]))


__all__ = ["LATENCY_BUCKETS", "Histogram", "quantile", "AppStats", "Stats"]
