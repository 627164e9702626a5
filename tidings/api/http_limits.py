"""Bounds on the request head, for tidings' HTTP protocol.

Before a request is complete nobody has been authenticated, so whatever a
connection may cost by then is what anyone may cost: httptools buffers a
header until it ends, however long, and uvicorn waits for a request head
forever, and for a body announced by the head too.  ``tidings serve``'s
protocol (uvicorn_http.py) bounds the head (request line and headers) in
bytes and in headers, the time it may take to arrive, and the time the
body may take after it; idle keep-alive connections are closed after
uvicorn's ``timeout_keep_alive``.  The limits are
``Limits.max_header_bytes``, ``max_headers``, ``header_timeout``,
``body_timeout`` and ``keep_alive_timeout`` (docs/security.md), read from
the app's settings.

Answers: ``431 headers_too_large`` (RFC 6585 §5), ``408 request_timeout``
(RFC 9110 §15.5.9) and, for a head the HTTP parser refuses (bytes HTTP
forbids in a header, a content-length that is not a number),
``400 bad_request``: JSON like every other error, then the connection closes.
"""

from __future__ import annotations

import msgspec

from tidings.config import Limits

_REASONS = {400: b"Bad Request", 408: b"Request Timeout", 431: b"Request Header Fields Too Large"}


def limits_of(config) -> Limits:
    """The limits of the tidings app that ``config`` serves (found once per
    server through uvicorn's middleware wrappers), else the defaults."""
    cached = getattr(config, "_tidings_limits", None)
    if cached is None:
        app, cached = getattr(config, "loaded_app", None), Limits()
        for _ in range(10):  # ProxyHeadersMiddleware, MessageLoggerMiddleware, ...
            service = getattr(getattr(app, "state", None), "service", None)
            if service is not None:
                cached = service.settings.limits
                break
            app = getattr(app, "app", None)
        config._tidings_limits = cached
    return cached


def refusal(status: int, code: str, message: str) -> bytes:
    """The whole answer refusing a request head (the connection closes after it)."""
    body = msgspec.json.encode({"error": {"code": code, "message": message}})
    return b"".join([
        b"HTTP/1.1 %d %s\r\n" % (status, _REASONS[status]),
        b"content-type: application/json\r\n",
        b"content-length: %d\r\n" % len(body),
        b"connection: close\r\n\r\n", body])
