"""An app's credentials over HTTP: its admin key makes, lists, rotates and
revokes the app's API keys, and rotates the app's signing secret.

Routes (server API, a key with the ``admin`` scope)::

    POST   /v1/keys           {"scopes": ["publish"], "name": "ci",
                               "expires_at": "2030-01-01T00:00:00Z"} (name and
                              expires_at optional) -> 201, the key shown once
    GET    /v1/keys           the app's keys: prefix, scopes, name, created_at,
                              expires_at, last_used_at
    POST   /v1/keys/{prefix}/rotate  {"grace": 86400} (optional) -> 201, a new key
                              with the same scopes and name, shown once; the old
                              one expires after the grace period
    DELETE /v1/keys/{prefix}  204: the key stops working on every node
                              (tidings/service/keys.py says how fast)
    POST   /v1/signing-secret/rotate  {"overlap": 0} (optional) -> 200, the new
                              secret shown once, and until when the previous one
                              is still taken (tidings/service/apps.py)

Only the app's own keys: another app's prefix is a 404, like a prefix that
names nothing, so that a key learns nothing of other apps.  A key may revoke
itself, but not the app's last key with the admin scope (409
``last_admin_key``): the app could not manage its keys any more.
"""

from __future__ import annotations

import time

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from tidings.api.common import JSON, actor_of, decode, read_body, server_auth
from tidings.core.models import KeyRequest, KeyRotateRequest, RotateRequest
from tidings.service.apps import rotated
from tidings.service.keys import describe
from tidings.service.keys import rotated as key_rotated

BODY_MAX = 4096  # a key's request is a few scopes and a name


async def create_key(request: Request):
    app = await server_auth(request, "admin")
    req = decode(await read_body(request, BODY_MAX), KeyRequest)
    key, info = await request.app.state.service.keys.create(
        app, req.scopes, req.name, req.expires_at, actor=actor_of(request))
    return JSON({"api_key": key, **describe(info)}, status_code=201)


async def list_keys(request: Request):
    app = await server_auth(request, "admin")
    keys = await request.app.state.service.keys.list(app)
    return JSON({"keys": [describe(k) for k in keys]})


async def rotate_key(request: Request):
    """The body is optional, as the signing secret's rotation's: without one
    the old key works for ROTATION_GRACE more."""
    app = await server_auth(request, "admin")
    raw = await read_body(request, BODY_MAX)
    req = decode(raw, KeyRotateRequest) if raw.strip() else KeyRotateRequest()
    key, rotation = await request.app.state.service.keys.rotate(
        app, request.path_params["prefix"], req.grace, actor=actor_of(request))
    return JSON(key_rotated(key, rotation), status_code=201)


async def revoke_key(request: Request):
    app = await server_auth(request, "admin")
    await request.app.state.service.keys.revoke(app, request.path_params["prefix"],
                                                actor=actor_of(request))
    return Response(status_code=204)


async def rotate_signing_secret(request: Request):
    """The body is optional, like the webhook rotation's (which has none):
    without one the previous secret is taken for the default overlap."""
    app = await server_auth(request, "admin")
    raw = await read_body(request, BODY_MAX)
    req = decode(raw, RotateRequest) if raw.strip() else RotateRequest()
    service = request.app.state.service
    record = await service.apps.rotate(app, req.overlap, actor=actor_of(request))
    return JSON(rotated(record, time.time()))


routes = [
    Route("/v1/keys", create_key, methods=["POST"]),
    Route("/v1/keys", list_keys, methods=["GET"]),
    Route("/v1/keys/{prefix}", revoke_key, methods=["DELETE"]),
    Route("/v1/keys/{prefix}/rotate", rotate_key, methods=["POST"]),
    Route("/v1/signing-secret/rotate", rotate_signing_secret, methods=["POST"]),
]
