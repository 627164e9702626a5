"""A stream's replay, read from the store a page at a time.

A replay (a resume, a gap fill, the catch-up after a broker outage:
``Hub.catch_up``) sends every personal entry past the stream's seq, then
every feed item past its feed offset.  Read at once, that was up to
``replay_max`` + 1 entries of each kind, of up to 16 KiB each (some 32 MB),
held while the queue's flow control paced their writes; after a node dies,
its devices reconnect to the others all at once, and so many replays held
at the same time can take down the next node.

So a replay first reads one page of both kinds in one statement: most
replays (a device back from a tunnel) end there, one query as before.  When
a kind fills its page, the replay asks the store whether more than
``replay_max`` of either kind lie past the position (``Store.replay_exceeds``,
which reads no body), so the rule stays exact, decided before anything is
sent.  It then reads ``REPLAY_PAGE`` entries of one kind at a time, and reads
the next page only once the stream's writer has taken every frame of the one
before (``Stream.wait_room``, the replay's flow control): a stream holds at
most the first page of each kind, then one page, and the frames its queue
holds.

And the node as a whole reads at most ``REPLAY_READS`` pages at a time (one
semaphore): thousands of devices reconnecting at once take turns at the
store instead of all reading together.  Only the read holds a turn, never
the wait for a slow reader's socket.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tidings.gateway.stream import Stream
    from tidings.store.base import Entry, Store

# What a replay hands each page to: it queues the page's frames.
Send = Callable[["list[Entry]"], Awaitable[None]]

REPLAY_PAGE = 100  # entries of one kind a replay reads at a time
# Replay reads running at a time on a node: under the PostgreSQL pool's
# default of 10 connections, so publishes and state changes still get one
# while a crowd of streams replays.
REPLAY_READS = 8


class Replays:
    """The node's replays: paged, at most ``reads`` store reads at a time."""

    def __init__(self, store: Store, *, page: int = REPLAY_PAGE, reads: int = REPLAY_READS):
        self.store = store
        self.page = page
        self._reads = asyncio.Semaphore(reads)

    async def run(self, stream: Stream, limit: int, send: Send) -> bool:
        """Hand ``send`` the stream's personal entries past its position,
        then its feed items, oldest first, a page at a time; False, having
        sent nothing, when more than ``limit`` of a kind lie past it.  A page
        is read once the writer has taken every frame ``send`` queued from
        the one before."""
        n = min(self.page, limit + 1)
        read = await self._read(stream, stream.last_seq, stream.last_feed, n)
        if read is None:
            return True  # closed meanwhile
        personal, feed = read
        if (len(personal) == n or len(feed) == n) and (n > limit or await self._too_many(
                stream, limit)):
            return False
        for first, to_seq in ((personal, True), (feed, False)):
            if first:
                await send(first)
            if len(first) == n:  # a full page: more may follow
                last = first[-1]
                await self._kind(stream, limit - n, send, last.seq if to_seq else None,
                                 None if to_seq else last.feed)
            first.clear()  # not held while the writer works
        return True

    async def _too_many(self, stream: Stream, limit: int) -> bool:
        """Whether more than ``limit`` personal entries, or more than
        ``limit`` feed items, lie past the stream's position."""
        async with self._reads:
            return await self.store.replay_exceeds(
                stream.app, stream.user, stream.last_seq, stream.last_feed, limit,
                time.time(), stream.muted)

    async def _kind(self, stream: Stream, left: int, send: Send, after_seq: int | None,
                    after_feed: int | None) -> None:
        """One kind's pages (the other's position is None)."""
        while left > 0:
            n = min(self.page, left)
            read = await self._read(stream, after_seq, after_feed, n)
            if read is None:
                return
            page = read[0] or read[1]
            del read
            if page:
                await send(page)
            if len(page) < n:
                return
            left -= n
            if after_seq is not None:
                after_seq = page[-1].seq
            else:
                after_feed = page[-1].feed
            del page  # not held while the writer works

    async def _read(self, stream: Stream, after_seq: int | None, after_feed: int | None,
                    n: int) -> tuple[list[Entry], list[Entry]] | None:
        """``n`` entries of each kind past the positions (a kind whose
        position is None is left out), read once the writer has taken what
        came before, in a turn at the store; None if the stream closed."""
        await stream.wait_room()
        if stream.closed:
            return None
        async with self._reads:
            return await self.store.replay(stream.app, stream.user, after_seq, after_feed, n,
                                           time.time(), stream.muted)
