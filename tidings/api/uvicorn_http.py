"""uvicorn's httptools protocol, answering the direct routes itself.

A request to a direct route (tidings/api/direct.py: publish, batch, a
device's inbox page and counts) is handled here instead of going through
ASGI: no scope, request cycle, event or middleware objects; the handler gets
the headers, query and body and its answer leaves in one socket write.
Every other request, and everything about the connection (pipelining, flow
control, WebSocket upgrades, graceful shutdown) stays uvicorn's.  The
protocol also bounds the request head and the time its body may take
(tidings/api/http_limits.py) and closes idle keep-alive connections.  A
direct request skips uvicorn's proxy headers middleware too: the client's
address it would have set, which the limit of failed key checks counts by,
is worked out the same way, and only when a key is not in the cache
(``_Direct.client``).

A direct request goes the ASGI way instead when it cannot be answered
straight away in order: another request of the same connection is still
being answered (pipelining), or the server was configured with a root path
or a concurrency limit; so does a browser's cross-origin request (it carries
an ``Origin``) to a route that answers CORS, and a request whose query has
a percent-escape or whose body a coding, which the ASGI way checks.  The
Starlette route of the same handler answers it, with the same bytes.

Every request of a connection runs the parser's callbacks below, so each is
one flat function (no chain of ``super()`` calls), and the connection's
timers are armed once per idle spell or head, not once per request: on the
publish path these callbacks are a fifth of the event loop's time.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import httptools
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from tidings import logs
from tidings.api import direct, http_limits
from tidings.errors import PayloadTooLarge, TidingsError

log = logging.getLogger("tidings")

_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_JSON = b"content-type: application/json\r\ncontent-length: "
_RID = b"\r\nx-request-id: "
_CLOSE = b"connection: close\r\n"


class _NoEvent:
    """uvicorn sets the cycle's ``message_event`` when the connection is
    lost; a direct request has nobody waiting on one."""

    @staticmethod
    def set() -> None:
        pass


class _Direct(direct.Call):
    """A direct request in progress: the handler's :class:`~direct.Call`,
    standing where uvicorn keeps its cycle (``response_complete``,
    ``keep_alive`` and ``disconnected`` are read and written by uvicorn's
    connection handling)."""

    __slots__ = ("route", "service", "buf", "limit", "version", "keep_alive",
                 "response_complete", "disconnected", "started", "task", "origin")
    message_event = _NoEvent()
    task: asyncio.Task  # set by _start, before the task first runs

    def __init__(self, route: direct.DirectRoute, service: Any,
                 headers: list[tuple[bytes, bytes]], limit: int, version: str,
                 keep_alive: bool, origin: tuple[Any, Any]):
        self.headers, self._body, self._error, self.state, self.key, self._index = (
            headers, b"", None, {}, None, None)
        self.query = b""
        self.origin = origin  # the connection's (peer, uvicorn's proxy headers), for client()
        self.route, self.service = route, service
        self.version = version
        self.keep_alive = keep_alive
        self.buf: bytes | bytearray = b""
        self.limit = limit
        self.response_complete = self.disconnected = self.started = False

    def client(self) -> str | None:
        """The peer, or the address it forwarded if it is a trusted proxy:
        what uvicorn's ProxyHeadersMiddleware makes the scope's client on
        the ASGI path, which this request did not take."""
        peer, proxy = self.origin
        host = peer[0] if peer else None
        trusted = None if proxy is None else proxy.trusted_hosts
        if trusted is None or host not in trusted:
            return host
        forwarded = [value for name, value in self.headers if name == b"x-forwarded-for"]
        if not forwarded:
            return host
        found, _ = trusted.get_trusted_client_address(b", ".join(forwarded).decode("latin-1"))
        return found or host  # an empty header names nobody: the peer, as uvicorn does


def _proxy_headers(app: Any) -> ProxyHeadersMiddleware | None:
    """uvicorn's proxy headers middleware around ``app``, if it has one
    (``proxy_headers``, on by default)."""
    seen = 0
    while app is not None and seen < 16:
        if isinstance(app, ProxyHeadersMiddleware):
            return app
        app, seen = getattr(app, "app", None), seen + 1
    return None


_default_headers: tuple[object, bytes] = (None, b"")


def _encoded_defaults(headers: list[tuple[bytes, bytes]]) -> bytes:
    """uvicorn's default headers (date, server) as bytes; uvicorn replaces
    the list once a second, so the encoding is kept until it does."""
    global _default_headers
    if _default_headers[0] is not headers:
        _default_headers = (headers, b"".join(b"%s: %s\r\n" % nv for nv in headers))
    return _default_headers[1]


class TidingsHttpProtocol(HttpToolsProtocol):
    def __init__(self, config, server_state, app_state, _loop=None) -> None:
        super().__init__(config, server_state, app_state, _loop)
        usable = not config.root_path and config.limit_concurrency is None
        self.direct: direct.Table = direct.table(self.app) if usable else {}
        self._proxy = _proxy_headers(self.app) if self.direct else None
        self._origin: tuple[Any, Any] = (None, None)  # the peer and _proxy (connection_made)
        self._idle_since: float | None = None  # answered everything at (keep-alive)
        limits = http_limits.limits_of(config)
        self._max_head = limits.max_header_bytes
        self._max_headers = limits.max_headers
        self._head_timeout = limits.header_timeout
        self._head_since: float | None = None  # a request head expected or arriving since
        self._head_bytes = 0
        self._head_count = 0
        self._head_timer: asyncio.TimerHandle | None = None
        self._body_timeout = limits.body_timeout
        self._body_pending = False  # a head is in, its body not yet (set per request)
        self._body_since: float | None = None  # ...and not after the read the head ended in
        self._body_timer: asyncio.TimerHandle | None = None

    # -- the connection -----------------------------------------------------------------
    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self._origin = (self.client, self._proxy)
        self._head_started()  # a connection that never sends a byte

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_timers()
        super().connection_lost(exc)

    def _stop_timers(self) -> None:
        for timer in (self._head_timer, self._body_timer, self.timeout_keep_alive_task):
            if timer is not None:
                timer.cancel()
        self._head_timer = self._body_timer = self.timeout_keep_alive_task = None

    def data_received(self, data: bytes) -> None:
        self._idle_since = None
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self.logger.warning("Invalid HTTP request received.")
            self.send_400_response("Invalid HTTP request received.")
            return
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
        if self.transport.is_closing():
            return
        # Counted after feeding: a chunk that completes the head and carries
        # part of the body is not held against the head.  httptools holds at
        # most one read beyond the limit before this answers.
        if self._head_since is not None:
            self._head_bytes += len(data)
        if self._head_count > self._max_headers or self._head_bytes > self._max_head:
            self._refuse(431, "headers_too_large",
                         f"the request head is over {self._max_head} bytes or "
                         f"{self._max_headers} headers")
        elif self._body_pending and self._body_since is None:
            self._body_started()  # a body that did not come with its head

    def handle_websocket_upgrade(self) -> None:
        # The connection is the WebSocket protocol's from now on.  A timer
        # still armed here (the head timer, armed at connect) would keep this
        # object -- the parser, the request's headers and scope -- alive until
        # it fires, about 7 KiB per new WebSocket for header_timeout seconds,
        # and the heap does not give that memory back between the idle
        # streams allocated meanwhile.
        self._stop_timers()
        self._head_since = self._idle_since = self._body_since = None
        self._body_pending = False
        # A head that arrived in one read is counted only after parsing (and
        # one with too many headers has no scope): bound it here, by what the
        # WebSocket handshake is given, which uvicorn rebuilds from the scope.
        if (self._head_count > self._max_headers or len(self.url) + sum(
                len(n) + len(v) + 4 for n, v in self.scope["headers"]) > self._max_head):
            self._refuse(431, "headers_too_large",
                         f"the request head is over {self._max_head} bytes or "
                         f"{self._max_headers} headers")
            return
        super().handle_websocket_upgrade()
        # The parser holds this object's bound methods, and this object the
        # parser: a cycle that only the garbage collector would free, and a
        # node taking over a failed node's devices upgrades thousands of
        # connections in a few seconds (at 10,000 connects, young collections
        # of 13-44 ms every 0.45 s and a middle one of 200 ms, bench NOTES).
        # Dropped here, this object goes when data_received returns.
        self.parser = None  # type: ignore[assignment]

    # -- parsing: the ASGI scope only for requests that go the ASGI way ----------------
    def on_message_begin(self) -> None:
        self.url = b""
        self.expect_100_continue = False
        self.headers = []
        self._head_bytes = self._head_count = 0
        self._head_started()  # from the request's first byte

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        # uvicorn's, with the count: names lower case, values without the
        # trailing whitespace llhttp keeps (RFC 9110 §5.5)
        self._head_count += 1
        if self._head_count > self._max_headers:
            return  # data_received answers 431
        name = name.lower()
        value = value.rstrip(b" \t")
        if name == b"expect" and value.lower() == b"100-continue":
            self.expect_100_continue = True
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        self._head_since = None
        # on_message_complete clears it, in the same read for nearly every
        # request; data_received arms the body's timer if it did not
        self._body_pending, self._body_since = True, None
        if self._head_count > self._max_headers:
            return  # data_received answers 431: no request cycle, the app never sees it
        parser = self.parser
        found = None
        if self.direct:
            path, _, query = self.url.partition(b"?")
            found = self.direct.get((parser.get_method(), path))
        cycle = self.cycle
        if (found is None or parser.should_upgrade() or self.pipeline
                or (cycle is not None and not cycle.response_complete)
                or (found[0].cors and any(name == b"origin" for name, _ in self.headers))):
            self._asgi_headers_complete()
            return
        route, service = found
        version = parser.get_http_version()
        req = _Direct(route, service, self.headers, route.body_limit(service.settings),
                      version, version != "1.0" and parser.should_keep_alive(), self._origin)
        length = req.header(b"content-length")
        index = req._index or {}  # the headers by name, made by header(): two lookups
        if b"%" in query or b"content-encoding" in index or index.get(
                b"transfer-encoding", b"chunked") != b"chunked":
            # answered the ASGI way, which checks them: a query's escapes that
            # are not UTF-8 (tidings/api/utf8.py), a body in a coding (read_body)
            self._asgi_headers_complete()
            return
        req.query = query
        self.cycle = req  # type: ignore[assignment]  # uvicorn's code reads the same fields
        if length is not None and length.isdigit() and int(length) > req.limit:
            self._start(req, too_large=True)  # answered now, the body is skipped
        elif self.expect_100_continue:
            self.transport.write(_CONTINUE)

    def _asgi_headers_complete(self) -> None:
        url, headers, expect = self.url, self.headers, self.expect_100_continue
        HttpToolsProtocol.on_message_begin(self)  # uvicorn's scope, as it builds it
        self.url, self.expect_100_continue = url, expect
        self.headers = self.scope["headers"] = headers
        HttpToolsProtocol.on_headers_complete(self)

    def on_body(self, body: bytes) -> None:
        if self._head_count > self._max_headers:
            return
        req: Any = self.cycle
        if type(req) is not _Direct:
            HttpToolsProtocol.on_body(self, body)
            return
        if req.started:
            return
        buf = req.buf
        if not buf:
            req.buf = buf = body  # most bodies come in one piece: no copy
        else:
            if type(buf) is bytes:
                req.buf = buf = bytearray(buf)
            buf += body
        if len(buf) > req.limit:
            self._start(req, too_large=True)

    def on_message_complete(self) -> None:
        self._body_pending, self._body_since = False, None
        if self._head_count > self._max_headers:
            return
        req: Any = self.cycle
        if type(req) is not _Direct:
            HttpToolsProtocol.on_message_complete(self)
        elif not req.started:
            self._start(req)

    # -- the request head's bounds (http_limits.py) ---------------------------------------
    def _head_started(self) -> None:
        # One timer per head that is slow to arrive, not one per request:
        # it stays armed and, when it fires, looks at when the head began.
        self._head_since = self.loop.time()
        if self._head_timer is None:
            self._head_timer = self.loop.call_later(self._head_timeout, self._head_timed_out)

    def _head_timed_out(self) -> None:
        self._head_timer = None
        since = self._head_since
        if since is None or self.transport.is_closing():
            return  # no head is arriving: the next one arms the timer again
        left = since + self._head_timeout - self.loop.time()
        if left > 0:
            self._head_timer = self.loop.call_later(left, self._head_timed_out)
        elif self._head_bytes:
            self._refuse(408, "request_timeout",
                         f"the request head did not arrive within {self._head_timeout} s")
        else:
            self.transport.close()  # connected and said nothing: nobody to answer

    # -- the request body's deadline: body_timeout from the end of the head -------------
    def _body_started(self) -> None:
        # Only for a body that did not arrive with its head; like the head's,
        # the timer stays armed and looks at when the body began when it fires.
        self._body_since = self.loop.time()
        if self._body_timer is None:
            self._body_timer = self.loop.call_later(self._body_timeout, self._body_timed_out)

    def _body_timed_out(self) -> None:
        self._body_timer = None
        since = self._body_since
        if since is None or self.transport.is_closing():
            return  # the body came: the next slow one arms the timer again
        now = self.loop.time()
        cycle: Any = self.cycle
        if self.flow.read_paused or getattr(cycle, "waiting_for_100_continue", False):
            # not read because the request before it, or the app, is not done
            # with what came, or the client waits for the app's 100 Continue:
            # the client is not the one late
            self._body_since = now
            self._body_timer = self.loop.call_later(self._body_timeout, self._body_timed_out)
            return
        left = since + self._body_timeout - now
        if left > 0:
            self._body_timer = self.loop.call_later(left, self._body_timed_out)
            return
        self._body_pending, self._body_since = False, None
        if cycle is not None and (cycle.response_complete or getattr(
                cycle, "response_started", False)):
            self.transport.close()  # answered already (a body over the limit): only close
        else:
            # a direct request is not started; the ASGI way's handler, waiting
            # for the body, is told the client is gone (read_body)
            self._refuse(408, "request_timeout",
                         f"the request body did not arrive within {self._body_timeout} s "
                         "of its head")

    def send_400_response(self, msg: str) -> None:
        # uvicorn answers a parser error in plain text (msg is its own
        # wording); the API speaks one error vocabulary (docs/security.md#errors)
        self._refuse(400, "bad_request", "invalid HTTP request")

    def _refuse(self, status: int, code: str, message: str) -> None:
        self._head_since = None
        self.transport.write(http_limits.refusal(status, code, message))
        self.transport.close()

    # -- keep-alive: one timer per idle spell, not one per request ---------------------
    def _unset_keepalive_if_required(self) -> None:
        # uvicorn cancels its timer on every read and arms a new one after
        # every answer (a TimerHandle per request); here the timer stays
        # and looks at when the connection last went idle when it fires.
        self._idle_since = None

    def on_response_complete(self) -> None:
        self.server_state.total_requests += 1
        if self.transport.is_closing():
            return
        if self.flow.read_paused:
            self.flow.resume_reading()
        if self.pipeline:
            cycle, app = self.pipeline.pop()
            self._start_asgi_task(cycle, app)
            return
        self._idle_since = self.loop.time()
        if self.timeout_keep_alive_task is None:
            self.timeout_keep_alive_task = self.loop.call_later(
                self.timeout_keep_alive, self.timeout_keep_alive_handler)

    def timeout_keep_alive_handler(self) -> None:
        self.timeout_keep_alive_task = None
        since = self._idle_since
        if since is None or self.transport.is_closing():
            return  # busy: the next answer arms the timer again
        left = since + self.timeout_keep_alive - self.loop.time()
        if left > 0:
            self.timeout_keep_alive_task = self.loop.call_later(
                left, self.timeout_keep_alive_handler)
        else:
            self.transport.close()

    # -- direct requests ----------------------------------------------------------------
    def _start(self, req: _Direct, too_large: bool = False) -> None:
        req.started = True
        if too_large:
            req.buf = b""
            req._error = PayloadTooLarge(f"request body over {req.limit} bytes")
        else:
            req._body = req.buf if type(req.buf) is bytes else bytes(req.buf)
        # uvicorn's shutdown waits for these tasks; _run takes its own out
        # (asyncio.current_task is Python code on 3.11, a done callback one
        # more call_soon)
        req.task = task = self.loop.create_task(self._run(req))
        self.tasks.add(task)

    async def _run(self, req: _Direct) -> None:
        try:
            rid = logs.request_id(req.header(b"x-request-id"))
            # this task's context (a copy of the loop's, dropped with the
            # task): its log lines name the request
            logs.bind(rid, req.state)
            try:
                status, body = await req.route.handler(req.service, req)
            except TidingsError as exc:
                status, body, more = direct.error_answer(exc)
                req.service.hub.metrics.error(req.app, exc.code, exc.status,
                                              f"{req.route.method} {req.route.path}")
                self._answer(req, status, body, rid, more)
                return
            except Exception:
                log.exception("unexpected error on %s %s", req.route.method, req.route.path)
                req.service.hub.metrics.error(req.app, "internal", 500,
                                              f"{req.route.method} {req.route.path}")
                status, body = 500, direct.INTERNAL
            except BaseException:  # cancelled at shutdown: nothing more is said
                req.response_complete = True
                self.transport.close()
                raise
            self._answer(req, status, body, rid, ())
        finally:
            self.tasks.discard(req.task)

    def _answer(self, req: _Direct, status: int, body: bytes, rid: str, extra) -> None:
        req.response_complete = True
        transport = self.transport
        if req.disconnected or transport.is_closing():
            return
        head = [STATUS_LINE[status], _encoded_defaults(self.server_state.default_headers),
                _JSON, b"%d" % len(body), _RID, rid.encode(), b"\r\n"]
        for name, value in extra:
            head.append(b"%s: %s\r\n" % (name, value))
        if not req.keep_alive:
            head.append(_CLOSE)
        head.append(b"\r\n")
        head.append(body)
        transport.write(b"".join(head))
        # uvicorn's line, with its arguments (tidings/logs.py reads them); the
        # level first: by default nothing is written, and the line's client
        # string cost every publish
        if self.access_log and self.access_logger.isEnabledFor(logging.INFO):
            client = f"{self.client[0]}:{self.client[1]}" if self.client else "-"
            self.access_logger.info('%s - "%s %s HTTP/%s" %d', client, req.route.method,
                                    req.route.path, req.version, status)
        if not req.keep_alive:
            transport.close()
        self.on_response_complete()
