"""A path or query string whose percent-encoded bytes are not UTF-8 is refused.

The server decodes a path's escapes as UTF-8 and Starlette a query string's,
both with replacement: ``jos%E9`` and ``jos%E8`` (Latin-1) would both read
as ``jos\\ufffd``, so two users would share a token, preferences and
subscriptions, ``?tag=caf%E9`` would find another tag's items and
``?user=jos%E9`` show another user's timeline.  Checked here, once, before
any route reads a path or a query parameter (the direct routes send a query
with an escape this way: tidings/api/uvicorn_http.py): ``422 invalid`` naming
the parameter, or ``path``.  U+FFFD itself, sent as UTF-8 (``%EF%BF%BD``), is
a character like any other.

A WebSocket's query (``cursor``, ``locale``) has ASCII grammars, which refuse
U+FFFD already, and its path names no id: it is not checked here.
"""

from __future__ import annotations

from urllib.parse import unquote, unquote_to_bytes

from starlette.types import ASGIApp, Receive, Scope, Send

from tidings.errors import Invalid


def _utf8(escaped: bytes) -> bool:
    try:
        unquote_to_bytes(escaped).decode()
    except UnicodeDecodeError:
        return False
    return True


def refusal(raw_path: bytes, query: bytes) -> Invalid | None:
    """The error for a path or query string with escapes that are not UTF-8."""
    if b"%" in raw_path and not _utf8(raw_path):
        return Invalid("the path's percent-encoded bytes must be UTF-8", field="path")
    if b"%" in query:
        for pair in query.split(b"&"):
            name, _, value = pair.replace(b"+", b" ").partition(b"=")
            if not (_utf8(name) and _utf8(value)):
                field = unquote(name.decode("latin-1"))
                return Invalid(f"?{field}= must be UTF-8, percent-encoded", field=field)
    return None


class Utf8Urls:
    """Pure ASGI middleware: :func:`refusal`, for every HTTP request."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            refused = refusal(scope.get("raw_path") or b"", scope.get("query_string", b""))
            if refused is not None:
                service = scope["app"].state.service
                service.hub.metrics.error(None, refused.code, refused.status,
                                          f"{scope['method']} {scope['path']}")
                await service.send_error(send, refused)
                return
        await self.app(scope, receive, send)
