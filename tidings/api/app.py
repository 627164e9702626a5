"""Assemble the ASGI application: routes, errors, lifespan."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import signal
import threading
import time
from collections.abc import Callable

import msgspec
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.routing import Match, Route, WebSocketRoute

from tidings import logs, tracing
from tidings.api import (
    apidocs,
    audit,
    categories,
    client,
    keys,
    nodes,
    ops,
    outbound,
    server,
    timeline,
    unsubscribe,
)
from tidings.api.common import JSON, error_response
from tidings.api.cors import CORS
from tidings.api.utf8 import Utf8Urls
from tidings.config import Settings, from_env
from tidings.dashboard import Dashboard
from tidings.dashboard import browser_routes as dashboard_browser_routes
from tidings.dashboard import routes as dashboard_routes
from tidings.errors import CLOSE_SHUTDOWN, TidingsError
from tidings.gateway.transports import SSEEndpoint, WebSocketEndpoint
from tidings.service import Service

log = logging.getLogger("tidings")

_HTTP_CODES = {404: "not_found", 405: "method_not_allowed", 400: "bad_request"}
# What browsers ask for on their own (icons, app manifests, well-known URLs):
# a 404 there is nobody's mistake, so it is not counted as an error.
_BROWSER_OWN = re.compile(r"^/(apple-touch-icon[\w.-]*\.png|\.well-known/.*|manifest\.json"
                          r"|site\.webmanifest|browserconfig\.xml)$")


def _count_error(request: Request, code: str, status: int) -> None:
    """Errors by code and app, for /metrics and the dashboard's recent errors
    (the app is known once the request's key or token was checked)."""
    request.app.state.service.hub.metrics.error(
        getattr(request.state, "app", None), code, status,
        f"{request.method} {request.url.path}")


async def _tidings_error(request: Request, exc: TidingsError):
    _count_error(request, exc.code, exc.status)
    return error_response(exc)


async def _http_error(request: Request, exc: HTTPException):
    code = _HTTP_CODES.get(exc.status_code, "error")
    if not (exc.status_code == 404 and _BROWSER_OWN.match(request.url.path)):
        _count_error(request, code, exc.status_code)
    message = "no such endpoint" if exc.status_code == 404 else str(exc.detail)
    headers = getattr(exc, "headers", None)
    if exc.status_code == 405:
        headers = {**(headers or {}), "Allow": _allowed(request)}
    return JSON({"error": {"code": code, "message": message}}, status_code=exc.status_code,
                headers=headers)


def _allowed(request: Request) -> str:
    """Every method of the path (RFC 9110 §15.5.6).  Each method of a path
    is a route of its own, and Starlette's 405 names only the first one's."""
    methods: set[str] = set()
    for route in request.app.router.routes:
        if isinstance(route, Route) and route.methods:
            match, _ = route.matches(request.scope)
            if match is not Match.NONE:
                methods |= route.methods
    return ", ".join(sorted(methods))


async def _unexpected(request: Request, exc: Exception):
    # Every input error is a TidingsError; reaching here is a bug.  Log it,
    # answer without internals.
    log.exception("unexpected error on %s %s", request.method, request.url.path)
    _count_error(request, "internal", 500)
    return JSON({"error": {"code": "internal", "message": "internal error"}}, status_code=500)


async def _retention(service: Service) -> None:
    """Drop inbox entries older than the retention period, now and then.

    Pruning raises each stream's floor, so a cursor older than retention is
    answered ``recovered: false`` instead of a partial replay."""
    settings = service.settings
    while True:
        try:
            await service.prune(time.time() - settings.retention_days * 86400)
        except Exception:
            log.exception("retention sweep failed; retrying at the next interval")
        await asyncio.sleep(settings.prune_interval)


TRACKING_INTERVAL = 1.0  # seconds between writes of the delivery counters


async def _tracking(service: Service) -> None:
    """Write the delivery counters the gateway and the channels gathered
    (tidings/core/tracking.py): one store write a second, not one per delivery."""
    while True:
        await asyncio.sleep(TRACKING_INTERVAL)
        try:
            await service.flush_tracking()
        except Exception:
            log.warning("delivery counters not written; kept for the next try", exc_info=True)


def _drain_on_signals(app: Starlette, service: Service) -> Callable[[], None]:
    """Start draining the moment SIGTERM arrives, before the server stops;
    drain without stopping on SIGUSR1, and take streams again on SIGUSR2.

    uvicorn handles SIGTERM by closing its listeners, then every connection,
    then running the lifespan shutdown.  Draining first turns readiness red
    (a load balancer stops sending new clients here) and ends every stream,
    SSE included, with the "shutdown: reconnect elsewhere" close code, so
    devices move to another node and resume from their cursors at once.

    SIGUSR1 and SIGUSR2 are ``POST /v1/node/drain`` (its default spread) and
    ``/v1/node/undrain`` for a whole ``tidings serve --workers N``: an HTTP
    request reaches one worker, a signal to the supervisor reaches each
    (tidings/workers.py passes them on).
    Returns a function that restores the previous handlers."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None  # signals only reach the main thread (tests run servers in-loop)
    loop = asyncio.get_running_loop()

    def shutdown() -> None:
        app.state.draining = True
        service.hub.drain()

    def drain() -> None:
        service.hub.shedding.drain()

    def undrain() -> None:
        if not app.state.draining:  # a SIGTERM drain is not undone
            service.hub.shedding.undrain()

    actions: dict[int, Callable[[], None]] = {
        signal.SIGTERM: shutdown, signal.SIGUSR1: drain, signal.SIGUSR2: undrain}
    previous = {sig: signal.getsignal(sig) for sig in actions}

    def on_signal(sig, frame) -> None:
        # A signal handler interrupts the loop between bytecodes: only schedule.
        loop.call_soon_threadsafe(actions[sig])
        stop = previous[sig]
        if sig == signal.SIGTERM and callable(stop):
            stop(sig, frame)  # uvicorn's: stop the server

    for sig in actions:
        signal.signal(sig, on_signal)

    def restore() -> None:
        for sig, handler in previous.items():
            signal.signal(sig, handler)

    return restore


OUTBOUND_GRACE = 5.0  # seconds outbound sends in flight may finish at shutdown
HEARTBEAT_INTERVAL = 5.0  # seconds
# a node missing for 3 intervals drops off the list, and out of the dashboard's sums
HEARTBEAT_TTL = 3 * HEARTBEAT_INTERVAL


def node_name(settings: Settings) -> str:
    """This node's name in the cluster: ``Settings.node``, else host:port:pid."""
    return settings.node or f"{settings.host}:{settings.port}:{os.getpid()}"


async def _heartbeat(service: Service, dashboard: Dashboard, node: str) -> None:
    """Tell the cluster this node is alive, with what the dashboard's list of
    nodes shows (broker.heartbeat / broker.nodes)."""
    settings = service.settings
    started = time.time()
    while True:
        info = {"address": f"{settings.host}:{settings.port}", "pid": os.getpid(),
                "started_at": started, "connections": service.hub.connections,
                **dashboard.rates()}
        try:
            await service.broker.heartbeat(node, info, ttl=HEARTBEAT_TTL)
        except Exception as exc:  # the broker is down: the next beat retries
            log.warning("node heartbeat failed: %s", exc)
        await asyncio.sleep(HEARTBEAT_INTERVAL)


async def _lease(service: Service, node: str, address: str) -> None:
    """Renew this node's lease on the store (taken in ``Service.open``) every
    third of its life, so that `tidings secrets` refuses to reseal under it
    and a killed node's lease expires by itself."""
    ttl = service.settings.node_lease
    while True:
        await asyncio.sleep(ttl / 3)
        try:
            await service.store.lease(node, address, os.getpid(), ttl)
        except Exception as exc:  # the store is away: the next renewal retries
            log.warning("node lease renewal failed: %s", exc)


def build_service(settings: Settings) -> Service:
    return Service.from_settings(settings)


def create_app(settings: Settings | None = None, service: Service | None = None) -> Starlette:
    settings = settings or Settings()
    service = service or build_service(settings)
    node = node_name(settings)
    logs.NODE["name"] = node
    tracing.configure(node)  # only when OTEL_EXPORTER_OTLP_ENDPOINT is set
    dashboard = Dashboard(service, node, expiry=HEARTBEAT_TTL)
    address = f"{settings.host}:{settings.port}"

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette):
        await service.open(lease=(node, address))
        await dashboard.open()
        loop = asyncio.get_running_loop()
        sweeper = loop.create_task(_retention(service))
        recorder = loop.create_task(dashboard.run())
        heartbeat = loop.create_task(_heartbeat(service, dashboard, node))
        lease = loop.create_task(_lease(service, node, address))
        scheduler = loop.create_task(service.scheduler.run())  # deliver_at
        tracking = loop.create_task(_tracking(service))
        apps = loop.create_task(service.apps.sweep())  # rotated secrets (service/apps.py)
        revoked = loop.create_task(service.revocations.run())  # users' tokens revoked
        used = loop.create_task(service.keys.run())  # API keys' last use, once a minute
        restore_signals = _drain_on_signals(app, service)
        await service.outbound.start()  # the delivery worker: webhooks, push, e-mail
        outbox = None
        if settings.outbox is not None:  # the transactional outbox (docs/outbox.md)
            from tidings.outbox.consumer import OutboxConsumer

            outbox = OutboxConsumer(service, settings.outbox_url, batch=settings.outbox_batch,
                                    poll_interval=settings.outbox_poll)
            await outbox.start()
        try:
            yield
        finally:
            restore_signals()
            sweeper.cancel()
            recorder.cancel()
            heartbeat.cancel()
            lease.cancel()
            scheduler.cancel()
            tracking.cancel()
            apps.cancel()
            revoked.cancel()
            used.cancel()
            if outbox is not None:
                await outbox.stop()
            app.state.draining = True
            service.hub.close_all(CLOSE_SHUTDOWN)
            # Sends in flight get a moment; the rest go back to the queue.
            await service.outbound.stop(grace=OUTBOUND_GRACE)
            try:
                await service.flush_tracking()  # what the last seconds counted
            except Exception:
                log.warning("delivery counters lost at shutdown", exc_info=True)
            try:
                await service.keys.write_used()  # what the last minute noted
            except Exception:
                log.warning("API keys' last use lost at shutdown", exc_info=True)
            try:
                await service.store.release(node)
            except Exception:  # it expires by itself
                log.warning("node lease not released at shutdown", exc_info=True)
            await service.close()
            tracing.shutdown()  # export the last spans

    routes = [
        *server.routes,
        *client.routes,
        *outbound.routes,
        *unsubscribe.routes,
        *timeline.routes,
        *keys.routes,
        *categories.routes,
        *audit.routes,
        WebSocketRoute("/v1/me/stream", WebSocketEndpoint(service)),
        Route("/v1/me/events", SSEEndpoint(service), methods=["GET"]),
        *ops.routes,
        *nodes.routes,
        *apidocs.routes,
        *dashboard_routes,
        *dashboard_browser_routes,
    ]
    app = Starlette(
        routes=routes,
        lifespan=lifespan,
        middleware=[
            Middleware(logs.RequestId),  # X-Request-Id in, out and in every log line
            # pages on other origins: the client API, SSE, token minting (api/cors.py)
            Middleware(CORS, allowed_origins=settings.allowed_origins),
            # a path or query whose escapes are not UTF-8: 422 (api/utf8.py)
            Middleware(Utf8Urls),
        ],
        # Starlette types every handler as taking Exception, though it calls
        # each with the class it is registered for.
        exception_handlers={
            TidingsError: _tidings_error,  # type: ignore[dict-item]
            HTTPException: _http_error,  # type: ignore[dict-item]
            Exception: _unexpected,
        },
    )
    app.state.service = service
    # tidings/api/uvicorn_http.py serves them
    app.state.direct_routes = [*server.direct_routes, *client.direct_routes]
    app.state.draining = False
    app.state.metrics_registry = None
    app.state.dashboard = dashboard
    app.state.node = node
    return app


SETTINGS_ENV = "TIDINGS_SETTINGS"


def app_from_env() -> Starlette:
    """The app of one worker process of ``tidings serve --workers N``.

    The supervisor passes the full settings as JSON in ``TIDINGS_SETTINGS``
    (worker processes are spawned, not forked, so they share nothing else)."""
    raw = os.environ.get(SETTINGS_ENV)
    settings = msgspec.json.decode(raw, type=Settings) if raw else from_env()
    if settings.node:
        # every worker is a node of its own: keep their names apart
        settings.node = f"{settings.node}/{os.getpid()}"
    return create_app(settings)
