"""The browser side of tidings: the live operations dashboard, the demo inbox,
the dependency-free browser client ``tidings.js`` and the ``<tidings-inbox>``
element built on it.

* ``routes`` -- ``/dashboard`` and its data (tidings.dashboard.routes);
* ``browser_routes`` -- the landing page ``/``, ``/tidings.js``, ``/tidings-inbox.js``,
  ``/demo``, the favicon and ``robots.txt`` (tidings.dashboard.web);
* :class:`Dashboard` -- the per-second recorder, the other nodes' figures
  (tidings.dashboard.cluster) and the cached views, started by the
  application's lifespan.
"""

from __future__ import annotations

from starlette.routing import Route

from tidings.dashboard import audit as _audit
from tidings.dashboard import notification as _notification
from tidings.dashboard import routes as _routes
from tidings.dashboard import web
from tidings.dashboard.cluster import Cluster
from tidings.dashboard.recorder import Recorder
from tidings.dashboard.session import node_label_key, session_secret
from tidings.dashboard.views import Views
from tidings.service.failures import ClusterLimits


class Dashboard:
    def __init__(self, service, node: str, *, expiry: float):
        """``expiry``: seconds after which a silent node leaves the cluster's
        sums (the node heartbeat's time to live)."""
        self.service = service
        self.node = node
        self.recorder = Recorder(service.hub)
        self.cluster = Cluster(service, node, expiry=expiry)
        self.views = Views(service, self.recorder, self.cluster, node,
                           cache=service.settings.cache)
        self.secret = b""
        # failed logins, per client address (in the cluster too) and for the
        # node (routes.login)
        limits = service.settings.limits
        self.logins = ClusterLimits("login", limits.login_failures_per_address,
                                    limits.login_failures_per_node, service.broker)

    async def open(self) -> None:
        """After the service opened: derive the session key from the store's
        pepper, and listen to the other nodes' figures."""
        self.secret = session_secret(await self.service.store.pepper())
        self.views.label_key = node_label_key(self.secret)
        self.cluster.open()

    async def run(self) -> None:
        """The recorder's once-a-second sampling, each second sent to the
        other nodes, for the node's lifetime."""
        await self.recorder.run(self.cluster.send)

    def rates(self, seconds: int = 5) -> dict:
        """Recent publishes and deliveries per second (for the node heartbeat)."""
        points = list(self.recorder.points)[-seconds:]
        span = sum(p.dt for p in points) or 1.0
        published = sum(a.published for p in points for a in p.apps.values())
        delivered = sum(a.delivered for p in points for a in p.apps.values())
        return {"published_per_s": round(published / span, 1),
                "delivered_per_s": round(delivered / span, 1)}


routes = [
    *_routes.routes,
    Route("/dashboard/notification", _notification.notification_page, methods=["GET"]),
    Route("/dashboard/api/notification", _notification.api_notification, methods=["GET"]),
    Route("/dashboard/audit", _audit.audit_page, methods=["GET"]),
    Route("/dashboard/api/audit", _audit.api_audit, methods=["GET"]),
]
browser_routes = [
    Route("/", web.landing, methods=["GET"]),
    Route("/favicon.ico", web.favicon, methods=["GET"]),
    Route("/favicon.svg", web.favicon, methods=["GET"]),
    Route("/robots.txt", web.robots, methods=["GET"]),
    Route("/tidings.js", web.tidings_js, methods=["GET"]),
    Route("/tidings-inbox.js", web.tidings_inbox_js, methods=["GET"]),
    Route("/demo", web.demo, methods=["GET"]),
]

__all__ = ["Dashboard", "routes", "browser_routes"]
