"""The other nodes' figures, for the dashboard's cluster view.

Once a second, right after its recorder's sample, every node publishes that
second on the broker's ``~stats`` channel (``NodeStats``): per app that did
something or held streams, the second's publishes, deliveries, errors, open
streams and new latency observations -- the recorder's ``Point``, which it
computes anyway, without its topics.  Every fifth second the message also
carries each app's totals since the node started and its stream gauges
(connections by transport, queued events, the deepest queue), which take a
walk over the node's streams: at that pace it costs what a metrics scrape
does.  Nothing of it is on the publish or delivery path; a node sends one
message a second and receives one from every other node.

Each node keeps what the others sent (``Remote``: their points of the last
five minutes, their last counters) and the dashboard's views sum it with its
own (tidings/dashboard/views.py).  A node that stops sending has no point
in the seconds after; its counters and gauges leave the sum once nothing
came from it for the heartbeat's time to live (``expiry``), and it is
forgotten once its points are older than the history.

The in-process broker has no other node: nothing is sent.  The broker is at
most once: a lost message leaves that node's second out of the sum.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field

from tidings.api.metrics import stream_gauges
from tidings.broker.base import STATS_CHANNEL, Message, NodeStats
from tidings.core.stats import LATENCY_BUCKETS
from tidings.dashboard.recorder import HISTORY_SECONDS, AppPoint, Point

_BUCKETS = len(LATENCY_BUCKETS) + 1  # the last one is +Inf
COUNTERS_EVERY = 5  # seconds between two messages with the counters and gauges
# an app's figures in NodeStats.counters and in node_counters()
COUNTERS = ("published", "delivered", "replayed", "slow_consumers", "errors", "scheduled",
            "ws", "sse", "queued", "deepest")


def in_scope(scope: str, app: str) -> bool:
    # "*" includes app "": errors before a key or token named an app
    return scope == "*" or app == scope


def node_counters(hub, scope: str) -> dict[str, tuple[int, ...]]:
    """This node's ``COUNTERS`` per app of ``scope``: the totals since it
    started, and the gauges of one walk over the scope's open streams."""
    stats = hub.metrics.apps
    gauges = stream_gauges(hub.apps if scope == "*" else
                           {scope: hub.apps[scope]} if scope in hub.apps else {})
    out = {}
    for app in stats.keys() | gauges.keys():
        if not in_scope(scope, app):
            continue
        st = stats.get(app)
        g = gauges.get(app)
        kinds = g["kinds"] if g else {}
        totals = (st.published, st.delivered, st.replayed, st.slow_consumers,
                  sum(st.errors.values()), st.scheduled) if st else (0,) * 6
        out[app] = (*totals, kinds.get("ws", 0), kinds.get("sse", 0),
                    g["queued"] if g else 0, g["deepest"] if g else 0)
    return out


@dataclass(slots=True)
class Remote:
    """What one other node sent: its points, its last counters, and when."""

    points: deque[Point]
    counters: dict[str, tuple[int, ...]] = field(default_factory=dict)
    seen: float = 0.0  # monotonic time of its last message


class Cluster:
    def __init__(self, service, node: str, *, expiry: float, history: int = HISTORY_SECONDS,
                 monotonic=time.monotonic):
        self.service = service
        self.node = node
        self.expiry = expiry
        self.history = history
        self.remotes: dict[str, Remote] = {}
        self._monotonic = monotonic
        self._sent = 0

    def open(self) -> None:
        """Listen to the other nodes (after the broker opened)."""
        self.service.broker.subscribe(STATS_CHANNEL, self.on_message)

    def send(self, point: Point) -> None:
        """Publish this node's last second (the recorder's newest point)."""
        broker = self.service.broker
        if not broker.shared:  # no other node hears it
            return
        apps = {app: (p.published, p.delivered, p.errors, p.connections, p.latency)
                for app, p in point.apps.items()}
        counters = node_counters(self.service.hub, "*") \
            if self._sent % COUNTERS_EVERY == 0 else {}
        self._sent += 1
        broker.publish(STATS_CHANNEL, NodeStats(self.node, point.t, point.dt, apps, counters))

    def on_message(self, channel: str, message: Message) -> None:
        if not isinstance(message, NodeStats) or message.node == self.node:
            return  # this node's own figures come from its recorder
        now = self._monotonic()
        for name in [n for n, r in self.remotes.items() if now - r.seen > self.history]:
            del self.remotes[name]  # gone for longer than the charts go back
        remote = self.remotes.get(message.node)
        if remote is None:
            remote = self.remotes[message.node] = Remote(deque(maxlen=self.history))
        remote.seen = now
        remote.points.append(Point(message.t, message.dt, {
            app: AppPoint(published, delivered, errors,
                          # a release with other buckets: its latency is left out
                          latency if latency is not None and len(latency) == _BUCKETS
                          else None, connections)
            for app, (published, delivered, errors, connections, latency)
            in message.apps.items()}))
        if message.counters:
            remote.counters = message.counters

    def alive(self) -> list[Remote]:
        """The other nodes heard from within ``expiry``."""
        now = self._monotonic()
        return [r for r in self.remotes.values() if now - r.seen <= self.expiry]
