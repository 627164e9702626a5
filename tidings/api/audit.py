"""The app's audit log over HTTP (docs/security.md#audit-log).

Route (server API, a key with the ``admin`` scope)::

    GET /v1/audit   ?limit=50&before=<id>&action=key.revoke&since=2030-01-01T00:00:00Z
                    -> {"records": [...], "next_before": id or null}, newest first

Only the app's own records: the key's app is the log's, so another app's key
reads its own log and never this one's.  ``before`` is the previous page's
``next_before``; anything else that is not an id is a 400 ``bad_cursor``.
The dashboard's audit page reads the same pages (``page``).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime

from starlette.requests import Request
from starlette.routing import Route

from tidings.api.common import ID_SCHEMA, JSON, IntQuery, Query, server_auth, takes
from tidings.core.audit import ACTIONS, describe
from tidings.core.ids import is_id
from tidings.errors import BadRequest


class BadCursor(BadRequest):
    code = "bad_cursor"


def _since(raw: str) -> float | None:
    """An ISO 8601 time with a zone in Unix seconds; None when it is not one."""
    try:
        at = datetime.fromisoformat(raw)
        return at.timestamp() if at.tzinfo is not None else None
    except (ValueError, OverflowError, OSError):
        return None


LIMIT = IntQuery("limit", "Page size", 50, 1, 500)
BEFORE = Query("before", "The page after this record (the previous page's next_before)",
               ID_SCHEMA, check=is_id, error=BadCursor,
               message="before is not a cursor of the audit log: send the previous page's "
                       "next_before")
ACTION = Query("action", "Only the records of this action",
               {"type": "string", "enum": list(ACTIONS)}, check=ACTIONS.__contains__,
               message="action must be one of " + ", ".join(ACTIONS))
SINCE = Query("since", "Only the records made at or after this time (ISO 8601 with a zone)",
              {"type": "string", "format": "date-time", "maxLength": 64},
              check=lambda raw: len(raw) <= 64 and _since(raw) is not None,
              message="since must be an ISO 8601 time with a zone, e.g. 2030-01-01T00:00:00Z")


async def page(service, app: str, params: Mapping[str, str]) -> dict:
    """One page of the app's log, as ``GET /v1/audit`` answers it."""
    limit = LIMIT.read(params, service.settings.limits)
    before, action = BEFORE.read(params, None), ACTION.read(params, None)
    since = SINCE.read(params, None)
    records = await service.audit.page(app, limit=limit, before=before, action=action,
                                       since=None if since is None else _since(since))
    return {"records": [describe(r) for r in records],
            "next_before": records[-1].id if len(records) == limit else None}


@takes(LIMIT, BEFORE, ACTION, SINCE)
async def audit_log(request: Request):
    app = await server_auth(request, "admin")
    return JSON(await page(request.app.state.service, app, request.query_params),
                headers={"Cache-Control": "no-store"})


routes = [Route("/v1/audit", audit_log, methods=["GET"])]
