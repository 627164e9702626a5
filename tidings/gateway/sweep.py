"""After a broker outage: every open stream caught up from the store, in batches.

When the broker reconnects (Redis restarted), the messages it carried
meanwhile may be lost: topic memberships, mutes, personal entries, feed
items.  The hub then runs one :class:`OutageSweep` over the users with a
stream on the node (docs/delivery.md, "After a broker outage").

It reads ``Store.counts_batch`` users at a time (500 on PostgreSQL, 100 on
SQLite, as the recounts do), one call per kind for the whole batch: their
topics (``topics_many``), their in-app mutes (``muted_many``), then their
counts with those mutes (``counts_many``).  The streams follow the topics
read and skip the categories muted.

The counts say where they were read: the user's head seq and the app's feed
head.  A stream at or past both that is not syncing has missed nothing
that was committed by then (its seqs arrive in order, and a replay reads
only past its position), and anything committed later reaches it live over
the reconnected broker.  It gets the fresh counts, and no replay.  Only the
other streams replay (``Stream.resync``: what they missed, then the
counts), ``REPLAYS`` at a time, while the next batch is read.  So a node
whose streams missed nothing costs the store three calls per batch.  The
old sweep cost four queries per user.

Streams not reached yet stay live meanwhile, and fill any personal gap
themselves as soon as the next event shows one.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from tidings.core import events
from tidings.core.backoff import Backoff
from tidings.core.preferences import NONE_MUTED
from tidings.errors import Unavailable

if TYPE_CHECKING:
    from tidings.broker.base import Broker
    from tidings.gateway.stream import Stream
    from tidings.store.base import Counts, Store

log = logging.getLogger("tidings.gateway")

# Streams replaying at a time: a node with 100k streams behind must not send
# 100k replays to the store at once, and a slow reader waiting for room in
# its queue holds up one of them, not the sweep.
REPLAYS = 16
ATTEMPTS = 20  # per batch, while the store answers Unavailable (~30 s)


class Users(Protocol):
    """What the sweep needs of the hub: its users' streams, their topics and
    mutes, and the broker whose subscriptions a joined topic adds."""

    users: dict[tuple[str, str], set[Stream]]
    broker: Broker

    def set_muted(self, key: tuple[str, str], muted: frozenset[str]) -> None: ...

    def set_locale(self, key: tuple[str, str], locale: str) -> None: ...

    def follow(self, key: tuple[str, str], topics: set[str]) -> bool: ...


class OutageSweep:
    """One sweep over the node's users; ``noted(key, counts)`` is told of
    every counts read (the hub notes its ``expires``).  The counters are
    for tests and the bench."""

    def __init__(self, hub: Users, store: Store,
                 noted: Callable[[tuple[str, str], Counts], None]):
        self.hub = hub
        self.store = store
        self.noted = noted
        self.batches = 0  # batches read
        self.replays = 0  # streams that were behind and replayed

    async def run(self) -> None:
        batch = self.store.counts_batch
        behind: asyncio.Queue[tuple[Stream, bytes] | None] = asyncio.Queue(batch)
        loop = asyncio.get_running_loop()
        workers = [loop.create_task(self._replay(behind)) for _ in range(REPLAYS)]
        try:
            for app, users in self._batches(batch):
                for item in await self._read(app, users):
                    await behind.put(item)
            for _ in workers:
                await behind.put(None)
            await asyncio.gather(*workers)
        finally:
            for w in workers:
                w.cancel()

    def _batches(self, size: int) -> list[tuple[str, list[str]]]:
        """The users with a stream here as the sweep starts, by app, ``size``
        a batch."""
        by_app: dict[str, list[str]] = {}
        for app, user in list(self.hub.users):
            by_app.setdefault(app, []).append(user)
        return [(app, users[i:i + size]) for app, users in by_app.items()
                for i in range(0, len(users), size)]

    async def _read(self, app: str, users: list[str]) -> list[tuple[Stream, bytes]]:
        """``_catch_up`` one batch.  With PostgreSQL as the broker, the
        store's outage and the broker's are one: the broker may be back a
        moment before the store's pool is, so a store that is not there yet
        is waited for instead of leaving the batch's streams behind."""
        backoff = Backoff(base=0.2, cap=2.0)
        for _ in range(ATTEMPTS):
            try:
                return await self._catch_up(app, users)
            except Unavailable:
                await asyncio.sleep(backoff.next_delay())
            except Exception:
                log.exception("resync after a broker outage failed for %d users of %s",
                              len(users), app)
                return []
        log.warning("resync after a broker outage gave up on %d users of %s: the store "
                    "stayed unavailable", len(users), app)
        return []

    async def _catch_up(self, app: str, users: list[str]) -> list[tuple[Stream, bytes]]:
        """Topics, mutes and counts of a batch of users, one call each; send
        the counts to the streams that missed nothing, and return the others
        with their counts frame, to replay."""
        hub, store = self.hub, self.store
        users = [u for u in users if hub.users.get((app, u))]
        if not users:
            return []
        topics = await store.topics_many(app, users)
        found = await store.muted_many(app, users)
        locales = await store.locales_many(app, users)
        muted = {u: found.get(u, NONE_MUTED) for u in users}
        for user in users:
            hub.set_muted((app, user), muted[user])
            hub.set_locale((app, user), locales.get(user, ""))
        counts = await store.counts_many(app, users, time.time())
        self.batches += 1
        joined = False
        for user in users:
            joined |= hub.follow((app, user), set(topics.get(user, ())))
        if joined:
            await hub.broker.settle()
        behind: list[tuple[Stream, bytes]] = []
        for user, c in counts.items():
            streams = hub.users.get((app, user))
            if not streams:
                continue
            self.noted((app, user), c)
            frame = events.counts_frame(*c)
            for s in tuple(streams):
                if s.holds(c.seq, c.feed):
                    s.push(frame)
                else:
                    behind.append((s, frame))
        return behind

    async def _replay(self, behind: asyncio.Queue[tuple[Stream, bytes] | None]) -> None:
        while (item := await behind.get()) is not None:
            stream, frame = item
            self.replays += 1
            try:
                # Shielded: a newer outage cancels this sweep, not the replay
                # under way, which would leave its stream syncing, holding
                # live events until it closed as a slow consumer.  The newer
                # sweep finds the stream syncing and has it go once more.
                await asyncio.shield(stream.resync(frame))
            except Exception:
                log.exception("resync after a broker outage failed for %s/%s",
                              stream.app, stream.user)
