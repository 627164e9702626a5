"""What the dashboard shows, computed from the recorder, the other nodes'
figures and the hub, and cached.

A *scope* is ``"*"`` (the operator's service-wide view) or one app id (an
app's own admins).  A *view* is ``"cluster"`` (the sums of this node and of
every other node heard from within the heartbeat's time to live,
tidings.dashboard.cluster) or ``"node"`` (this node alone); alone in its
cluster, a node's two views are the same.  :meth:`Views.snapshot` answers
"now": rates of the last second, latency percentiles, connections and
queues, top apps and topics, recent errors and the nodes of the cluster.
An app's own admins see each node by a label (:meth:`Views.label`), not its
name, which by default is its address (``host:port:pid``).
:meth:`Views.history` answers the last five minutes for the charts.

In the cluster view, rates, connections and the top apps are summed over
the nodes; latency percentiles are those of the nodes' merged histograms
(every node ships its new observations per bucket), so a cluster p99 is the
p99 of every delivery in the cluster, not the worst node's.  While another
node is alive the view ends a second before this node's newest one: the
others' figures of that second are still on their way.  Top topics and
recent errors stay this node's.

Both are cached per scope and view for the current recorder tick (one
second): the first viewer after a tick builds and encodes the document, every
other viewer in that second -- each open dashboard's once-a-second push
included -- gets the same bytes.  ``Settings.cache = False`` turns the cache
off (every request builds its own), which ``python -m bench dashboard``
measures.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import time
from typing import Any

import msgspec

from tidings.core.stats import quantile
from tidings.dashboard.cluster import COUNTERS, Cluster, Remote, in_scope, node_counters
from tidings.dashboard.recorder import Point, Recorder

TOP = 10
RECENT = 20
WINDOW = 60  # seconds behind the per-app error counts (top topics: recorder.TOPIC_WINDOW)
SHORT = 10  # seconds behind the per-app rates and the latency tiles
VIEWS = ("cluster", "node")
_TOTALS = COUNTERS[:COUNTERS.index("ws")]  # the counters since start, summed as they are
_WS, _SSE, _QUEUED, _DEEPEST = (COUNTERS.index(k) for k in ("ws", "sse", "queued", "deepest"))
_encode = msgspec.json.encode
log = logging.getLogger("tidings.dashboard")


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 3)


def _add(total: list[int] | None, counts: list[int] | None) -> list[int] | None:
    if counts is None:
        return total
    if total is None:
        return list(counts)
    return [a + b for a, b in zip(total, counts, strict=True)]


def _quantiles(counts: list[int] | None) -> dict:
    return {name: _ms(quantile(counts, q) if counts else None)
            for name, q in (("p50", 0.5), ("p95", 0.95), ("p99", 0.99))}


def _sum_counters(nodes: list[dict[str, tuple[int, ...]]], scope: str) -> dict[str, list[int]]:
    """Per app of ``scope``, the ``COUNTERS`` of ``nodes`` added up (the
    deepest queue: the deepest of them)."""
    out: dict[str, list[int]] = {}
    for counters in nodes:
        for app, row in counters.items():
            if not in_scope(scope, app):
                continue
            acc = out.get(app)
            if acc is None:
                out[app] = list(row)
                continue
            for i, n in enumerate(row):
                acc[i] = max(acc[i], n) if i == _DEEPEST else acc[i] + n
    return out


class Views:
    def __init__(self, service, recorder: Recorder, cluster: Cluster, node: str, *,
                 cache: bool = True):
        self.service = service
        self.recorder = recorder
        self.cluster = cluster
        self.node = node
        self.cache = cache
        self.started_at = time.time()
        # the key of the node labels (Dashboard.open: from the store's pepper,
        # the same on every node of the cluster)
        self.label_key = b""
        self._cached: dict[tuple[str, str, str], tuple[int, bytes]] = {}
        self.builds = 0  # documents built (not served from the cache); for tests

    # -- the cache ------------------------------------------------------------
    async def snapshot(self, scope: str, view: str = "cluster") -> bytes:
        return await self._cached_doc("snapshot", scope, view)

    async def history(self, scope: str, view: str = "cluster") -> bytes:
        return await self._cached_doc("history", scope, view)

    async def _cached_doc(self, kind: str, scope: str, view: str) -> bytes:
        key = (kind, scope, view)
        tick = self.recorder.tick
        if self.cache:
            hit = self._cached.get(key)
            if hit is not None and hit[0] == tick:
                return hit[1]
        remotes = self.cluster.alive() if view == "cluster" else []
        if kind == "snapshot":
            doc = await self._build_snapshot(scope, view, remotes)
        else:
            doc = self._build_history(scope, view, remotes)
        raw = _encode(doc)
        self.builds += 1
        if self.cache:
            if len(self._cached) > 1000:  # one entry per app that looks at it
                self._cached.clear()
            self._cached[key] = (tick, raw)
        return raw

    def label(self, node: str, scope: str) -> str:
        """How ``scope`` sees the node named ``node``: the operator (``"*"``)
        by its name, an app's admins by ``node <8 hex digits>``, a keyed hash
        of the name: the same on every node and every request, not the name,
        which by default carries the node's address (docs/operations.md),
        nor a hash one could undo by trying the addresses and pids."""
        if scope == "*":
            return node
        return "node " + hmac.new(self.label_key, node.encode(), hashlib.sha256).hexdigest()[:8]

    # -- the documents ----------------------------------------------------------
    def _seconds(self, remotes: list[Remote]) -> list[list[Point]]:
        """The points behind the charts and tiles, oldest first: per second,
        this node's, then those of the same second from ``remotes``.  With
        any, this node's newest second is left out (theirs are on the way)."""
        own = list(self.recorder.points)
        if not remotes:
            return [[p] for p in own]
        # a second is named by the wall-clock second its sample was taken in:
        # every node samples just after the turn of each second
        theirs: dict[int, list[Point]] = {}
        for remote in remotes:
            for p in remote.points:
                theirs.setdefault(int(p.t), []).append(p)
        return [[p, *theirs.get(int(p.t), ())] for p in own[:-1]]

    def _point(self, second: list[Point], scope: str) -> dict:
        published = delivered = errors = 0.0
        connections = 0
        latency = None
        for point in second:
            pub = deliv = err = 0
            for app, p in point.apps.items():
                if in_scope(scope, app):
                    pub += p.published
                    deliv += p.delivered
                    err += p.errors
                    connections += p.connections
                    latency = _add(latency, p.latency)
            published += pub / point.dt
            delivered += deliv / point.dt
            errors += err / point.dt
        return {"t": round(second[0].t, 3), "published": round(published, 2),
                "delivered": round(delivered, 2),
                "errors": round(errors, 2), "connections": connections,
                **_quantiles(latency)}

    def _build_history(self, scope: str, view: str, remotes: list[Remote]) -> dict:
        cols: dict[str, list] = {k: [] for k in ("t", "published", "delivered", "errors",
                                                  "connections", "p50", "p95", "p99")}
        for second in self._seconds(remotes):
            row = self._point(second, scope)
            for k, col in cols.items():
                col.append(row[k])
        return {"scope": scope, "node": self.label(self.node, scope), "view": view,
                "summed": 1 + len(remotes), "series": cols}

    async def _build_snapshot(self, scope: str, view: str, remotes: list[Remote]) -> dict:
        service = self.service
        hub = service.hub
        stats = hub.metrics
        seconds = self._seconds(remotes)
        last = seconds[-1] if seconds else None
        short, window = seconds[-SHORT:], seconds[-WINDOW:]

        # totals and live gauges per app (this node's: one walk over the open
        # streams of the scope), with the other nodes' last ones
        counters = _sum_counters([node_counters(hub, scope), *(r.counters for r in remotes)],
                                 scope)

        # per app over the short window
        per_app: dict[str, dict] = {}
        short_s = sum(second[0].dt for second in short) or 1.0
        latency = None
        for second in short:
            for point in second:
                for app, p in point.apps.items():
                    if not in_scope(scope, app):
                        continue
                    a = per_app.setdefault(app, {"published": 0, "delivered": 0,
                                                 "latency": None})
                    a["published"] += p.published
                    a["delivered"] += p.delivered
                    a["latency"] = _add(a["latency"], p.latency)
                    latency = _add(latency, p.latency)
        window_errors: dict[str, int] = {}
        for second in window:
            for point in second:
                for app, p in point.apps.items():
                    if p.errors and in_scope(scope, app):
                        window_errors[app] = window_errors.get(app, 0) + p.errors
        connected = {app: row[_WS] + row[_SSE] for app, row in counters.items()
                     if row[_WS] + row[_SSE]}
        apps = []
        for app in set(per_app) | set(connected) | set(window_errors):
            a = per_app.get(app, {"published": 0, "delivered": 0, "latency": None})
            record = await service.app(app) if app else None
            apps.append({
                "app": app, "name": record.name if record else app or "(no app)",
                "connections": connected.get(app, 0),
                "published_per_s": round(a["published"] / short_s, 2),
                "delivered_per_s": round(a["delivered"] / short_s, 2),
                "p99_ms": _quantiles(a["latency"])["p99"],
                "errors_per_min": window_errors.get(app, 0),
            })
        apps.sort(key=lambda r: (-r["published_per_s"], -r["delivered_per_s"],
                                 -r["connections"], r["app"]))

        # topics: publishes over the last minute, and streams following them
        topic_pubs = self.recorder.topics_window
        if scope != "*":
            topic_pubs = {k: n for k, n in topic_pubs.items() if k[0] == scope}
        followed = sorted(((len(s), key) for key, s in hub.topics.items()
                           if in_scope(scope, key[0])), reverse=True)[:TOP]
        candidates = set(topic_pubs) | {key for _, key in followed}
        topics: list[dict[str, Any]] = [
            {"app": app, "topic": topic, "published_per_min": topic_pubs.get((app, topic), 0),
             "connections": len(hub.topics.get((app, topic), ()))}
            for app, topic in candidates]
        topics.sort(key=lambda r: (-r["published_per_min"], -r["connections"], r["app"],
                                   r["topic"]))

        errors = [{"t": round(t, 3), "app": app, "code": code, "status": status, "where": where}
                  for t, app, code, status, where in reversed(stats.recent_errors)
                  if scope == "*" or app == scope][:RECENT]

        nodes = []
        now = time.time()
        try:
            registry = await service.broker.nodes()
        except Exception as exc:  # the broker is down: the rest of the page still works
            log.warning("dashboard: the node list is unavailable: %s", exc)
            registry = {}
        for name, info in sorted(registry.items()):
            row = {"node": self.label(name, scope), "self": name == self.node,
                   "age_s": round(now - info.get("started_at", now), 1)}
            if scope == "*":  # other apps' traffic is in these numbers
                row.update({k: info.get(k) for k in (
                    "address", "connections", "published_per_s", "delivered_per_s", "pid")})
            nodes.append(row)

        totals = dict.fromkeys(_TOTALS, 0)
        ws = sse = queued = deepest = 0
        for counts in counters.values():
            for i, k in enumerate(_TOTALS):
                totals[k] += counts[i]
            ws += counts[_WS]
            sse += counts[_SSE]
            queued += counts[_QUEUED]
            deepest = max(deepest, counts[_DEEPEST])
        # delivery tracking by channel and field ({"in_app": {"delivered": n, ...}, ...}),
        # this node's
        tracking: dict[str, dict[str, int]] = {}
        for app, st in stats.apps.items():
            if in_scope(scope, app):
                for (channel, field), n in st.tracked.items():
                    fields = tracking.setdefault(channel, {})
                    fields[field] = fields.get(field, 0) + n
        return {
            "scope": scope, "node": self.label(self.node, scope), "view": view,
            "summed": 1 + len(remotes), "t": round(now, 3),
            "uptime_s": round(now - self.started_at, 1),
            "point": self._point(last, scope) if last is not None else None,
            "latency_10s": _quantiles(latency),
            "connections": {"total": ws + sse, "ws": ws, "sse": sse},
            "queues": {"queued": queued, "deepest": deepest},
            "totals": totals,
            "tracking": tracking,
            "apps": apps[:TOP],
            "topics": topics[:TOP],
            "errors": errors,
            "nodes": nodes,
        }

