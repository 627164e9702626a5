"""WebSocket and SSE transports (ASGI), behind the small Stream interface.

Both are raw ASGI apps: the hot path is one ``send`` per coalesced batch, with
no framework objects in between.

WebSocket (RFC 6455) at ``/v1/me/stream``: browsers cannot set headers, so
the first client message may be ``{"type": "auth", "token": "..."}``; other
clients may send ``Authorization: Bearer``.  Several pending events leave as
one text frame holding a JSON array.

SSE (HTML Living Standard §9.2) at ``/v1/me/events``: ``?token=`` or the
header; each notification's ``id:`` is the stream cursor, so ``EventSource``
resumes by itself with ``Last-Event-ID``.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from typing import TYPE_CHECKING, Literal
from urllib.parse import parse_qs

import msgspec

from tidings.api.common import LOCALE, Query
from tidings.core import events
from tidings.core.cursor import CURSOR_MAX, CURSOR_RE, parse_cursor
from tidings.core.receipts import connection_device
from tidings.errors import (
    CLOSE_FORBIDDEN,
    CLOSE_RATE_LIMITED,
    CLOSE_TOKEN_EXPIRED,
    BadRequest,
    Forbidden,
    RateLimited,
    TidingsError,
    Unauthorized,
)
from tidings.gateway.stream import Stream
from tidings.gateway.uvicorn_ws import EXTENSION as RAW_EXTENSION

if TYPE_CHECKING:
    from tidings.service import Service
    from tidings.service.service import Claims

AUTH_TIMEOUT = 10.0
# The reconnect delay each SSE response asks of its EventSource, drawn per
# connection: when a node stops, its streams come back spread over these
# 2.5 s instead of all at the same millisecond.
SSE_RETRY_MS = (500, 3000)


class _AuthMessage(msgspec.Struct):
    type: Literal["auth"]
    token: str


_decode_auth = msgspec.json.Decoder(_AuthMessage).decode

# the reason sent with a close code the stream chose itself (the others carry none)
_REASONS = {CLOSE_TOKEN_EXPIRED: "token expired",
            CLOSE_RATE_LIMITED: "this user is over the client API's rate limit"}
WS_ROUTE = "WS /v1/me/stream"  # where the node's error log puts a stream's errors


def _headers(scope) -> dict[bytes, bytes]:
    return {k.lower(): v for k, v in scope.get("headers", ())}


def _bearer(headers: dict[bytes, bytes]) -> str | None:
    value = headers.get(b"authorization")
    if value and value[:7].lower() == b"bearer ":
        return value[7:].decode("latin-1").strip()
    return None


def _address(scope) -> Callable[[], str | None]:
    """The caller's address (the scope's client, proxy headers applied), as
    the limits of invalid user tokens ask it: only when a token failed."""
    def address() -> str | None:
        client = scope.get("client")
        return client[0] if client else None
    return address


# The ASGI extension by which a WebSocket's upgrade is answered with an HTTP
# response instead of being accepted (uvicorn's websockets-sansio offers it).
DENIAL = "websocket.http.response"


def _query(scope) -> dict[str, str]:
    try:
        qs = parse_qs(scope.get("query_string", b"").decode("latin-1"), max_num_fields=20)
    except ValueError:
        raise BadRequest("too many query parameters", code="bad_query") from None
    return {k: v[-1] for k, v in qs.items()}


class WebSocketStream(Stream):
    kind = "ws"
    __slots__ = ("_send",)

    def __init__(self, send, *args, **kw):
        super().__init__(*args, **kw)
        self._send = send

    async def _write(self, frames: list[bytes]) -> None:
        await self._send({"type": "websocket.send", "text": events.ws_batch(frames).decode()})

    async def _close(self, code: int, reason: str = "") -> None:
        await self._send({"type": "websocket.close", "code": code,
                          "reason": reason or _REASONS.get(code, "")})


class RawWebSocketStream(Stream):
    """WebSocket stream written synchronously through ``tidings.raw_ws``:
    no writer task, no per-message await; the hub flushes every dirty stream
    once per loop tick."""

    kind = "ws"
    __slots__ = ("_proto", "_send", "_dirty")

    def __init__(self, proto, send, *args, **kw):
        super().__init__(*args, **kw)
        self._proto = proto
        self._send = send
        self._dirty = False
        proto.on_writable = self._on_writable
        proto.on_lost = self.abandon

    def _start_writer(self) -> None:
        pass

    def _schedule(self) -> None:
        if not self._dirty:
            self._dirty = True
            self.hub.mark_dirty(self)

    def _on_writable(self) -> None:
        if self.queue.frames:
            self._schedule()

    def flush(self) -> None:
        self._dirty = False
        if self.closed or not self.queue.frames:
            return
        proto = self._proto
        if not proto.can_write:
            return  # paused by the transport: resume_writing schedules us again
        proto.write_text(events.ws_batch(self.queue.drain()))
        self._room_made()

    async def _close(self, code: int, reason: str = "") -> None:
        self._proto.on_writable = None
        await self._send({"type": "websocket.close", "code": code,
                          "reason": reason or _REASONS.get(code, "")})


class SSEStream(Stream):
    kind = "sse"
    __slots__ = ("_send", "ended")

    def __init__(self, send, *args, **kw):
        super().__init__(*args, **kw)
        self.wants_ids = True
        self._send = send
        self.ended = asyncio.Event()

    def push(self, frame: bytes, eid: str | None = None) -> None:
        super().push(events.sse_event(frame, eid))

    def ping(self) -> None:
        Stream.push(self, b": ping\n\n")

    async def _write(self, frames: list[bytes]) -> None:
        body = b"".join(frames)
        await self._send({"type": "http.response.body", "body": body, "more_body": True})

    async def _close(self, code: int, reason: str = "") -> None:
        try:
            await self._send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            self.ended.set()


# The streams' query parameters, as /openapi.json describes them.
CURSOR = Query("cursor", "Resume after this position (a notification event's cursor; on "
               "SSE a Last-Event-ID header wins); absent: start live",
               {"type": "string", "maxLength": CURSOR_MAX, "pattern": CURSOR_RE})
TOKEN = Query("token", "The user token, for clients that cannot send an Authorization "
              "header (EventSource)", {"type": "string"})


def _pin(stream: Stream, locale: str | None) -> None:
    """A device's own language (``?locale=``): its stream shows notifications
    in it, whatever the user's preferences say (tidings/core/locales.py)."""
    if locale is not None:
        stream.locale, stream.pinned = locale, True


class WebSocketEndpoint:
    """``GET /v1/me/stream``"""

    query = (CURSOR, LOCALE)

    def __init__(self, service: Service):
        self.service = service

    async def __call__(self, scope, receive, send) -> None:
        service = self.service
        if (await receive())["type"] != "websocket.connect":
            return
        headers = _headers(scope)
        origin = headers.get(b"origin")
        allowed = origin is None or service.origin_allowed(origin.decode("latin-1"))
        token = _bearer(headers)
        address = _address(scope)
        # A token in the header is checked before the upgrade, so that one
        # refused past the limits of invalid tokens is answered 429 without
        # a WebSocket where the server can (docs/security.md#invalid-user-tokens).
        # Any other answer waits for the accept, as a close code, as before.
        checked: Claims | TidingsError | None = None
        if allowed and token is not None:
            try:
                checked = await service.token_claims(token, address)
            except RateLimited as exc:
                if DENIAL in scope.get("extensions", {}):
                    service.hub.metrics.error(None, exc.code, exc.status, WS_ROUTE)
                    return await service.send_error(send, exc, prefix="websocket.http")
                checked = exc
            except TidingsError as exc:
                checked = exc
        await send({"type": "websocket.accept"})

        app = None

        async def refuse(code: int, reason: str, error: str) -> None:
            service.hub.metrics.error(app, error, 0, WS_ROUTE)
            await send({"type": "websocket.close", "code": code, "reason": reason[:120]})

        if not allowed:
            return await refuse(CLOSE_FORBIDDEN, "origin not allowed", "origin_not_allowed")
        try:
            query = _query(scope)
            cursor = parse_cursor(query.get(CURSOR.name))
            locale = LOCALE.parse(query.get(LOCALE.name))
            if token is None:
                token = await self._first_message_token(receive)
            if isinstance(checked, TidingsError):
                raise checked
            claims = checked or await service.token_claims(token, address)
            app, user = claims.app, claims.user
            # a connect is a request of the user's (docs/security.md#rate-limits):
            # over the rate it closes with 4005, which clients reconnect after
            service.limits.charge_user(app, user)
            service.hub.check_capacity(app, user)
        except TidingsError as exc:
            return await refuse(exc.close_code, exc.message, exc.code)
        except _Gone:
            return

        limits = service.settings.limits
        caps = {"max_events": limits.queue_max_events, "max_bytes": limits.queue_max_bytes}
        raw = scope.get("extensions", {}).get(RAW_EXTENSION)
        if raw is not None:
            stream: Stream = RawWebSocketStream(raw, send, service.hub, app, user, **caps)
        else:
            stream = WebSocketStream(send, service.hub, app, user, **caps)
        _pin(stream, locale)
        stream.end_at(claims.until, claims.secret)
        stream.issued, stream.jti = claims.issued, claims.jti
        try:
            await stream.start(cursor)
        except Exception:
            return
        device = _Device(service, stream)
        if raw is not None and not stream.closed:
            # The stream needs nothing more from this task: its frames go out
            # through the protocol, the end arrives through on_lost, and the
            # device's messages (receipts, fresh tokens) through on_message.
            raw.on_message = device.on_message
            raw.detach()
            return
        try:
            # Until the peer is gone, not until the stream is closed: a
            # stream that closes itself (a message over the user's rate, an
            # expired token) sends its close frame from a task, and the
            # server queues the disconnect once it has; returning sooner
            # would close the socket without it (the client would see 1006).
            while True:
                msg = await receive()
                if msg["type"] == "websocket.disconnect":
                    break
                device.on_message(msg.get("text") or msg.get("bytes") or b"")
        finally:
            stream.abandon()

    async def _first_message_token(self, receive) -> str:
        try:
            msg = await asyncio.wait_for(receive(), AUTH_TIMEOUT)
        except TimeoutError:
            raise Unauthorized("no auth message within 10 s", code="auth_timeout") from None
        if msg["type"] == "websocket.disconnect":
            raise _Gone
        raw = msg.get("text") or msg.get("bytes") or b""
        try:
            return _decode_auth(raw).token
        except (msgspec.DecodeError, RecursionError):  # RecursionError: nested too deep
            raise Unauthorized(
                'first message must be {"type": "auth", "token": "..."}', code="auth_required"
            ) from None


class _Gone(Exception):
    pass


class _Device:
    """What one WebSocket's device says after its auth message: receipts
    (held as this connection's when the batch names no device,
    tidings.core.receipts) and fresh tokens (``{"type": "auth", "token": …}``
    again: the stream then ends when the new token expires instead of the
    old one, and answers ``{"type": "token", "until": …}``).  A token that is
    not valid, or that names another user, closes the stream as the same
    token would have refused it at connect (4401, 4403).  Anything else is
    ignored.

    Every message, whatever it holds, first takes a token from the user's
    bucket, the one the user's requests and stream connects take from
    (docs/security.md#rate-limits).  A message that finds it empty is not
    read, and the stream closes with 4005, as a connect over the rate would
    have: a message has no answer to carry a 429, so a message dropped
    without a word would leave the device sending, and the node reading
    each one at socket speed.  Closed, the device reconnects after a backoff
    (every client of tidings does, from its cursor) and its connect takes a
    token too, so what the node serves the user, messages, requests and
    streams, stays within ``user_rate`` whatever the device does."""

    __slots__ = ("service", "stream", "device", "_checking")

    def __init__(self, service: Service, stream: Stream):
        self.service, self.stream = service, stream
        self.device = connection_device()
        self._checking: asyncio.Task | None = None

    def on_message(self, raw: bytes | str) -> None:
        stream = self.stream
        if stream.closed:
            return  # the rest of what one read brought, after a close
        service = self.service
        try:
            service.limits.charge_user(stream.app, stream.user)
        except RateLimited as exc:
            service.hub.metrics.error(stream.app, exc.code, 0, WS_ROUTE)
            stream.close(exc.close_code)
            return
        if service.device_message(stream.app, stream.user, self.device, raw):
            return
        try:
            token = _decode_auth(raw).token
        except (msgspec.DecodeError, RecursionError, UnicodeError):
            return
        if self._checking is None:  # one check at a time: a flood costs one task
            self._checking = asyncio.get_running_loop().create_task(self._refresh(token))

    async def _refresh(self, token: str) -> None:
        stream = self.stream
        try:
            # not counted as an invalid token: one closes the stream, and the
            # connect that must come before the next is
            claims = await self.service.token_claims(token, limited=False)
            if (claims.app, claims.user) != (stream.app, stream.user):
                raise Forbidden("the token names another user", code="other_user")
        except TidingsError as exc:
            self.service.hub.metrics.error(stream.app, exc.code, 0, WS_ROUTE)
            stream.close(exc.close_code, exc.message[:120])
            return
        finally:
            self._checking = None
        stream.end_at(claims.until, claims.secret)
        stream.issued, stream.jti = claims.issued, claims.jti
        stream.push(events.token_frame(claims.until))


class SSEEndpoint:
    """``GET /v1/me/events``"""

    query = (CURSOR, TOKEN, LOCALE)

    def __init__(self, service: Service):
        self.service = service

    async def __call__(self, scope, receive, send) -> None:
        service = self.service
        headers = _headers(scope)
        app = None
        try:
            query = _query(scope)
            token = query.get(TOKEN.name) or _bearer(headers)
            if not token:
                raise Unauthorized("a token is required (?token= or Authorization)")
            last_id = headers.get(b"last-event-id")
            cursor = parse_cursor(
                last_id.decode("latin-1") if last_id else query.get(CURSOR.name)
            )
            locale = LOCALE.parse(query.get(LOCALE.name))
            claims = await service.token_claims(token, _address(scope))
            app, user = claims.app, claims.user
            service.limits.charge_user(app, user)  # 429 rate_limited, as any request
            service.hub.check_capacity(app, user)
        except TidingsError as exc:
            service.hub.metrics.error(app, exc.code, exc.status, "GET /v1/me/events")
            return await service.send_error(send, exc)

        await send({
            "type": "http.response.start", "status": 200,
            "headers": [
                (b"content-type", b"text/event-stream; charset=utf-8"),
                (b"cache-control", b"no-cache, no-transform"),
                (b"x-accel-buffering", b"no"),
            ],
        })
        if scope.get("method") == "HEAD" or service.revocations.refuses(
                app, user, claims.issued, claims.jti):
            # HEAD: the GET's status and headers, no stream: the client reads
            # no body, so one left open would hold its connection forever.
            # Revoked while the headers went out: nothing would end the stream.
            await send({"type": "http.response.body", "body": b""})
            return
        limits = service.settings.limits
        stream = SSEStream(
            send, service.hub, app, user,
            max_events=limits.queue_max_events, max_bytes=limits.queue_max_bytes,
        )
        _pin(stream, locale)
        # A retry hint first: EventSource waits this long before reconnecting.
        Stream.push(stream, b"retry: %d\n\n" % random.randint(*SSE_RETRY_MS))
        stream.end_at(claims.until, claims.secret)  # the response ends then: a new token
        stream.issued, stream.jti = claims.issued, claims.jti
        try:
            await stream.start(cursor)
        except Exception:
            return
        interval = service.settings.ping_interval
        disconnect = asyncio.ensure_future(receive())
        try:
            while not stream.closed:
                done, _ = await asyncio.wait({disconnect}, timeout=interval)
                if done:
                    msg = disconnect.result()
                    if msg["type"] == "http.disconnect":
                        break
                    disconnect = asyncio.ensure_future(receive())
                else:
                    stream.ping()
        except asyncio.CancelledError:
            pass  # the server is shutting down: the client reconnects elsewhere
        finally:
            disconnect.cancel()
            if stream.closed:
                await stream.ended.wait()
            else:
                stream.abandon()


__all__ = ["WebSocketEndpoint", "SSEEndpoint"]
