"""uvicorn's httptools protocol, answering the direct routes itself.

A request to a direct route (tidings/api/direct.py: publish and batch) is
handled here instead of going through ASGI: no scope, request cycle, event
or middleware objects; the handler gets the headers and the body and its
answer leaves in one socket write.  Every other request, and everything
about the connection (keep-alive and its timeout, pipelining, flow control,
WebSocket upgrades, graceful shutdown, malformed requests) stays uvicorn's.

A direct request goes the ASGI way instead when it cannot be answered
straight away in order: another request of the same connection is still
being answered (pipelining), or the server was configured with a root path
or a concurrency limit.  The Starlette route of the same handler answers it,
with the same bytes.
"""

from __future__ import annotations

import logging
from typing import Any

from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from tidings import logs
from tidings.api import direct
from tidings.errors import PayloadTooLarge, TidingsError

log = logging.getLogger("tidings")

_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_JSON = b"content-type: application/json\r\ncontent-length: "


class _NoEvent:
    """uvicorn sets the cycle's ``message_event`` when the connection is
    lost; a direct request has nobody waiting on one."""

    @staticmethod
    def set() -> None:
        pass


class _Direct:
    """A direct request in progress, standing where uvicorn keeps its cycle
    (``response_complete``, ``keep_alive`` and ``disconnected`` are read and
    written by uvicorn's connection handling)."""

    __slots__ = ("route", "service", "call", "body", "limit", "version", "keep_alive",
                 "response_complete", "disconnected", "started")
    message_event = _NoEvent()

    def __init__(self, route: direct.DirectRoute, service: Any,
                 headers: list[tuple[bytes, bytes]], limit: int, version: str):
        self.route, self.service = route, service
        self.version = version
        self.keep_alive = version != "1.0"
        self.call = direct.Call(headers)
        self.body = bytearray()
        self.limit = limit
        self.response_complete = self.disconnected = self.started = False


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
        self._idle_since: float | None = None

    # -- parsing: the ASGI scope only for requests that go the ASGI way ----------------
    def on_message_begin(self) -> None:
        self.url = b""
        self.expect_100_continue = False
        self.headers = []

    def _asgi_headers_complete(self) -> None:
        url, headers, expect = self.url, self.headers, self.expect_100_continue
        super().on_message_begin()  # uvicorn's scope, as it builds it
        self.url, self.expect_100_continue = url, expect
        self.headers = self.scope["headers"] = headers
        super().on_headers_complete()

    def on_headers_complete(self) -> None:
        found = self.direct.get((self.parser.get_method(), self.url)) if self.direct else None
        cycle = self.cycle
        if (found is None or self.parser.should_upgrade() or self.pipeline
                or (cycle is not None and not cycle.response_complete)):
            self._asgi_headers_complete()
            return
        route, service = found
        req = _Direct(route, service, self.headers, route.body_limit(service.settings),
                      self.parser.get_http_version())
        req.keep_alive = req.keep_alive and self.parser.should_keep_alive()
        self.cycle = req  # type: ignore[assignment]  # uvicorn's code reads the same fields
        length = req.call.header(b"content-length")
        if length is not None and length.isdigit() and int(length) > req.limit:
            self._start(req, too_large=True)  # answered now, the body is skipped
        elif self.expect_100_continue:
            self.transport.write(_CONTINUE)

    def on_body(self, body: bytes) -> None:
        req: Any = self.cycle
        if type(req) is not _Direct:
            super().on_body(body)
            return
        if req.started:
            return
        req.body += body
        if len(req.body) > req.limit:
            self._start(req, too_large=True)

    def on_message_complete(self) -> None:
        req: Any = self.cycle
        if type(req) is not _Direct:
            super().on_message_complete()
        elif not req.started:
            self._start(req)

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

    def connection_lost(self, exc: Exception | None) -> None:
        if self.timeout_keep_alive_task is not None:
            self.timeout_keep_alive_task.cancel()
            self.timeout_keep_alive_task = None
        super().connection_lost(exc)

    # -- direct requests ----------------------------------------------------------------
    def _start(self, req: _Direct, too_large: bool = False) -> None:
        req.started = True
        if too_large:
            req.body = bytearray()
            req.call._error = PayloadTooLarge(f"request body over {req.limit} bytes")
        else:
            req.call._body = bytes(req.body)
        task = self.loop.create_task(self._run(req))
        task.add_done_callback(self.tasks.discard)
        self.tasks.add(task)

    async def _run(self, req: _Direct) -> None:
        call = req.call
        rid = logs.request_id(call.header(b"x-request-id"))
        extra = [(b"x-request-id", rid.encode())]
        token = logs.bind(rid, call.state)  # this task's context: its log lines name it
        try:
            status, body = await req.route.handler(req.service, req.call)
        except TidingsError as exc:
            status, body, more = direct.error_answer(exc)
            extra += more
            req.service.hub.metrics.error(req.call.app, exc.code, exc.status,
                                          f"{req.route.method} {req.route.path}")
        except Exception:
            log.exception("unexpected error on %s %s", req.route.method, req.route.path)
            req.service.hub.metrics.error(req.call.app, "internal", 500,
                                          f"{req.route.method} {req.route.path}")
            status, body = 500, direct.INTERNAL
        except BaseException:  # cancelled at shutdown: nothing more is said
            req.response_complete = True
            self.transport.close()
            raise
        self._answer(req, status, body, extra)
        logs.unbind(token)

    def _answer(self, req: _Direct, status: int, body: bytes, extra: list) -> None:
        req.response_complete = True
        transport = self.transport
        if req.disconnected or transport.is_closing():
            return
        head = [STATUS_LINE[status], _encoded_defaults(self.server_state.default_headers),
                _JSON, b"%d\r\n" % len(body)]
        for name, value in extra:
            head.append(b"%s: %s\r\n" % (name, value))
        if not req.keep_alive:
            head.append(b"connection: close\r\n")
        head.append(b"\r\n")
        head.append(body)
        transport.write(b"".join(head))
        if self.access_log:  # uvicorn's line, with its arguments (tidings/logs.py reads them)
            client = f"{self.client[0]}:{self.client[1]}" if self.client else "-"
            self.access_logger.info('%s - "%s %s HTTP/%s" %d', client, req.route.method,
                                    req.route.path, req.version, status)
        if not req.keep_alive:
            transport.close()
        self.on_response_complete()
