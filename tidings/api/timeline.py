"""``GET /v1/notifications/{id}/timeline?user=U``: one user's journey with one notification.

Server API (an API key with ``read``), as ``GET /v1/notifications/{id}``:
an id this app did not publish is "no such notification".  The events come
from the store (``Store.timeline``: accepted, committed, each device's
receipt of each kind, when the entry became seen, read, archived, and the outbound
attempt log) and from the user's jobs still in the queue, oldest first.
docs/delivery.md#timeline says what each event means and how long it is kept.
"""

from __future__ import annotations

import logging

from starlette.requests import Request
from starlette.routing import Route

from tidings.api.common import JSON, Query, server_auth, takes
from tidings.api.outbound import _iso
from tidings.api.server import _nid
from tidings.core.models import USER_RE, valid_user
from tidings.errors import NotFound
from tidings.store.base import UserTimeline
from tidings.store.outbound import JobRecord

log = logging.getLogger("tidings.api.timeline")


USER_SCHEMA = {"type": "string", "minLength": 1, "maxLength": 128, "pattern": USER_RE}
USER = Query("user", "Whose journey", USER_SCHEMA, required=True, check=valid_user,
             message="user id must be 1-128 printable characters")


def events(tl: UserTimeline, jobs: list[JobRecord]) -> list[dict]:
    """The timeline as a list of events: ``accepted`` first, then the rest
    oldest first (a stable sort: at one instant, the order of the journey).
    ``accepted`` is the server's clock and ``committed`` may be the
    database's: a skew between them must not put the commit first."""
    out: list[tuple[float, dict]] = []
    if tl.committed is not None:
        out.append((tl.committed, {"event": "committed"}))
    for kind in ("delivered", "displayed"):
        devices = [d for d in tl.devices if d.kind == kind]
        for d in devices:
            out.append((d.at, {"event": kind, "device": d.device, "label": d.label}))
        # a receipt from before devices were kept (SQLite v8, PostgreSQL v9)
        if kind in tl.receipts and (not devices or tl.receipts[kind] < devices[0].at):
            out.append((tl.receipts[kind], {"event": kind, "device": None, "label": None}))
    for name, at in (("seen", tl.seen_at), ("read", tl.read_at), ("archived", tl.archived_at)):
        if at is not None:
            out.append((at, {"event": name}))
    for a in tl.attempts:
        out.append((a.at, {"event": "attempt", "channel": a.channel, "job": a.job_id,
                           "attempt": a.attempt, "result": a.result, "error": a.error,
                           "next_retry": _iso(a.next_at)}))
    for job in jobs:
        if job.status == "queued":  # waiting for its first attempt, or its next one
            out.append((job.created_at, {"event": "queued", "channel": job.channel,
                                         "job": job.id, "next_attempt": _iso(job.not_before),
                                         "attempts": job.attempts}))
    out.sort(key=lambda pair: pair[0])
    return [{"at": _iso(at), **event} for at, event in [(tl.accepted, {"event": "accepted"}),
                                                         *out]]


async def user_timeline(service, app: str, nid: str, user: str) -> dict:
    """The timeline document of ``user`` for ``app``'s notification ``nid``
    (this route's answer, and the dashboard's notification page's)."""
    store = service.store
    try:
        await service.flush_tracking()  # this node's receipts so far
    except Exception:
        log.warning("receipts could not be written; showing the stored ones")
    tl = await store.timeline(app, nid, user)
    if tl is None:
        sched = await store.get_scheduled(app, nid)
        if sched is None or sched.status not in ("pending", "expired", "failed"):
            raise NotFound("no such notification", field="id")
        # not published (yet): it was accepted, and that is all so far
        status = "scheduled" if sched.status == "pending" else sched.status
        return {"notification": nid, "user": user, "status": status, "recipient": None,
                "events": [{"at": _iso(sched.created_at), "event": "accepted"}]}
    jobs = [j for j in await store.list_jobs(app, nid=nid, limit=1000) if j.user == user]
    return {"notification": nid, "user": user, "status": "published",
            "recipient": tl.recipient, "events": events(tl, jobs)}


@takes(USER)
async def notification_timeline(request: Request):
    app = await server_auth(request, "read")
    nid, user = _nid(request), USER.get(request)
    return JSON(await user_timeline(request.app.state.service, app, nid, user))


routes = [
    Route("/v1/notifications/{id}/timeline", notification_timeline, methods=["GET"]),
]
