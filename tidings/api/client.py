"""Client API: what end-user devices call with a user token (docs/design.md §4)."""

from __future__ import annotations

import msgspec
from starlette.requests import Request
from starlette.routing import Route

from tidings.api.common import JSON, LOCALE, bearer_of, body_of, takes, user_auth
from tidings.api.direct import Call, DirectRoute, starlette_route
from tidings.api.server import (
    BEFORE,
    CATEGORY,
    PAGE_LIMIT,
    STATE,
    TAG,
    _group,
    patch_preferences,
    put_preferences,
    read_preferences,
)
from tidings.core.models import StateRequest
from tidings.core.receipts import Receipts
from tidings.errors import Invalid

_encode = msgspec.json.encode


async def _user_of(service, call: Call) -> tuple[str, str]:
    """:func:`user_auth` for a direct route (the user's rate limit included)."""
    app, user = await service.authenticate_token(
        bearer_of(call.header(b"authorization") or ""), call.client)
    call.state["app"] = app
    service.limits.charge_user(app, user)
    return app, user


# The two reads a device makes each time its inbox opens are direct routes
# (tidings/api/direct.py), served without ASGI when no Origin asks for CORS.
@takes(PAGE_LIMIT, BEFORE, STATE, CATEGORY, TAG, LOCALE)
async def my_notifications(service, call: Call) -> tuple[int, bytes]:
    app, user = await _user_of(service, call)
    params, limits = call.params(), service.settings.limits
    # the repeated parameters are parsed only when there are some
    categories = CATEGORY.values(call.param_list("category")) if "category" in params else ()
    tags = TAG.values(call.param_list("tag")) if "tag" in params else ()
    page = await service.inbox(app, user, limit=PAGE_LIMIT.read(params, limits),
                               before=BEFORE.read(params, limits),
                               state=STATE.read(params, limits),
                               categories=categories, tags=tags,
                               locale=LOCALE.read(params, limits))
    return 200, _encode(page)


async def my_counts(service, call: Call) -> tuple[int, bytes]:
    app, user = await _user_of(service, call)
    return 200, _encode(await service.counts(app, user))


@takes(PAGE_LIMIT, BEFORE, LOCALE)
async def my_notification_group(request: Request):
    app, user = await user_auth(request)
    return await _group(request, app, user)


def _state_route(state: str):
    async def set_state(request: Request):
        app, user = await user_auth(request)
        req = await body_of(request, StateRequest)
        if (req.ids is None) == (not req.all):
            raise Invalid('send either "ids" or "all": true', field="ids")
        cap = request.app.state.service.settings.limits.ids_max
        if req.ids is not None and len(req.ids) > cap:
            raise Invalid(f"at most {cap} ids per call", field="ids")
        return JSON(await request.app.state.service.set_state(
            app, user, None if req.all else req.ids, state
        ))

    set_state.__name__ = f"mark_{state}"
    return set_state


async def post_receipts(request: Request):
    """Receipts from a device on SSE, or any device that prefers HTTP
    (tidings.core.receipts): held in memory, written within a second."""
    app, user = await user_auth(request)
    service = request.app.state.service
    receipts = await body_of(request, Receipts)
    cap = service.settings.limits.ids_max
    if len(receipts.delivered) + len(receipts.displayed) > cap:
        raise Invalid(f"at most {cap} ids per call", field="delivered")
    return JSON({"held": service.receive_receipts(app, user, receipts)}, status_code=202)


async def get_my_preferences(request: Request):
    app, user = await user_auth(request)
    return await read_preferences(request, app, user)


async def put_my_preferences(request: Request):
    app, user = await user_auth(request)
    return await put_preferences(request, app, user)


async def patch_my_preferences(request: Request):
    app, user = await user_auth(request)
    return await patch_preferences(request, app, user)


def _any_body(settings) -> int:
    return settings.limits.max_body_bytes  # a GET's body is never read


direct_routes = [
    DirectRoute("GET", "/v1/me/notifications", my_notifications, _any_body, cors=True),
    DirectRoute("GET", "/v1/me/counts", my_counts, _any_body, cors=True),
]

routes = [
    *[starlette_route(route) for route in direct_routes],
    Route("/v1/me/notifications/{id}/group", my_notification_group, methods=["GET"]),
    Route("/v1/me/notifications/read", _state_route("read"), methods=["POST"]),
    Route("/v1/me/notifications/seen", _state_route("seen"), methods=["POST"]),
    Route("/v1/me/notifications/archive", _state_route("archived"), methods=["POST"]),
    Route("/v1/me/receipts", post_receipts, methods=["POST"]),
    Route("/v1/me/preferences", get_my_preferences, methods=["GET"]),
    Route("/v1/me/preferences", put_my_preferences, methods=["PUT"]),
    Route("/v1/me/preferences", patch_my_preferences, methods=["PATCH"]),
]
