"""The per-second time series behind the dashboard's charts.

Once a second the recorder reads the node's counters (tidings.core.stats:
monotonic integers per app) and keeps the difference to the previous
reading: publishes, deliveries, errors, the latency histogram's new
observations, publishes per topic, and the open connections per app.  That
costs O(apps + topics published to in that second), never a walk over the
connections.  The last five minutes stay in memory; rates are differences
divided by the measured interval.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

log = logging.getLogger(__name__)

HISTORY_SECONDS = 300
TOPIC_WINDOW = 60  # seconds summed in ``topics_window`` (the dashboard's top topics)


@dataclass(slots=True)
class AppPoint:
    """One app during one interval."""

    published: int = 0
    delivered: int = 0
    errors: int = 0
    latency: list[int] | None = None  # new observations per bucket, None when none
    connections: int = 0


@dataclass(slots=True)
class Point:
    t: float  # wall-clock end of the interval
    dt: float  # its length in seconds
    apps: dict[str, AppPoint] = field(default_factory=dict)
    topics: dict[tuple[str, str], int] = field(default_factory=dict)  # publishes


@dataclass(slots=True)
class _Seen:
    published: int = 0
    delivered: int = 0
    errors: int = 0
    latency_n: int = 0
    latency: list[int] | None = None
    topics: dict[str, int] = field(default_factory=dict)


class Recorder:
    def __init__(self, hub, *, history: int = HISTORY_SECONDS, clock=time.time,
                 monotonic=time.monotonic):
        self.hub = hub
        self.points: deque[Point] = deque(maxlen=history)
        self.tick = 0  # number of samples taken; a cache key for "this second"
        # publishes per (app, topic) over the last TOPIC_WINDOW samples, kept as a
        # running sum so that reading it never walks the window
        self.topics_window: dict[tuple[str, str], int] = {}
        self._seen: dict[str, _Seen] = {}
        self._clock = clock
        self._monotonic = monotonic
        self._last = monotonic()
        self._waiters: asyncio.Future | None = None

    def sample(self) -> Point:
        """Close the current interval and start the next one."""
        now_m = self._monotonic()
        point = Point(t=self._clock(), dt=max(now_m - self._last, 1e-3))
        self._last = now_m
        stats, hub_apps = self.hub.metrics.apps, self.hub.apps
        for app in stats.keys() | hub_apps.keys():
            st = stats.get(app)
            seen = self._seen.get(app)
            if seen is None:
                seen = self._seen[app] = _Seen()
            p = AppPoint(connections=len(hub_apps.get(app, ())))
            if st is not None:
                p.published = st.published - seen.published
                p.delivered = st.delivered - seen.delivered
                errors = sum(st.errors.values())
                p.errors = errors - seen.errors
                seen.published, seen.delivered, seen.errors = st.published, st.delivered, errors
                h = st.latency
                if h.n != seen.latency_n:
                    counts = list(h.counts)
                    before = seen.latency or [0] * len(counts)
                    p.latency = [a - b for a, b in zip(counts, before, strict=True)]
                    seen.latency, seen.latency_n = counts, h.n
                if p.published:
                    for topic, n in st.topics.items():
                        d = n - seen.topics.get(topic, 0)
                        if d:
                            point.topics[(app, topic)] = d
                            seen.topics[topic] = n
            if p.published or p.delivered or p.errors or p.latency or p.connections:
                point.apps[app] = p
        self.points.append(point)
        window = self.topics_window
        for key, n in point.topics.items():
            window[key] = window.get(key, 0) + n
        if len(self.points) > TOPIC_WINDOW:
            for key, n in self.points[-TOPIC_WINDOW - 1].topics.items():
                left = window[key] - n
                if left:
                    window[key] = left
                else:
                    del window[key]
        self.tick += 1
        waiters, self._waiters = self._waiters, None
        if waiters is not None and not waiters.done():
            waiters.set_result(None)
        return point

    async def next_sample(self) -> None:
        """Wait for the next :meth:`sample` (shared by every waiter)."""
        if self._waiters is None:
            self._waiters = asyncio.get_running_loop().create_future()
        await asyncio.shield(self._waiters)

    async def run(self, then: Callable[[Point], None]) -> None:
        """Sample at every wall-clock second, for as long as the node runs,
        and hand each new point to ``then``."""
        while True:
            now = self._clock()
            await asyncio.sleep(1.0 - (now % 1.0) + 0.005)
            point = self.sample()
            try:
                then(point)
            except Exception:  # the page's own figures go on whatever ``then`` does
                log.exception("the dashboard could not hand on this second's figures")
