"""Operator endpoints: health, readiness, Prometheus metrics, OpenAPI (its page: apidocs.py)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from prometheus_client import CollectorRegistry, generate_latest
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from tidings.api.common import JSON, bearer, client_host
from tidings.api.metrics import OutboundCollector, ServiceCollector
from tidings.api.openapi import openapi_document

_PROMETHEUS = "text/plain; version=0.0.4"
# How long readiness waits for the store and the broker.  A database behind
# a silent partition (packets dropped, no reset) never answers, and a probe
# that hangs with it keeps a load balancer from taking the node out: an
# answer that does not come in time is "not ready".
READY_TIMEOUT = 2.0
# How long readiness waits for the broker, which does not gate it (readyz):
# a frozen Redis (stopped, or behind a silent path) never answers, and a
# probe that waited READY_TIMEOUT for it would outlast a load balancer's
# check timeout (HAProxy's is its 500 ms interval here, deploy/haproxy.cfg),
# which would then take every node out at once.  A Redis answers a PING in
# well under a millisecond; one that has not in this long is reported down.
BROKER_READY_TIMEOUT = 0.25


async def _answers(ping: Callable[[], Awaitable[bool]], timeout: float = READY_TIMEOUT) -> bool:
    try:
        return await asyncio.wait_for(ping(), timeout)
    except TimeoutError:
        return False


async def healthz(request: Request):
    return JSON({"status": "ok"})


async def readyz(request: Request):
    service = request.app.state.service
    store_ok, broker_ok = await asyncio.gather(
        _answers(service.store.ping), _answers(service.broker.ping, BROKER_READY_TIMEOUT))
    # The broker does not gate readiness: without it a node still accepts
    # publishes (the store is the source of truth) and serves inboxes, and
    # since every node shares the broker, gating on it would take the whole
    # cluster out of the balancer at once.  Streams catch up when it returns.
    ready = store_ok and not (request.app.state.draining or service.hub.draining)
    body = {"ready": ready, "store": store_ok, "broker": broker_ok}
    return JSON(body, status_code=200 if ready else 503)


async def metrics(request: Request):
    """Prometheus' text format.  An admin key of the operator app (or a
    public /metrics) sees every app; another app's admin key its own series
    only, since app ids and counters are that tenant's business."""
    service = request.app.state.service
    settings = service.settings
    node = getattr(request.app.state, "node", "")
    if not settings.metrics_public:
        record = await service.authenticate_key(bearer(request), "admin",
                                                client_host(request))
        request.state.app = record.app_id
        if record.app_id != settings.operator_app:
            registry = CollectorRegistry()
            registry.register(ServiceCollector(service, node, only=record.app_id))
            return Response(generate_latest(registry), media_type=_PROMETHEUS)
    registry = request.app.state.metrics_registry
    if registry is None:
        registry = request.app.state.metrics_registry = CollectorRegistry()
        registry.register(ServiceCollector(service, node))
    # The queue's figures come from the store (cached, bounded in time): read
    # before the synchronous collectors run.  They cover every app's jobs, so
    # an app's own admin key (above) does not get them.
    queue = CollectorRegistry()
    queue.register(OutboundCollector(service.outbound, await service.outbound.queue_stats()))
    return Response(generate_latest(registry) + generate_latest(queue), media_type=_PROMETHEUS)


async def openapi(request: Request):
    state = request.app.state
    document = getattr(state, "openapi", None)
    if document is None:  # built once, from this app's routes and settings
        document = state.openapi = openapi_document(request.app.router.routes,
                                                    state.service.settings.limits)
    return JSON(document)


routes = [
    Route("/healthz", healthz, methods=["GET"]),
    Route("/readyz", readyz, methods=["GET"]),
    Route("/metrics", metrics, methods=["GET"]),
    Route("/openapi.json", openapi, methods=["GET"]),
]
