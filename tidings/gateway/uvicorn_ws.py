"""uvicorn's websockets-sansio protocol with a raw frame writer for delivery.

ASGI's ``send`` costs an await, a str/bytes round trip and the websockets
library's frame serialisation for every message.  Delivery is the hot path
(docs/design.md §6: coalescing into one raw write per tick cut CPU per
delivery 7x), so this protocol adds one ASGI scope extension,
``tidings.raw_ws``, through which the gateway writes pre-encoded text frames
synchronously, straight to the transport.  Everything else (handshake,
close, keepalive pings, reading) stays uvicorn's, but for the close codes of
a ping timeout (4003) and of a shutdown (4001).

Frames written this way are final, unmasked text frames with no extension
bits (RFC 6455 §5.2); permessage-deflate must be off, which ``tidings serve``
does anyway (it multiplies memory per connection).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from struct import pack

import msgspec
from uvicorn.protocols.utils import ClientDisconnected
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets import http11
from websockets.http11 import Response
from websockets.protocol import Protocol
from websockets.server import ServerProtocol
from websockets.streams import StreamReader

from tidings.api import http_limits
from tidings.config import Limits
from tidings.errors import CLOSE_PING_TIMEOUT, CLOSE_SHUTDOWN

EXTENSION = "tidings.raw_ws"


def text_frame_header(n: int) -> bytes:
    if n < 126:
        return bytes((0x81, n))
    if n < 65536:
        return pack("!BBH", 0x81, 126, n)
    return pack("!BBQ", 0x81, 127, n)


_SCOPE_KEPT = ("type", "path", "raw_path", "root_path", "query_string", "client", "server",
               "scheme")


class _Discard:
    """Stands in for the ASGI receive queue once the app has detached
    (uvicorn still posts the disconnect event there)."""

    def put_nowait(self, item) -> None:
        pass


class _Writable:
    """``asyncio.Event`` semantics for the "transport may be written" flag,
    without the Event's waiter deque (about 0.7 KiB per connection) until
    something actually waits -- only a close sent while the socket is paused."""

    __slots__ = ("_flag", "_event")

    def __init__(self) -> None:
        self._flag = True
        self._event: asyncio.Event | None = None

    def is_set(self) -> bool:
        return self._flag

    def set(self) -> None:
        self._flag = True
        if self._event is not None:
            self._event.set()

    def clear(self) -> None:
        self._flag = False
        if self._event is not None:
            self._event.clear()

    async def wait(self) -> bool:
        if self._flag:
            return True
        if self._event is None:
            self._event = asyncio.Event()
        return await self._event.wait()


def _drop_handshake_parser(conn: ServerProtocol) -> None:
    """websockets' server parser is one generator: it parses the handshake
    request, then delegates to the frame parser with ``yield from`` -- and its
    suspended frame keeps the parsed request (every header, about 2.4 KiB)
    for the connection's life.  When it is parked between frames, swap it for
    the frame parser alone, started the same way: nothing is consumed or lost
    (it waits in ``reader.at_eof()`` for the next byte)."""
    outer = conn.parser
    inner = getattr(outer, "gi_yieldfrom", None)
    waiting = getattr(inner, "gi_yieldfrom", None)
    if (getattr(outer, "gi_code", None) is not ServerProtocol.parse.__code__
            or getattr(inner, "gi_code", None) is not Protocol.parse.__code__
            or getattr(waiting, "gi_code", None) is not StreamReader.at_eof.__code__
            or conn.reader.buffer):
        return  # mid-frame (or another websockets): keep it
    parser = Protocol.parse(conn)
    next(parser)
    conn.parser = parser


def _handshake_bounds(limits: Limits) -> None:
    """websockets parses the handshake again, one header line at most 8 KiB
    and at most 128 headers (module settings, read at each parse).  The HTTP
    protocol has already bounded the whole head by ``limits`` before it hands
    the connection over (uvicorn_http.py), so a request HTTP takes -- a
    browser's large Cookie line -- is not refused only because it opens a
    WebSocket."""
    if http11.MAX_LINE_LENGTH < limits.max_header_bytes:
        http11.MAX_LINE_LENGTH = limits.max_header_bytes
    if http11.MAX_NUM_HEADERS < limits.max_headers:
        http11.MAX_NUM_HEADERS = limits.max_headers


_REFUSALS = {400: "bad_request", 403: "forbidden", 405: "method_not_allowed",
             414: "bad_request", 426: "bad_request", 431: "headers_too_large",
             505: "bad_request"}


class _JSONRefusals(ServerProtocol):
    """websockets' server side, refusing a handshake it cannot complete (no
    key, another version) in the API's JSON error shape instead of plain
    text (docs/security.md#errors), and uvicorn's refusals too (403 for a
    WebSocket to no route, 500).  The class of uvicorn's instance is swapped
    for this one: no field is added to a connection."""

    def reject(self, status, text: str) -> Response:
        response = super().reject(status, text)
        code = _REFUSALS.get(response.status_code, "internal")
        message = "internal error" if code == "internal" else (
            text.split("\n", 1)[0].rstrip(".") or response.reason_phrase)
        body = msgspec.json.encode({"error": {"code": code, "message": message}})
        headers = response.headers
        del headers["Content-Type"], headers["Content-Length"]
        headers["Content-Type"] = "application/json"
        headers["Content-Length"] = str(len(body))
        return Response(response.status_code, response.reason_phrase, headers, body)


# uvicorn's protocol annotates the attributes replaced below with the types
# it creates; the stand-ins only offer what uvicorn calls on them (hence the
# narrow ``type: ignore[assignment]``s).
class TidingsWebSocketProtocol(WebSocketsSansIOProtocol):
    on_writable: Callable[[], None] | None = None
    on_lost: Callable[[], None] | None = None
    on_message: Callable[[bytes | str], None] | None = None  # a client message, once detached
    detached = False

    def __init__(self, *args, **kw) -> None:
        super().__init__(*args, **kw)
        self.writable = _Writable()  # type: ignore[assignment]
        _handshake_bounds(http_limits.limits_of(self.config))
        if type(self.conn) is ServerProtocol:
            self.conn.__class__ = _JSONRefusals

    def detach(self) -> None:
        """The app is done with this connection's ASGI task but not with the
        connection: its stream writes frames through ``write_text`` and hears
        of the end through ``on_lost``.  Letting the task finish frees its
        coroutine frames (Starlette's middleware chain, the endpoint, a
        pending ``receive``) for every idle connection: kilobytes each.
        Messages the client sent and the app did not read yet, and those it
        sends from now on, go to ``on_message`` (the endpoint sets it:
        receipts, fresh tokens), or are dropped."""
        self.detached = True
        waiting, self.queue = self.queue, _Discard()  # type: ignore[assignment]
        # The handshake's parsed request and response headers are kept for the
        # connection's life but read only during the handshake: about 5 KiB
        # per idle connection with the scope's copy of them.
        self.request = self.response = None  # type: ignore[assignment]
        _drop_handshake_parser(self.conn)
        # Of the scope, uvicorn reads only what it logs from now on (the
        # headers, the lifespan state copy, extensions and the asgi dict go).
        scope = self.scope
        self.scope = {k: v for k, v in scope.items() if k in _SCOPE_KEPT}  # type: ignore[assignment]
        # What the client sent while the stream started waited for receive(),
        # which nobody will call now: it goes to ``on_message`` like what
        # follows, in order, as the ASGI path reads it once the stream has
        # started (a fresh token sent right after the auth message is
        # answered on both).
        while not waiting.empty():
            message = waiting.get_nowait()
            if message["type"] != "websocket.receive":
                break  # the disconnect: the stream hears of it through on_lost
            if self.on_message is not None and not self.close_sent:
                self.on_message(message.get("text") or message.get("bytes") or b"")
        if self.read_paused:  # reading waited for receive(): nobody will call it
            self.read_paused = False
            self.transport.resume_reading()

    def send_receive_event_to_app(self) -> None:
        data = b"".join(self.frames)
        if self.curr_msg_data_type == "text" and not self.close_sent:
            try:
                data.decode()
            except UnicodeDecodeError:
                # RFC 6455 §8.1: fail the connection with 1007, as uvicorn
                # does, but without the ERROR line and traceback it logs for
                # each one: any client can send them before its auth message.
                # A detached stream hands bytes on undecoded, so it checks here.
                self.frames = []
                self.conn.fail(1007, "invalid UTF-8 in a text message")
                self.handle_parser_exception()
                return
        if self.detached:
            # Handed over at once, and reading is not paused for an app that
            # will never read (it would also stop us from seeing the close).
            self.frames = []
            if self.on_message is not None and not self.close_sent:
                self.on_message(data)
            return
        self.frames = [data]
        super().send_receive_event_to_app()

    async def run_asgi(self) -> None:
        # uvicorn's own, except that a detached connection stays open when
        # the app returns.
        try:
            result = await self.app(self.scope, self.receive, self.send)
        except ClientDisconnected:
            pass
        except BaseException:
            self.logger.exception("Exception in ASGI application\n")
            self.send_500_response()
        else:
            if not self.handshake_complete:
                self.logger.error("ASGI callable returned without completing handshake.")
                self.send_500_response()
            elif result is not None:
                self.logger.error("ASGI callable should return None, but returned '%s'.", result)
        if self.close_timer is None and not self.detached:
            self.transport.close()

    def handle_connect(self, event) -> None:
        super().handle_connect(event)
        scope = getattr(self, "scope", None)
        if scope is not None and not self.config.ws_per_message_deflate:
            scope["extensions"][EXTENSION] = self

    def resume_writing(self) -> None:
        super().resume_writing()
        callback = self.on_writable
        if callback is not None:
            callback()

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        # uvicorn sets ``writable`` here without calling resume_writing(): tell
        # the stream directly, or a replay waiting for room would wait forever.
        callback = self.on_lost
        self.on_lost = self.on_writable = self.on_message = None
        if callback is not None:
            callback()

    def keepalive_timeout(self) -> None:
        # uvicorn's, except for the close code: no pong within ``ping_timeout``
        # is tidings' 4003 (docs/protocol.md#close-codes), not 1011, which
        # says the server failed.  A device that still reads (its pongs were
        # lost, it hung for a while) learns why and reconnects.
        self.pong_timer = None
        self.pending_ping_payload = None
        if self.close_sent or self.transport.is_closing():
            return
        self.conn.fail(CLOSE_PING_TIMEOUT, "ping timeout")
        self.transport.write(b"".join(self.conn.data_to_send()))
        self.close_sent = True
        self.transport.close()

    def shutdown(self) -> None:
        # uvicorn closes open WebSockets with 1012 when the server stops, before
        # the app hears of it.  Close with tidings' own "shutdown, reconnect
        # elsewhere" code instead, so clients move to another node at once.
        if self.handshake_complete and not self.close_sent:
            self.stop_keepalive()
            self.queue.put_nowait({"type": "websocket.disconnect", "code": CLOSE_SHUTDOWN})
            self.conn.send_close(CLOSE_SHUTDOWN, "node shutting down")
            self.transport.write(b"".join(self.conn.data_to_send()))
            self.transport.close()
            return
        super().shutdown()

    @property
    def can_write(self) -> bool:
        return self.writable.is_set() and not self.close_sent and not self.transport.is_closing()

    def write_text(self, payload: bytes) -> None:
        """One text frame, now.  The caller checks ``can_write`` first."""
        self.transport.write(text_frame_header(len(payload)) + payload)
