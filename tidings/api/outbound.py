"""Outbound channels' HTTP surface: destinations, caps and the dead-letter list.

Server API (API key): an app's webhook endpoints (``admin``; the signing
secret is shown once, when it is made or rotated), users' e-mail addresses
(set by the app's backend), frequency caps, the dead-letter list and a
notification's queued jobs.  Client API (user token): the user's own Web
Push subscriptions.  ``GET /v1/push/vapid-public-key`` needs no credential:
it is the public half of the server's VAPID key, which a page needs before
it can subscribe.

Every registration answer says ``"enabled"``: whether this server sends that
channel at all (push needs a VAPID key, e-mail an SMTP server), so an app
learns at once why nothing arrives.
"""

from __future__ import annotations

import secrets
import time
from datetime import UTC, datetime
from typing import overload

import msgspec
from starlette.requests import Request
from starlette.routing import Route

from tidings.api.common import (
    JSON,
    IntQuery,
    Query,
    actor_of,
    body_of,
    server_auth,
    tagged,
    takes,
    user_auth,
)
from tidings.api.server import _nid, _user
from tidings.channels.egress import check_url
from tidings.core.audit import LISTED, origin
from tidings.core.models import NO_CONTROL_RE
from tidings.core.outbound import (
    SUBSCRIPTION_ID_RE,
    WEBHOOK_ID_RE,
    Caps,
    EmailRequest,
    PushSubscriptionRequest,
    WebhookRequest,
    check_email,
    check_name,
    redact_destination,
    subscription_id,
)
from tidings.errors import Conflict, Invalid, NotFound
from tidings.store.outbound import EmailAddress, JobRecord, PushSubscription, WebhookEndpoint

_JOB_ID_MAX = 80


def _iso(ts: float | None) -> str | None:
    return None if ts is None else datetime.fromtimestamp(ts, UTC).isoformat(
        timespec="milliseconds")


def _job(rec: JobRecord) -> dict:
    return {
        "id": rec.id, "notification": rec.nid, "user": rec.user, "channel": rec.channel,
        "destination": redact_destination(rec.channel, rec.destination), "status": rec.status,
        "not_before": _iso(rec.not_before), "fallback": rec.fallback,
        "attempts": rec.attempts, "last_error": rec.last_error,
        "created_at": _iso(rec.created_at), "updated_at": _iso(rec.updated_at),
        "expires_at": _iso(rec.expires_at),
    }


def _endpoint(ep: WebhookEndpoint, now: float) -> dict:
    out = {"id": ep.id, "url": ep.url, "created_at": _iso(ep.created_at)}
    if ep.previous_secret and (ep.previous_until or 0) > now:
        out["previous_secret_valid_until"] = _iso(ep.previous_until)
    return out


def _wid(request: Request) -> str:
    # A minted id that cannot be one is "no such endpoint" before any store
    # sees it (a NUL would break PostgreSQL's text comparison).
    wid = request.path_params["wid"]
    if not WEBHOOK_ID_RE.match(wid):
        raise NotFound("no such webhook endpoint", field="id")
    return wid


def _new_secret() -> str:
    return "whsec_" + secrets.token_urlsafe(32)  # 256 bits, like the apps' signing secrets


# -- webhook endpoints (admin) ----------------------------------------------------------

async def add_webhook(request: Request):
    app = await server_auth(request, "admin")
    service = request.app.state.service
    req = await body_of(request, WebhookRequest)
    config = service.settings.webhook
    try:
        url = check_url(req.url, config.allow_insecure if config else False)
    except ValueError as exc:
        raise Invalid(str(exc), field="url") from None
    now = time.time()
    endpoint = WebhookEndpoint("wh_" + secrets.token_hex(8), url, _new_secret(), now)
    limit = service.settings.limits.max_webhooks
    audit = service.audit.entry(app, actor_of(request), "webhook.create", endpoint.id,
                                origin=origin(url))
    if not await service.store.add_webhook(app, endpoint, limit, audit=audit):
        raise Conflict(f"an app has at most {limit} webhook endpoints", code="limit_reached")
    service.outbound.forget_webhooks(app)
    return JSON({**_endpoint(endpoint, now), "secret": endpoint.secret,
                 "enabled": service.outbound.enabled("webhook")}, status_code=201)


async def list_webhooks(request: Request):
    app = await server_auth(request, "admin")
    service, now = request.app.state.service, time.time()
    endpoints = await service.store.list_webhooks(app)
    return JSON({"endpoints": [_endpoint(ep, now) for ep in endpoints],
                 "enabled": service.outbound.enabled("webhook")})


async def rotate_webhook(request: Request):
    app = await server_auth(request, "admin")
    service, now = request.app.state.service, time.time()
    overlap = service.settings.outbound.rotation_overlap
    wid = _wid(request)
    ep = await service.store.rotate_webhook(
        app, wid, _new_secret(), now + overlap, audit=service.audit.entry(
            app, actor_of(request), "webhook.rotate_secret", wid, overlap=overlap))
    if ep is None:
        raise NotFound("no such webhook endpoint", field="id")
    service.outbound.forget_webhooks(app)
    return JSON({**_endpoint(ep, now), "secret": ep.secret})


async def delete_webhook(request: Request):
    app = await server_auth(request, "admin")
    service = request.app.state.service
    wid = _wid(request)
    if not await service.store.delete_webhook(
            app, wid, audit=service.audit.entry(app, actor_of(request), "webhook.delete", wid)):
        raise NotFound("no such webhook endpoint", field="id")
    service.outbound.forget_webhooks(app)
    return JSON({"deleted": True})


# -- e-mail addresses (the app's backend) ------------------------------------------------

async def put_email(request: Request):
    app = await server_auth(request, "publish")
    service = request.app.state.service
    user = _user(request)
    req = await body_of(request, EmailRequest)
    try:
        check_email(req.email)
    except ValueError as exc:
        raise Invalid(str(exc), field="email") from None
    try:
        check_name(req.name)
    except ValueError as exc:
        raise Invalid(str(exc), field="name") from None
    await service.store.set_email(app, user, EmailAddress(req.email, req.name))
    return JSON({"user": user, "email": req.email, "name": req.name,
                 "enabled": service.outbound.enabled("email")})


async def get_email(request: Request):
    app = await server_auth(request, "read")
    user = _user(request)
    found = await request.app.state.service.store.get_email(app, user)
    if found is None:
        raise NotFound("no e-mail address for this user", field="user")
    return JSON({"user": user, "email": found.address, "name": found.name})


async def delete_email(request: Request):
    app = await server_auth(request, "publish")
    if not await request.app.state.service.store.set_email(app, _user(request), None):
        raise NotFound("no e-mail address for this user", field="user")
    return JSON({"deleted": True})


# -- Web Push (the user's devices) ------------------------------------------------------

async def vapid_public_key(request: Request):
    key = request.app.state.service.outbound.vapid_public_key
    if key is None:
        raise NotFound("Web Push is not configured on this server", code="not_configured")
    return JSON({"public_key": key})


async def add_push_subscription(request: Request):
    from tidings.channels.webpush import parse_subscription  # pywebpush: only when used

    app, user = await user_auth(request)
    service = request.app.state.service
    req = await body_of(request, PushSubscriptionRequest)
    push = service.settings.push
    info = {"endpoint": req.endpoint, "keys": {"p256dh": req.keys.p256dh, "auth": req.keys.auth}}
    try:
        sub = parse_subscription(info, push.allow_insecure if push else False)
    except ValueError as exc:
        raise Invalid(f"unusable push subscription: {exc}", field="endpoint") from None
    sid = subscription_id(sub["endpoint"])
    await service.store.add_push_subscription(
        app, user, PushSubscription(sid, sub["endpoint"], sub["keys"]["p256dh"],
                                    sub["keys"]["auth"], time.time()),
        keep=service.settings.limits.max_push_subscriptions)
    return JSON({"id": sid, "enabled": service.outbound.enabled("push")}, status_code=201)


async def list_push_subscriptions(request: Request):
    app, user = await user_auth(request)
    subs = await request.app.state.service.store.list_push_subscriptions(app, user)
    return JSON({"subscriptions": [
        {"id": s.id, **redact_destination("push", s.destination()), "created_at": _iso(
            s.created_at)} for s in subs]})


async def delete_push_subscription(request: Request):
    app, user = await user_auth(request)
    store, sid = request.app.state.service.store, request.path_params["sid"]
    if not SUBSCRIPTION_ID_RE.match(sid) or not await store.delete_push_subscription(
            app, user, sid):
        raise NotFound("no such push subscription", field="id")
    return JSON({"deleted": True})


# -- frequency caps ----------------------------------------------------------------------

async def get_caps(request: Request):
    app = await server_auth(request, "read")
    return tagged(request, msgspec.json.encode(await request.app.state.service.limits.caps(app)))


async def put_caps(request: Request):
    app = await server_auth(request, "admin")
    caps = await body_of(request, Caps)
    service = request.app.state.service
    await service.limits.put_caps(app, caps, audit=service.audit.entry(
        app, actor_of(request), "caps.update", None,
        categories=sorted(caps.categories)[:LISTED]))
    return JSON(caps)


# -- the queue and the dead-letter list (admin) ------------------------------------------

def _is_job_id(value: str) -> bool:
    return 0 < len(value) <= _JOB_ID_MAX and value.isprintable()


@overload
def _job_id(value: str, field: str) -> str: ...
@overload
def _job_id(value: str | None, field: str) -> str | None: ...
def _job_id(value: str | None, field: str) -> str | None:
    if value is not None and not _is_job_id(value):
        raise Invalid("not a job id", field=field)
    return value


DEAD_LIMIT = IntQuery("limit", "Page size", 50, 1, 500)
DEAD_BEFORE = Query("before", "The page after this job id (the previous page's next_before)",
                    {"type": "string", "minLength": 1, "maxLength": _JOB_ID_MAX,
                     "pattern": NO_CONTROL_RE},
                    check=_is_job_id, message="not a job id")


@takes(DEAD_LIMIT, DEAD_BEFORE)
async def dead_jobs(request: Request):
    app = await server_auth(request, "admin")
    limit, before = DEAD_LIMIT.get(request), DEAD_BEFORE.get(request)
    jobs = await request.app.state.service.store.list_jobs(app, status="dead", limit=limit,
                                                           before=before)
    return JSON({"jobs": [_job(j) for j in jobs],
                 "next_before": jobs[-1].id if len(jobs) == limit else None})


async def retry_dead_job(request: Request):
    app = await server_auth(request, "admin")
    service = request.app.state.service
    jid = _job_id(request.path_params["jid"], "id")
    if not await service.store.redrive_job(app, jid, time.time(), audit=service.audit.entry(
            app, actor_of(request), "dead_letter.retry", jid)):
        raise NotFound("no such dead job", field="id")
    channel = jid.split(".")[1] if jid.count(".") >= 2 else None
    if channel:
        service.outbound.wake([channel])
    return JSON({"id": jid, "status": "queued"}, status_code=202)


async def notification_jobs(request: Request):
    app = await server_auth(request, "read")
    nid = _nid(request)
    store = request.app.state.service.store
    # as everywhere: an id this app did not publish is "no such notification"
    if (await store.get_notification(app, nid) is None
            and await store.get_scheduled(app, nid) is None):
        raise NotFound("no such notification", field="id")
    jobs = await store.list_jobs(app, nid=nid, limit=1000)
    return JSON({"jobs": [_job(j) for j in jobs]})


routes = [
    Route("/v1/webhooks", add_webhook, methods=["POST"]),
    Route("/v1/webhooks", list_webhooks, methods=["GET"]),
    Route("/v1/webhooks/{wid}/rotate", rotate_webhook, methods=["POST"]),
    Route("/v1/webhooks/{wid}", delete_webhook, methods=["DELETE"]),
    Route("/v1/users/{user:user}/email", put_email, methods=["PUT"]),
    Route("/v1/users/{user:user}/email", get_email, methods=["GET"]),
    Route("/v1/users/{user:user}/email", delete_email, methods=["DELETE"]),
    Route("/v1/push/vapid-public-key", vapid_public_key, methods=["GET"]),
    Route("/v1/me/push-subscriptions", add_push_subscription, methods=["POST"]),
    Route("/v1/me/push-subscriptions", list_push_subscriptions, methods=["GET"]),
    Route("/v1/me/push-subscriptions/{sid}", delete_push_subscription, methods=["DELETE"]),
    Route("/v1/caps", get_caps, methods=["GET"]),
    Route("/v1/caps", put_caps, methods=["PUT"]),
    Route("/v1/outbound/dead", dead_jobs, methods=["GET"]),
    Route("/v1/outbound/dead/{jid}/retry", retry_dead_job, methods=["POST"]),
    Route("/v1/notifications/{id}/outbound", notification_jobs, methods=["GET"]),
]
