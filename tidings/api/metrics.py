"""``/metrics``: the node's plain counters in Prometheus' text format.

The hot path never calls prometheus-client: it adds to integers of
tidings.core.stats, and :class:`ServiceCollector` turns them into metric
families when Prometheus scrapes.  The gauges that need a walk over the open
streams (connections by transport, queue depths) are computed here, at
scrape time, too.  Every family is labelled by ``app``; errors that happen
before a key or token names an app have ``app=""``.  An app's own admin key
sees its own series only (tidings/api/ops.py).  Topic names never
appear (they are app data, and unbounded).

The outbound queue's families (:class:`OutboundCollector`) are labelled by
``channel`` (webhook, push, email) and the worker's ``outcome``, a fixed set:
they cover every app, so only a scrape that sees every app gets them.
"""

from __future__ import annotations

from collections import Counter

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
)

from tidings.core.stats import LATENCY_BUCKETS
from tidings.service.outbound import OUTBOUND, Outbound, QueueSnapshot

# Worker.counts' outcomes, each exposed from zero so that rate() sees the first one.
OUTCOMES = ("delivered", "retry", "failed", "dead", "expired", "deferred", "muted", "error")


def stream_gauges(apps: dict[str, set]) -> dict[str, dict]:
    """Per app of ``apps`` (the hub's app -> open streams): streams by
    transport, pending events, deepest queue.  A walk over every stream."""
    out: dict[str, dict] = {}
    for app, streams in apps.items():
        # comprehensions and C builtins: ~0.3 us a stream, this runs per scrape
        depths = [len(st.queue.frames) for st in streams]
        out[app] = {"kinds": dict(Counter([st.kind for st in streams])),
                    "queued": sum(depths), "deepest": max(depths, default=0)}
    return out


class ServiceCollector:
    """Reads the service's counters at scrape time."""

    def __init__(self, service, node: str = "", only: str | None = None):
        self.service = service
        self.node = node
        self.only = only  # one app's series, and none of the node-wide ones

    def collect(self):
        hub = self.service.hub
        stats = hub.metrics
        only = self.only
        apps = sorted(((a, st) for a, st in stats.apps.items() if only is None or a == only),
                      key=lambda pair: pair[0])
        streams = hub.apps if only is None else {
            a: s for a, s in hub.apps.items() if a == only}

        info = InfoMetricFamily("tidings_node", "This node")
        info.add_metric([], {"node": self.node})
        yield info

        conns = GaugeMetricFamily("tidings_connections", "Open live streams",
                                  labels=["app", "transport"])
        queued = GaugeMetricFamily("tidings_queued_events",
                                   "Events waiting in the streams' queues", labels=["app"])
        deepest = GaugeMetricFamily("tidings_queue_depth_max",
                                    "Longest pending queue of any stream", labels=["app"])
        for app, g in sorted(stream_gauges(streams).items()):
            for kind, n in sorted(g["kinds"].items()):
                conns.add_metric([app, kind], n)
            queued.add_metric([app], g["queued"])
            deepest.add_metric([app], g["deepest"])
        yield conns
        yield queued
        yield deepest
        if only is None:  # counts every app's streams
            yield CounterMetricFamily("tidings_streams_opened", "Streams opened on this node",
                                      value=stats.opened)

        def counter(name: str, doc: str, attr: str) -> CounterMetricFamily:
            fam = CounterMetricFamily(name, doc, labels=["app"])
            for app, st in apps:
                if app:
                    fam.add_metric([app], getattr(st, attr))
            return fam

        yield counter("tidings_publishes", "Publishes committed", "published")
        yield counter("tidings_publish_duplicates",
                      "Publishes answered from the idempotency window", "duplicates")
        yield counter("tidings_recipients",
                      "Inbox entries written by write fan-out", "recipients")
        yield counter("tidings_deliveries",
                      "Notification events routed live to open streams", "delivered")
        yield counter("tidings_replayed",
                      "Notification events replayed to resuming streams", "replayed")
        yield counter("tidings_slow_consumer_disconnects",
                      "Streams closed because their queue overflowed", "slow_consumers")
        yield counter("tidings_scheduled",
                      "Publishes with a future deliver_at, stored to fire later", "scheduled")

        tracked = CounterMetricFamily(
            "tidings_delivery_tracking",
            "Delivery tracking by channel and field (in_app delivered: users a live stream "
            "reached, once per node; in_app muted: users whose streams skipped a feed item "
            "they muted; seen/read: entries marked; outbound channels: their "
            "queued/sent/delivered/failed)", labels=["app", "channel", "field"])
        for app, st in apps:
            for (channel, field), n in sorted(st.tracked.items()):
                tracked.add_metric([app, channel, field], n)
        yield tracked

        errors = CounterMetricFamily("tidings_errors", "Errors answered, by code",
                                     labels=["app", "code"])
        for app, st in apps:
            for code, n in sorted(st.errors.items()):
                errors.add_metric([app, code], n)
        yield errors

        latency = HistogramMetricFamily(
            "tidings_delivery_latency_seconds",
            "Publish (store commit) to device (frame written), once per broker message",
            labels=["app"])
        for app, st in apps:
            h = st.latency
            if not h.n:
                continue
            cumulative, buckets = 0, []
            for bound, c in zip(LATENCY_BUCKETS, h.counts, strict=False):
                cumulative += c
                buckets.append((repr(bound), cumulative))
            buckets.append(("+Inf", h.n))
            latency.add_metric([app], buckets, sum_value=h.total)
        yield latency



class OutboundCollector:
    """The outbound queue as the store holds it (every node's jobs, read at
    most once per ``stats_ttl``: :meth:`Outbound.queue_stats`) and this node's
    worker lanes (their ``counts`` and sends in flight).  ``snapshot`` None:
    the store did not answer, the queue's gauges are left out and
    ``tidings_outbound_queue_up`` is 0."""

    def __init__(self, outbound: Outbound, snapshot: QueueSnapshot | None):
        self.outbound = outbound
        self.snapshot = snapshot

    def collect(self):
        snap, worker = self.snapshot, self.outbound.worker
        up = GaugeMetricFamily(
            "tidings_outbound_queue_up",
            "1 when the outbound queue's figures below were read from the store, 0 when "
            "the store did not answer (they are left out)")
        up.add_metric([], 1 if snap is not None else 0)
        yield up
        if snap is not None:
            # the configured channels always (zeros included), and any other
            # that still has jobs: a subset of OUTBOUND either way
            channels = sorted(set(self.outbound.channels)
                              | (set(snap.channels) & set(OUTBOUND)))
            queued = GaugeMetricFamily("tidings_outbound_jobs_queued",
                                       "Outbound jobs waiting, due or not (those being sent "
                                       "included)", labels=["channel"])
            due = GaugeMetricFamily("tidings_outbound_jobs_due",
                                    "Queued outbound jobs whose time has come (those being "
                                    "sent included)", labels=["channel"])
            age = GaugeMetricFamily("tidings_outbound_oldest_due_seconds",
                                    "How long the oldest due outbound job has been due "
                                    "(0: none is)", labels=["channel"])
            dead = GaugeMetricFamily("tidings_outbound_dead_letters",
                                     "Outbound jobs on the dead-letter list", labels=["channel"])
            for channel in channels:
                st = snap.channels.get(channel)
                queued.add_metric([channel], st.queued if st else 0)
                due.add_metric([channel], st.due if st else 0)
                oldest = st.oldest_due if st else None
                age.add_metric([channel], max(0.0, snap.at - oldest) if oldest is not None
                               else 0.0)
                dead.add_metric([channel], st.dead if st else 0)
            yield queued
            yield due
            yield age
            yield dead
        if worker is None:  # the worker is off on this node, or no channel is on
            return
        outcomes = CounterMetricFamily(
            "tidings_outbound_lane_outcomes",
            "This node's worker lanes: attempts settled (delivered, retry, failed, dead: "
            "retries used up, expired), jobs handed back unattempted because their host had "
            "its sends (deferred), queue calls that failed (error)",
            labels=["channel", "outcome"])
        inflight = GaugeMetricFamily("tidings_outbound_lane_inflight",
                                     "Sends in flight in this node's lane", labels=["channel"])
        for channel in sorted(worker.lanes):
            for outcome in OUTCOMES:
                outcomes.add_metric([channel, outcome], worker.counts[channel, outcome])
            inflight.add_metric([channel], worker.inflight(channel))
        yield outcomes
        yield inflight
