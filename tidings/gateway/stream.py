"""One live stream of one user: ordering, gap filling and the coalescing writer.

A ``Stream`` is transport-agnostic.  Transports subclass it and implement
``_write(frames)`` (one write for everything pending) and ``_close(code)``.

Ordering rules (docs/design.md §2.3):

* personal events carry the user's ``seq``; a stream delivers them strictly
  in order: an old or repeated ``seq`` is dropped, and a jump (the broker
  lost or reordered something) makes the stream fetch what is missing from
  the store before it goes on;
* while the stream is syncing (the first replay, or filling a gap), live
  events are held back and sorted out afterwards -- every kind of them, so
  nothing reaches a device before ``hello``, and a ``deleted`` (``state``,
  ``updated``, ``counts``) never goes ahead of the replayed notification it
  is about (``finish_sync``);
* feed items (broadcasts, large topics) carry the app's feed offset; they are
  delivered when newer than the last one seen, unless their category is one
  the user muted in-app (``muted``, read when the stream starts and again
  when the user's preferences change: the hub's ``MutesChanged``), which the
  user's counts and replay leave out too.

Coalescing: pushes only append to an :class:`OutboundQueue`; the writer task
wakes once, takes everything pending and writes it in one go -- one write
per connection per loop tick, however many events arrived.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import math
import time
from typing import Protocol

from tidings.core import events
from tidings.core.queue import OutboundQueue
from tidings.core.stats import Stats
from tidings.core.tracking import DeliveryTracker
from tidings.errors import CLOSE_RESYNC, CLOSE_SLOW_CONSUMER, CLOSE_TOKEN_EXPIRED

log = logging.getLogger("tidings.gateway")

# An event held back while a stream syncs: kind ("p" a personal entry, its
# position the seq; "f" a feed item, its offset; "c" a counts event; "x"
# state, updated or deleted), position, encoded frame, and a feed item's
# category (its user's mutes are checked again as it goes out).
Held = tuple[str, int, bytes, str]


_NO_TOPICS: frozenset[str] = frozenset()


class Flushable(Protocol):
    """A stream with a synchronous writer: the hub writes it once per tick."""

    def flush(self) -> None: ...


class Host(Protocol):
    """What a stream needs of the node it lives on (hub.py's ``Hub``): the
    stream knows this much of the hub, the hub all of the stream."""

    metrics: Stats
    ends: StreamEnds
    tracking: DeliveryTracker

    def mark_dirty(self, stream: Flushable) -> None: ...

    def attach(self, stream: Stream) -> None: ...

    def detach(self, stream: Stream) -> None: ...

    async def begin(self, stream: Stream, cursor) -> None: ...

    async def catch_up(self, stream: Stream) -> int: ...


class Stream:
    kind = "stream"
    # Slots: delivery touches a few attributes of every recipient's stream,
    # and a slot is read straight from the object (no per-instance dict to
    # follow, and fewer bytes per connection).
    __slots__ = ("hub", "app", "user", "epoch", "last_seq", "last_feed", "queue", "topics",
                 "closed", "close_code", "_syncing", "_again", "_held", "_held_bytes", "_wake",
                 "_room", "_writer", "_head_for", "_head", "_end", "secret", "issued", "jti",
                 "muted", "locale", "pinned", "wants_ids")

    def __init__(self, hub: Host, app: str, user: str, *, max_events: int, max_bytes: int):
        # SSE: every cursor-advancing event carries its cursor as id.  A slot
        # rather than a class attribute: on_personal reads it for every
        # recipient, and the interpreter looks a class attribute up through
        # the instance's type each time (about 130 instructions more).
        self.wants_ids = False
        self.hub = hub
        self.app = app
        self.user = user
        self.epoch = ""
        self.last_seq = 0
        self.last_feed = 0
        self.queue = OutboundQueue(max_events, max_bytes)
        # most users follow no large topic: share one empty set until one does
        # (an empty set() is 216 bytes, per connection)
        self.topics: set[str] | frozenset[str] = _NO_TOPICS
        self.closed = False
        self.close_code: int | None = None
        self._syncing = True  # held back until the first replay is done
        self._again = False  # the broker may have lost events during a sync: one more
        self._held: list[Held] = []  # in the order they arrived
        self._held_bytes = 0
        self._wake: asyncio.Future | None = None
        self._room: asyncio.Future | None = None
        self._writer: asyncio.Task | None = None
        # the event's head for this stream's epoch, made at its first event
        self._head_for = ""
        self._head = b""
        self._end: int | None = None  # the second the stream ends at (end_at)
        # the signing secret its token was verified with (end_at): a rotation
        # ends the streams of secrets no longer taken (tidings/service/apps.py)
        self.secret: str | None = None
        # its token's iat (None: it has none): a revocation of the user's
        # tokens ends the streams of those it predates (service/revocations.py)
        self.issued: int | None = None
        # its token's jti (None: it has none): a revocation of that one token
        # ends the streams opened with it (service/revocations.py)
        self.jti: str | None = None
        # the categories its user muted in-app (None until the hub read them
        # at the start; most users have none: one shared empty frozenset)
        self.muted: frozenset[str] | None = None
        # the language its notifications are shown in (tidings/core/locales.py):
        # the user's preferences' (read with the mutes), or the device's own
        # (``?locale=``: pinned, the preferences' then do not change it)
        self.locale = ""
        self.pinned = False

    # -- what the hub calls -----------------------------------------------
    def _hold(self, kind: str, pos: int, payload: bytes, category: str = "") -> None:
        # Held-back events count against the same caps as queued ones, by
        # number and by bytes (a slow reader's queue and a long replay's
        # held events are two bounds, each as large as the queue's).
        if self.closed:
            return
        size = self._held_bytes + len(payload)
        if len(self._held) >= self.queue.max_events or size > self.queue.max_bytes:
            self.hub.metrics.slow_consumer(self.app)
            self.close(CLOSE_SLOW_CONSUMER)
            return
        self._held.append((kind, pos, payload, category))
        self._held_bytes = size

    def on_personal(self, epoch: str, seq: int, body: bytes, tail: bytes | None = None) -> None:
        """Personal entry ``seq`` of ``epoch`` arrived live; ``tail`` is
        ``events.notification_tail(body)`` when the caller has it (one per
        publish, shared by its recipients)."""
        if seq == self.last_seq + 1 and epoch == self.epoch and not self._syncing:
            # the next one, live: as usual.  emit_personal(seq, body, tail)
            # without its call: under write fan-out this runs once per recipient
            self.last_seq = seq
            if self._head_for is not epoch:
                self._head_for, self._head = epoch, events.notification_head(epoch)
            frame = b"%s%d%s" % (self._head, seq,
                                 events.notification_tail(body) if tail is None else tail)
            # self.queue.push(frame) without its call, when it has room (else
            # push() finds the overflow, and SSE's frame wants its cursor)
            q = self.queue
            frames = q.frames
            n = len(frames)
            size = q.nbytes + len(frame)
            if (n < q.max_events and size <= q.max_bytes and not q.overflowed
                    and not self.closed and not self.wants_ids):
                frames.append(frame)
                q.nbytes = size
                if not n:  # the first since the last write: wake the writer
                    self._schedule()
            else:
                self.push(frame, self.position() if self.wants_ids else None)
        elif self._syncing:
            self._hold("p", seq, body)
        elif epoch != self.epoch or seq <= self.last_seq:
            return  # old, duplicate, or from a history this stream does not follow
        else:  # past a gap
            self._hold("p", seq, body)
            self._start_sync()

    def emit_personal(self, seq: int, body: bytes, tail: bytes | None = None) -> None:
        """Queue personal entry ``seq`` (in order; live or replayed)."""
        self.last_seq = seq
        epoch = self.epoch
        if self._head_for is not epoch:
            self._head_for, self._head = epoch, events.notification_head(epoch)
        frame = b"%s%d%s" % (self._head, seq,
                             events.notification_tail(body) if tail is None else tail)
        self.push(frame, self.position() if self.wants_ids else None)

    def on_feed(self, offset: int, frame: bytes, category: str = "") -> None:
        """Feed item ``offset`` of ``category`` arrived live."""
        muted = self.muted
        if muted and category in muted:
            # muted in-app: the counts and the replay leave it out too, and
            # delivery tracking counts the user under "muted", not "delivered"
            self.hub.tracking.muted_feed((self.app, frame, self.user))
            return
        if self._syncing:
            self._hold("f", offset, frame, category)  # mutes may not be read yet
            return
        if offset > self.last_feed:
            self.emit_feed(offset, frame)

    def emit_feed(self, offset: int, frame: bytes) -> None:
        """Queue feed item ``offset`` (live or replayed)."""
        self.last_feed = offset
        self.push(frame, self.position() if self.wants_ids else None)

    def on_frames(self, frames: list[bytes]) -> None:
        """``state``, ``counts``, ``updated`` or ``deleted`` events (the
        broker's ``Frames``): pushed as they are, or held while syncing, to go
        out after what the replay brings (``finish_sync``)."""
        if self._syncing:
            for f in frames:
                self._hold("c" if events.is_counts(f) else "x", 0, f)
            return
        for f in frames:
            self.push(f)

    def drop_held_counts(self) -> None:
        """``hello`` is about to carry counts read from now on: a ``counts``
        event held so far was read before them (its change reached this node
        first), and would only take the device back."""
        if self._held:
            self._held = [h for h in self._held if h[0] != "c"]
            self._held_bytes = sum(len(h[2]) for h in self._held)

    def holds(self, seq: int, feed: int) -> bool:
        """Whether the stream has sent every personal entry up to ``seq`` and
        is past feed offset ``feed``, and is not syncing: a replay from its
        position would read nothing committed by the read that gave them."""
        return not self._syncing and self.last_seq >= seq and self.last_feed >= feed

    def position(self) -> str:
        """The full resume cursor after everything pushed so far."""
        return f"{self.epoch}:{self.last_seq}:{self.last_feed}"

    def push(self, frame: bytes, eid: str | None = None) -> None:
        """Queue one encoded event; the writer sends it with whatever else is pending."""
        if self.closed:
            return
        pending = self.queue.push(frame)
        if pending == 1:
            self._schedule()
        elif not pending:
            self.hub.metrics.slow_consumer(self.app)
            self.close(CLOSE_SLOW_CONSUMER)

    def _schedule(self) -> None:
        """Make sure what was just queued gets written (wake the writer task).
        Called for the first frame queued since the last write only: while
        frames are pending, a write of them is on its way already (or waits
        for the transport to take more, which schedules it again)."""
        wake = self._wake
        if wake is not None and not wake.done():
            wake.set_result(None)

    # -- life cycle ---------------------------------------------------------
    async def start(self, cursor) -> None:
        """Attach, send hello, replay what the cursor missed, go live."""
        self.hub.attach(self)
        self._start_writer()
        try:
            await self.hub.begin(self, cursor)
        except Exception:
            log.exception("stream start failed for %s/%s", self.app, self.user)
            self.close(CLOSE_RESYNC)
            raise

    def finish_sync(self) -> None:
        """Leave syncing mode: release what was held, after everything the
        replay sent (so an event about a notification follows the replayed
        copy of it, read before the change).  A resync asked for meanwhile
        (the broker may have lost events during this one) first catches up
        once more, with everything still held."""
        if self._again and not self.closed:
            self._again = False
            asyncio.get_running_loop().create_task(self._fill_gap())
            return
        held, self._held, self._held_bytes = self._held, [], 0
        self._syncing = False
        for h in _release_order(held):
            kind, pos, payload, category = h
            if self._syncing:  # a gap restarted syncing: keep the rest held
                self._held.append(h)
                self._held_bytes += len(payload)
            elif kind == "p":
                self.on_personal(self.epoch, pos, payload)
            elif kind == "f":
                self.on_feed(pos, payload, category)
            else:
                self.push(payload)

    async def resync(self, counts: bytes | None = None) -> None:
        """The broker may have lost events (it reconnected): catch up from
        the store now, then send fresh ``counts`` (after the notifications,
        which a client counts one by one as they arrive).  A stream already
        syncing reads its position from before the outage, so it goes once
        more after."""
        if self.closed:
            return
        syncing, self._syncing = self._syncing, True
        if counts is not None:
            self._hold("c", 0, counts)
        if syncing:
            self._again = True
        elif not self.closed:  # holding the counts may have found it flooded
            await self._fill_gap()

    def _start_sync(self) -> None:
        if self._syncing:
            return
        self._syncing = True
        asyncio.get_running_loop().create_task(self._fill_gap())

    async def _fill_gap(self) -> None:
        try:
            await self.hub.catch_up(self)
        except asyncio.CancelledError:
            # Cut short (the node stopping): never leave the stream syncing,
            # holding live events; its client resumes from its cursor.
            self.close(CLOSE_RESYNC)
            raise
        except Exception:
            log.exception("gap fill failed for %s/%s", self.app, self.user)
            self.close(CLOSE_RESYNC)
            return
        self.finish_sync()

    def end_at(self, until: float, secret: str | None = None) -> None:
        """End the stream at ``until`` (wall-clock seconds): the last moment
        its user's token is taken (``Service.token_claims``), verified with
        the app's signing ``secret``.  A stream never outlives the token that
        opened it; a WebSocket that sends a fresh token in time moves the end
        (transports.py), a stream that does not closes with
        ``CLOSE_TOKEN_EXPIRED`` and its client reconnects with a new token."""
        if secret is not None:
            self.secret = secret
        ends = self.hub.ends
        if self._end is not None:
            ends.discard(self, self._end)
            self._end = None
        if self.closed or until == math.inf:
            return
        self._end = math.ceil(until)
        ends.add(self, self._end)

    def end_by(self, until: float) -> None:
        """End the stream at ``until`` at the latest: its token's secret is
        taken only until then (a rotation).  At once when that has passed."""
        if self.closed:
            return
        if until <= time.time():
            self.token_expired()
        elif self._end is None or math.ceil(until) < self._end:
            self.end_at(until)

    def token_expired(self) -> None:
        """The stream's end came (:class:`StreamEnds`)."""
        self._end = None
        self.close(CLOSE_TOKEN_EXPIRED)

    def abandon(self) -> None:
        """The peer went away: stop without sending anything."""
        if not self.closed:
            self._stop()

    def close(self, code: int, reason: str = "") -> None:
        """Stop and send the close ``code`` (and ``reason``, where the
        transport has one) to the peer."""
        if self.closed:
            return
        self.close_code = code
        self._stop()
        asyncio.get_running_loop().create_task(self._close_quietly(code, reason))

    def _stop(self) -> None:
        self.closed = True
        if self._end is not None:
            self.hub.ends.discard(self, self._end)
            self._end = None
        self.hub.detach(self)
        for fut in (self._wake, self._room):
            if fut is not None and not fut.done():
                fut.set_result(None)

    async def _close_quietly(self, code: int, reason: str) -> None:
        try:
            await self._close(code, reason)
        except Exception:  # the peer may already be gone
            pass

    def _start_writer(self) -> None:
        self._writer = asyncio.get_running_loop().create_task(self._write_loop())

    async def _write_loop(self) -> None:
        loop = asyncio.get_running_loop()
        queue = self.queue
        try:
            while not self.closed:
                if not queue.frames:
                    self._wake = loop.create_future()
                    await self._wake
                    self._wake = None
                    continue
                await self._write(queue.drain())
                self._room_made()
        except Exception:  # the peer is gone (ASGI send raised)
            self.abandon()
        finally:
            self._wake = None

    def has_room(self) -> bool:
        q = self.queue
        return len(q.frames) * 2 < q.max_events and q.nbytes * 2 < q.max_bytes

    def _room_made(self) -> None:
        room = self._room
        if room is not None and not room.done():
            room.set_result(None)

    async def wait_room(self) -> None:
        """Wait until the writer has drained the queue (replay flow control):
        a replay must never overflow the queue it is filling."""
        while not self.closed and self.queue.frames:
            self._room = asyncio.get_running_loop().create_future()
            await self._room

    # -- transport hooks ------------------------------------------------------
    async def _write(self, frames: list[bytes]) -> None:
        raise NotImplementedError

    async def _close(self, code: int, reason: str = "") -> None:
        raise NotImplementedError


def _release_order(held: list[Held]) -> list[Held]:
    """The order held events go out in.  They keep the order they arrived in
    (to a client that ignores a ``counts`` event's ``at``, it is worth what
    it says only where it was sent: a notification after it is one more),
    except that between two other events, notifications go by position, feed
    items first: the order a gap fill would have given them.  Of several
    ``counts`` only the newest goes out, in its place: each one holds the
    whole count, and the one read last holds the most -- two changes'
    counts can arrive in the order opposite to their reads.  The last read
    is the one with the greatest ``at`` (seq, feed, rev); at an equal one,
    the lower counts (an expiry, which writes nothing, only lowers them:
    ``events.counts_position``); of equal ones, the last to arrive."""
    last = max((i for i, h in enumerate(held) if h[0] == "c"),
               key=lambda i: (events.counts_position(held[i][2]), i), default=-1)
    out: list[Held] = []
    run: list[Held] = []  # notifications since the last other event
    for i, h in enumerate(held):
        kind = h[0]
        if kind == "p" or kind == "f":
            run.append(h)
        elif kind == "x" or i == last:
            run.sort(key=_by_position)
            out += run
            run = []
            out.append(h)
    run.sort(key=_by_position)
    out += run
    return out


def _by_position(h: Held) -> tuple[str, int]:
    return h[0], h[1]


class StreamEnds:
    """The node's streams by the second they end at (``Stream.end_at``): one
    timer for all of them, armed for the earliest second, instead of a timer
    handle per connection (half a KiB of an idle connection's nine)."""

    def __init__(self) -> None:
        self._due: dict[int, set[Stream]] = {}
        self._seconds: list[int] = []  # a heap of _due's keys
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = math.inf

    def add(self, stream: Stream, second: int) -> None:
        due = self._due.get(second)
        if due is None:
            due = self._due[second] = set()
            heapq.heappush(self._seconds, second)
            if second < self._timer_at:
                self._arm(second)
        due.add(stream)

    def discard(self, stream: Stream, second: int) -> None:
        """``stream`` no longer ends at ``second`` (it closed, or has a new
        end); an emptied second stays until it comes."""
        due = self._due.get(second)
        if due is not None:
            due.discard(stream)

    def _arm(self, second: int, at_least: float = 0.0) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = second
        self._timer = asyncio.get_running_loop().call_later(
            max(at_least, second - time.time()), self._fire)

    def _fire(self) -> None:
        self._timer, self._timer_at = None, math.inf
        now, seconds, ended = time.time(), self._seconds, 0
        while seconds and seconds[0] <= now:
            for stream in self._due.pop(heapq.heappop(seconds)):
                stream.token_expired()
                ended += 1
        if seconds:
            # the loop's clock may run a hair ahead of the wall clock: no busy wait
            self._arm(seconds[0], at_least=0.0 if ended else 0.01)
