"""CORS for what a browser page on another origin calls: the client API, the
SSE stream, the push key, token minting, ``/tidings.js`` and ``/tidings-inbox.js``.

The normal deployment puts the app's frontend on its own origin
(``app.example.com``) and tidings on another (``notify.example.com``).  The
same allowed-origins setting that guards the WebSocket handshake decides here
(docs/security.md#origins-cors-and-the-websocket-check):

* an empty list (the default) lets any origin in, as the WebSocket check does:
  ``Access-Control-Allow-Origin: *``, never with credentials (the Fetch
  standard forbids the pair, and tidings has no cookie for these routes to
  carry: every credential is a bearer token the page holds);
* a list lets in exactly its origins: the request's ``Origin`` is echoed,
  with ``Access-Control-Allow-Credentials: true`` and ``Vary: Origin`` so a
  cache never hands one origin's answer to another.  Any other origin gets no
  CORS headers, so the browser keeps the answer from the page, and its
  preflight is refused with 403.

The server API's other routes (publish, topics, webhooks...) take an API key,
which belongs on a backend, never in a page: they answer no CORS at all.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

import msgspec
from starlette.types import ASGIApp, Message, Receive, Scope, Send

# Paths a page on another origin may call (matched on the raw path).
_PATHS = re.compile(r"^/v1/me(/|$)|^/v1/push/vapid-public-key$|^/v1/users/[^/]+/tokens$"
                    r"|^/tidings\.js$|^/tidings-inbox\.js$")
ALLOW_METHODS = "GET, POST, PUT, PATCH, DELETE"
# What tidings.js and the client API send: the token, JSON bodies, the
# preferences' If-Match and the If-None-Match of a page that asks again for a
# document it has (preferences, categories), and the SSE resume header (an
# EventSource never sets it on the first request, but a fetch-based SSE
# reader may).
ALLOW_HEADERS = ("Authorization, Content-Type, Idempotency-Key, If-Match, If-None-Match, "
                 "Last-Event-ID")
# ETag: the preferences' tag, which a page sends back as If-Match
EXPOSE_HEADERS = "ETag, Retry-After, X-Request-Id"
MAX_AGE = "600"  # seconds a browser may reuse a preflight answer


def applies(path: str) -> bool:
    return _PATHS.match(path) is not None


class CORS:
    """Pure ASGI middleware: it adds headers to the response's start message and
    never buffers a body, so SSE streams pass through untouched."""

    def __init__(self, app: ASGIApp, allowed_origins: Iterable[str] = ()) -> None:
        self.app = app
        self.allowed = frozenset(allowed_origins)

    def headers_for(self, origin: str) -> list[tuple[bytes, bytes]] | None:
        """The CORS headers for a request from ``origin``; None: not allowed."""
        if not self.allowed:
            return [(b"access-control-allow-origin", b"*")]
        if origin not in self.allowed:
            return None
        return [(b"access-control-allow-origin", origin.encode("latin-1")),
                (b"access-control-allow-credentials", b"true"),
                (b"vary", b"Origin")]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not applies(scope["path"]):
            await self.app(scope, receive, send)
            return
        origin = _header(scope, b"origin")
        if origin is None:  # not a cross-origin browser request: nothing to add
            await self.app(scope, receive, send)
            return
        allowed = self.headers_for(origin)
        if scope["method"] == "OPTIONS" and _header(scope, b"access-control-request-method"):
            await self._preflight(allowed, send)
            return
        if allowed is None:
            await self.app(scope, receive, send)
            return
        extra = [*allowed, (b"access-control-expose-headers", EXPOSE_HEADERS.encode())]

        async def send_with_cors(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *extra]
            await send(message)

        await self.app(scope, receive, send_with_cors)

    async def _preflight(self, allowed, send: Send) -> None:
        if allowed is None:
            body = msgspec.json.encode({"error": {
                "code": "origin_not_allowed",
                "message": "this origin is not in the server's allowed origins"}})
            await _respond(send, 403, [(b"content-type", b"application/json")], body)
            return
        headers = [*allowed,
                   (b"access-control-allow-methods", ALLOW_METHODS.encode()),
                   (b"access-control-allow-headers", ALLOW_HEADERS.encode()),
                   (b"access-control-max-age", MAX_AGE.encode())]
        await _respond(send, 204, headers, b"")


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            return value.decode("latin-1")
    return None


async def _respond(send: Send, status: int, headers: list, body: bytes) -> None:
    headers = [*headers, (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
