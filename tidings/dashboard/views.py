"""What the dashboard shows, computed from the recorder and the hub, and cached.

A *scope* is ``"*"`` (the operator's service-wide view) or one app id (an
app's own admins).  :meth:`Views.snapshot` answers "now": rates of the last
second, latency percentiles, connections and queues, top apps and topics,
recent errors and the nodes of the cluster.  :meth:`Views.history` answers
the last five minutes for the charts.

Both are cached per scope for the current recorder tick (one second): the
first viewer after a tick builds and encodes the document, every other
viewer in that second -- each open dashboard's once-a-second push included --
gets the same bytes.  ``Settings.cache = False`` turns the cache off (every
request builds its own), which ``python -m bench dashboard`` measures.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import msgspec

from tidings.api.metrics import stream_gauges
from tidings.core.stats import quantile
from tidings.dashboard.recorder import Point, Recorder

TOP = 10
RECENT = 20
WINDOW = 60  # seconds behind the per-app error counts (top topics: recorder.TOPIC_WINDOW)
SHORT = 10  # seconds behind the per-app rates and the latency tiles
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


def _in(scope: str, app: str) -> bool:
    # "*" includes app "": errors before a key or token named an app
    return scope == "*" or app == scope


class Views:
    def __init__(self, service, recorder: Recorder, node: str, *, cache: bool = True):
        self.service = service
        self.recorder = recorder
        self.node = node
        self.cache = cache
        self.started_at = time.time()
        self._cached: dict[tuple[str, str], tuple[int, bytes]] = {}
        self.builds = 0  # documents built (not served from the cache); for tests

    # -- the cache ------------------------------------------------------------
    async def snapshot(self, scope: str) -> bytes:
        return await self._cached_doc("snapshot", scope)

    async def history(self, scope: str) -> bytes:
        return await self._cached_doc("history", scope)

    async def _cached_doc(self, kind: str, scope: str) -> bytes:
        key = (kind, scope)
        tick = self.recorder.tick
        if self.cache:
            hit = self._cached.get(key)
            if hit is not None and hit[0] == tick:
                return hit[1]
        if kind == "snapshot":
            doc = await self._build_snapshot(scope)
        else:
            doc = self._build_history(scope)
        raw = _encode(doc)
        self.builds += 1
        if self.cache:
            if len(self._cached) > 1000:  # one entry per app that looks at it
                self._cached.clear()
            self._cached[key] = (tick, raw)
        return raw

    # -- the documents ----------------------------------------------------------
    def _point(self, point: Point, scope: str) -> dict:
        published = delivered = errors = connections = 0
        latency = None
        for app, p in point.apps.items():
            if _in(scope, app):
                published += p.published
                delivered += p.delivered
                errors += p.errors
                connections += p.connections
                latency = _add(latency, p.latency)
        return {"t": round(point.t, 3), "published": round(published / point.dt, 2),
                "delivered": round(delivered / point.dt, 2),
                "errors": round(errors / point.dt, 2), "connections": connections,
                **_quantiles(latency)}

    def _build_history(self, scope: str) -> dict:
        cols: dict[str, list] = {k: [] for k in ("t", "published", "delivered", "errors",
                                                  "connections", "p50", "p95", "p99")}
        for point in self.recorder.points:
            row = self._point(point, scope)
            for k, col in cols.items():
                col.append(row[k])
        return {"scope": scope, "node": self.node, "series": cols}

    async def _build_snapshot(self, scope: str) -> dict:
        service = self.service
        hub = service.hub
        stats = hub.metrics
        points = list(self.recorder.points)
        last = points[-1] if points else None
        short, window = points[-SHORT:], points[-WINDOW:]

        # live gauges: one walk over the open streams of the scope
        gauges = stream_gauges(hub.apps if scope == "*" else
                               {scope: hub.apps[scope]} if scope in hub.apps else {})
        kinds: dict[str, int] = {}
        queued = deepest = 0
        for g in gauges.values():
            for k, n in g["kinds"].items():
                kinds[k] = kinds.get(k, 0) + n
            queued += g["queued"]
            deepest = max(deepest, g["deepest"])

        # per app over the short window
        per_app: dict[str, dict] = {}
        short_s = sum(p.dt for p in short) or 1.0
        for point in short:
            for app, p in point.apps.items():
                if not _in(scope, app):
                    continue
                a = per_app.setdefault(app, {"published": 0, "delivered": 0, "latency": None})
                a["published"] += p.published
                a["delivered"] += p.delivered
                a["latency"] = _add(a["latency"], p.latency)
        window_errors: dict[str, int] = {}
        for point in window:
            for app, p in point.apps.items():
                if p.errors and _in(scope, app):
                    window_errors[app] = window_errors.get(app, 0) + p.errors
        apps = []
        for app in set(per_app) | {a for a in gauges} | set(window_errors):
            a = per_app.get(app, {"published": 0, "delivered": 0, "latency": None})
            record = await service.app(app) if app else None
            apps.append({
                "app": app, "name": record.name if record else app or "(no app)",
                "connections": sum(gauges.get(app, {}).get("kinds", {}).values()),
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
        followed = sorted(((len(s), key) for key, s in hub.topics.items() if _in(scope, key[0])),
                          reverse=True)[:TOP]
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
            row = {"node": name, "self": name == self.node,
                   "age_s": round(now - info.get("started_at", now), 1)}
            if scope == "*":  # other apps' traffic is in these numbers
                row.update({k: info.get(k) for k in (
                    "address", "connections", "published_per_s", "delivered_per_s", "pid")})
            nodes.append(row)

        latency = None
        for point in short:
            for app, p in point.apps.items():
                if _in(scope, app):
                    latency = _add(latency, p.latency)
        totals = {"published": 0, "delivered": 0, "replayed": 0, "slow_consumers": 0,
                  "errors": 0, "scheduled": 0}
        # delivery tracking by channel and field ({"in_app": {"delivered": n, ...}, ...})
        tracking: dict[str, dict[str, int]] = {}
        for app, st in stats.apps.items():
            if _in(scope, app):
                totals["published"] += st.published
                totals["delivered"] += st.delivered
                totals["replayed"] += st.replayed
                totals["slow_consumers"] += st.slow_consumers
                totals["errors"] += sum(st.errors.values())
                totals["scheduled"] += st.scheduled
                for (channel, field), n in st.tracked.items():
                    fields = tracking.setdefault(channel, {})
                    fields[field] = fields.get(field, 0) + n
        return {
            "scope": scope, "node": self.node, "t": round(now, 3),
            "uptime_s": round(now - self.started_at, 1),
            "point": self._point(last, scope) if last is not None else None,
            "latency_10s": _quantiles(latency),
            "connections": {"total": sum(kinds.values()), "ws": kinds.get("ws", 0),
                            "sse": kinds.get("sse", 0)},
            "queues": {"queued": queued, "deepest": deepest},
            "totals": totals,
            "tracking": tracking,
            "apps": apps[:TOP],
            "topics": topics[:TOP],
            "errors": errors,
            "nodes": nodes,
        }

