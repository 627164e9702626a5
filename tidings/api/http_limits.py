"""tidings' HTTP protocol with bounds on the request head.

Before a request is complete nobody has been authenticated, so whatever a
connection may cost by then is what anyone may cost: httptools buffers a
header until it ends, however long, and uvicorn waits for a request head
forever.  This protocol bounds the head (request line and headers) in bytes
and in headers, and the time it may take to arrive; idle keep-alive
connections are closed by uvicorn's ``timeout_keep_alive``.  The limits are
``Limits.max_header_bytes``, ``max_headers``, ``header_timeout`` and
``keep_alive_timeout`` (docs/security.md), read from the app's settings.
It extends the protocol that answers the direct routes (uvicorn_http.py).

Answers: ``431 headers_too_large`` (RFC 6585 §5), ``408 request_timeout``
(RFC 9110 §15.5.9) and, for a head the HTTP parser refuses (bytes HTTP
forbids in a header, a content-length that is not a number),
``400 bad_request``: JSON like every other error, then the connection closes.
"""

from __future__ import annotations

import asyncio

import msgspec

from tidings.api.uvicorn_http import TidingsHttpProtocol
from tidings.config import Limits

_REASONS = {400: b"Bad Request", 408: b"Request Timeout", 431: b"Request Header Fields Too Large"}


def _limits(config) -> Limits:
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


class BoundedHttpProtocol(TidingsHttpProtocol):
    def __init__(self, config, *args, **kwargs) -> None:
        super().__init__(config, *args, **kwargs)
        limits = _limits(config)
        self._max_head = limits.max_header_bytes
        self._max_headers = limits.max_headers
        self._head_timeout = limits.header_timeout
        self._in_head = True  # a request head is expected or arriving
        self._head_bytes = 0
        self._head_count = 0
        self._head_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self._start_head_timer()  # a connection that never sends a byte

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_head_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.transport.is_closing():
            return
        # Counted after feeding: a chunk that completes the head and carries
        # part of the body is not held against the head.  httptools holds at
        # most one read beyond the limit before this answers.
        if self._in_head:
            self._head_bytes += len(data)
        if self._head_count > self._max_headers or self._head_bytes > self._max_head:
            self._refuse(431, "headers_too_large",
                         f"the request head is over {self._max_head} bytes or "
                         f"{self._max_headers} headers")

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_head, self._head_bytes, self._head_count = True, 0, 0
        self._start_head_timer()  # from the request's first byte

    def on_header(self, name: bytes, value: bytes) -> None:
        self._head_count += 1
        if self._head_count <= self._max_headers:
            super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._stop_head_timer()
        if self._head_count > self._max_headers:
            return  # data_received answers 431: no request cycle, the app never sees it
        super().on_headers_complete()

    def on_body(self, body: bytes) -> None:
        if self._head_count <= self._max_headers:
            super().on_body(body)

    def on_message_complete(self) -> None:
        if self._head_count <= self._max_headers:
            super().on_message_complete()

    def _start_head_timer(self) -> None:
        self._stop_head_timer()
        self._head_timer = self.loop.call_later(self._head_timeout, self._head_timed_out)

    def _stop_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self.transport.is_closing() or not self._in_head:
            return
        if self._head_bytes:
            self._refuse(408, "request_timeout",
                         f"the request head did not arrive within {self._head_timeout} s")
        else:
            self.transport.close()  # connected and said nothing: nobody to answer

    def send_400_response(self, msg: str) -> None:
        # uvicorn answers a parser error in plain text (msg is its own
        # wording); the API speaks one error vocabulary (docs/security.md#errors)
        self._refuse(400, "bad_request", "invalid HTTP request")

    def _refuse(self, status: int, code: str, message: str) -> None:
        self._stop_head_timer()
        body = msgspec.json.encode({"error": {"code": code, "message": message}})
        self.transport.write(b"".join([
            b"HTTP/1.1 %d %s\r\n" % (status, _REASONS[status]),
            b"content-type: application/json\r\n",
            b"content-length: %d\r\n" % len(body),
            b"connection: close\r\n\r\n", body]))
        self.transport.close()
