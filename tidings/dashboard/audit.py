"""``/dashboard/audit``: the app's audit log, newest first, with its filters.

The page (static/audit.html and .js) reads
``GET /dashboard/api/audit?limit=&before=&action=&since=``, the pages of
``GET /v1/audit`` (tidings/api/audit.py) for the app of the session's key:
the operator's key sees the operator app's log (its nodes' drains, failed
logins, the sealing of secrets), every other app's admin its own.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from tidings.api import audit
from tidings.api.common import JSON, takes
from tidings.dashboard.routes import authorize, dashboard_page


async def audit_page(request: Request) -> Response:
    return await dashboard_page(request, "audit.html")


@takes(audit.LIMIT, audit.BEFORE, audit.ACTION, audit.SINCE)
async def api_audit(request: Request):
    access = await authorize(request)
    body = await audit.page(request.app.state.service, access.app, request.query_params)
    return JSON({"app": access.app, **body}, headers={"Cache-Control": "no-store"})
