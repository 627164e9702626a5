"""Operator endpoints of one node: drain it without stopping it, shed streams, its state.

Routes (an admin key of the operator app, ``Settings.operator_app``, as
/metrics and the whole-service dashboard take)::

    GET  /v1/node           this node: name, pid, draining, open streams, the
                            drain or shed running (or the last one)
    POST /v1/node/drain     {"over": 30} (optional) -> 202: readiness turns red,
                            new streams are refused as during the SIGTERM drain,
                            the open ones end with 4001 spread over ``over``
                            seconds; HTTP publishes and reads go on
    POST /v1/node/undrain   -> 200: ready again, streams taken
    POST /v1/node/shed      {"fraction": 0.5, "over": 30} -> 202: that fraction
                            of the open streams ends with 4001, spread over
                            ``over`` seconds; readiness stays green

Each acts on the node (the worker process) the request reaches: send it to
the node's own address, not through the load balancer, which would pick any
node (docs/deploy.md#draining-a-node-without-stopping-it).  Another app's
admin key is a 403: a tenant may not take a node of the cluster out.
"""

from __future__ import annotations

import os

from starlette.requests import Request
from starlette.routing import Route

from tidings.api.common import JSON, actor_of, bearer, client_host, decode, read_body
from tidings.core.models import DrainRequest, ShedRequest
from tidings.errors import Conflict, Forbidden

BODY_MAX = 4096  # {"fraction": ..., "over": ...}


async def _operator(request: Request) -> None:
    """Pass an admin key of the operator app; 401 without a valid key, 403
    for another scope or another app's admin key."""
    service = request.app.state.service
    record = await service.authenticate_key(bearer(request), "admin", client_host(request))
    request.state.app = record.app_id  # errors from here on are counted for this app
    request.state.key = record
    operator = service.settings.operator_app
    if not operator or record.app_id != operator:
        raise Forbidden("only an admin key of the operator app may drain or shed a node",
                        code="not_operator")


async def _record(request: Request, action: str, **details) -> None:
    """In the operator app's audit log, the node as the target."""
    await request.app.state.service.audit.record(
        request.state.app, actor_of(request), action, request.app.state.node, **details)


def _state(request: Request) -> dict:
    state = request.app.state
    hub = state.service.hub
    return {"node": state.node, "pid": os.getpid(), "draining": hub.draining,
            "shutting_down": state.draining, "streams": hub.connections,
            "plan": hub.shedding.state()}


async def node_state(request: Request):
    await _operator(request)
    return JSON(_state(request))


async def drain(request: Request):
    """The body is optional: without one the ends are spread over 30 s."""
    await _operator(request)
    raw = await read_body(request, BODY_MAX)
    req = decode(raw, DrainRequest) if raw.strip() else DrainRequest()
    request.app.state.service.hub.shedding.drain(req.over)
    state = _state(request)  # as the drain starts: its first ends come during the record
    await _record(request, "node.drain", over=req.over)
    return JSON(state, status_code=202)


async def undrain(request: Request):
    await _operator(request)
    if request.app.state.draining:
        raise Conflict("this node is shutting down (SIGTERM): it cannot take streams again",
                       code="shutting_down")
    request.app.state.service.hub.shedding.undrain()
    state = _state(request)
    await _record(request, "node.undrain")
    return JSON(state)


async def shed(request: Request):
    await _operator(request)
    req = decode(await read_body(request, BODY_MAX), ShedRequest)
    request.app.state.service.hub.shedding.shed(req.fraction, req.over)
    state = _state(request)
    await _record(request, "node.shed", fraction=req.fraction, over=req.over)
    return JSON(state, status_code=202)


routes = [
    Route("/v1/node", node_state, methods=["GET"]),
    Route("/v1/node/drain", drain, methods=["POST"]),
    Route("/v1/node/undrain", undrain, methods=["POST"]),
    Route("/v1/node/shed", shed, methods=["POST"]),
]
