"""``/dashboard/notification``: find a notification by id and draw one user's timeline.

The page (static/notification.html and .js) asks
``GET /dashboard/api/notification?id=N[&user=U][&app=A]`` for the
notification's delivery statistics (as ``GET /v1/notifications/{id}``), its
first recipients (to pick a user from) and, with ``user``, that user's
timeline (as ``GET /v1/notifications/{id}/timeline``).  Access as the rest of
the dashboard: an app's admin sees its own notifications; the operator's
may name another app with ``app`` (an app it cannot see, or an id that is
none of its notifications, is "no such notification").
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from tidings.api.common import ID_SCHEMA, JSON, Query, takes
from tidings.api.timeline import USER_SCHEMA, user_timeline
from tidings.core.ids import is_id
from tidings.core.models import valid_app_id, valid_user
from tidings.dashboard.routes import authorize, dashboard_page
from tidings.errors import NotFound

RECIPIENTS_SHOWN = 50


async def notification_page(request: Request) -> Response:
    return await dashboard_page(request, "notification.html")


NID = Query("id", "The notification", ID_SCHEMA, required=True, check=is_id,
            message="no such notification", error=NotFound)
USER = Query("user", "Also this user's timeline", USER_SCHEMA, check=valid_user,
             message="user id must be 1-128 printable characters")
# an app the key cannot see is "no such notification", as an id it did not publish
APP = Query("app", "Another app's notification (the operator's key only)",
            {"type": "string", "pattern": r"^[a-z0-9_\-]{0,64}\Z"})


@takes(NID, USER, APP)
async def api_notification(request: Request):
    access = await authorize(request)
    nid = request.query_params.get(NID.name, "").strip()
    user, app = USER.get(request), APP.get(request)
    if app is None or app == "":
        app = access.app
    elif not valid_app_id(app) or (access.scope != "*" and app != access.app):
        raise NotFound("no such notification", field="id")
    NID.parse(nid)
    service = request.app.state.service
    info = await service.get_notification(app, nid)  # 404 for an id this app did not publish
    recipients = await service.store.recipients_of(app, nid)
    return JSON({
        "app": app, **info,
        "recipient_sample": sorted(recipients)[:RECIPIENTS_SHOWN],
        "timeline": None if user is None else await user_timeline(service, app, nid, user),
    }, headers={"Cache-Control": "no-store"})
