"""The API reference at ``/docs``: Swagger UI over ``/openapi.json``, with the
live protocol (events, cursors, close codes) at its top and request examples.

Swagger UI's files come from the ``swagger-ui-bundle-v2`` package, installed
with tidings and served from memory under ``/docs/assets/``: the page makes
no request to any other host (its Content-Security-Policy says so too), so
it works on a machine without internet and leaks nothing about the reader.
"""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from tidings.dashboard.web import PAGE_HEADERS, page, static_text
from tidings.errors import (
    CLOSE_BAD_REQUEST,
    CLOSE_FORBIDDEN,
    CLOSE_PING_TIMEOUT,
    CLOSE_RATE_LIMITED,
    CLOSE_RESYNC,
    CLOSE_SHUTDOWN,
    CLOSE_SLOW_CONSUMER,
    CLOSE_TOKEN_EXPIRED,
    CLOSE_TOO_MANY,
    CLOSE_UNAUTHORIZED,
    NotFound,
)

# Swagger UI renders with inline style attributes; scripts stay our own files.
DOCS_HEADERS = {**PAGE_HEADERS, "Content-Security-Policy": (
    "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; font-src 'self' data:; connect-src 'self'; form-action 'self'; "
    "frame-ancestors 'none'; base-uri 'none'")}
_ASSETS = {"swagger-ui.css": "text/css; charset=utf-8",
           "swagger-ui-bundle.js": "text/javascript; charset=utf-8"}

_CLOSE_CODES = [
    (CLOSE_SLOW_CONSUMER, "reconnect", "the connection fell too far behind (its queue was full)"),
    (CLOSE_SHUTDOWN, "reconnect",
     "the node is shutting down or draining, or shed this stream (another node may take it)"),
    (CLOSE_RESYNC, "reconnect", "the stream could not stay gapless; resume from the cursor"),
    (CLOSE_PING_TIMEOUT, "reconnect", "no pong within the ping timeout"),
    (CLOSE_TOKEN_EXPIRED, "reconnect with a new token",
     "the stream's token expired (send a fresh one on the stream before it does)"),
    (CLOSE_RATE_LIMITED, "reconnect",
     "the user is over the client API's rate limit (at the connect, or at a message sent "
     "on the stream); back off"),
    (CLOSE_BAD_REQUEST, "do not reconnect", "a malformed first message, cursor or query"),
    (CLOSE_UNAUTHORIZED, "do not reconnect with the same token",
     "missing, expired, forged or revoked token (the user's tokens were revoked: "
     "get a new one)"),
    (CLOSE_FORBIDDEN, "do not reconnect", "origin not allowed"),
    (CLOSE_TOO_MANY, "do not reconnect", "too many open streams for this user"),
]

PROTOCOL = """tidings keeps every user's inbox and delivers new notifications live. App backends
call the **server API** with an API key; end-user devices call the **client API** with a user
token (`POST /v1/users/{user}/tokens` mints one). Every error is
`{"error": {"code", "message", "field"}}` with a 4xx status (503 when a backend is down).

## Live protocol

Open `GET /v1/me/stream` (WebSocket; authenticate with an `Authorization` header or a first
message `{"type": "auth", "token": "..."}`) or `GET /v1/me/events?token=...` (Server-Sent
Events). Both carry the same JSON events; a WebSocket frame may hold a JSON array of several.

| event | when | carries |
|---|---|---|
| `hello` | first, on every connect | `epoch`, `cursor`, `counts` (with `at`) |
| `notification` | new (live, replayed), back from a snooze | `cursor`, `notification` |
| `recovered` | after a resume | `ok` (false: reload the inbox page), `missed` |
| `updated` | corrected; a group entry lost a member | `notification` (+ `group`, `state`) |
| `deleted` | a notification was retracted | its `id` |
| `state` | read, seen, archived or snoozed on a device | `ids` or `all`, `state` (+ `until`) |
| `counts` | the unread counts changed | `unread`, `unseen`, `at` (where they were read) |
| `token` | a fresh token sent on the open WebSocket was taken | `until`: when the stream now ends |

**Cursors.** `"<epoch>:<seq>"` (or `"<epoch>:<seq>:<feed>"`): reconnect with `?cursor=` (SSE:
`Last-Event-ID`, which `EventSource` sends by itself) and the server replays exactly what was
missed, then goes live. A changed epoch, or a gap older than retention, is answered with
`recovered` `ok: false`: reload the inbox page instead. Duplicates may cross the wire after a
resume; drop them by notification `id`.

**The badge.** Counts (in `hello`, `counts`, `GET /v1/me/counts`) carry `at`, the user's seq
and the feed offset they were read at: show them plus one for each notification that arrives
past `at`, ignore counts older than yours, and keep counting the notifications past newer ones.

**Close codes.** 4000-4099: reconnect (with jittered backoff) and resume from the cursor.
4400-4499: do not reconnect with the same credentials.

| code | then | why |
|---|---|---|
""" + "".join(f"| {code} | {then} | {why} |\n" for code, then, why in _CLOSE_CODES) + """
The browser client `/tidings.js` does all of this; the full description is the project's
`docs/protocol.md`."""

# Request bodies shown (and pre-filled for "Try it out") on the main operations.
EXAMPLES = {
    ("post", "/v1/notifications"): {
        "to": {"users": ["demo-user"]}, "category": "social", "title": "user_17 replied",
        "body": "Totally agree.", "url": "/posts/42#c7", "priority": "normal"},
    ("post", "/v1/notifications/batch"): {"notifications": [
        {"to": {"users": ["ann"]}, "title": "Your order shipped"},
        {"to": {"topic": "guild:7"}, "title": "The raid starts in 5 minutes"}]},
    ("patch", "/v1/notifications/{id}"): {"title": "user_17 replied (edited)"},
    ("post", "/v1/topics/{topic}/subscribers"): {"users": ["ann", "bo"], "action": "add"},
    ("post", "/v1/users/{user}/tokens"): {"ttl": 3600},
    ("post", "/v1/keys"): {"scopes": ["publish"], "name": "ci"},
    ("post", "/v1/keys/{prefix}/rotate"): {"grace": 86400},
    ("post", "/v1/signing-secret/rotate"): {"overlap": 3600},
    ("post", "/v1/me/notifications/read"): {"ids": ["01JABCDEFGHJKMNPQRSTVWXYZ0"]},
    ("post", "/v1/me/notifications/seen"): {"all": True},
    ("post", "/v1/me/notifications/archive"): {"ids": ["01JABCDEFGHJKMNPQRSTVWXYZ0"]},
    ("post", "/v1/me/notifications/snooze"): {"ids": ["01JABCDEFGHJKMNPQRSTVWXYZ0"],
                                              "until": "2030-01-06T09:00:00+01:00"},
    ("post", "/v1/me/notifications/unsnooze"): {"ids": ["01JABCDEFGHJKMNPQRSTVWXYZ0"]},
    ("put", "/v1/categories"): {"categories": [
        {"id": "social", "label": "Replies and mentions",
         "description": "When someone answers you or mentions you"},
        {"id": "ci", "label": "Builds"}]},
    ("put", "/v1/me/preferences"): {
        "categories": {"marketing": {"push": False, "email": False}},
        "quiet_hours": {"start": "22:00", "end": "07:00", "tz": "Europe/Paris"}},
    ("patch", "/v1/me/preferences"): {
        "categories": {"social": {"email": False}}, "quiet_hours": None},
    ("post", "/v1/node/drain"): {"over": 30},
    ("post", "/v1/node/shed"): {"fraction": 0.5, "over": 60},
}


@functools.cache
def _assets() -> dict[str, tuple[bytes, str, str]]:
    import swagger_ui_bundle

    root = Path(str(swagger_ui_bundle.swagger_ui_path))
    out = {}
    for name, kind in _ASSETS.items():
        data = (root / name).read_bytes()
        out[name] = (data, kind, '"' + hashlib.sha256(data).hexdigest()[:20] + '"')
    return out


async def docs(request: Request):
    """``GET /docs``: the API reference page."""
    return page(static_text("docs.html"), headers=DOCS_HEADERS)


async def asset(request: Request):
    """``GET /docs/assets/{name}``: Swagger UI's script and styles."""
    found = _assets().get(request.path_params["name"])
    if found is None:
        raise NotFound("no such file")
    data, kind, etag = found
    headers = {"ETag": etag, "Cache-Control": "public, max-age=86400",
               "X-Content-Type-Options": "nosniff"}
    if request.headers.get("if-none-match") == etag:
        return Response(status_code=304, headers=headers)
    return Response(data, media_type=kind, headers=headers)


routes = [
    Route("/docs", docs, methods=["GET"]),
    Route("/docs/assets/{name}", asset, methods=["GET"]),
]
