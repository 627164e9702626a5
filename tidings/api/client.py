"""Client API: what end-user devices call with a user token (docs/design.md §4)."""

from __future__ import annotations

import time
from datetime import datetime

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
from tidings.core.models import SNOOZE_MAX_AHEAD, SnoozeRequest, StateRequest, UnsnoozeRequest
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


def _ids_capped(request: Request, ids: list[str]) -> None:
    cap = request.app.state.service.settings.limits.ids_max
    if not ids:
        raise Invalid('"ids" names no entry', field="ids")
    if len(ids) > cap:
        raise Invalid(f"at most {cap} ids per call", field="ids")


def _snooze_until(until: datetime, now: float) -> float:
    """``until`` as a Unix time: with a zone, in the future, at most
    SNOOZE_MAX_AHEAD ahead (docs/inbox.md#snooze)."""
    if until.tzinfo is None:
        raise Invalid("until needs a time zone (e.g. 2025-01-01T09:00:00+01:00)",
                      field="until")
    try:
        at = until.timestamp()
    except (OverflowError, ValueError, OSError):
        raise Invalid("until is out of range", field="until") from None
    if at <= now:
        raise Invalid("until must be in the future", field="until")
    if at > now + SNOOZE_MAX_AHEAD:
        raise Invalid(f"until is at most {SNOOZE_MAX_AHEAD // 86400} days ahead", field="until")
    return at


async def snooze(request: Request):
    """Out of the inbox and the counts until ``until`` (docs/inbox.md#snooze)."""
    app, user = await user_auth(request)
    req = await body_of(request, SnoozeRequest)
    _ids_capped(request, req.ids)
    until = _snooze_until(req.until, time.time())
    return JSON(await request.app.state.service.snooze(app, user, req.ids, until))


async def unsnooze(request: Request):
    """Snoozed entries back now, first in the inbox and unread."""
    app, user = await user_auth(request)
    req = await body_of(request, UnsnoozeRequest)
    _ids_capped(request, req.ids)
    return JSON(await request.app.state.service.unsnooze(app, user, req.ids))


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
    Route("/v1/me/notifications/snooze", snooze, methods=["POST"]),
    Route("/v1/me/notifications/unsnooze", unsnooze, methods=["POST"]),
    Route("/v1/me/receipts", post_receipts, methods=["POST"]),
    Route("/v1/me/preferences", get_my_preferences, methods=["GET"]),
    Route("/v1/me/preferences", put_my_preferences, methods=["PUT"]),
    Route("/v1/me/preferences", patch_my_preferences, methods=["PATCH"]),
]
