"""Live stream subscriber: WebSocket, resumable, deduplicating.

A stream is only useful if it is gapless from the application's point of
view, so :class:`Subscriber` does three things a bare WebSocket does not:

* it tracks the resume cursor (``<epoch>:<seq>[:<feed>]``) from the events it
  has delivered and reconnects with ``?cursor=`` after any drop, so the
  server replays exactly what was missed;
* it drops notifications it has already delivered (replay after a reconnect
  may overlap what arrived just before the drop), by id, in a bounded LRU;
* it tells reconnectable drops (4000-4099, 1001, 1006, no close frame) from
  fatal ones (4400-4499: bad/expired token, forbidden, too many connections)
  using :func:`tidings.errors.should_reconnect`, backing off with full jitter
  in between so a dead node does not get a reconnect storm.

When the server cannot replay (``{"type": "recovered", "ok": false}``), the
event is still yielded and ``on_resync`` is called: the application must
reload its inbox page, the stream cannot fill that gap for it.

It also keeps the user's badge, :attr:`Subscriber.counts`: the server's
counts plus the notifications that arrived past the position they were read
at (:mod:`tidings.client.badge`, docs/protocol.md "Counts and the badge").
"""

from __future__ import annotations

import asyncio
import base64
import inspect
import logging
import os
import platform
import re
import secrets
import time
from collections import OrderedDict
from collections.abc import AsyncGenerator, Awaitable, Callable
from contextlib import aclosing
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import httpx
import msgspec
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

from tidings.client.badge import Badge
from tidings.client.errors import StreamClosed, TidingsAPIError, Unreachable, error_from_response
from tidings.core.backoff import Backoff
from tidings.core.cursor import Cursor, parse_cursor
from tidings.core.locales import valid_tag as valid_locale
from tidings.core.receipts import DEVICE_RE, LABEL_RE
from tidings.errors import CLOSE_UNAUTHORIZED, TidingsError, should_reconnect

log = logging.getLogger("tidings.client")
_encode = msgspec.json.encode
# Receipts: yielded ids, sent once a second, at most this many per message.
RECEIPTS_DELAY, RECEIPTS_MAX = 1.0, 100
_DEVICE, _LABEL = re.compile(DEVICE_RE), re.compile(LABEL_RE)

STREAM_PATH = "/v1/me/stream"
COUNTS_PATH = "/v1/me/counts"
# An update of a group entry: the server's counts are asked for, and asked
# again after these delays while an answer read before the update comes back
# (another node's cache that has not heard of it yet).
COUNTS_RETRIES = (0.25, 0.5, 1.0)
Event = dict[str, Any]
TokenSource = str | Callable[[], str | Awaitable[str]]


def _token_exp(token: str) -> float | None:
    """A JWT's ``exp`` (read, not verified: only to plan its renewal), or None."""
    try:
        payload = token.split(".")[1]
        exp = msgspec.json.decode(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        exp = exp.get("exp") if isinstance(exp, dict) else None
    except (IndexError, ValueError, msgspec.DecodeError):
        return None
    return float(exp) if isinstance(exp, int | float) and not isinstance(exp, bool) else None


class _Closing(Exception):
    """Internal: close() was called while we were connecting or sleeping."""


async def _maybe_await(value: Any) -> Any:
    return await value if inspect.isawaitable(value) else value


class Subscriber:
    """Iterate a user's live events, reconnecting until :meth:`close`.

    >>> sub = Subscriber("http://127.0.0.1:8080", token=user_token)
    >>> async for event in sub:          # dicts, see tidings.core.events
    ...     if event["type"] == "notification": show(event["notification"])

    ``token`` may be a callable (sync or async) returning a fresh token; it is
    called on every (re)connect, and before the open stream's token expires
    (a minute before its ``exp``, or when four fifths of the time left have
    passed), whose answer is sent on the stream so that it goes on without a
    reconnect.  A stream the server closed because its token expired (4004)
    resumes with a new one, and a 4401 on a stream that had already been
    accepted is retried once with a new token.
    ``auth="message"`` sends the token as the first message instead of an
    ``Authorization`` header.  ``cursor`` resumes from a saved position
    (persist :attr:`cursor` to resume across process restarts).
    ``locale`` (a BCP 47 tag such as ``"de-AT"``) is this device's language
    when it differs from the ``locale`` of the user's preferences: the
    stream's notifications come in it (``?locale=``, docs/channels.md#languages);
    default: the preferences'.  Set :attr:`locale` later and it holds from
    the next connect.

    Iteration ends normally after :meth:`close`; it raises
    :class:`StreamClosed` on a fatal close code and :class:`TidingsAPIError`
    when the server refuses the handshake with a 4xx.

    ``receipts`` (default on) reports every notification it yields as
    ``delivered`` to the server, batched into one WebSocket message a second
    (docs/protocol.md#receipts), as device ``device`` (1-64 printable
    characters, not starting with ``~``; default: a random id for this
    subscriber, so pass a stable one to see one device across restarts in a
    notification's timeline) labelled ``device_label`` (at most 64
    characters; default "Python on <OS>").

    :attr:`counts` is the user's badge, ``{"unread": n, "unseen": n}``: the
    counts of ``hello`` and of ``counts`` events, plus the notifications
    that arrived past the position they were read at.  An update of a group
    entry makes it ask ``GET /v1/me/counts`` with the stream's token (in the
    background, one request at a time), since only the server knows whether
    the entry became unseen again.

    ``on_retry(reason, delay)`` (sync or async) is called before each wait
    for a reconnect, with what went wrong and the seconds until the next
    attempt; ``max_retries`` bounds the connection attempts that fail in a
    row (no ``hello`` in between) before :class:`Unreachable` is raised
    (``None``: keep trying).
    """

    def __init__(
        self,
        url: str,
        token: TokenSource,
        *,
        cursor: str | None = None,
        locale: str | None = None,
        auth: str = "header",
        on_resync: Callable[[Event], Any] | None = None,
        dedup_size: int = 10_000,
        backoff: Backoff | None = None,
        open_timeout: float | None = 10.0,
        ping_interval: float | None = 20.0,
        ping_timeout: float | None = 20.0,
        max_size: int | None = 4 * 1024 * 1024,
        on_retry: Callable[[str, float], Any] | None = None,
        max_retries: int | None = None,
        receipts: bool = True,
        device: str | None = None,
        device_label: str | None = None,
        **connect_kwargs: Any,
    ):
        if auth not in ("header", "message"):
            raise ValueError('auth must be "header" or "message"')
        device = f"py-{secrets.token_hex(8)}" if device is None else device
        device_label = f"Python on {platform.system() or 'unknown'}" if device_label is None \
            else device_label
        if not (isinstance(device, str) and _DEVICE.match(device)):
            raise ValueError("device must be 1-64 printable characters, not starting with ~")
        if not (isinstance(device_label, str) and _LABEL.match(device_label)):
            raise ValueError("device_label must be 1-64 printable characters")
        if not token:
            raise ValueError("a user token (or a callable returning one) is required")
        if locale is not None and not valid_locale(locale):
            raise ValueError('locale must be a BCP 47 language tag, such as "de" or "pt-BR"')
        self.url = url
        #: The language asked for at each connect (None: the user's preferences').
        self.locale = locale
        self.auth = auth
        self.on_resync = on_resync
        self.dedup_size = dedup_size
        self.backoff = backoff or Backoff()
        self.on_retry = on_retry
        self.max_retries = max_retries
        #: Connection attempts that failed in a row (0 once a hello arrives).
        self.failures = 0
        self._token = token
        self._connect_kwargs = dict(
            open_timeout=open_timeout, ping_interval=ping_interval,
            ping_timeout=ping_timeout, max_size=max_size, **connect_kwargs,
        )
        self._cursor: Cursor | None = parse_cursor(cursor)
        self._hello_cursor: Cursor | None = None  # adopted if recovery fails
        self._seen: OrderedDict[str, None] = OrderedDict()
        self._closing = asyncio.Event()
        self._ws: ClientConnection | None = None
        self._gen: AsyncGenerator[Event, None] | None = None
        self._auth_retry = False  # one fresh-token retry after a 4401
        self._stream_token: str | None = None  # the open stream's token
        self.receipts = receipts
        #: The device id and label this subscriber's receipts carry.
        self.device, self.device_label = device, device_label
        self._delivered: list[str] = []  # ids yielded, not yet acknowledged
        self._badge = Badge()
        self._replaying = False  # between a resuming hello and its recovered
        self._asking: asyncio.Task | None = None  # GET /v1/me/counts (Badge.ask)
        #: True between a hello and the next drop.
        self.connected = False
        #: How many times the stream was (re)opened after the first attempt.
        self.reconnects = 0
        #: Close code of the last drop (``None``: no close frame).
        self.last_close_code: int | None = None

    # -- public surface -------------------------------------------------------

    @property
    def counts(self) -> dict[str, int] | None:
        """The badge, ``{"unread": n, "unseen": n}`` (None before the first
        ``hello``): exact whatever order counts and notifications arrive in."""
        return self._badge.counts

    @property
    def cursor(self) -> str | None:
        """The position to resume from: everything before it was delivered."""
        return None if self._cursor is None else str(self._cursor)

    def __aiter__(self) -> Subscriber:
        return self

    async def __anext__(self) -> Event:
        if self._gen is None:
            self._gen = self._run()
        return await self._gen.__anext__()

    async def run(self, handler: Callable[[Event], Any]) -> None:
        """Call ``handler`` (sync or async) for every event until closed."""
        async for event in self:
            await _maybe_await(handler(event))

    async def close(self) -> None:
        """Stop: the iterator finishes instead of reconnecting."""
        self._closing.set()
        asking, self._asking = self._asking, None
        if asking is not None:
            asking.cancel()
            await asyncio.wait({asking})
        ws = self._ws
        if ws is not None:
            await ws.close()
        gen = self._gen
        if gen is not None and not getattr(gen, "ag_running", True):
            # A loop left with ``break`` (or an exception) keeps the iterator
            # suspended: finish it now, with its receipts task, rather than
            # whenever the collector finds it (after the event loop, maybe).
            await gen.aclose()

    async def __aenter__(self) -> Subscriber:
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()

    # -- the reconnect loop ---------------------------------------------------

    async def _run(self) -> AsyncGenerator[Event, None]:
        first = True
        while not self._closing.is_set():
            if not first:
                self.reconnects += 1
            first = False
            retry_after: float | None = None
            try:
                ws = await self._interruptible(self._connect())
            except _Closing:
                return
            except InvalidStatus as e:
                resp = e.response
                err = error_from_response(resp.status_code, resp.headers, resp.body or b"")
                if 400 <= resp.status_code < 500 and resp.status_code not in (408, 429):
                    raise err from None
                log.info("stream handshake refused (%s), retrying", err)
                retry_after = err.retry_after
                reason = f"refused: {err}"
                self._failed(reason)
            except (TimeoutError, OSError, InvalidHandshake) as e:
                log.info("stream connect failed (%r), retrying", e)
                reason = _describe(e)
                self._failed(reason)
            else:
                async with aclosing(self._session(ws)) as events:
                    async for event in events:
                        yield event
                if self._closing.is_set():
                    return
                reason = f"stream closed (code {self.last_close_code})"
            delay = self.backoff.next_delay()
            if retry_after is not None:
                delay = max(delay, retry_after)
            if self.on_retry is not None:
                await _maybe_await(self.on_retry(reason, delay))
            try:
                await asyncio.wait_for(self._closing.wait(), timeout=delay)
                return  # closed while waiting
            except TimeoutError:
                pass

    def _failed(self, reason: str) -> None:
        self.failures += 1
        if self.max_retries is not None and self.failures > self.max_retries:
            raise Unreachable(f"gave up after {self.failures} attempts to reach {self.url}: "
                              f"{reason}",
                              self.failures)

    async def _session(self, ws: ClientConnection) -> AsyncGenerator[Event, None]:
        """Deliver one connection's events; return on a reconnectable drop."""
        self._ws = ws
        acks = asyncio.create_task(self._acknowledge(ws)) if self.receipts else None
        renew = asyncio.create_task(self._renew(ws)) if callable(self._token) else None
        try:
            while True:
                raw = await ws.recv()
                for event in self._decode(raw):
                    if await self._handle(event):
                        if self.receipts and event.get("type") == "notification":
                            self._delivered.append(event["notification"]["id"])
                        yield event
        except ConnectionClosed as e:
            if self._closing.is_set():
                return
            code = e.rcvd.code if e.rcvd is not None else None
            reason = e.rcvd.reason if e.rcvd is not None else ""
            self.last_close_code = code
            if should_reconnect(code):
                log.info("stream dropped (close code %s), resuming from %s", code, self.cursor)
                return
            if code == CLOSE_UNAUTHORIZED and self._auth_retry:
                self._auth_retry = False  # token likely expired: try one fresh one
                return
            raise StreamClosed(code, reason) from None
        finally:
            self._ws = None
            self.connected = False
            for task in (acks, renew):
                if task is not None:
                    task.cancel()
                    await asyncio.wait({task})
            await ws.close()

    async def _acknowledge(self, ws: ClientConnection) -> None:
        """Every second, what was yielded meanwhile as one receipts message
        (at most RECEIPTS_MAX ids each, under the server's 4 KiB per message).
        Best effort: receipts are statistics, lost with a dropped connection."""
        try:
            while True:
                await asyncio.sleep(RECEIPTS_DELAY)
                while self._delivered:
                    batch = self._delivered[:RECEIPTS_MAX]
                    del self._delivered[:RECEIPTS_MAX]
                    await ws.send(_encode({"type": "receipts", "device": self.device,
                                           "label": self.device_label,
                                           "delivered": batch}).decode())
        except ConnectionClosed:
            pass

    async def _renew(self, ws: ClientConnection) -> None:
        """Send the token callable's next token before the stream's expires
        (docs/protocol.md, "Token lifetime").  Nothing to renew with (the
        same token again, or none later) leaves the stream to end with 4004
        and the reconnect to take a new one."""
        source = self._token
        if not callable(source):
            return
        try:
            while True:
                token = self._stream_token
                exp = None if token is None else _token_exp(token)
                if exp is None or exp <= time.time():
                    return
                left = exp - time.time()
                await asyncio.sleep(left - min(60.0, left / 5))
                fresh = await _maybe_await(source())
                new_exp = _token_exp(fresh) if isinstance(fresh, str) else None
                if new_exp is None or new_exp <= exp:
                    return
                await ws.send(_encode({"type": "auth", "token": fresh}).decode())
                self._stream_token = fresh
        except ConnectionClosed:
            pass
        except Exception:  # the token callable failed: the stream ends, then reconnects
            log.warning("renewing the stream's token failed", exc_info=True)

    async def _connect(self) -> ClientConnection:
        token = await _maybe_await(self._token() if callable(self._token) else self._token)
        self._stream_token = token
        headers = {"Authorization": f"Bearer {token}"} if self.auth == "header" else None
        ws = await connect(self._stream_url(), additional_headers=headers,
                           **self._connect_kwargs)
        if self.auth == "message":
            await ws.send(msgspec.json.encode({"type": "auth", "token": token}).decode())
        return ws

    async def _interruptible(self, coro: Awaitable[ClientConnection]) -> ClientConnection:
        """Await ``coro`` unless close() comes first (then raise :class:`_Closing`).

        Without this, close() during a slow connect would wait out the open
        timeout, and a connection finishing just then would leak.
        """
        task = asyncio.ensure_future(coro)
        closing = asyncio.ensure_future(self._closing.wait())
        try:
            await asyncio.wait({task, closing}, return_when=asyncio.FIRST_COMPLETED)
        except BaseException:  # our own task was cancelled
            await self._discard(task)
            raise
        finally:
            closing.cancel()
        if not self._closing.is_set():
            return task.result()  # raises the connect error, if any
        await self._discard(task)
        raise _Closing

    @staticmethod
    async def _discard(task: asyncio.Future) -> None:
        task.cancel()
        await asyncio.wait({task})
        if not task.cancelled() and task.exception() is None:
            await task.result().close()  # it connected just as we gave up

    def _stream_url(self) -> str:
        parts = urlsplit(self.url)
        scheme = {"http": "ws", "https": "wss"}.get(parts.scheme, parts.scheme)
        path = parts.path.rstrip("/")
        if not path.endswith(STREAM_PATH):
            path += STREAM_PATH
        given = ("cursor", "locale") if self.locale else ("cursor",)  # ours win over the url's
        query = [(k, v) for k, v in parse_qsl(parts.query) if k not in given]
        if self._cursor is not None:
            query.append(("cursor", str(self._cursor)))
        if self.locale:
            query.append(("locale", self.locale))
        return urlunsplit((scheme, parts.netloc, path, urlencode(query, safe=":"), ""))

    # -- event handling -------------------------------------------------------

    @staticmethod
    def _decode(raw: str | bytes) -> list[Event]:
        """One frame is one event object or a JSON array of them."""
        try:
            data = msgspec.json.decode(raw)
        except msgspec.DecodeError:
            log.warning("ignoring a frame that is not JSON: %.100r", raw)
            return []
        items = data if isinstance(data, list) else [data]
        return [e for e in items if isinstance(e, dict)]

    async def _handle(self, event: Event) -> bool:
        """Update cursor/counts from ``event``; False means "not for the
        application" (a duplicate, or the answer to a renewed token)."""
        kind = event.get("type")
        if kind == "hello":
            self._replaying = self._cursor is not None  # a cursor was sent: a replay follows
            self._on_hello(event)
            self._badge.hello(event.get("counts"))
        elif kind == "recovered":
            self._replaying = False
            hello, self._hello_cursor = self._hello_cursor, None
            if not event.get("ok", True):
                if hello is not None:
                    self._cursor = hello  # the gap is the app's to reload; go live
                if self.on_resync is not None:
                    await _maybe_await(self.on_resync(event))
        elif kind == "notification":
            if not self._on_notification(event):
                return False
            self._badge.notification(event, self._replaying)
            self._ask_counts()
        elif kind == "counts":
            self._badge.take(event)
        elif kind == "token":
            return False  # the answer to a renewed token: the stream's own business
        return True

    def _on_hello(self, event: Event) -> None:
        self.connected = True
        self.failures = 0
        self._auth_retry = callable(self._token)
        self.backoff.reset()
        try:
            hello = parse_cursor(event.get("cursor"))
        except TidingsError:
            log.warning("hello carried a bad cursor: %r", event.get("cursor"))
            return
        if hello is None:
            return
        if self._cursor is None or self._cursor.epoch != hello.epoch:
            # Fresh start, or the user's history was reset: positions of the
            # old epoch mean nothing any more.
            self._cursor = hello
            self._hello_cursor = None
        else:
            # Resuming in the same epoch: keep our own position, the replay
            # advances it.  Keep the server's in case it says it cannot replay.
            self._hello_cursor = hello
            if self._cursor.feed is None and hello.feed is not None:
                # We had no feed position; the hello's is where feed replay
                # would start, so adopt it or later feed drops are unrecoverable.
                self._cursor = Cursor(self._cursor.epoch, self._cursor.seq, hello.feed)

    def _ask_counts(self) -> None:
        """Ask the server for the counts when only it knows them (Badge.ask)."""
        if self._badge.ask and self._asking is None and not self._closing.is_set():
            self._asking = asyncio.get_running_loop().create_task(self._fetch_counts())

    async def _fetch_counts(self) -> None:
        try:
            async with httpx.AsyncClient(timeout=10) as http:
                for delay in (0.0, *COUNTS_RETRIES):
                    await asyncio.sleep(delay)
                    token = self._stream_token
                    r = await http.get(self._counts_url(),
                                       headers={"Authorization": f"Bearer {token}"})
                    if r.status_code != 200:
                        log.info("GET %s answered %d", COUNTS_PATH, r.status_code)
                        return
                    self._badge.take(r.json())
                    if not self._badge.ask:
                        return
        except (httpx.HTTPError, ValueError) as e:
            log.info("asking for the counts failed: %r", e)
        finally:
            self._asking = None

    def _counts_url(self) -> str:
        parts = urlsplit(self.url)
        scheme = {"ws": "http", "wss": "https"}.get(parts.scheme, parts.scheme)
        path = parts.path.rstrip("/")
        if path.endswith(STREAM_PATH):
            path = path[:-len(STREAM_PATH)]
        return urlunsplit((scheme, parts.netloc, path + COUNTS_PATH, "", ""))

    def _on_notification(self, event: Event) -> bool:
        cur = self._cursor
        if "cursor" in event:
            try:
                pos = parse_cursor(event["cursor"])
            except TidingsError:
                pos = None
            if pos is not None:
                if cur is None or cur.epoch != pos.epoch:
                    self._cursor = Cursor(pos.epoch, pos.seq, cur.feed if cur else None)
                elif pos.seq > cur.seq:
                    self._cursor = Cursor(cur.epoch, pos.seq, cur.feed)
        feed = event.get("feed")
        if isinstance(feed, int) and cur is not None:
            cur = self._cursor or cur  # as moved above (never back to None)
            if cur.feed is None or feed > cur.feed:
                self._cursor = Cursor(cur.epoch, cur.seq, feed)
        nid = (event.get("notification") or {}).get("id")
        if nid is None:
            return True
        if nid in self._seen:
            self._seen.move_to_end(nid)
            return False
        self._seen[nid] = None
        if len(self._seen) > self.dedup_size:
            self._seen.popitem(last=False)
        return True


def _describe(exc: BaseException) -> str:
    """A connect error in a few words ("connection refused"), for on_retry."""
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, OSError) and exc.errno:
        return os.strerror(exc.errno).lower()  # "connection refused", not asyncio's text
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()
    return str(exc) or type(exc).__name__


__all__ = ["Subscriber", "StreamClosed", "TidingsAPIError", "Unreachable"]
