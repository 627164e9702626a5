"""Counts that change with no event of their own: read again, in batches.

A device's badge is the last counts the server sent plus the notifications
that arrived past where those were read (docs/protocol.md, "Counts and the
badge").  A state change and a retraction of a personal notification send
fresh counts with their events (service.py).  Five changes have no user
of their own to read counts for, or happen with no request at all:

* a **feed item is retracted**: one message on the feed's channel, for
  every follower of a broadcast or a large topic, on every node;
* a user **joins or leaves a topic**, and sees its feed items or stops
  seeing them (``Membership`` on the user's channel);
* a user **mutes a category in-app or unmutes it** (``MutesChanged`` on the
  user's channel): the node reads their mutes again first
  (``Store.muted_many``, in the same batches), hands them to their streams,
  which skip live feed items of those categories from then on, and reads
  the counts (whose statement reads the mutes again, in its own snapshot);
* an unread notification **runs out of its ttl**: nothing happens then;
* the **retention sweep deletes** unread notifications: an empty ``Frames``
  with ``recount`` on the channel of each user, feed or app whose counts it
  lowered (``Service.prune``).

Each node reads the counts again for its own users only (those with a
stream here) and sends each of their streams a ``counts`` event with its
``at``.  :class:`Recounts` does the reading: the users asked for wait in a
queue (one entry per user, however often asked), and one task reads them
``Store.counts_batch`` at a time with ``Store.counts_many`` (500 in one
query on PostgreSQL; 100 read one by one on SQLite, whose reads hold the
event loop), one batch at a time, with a turn of the event loop between
batches.  So a feed item retracted for 100,000 users online on a node
costs that node 200 queries on PostgreSQL, one after the other, and
nothing else waits for them (docs/delivery.md has the measurements).  A
user asked for again while their read is on its way is read once more
after it: the change may have committed after that read began.

Expiries cost nothing until a notification has a ttl.  The counts say when
the first unread entry they count expires (``Counts.expires``), and the
hub notes that time for a user with a stream here, and the ``expires_at``
of each notification with a ttl that reaches such a user's streams past
those counts (tidings/gateway/hub.py).  :class:`Expiries` keeps the
earliest time per user (or per feed channel, for a feed item with a ttl)
and one timer for the node, armed for the earliest of all; when it comes,
those users are read again.  A time noted too early (the entry was read
meanwhile) costs one read and sends counts the device already has; the
read answers the next expiry, strictly later than the read.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import math
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Protocol

from tidings.core import events
from tidings.core.preferences import NONE_MUTED
from tidings.errors import Unavailable

if TYPE_CHECKING:
    from tidings.gateway.cache import UserCache
    from tidings.gateway.stream import Stream
    from tidings.store.base import Counts, Store

log = logging.getLogger("tidings.gateway")

# What Expiries watches: a user ``(app, user)``, or a feed channel
# ``("*", app, "")`` / ``("t", app, topic)`` (hub.py)
Key = tuple[str, ...]
RETRY_DELAY = 1.0  # the store was unavailable: try the same users again after this


class Users(Protocol):
    """What the recount needs of the hub: its users' streams and its cache."""

    users: dict[tuple[str, str], set[Stream]]
    cache: UserCache

    def set_muted(self, key: tuple[str, str], muted: frozenset[str]) -> None: ...

    def set_locale(self, key: tuple[str, str], locale: str) -> None: ...


class Recounts:
    """The users whose counts are to be read again, and the task that reads
    them; ``noted(key, counts)`` is told of every read (the hub notes its
    ``expires``)."""

    def __init__(self, hub: Users, store: Store,
                 noted: Callable[[tuple[str, str], Counts], None]):
        self.hub = hub
        self.store = store
        self.noted = noted
        self.chunk = store.counts_batch  # users a read
        # app -> users waiting to be read (a dict: insertion order, one entry
        # each), and whether their in-app mutes are to be read first
        self._pending: dict[str, dict[str, bool]] = {}
        self._task: asyncio.Task | None = None
        self.users_read = 0  # counts read (tests, bench)
        self.queries = 0  # counts_many calls made

    def add(self, app: str, users: Iterable[str], *, mutes: bool = False) -> None:
        """Read these users' counts again (those with a stream here) and
        send them to their streams, soon; ``mutes``: their in-app mutes
        first."""
        waiting = self._pending.get(app)
        if waiting is None:
            waiting = self._pending[app] = {}
        if mutes:
            waiting.update(dict.fromkeys(users, True))
        else:
            for user in users:
                waiting.setdefault(user, False)
        if not waiting:
            del self._pending[app]
            return
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    @property
    def waiting(self) -> int:
        return sum(len(u) for u in self._pending.values())

    def _take(self) -> tuple[str, dict[str, bool]]:
        app, waiting = next(iter(self._pending.items()))
        users = {u: waiting.pop(u) for u in list(itertools.islice(waiting, self.chunk))}
        if not waiting:
            del self._pending[app]
        return app, users

    async def _run(self) -> None:
        try:
            while self._pending:
                app, taken = self._take()
                here = self.hub.users
                users = {u: m for u, m in taken.items() if (app, u) in here}
                if not users:
                    continue
                try:
                    await self._recount(app, list(users), [u for u, m in users.items() if m])
                except Unavailable:
                    # the store is away: the same users again, later
                    self.add(app, [u for u, m in users.items() if not m])
                    self.add(app, [u for u, m in users.items() if m], mutes=True)
                    await asyncio.sleep(RETRY_DELAY)
                    continue
                except Exception:
                    log.exception("reading the counts of %d users of %s again failed",
                                  len(users), app)
                await asyncio.sleep(0)  # SQLite reads inline: let the loop breathe
        finally:
            self._task = None

    async def _recount(self, app: str, users: list[str], mutes: list[str]) -> None:
        hub, cache = self.hub, self.hub.cache
        versions = {u: cache.version((app, u)) for u in users}  # before the read
        if mutes:
            fresh = await self.store.muted_many(app, mutes)
            locales = await self.store.locales_many(app, mutes)  # changed with the mutes
            for user in mutes:
                hub.set_muted((app, user), fresh.get(user, NONE_MUTED))
                hub.set_locale((app, user), locales.get(user, ""))
            versions.update((u, cache.version((app, u))) for u in mutes)
        # the counts read the mutes themselves, in their own snapshot: those
        # just read may be older already (hub.counts)
        counts = await self.store.counts_many(app, users, time.time())
        self.queries += 1
        self.users_read += len(users)
        for user, c in counts.items():
            key = (app, user)
            streams = self.hub.users.get(key)
            if not streams:
                continue
            cache.put("counts", key, versions.get(user), c)
            self.noted(key, c)
            frame = events.counts_frame(*c)
            for s in tuple(streams):
                s.on_frames([frame])

    def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
        self._pending.clear()


class Expiries:
    """When something a node's users were counted runs out: the earliest
    time per key (a user ``(app, user)``, or a feed channel), and one timer
    for the node, armed for the earliest of all (as ``StreamEnds`` does for
    the streams' token ends).  ``fire(keys)`` gets the keys whose time came."""

    def __init__(self, fire: Callable[[list[Key]], None]):
        self._fire_keys = fire
        self._due: dict[Key, float] = {}
        self._heap: list[tuple[float, int, Key]] = []  # may hold stale entries
        self._order = itertools.count().__next__
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = math.inf

    def __len__(self) -> int:
        return len(self._due)

    def note(self, key: Key, at: float | None) -> None:
        """Something counted for ``key`` expires at ``at`` (None: nothing)."""
        if at is None:
            return
        due = self._due.get(key)
        if due is not None and due <= at:
            return
        self._due[key] = at
        heapq.heappush(self._heap, (at, self._order(), key))
        if len(self._heap) > 2 * len(self._due) + 64:  # times moved earlier, often
            self._heap = [(d, i, k) for d, i, k in self._heap if self._due.get(k) == d]
            heapq.heapify(self._heap)
        if at < self._timer_at:
            self._arm(at)

    def forget(self, key: Key) -> None:
        """Nothing to watch for ``key`` any more (its last stream here closed)."""
        self._due.pop(key, None)

    def _arm(self, at: float, at_least: float = 0.0) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = at
        self._timer = asyncio.get_running_loop().call_later(
            max(at_least, at - time.time()), self._fire)

    def _fire(self) -> None:
        self._timer, self._timer_at = None, math.inf
        heap, due = self._heap, self._due
        now = time.time()
        fired: list[Key] = []
        while heap and heap[0][0] <= now:
            at, _, key = heapq.heappop(heap)
            if due.get(key) == at:
                del due[key]
                fired.append(key)
        if heap:
            # the loop's clock may run a hair ahead of the wall clock: no busy wait
            self._arm(heap[0][0], at_least=0.0 if fired else 0.01)
        if fired:
            self._fire_keys(fired)

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer, self._timer_at = None, math.inf
        self._due.clear()
        self._heap.clear()
