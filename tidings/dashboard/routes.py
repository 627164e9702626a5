"""``/dashboard``: the live operations page, its login and its data.

Access needs an admin-scoped API key, either on every request
(``Authorization: Bearer``, for tools and for a proxy that adds it) or once,
pasted into the login form, which answers with a signed session cookie
(``HttpOnly``, ``SameSite=Strict``, 12 hours; tidings.dashboard.session).
Nothing is shown anonymously.  A session, and an event stream opened with
a key, end when the key is revoked (tidings/service/keys.py); a session
ends on every node when it is logged out (tidings/service/sessions.py).  Failed
logins are limited per client address and per node, in this node's memory
(tidings/core/logins.py), and per address in the cluster when the broker is
shared (tidings/service/failures.py): over the limit the form answers 429 with
``Retry-After``, and no key is checked.  A key header is the API's: its
failures count in the API's limit (tidings/service/keys.py), a 429 in JSON.

Scope: admin keys of ``Settings.operator_app`` (the app ``tidings serve``
creates on first start) see the whole service; an admin key of any other app
sees that app only (docs/design.md §2.7: no request sees another app's data).

Login and logout are refused from another origin (``cross_origin``, 403,
the login form again saying why): a page elsewhere can post a form here, and
a ``SameSite=Strict`` cookie does not stop it setting one, nor a page on a
sibling port or subdomain (the same *site*) sending one (:func:`cross_origin`).

Logins, refused logins and logouts are recorded in the audit log
(docs/security.md#audit-log): a login and a logout in the key's app's, a
refused login in the operator app's.

Routes::

    GET  /dashboard                 the page (a session or a key), else -> login
    GET  /dashboard/login           the login form
    POST /dashboard/login           key=<admin key>  -> cookie, 303 /dashboard
    POST /dashboard/logout          end the session on every node, drop the cookie
    GET  /dashboard/api/snapshot    now: rates, latency, connections, top-N, errors, nodes
    GET  /dashboard/api/history     the last five minutes, per second (the charts)
    GET  /dashboard/events          SSE: a snapshot every second
    GET  /dashboard/static/{name}   scripts, styles, uPlot
    GET  /dashboard/notification    one notification and a user's timeline
                                    (tidings.dashboard.notification)
    GET  /dashboard/audit           the app's audit log (tidings.dashboard.audit)

The data routes take ``?view=cluster`` (the default: the sums of every node
of the cluster) or ``?view=node`` (this node alone), tidings.dashboard.views.
"""

from __future__ import annotations

import html
import math
import time
from dataclasses import dataclass
from urllib.parse import parse_qs, urlsplit

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response, StreamingResponse
from starlette.routing import Route

from tidings.api.common import Query, bearer, client_host, read_body, takes
from tidings.core.audit import Actor, key_actor, session_actor
from tidings.core.auth import split_api_key
from tidings.core.logins import Attempt
from tidings.dashboard import session
from tidings.dashboard.views import VIEWS
from tidings.dashboard.web import page, static_file, static_text
from tidings.errors import BadRequest, Forbidden, RateLimited, TidingsError, Unauthorized

VIEW = Query("view", "cluster (the default): the sums of every node of the cluster; node: "
             "this node's numbers alone", {"type": "string", "enum": list(VIEWS),
                                           "default": VIEWS[0]},
             check=VIEWS.__contains__, message="view must be cluster or node")
COOKIE_PATH = "/dashboard"

_LOGIN_BODY_MAX = 4096
# The dashboard's pages, whose URLs hold no secret, name themselves to their
# own origin: their forms' posts then carry an Origin a browser without
# Sec-Fetch-Site can be checked by (cross_origin).  Other origins still get
# no referrer, and the other pages keep no-referrer (the demo's URL holds a
# token).
SAME_ORIGIN_REFERRER = {"Referrer-Policy": "same-origin"}


@dataclass(frozen=True, slots=True)
class Access:
    app: str
    scope: str  # "*" or the app
    expires: float | None  # a session's end; None with a key header
    prefix: str  # the key's: the access ends when it is revoked
    session: str | None = None  # the session's id: it ends when logged out


def _dashboard(request: Request):
    return request.app.state.dashboard


def _scope(request: Request, app: str) -> str:
    operator = request.app.state.service.settings.operator_app
    return "*" if operator and app == operator else app


async def authorize(request: Request) -> Access:
    """The caller's access: an admin key header, else a valid session cookie."""
    service = request.app.state.service
    key = bearer(request)
    if key is not None:
        record = await service.authenticate_key(key, "admin", client_host(request))
        request.state.app = record.app_id
        return Access(record.app_id, _scope(request, record.app_id), None, record.prefix)
    cookie = request.cookies.get(session.COOKIE)
    if cookie is None:
        raise Unauthorized("log in at /dashboard/login with an admin API key",
                           code="login_required")
    try:
        s = session.verify(_dashboard(request).secret, cookie, time.time())
    except session.BadSession as exc:
        code = "session_expired" if exc.reason == "expired" else "bad_session"
        raise Unauthorized(f"dashboard session is {exc.reason}; log in again",
                           code=code) from None
    request.state.app = s.app
    if await service.sessions.ended(s.id):
        raise Unauthorized("this dashboard session was logged out; log in again",
                           code="session_ended")
    if not await service.keys.alive(s.app, s.prefix):
        raise Unauthorized("the API key this session was opened with was revoked or has "
                           "expired; log in again", code="session_revoked")
    return Access(s.app, _scope(request, s.app), s.expires, s.prefix, s.id)


def _view(request: Request) -> str:
    return VIEW.get(request) or VIEWS[0]


def _cookie_attrs(request: Request) -> dict:
    return {"path": COOKIE_PATH, "httponly": True, "samesite": "strict",
            "secure": request.url.scheme == "https"}


def _to_login(request: Request, reason: str | None = None) -> Response:
    target = "/dashboard/login" + (f"?reason={reason}" if reason else "")
    response = RedirectResponse(target, status_code=303, headers={"Cache-Control": "no-store"})
    if request.cookies.get(session.COOKIE) is not None:
        response.delete_cookie(session.COOKIE, **_cookie_attrs(request))
    return response


# why the page sends to the login form (its ?reason=), by the refusal's code;
# any other code is "expired"
_LOGIN_REASONS: dict[str, str | None] = {"login_required": None, "session_ended": "logout"}


async def dashboard_page(request: Request, name: str = "dashboard.html"):
    if request.headers.get("authorization") is not None:
        await authorize(request)  # a wrong key header is a clear 401/403, not a form
        return page(static_text(name), headers=SAME_ORIGIN_REFERRER)
    try:
        await authorize(request)
    except Unauthorized as exc:
        return _to_login(request, _LOGIN_REASONS.get(exc.code, "expired"))
    return page(static_text(name), headers=SAME_ORIGIN_REFERRER)


_REASONS = {
    "expired": "Your session ended. Log in again.",
    "logout": "Logged out.",
}


def _login_form(message: str = "", status: int = 200, headers: dict | None = None) -> Response:
    note = f'<p class="note" role="alert">{html.escape(message)}</p>' if message else ""
    return page(static_text("login.html").replace("<!--message-->", note), status,
                {**SAME_ORIGIN_REFERRER, **(headers or {})})


def _too_many(attempt: Attempt) -> RateLimited:
    seconds = max(1, math.ceil(attempt.wait))
    where = "from your address" if attempt.limit == "address" else "on this server"
    return RateLimited(f"Too many failed logins {where}. Try again in {seconds} second"
                       f"{'s' if seconds > 1 else ''}.", retry_after=seconds)


def _login_refused(request: Request, exc: TidingsError) -> Response:
    """The form again, saying why (a 429 with its ``Retry-After``)."""
    request.app.state.service.hub.metrics.error(None, exc.code, exc.status,
                                                f"POST {request.scope['path']}")
    retry = getattr(exc, "retry_after", None)
    headers = {"Retry-After": str(max(1, math.ceil(retry)))} if retry is not None else None
    return _login_form(exc.message, exc.status, headers)


_DEFAULT_PORTS = {"http": "80", "https": "443"}


def _same_origin(url: str, host: str) -> bool:
    """Whether ``url`` (an ``Origin`` or a ``Referer``) names the host and
    port the request was sent to (its ``Host``).  The scheme is not compared:
    behind a proxy that ends TLS, the request may have come over either."""
    try:
        parts = urlsplit(url)
        netloc = parts.netloc.lower()
    except ValueError:  # "http://[::1", and the like
        return False
    if parts.scheme not in _DEFAULT_PORTS or not netloc or "@" in netloc or not host:
        return False
    default = ":" + _DEFAULT_PORTS[parts.scheme]
    host = host.lower()
    return netloc.removesuffix(default) == host.removesuffix(default)


def cross_origin(request: Request) -> str | None:
    """What says the form was posted from another origin, or None.

    A browser says where a request comes from: ``Sec-Fetch-Site`` (current
    browsers; pages cannot set it) is believed alone, and only ``same-origin``
    or ``none`` (the user's own doing) pass: ``same-site`` is a page on
    another port or subdomain, and the cookie goes with its requests.  Else
    ``Origin`` (``null`` from a sandboxed frame, or from a page whose
    ``Referrer-Policy`` is ``no-referrer``: refused), else ``Referer``, must
    name this host.  A request that carries none of them is not a browser's
    (curl), and passes."""
    headers = request.headers
    site = headers.get("sec-fetch-site")
    if site is not None:
        return None if site.lower() in ("same-origin", "none") else "Sec-Fetch-Site"
    host = headers.get("host", "")
    for name in ("origin", "referer"):
        value = headers.get(name)
        if value is not None:
            return None if _same_origin(value, host) else name.title()
    return None


_WHAT = {"login": "To log in, use this form.",
         "logout": "To log out, use Log out on the dashboard."}


def _refuse_cross_origin(request: Request, what: str) -> Response | None:
    """The login form again, ``403 cross_origin``, for a login or logout
    posted from another origin (:func:`cross_origin`); None for any other."""
    header = cross_origin(request)
    if header is None:
        return None
    return _login_refused(request, Forbidden(
        f"This {what} was sent from another site ({header}), so it was refused and nothing "
        f"changed. {_WHAT[what]}", code="cross_origin"))


async def login_form(request: Request):
    return _login_form(_REASONS.get(request.query_params.get("reason", ""), ""))


async def login(request: Request):
    service = request.app.state.service
    # before the key is read: a page elsewhere neither logs its visitor in
    # nor spends their address's failed logins
    refused = _refuse_cross_origin(request, "login")
    if refused is not None:
        return refused
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype != "application/x-www-form-urlencoded":
        raise BadRequest("send the login form (application/x-www-form-urlencoded)",
                         code="bad_form")
    raw = await read_body(request, _LOGIN_BODY_MAX)
    try:
        form = parse_qs(raw.decode("utf-8"), max_num_fields=5)
    except (UnicodeDecodeError, ValueError):
        raise BadRequest("the login form is malformed", code="bad_form") from None
    key = (form.get("key") or [""])[-1].strip()
    if not key:
        return _login_refused(request, Unauthorized("paste an API key with the admin scope",
                                                    code="login_required"))
    dash = _dashboard(request)
    # The client's address: the socket's peer, or the address a trusted
    # proxy forwarded (uvicorn's proxy headers, docs/operations.md#dashboard).
    attempt = dash.logins.admit(client_host(request))
    if attempt.wait:
        return _login_refused(request, _too_many(attempt))
    try:
        # within the form's own limit (dash.logins), not the API's
        record = await service.authenticate_key(key, "admin", None, limited=False)
    except TidingsError as exc:
        # not the key's fault (the store away), or the right key, expired:
        # no guess, so no failed login
        if exc.status not in (401, 403) or exc.code == "key_expired":
            dash.logins.refund(attempt)
        else:
            await dash.logins.failed(attempt)
        if exc.status in (401, 403):
            await _login_failed(request, key, exc.code)
        return _login_refused(request, exc)
    dash.logins.succeeded(attempt)
    await service.audit.record(record.app_id, key_actor(record.prefix, record.name,
                                                        client_host(request)),
                               "dashboard.login", record.prefix)
    value = session.issue(dash.secret, record.app_id, record.prefix, time.time())
    response = RedirectResponse("/dashboard", status_code=303,
                                headers={"Cache-Control": "no-store"})
    response.set_cookie(session.COOKIE, value, max_age=session.SESSION_TTL,
                        **_cookie_attrs(request))
    return response


async def _login_failed(request: Request, key: str, code: str) -> None:
    """A refused login, in the operator app's audit log (a key that names
    no key has no app of its own): the prefix the pasted text claims, never
    the text, and why it was refused."""
    service = request.app.state.service
    operator = service.settings.operator_app
    if operator:
        await service.audit.record(operator, Actor("login form", client_host(request)),
                                   "dashboard.login_failed", split_api_key(key), reason=code)


async def logout(request: Request):
    """End the session on every node, then drop the cookie.  Cross-site, the
    browser sends no cookie (``SameSite=Strict``), but from a page on the same
    site (another port or subdomain) it does: refused from another origin."""
    refused = _refuse_cross_origin(request, "logout")
    if refused is not None:
        return refused
    cookie = request.cookies.get(session.COOKIE)
    now = time.time()
    try:
        s = session.verify(_dashboard(request).secret, cookie, now) if cookie else None
    except session.BadSession:
        s = None  # forged, malformed or expired: nothing to end
    if s is not None:
        # a store that cannot record it is a 503, and the cookie stays: a
        # session that still works is not answered "logged out"
        service = request.app.state.service
        await service.sessions.end(s.id, s.expires, now, audit=service.audit.entry(
            s.app, session_actor(s.prefix, client_host(request)), "dashboard.logout", s.prefix))
    return _to_login(request, "logout")


@takes(VIEW)
async def api_snapshot(request: Request):
    access = await authorize(request)
    body = await _dashboard(request).views.snapshot(access.scope, _view(request))
    return Response(body, media_type="application/json", headers={"Cache-Control": "no-store"})


@takes(VIEW)
async def api_history(request: Request):
    access = await authorize(request)
    body = await _dashboard(request).views.history(access.scope, _view(request))
    return Response(body, media_type="application/json", headers={"Cache-Control": "no-store"})


async def events(request: Request):
    """A snapshot now, then one after every recorder tick (once a second).

    The stream ends when its session does (expired or logged out), or its
    key is revoked (the page then goes back to the login form), and when
    the node drains;
    EventSource reconnects after ``retry`` to whichever node is up."""
    access = await authorize(request)
    view = _view(request)
    dash = _dashboard(request)
    state = request.app.state
    keys, sessions = state.service.keys, state.service.sessions

    async def stream():
        yield b"retry: 2000\n\n"
        while True:
            body = await dash.views.snapshot(access.scope, view)
            yield b"event: snapshot\ndata: " + body + b"\n\n"
            await dash.recorder.next_sample()
            if state.draining or (access.expires is not None and access.expires <= time.time()):
                return
            try:  # from memory, mostly
                if access.session is not None and await sessions.ended(access.session):
                    return
                if not await keys.alive(access.app, access.prefix):
                    return
            except TidingsError:  # the store is away: the stream goes on meanwhile
                pass

    headers = {"Cache-Control": "no-cache, no-transform", "X-Accel-Buffering": "no"}
    if request.method == "HEAD":  # no stream nobody reads: it would hold the connection
        return Response(media_type="text/event-stream", headers=headers)
    return StreamingResponse(stream(), media_type="text/event-stream", headers=headers)


routes = [
    Route("/dashboard", dashboard_page, methods=["GET"]),
    Route("/dashboard/login", login_form, methods=["GET"]),
    Route("/dashboard/login", login, methods=["POST"]),
    Route("/dashboard/logout", logout, methods=["POST"]),
    Route("/dashboard/api/snapshot", api_snapshot, methods=["GET"]),
    Route("/dashboard/api/history", api_history, methods=["GET"]),
    Route("/dashboard/events", events, methods=["GET"]),
    Route("/dashboard/static/{name}", static_file, methods=["GET"]),
]
